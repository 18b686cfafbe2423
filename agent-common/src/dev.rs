//! Device numbers as the kernel's block layer and its tracepoints carry them (the
//! in-kernel `dev_t`, `MKDEV`): `major << 20 | minor`, a 12-bit major and a 20-bit
//! minor. Not the userspace encoding of `stat`'s `st_rdev` (glibc's `makedev`).

/// Bits of the minor number.
pub const MINOR_BITS: u32 = 20;
/// The minor number's bits in a device number.
pub const MINOR_MASK: u32 = (1 << MINOR_BITS) - 1;
/// Majors are below this (12 bits).
pub const MAJOR_LIMIT: u32 = 1 << (32 - MINOR_BITS);

/// The device number of `major:minor`; `None` when a part does not fit.
pub const fn join(major: u32, minor: u32) -> Option<u32> {
    if major < MAJOR_LIMIT && minor <= MINOR_MASK {
        Some(major << MINOR_BITS | minor)
    } else {
        None
    }
}

/// `(major, minor)` of a device number.
pub const fn split(dev: u32) -> (u32, u32) {
    (dev >> MINOR_BITS, dev & MINOR_MASK)
}

/// `MAJ:MIN` text (sysfs `dev` files, configuration) as a device number; `None` when it
/// is not two numbers that fit.
pub fn parse(text: &str) -> Option<u32> {
    let (major, minor) = text.split_once(':')?;
    join(major.parse().ok()?, minor.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_overflow_is_refused() {
        assert_eq!(join(259, 1), Some(259 << 20 | 1));
        assert_eq!(split(259 << 20 | 1), (259, 1));
        assert_eq!(join(4095, MINOR_MASK), Some(u32::MAX));
        assert_eq!(join(4096, 0), None);
        assert_eq!(join(8, 1 << 20), None);
        assert_eq!(parse("8:16"), Some(8 << 20 | 16));
        assert_eq!(parse("8:"), None);
        assert_eq!(parse("8"), None);
        assert_eq!(parse("4096:0"), None);
    }
}
