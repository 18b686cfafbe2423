//! The scheduler's own run-queue totals, `/proc/schedstat` (CONFIG_SCHEDSTATS): the
//! reference the run-queue probe is checked against.

pub const PATH: &str = "/proc/schedstat";

/// The time tasks waited on every run queue since boot (ns): the eighth number of each
/// `cpuN` line (`run_delay`; versions 15 and 16, 5.x and 6.x alike), summed over CPUs.
pub fn run_delay_total(text: &str) -> Result<u64, String> {
    let mut total = 0u64;
    let mut cpus = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        if name
            .strip_prefix("cpu")
            .is_none_or(|n| n.parse::<u32>().is_err())
        {
            continue;
        }
        let delay = words
            .nth(7)
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(|| format!("{PATH}: no run_delay (eighth number) in `{line}`"))?;
        total += delay;
        cpus += 1;
    }
    if cpus == 0 {
        return Err(format!("{PATH} has no cpuN lines"));
    }
    Ok(total)
}

/// Reads [`run_delay_total`] now.
pub fn read_run_delay() -> Result<u64, String> {
    let text = std::fs::read_to_string(PATH).map_err(|e| {
        format!(
            "reading {PATH}: {e} (the kernel keeps it with CONFIG_SCHEDSTATS; turn \
             [probes.sched] schedstat_reference off on kernels without it)"
        )
    })?;
    run_delay_total(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_run_delay_over_cpus_and_skips_domains() {
        let text = "version 15\ntimestamp 4294895806\n\
                    cpu0 0 0 10 2 5 3 900 100 7\n\
                    domain0 3 1 2 3 4 5 6 7 8 9 10\n\
                    cpu1 0 0 10 2 5 3 900 250 7\n";
        assert_eq!(run_delay_total(text), Ok(350));
    }

    #[test]
    fn a_short_cpu_line_or_none_is_an_error() {
        assert!(
            run_delay_total("cpu0 1 2 3\n")
                .unwrap_err()
                .contains("no run_delay")
        );
        assert!(
            run_delay_total("version 15\n")
                .unwrap_err()
                .contains("no cpuN")
        );
    }
}
