//! Reading what the guest wrote (`@@begin NAME` / `@@end NAME RC` sections) and
//! judging it: how each probe attached, and the agent's counts against the guest's own
//! (sysfs for block, the nested guest's count of its exits for KVM).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The guest's sections by name: output and exit code.
pub struct Sections(BTreeMap<String, (String, i32)>);

impl Sections {
    pub fn parse(text: &str) -> Result<Self> {
        let mut sections = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(name) = line.strip_prefix("@@begin ") {
                current = Some((name.to_owned(), String::new()));
            } else if let Some(rest) = line.strip_prefix("@@end ") {
                let (name, rc) = rest.rsplit_once(' ').unwrap_or((rest, "-1"));
                let Some((open, body)) = current.take() else {
                    bail!("`@@end {name}` without a begin");
                };
                if open != name {
                    bail!("section `{open}` ended as `{name}`");
                }
                sections.insert(open, (body, rc.parse().unwrap_or(-1)));
            } else if let Some((_, body)) = current.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        if !text.contains("@@done") {
            let last = sections.keys().last().cloned().unwrap_or_default();
            bail!(
                "the guest did not finish (sections: {:?}; last complete: `{last}`)",
                sections.keys().collect::<Vec<_>>()
            );
        }
        Ok(Self(sections))
    }

    /// A section's output, failing when it is missing or its command failed.
    pub fn ok(&self, name: &str) -> Result<&str> {
        match self.0.get(name) {
            None => bail!("the guest wrote no `{name}` section"),
            Some((body, 0)) => Ok(body),
            Some((body, rc)) => bail!("guest step `{name}` failed (exit {rc}): {body}"),
        }
    }

    /// A section's output whatever its exit code (`nodepulse check` exits 1 when a
    /// probe cannot attach, which the table reports).
    pub fn any(&self, name: &str) -> Result<&str> {
        self.0
            .get(name)
            .map(|(body, _)| body.as_str())
            .with_context(|| format!("the guest wrote no `{name}` section"))
    }
}

/// How one probe attached in the guest, from `nodepulse check --json`.
#[derive(Clone, Debug)]
pub struct Attach {
    pub probe: String,
    /// The kind `run` would use, if any.
    pub kind: Option<String>,
    pub verdict: AttachVerdict,
    /// Why the better kinds failed, for the table's notes.
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachVerdict {
    /// Through tp_btf or a raw tracepoint: the probe's full set of families.
    Attached,
    /// Through a classic tracepoint, fentry or a kprobe: less than the best.
    Fallback,
    Failed,
    NotApplicable,
}

impl AttachVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Fallback => "fallback",
            Self::Failed => "FAILED",
            Self::NotApplicable => "n/a",
        }
    }
}

pub fn attaches(check_json: &str) -> Result<Vec<Attach>> {
    let v: Value = serde_json::from_str(check_json)
        .with_context(|| format!("`nodepulse check --json` printed no JSON: {check_json}"))?;
    let probes = v["probes"]
        .as_array()
        .context("`nodepulse check --json` has no probes array")?;
    let mut out = Vec::new();
    for p in probes {
        let probe = p["probe"].as_str().unwrap_or("?").to_owned();
        let kind = p["chosen"].as_str().map(str::to_owned);
        let mut notes = Vec::new();
        for k in p["kinds"].as_array().into_iter().flatten() {
            // Serialized as [kind, {"Ok": null} | {"Err": "why"}].
            let (Some(name), Some(err)) = (k[0].as_str(), k[1]["Err"].as_str()) else {
                continue;
            };
            if Some(name) == kind.as_deref() {
                break;
            }
            notes.push(format!("{name}: {err}"));
        }
        let verdict = if p["not_applicable"].is_string() {
            AttachVerdict::NotApplicable
        } else {
            // The best a probe offers counts as attached (a chain that starts at the
            // classic tracepoint, had one existed).
            let best = p["kinds"][0][0].as_str();
            match kind.as_deref() {
                Some("tp_btf" | "raw_tracepoint") => AttachVerdict::Attached,
                Some(k) if Some(k) == best => AttachVerdict::Attached,
                Some(_) => AttachVerdict::Fallback,
                None => AttachVerdict::Failed,
            }
        };
        out.push(Attach {
            probe,
            kind,
            verdict,
            notes,
        });
    }
    Ok(out)
}

/// Completed requests per op group, as `/sys/block/<dev>/stat` counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ops {
    pub read: u64,
    pub write: u64,
    pub discard: u64,
    pub flush: u64,
}

/// `name f0 f1 ...` lines (the guest's `block_stats`) by device.
pub fn block_stats(text: &str) -> BTreeMap<String, Ops> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_owned();
            let f: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            let at = |i: usize| f.get(i).copied().unwrap_or(0);
            Some((
                name,
                Ops {
                    read: at(0),
                    write: at(4),
                    discard: at(11),
                    flush: at(15),
                },
            ))
        })
        .collect()
}

/// One series summed over every report of the recording.
#[derive(Clone, Debug, Default)]
pub struct Summed {
    pub count: u64,
    /// Sum of a histogram's samples (0 for counters).
    pub sum: u64,
}

/// The run queues' own totals over every CPU, from `/proc/schedstat`'s `cpuN` lines
/// (version 15, 5.x and 6.x alike): field 8 is the time tasks waited on the queue
/// (ns), field 9 the timeslices run (tasks arrived on the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedstat {
    pub run_delay: u64,
    pub timeslices: u64,
}

