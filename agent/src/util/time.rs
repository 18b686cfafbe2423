//! Wall-clock and monotonic time as the agent records it: nanoseconds since the Unix
//! epoch, RFC 3339 text for people, and the conversion of kernel (monotonic)
//! timestamps to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// When this process started counting its own totals (its CPU time): fixed at the
/// first call, made at start.
pub fn process_start() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(unix_nanos)
}

/// `unix_nano` as RFC 3339 in UTC, to the second.
pub fn rfc3339(unix_nano: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(unix_nano)).to_string()
}

/// A clock's current value in nanoseconds.
pub fn clock_nanos(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; an unknown clock leaves
    // it zero.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, read back to back: kernel timestamps
/// (`bpf_ktime_get_ns`) are monotonic, spans need wall-clock time.
pub fn monotonic_to_wall_offset() -> i128 {
    let mono = clock_nanos(libc::CLOCK_MONOTONIC);
    let real = clock_nanos(libc::CLOCK_REALTIME);
    real - mono
}

/// A monotonic timestamp as Unix nanoseconds, given [`monotonic_to_wall_offset`].
pub fn wall(monotonic: u64, offset: i128) -> u64 {
    (monotonic as i128 + offset).clamp(0, u64::MAX as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_999_999_999), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn wall_clock_conversion_is_close_to_now() {
        let offset = monotonic_to_wall_offset();
        let mono = clock_nanos(libc::CLOCK_MONOTONIC) as u64;
        let now = unix_nanos() as i128;
        assert!((wall(mono, offset) as i128 - now).abs() < 50_000_000);
    }
}
