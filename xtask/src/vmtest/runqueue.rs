//! The run-queue checks: the agent's waits against the kernel's own run delay
//! (`/proc/schedstat`), and run-queue saturation against the same.
//!
//! The probe samples a task at switch-in with the delta `sched_info_arrive()` adds to
//! the run queue's run_delay, so over the same arrivals the sums are equal (one CPU: no
//! task leaves a queue while waiting). The question is choosing the same arrivals. The
//! recording runs with `[probes.sched] schedstat_reference`: the agent reads the
//! kernel's total right before (B) and right after (A) each read of its histogram and
//! logs both (`schedstat bracket read=N`). The waits of reports k+1..=m (map reads k to
//! m) then lie between the kernel's growth over the inner pair, B(m) − A(k), and over
//! the outer pair, A(m) − B(k): exact by construction, whatever the guest's load.
//!
//! Judged before against the guest's own `/proc/schedstat` reads (right after reports
//! k and m appeared), each side held a stretch the other lacked: from the agent's map
//! read to the guest's read, at the opening edge counted by the agent alone and at the
//! closing edge by the kernel alone. Those stretches are shown beside the verdict (the
//! kernel's waits in them and how long they lasted): their difference was the residue.

use anyhow::Result;

use super::{
    judge::{Check, Compared, strip_ansi},
    results::{self, Sections},
};

/// How far run-queue saturation may exceed the run delay of the same window, as a
/// fraction ([`saturation_check`]).
const SATURATION_MARGIN: f64 = 0.05;

/// The two busy loops of `contention` run together for `sleep 2` (guest.sh).
const CONTENDED_NS: u64 = 2_000_000_000;

/// The kernel's run-delay total read around one of the agent's map reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bracket {
    /// Which read (report) of the recording, from 1.
    pub read: usize,
    pub before: u64,
    pub after: u64,
    /// CLOCK_MONOTONIC right after `after` was read.
    pub at_ns: u64,
    /// The kernel's arrivals (timeslices) before and after the same read.
    pub slices: Option<(u64, u64)>,
}

/// The agent's `schedstat bracket read=N before=B after=A at_ns=T` log lines.
pub fn brackets(log: &str) -> Vec<Bracket> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let value = line.split(&format!(" {name}=")).nth(1)?;
        value.split_whitespace().next()?.parse().ok()
    };
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("schedstat bracket"))
        .filter_map(|l| {
            Some(Bracket {
                read: field(l, "read")? as usize,
                before: field(l, "before")?,
                after: field(l, "after")?,
                at_ns: field(l, "at_ns")?,
                slices: field(l, "slices_before").zip(field(l, "slices_after")),
            })
        })
        .collect()
}

/// The guest's `/proc/schedstat` read right after a report appeared: the report count,
/// CLOCK_MONOTONIC (`/proc/timer_list`), and the kernel's totals.
struct GuestRead {
    reports: usize,
    mono_ns: Option<u64>,
    stat: results::Schedstat,
}

fn guest_read(text: &str) -> Option<GuestRead> {
    let value = |prefix: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    Some(GuestRead {
        reports: value("reports ")? as usize,
        mono_ns: value("now at "),
        stat: results::schedstat(text),
    })
}

