//! The agent's own CPU and memory, from `/proc/self`, reported beside what it measures.

use std::time::{Duration, Instant};

use serde::Serialize;

/// CPU time used so far and resident memory now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessSample {
    pub cpu: Duration,
    pub rss_bytes: u64,
    pub at: Instant,
}

pub fn sample() -> ProcessSample {
    ProcessSample {
        cpu: cpu_time().unwrap_or_default(),
        rss_bytes: rss_bytes().unwrap_or(0),
        at: Instant::now(),
    }
}

/// utime + stime (fields 14 and 15 of `/proc/self/stat`, after the `(comm)` field).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu(&stat, clock_ticks())
}

fn parse_stat_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        ticks * 1_000_000_000 / ticks_per_sec.max(1),
    ))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_rss(&status)
}

fn parse_status_rss(status: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The agent's usage over one interval.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// Share of one CPU, in percent.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// CPU time used since the process started.
    pub cpu_seconds_total: f64,
}

pub fn usage_between(before: &ProcessSample, now: &ProcessSample) -> Usage {
    let wall = now.at.duration_since(before.at).as_secs_f64();
    let cpu = now.cpu.saturating_sub(before.cpu).as_secs_f64();
    Usage {
        cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
        rss_bytes: now.rss_bytes,
        cpu_seconds_total: now.cpu.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_awkward_comm() {
        let stat = "1234 (node pulse) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tnodepulse\nVmRSS:\t   12345 kB\nThreads:\t2\n";
        assert_eq!(parse_status_rss(status), Some(12345 * 1024));
    }

    #[test]
    fn this_process_is_measurable() {
        let s = sample();
        assert!(s.rss_bytes > 0);
    }
}
