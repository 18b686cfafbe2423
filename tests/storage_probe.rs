//! Storage-node views of the block probe on real loop devices: the queue/device split
//! under each I/O scheduler, queue depth, request sizes, errors and per-cgroup I/O.

use crate::common;

use std::{collections::BTreeMap, path::PathBuf, process::Command, thread, time::Duration};

use nodepulse::{
    aggregate::{ExpHistogram, histogram::bucket_upper},
    attribution::cgroups::find_io_hierarchy,
    probes::{
        AttachKind, Probes,
        block::{
            BlockProbe, FAMILY, FAMILY_CGROUP, FAMILY_DEPTH, FAMILY_DEVICE, FAMILY_ERRORS,
            FAMILY_QUEUE, FAMILY_SIZE,
        },
    },
};

use common::{LoopDevice, Workload, run, start_probes, tool};

/// Every cumulative series of one device, by (family, op); `op` is empty for the
/// per-device queue depth.
struct Snapshot {
    hists: BTreeMap<(&'static str, String), ExpHistogram>,
    errors: BTreeMap<(String, String), u64>,
    in_flight: u64,
    /// Completions of this device the kernel made without running the program, found
    /// at the request's next issue or by the sweep.
    unseen: u64,
    drops: BTreeMap<&'static str, u64>,
}

impl Snapshot {
    fn take(probes: &mut Probes, lo: &LoopDevice) -> Self {
        let c = probes.collect();
        let block = probes
            .get::<BlockProbe>()
            .expect("the block probe is attached");
        let mine = |k: &nodepulse::aggregate::SeriesKey| k.label("dev") == Some(&lo.number);
        let dev = agent_common::dev::parse(&lo.number);
        Self {
            hists: c
                .readings
                .into_iter()
                .filter(|r| mine(&r.key))
                .map(|r| {
                    let op = r.key.label("op").unwrap_or("").to_owned();
                    ((r.key.family, op), r.hist)
                })
                .collect(),
            errors: c
                .counters
                .into_iter()
                .map(|t| (t.key, t.total))
                .filter(|(k, _)| k.family == FAMILY_ERRORS && mine(k))
                .map(|(k, n)| {
                    let key = (
                        k.label("op").unwrap().to_owned(),
                        k.label("error").unwrap().to_owned(),
                    );
                    (key, n)
                })
                .collect(),
            drops: c
                .drops
                .into_iter()
                .chain(c.programs.iter().map(|p| (p.program, p.recursion_misses)))
                .collect(),
            in_flight: block
                .in_flight()
                .into_iter()
                .find(|&(d, _)| Some(d) == dev)
                .map_or(0, |(_, n)| n),
            // After the sweep `in_flight` runs.
            unseen: block
                .read_unrecorded()
                .unwrap()
                .into_iter()
                .find(|&(d, _, _)| Some(d) == dev)
                .map_or(0, |(_, unseen, _)| unseen),
        }
    }

    /// Samples the probe counted as lost since `earlier`, on any device (the parallel
    /// tests' devices too): completions whose slot another request took or that found
    /// none, and series the kernel could not create.
    fn lost_since(&self, earlier: &Self) -> u64 {
        [
            "block_unmatched_completions",
            "block_inflight_collisions",
            "block_series_map_full",
            // Events the kernel skipped because the program was already running on
            // that CPU.
            "block_rq_issue_btf",
            "block_rq_complete_btf",
        ]
        .iter()
        .map(|name| self.drops.get(name).unwrap_or(&0) - earlier.drops.get(name).unwrap_or(&0))
        .sum()
    }