/// The run-queue check (waits within the kernel's bracket) and the saturation check.
pub fn checks(kernel: &str, sections: &Sections, record: &str) -> Result<Vec<Check>> {
    const NAME: &str = "run queue vs /proc/schedstat";
    let failed = |detail: String| Check {
        name: NAME.into(),
        ok: false,
        compared: Compared::Exact,
        detail,
    };
    let (Some(first), Some(last)) = (
        guest_read(sections.ok("schedstat_before")?),
        guest_read(sections.ok("schedstat_settled")?),
    ) else {
        return Ok(vec![failed(
            "the guest printed no report counts beside /proc/schedstat".into(),
        )]);
    };
    let (k, m) = (first.reports, last.reports);
    let logged = brackets(sections.any("record_log")?);
    let find = |n: usize| logged.iter().find(|b| b.read == n).copied();
    let (Some(bk), Some(bm)) = (find(k), find(m)) else {
        return Ok(vec![failed(format!(
            "the agent logged no schedstat bracket for its reads {k} and {m} ({} logged)",
            logged.len()
        ))]);
    };
    let reports: Vec<&str> = record.lines().filter(|l| !l.trim().is_empty()).collect();
    let window = reports.get(k..m).unwrap_or_default();
    let (agent_n, agent_sum) = results::recorded(&window.join("\n"))?
        .iter()
        .filter(|((f, _), _)| f == "sched.runqueue.latency")
        .fold((0, 0), |(n, sum), (_, s)| (n + s.count, sum + s.sum));
    let inner = bm.before.saturating_sub(bk.after);
    let outer = bm.after.saturating_sub(bk.before);
    let ok = k >= 2 && m > k && inner > 0 && (inner..=outer).contains(&agent_sum);
    let guest_delay = last.stat.run_delay.saturating_sub(first.stat.run_delay);
    let stretch = |b: Bracket, g: &GuestRead| {
        let waits = g.stat.run_delay as f64 - b.after as f64;
        let lasted = g.mono_ns.map_or(f64::NAN, |t| t as f64 - b.at_ns as f64);
        format!("{:+.1} ms in {:.0} ms", waits / 1e6, lasted / 1e6)
    };
    let outside = if agent_sum < inner {
        format!(", {} µs below", (inner - agent_sum) / 1000)
    } else if agent_sum > outer {
        format!(", {} µs above", (agent_sum - outer) / 1000)
    } else {
        String::new()
    };
    let latency = Check {
        name: NAME.into(),
        ok,
        compared: Compared::Exact,
        detail: format!(
            "agent reports {}..={m} {:.6} s over {agent_n} waits | kernel around the \
             agent's reads {k} and {m}: {:.6} to {:.6} s{outside} | against the guest's \
             own reads {:+.2} % (their stretches past the agent's reads: opening {}, \
             closing {})",
            k + 1,
            agent_sum as f64 / 1e9,
            inner as f64 / 1e9,
            outer as f64 / 1e9,
            (agent_sum as f64 / guest_delay.max(1) as f64 - 1.0) * 100.0,
            stretch(bk, &first),
            stretch(bm, &last),
        ),
    };
    let arrivals = arrivals_check(bk, bm, agent_n, &window.join("\n"))?;
    let saturation = saturation_check(kernel, &window.join("\n"), outer)?;
    Ok(vec![latency, arrivals, saturation])
}

/// The agent's samples over reports k+1..=m, and the switch-ins it counted as unseen,
/// against the kernel's arrivals (`/proc/schedstat` timeslices) around its reads k and
/// m: no more samples than arrivals (none counted twice), and with the unseen at least
/// as many (none lost silently). An unseen switch-in is counted at the task's next
/// switch-in the program sees, which may fall in the next window, so the two bounds
/// are checked apart. Up to 5.13 the kernel also counts an arrival that waited for
/// nothing (`last_queued` 0), which the program records no sample for and counts as
/// unseen: the unseen figure on those kernels says how often.
fn arrivals_check(bk: Bracket, bm: Bracket, samples: u64, window: &str) -> Result<Check> {
    const NAME: &str = "run-queue switch-ins vs /proc/schedstat";
    let unseen = dropped(window, "runqueue_switch_ins_unseen")?;
    let (Some((k_before, k_after)), Some((m_before, m_after))) = (bk.slices, bm.slices) else {
        return Ok(Check {
            name: NAME.into(),
            ok: false,
            compared: Compared::Exact,
            detail: "the agent's schedstat brackets carry no timeslices".into(),
        });
    };
    let (inner, outer) = (
        m_before.saturating_sub(k_after),
        m_after.saturating_sub(k_before),
    );
    let seen = samples + unseen;
    Ok(Check {
        name: NAME.into(),
        ok: inner > 0 && samples <= outer && seen >= inner,
        compared: Compared::Exact,
        detail: format!(
            "agent {samples} samples + {unseen} unseen = {seen} | kernel arrivals around \
             the agent's reads {} and {}: {inner} to {outer}",
            bk.read, bm.read
        ),
    })
}

