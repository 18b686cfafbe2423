//! Completions the kernel makes without running the completion program (it does,
//! silently, in some contexts: docs/architecture.md) leave their requests counted in
//! flight until each request is issued again, which the last requests before a device
//! goes idle never are. A subject of its own: it detaches one of its probe's links,
//! and other tests' links in this process must not be mistaken for it.

use crate::common;

use nodepulse::probes::{
    AttachKind, Probes,
    block::{BlockProbe, FAMILY_DEVICE},
};

use common::{LoopDevice, start_probes};

/// With the completion program detached while dd reads, every completion is one the
/// program never sees: once the device is idle the agent has released every one of
/// them (the in-flight count is back to 0) and counted each once as unseen on the
/// device, as many as sysfs counts reads. A lost request is released by the next
/// issue that finds it freed, and its busy period ends at the last completion seen or
/// its own issue: the busy time stays within the kernel's request times, not spanning
/// the gaps between dd's requests up to the sweep.
/// The read comes right after dd exits: its last requests were issued well under a
/// millisecond before, so a sweep that waited for requests to age would leave them.
#[test]
fn completions_the_program_never_saw_are_released_once_the_device_is_idle() {
    require_root!();
    let lo = LoopDevice::new(64);
    let mut probes = start_probes(Some(AttachKind::TpBtf));
    let dev = agent_common::dev::parse(&lo.number).unwrap();
    let read = |probes: &mut Probes| {
        let block = probes.get::<BlockProbe>().unwrap();
        let in_flight = block
            .in_flight()
            .into_iter()
            .find(|&(d, _)| d == dev)
            .map_or(0, |(_, n)| n);
        let unseen = block
            .read_unrecorded()
            .unwrap()
            .into_iter()
            .find(|&(d, _, _)| d == dev)
            .map_or(0, |(_, unseen, _)| unseen);
        let number = lo.number.clone();
        let recorded: u64 = probes
            .collect()
            .readings
            .iter()
            .filter(|r| r.key.family == FAMILY_DEVICE && r.key.label("dev") == Some(&number))
            .map(|r| r.hist.count())
            .sum();
        (in_flight, unseen, recorded)
    };
    let busy_of = |probes: &Probes| {
        let block = probes.get::<BlockProbe>().unwrap();
        let busy = block.read_busy().unwrap();
        busy.into_iter()
            .find(|&(d, _)| d == dev)
            .map_or(0, |(_, ns)| ns)
    };
    lo.dd_read(10, "4k");
    let sysfs_before = lo.stat().read;
    let (in_flight, unseen_before, recorded_before) = read(&mut probes);
    assert_eq!(in_flight, 0, "every completion seen");
    let busy_before = busy_of(&probes);
    let ticks_before = read_ticks_ms(&lo);
    detach_link_of("block_rq_complete");
    let dd = std::time::Instant::now();
    lo.dd_read(300, "4k");
    let dd_ms = dd.elapsed().as_secs_f64() * 1e3;
    // Idle for a while before the sweep: time a period kept open would count.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let reads = lo.stat().read - sysfs_before;
    let started = std::time::Instant::now();
    let (in_flight, unseen, recorded) = read(&mut probes);
    let (unseen, recorded) = (unseen - unseen_before, recorded - recorded_before);
    eprintln!(
        "{reads} reads: {recorded} recorded (before the detach took effect), {unseen} \
         unseen; the read with its sweep took {:?}",
        started.elapsed()
    );
    let busy_ms = (busy_of(&probes) - busy_before) as f64 / 1e6;
    let request_ms = read_ticks_ms(&lo) - ticks_before;
    eprintln!(
        "busy {busy_ms:.1} ms while dd ran for {dd_ms:.1} ms, the kernel's request times \
         {request_ms} ms"
    );
    // Each lost request is released by the next issue, which finds it freed: its
    // period ends there, and the gaps between dd's requests are not busy. (Released
    // only when reused or swept, they read 1.5-114 ms busy against 4-5 ms here.)
    assert!(
        busy_ms <= request_ms as f64 + 1.0,
        "busy {busy_ms:.1} ms beyond the kernel's {request_ms} ms of request time: a \
         period ran on past a lost completion"
    );
    assert_eq!(in_flight, 0, "requests whose completion was never seen");
    assert!(unseen > 0, "completions the program never saw");
    assert_eq!(
        recorded + unseen,
        reads,
        "each completion recorded, or counted once as unseen"
    );
}

