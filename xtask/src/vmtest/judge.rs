//! One kernel's verdicts: how each probe attached (against what is expected on that
//! kernel), and whether the agent's counts equal the guest's own.

use std::fmt::Write as _;

use anyhow::Result;

use super::{
    IO_COUNT, KVM_ITERATIONS,
    kernels::Kernel,
    results::{self, Attach, AttachVerdict, Sections},
};

/// The attach kind each probe must use on each kernel of the matrix, as measured: a
/// change either way (a regression, or an improvement to record here) fails the run.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("5.10", "block", "tp_btf"),
    ("5.10", "sched", "tp_btf"),
    ("5.10", "kvm", "raw_tracepoint"),
    ("5.10", "kvm_exit", "tracepoint"),
    ("5.10", "tcp", "tp_btf"),
    ("6.1", "block", "tp_btf"),
    ("6.1", "sched", "tp_btf"),
    ("6.1", "kvm", "raw_tracepoint"),
    ("6.1", "kvm_exit", "tracepoint"),
    ("6.1", "tcp", "tp_btf"),
    ("6.12", "block", "tp_btf"),
    ("6.12", "sched", "tp_btf"),
    ("6.12", "kvm", "raw_tracepoint"),
    ("6.12", "kvm_exit", "tracepoint"),
    ("6.12", "tcp", "tp_btf"),
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

/// One exactness check.
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Counts compared for equality, rather than only found present.
    pub exact: bool,
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

    // Block: every completed request of every disk, per op, as sysfs counts them.
    let before = results::block_stats(sections.ok("stats_before")?);
    let after = results::block_stats(sections.ok("stats_after")?);
    for (disk, kind) in DISKS {
        let (Some(b), Some(a)) = (before.get(disk), after.get(disk)) else {
            checks.push(Check {
                name: format!("block {disk}"),
                ok: false,
                exact: true,
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
            exact: true,
            detail: format!(
                "sysfs {} | agent {} | device.type={kind} on {typed} of {total}",
                fmt_ops(&sysfs),
                fmt_ops(&probed)
            ),
        });
    }

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
        checks.push(Check {
            name: family.to_owned(),
            ok: io == expect && hlt == expect && pi == KVM_ITERATIONS && ph == KVM_ITERATIONS - 1,
            exact: true,
            detail: format!(
                "guest counted io {} hlt {} (the last hlt is never re-entered) | agent \
                 {io_reason} {pi} {hlt_reason} {ph}",
                io.unwrap_or(0),
                hlt.unwrap_or(0)
            ),
        });
    }
    // Run-queue and TCP series are present where the workloads made them (counted
    // exactly by the host's integration tests, not here).
    for (name, family, want) in [
        ("run queue (system)", "sched.runqueue.latency", vec![]),
        (
            "run queue (busy cgroup)",
            "cgroup.runqueue.latency",
            vec![("cgroup", "/vmtest-busy")],
        ),
        (
            "vCPU wait (nested VM)",
            "vm.vcpu.wait",
            vec![("vm", "instance-0000002a")],
        ),
        (
            "tcp rtt (ceph-osd port)",
            "net.tcp.rtt",
            vec![("peer.group", "ceph-osd")],
        ),
    ] {
        let n = results::count_where(&recorded, family, &want);
        checks.push(Check {
            name: name.to_owned(),
            ok: n > 0,
            exact: false,
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
                match (c.ok, c.exact) {
                    (false, _) => "FAILED",
                    (true, true) => "exact",
                    (true, false) => "present",
                }
            );
        }
    }
    t
}