/// A self-metric drop counter summed over reports (`agent.dropped.<name>`, per interval).
fn dropped(window: &str, name: &str) -> Result<u64> {
    let mut total = 0;
    for line in window.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        total += v["agent"]["dropped"][name].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// Run-queue saturation over the run-queue check's window (reports k+1..=m), against the
/// kernel's run delay over the same reads: the guest has one CPU, whose saturated time
/// is at most the waits summed on its queue (equal only while one task waits at a time,
/// which a guest slowed by a busy host does not keep: 6.12 read 0.655 of it at host
/// load 16). And at least the `contention` section's two seconds, when two busy loops
/// are always runnable and one always waits. Not kept on 5.10, where BPF cannot attach
/// to the bare tracepoint it needs: there it must be absent.
fn saturation_check(kernel: &str, window: &str, kernel_delay: u64) -> Result<Check> {
    let saturated: u64 = results::recorded(window)?
        .iter()
        .filter(|((f, _), _)| f == "sched.runqueue.saturated_time")
        .map(|(_, s)| s.count)
        .sum();
    let ratio = saturated as f64 / kernel_delay.max(1) as f64;
    let kept = kernel != "5.10";
    Ok(Check {
        name: "run-queue saturation vs /proc/schedstat".into(),
        ok: if kept {
            saturated >= CONTENDED_NS && ratio <= 1.0 + SATURATION_MARGIN
        } else {
            saturated == 0
        },
        compared: Compared::Within,
        detail: if kept {
            format!(
                "schedstat run_delay {:.3} s | agent saturated {:.3} s ({ratio:.3} of it; \
                 allowed {:.1} s to {:.2} of it)",
                kernel_delay as f64 / 1e9,
                saturated as f64 / 1e9,
                CONTENDED_NS as f64 / 1e9,
                1.0 + SATURATION_MARGIN
            )
        } else {
            format!(
                "not kept before 5.11 (agent {:.3} s, expected none)",
                saturated as f64 / 1e9
            )
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest reads after reports 2 and 4 (run_delay 1.0 s → 2.0 s); the agent's reads
    /// 2 and 4 bracketed by 0.990/0.992 s and 1.980/1.981 s; reports of 0.1, 0.4,
    /// `third`, 0.5 and 0.9 s of waits (the last at SIGTERM), `count` waits and
    /// `unseen` switch-ins each.
    fn runqueue_sections(third_us: u64, unseen: u64, count: u64) -> (Sections, String) {
        let cpu = |delay: u64| format!("cpu0 0 0 0 0 0 0 0 {delay} 10");
        // Arrivals: 100 + 30 per read, one more across each read.
        let bracket = |n: u64, before: u64, after: u64| {
            format!(
                "\u{1b}[32m INFO\u{1b}[0m schedstat bracket \u{1b}[3mread\u{1b}[0m\
                 \u{1b}[2m=\u{1b}[0m{n} before={before} after={after} slices_before={} \
                 slices_after={} at_ns={}\n",
                100 + 30 * n,
                101 + 30 * n,
                n * 1_000_000_000
            )
        };
        let sections = Sections::parse(&format!(
            "@@begin schedstat_before\nreports 2\nnow at 2100000000 nsecs\nversion 15\n{}\n\
             @@end schedstat_before 0\n\
             @@begin schedstat_settled\nreports 4\nnow at 4050000000 nsecs\n{}\n\
             @@end schedstat_settled 0\n@@begin record_log\n{}{}{}@@end record_log 0\n\
             @@done\n",
            cpu(1_000_000_000),
            cpu(2_000_000_000),
            bracket(2, 990_000_000, 992_000_000),
            bracket(3, 1_500_000_000, 1_500_000_000),
            bracket(4, 1_980_000_000, 1_981_000_000),
        ))
        .unwrap();
        let record = [100_000, 400_000, third_us, 500_000, 900_000]
            .map(|us| {
                format!(
                    r#"{{"series":[{{"family":"sched.runqueue.latency","labels":{{}},"count":{count},"sum":{}}}],"agent":{{"dropped":{{"runqueue_switch_ins_unseen":{unseen}}}}}}}"#,
                    us * 1000
                )
            })
            .join("\n");
        (sections, record)
    }

    #[test]
    fn the_waits_must_lie_within_the_kernels_bracket() {
        // Inner 1.980 − 0.992 = 0.988 s, outer 1.981 − 0.990 = 0.991 s.
        let (sections, record) = runqueue_sections(489_000, 27, 3);
        let both = checks("6.1", &sections, &record).unwrap();
        let c = &both[0];
        assert!(c.ok, "{}", c.detail);
        assert!(
            c.detail.contains("agent reports 3..=4 0.989000 s"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("0.988000 to 0.991000 s |"),
            "{}",
            c.detail
        );
        // The guest's reads: 1 s of kernel growth, so −1.10 %; opening stretch 1.0 −
        // 0.992 s of waits in 2.1 − 2.0 s, closing 2.0 − 1.981 s in 4.05 − 4.0 s.
        assert!(c.detail.contains("-1.10 %"), "{}", c.detail);
        assert!(
            c.detail.contains("opening +8.0 ms in 100 ms"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("closing +19.0 ms in 50 ms"),
            "{}",
            c.detail
        );
        // Reports 3 and 4: 6 samples + 54 unseen, against 190 − 131 = 59 to 191 − 130
        // = 61 arrivals around reads 2 and 4.
        let arrivals = &both[1];
        assert!(arrivals.ok, "{}", arrivals.detail);
        assert!(
            arrivals
                .detail
                .contains("6 samples + 54 unseen = 60 | kernel arrivals around the agent's reads 2 and 4: 59 to 61"),
            "{}",
            arrivals.detail
        );
        // One arrival neither sampled nor counted: lost silently.
        let (sections, record) = runqueue_sections(489_000, 26, 3);
        let c = &checks("6.1", &sections, &record).unwrap()[1];
        assert!(!c.ok, "{}", c.detail);
        // More unseen than missing samples: a skipped switch-in of the window before,
        // counted at the task's next switch-in here.
        let (sections, record) = runqueue_sections(489_000, 28, 3);
        let c = &checks("6.1", &sections, &record).unwrap()[1];
        assert!(c.ok, "{}", c.detail);
        // 62 samples for at most 61 arrivals: one counted twice.
        let (sections, record) = runqueue_sections(489_000, 0, 31);
        let c = &checks("6.1", &sections, &record).unwrap()[1];
        assert!(!c.ok, "{}", c.detail);
        // No saturation in these reports: below the two contended seconds.
        assert!(!both[2].ok, "{}", both[2].detail);

        // A wait of 1.5 ms too few, or too many, is outside.
        let (sections, record) = runqueue_sections(486_500, 27, 3);
        let c = &checks("6.1", &sections, &record).unwrap()[0];
        assert!(!c.ok && c.detail.contains("1500 µs below"), "{}", c.detail);
        let (sections, record) = runqueue_sections(492_500, 27, 3);
        let c = &checks("6.1", &sections, &record).unwrap()[0];
        assert!(!c.ok && c.detail.contains("500 µs above"), "{}", c.detail);
    }

    #[test]
    fn without_the_agents_brackets_the_check_fails() {
        let (_, record) = runqueue_sections(489_000, 27, 3);
        let text = "@@begin schedstat_before\nreports 2\ncpu0 0 0 0 0 0 0 0 1 1\n\
                    @@end schedstat_before 0\n@@begin schedstat_settled\nreports 4\n\
                    cpu0 0 0 0 0 0 0 0 2 1\n@@end schedstat_settled 0\n\
                    @@begin record_log\n@@end record_log 0\n@@done\n";
        let bare = Sections::parse(text).unwrap();
        let c = &checks("6.1", &bare, &record).unwrap()[0];
        assert!(
            !c.ok && c.detail.contains("no schedstat bracket"),
            "{}",
            c.detail
        );
    }
}