    fn since(&self, earlier: &Self, family: &'static str, op: &str) -> ExpHistogram {
        let key = (family, op.to_owned());
        let empty = ExpHistogram::default();
        let now = self.hists.get(&key).unwrap_or(&empty);
        now.since(earlier.hists.get(&key).unwrap_or(&empty))
    }
}

/// Exact against the kernel's count: each completion recorded, or counted once as
/// unseen on the device (made by the kernel without running the program); fewer only
/// by what the probe counted as lost otherwise.
fn assert_counted(what: &str, got: u64, unseen: u64, kernel: u64, lost: u64) {
    eprintln!("{what}: {got} recorded + {unseen} unseen of {kernel}; other drops {lost}");
    assert!(
        got + unseen <= kernel && kernel - got - unseen <= lost,
        "{what}: {got} recorded + {unseen} unseen, the kernel completed {kernel}, other \
         drops counted {lost}"
    );
}

/// Largest value a histogram holds (upper bound of its top bucket).
fn max_value(h: &ExpHistogram) -> f64 {
    if h.counts.is_empty() {
        0.0
    } else {
        bucket_upper(h.offset + h.counts.len() as i32 - 1)
    }
}

/// Runs fio to completion (a fixed number of I/Os, so nothing is in flight at exit).
fn fio_to_end(lo: &LoopDevice, args: &[&str]) {
    lo.fio(args).finish();
    lo.wait_idle();
}

/// The split under one scheduler: at iodepth 1 the queue holds one request and waits
/// are short; at iodepth 32 it runs deep; total = queue + device for the same requests;
/// sizes are the block sizes fio issued; counts equal the kernel's own.
fn split_depth_and_sizes(scheduler: &str) {
    let lo = LoopDevice::new(64);
    lo.set_scheduler(scheduler);
    let mut probes = start_probes(Some(AttachKind::TpBtf));

    let before = Snapshot::take(&mut probes, &lo);
    let stat_before = lo.stat();
    fio_to_end(
        &lo,
        &[
            "--rw=randread",
            "--bs=4k",
            "--iodepth=1",
            "--number_ios=400",
        ],
    );
    let shallow = Snapshot::take(&mut probes, &lo);
    let stat_shallow = lo.stat();

    let reads = stat_shallow.read - stat_before.read;
    let total = shallow.since(&before, FAMILY, "read");
    let queue = shallow.since(&before, FAMILY_QUEUE, "read");
    let device = shallow.since(&before, FAMILY_DEVICE, "read");
    assert_counted(
        &format!("{scheduler} reads"),
        total.count(),
        shallow.unseen - before.unseen,
        reads,
        shallow.lost_since(&before),
    );
    // The same requests in all of them.
    assert_eq!(queue.count(), total.count());
    assert_eq!(device.count(), total.count());
    // The same requests in all three: the sums add up exactly.
    assert_eq!(
        total.sum,
        queue.sum + device.sum,
        "{scheduler}: total = queue + device"
    );
    let depth = shallow.since(&before, FAMILY_DEPTH, "");
    assert_counted(
        &format!("{scheduler} depth samples (one per issue)"),
        depth.count(),
        0,
        reads,
        shallow.lost_since(&before),
    );
    assert!(
        max_value(&depth) <= 1.0,
        "{scheduler}: iodepth 1 but depth up to {}: {depth:?}",
        max_value(&depth)
    );
    match scheduler {
        // No scheduler: every request is issued directly, counted as zero queue time.
        "none" => assert_eq!(
            queue.zero_count,
            queue.count(),
            "{scheduler}: bypass counted as 0"
        ),
        // Inserted and dispatched at once: microseconds.
        _ => assert!(
            queue.quantile(0.9).unwrap() < 100_000.0,
            "{scheduler}: queue p90 {:?} ns at iodepth 1",
            queue.quantile(0.9)
        ),
    }
    assert_eq!(
        shallow.in_flight, 0,
        "{scheduler}: in-flight count back to 0"
    );
    let sizes = shallow.since(&before, FAMILY_SIZE, "read");
    assert_eq!(sizes.count(), total.count());
    assert_eq!(sizes.quantile_bound(0.0), Some(4096.0), "4 KiB reads");
    assert_eq!(sizes.quantile_bound(1.0), Some(4096.0), "only 4 KiB reads");
    assert_eq!(sizes.sum, sizes.count() * 4096);

    fio_to_end(
        &lo,
        &[
            "--rw=randwrite",
            "--bs=16k",
            "--iodepth=32",
            "--iodepth_batch_submit=32",
            "--number_ios=4000",
        ],
    );
    let deep = Snapshot::take(&mut probes, &lo);
    let stat_deep = lo.stat();
    let writes = stat_deep.write - stat_shallow.write;
    let total = deep.since(&shallow, FAMILY, "write");
    let queue = deep.since(&shallow, FAMILY_QUEUE, "write");
    let device = deep.since(&shallow, FAMILY_DEVICE, "write");
    assert_counted(
        &format!("{scheduler} writes"),
        total.count(),
        deep.unseen - shallow.unseen,
        writes,
        deep.lost_since(&shallow),
    );
    assert_eq!(queue.count(), total.count());
    assert_eq!(device.count(), total.count());
    assert_eq!(total.sum, queue.sum + device.sum);
    let depth = deep.since(&shallow, FAMILY_DEPTH, "");
    assert!(
        depth.quantile_bound(0.9).unwrap() >= 8.0,
        "{scheduler}: iodepth 32 but depth p90 {:?}",
        depth.quantile_bound(0.9)
    );
    assert!(
        max_value(&depth) <= 40.0,
        "{scheduler}: depth beyond fio's 32"
    );
    let sizes = deep.since(&shallow, FAMILY_SIZE, "write");
    assert_eq!(sizes.count(), total.count());
    assert_eq!(sizes.quantile_bound(0.0), Some(16384.0), "16 KiB writes");
    assert_eq!(sizes.quantile_bound(1.0), Some(16384.0));
    assert_eq!(deep.in_flight, 0, "{scheduler}: in-flight count back to 0");
    assert!(deep.errors.is_empty(), "no errors: {:?}", deep.errors);
}

#[test]
fn split_depth_and_sizes_without_a_scheduler() {
    require_root!();
    split_depth_and_sizes("none");
}

#[test]
fn split_depth_and_sizes_with_mq_deadline() {
    require_root!();
    split_depth_and_sizes("mq-deadline");
}

/// A loop device under mq-deadline with fio's random reads and writes at iodepth 32
/// running for `seconds`, started 0.8 s ago.
fn randrw_depth_32_for(seconds: &str) -> (LoopDevice, Workload) {
    let lo = LoopDevice::new(64);
    lo.set_scheduler("mq-deadline");
    let runtime = format!("--runtime={seconds}");
    let fio = lo.fio(&[
        "--rw=randrw",
        "--bs=4k",
        "--iodepth=32",
        "--time_based",
        &runtime,
    ]);
    thread::sleep(Duration::from_millis(800));
    (lo, fio)
}

/// Requests already in flight when the probe attaches: no negative, huge or lost
/// latencies, and the in-flight count does not drift: it is 0 once the device is idle,
/// also when the kernel made some of the last completions without running the
/// program (the agent's sweep releases them).
#[test]
fn attach_under_load_keeps_counts_exact() {
    require_root!();
    // Stopped below once sampled: attaching every probe can take seconds on a loaded
    // machine, and the load must outlast it.
    let (lo, fio) = randrw_depth_32_for("60");
    let mut probes = start_probes(Some(AttachKind::TpBtf));
    // Sampled for 1.6 s, longer (up to 10 s) until requests are seen in flight: on a
    // loaded machine fio can go without any for a while.
    let mut peak = 0;
    let sampling = std::time::Instant::now();
    while sampling.elapsed() < Duration::from_millis(1600)
        || (peak == 0 && sampling.elapsed() < Duration::from_secs(10))
    {
        thread::sleep(Duration::from_millis(100));
        let s = Snapshot::take(&mut probes, &lo);
        assert!(
            s.in_flight <= i64::MAX as u64,
            "in-flight count read {}",
            s.in_flight as i64
        );
        peak = peak.max(s.in_flight);
    }
    // Killed: the kernel still completes every request it had in flight.
    drop(fio);
    lo.wait_idle();
    let end = Snapshot::take(&mut probes, &lo);
    assert!(peak > 0, "requests were in flight under load");
    assert!(peak <= 64, "in-flight count {peak} above fio's 2 × 32");
    assert_eq!(end.in_flight, 0, "in-flight count drifted");
    let mut samples = 0;
    for ((family, op), h) in &end.hists {
        if [FAMILY, FAMILY_QUEUE, FAMILY_DEVICE].contains(family) {
            samples += h.count();
            assert!(
                max_value(h) < 2e9,
                "{family} {op}: sample above 2 s ({})",
                max_value(h)
            );
        }
    }
    assert!(samples > 1000, "only {samples} samples under load");
}

/// Attached again and again under load: each attach leaves a burst of requests whose
/// completions the probe never sees (issue attached before completion), released by
/// whichever issue or completion finds them freed. One released both by its own
/// completion and by another CPU that had read its slot just before took the count
/// below zero (18446744073709551615, as CI read it), where it stayed, swinging between
/// -1 and 0. No device's count may ever read negative.
#[test]
fn in_flight_never_reads_negative_through_attach_churn_under_load() {
    require_root!();
    let (lo, fio) = randrw_depth_32_for("120");
    let mut samples = 0;
    for round in 0..4 {
        let probes = start_probes(Some(AttachKind::TpBtf));
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(50));
            let block = probes.get::<BlockProbe>().unwrap();
            for (dev, n) in block.in_flight() {
                assert!(
                    n <= i64::MAX as u64,
                    "attach {round}: device {dev}'s in-flight count read {} after {samples} \
                     samples: a request left it twice",
                    n as i64
                );
            }
            samples += 1;
        }
    }
    drop(fio);
    lo.wait_idle();
    assert!(samples >= 8, "only {samples} samples");
}

