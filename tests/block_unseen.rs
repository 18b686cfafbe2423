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
/// device, as many as sysfs counts reads. A busy period that only lost completions kept
/// open ends at the last completion seen or a lost request's issue, not when the sweep
/// ran: the busy time stays within dd's run, though it spans the gaps between its
/// requests, which no completion marked (it reads above the kernel's request times).
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
    eprintln!("busy {busy_ms:.1} ms while dd ran for {dd_ms:.1} ms");
    assert!(
        busy_ms <= dd_ms,
        "busy {busy_ms:.1} ms beyond dd's {dd_ms:.1} ms: a period ran on to the sweep"
    );
    assert_eq!(in_flight, 0, "requests whose completion was never seen");
    assert!(unseen > 0, "completions the program never saw");
    assert_eq!(
        recorded + unseen,
        reads,
        "each completion recorded, or counted once as unseen"
    );
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
