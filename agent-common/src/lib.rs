//! What nodepulse's kernel programs and its agent must agree on, byte for byte: map keys
//! and values (`#[repr(C)]`, no implicit padding, integers rather than `bool`), the names
//! of maps, programs and globals, and the histogram bucket function.
#![no_std]

pub mod block;
pub mod counters;
pub mod hist;
pub mod names;
pub mod outlier;
pub mod sched;

#[cfg(feature = "user")]
mod pod {
    use super::{block, hist, outlier, sched};
    // SAFETY: all of these are `#[repr(C)]` plain integers with no padding, so any
    // byte pattern is a valid value.
    unsafe impl aya::Pod for hist::Histogram {}
    unsafe impl aya::Pod for block::BlockKey {}
    unsafe impl aya::Pod for block::InflightSlot {}
    unsafe impl aya::Pod for block::BlockHistograms {}
    unsafe impl aya::Pod for block::BlockErrorKey {}
    unsafe impl aya::Pod for block::DeviceDepth {}
    unsafe impl aya::Pod for block::RequestLayout {}
    unsafe impl aya::Pod for block::TracepointLayout {}
    unsafe impl aya::Pod for block::OutlierLayout {}
    unsafe impl aya::Pod for outlier::OutlierEvent {}
    unsafe impl aya::Pod for sched::SchedLayout {}
    unsafe impl aya::Pod for sched::SparseKey {}
    unsafe impl aya::Pod for sched::SparseCell {}
    unsafe impl aya::Pod for sched::VcpuPending {}
    unsafe impl aya::Pod for sched::KvmExitLayout {}
}
