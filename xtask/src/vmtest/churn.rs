//! Churn checks: things that end mid-interval while the agent runs (guest.sh:
//! `kvm_churn`, `contention`, `loop_churn`). Each counts what the kernel or the workload
//! itself counted against the agent's reports over the whole recording, and checks
//! that the thing's series carried its last labels and then ended.

use super::{
    judge::{Check, Compared},
    results::{self, Recorded, Sections},
};

/// The churning nested guest's name and UUID on its QEMU-like command line.
const VM_NAME: &str = "instance-0000002b";
const VM_UUID: &str = "7d3b9e2a-4c1f-4b8e-a6d5-0f9e8c7b6a5d";

/// The cgroup the contention step removes.
const CGROUP: &str = "/vmtest-busy";

/// The loop device the loop step detaches.
const LOOP: &str = "loop1";

/// Whether the recording's last report still holds a series of `family` whose labels
/// include every `k=v` of `want`.
fn in_last_report(record: &str, family: &str, want: &[(&str, &str)]) -> bool {
    let Some(last) = record.lines().rev().find(|l| !l.trim().is_empty()) else {
        return false;
    };
    results::recorded(last)
        .unwrap_or_default()
        .keys()
        .any(|(f, labels)| f == family && has_labels(labels, want))
}

/// Whether `k=v,...` includes every pair of `want`.
fn has_labels(labels: &str, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| {
        labels
            .split(',')
            .any(|kv| kv.split_once('=') == Some((k, v)))
    })
}

fn failed(name: &str, compared: Compared, detail: String) -> Check {
    Check {
        name: name.into(),
        ok: false,
        compared,
        detail,
    }
}

/// A nested guest process that ran two VMs and exited right after the second one's
/// exits: per reason, every exit the guest counted is reported once, under its name
/// and UUID (none under `vm=pid:<pid>`), and its series are gone from the last report.
/// As in the steady check, the last `hlt` of each VM is never re-entered, so not timed.
pub fn vm_check(recorded: &Recorded, record: &str, sections: &Sections) -> Check {
    const NAME: &str = "VM exits mid-interval";
    let text = match sections.ok("kvm_churn") {
        Ok(t) => t,
        Err(e) => return failed(NAME, Compared::Exact, e.to_string()),
    };
    let rounds: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect();
    let sum = |k: &str| rounds.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
    let (io, hlt, n) = (sum("io"), sum("hlt"), rounds.len() as u64);
    let Some(pid) = rounds.first().and_then(|r| r["pid"].as_u64()) else {
        return failed(
            NAME,
            Compared::Exact,
            format!("the churning guest printed no rounds: {text}"),
        );
    };
    let by_pid = format!("pid:{pid}");
    let under_pid: u64 = recorded
        .iter()
        .filter(|((_, labels), _)| has_labels(labels, &[("vm", &by_pid)]))
        .map(|(_, s)| s.count)
        .sum();
    let vm = [("vm", VM_NAME), ("vm.uuid", VM_UUID)];
    let with = |family: &str, reason: &str| {
        let mut want = vm.to_vec();
        want.push(("reason", reason));
        results::count_where(recorded, family, &want)
    };
    let families = ["kvm.exit.userspace.latency", "kvm.exit.latency"];
    let counts: Vec<(u64, u64)> = families
        .iter()
        .zip([("io", "hlt"), ("ioio", "hlt")])
        .map(|(f, (i, h))| (with(f, i), with(f, h)))
        .collect();
    let lingering: Vec<&str> = families
        .iter()
        .copied()
        .filter(|f| in_last_report(record, f, &[("vm", VM_NAME)]))
        .collect();
    let exact = counts.iter().all(|&(i, h)| i == io && h + n == hlt);
    Check {
        name: NAME.into(),
        ok: n == 2 && io > 0 && exact && under_pid == 0 && lingering.is_empty(),
        compared: Compared::Exact,
        detail: format!(
            "guest pid {pid}, {n} VMs: io {io} hlt {hlt} | agent under {VM_NAME}: \
             userspace io {} hlt {}, exit ioio {} hlt {} (hlt: one fewer per VM); \
             under vm={by_pid}: {under_pid}; in the last report: {}",
            counts[0].0,
            counts[0].1,
            counts[1].0,
            counts[1].1,
            if lingering.is_empty() {
                "none".to_owned()
            } else {
                lingering.join(", ")
            }
        ),
    }
}

