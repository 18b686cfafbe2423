//! nodepulse's kernel programs. Each probe family has its own module; what they share
//! (histogram recording, drop counters) lives in `shared`.
#![no_std]
#![no_main]
// Atomic read-modify-write on map values: `core::sync::atomic` has no fetch_add for
// the BPF target, the intrinsic lowers to the BPF atomic instructions.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod block;
mod kvm;
mod sched;
mod shared;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_probe_read_kernel` and BTF tracepoints require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
