//! A real KVM guest for tests: one vCPU in real mode looping `out` then `hlt`, run
//! through `/dev/kvm` with the `kvm-ioctls` crate (after the crate's documented
//! example). Without an in-kernel irqchip both instructions exit to userspace, so
//! every iteration is exactly one `KVM_EXIT_IO` and one `KVM_EXIT_HLT` — exits the
//! kernel reports through the `kvm:kvm_userspace_exit` tracepoint.

use std::{
    path::{Path, PathBuf},
    ptr::NonNull,
};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Exits to userspace seen by [`run_guest`], by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestExits {
    /// `KVM_EXIT_IO` for the guest's `out` (port [`GUEST_PORT`]).
    pub io: u64,
    /// `KVM_EXIT_HLT`.
    pub hlt: u64,
    /// Any other exit reason (none are expected).
    pub other: u64,
    /// Thread id of the thread that ran the vCPU (the caller of [`run_guest`]).
    pub vcpu_tid: u32,
    /// Time spent in the `KVM_RUN` ioctl, every call (CLOCK_MONOTONIC, ns).
    pub run_ns: u64,
    /// The vCPU thread's run delay when the loop ended: its whole wait for a CPU, as
    /// the kernel counts it (second field of `/proc/thread-self/schedstat`).
    pub run_delay_ns: u64,
}

/// The I/O port the guest writes to.
pub const GUEST_PORT: u16 = 0x10;

/// Guest physical address of the code, and where the vCPU starts.
const GUEST_CODE_ADDR: u64 = 0x1000;
const GUEST_MEM_SIZE: usize = 0x4000;

/// 16-bit real-mode code at [`GUEST_CODE_ADDR`].
const GUEST_CODE: [u8; 7] = [
    0xba, 0x10, 0x00, // mov dx, 0x10
    0xee, // out dx, al
    0xf4, // hlt
    0xeb, 0xf9, // jmp -7 (back to the mov)
];

/// Exits other than `out`/`hlt` tolerated before concluding the guest is not doing
/// what it should, rather than spinning forever.
const MAX_OTHER_EXITS: u64 = 1000;

/// Anonymous shared memory backing the guest's RAM, unmapped on drop.
struct GuestMemory {
    addr: NonNull<u8>,
    len: usize,
}

