//! One kernel's verdicts: how each probe attached (against what is expected on that
//! kernel), and whether the agent's counts equal the guest's own.

use std::fmt::Write as _;

use anyhow::Result;

use super::{
    ERROR_COUNT, IO_COUNT, KVM_ITERATIONS, TCP_EXCHANGES, churn,
    kernels::Kernel,
    results::{self, Attach, AttachVerdict, Recorded, Sections},
    runqueue,
};

/// The attach kind each probe must use on each kernel of the matrix, as measured: a
/// change either way (a regression, or an improvement to record here) fails the run.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("5.10", "block", "tp_btf"),
    ("5.10", "sched", "tp_btf"),
    ("5.10", "kvm", "raw_tracepoint"),
    ("5.10", "kvm_exit", "raw_tracepoint"),
    ("5.10", "tcp", "tp_btf"),
    ("6.1", "block", "tp_btf"),
    ("6.1", "sched", "tp_btf"),
    ("6.1", "kvm", "tp_btf"),
    ("6.1", "kvm_exit", "tp_btf"),
    ("6.1", "tcp", "tp_btf"),
    ("6.12", "block", "tp_btf"),
    ("6.12", "sched", "tp_btf"),
    ("6.12", "kvm", "tp_btf"),
    ("6.12", "kvm_exit", "tp_btf"),
    ("6.12", "tcp", "tp_btf"),
    ("5.15", "block", "tp_btf"),
    ("5.15", "sched", "tp_btf"),
    ("5.15", "kvm", "tp_btf"),
    ("5.15", "kvm_exit", "tp_btf"),
    ("5.15", "tcp", "tp_btf"),
    ("6.8", "block", "tp_btf"),
    ("6.8", "sched", "tp_btf"),
    ("6.8", "kvm", "tp_btf"),
    ("6.8", "kvm_exit", "tp_btf"),
    ("6.8", "tcp", "tp_btf"),
];

/// The disks of the guest, and the `device.type` the agent must give each.
const DISKS: [(&str, &str); 4] = [
    ("nvme0n1", "nvme"),
    ("vda", "virtio"),
    ("sda", "scsi"),
    ("loop0", "loop"),
];

/// The nested guest's UUID on its QEMU-like command line (guest.sh).
const VM_UUID: &str = "2f6a5c1e-0b1d-4d35-9a51-6c7f1e0d2a2a";

/// How a check compares the agent with the kernel.
#[derive(Clone, Copy)]
pub enum Compared {
    /// Counts equal.
    Exact,
    /// Within a stated margin.
    Within,
    /// Only found present.
    Present,
}

/// One check of one kernel run.
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub compared: Compared,
    pub detail: String,
}

pub struct KernelReport {
    pub kernel: &'static str,
    pub release: String,
    pub attaches: Vec<Attach>,
    /// Per attach, the kind [`EXPECTED`] names; `None` for the host, whose kernel is
    /// whatever the machine runs (its row is reported, not judged).
    pub expected_kind: Option<Vec<Option<&'static str>>>,
    pub checks: Vec<Check>,
}

impl KernelReport {
    /// The host's own kernel: how each probe attaches there. Its counts are checked by
    /// the integration tests (`cargo test`), not here.
    pub fn host(check_json: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(check_json)?;
        let release = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["what"] == "kernel")
            .and_then(|i| i["detail"].as_str())
            .unwrap_or("?")
            .to_owned();
        Ok(Self {
            kernel: "host",
            release,
            attaches: results::attaches(check_json)?,
            expected_kind: None,
            checks: Vec::new(),
        })
    }

    fn expected(&self, i: usize) -> Option<Option<&'static str>> {
        self.expected_kind.as_ref().map(|e| e[i])
    }

    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in self.attaches.iter().enumerate() {
            let Some(expected) = self.expected(i) else {
                continue;
            };
            if a.verdict == AttachVerdict::NotApplicable {
                continue;
            }
            if a.kind.as_deref() != expected {
                out.push(format!(
                    "{}: probe {} attached via {} where {} is expected{}",
                    self.kernel,
                    a.probe,
                    a.kind.as_deref().unwrap_or("nothing"),
                    expected.unwrap_or("no expectation"),
                    a.notes
                        .first()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ));
            }
        }
        out.extend(
            self.checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}: {}", self.kernel, c.name, c.detail)),
        );
        out
    }

    pub fn print(&self) {
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            println!("[{mark}] {:<28} {}", c.name, c.detail);
        }
    }
}