pub fn schedstat(text: &str) -> Schedstat {
    let mut total = Schedstat::default();
    for line in text.lines().filter(|l| l.starts_with("cpu")) {
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        total.run_delay += f.get(7).copied().unwrap_or(0);
        total.timeslices += f.get(8).copied().unwrap_or(0);
    }
    total
}

/// Summed series by family and `k=v,...` labels.
pub type Recorded = BTreeMap<(String, String), Summed>;

/// Every series and counter of `nodepulse record`'s JSON lines, keyed by family and its
/// labels as `k=v,...`, counts (a counter's increases) summed over the reports.
pub fn recorded(jsonl: &str) -> Result<BTreeMap<(String, String), Summed>> {
    let mut out: BTreeMap<(String, String), Summed> = BTreeMap::new();
    for (i, line) in jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("report {} of the recording is not JSON", i + 1))?;
        // Histograms carry their interval's `count`, counters their interval's `delta`.
        let series = v["series"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s, "count"));
        let counters = v["counters"].as_array().into_iter().flatten();
        for (s, field) in series.chain(counters.map(|c| (c, "delta"))) {
            let family = s["family"].as_str().unwrap_or("?").to_owned();
            let labels = s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let e = out.entry((family, labels)).or_default();
            e.count += s[field].as_u64().unwrap_or(0);
            e.sum += s["sum"].as_u64().unwrap_or(0);
        }
    }
    Ok(out)
}

/// The count of `family` over series whose labels include every `k=v` of `want`.
pub fn count_where(
    recorded: &BTreeMap<(String, String), Summed>,
    family: &str,
    want: &[(&str, &str)],
) -> u64 {
    recorded
        .iter()
        .filter(|((f, labels), _)| {
            f == family
                && want.iter().all(|(k, v)| {
                    labels
                        .split(',')
                        .any(|kv| kv.split_once('=') == Some((k, v)))
                })
        })
        .map(|(_, s)| s.count)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_and_counters_are_summed_over_reports() {
        let line = r#"{"series":[{"family":"h","labels":{"device":"vda"},"count":4}],"counters":[{"family":"c","labels":{"error":"ioerr"},"delta":2,"total":9}]}"#;
        let r = recorded(&format!("{line}\n{line}\n")).unwrap();
        assert_eq!(count_where(&r, "h", &[("device", "vda")]), 8);
        assert_eq!(count_where(&r, "c", &[("error", "ioerr")]), 4);
        assert_eq!(count_where(&r, "c", &[("error", "again")]), 0);
    }

    #[test]
    fn schedstat_sums_run_delay_and_timeslices_over_cpus() {
        let text = "version 15\ntimestamp 4294\ncpu0 0 0 10 4 6 6 900 700 9\n\
                    domain0 3 0 0 0 0 0 0 0 0\ncpu1 0 0 1 1 1 1 100 50 2\n";
        assert_eq!(
            schedstat(text),
            Schedstat {
                run_delay: 750,
                timeslices: 11
            }
        );
    }

    #[test]
    fn sections_carry_output_and_exit_code() {
        let s =
            Sections::parse("noise\n@@begin a\nx\ny\n@@end a 0\n@@begin b\n@@end b 3\n@@done\n")
                .unwrap();
        assert_eq!(s.ok("a").unwrap(), "x\ny\n");
        assert!(s.ok("b").unwrap_err().to_string().contains("exit 3"));
        assert!(s.ok("c").is_err());
    }

    #[test]
    fn an_unfinished_guest_is_an_error() {
        let e = Sections::parse("@@begin a\n@@end a 0\n").err().unwrap();
        assert!(e.to_string().contains("did not finish"), "{e}");
    }

    #[test]
    fn attach_verdicts_follow_the_chosen_kind() {
        let json = r#"{"items":[],"probes":[
          {"probe":"block","enabled":true,"not_applicable":null,"chosen":"tracepoint",
           "kinds":[["tp_btf",{"Err":"member disk not found"}],["tracepoint",{"Ok":null}]]},
          {"probe":"kvm","enabled":true,"not_applicable":null,"chosen":"raw_tracepoint",
           "kinds":[["raw_tracepoint",{"Ok":null}]]},
          {"probe":"kvm_exit","enabled":true,"not_applicable":null,"chosen":"tracepoint",
           "kinds":[["tracepoint",{"Ok":null}]]},
          {"probe":"tcp","enabled":true,"not_applicable":null,"chosen":null,"kinds":[]}]}"#;
        let a = attaches(json).unwrap();
        assert_eq!(a[0].verdict, AttachVerdict::Fallback);
        assert_eq!(a[0].notes, ["tp_btf: member disk not found"]);
        assert_eq!(a[1].verdict, AttachVerdict::Attached);
        assert_eq!(a[2].verdict, AttachVerdict::Attached);
        assert_eq!(a[3].verdict, AttachVerdict::Failed);
    }

    #[test]
    fn sysfs_stat_fields_by_op() {
        let s = block_stats("vda 5 0 40 1 7 0 56 2 0 3 3 9 0 0 0 2 0\nram0 0 0 0 0\n");
        assert_eq!(
            s["vda"],
            Ops {
                read: 5,
                write: 7,
                discard: 9,
                flush: 2
            }
        );
        assert_eq!(s["ram0"], Ops::default());
    }
}