impl GuestMemory {
    fn new(len: usize) -> Self {
        // SAFETY: an anonymous mapping at an address of the kernel's choosing; the
        // result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_SHARED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(
            addr != libc::MAP_FAILED,
            "mmap {len} bytes of guest memory: {}",
            std::io::Error::last_os_error()
        );
        Self {
            addr: NonNull::new(addr.cast()).expect("mmap returned NULL"),
            len,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and lives as long
        // as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.addr.as_ptr(), self.len) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the VM using it has
        // been dropped first (it is declared after the memory).
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// Runs a real-mode guest doing `iterations` × (out to port 0x10; hlt), returning the
/// exits to userspace KVM reported, by reason. Panics with context on any KVM error.
///
/// The vCPU runs on the calling thread, whose tid is returned in
/// [`GuestExits::vcpu_tid`]. Every `KVM_RUN` ends in an exit to userspace, so the
/// kernel reports `io + hlt + other` of them through `kvm:kvm_userspace_exit`, plus
/// one per run interrupted by a signal (reason "restart", errno -EINTR), which is
/// retried and not counted here.
pub fn run_guest(iterations: u64) -> GuestExits {
    // Declared before the VM so that it is unmapped after the VM is gone.
    let mut memory = GuestMemory::new(GUEST_MEM_SIZE);
    memory.as_mut_slice()[..GUEST_CODE.len()].copy_from_slice(&GUEST_CODE);

    let kvm = Kvm::new().unwrap_or_else(|e| panic!("open /dev/kvm: {e}"));
    let vm = kvm
        .create_vm()
        .unwrap_or_else(|e| panic!("KVM_CREATE_VM: {e}"));
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_CODE_ADDR,
        memory_size: GUEST_MEM_SIZE as u64,
        userspace_addr: memory.addr.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is a valid mapping of `memory_size` bytes that outlives the
    // VM (see `memory` above).
    unsafe { vm.set_user_memory_region(region) }
        .unwrap_or_else(|e| panic!("KVM_SET_USER_MEMORY_REGION {region:?}: {e}"));

    let mut vcpu = vm
        .create_vcpu(0)
        .unwrap_or_else(|e| panic!("KVM_CREATE_VCPU: {e}"));
    let mut sregs = vcpu
        .get_sregs()
        .unwrap_or_else(|e| panic!("KVM_GET_SREGS: {e}"));
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .unwrap_or_else(|e| panic!("KVM_SET_SREGS: {e}"));
    let mut regs = vcpu
        .get_regs()
        .unwrap_or_else(|e| panic!("KVM_GET_REGS: {e}"));
    regs.rip = GUEST_CODE_ADDR;
    regs.rax = 0;
    regs.rflags = 2; // bit 1 is reserved and must be set
    vcpu.set_regs(&regs)
        .unwrap_or_else(|e| panic!("KVM_SET_REGS: {e}"));

    // SAFETY: gettid has no preconditions.
    let vcpu_tid = u32::try_from(unsafe { libc::gettid() }).expect("tid is positive");
    let mut exits = GuestExits {
        vcpu_tid,
        ..GuestExits::default()
    };
    while exits.hlt < iterations {
        let started = std::time::Instant::now();
        let run = vcpu.run();
        exits.run_ns += started.elapsed().as_nanos() as u64;
        let exit = match run {
            Ok(exit) => exit,
            // A signal arrived before or during the run: nothing reached userspace
            // from the guest, run again.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => panic!("KVM_RUN failed after {exits:?}: {e}"),
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                assert_eq!(
                    port, GUEST_PORT,
                    "guest wrote {data:?} to an unexpected port after {exits:?}"
                );
                exits.io += 1;
            }
            VcpuExit::Hlt => exits.hlt += 1,
            fatal @ (VcpuExit::Shutdown
            | VcpuExit::FailEntry(..)
            | VcpuExit::InternalError
            | VcpuExit::Exception) => {
                let fatal = format!("{fatal:?}");
                let regs = vcpu.get_regs();
                panic!("guest failed with {fatal} after {exits:?}; registers: {regs:?}")
            }
            other => {
                exits.other += 1;
                assert!(
                    exits.other <= MAX_OTHER_EXITS,
                    "guest keeps exiting with unexpected reasons, last {other:?}: {exits:?}"
                );
            }
        }
    }
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .unwrap_or_else(|e| panic!("read /proc/thread-self/schedstat: {e}"));
    exits.run_delay_ns = schedstat
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no run delay in schedstat {schedstat:?}"));
    exits
}

/// The `kvm_guest_process` test executable (tests/kvm_guest_process.rs): started with
/// `NODEPULSE_KVM_GUEST_ITERATIONS=<n>` it runs [`run_guest`] in its own process, whose
/// argv the test chooses (QEMU-like, say) and prints the exits as one JSON line.
///
/// Test executables with `harness = false` get no `CARGO_BIN_EXE_*` variable, so it is
/// found next to the current test executable, in the same `target/<profile>/deps/`
/// directory, as `kvm_guest_process-<hash>` (the newest one, should several builds be
/// there). `cargo test` builds every test target of the package before running any of
/// them, so it exists when another test of the package runs; when only one test
/// target is built (`cargo test --test integration`) it may be missing or stale, and
/// this panics naming the command that builds it.
pub fn guest_process_path() -> PathBuf {
    const NAME: &str = "kvm_guest_process";
    let exe = std::env::current_exe().expect("path of the current test executable");
    let deps = exe.parent().expect("test executable has a directory");
    newest_executable(deps, NAME).unwrap_or_else(|| {
        panic!(
            "no {NAME}-<hash> executable in {}: build it with `cargo test -p agent --no-run`",
            deps.display()
        )
    })
}

/// The newest executable file `<name>-<hex hash>` in `dir`.
fn newest_executable(dir: &Path, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|entry| {
            // Skips `<name>-<hash>.d` and any other file with an extension.
            entry
                .file_name()
                .to_str()
                .and_then(|f| f.strip_prefix(&prefix))
                .is_some_and(|hash| !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return None;
            }
            Some((meta.modified().ok()?, entry.path()))
        })
        .max()
        .map(|(_, path)| path)
}