/// Writes to a loop device whose backing file cannot grow (a full tmpfs) fail with
/// "no space": counted per device, operation and status.
#[test]
fn io_errors_are_counted_by_status() {
    require_root!();
    let mnt = tempfile::tempdir().unwrap();
    run(tool("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "nodepulse-test"])
        .arg(mnt.path()));
    let _unmount = Unmount(mnt.path().to_path_buf());
    let mut probes = start_probes(Some(AttachKind::TpBtf));
    {
        let lo = LoopDevice::backed_in(mnt.path(), 64, false);
        let before = Snapshot::take(&mut probes, &lo);
        // dd stops at the first failed write; fsync flushes the page cache to the
        // device, where the writes fail.
        let status = Command::new("dd")
            .arg(format!("of={}", lo.path.display()))
            .args([
                "if=/dev/urandom",
                "bs=1M",
                "count=16",
                "oflag=direct",
                "status=none",
            ])
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "writing 16 MiB into a 4 MiB tmpfs must fail"
        );
        lo.wait_idle();
        let after = Snapshot::take(&mut probes, &lo);
        let key = ("write".to_owned(), "nospc".to_owned());
        let errors = after.errors.get(&key).copied().unwrap_or(0)
            - before.errors.get(&key).copied().unwrap_or(0);
        assert!(
            errors > 0,
            "no nospc write errors counted: {:?}",
            after.errors
        );
        assert!(
            after.errors.keys().all(|(op, _)| op == "write"),
            "only writes fail: {:?}",
            after.errors
        );
        assert_eq!(
            after.in_flight, 0,
            "failed requests leave the in-flight count"
        );
    }
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = tool("umount").arg(&self.0).status();
    }
}

