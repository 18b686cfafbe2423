//! The scheduler's own run-queue totals, `/proc/schedstat` (CONFIG_SCHEDSTATS): the
//! reference the run-queue probe is checked against.

pub const PATH: &str = "/proc/schedstat";

/// The run queues' totals since boot, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Nanoseconds tasks waited: the eighth number of each `cpuN` line (`run_delay`;
    /// versions 15 to 17, 5.x and 6.x alike).
    pub run_delay: u64,
    /// Arrivals on a CPU: the ninth number (`pcount`, "timeslices"), one per switch-in
    /// whose wait went into `run_delay`.
    pub timeslices: u64,
}

pub fn totals(text: &str) -> Result<Totals, String> {
    let mut total = Totals::default();
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
        let numbers: Vec<&str> = words.collect();
        let field = |i: usize, what: &str| {
            numbers
                .get(i)
                .and_then(|w| w.parse::<u64>().ok())
                .ok_or_else(|| format!("{PATH}: no {what} in `{line}`"))
        };
        total.run_delay += field(7, "run_delay (eighth number)")?;
        total.timeslices += field(8, "timeslices (ninth number)")?;
        cpus += 1;
    }
    if cpus == 0 {
        return Err(format!("{PATH} has no cpuN lines"));
    }
    Ok(total)
}

/// Reads [`totals`] now.
pub fn read() -> Result<Totals, String> {
    let text = std::fs::read_to_string(PATH).map_err(|e| {
        format!(
            "reading {PATH}: {e} (the kernel keeps it with CONFIG_SCHEDSTATS; turn \
             [probes.sched] schedstat_reference off on kernels without it)"
        )
    })?;
    totals(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_run_delay_and_timeslices_over_cpus_and_skips_domains() {
        let text = "version 15\ntimestamp 4294895806\n\
                    cpu0 0 0 10 2 5 3 900 100 7\n\
                    domain0 3 1 2 3 4 5 6 7 8 9 10\n\
                    cpu1 0 0 10 2 5 3 900 250 7\n";
        assert_eq!(
            totals(text),
            Ok(Totals {
                run_delay: 350,
                timeslices: 14
            })
        );
    }

    #[test]
    fn a_short_cpu_line_or_none_is_an_error() {
        assert!(totals("cpu0 1 2 3\n").unwrap_err().contains("no run_delay"));
        assert!(
            totals("cpu0 1 2 3 4 5 6 7 8\n")
                .unwrap_err()
                .contains("no timeslices")
        );
        assert!(totals("version 15\n").unwrap_err().contains("no cpuN"));
    }
}