pub fn judge(kernel: &Kernel, text: &str) -> Result<KernelReport> {
    let sections = Sections::parse(text)?;
    let attaches = results::attaches(sections.any("check")?)?;
    let expected_kind = attaches
        .iter()
        .map(|a| {
            EXPECTED
                .iter()
                .find(|(k, p, _)| *k == kernel.spec.name && *p == a.probe)
                .map(|(_, _, kind)| *kind)
        })
        .collect();
    let recorded = results::recorded(sections.ok("record")?)?;
    let mut checks = Vec::new();
    checks.push(btf_file_check(&attaches, &sections)?);

    // Block: every completed request of every disk, per op, as sysfs counts them.
    let before = results::block_stats(sections.ok("stats_before")?);
    let after = results::block_stats(sections.ok("stats_after")?);
    for (disk, kind) in DISKS {
        let (Some(b), Some(a)) = (before.get(disk), after.get(disk)) else {
            checks.push(Check {
                name: format!("block {disk}"),
                ok: false,
                compared: Compared::Exact,
                detail: "the guest has no such disk".into(),
            });
            continue;
        };
        let sysfs = [
            ("read", a.read - b.read),
            ("write", a.write - b.write),
            ("flush", a.flush - b.flush),
            ("discard", a.discard - b.discard),
        ];
        let probed: Vec<(&str, u64)> = sysfs
            .iter()
            .map(|(op, _)| {
                let n = results::count_where(
                    &recorded,
                    "block.io.latency",
                    &[("device", disk), ("op", op)],
                );
                (*op, n)
            })
            .collect();
        let typed = results::count_where(
            &recorded,
            "block.io.latency",
            &[("device", disk), ("device.type", kind)],
        );
        let enough = sysfs[0].1 >= IO_COUNT && sysfs[1].1 >= IO_COUNT;
        let equal = sysfs.iter().zip(&probed).all(|((_, s), (_, p))| s == p);
        let total: u64 = probed.iter().map(|(_, n)| n).sum();
        checks.push(Check {
            name: format!("block {disk} ({kind})"),
            ok: enough && equal && typed == total,
            compared: Compared::Exact,
            detail: format!(
                "sysfs {} | agent {} | device.type={kind} on {typed} of {total}",
                fmt_ops(&sysfs),
                fmt_ops(&probed)
            ),
        });
    }

    // Block errors: every read of the faulty disk's bad sector failed with EIO, which
    // the agent must name `ioerr` on every kernel (5.10 hands the hook an errno).
    let failed: Option<u64> = sections.any("block_errors")?.trim().parse().ok();
    let ioerr = results::count_where(
        &recorded,
        "block.io.errors",
        &[("device", "vdb"), ("op", "read"), ("error", "ioerr")],
    );
    let any_error = results::count_where(&recorded, "block.io.errors", &[]);
    checks.push(Check {
        name: "block errors (vdb, EIO)".into(),
        ok: failed == Some(ERROR_COUNT) && ioerr == ERROR_COUNT && any_error == ERROR_COUNT,
        compared: Compared::Exact,
        detail: format!(
            "guest reads failed {} of {ERROR_COUNT} | agent error=ioerr {ioerr}, any error \
             {any_error}",
            failed.map_or("?".into(), |n| n.to_string())
        ),
    });

    // KVM: the nested guest's own count of its exits to userspace.
    let guest: serde_json::Value = serde_json::from_str(sections.ok("kvm")?.trim())
        .map_err(|e| anyhow::anyhow!("the nested guest printed no JSON: {e}"))?;
    let (io, hlt) = (guest["io"].as_u64(), guest["hlt"].as_u64());
    let vm = [("vm", "instance-0000002a"), ("vm.uuid", VM_UUID)];
    let with = |family: &str, reason: &str| {
        let mut want = vm.to_vec();
        want.push(("reason", reason));
        results::count_where(&recorded, family, &want)
    };
    // Both families time an exit until the vCPU enters the guest again: the guest's
    // last exit (its final `hlt`) is never followed by one, so it is not a sample.
    let expect = Some(KVM_ITERATIONS);
    for (family, io_reason, hlt_reason) in [
        ("kvm.exit.userspace.latency", "io", "hlt"),
        ("kvm.exit.latency", "ioio", "hlt"),
    ] {
        let (pi, ph) = (with(family, io_reason), with(family, hlt_reason));
        // In-kernel exits: every reason must be a named SVM one (a misread reason is a
        // number, `exit_<n>`), the others listed.
        let (named, others) = if family == "kvm.exit.latency" {
            in_kernel_reasons(&recorded, &vm, &[io_reason, hlt_reason])
        } else {
            (true, String::new())
        };
        checks.push(Check {
            name: family.to_owned(),
            ok: io == expect
                && hlt == expect
                && pi == KVM_ITERATIONS
                && ph == KVM_ITERATIONS - 1
                && named,
            compared: Compared::Exact,
            detail: format!(
                "guest counted io {} hlt {} (the last hlt is never re-entered) | agent \
                 {io_reason} {pi} {hlt_reason} {ph}{others}",
                io.unwrap_or(0),
                hlt.unwrap_or(0)
            ),
        });
    }
    let record = sections.ok("record")?;
    checks.extend(runqueue::checks(kernel.spec.name, &sections, record)?);

    checks.push(tcp_veth_check(&recorded, sections.ok("tcp_veth")?));
    checks.push(restart_check(&sections));
    checks.push(churn::vm_check(&recorded, record, &sections));
    checks.push(churn::cgroup_check(&recorded, record, &sections));
    checks.push(churn::loop_check(&recorded, &sections));

    // Run-queue and TCP series are present where the workloads made them (counted
    // exactly by the host's integration tests, not here).
    for (name, family, want) in [
        ("run queue (system)", "sched.runqueue.latency", vec![]),
        (
            "vCPU wait (nested VM)",
            "vm.vcpu.wait",
            vec![("vm", "instance-0000002a")],
        ),
        (
            "tcp rtt (loopback, ceph-osd)",
            "net.tcp.rtt",
            vec![("peer.group", "ceph-osd")],
        ),
    ] {
        let n = results::count_where(&recorded, family, &want);
        checks.push(Check {
            name: name.to_owned(),
            ok: n > 0,
            compared: Compared::Present,
            detail: format!("{family}: {n} samples"),
        });
    }
    Ok(KernelReport {
        kernel: kernel.spec.name,
        release: kernel.release.clone(),
        attaches,
        expected_kind: Some(expected_kind),
        checks,
    })
}