/// I/O a process in a test cgroup submits is counted under that cgroup's path.
#[test]
fn io_is_attributed_to_the_submitting_cgroup() {
    require_root!();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let root = find_io_hierarchy(&mounts).expect("a cgroup hierarchy with the io controller");
    let name = format!("nodepulse-test-io-{}", std::process::id());
    let dir = root.join(&name);
    std::fs::create_dir(&dir).unwrap();
    let _cleanup = RemoveCgroup(dir.clone());
    let lo = LoopDevice::new(64);
    let mut probes = start_probes(Some(AttachKind::TpBtf));
    let series = |probes: &mut Probes| {
        probes
            .collect()
            .readings
            .into_iter()
            .find(|r| {
                r.key.family == FAMILY_CGROUP
                    && r.key.label("cgroup") == Some(&format!("/{name}"))
                    && r.key.label("op") == Some("read")
            })
            .map_or(0, |r| r.hist.count())
    };
    assert_eq!(series(&mut probes), 0);
    // The shell joins the cgroup, then becomes dd: every read is submitted from it.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec dd if={} of=/dev/null bs=4k count=300 iflag=direct status=none",
        dir.display(),
        lo.path.display()
    );
    run(Command::new("sh").args(["-c", &script]));
    lo.wait_idle();
    // dd's 300 reads, and the page-ins of dd's own binary and libraries from the root
    // disk when they are not cached (a few dozen at most).
    let reads = series(&mut probes);
    assert!(
        (300..300 + 64).contains(&reads),
        "{reads} reads under /{name}, dd made 300"
    );
}

struct RemoveCgroup(PathBuf);

impl Drop for RemoveCgroup {
    fn drop(&mut self) {
        // Empty by now: dd has exited.
        let _ = std::fs::remove_dir(&self.0);
    }
}
