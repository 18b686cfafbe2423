//! Requests whose completion the kernel made without running the completion program
//! (docs/architecture.md, "Block completions the kernel makes without running the
//! program") stay `ISSUED` in the in-flight table, counted in their device's in-flight
//! count, until their request is issued again. Under load that is within a few
//! requests; the last requests before a device goes idle are never issued again. So
//! when the kernel says a device is idle while the probe still counts requests in
//! flight on it, the agent runs the sweep program (`BPF_PROG_TEST_RUN`, never
//! attached), which asks each such request whether the kernel has freed it since
//! (its reference count is 0) and releases those, counting each as an unseen
//! completion. The device being idle keeps the sweep off requests the kernel is
//! allocating and issuing again at that very moment.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_common::{
    block::{INFLIGHT_SLOTS, RequestLayout, SWEEP_SLOTS},
    dev, names,
};
use aya::{
    Ebpf,
    programs::{ProgramFd, RawTracePoint},
};

pub struct Sweep {
    program: ProgramFd,
    /// Set once a run failed (logged then): the kernel cannot run it, so it is not
    /// tried again.
    failed: AtomicBool,
}

impl Sweep {
    /// Loads the sweep program (the table's slots must carry request addresses: every
    /// attach kind but classic tracepoints).
    pub fn load(ebpf: &mut Ebpf, layout: &RequestLayout) -> Result<Self, String> {
        let name = names::PROG_BLOCK_SWEEP;
        if layout.rq_ref == 0 {
            return Err(format!(
                "{name}: `struct request` has no `ref` in this kernel's BTF, so a freed \
                 request cannot be told from one being issued"
            ));
        }
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} is missing from the eBPF object (build bug)"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        program.load().map_err(|e| format!("{name}: {e}"))?;
        let program = program
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(Self {
            program,
            failed: AtomicBool::new(false),
        })
    }

    /// Releases the requests of `dev` the probe counts in flight that the kernel no
    /// longer has in flight, if `/sys/dev/block/<dev>/inflight` (under `sys_root`) says
    /// the device is idle. Returns how many.
    pub fn run_if_idle(&self, sys_root: &Path, device: u32) -> Result<u64, String> {
        if self.failed.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let (major, minor) = dev::split(device);
        let path = sys_root.join(format!("dev/block/{major}:{minor}/inflight"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            // Gone, or not a block device sysfs knows: nothing to ask.
            return Ok(0);
        };
        if text.split_whitespace().any(|n| n != "0") {
            return Ok(0);
        }
        let mut released = 0;
        for first in (0..INFLIGHT_SLOTS).step_by(SWEEP_SLOTS as usize) {
            match self.run(first, device) {
                Ok(n) if n >= 0 => released += n as u64,
                Ok(_) => {
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(format!(
                        "{} cannot read a request's reference count on this kernel \
                         (`struct request`.`ref` is not in its BTF); requests whose \
                         completion the probe never saw are released only when issued \
                         again",
                        names::PROG_BLOCK_SWEEP
                    ));
                }
                Err(e) => {
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(format!(
                        "{e}; requests whose completion the probe never saw are released \
                         only when issued again"
                    ));
                }
            }
        }
        Ok(released)
    }

    /// One run of the program over `SWEEP_SLOTS` slots from `first`.
    fn run(&self, first: u32, device: u32) -> Result<i32, String> {
        let args: [u64; 2] = [first as u64, device as u64];
        // SAFETY: an all-zero bpf_attr is the documented "no options" value.
        let mut attr: aya_obj::generated::bpf_attr = unsafe { std::mem::zeroed() };
        // The union member BPF_PROG_TEST_RUN reads (writing one is safe).
        attr.test.prog_fd = self.program.as_fd().as_raw_fd() as u32;
        attr.test.ctx_in = args.as_ptr() as u64;
        attr.test.ctx_size_in = std::mem::size_of_val(&args) as u32;
        // SAFETY: bpf(2) reads `attr` (and `args`, alive for the call) and writes
        // `retval` back into it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                aya_obj::generated::bpf_cmd::BPF_PROG_TEST_RUN as libc::c_long,
                &mut attr as *mut _,
                std::mem::size_of_val(&attr),
            )
        };
        if rc < 0 {
            return Err(format!(
                "running {}: {}",
                names::PROG_BLOCK_SWEEP,
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the kernel filled in the test member.
        Ok(unsafe { attr.test.retval } as i32)
    }
}