/// The VM's `kvm.exit.latency` series other than `checked`: whether every one has
/// `isa=svm` and a named reason, and their counts as ` (also npf 3, intr 7)`.
fn in_kernel_reasons(recorded: &Recorded, vm: &[(&str, &str)], checked: &[&str]) -> (bool, String) {
    let mut named = true;
    let mut others = Vec::new();
    for ((family, labels), summed) in recorded {
        let has = |k: &str, v: &str| labels.split(',').any(|l| l == format!("{k}={v}"));
        if family != "kvm.exit.latency" || !vm.iter().all(|(k, v)| has(k, v)) {
            continue;
        }
        let reason = labels
            .split(',')
            .find_map(|l| l.strip_prefix("reason="))
            .unwrap_or("?");
        named &= has("isa", "svm") && !reason.starts_with("exit_") && reason != "?";
        if !checked.contains(&reason) {
            others.push(format!("{reason} {}", summed.count));
        }
    }
    let shown = if others.is_empty() {
        String::new()
    } else {
        format!(" (also {})", others.join(", "))
    };
    (named, shown)
}

/// The file the guest copied the kernel's BTF to, named by `[agent] btf`.
const BTF_FILE: &str = "/tmp/vmlinux.btf";

/// `[agent] btf` naming a copy of the kernel's own BTF: the recording (run with that
/// configuration, its counts checked exactly here) must log that it read the file, and
/// attach every probe by the kind `check` found without it.
fn btf_file_check(attaches: &[Attach], sections: &Sections) -> Result<Check> {
    let log = strip_ansi(sections.any("record_log")?);
    let logged = log
        .lines()
        .any(|l| l.contains("kernel BTF read from [agent] btf") && l.contains(BTF_FILE));
    // `probe attached probe="block" via=tp_btf`
    let recorded: Vec<(String, String)> = log
        .lines()
        .filter(|l| l.contains("probe attached"))
        .filter_map(|l| {
            let probe = l.split("probe=\"").nth(1)?.split('"').next()?;
            let via = l.split("via=").nth(1)?.split_whitespace().next()?;
            Some((probe.to_owned(), via.to_owned()))
        })
        .collect();
    let expected: Vec<(String, String)> = attaches
        .iter()
        .filter_map(|a| Some((a.probe.clone(), a.kind.clone()?)))
        .collect();
    let same = recorded == expected;
    let shown = |v: &[(String, String)]| {
        v.iter()
            .map(|(p, k)| format!("{p}={k}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(Check {
        name: "[agent] btf (a file)".into(),
        ok: logged && same,
        compared: Compared::Exact,
        detail: format!(
            "recording read {BTF_FILE}: {logged} | attached {} (check without it: {})",
            shown(&recorded),
            shown(&expected)
        ),
    })
}

/// The text of a log with its colours (`ESC [ ... m`) removed.
pub(super) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// TCP over the veth pair: every request/reply turn gives each side exactly one segment
/// received while its own is unacknowledged (the reply or the ACK before it on the
/// client; the next request, a pure ACK or the FIN acknowledging the reply on the
/// server), all sampled but one: the server's first, read before the ACK is processed,
/// finds no RACK RTT yet (the handshake's was measured on the request socket), so
/// 2 × turns − 1 RTT samples for the Ceph monitor port. Retransmissions equal the two
/// namespaces' RetransSegs growth.
fn tcp_veth_check(recorded: &Recorded, text: &str) -> Check {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    let (turns, retrans, tx, rx) = (
        field("turns "),
        field("retrans_segs "),
        field("veth_tx "),
        field("veth_rx "),
    );
    let group = [("peer.group", "ceph-mon")];
    let samples = results::count_where(recorded, "net.tcp.rtt", &group);
    let agent_retrans = results::count_where(recorded, "net.tcp.retransmits", &group);
    let crossed = tx.unwrap_or(0) >= TCP_EXCHANGES && rx.unwrap_or(0) >= TCP_EXCHANGES;
    Check {
        name: "tcp rtt (veth, ceph-mon)".into(),
        ok: turns == Some(TCP_EXCHANGES)
            && samples == 2 * TCP_EXCHANGES - 1
            && retrans == Some(agent_retrans)
            && crossed,
        compared: Compared::Exact,
        detail: format!(
            "turns {} of {TCP_EXCHANGES}, veth tx {} rx {} packets, RetransSegs +{} | agent \
             rtt samples {samples} (want {}), retransmits {agent_retrans}",
            opt(turns),
            opt(tx),
            opt(rx),
            opt(retrans),
            2 * TCP_EXCHANGES - 1
        ),
    }
}

/// The disk the restart step reads (guest.sh: agent_restart).
const RESTART_DISK: &str = "vda";

/// `[agent] keep_attached` across two SIGKILLs (after the first run's first report, and
/// the second run's before it reported): the last run's final report must hold every
/// read vda completed since the first run attached (cumulative `block.io.latency` plus
/// `block.io.unrecorded`), including those made while no agent ran; the last run keeps
/// the first one's start time, and both later runs adopt the pinned maps.
fn restart_check(sections: &Sections) -> Check {
    let failed = |detail: String| Check {
        name: "restart (kill -9 ×2)".into(),
        ok: false,
        compared: Compared::Exact,
        detail,
    };
    let text = match sections.ok("restart") {
        Ok(t) => t,
        Err(e) => return failed(e.to_string()),
    };
    // `name v` or `name rc R reads N` lines: the word after `name`, or after `key`.
    let word = |name: &str, key: &str| -> Option<u64> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))?;
        let mut words = line.split_whitespace().skip(1);
        if !key.is_empty() {
            words.find(|w| *w == key)?;
        }
        words.next()?.parse().ok()
    };
    let (Some(start), Some(end)) = (word("reads_start", ""), word("reads_end", "")) else {
        return failed(format!("the guest printed no reads: {text}"));
    };
    let kernel = end.saturating_sub(start);
    // Reads made while no agent process existed: kill n to spawn n + 1.
    let gaps: Vec<u64> = [("killed_1", "spawn_2"), ("killed_2", "spawn_3")]
        .iter()
        .map(|(k, s)| {
            word(s, "reads")
                .unwrap_or(0)
                .saturating_sub(word(k, "reads").unwrap_or(u64::MAX))
        })
        .collect();
    let killed = [word("killed_1", "rc"), word("killed_2", "rc")];
    let starts = [word("start_1", ""), word("start_3", "")];
    let same_start = starts[0].is_some_and(|s| s > 0) && starts.iter().all(|s| *s == starts[0]);
    let adopted = word("adopted", "");
    let (cumulative, unrecorded) = match sections.ok("restart_report").map(final_reads) {
        Ok(Some(n)) => n,
        Ok(None) => return failed("the last run's final report is not JSON".into()),
        Err(e) => return failed(e.to_string()),
    };
    Check {
        name: "restart (kill -9 ×2)".into(),
        ok: kernel >= 100
            && cumulative + unrecorded == kernel
            && gaps.iter().all(|&g| g > 0)
            && killed == [Some(137), Some(137)]
            && word("run_3_rc", "") == Some(0)
            && same_start
            && adopted == Some(2),
        compared: Compared::Exact,
        detail: format!(
            "sysfs {RESTART_DISK} reads {kernel} ({} while down) | final report cumulative \
             {cumulative} + unrecorded {unrecorded}; start time {} ({}); runs adopting the \
             pins {} of 2; exits {}, {}, {}",
            gaps.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" + "),
            opt(starts[0]),
            if same_start { "kept" } else { "CHANGED" },
            opt(adopted),
            opt(killed[0]),
            opt(killed[1]),
            opt(word("run_3_rc", ""))
        ),
    }
}

