//! What nodepulse's kernel programs and its agent must agree on, byte for byte: map keys
//! and values (`#[repr(C)]`, no implicit padding, integers rather than `bool`), the names
//! of maps, programs and globals, and the histogram bucket function.
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]

/// Declares `$t` plain data that the kernel and the agent exchange as bytes. `$t` must
/// be `#[repr(C)]` with only integer (or integer array) fields, and `$size` the sum of
/// their sizes: the compile-time assertion then proves there is no padding. For the
/// agent it implements `aya::Pod`, so the type can be read from and written to maps.
macro_rules! plain_data {
    ($t:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        // SAFETY: `$t` is `#[repr(C)]` integers with no padding (asserted above): every
        // byte pattern is a valid value, and no uninitialised byte crosses a map.
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $t {}
    };
}

pub mod block;
pub mod counters;
pub mod dev;
pub mod hist;
pub mod kvm;
pub mod names;
pub mod outlier;
pub mod sched;
pub mod sparse;
pub mod tcp;