/// With the completion program detached, every completion is lost and released by
/// someone other than its completion: the next issue of its request, another issue
/// that finds it freed, or the sweep, each under the slot's release lock. Two fio jobs
/// issue on both CPUs at once, so releases of one device's requests meet: the count
/// never reads negative, ends at 0, and each completion is counted once as unseen.
#[test]
fn a_lost_completion_leaves_the_in_flight_count_once_under_concurrent_issues() {
    require_root!();
    let lo = LoopDevice::new(64);
    let probes = start_probes(Some(AttachKind::TpBtf));
    let dev = agent_common::dev::parse(&lo.number).unwrap();
    let in_flight = |probes: &Probes| {
        let block = probes.get::<BlockProbe>().unwrap();
        block
            .in_flight()
            .into_iter()
            .find(|&(d, _)| d == dev)
            .map_or(0, |(_, n)| n)
    };
    let unseen_of = |probes: &Probes| {
        let block = probes.get::<BlockProbe>().unwrap();
        block
            .read_unrecorded()
            .unwrap()
            .into_iter()
            .find(|&(d, _, _)| d == dev)
            .map_or(0, |(_, unseen, _)| unseen)
    };
    let reads_before = lo.stat().read;
    let unseen_before = unseen_of(&probes);
    detach_link_of("block_rq_complete");
    let fio = lo.fio(&[
        "--rw=randread",
        "--bs=4k",
        "--iodepth=1",
        "--numjobs=2",
        "--time_based",
        "--runtime=60",
    ]);
    let (mut samples, mut peak) = (0, 0);
    let sampling = std::time::Instant::now();
    while sampling.elapsed() < std::time::Duration::from_secs(4) {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let n = in_flight(&probes);
        assert!(
            n <= i64::MAX as u64,
            "in-flight count {} after {samples} samples: a request left it twice",
            n as i64
        );
        peak = peak.max(n);
        samples += 1;
    }
    drop(fio);
    lo.wait_idle();
    let reads = lo.stat().read - reads_before;
    let end = in_flight(&probes);
    let unseen = unseen_of(&probes) - unseen_before;
    eprintln!("{reads} reads, {unseen} unseen; in flight at most {peak} of {samples} samples");
    assert!(reads > 1000, "only {reads} reads");
    assert_eq!(
        end, 0,
        "in-flight count once idle (as signed: {})",
        end as i64
    );
    assert_eq!(unseen, reads, "each lost completion counted once as unseen");
}

/// With every block link detached while dd reads, the probe sees nothing of those
/// reads: no slot is left behind to sweep, so only the kernel's own count knows of
/// them. The comparison with `/sys/block/<dev>/stat` counts each once as
/// `unaccounted` (read), and nothing as a double count; the reads before the detach
/// were all recorded and add nothing to it. Read twice: a comparison that found
/// nothing new writes nothing.
#[test]
fn reads_the_probe_never_saw_at_all_are_unaccounted_against_the_kernels_count() {
    require_root!();
    let lo = LoopDevice::new(64);
    let mut probes = start_probes(Some(AttachKind::TpBtf));
    let dev = agent_common::dev::parse(&lo.number).unwrap();
    let reconciled = |probes: &mut Probes| {
        // A collection compares; the map then holds the result.
        let _ = probes.collect();
        probes
            .get::<BlockProbe>()
            .unwrap()
            .read_reconciled()
            .unwrap()
            .into_iter()
            .find(|&(d, _)| d == dev)
            .map(|(_, r)| r)
            .unwrap_or_default()
    };
    lo.dd_read(20, "4k");
    let sysfs_before = lo.stat();
    let before = reconciled(&mut probes);
    assert_eq!(
        before.kernel_seen[0], sysfs_before.read,
        "compared once the device was idle: {before:?}"
    );
    assert_eq!(before.overcounted, [0; 4], "{before:?}");
    for tp in [
        "block_rq_complete",
        "block_rq_requeue",
        "block_rq_issue",
        "block_rq_insert",
    ] {
        detach_link_of(tp);
    }
    lo.dd_read(300, "4k");
    let sysfs = lo.stat();
    let after = reconciled(&mut probes);
    let again = reconciled(&mut probes);
    let reads = sysfs.read - sysfs_before.read;
    eprintln!(
        "{reads} reads while detached; unaccounted {:?} -> {:?}, overcounted {:?}",
        before.unaccounted, after.unaccounted, after.overcounted
    );
    assert_eq!(
        after.kernel_seen[0], sysfs.read,
        "compared at the idle read"
    );
    assert_eq!(
        after.unaccounted[0] - before.unaccounted[0],
        reads,
        "each read the probe never saw, once"
    );
    assert_eq!(after.overcounted, [0; 4], "no double count");
    assert_eq!(again, after, "nothing new, nothing moved");
}

/// The kernel's summed read request times (ms), from the device's stat file.
fn read_ticks_ms(lo: &LoopDevice) -> u64 {
    lo.wait_idle();
    let text = std::fs::read_to_string(format!("/sys/block/{}/stat", lo.name)).unwrap();
    text.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Detaches this process's link to the tracepoint `tp`: its descriptor is replaced
/// with /dev/null (dup2), which drops the link; its owner later closes /dev/null.
fn detach_link_of(tp: &str) {
    use std::os::fd::AsRawFd as _;
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut found = 0;
    for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap() {
        let entry = entry.unwrap();
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if info.lines().any(|l| l == format!("tp_name:\t{tp}")) {
            let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: replaces a descriptor this process owns with another open one.
            assert!(unsafe { libc::dup2(null.as_raw_fd(), fd) } >= 0);
            found += 1;
        }
    }
    assert_eq!(found, 1, "one link of ours to {tp}");
}