/// The reads of [`RESTART_DISK`] in one report: cumulative `block.io.latency` op=read and
/// the `block.io.unrecorded` total; `None` when it is not JSON.
fn final_reads(report: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(report.trim()).ok()?;
    let of_disk = |s: &&serde_json::Value| s["labels"]["device"] == RESTART_DISK;
    let cumulative = v["series"]
        .as_array()?
        .iter()
        .filter(of_disk)
        .filter(|s| s["family"] == "block.io.latency" && s["labels"]["op"] == "read")
        .filter_map(|s| s["cumulative_count"].as_u64())
        .sum();
    let unrecorded = v["counters"]
        .as_array()?
        .iter()
        .filter(of_disk)
        .filter(|c| c["family"] == "block.io.unrecorded")
        .filter_map(|c| c["total"].as_u64())
        .sum();
    Some((cumulative, unrecorded))
}

fn opt(n: Option<u64>) -> String {
    n.map_or("?".into(), |n| n.to_string())
}

fn fmt_ops(ops: &[(&str, u64)]) -> String {
    ops.iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Kernel × probe × attach kind × verdict, then each kernel's checks.
pub fn table(reports: &[&KernelReport]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<7} {:<22} {:<9} {:<15} {:<9}",
        "kernel", "release", "probe", "attach", "verdict"
    );
    for r in reports {
        for (i, a) in r.attaches.iter().enumerate() {
            let mark = match r.expected(i) {
                Some(expected)
                    if a.kind.as_deref() != expected
                        && a.verdict != AttachVerdict::NotApplicable =>
                {
                    "  (unexpected)"
                }
                _ => "",
            };
            let _ = writeln!(
                t,
                "{:<7} {:<22} {:<9} {:<15} {:<9}{mark}",
                r.kernel,
                r.release,
                a.probe,
                a.kind.as_deref().unwrap_or("-"),
                a.verdict.as_str()
            );
        }
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "{:<7} {:<28} {:<7}", "kernel", "check", "verdict");
    for r in reports {
        for c in &r.checks {
            let _ = writeln!(
                t,
                "{:<7} {:<28} {:<7}",
                r.kernel,
                c.name,
                match (c.ok, c.compared) {
                    (false, _) => "FAILED",
                    (true, Compared::Exact) => "exact",
                    (true, Compared::Within) => "within",
                    (true, Compared::Present) => "present",
                }
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest's restart step: 400 reads, 30 and 25 of them while no agent ran.
    fn restart_sections(cumulative: u64, start_3: u64) -> Sections {
        let report = format!(
            r#"{{"series":[{{"family":"block.io.latency","labels":{{"device":"vda","op":"read"}},"cumulative_count":{cumulative}}},{{"family":"block.io.latency","labels":{{"device":"vdb","op":"read"}},"cumulative_count":9}}],"counters":[{{"family":"block.io.unrecorded","labels":{{"device":"vda","cause":"unseen"}},"total":2}}]}}"#
        );
        Sections::parse(&format!(
            "@@begin restart\nspawn_1 reads 10\nreads_start 10\nstart_1 77\n\
             killed_1 rc 137 reads 100\nspawn_2 reads 130\n\
             killed_2 rc 137 reads 200\nspawn_3 reads 225\nreads_end 410\nrun_3_rc 0\n\
             start_3 {start_3}\nadopted 2\n@@end restart 0\n\
             @@begin restart_report\n{report}\n@@end restart_report 0\n@@done\n"
        ))
        .unwrap()
    }

    #[test]
    fn restart_needs_every_read_and_one_start_time() {
        let c = restart_check(&restart_sections(398, 77));
        assert!(c.ok, "{}", c.detail);
        assert!(c.detail.contains("(30 + 25 while down)"), "{}", c.detail);
        assert!(!restart_check(&restart_sections(397, 77)).ok);
        assert!(!restart_check(&restart_sections(398, 78)).ok);
    }

    #[test]
    fn log_colours_are_removed() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m probe attached \
                    \u{1b}[3mprobe\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"block\" \u{1b}[3mvia\u{1b}[0m\
                    \u{1b}[2m=\u{1b}[0mtp_btf";
        assert_eq!(
            strip_ansi(line),
            "2026  INFO probe attached probe=\"block\" via=tp_btf"
        );
    }
}
