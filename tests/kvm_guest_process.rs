//! A KVM guest in a process of its own, for tests that watch a VM from the outside
//! (`harness = false`; see `common::kvm_guest::guest_process_path`).
//!
//! With `NODEPULSE_KVM_GUEST_ITERATIONS=<n>` it runs `run_guest(n)` and prints
//! `{"io":..,"hlt":..,"other":..,"vcpu_tid":..,"run_ns":..,"run_delay_ns":..,"pid":..}` on
//! one line (time in `KVM_RUN` and the vCPU thread's run delay, both ns). Its arguments are
//! ignored, so a test can give it a QEMU-like command line
//! (`-name guest=instance-0000002a,debug-threads=on -uuid ...`). Like QEMU's, the vCPU
//! runs on a thread of its own named `CPU 0/KVM`, so `vcpu_tid` differs from `pid`.
//! With `NODEPULSE_KVM_GUEST_WAIT=1` it first waits for a line (or EOF) on stdin, so
//! the test can attach its probes before the guest runs, and after printing waits for
//! another, so the test can read the process's identity before it exits.
//! With `NODEPULSE_KVM_GUEST_ROUNDS=<r>` (default 1) it runs `r` guests one after the
//! other, each its own VM, printing a line per round and (with the wait) waiting for a
//! line before each: a test can let the agent name the VM between rounds, then have the
//! process exit right after its last exits (closing stdin ends the final wait at once).
//!
//! Run by `cargo test` (no such variable), it checks itself: 100 iterations must give
//! exactly 100 I/O and 100 HLT exits.

#[path = "common/kvm_guest.rs"]
#[allow(dead_code)] // guest_process_path is for the tests that start this process
mod kvm_guest;

use std::{io::BufRead as _, path::Path};

use kvm_guest::{GuestExits, run_guest};

const ITERATIONS_VAR: &str = "NODEPULSE_KVM_GUEST_ITERATIONS";
const WAIT_VAR: &str = "NODEPULSE_KVM_GUEST_WAIT";
const ROUNDS_VAR: &str = "NODEPULSE_KVM_GUEST_ROUNDS";

fn main() {
    match std::env::var(ITERATIONS_VAR) {
        Ok(n) => guest(
            n.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{ITERATIONS_VAR}={n:?}: {e}")),
        ),
        Err(_) => self_check(),
    }
}

fn guest(iterations: u64) {
    let rounds: u64 = match std::env::var(ROUNDS_VAR) {
        Ok(r) => r
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{ROUNDS_VAR}={r:?}: {e}")),
        Err(_) => 1,
    };
    for _ in 0..rounds {
        if std::env::var(WAIT_VAR).is_ok_and(|v| v == "1") {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .expect("read the go-ahead from stdin");
        }
        let exits = run_on_vcpu_thread(iterations);
        let line = serde_json::json!({
            "io": exits.io,
            "hlt": exits.hlt,
            "other": exits.other,
            "vcpu_tid": exits.vcpu_tid,
            "run_ns": exits.run_ns,
            "run_delay_ns": exits.run_delay_ns,
            "pid": std::process::id(),
        });
        println!("{line}");
        // Seen at once through a pipe or file, not when the process exits.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    if std::env::var(WAIT_VAR).is_ok_and(|v| v == "1") {
        // Stay alive until told, so the test can read /proc/<pid> (the VM's identity)
        // after the exits are counted.
        let mut done = String::new();
        let _ = std::io::stdin().lock().read_line(&mut done);
    }
}

/// Runs the guest on a thread named like QEMU's vCPU threads (`debug-threads=on`).
fn run_on_vcpu_thread(iterations: u64) -> GuestExits {
    std::thread::Builder::new()
        .name("CPU 0/KVM".to_owned())
        .spawn(move || run_guest(iterations))
        .expect("start the vCPU thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn self_check() {
    if std::env::args().any(|a| a == "--list") {
        println!("self_check: test");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/kvm").exists() {
        println!("SKIPPED kvm_guest_process: needs root and /dev/kvm");
        return;
    }
    let exits = run_on_vcpu_thread(100);
    assert_eq!(
        (exits.io, exits.hlt, exits.other),
        (100, 100, 0),
        "exits to userspace for 100 × (out; hlt): {exits:?}"
    );
    assert_ne!(
        exits.vcpu_tid,
        std::process::id(),
        "the vCPU runs on its own thread"
    );
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