/// A cgroup removed mid-interval: its run-queue samples are all under its path
/// (nothing under `cgroup=id:...`) and its series is gone from the last report. Its
/// tasks' timeslices are shown beside the samples, not compared: on 6.1 under TCG the
/// agent had 140 waits for 161 timeslices, a gap not yet explained (the host's
/// integration test finds them within 0.5 %).
pub fn cgroup_check(recorded: &Recorded, record: &str, sections: &Sections) -> Check {
    const NAME: &str = "cgroup removed mid-interval";
    let text = match sections.ok("contention") {
        Ok(t) => t,
        Err(e) => return failed(NAME, Compared::Present, e.to_string()),
    };
    let Some(slices) = text
        .lines()
        .find_map(|l| l.strip_prefix("timeslices ")?.trim().parse::<u64>().ok())
    else {
        return failed(NAME, Compared::Present, format!("no timeslices: {text}"));
    };
    let family = "cgroup.runqueue.latency";
    let ours = results::count_where(recorded, family, &[("cgroup", CGROUP)]);
    let by_id: Vec<&str> = recorded
        .keys()
        .filter(|(f, labels)| {
            f == family && labels.split(',').any(|kv| kv.starts_with("cgroup=id:"))
        })
        .map(|(_, l)| l.as_str())
        .collect();
    let lingering = in_last_report(record, family, &[("cgroup", CGROUP)]);
    Check {
        name: NAME.into(),
        ok: slices > 0 && ours > 0 && by_id.is_empty() && !lingering,
        compared: Compared::Present,
        detail: format!(
            "its tasks' timeslices {slices} | agent {ours} waits under {CGROUP} (shown, \
             not compared), under an id {by_id:?}, in the last report {lingering}"
        ),
    }
}

/// A loop device detached mid-interval: the reads the agent reported (plus those it
/// counted as unrecorded) equal the device's sysfs reads just before the detach, all
/// under its name.
pub fn loop_check(recorded: &Recorded, sections: &Sections) -> Check {
    const NAME: &str = "loop device detached";
    let text = match sections.ok("loop_churn") {
        Ok(t) => t,
        Err(e) => return failed(NAME, Compared::Exact, e.to_string()),
    };
    let stat = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| results::block_stats(&format!("{LOOP} {rest}")))
            .and_then(|m| m.get(LOOP).copied())
    };
    let (Some(before), Some(after)) = (stat("before "), stat("after ")) else {
        return failed(NAME, Compared::Exact, format!("no stat lines: {text}"));
    };
    let sysfs = after.read - before.read;
    let reads = results::count_where(
        recorded,
        "block.io.latency",
        &[("device", LOOP), ("op", "read")],
    );
    let unrecorded = results::count_where(recorded, "block.io.unrecorded", &[("device", LOOP)]);
    Check {
        name: NAME.into(),
        ok: sysfs >= super::IO_COUNT && reads + unrecorded == sysfs,
        compared: Compared::Exact,
        detail: format!(
            "sysfs {LOOP} reads {sysfs} | agent reads {reads} + unrecorded {unrecorded}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(family: &str, labels: &str, count: u64) -> String {
        let labels: Vec<String> = labels
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                format!("\"{k}\":\"{v}\"")
            })
            .collect();
        format!(
            r#"{{"family":"{family}","labels":{{{}}},"count":{count}}}"#,
            labels.join(",")
        )
    }

    fn report(series: &[String]) -> String {
        format!(r#"{{"series":[{}],"counters":[]}}"#, series.join(","))
    }

    const VM: &str = "vm=instance-0000002b,vm.uuid=7d3b9e2a-4c1f-4b8e-a6d5-0f9e8c7b6a5d";

    /// Two rounds of 100 exits each, reported in two intervals, and a last report.
    fn vm_run(later: &[String], last: &[String]) -> (Recorded, String, Sections) {
        let first = report(&[
            series(
                "kvm.exit.userspace.latency",
                &format!("{VM},reason=io"),
                120,
            ),
            series(
                "kvm.exit.userspace.latency",
                &format!("{VM},reason=hlt"),
                119,
            ),
            series("kvm.exit.latency", &format!("{VM},reason=ioio"), 200),
            series("kvm.exit.latency", &format!("{VM},reason=hlt"), 198),
        ]);
        let mut second = vec![
            series("kvm.exit.userspace.latency", &format!("{VM},reason=io"), 80),
            series(
                "kvm.exit.userspace.latency",
                &format!("{VM},reason=hlt"),
                79,
            ),
        ];
        second.extend_from_slice(later);
        let record = format!("{first}\n{}\n{}\n", report(&second), report(last));
        let round = r#"{"io":100,"hlt":100,"other":0,"vcpu_tid":8,"pid":77}"#;
        let sections = Sections::parse(&format!(
            "@@begin kvm_churn\n{round}\n{round}\n@@end kvm_churn 0\n@@done\n"
        ))
        .unwrap();
        (results::recorded(&record).unwrap(), record, sections)
    }

    #[test]
    fn a_vm_that_exits_is_counted_once_under_its_name_then_ends() {
        let (r, record, s) = vm_run(&[], &[]);
        let c = vm_check(&r, &record, &s);
        assert!(c.ok, "{}", c.detail);
        // Counted again under its pid after it exited.
        let again = [series("kvm.exit.latency", "vm=pid:77,reason=ioio", 3)];
        let (r, record, s) = vm_run(&again, &[]);
        assert!(!vm_check(&r, &record, &s).ok);
        // One exit missing.
        let (mut r, record, s) = vm_run(&[], &[]);
        r.values_mut().next().unwrap().count -= 1;
        assert!(!vm_check(&r, &record, &s).ok);
        // Still a series in the last report.
        let linger = [series("kvm.exit.latency", &format!("{VM},reason=hlt"), 0)];
        let (r, record, s) = vm_run(&[], &linger);
        assert!(!vm_check(&r, &record, &s).ok);
    }

    #[test]
    fn a_removed_cgroup_keeps_its_path_and_its_series_ends() {
        let sections = Sections::parse(
            "@@begin contention\nbusy pid 5\ntimeslices 500\n@@end contention 0\n@@done\n",
        )
        .unwrap();
        let run = |extra: &str, last: &str| {
            let mut s = vec![series(
                "cgroup.runqueue.latency",
                "cgroup=/vmtest-busy",
                497,
            )];
            if !extra.is_empty() {
                s.push(series("cgroup.runqueue.latency", extra, 4));
            }
            let record = format!("{}\n{}\n", report(&s), last);
            cgroup_check(&results::recorded(&record).unwrap(), &record, &sections)
        };
        let empty = report(&[]);
        assert!(run("", &empty).ok);
        assert!(!run("cgroup=id:4242", &empty).ok);
        let linger = report(&[series("cgroup.runqueue.latency", "cgroup=/vmtest-busy", 0)]);
        assert!(!run("", &linger).ok);
    }

    #[test]
    fn a_detached_loop_device_needs_every_read() {
        let sections = Sections::parse(
            "@@begin loop_churn\nbefore 0 0 0 0 0 0 0 0 0 0 0\n\
             after 203 0 1624 9 0 0 0 0 0 12 9\n@@end loop_churn 0\n@@done\n",
        )
        .unwrap();
        let check = |reads: u64| {
            let record = report(&[series("block.io.latency", "device=loop1,op=read", reads)]);
            loop_check(&results::recorded(&record).unwrap(), &sections)
        };
        assert!(check(203).ok, "{}", check(203).detail);
        assert!(!check(202).ok);
    }
}
