//! The scheduler probe against real contention: CPU hogs pinned to one CPU in a test
//! cgroup, a light periodic task in another; and its samples against the kernel's own
//! per-task accounting (`/proc/<pid>/schedstat` run_delay). Needs root.

use crate::common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use nodepulse::{
    aggregate::ExpHistogram,
    attribution::{Attribution, AttributionConfig, CgroupMode, cgroups::find_hierarchy},
    config::Config,
    probes::{Collection, Probes, sched::SchedProbe},
};

use agent_common::sched::RunqTask;
use common::{Workload, require_tool};

/// A cgroup made for the test, removed (after its processes are killed) on drop.
pub(crate) struct TestCgroup {
    path: PathBuf,
    pub(crate) name: String,
    processes: Vec<Workload>,
}

impl TestCgroup {
    pub(crate) fn new(root: &Path, role: &str) -> Self {
        let name = format!("nodepulse-test-{role}-{}", std::process::id());
        let path = root.join(&name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self {
            path,
            name: format!("/{name}"),
            processes: Vec::new(),
        }
    }

    /// Runs `script` with sh inside this cgroup (it joins before exec'ing anything).
    pub(crate) fn spawn(&mut self, script: &str) {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {script}",
                self.path.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn workload");
        self.processes.push(Workload(Some(child)));
    }

    /// Thread ids in the cgroup (`cgroup.threads` on v2, `tasks` on v1).
    pub(crate) fn threads(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.threads"))
            .or_else(|_| std::fs::read_to_string(self.path.join("tasks")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Every process in the cgroup, children of the spawned ones included.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for pid in self.threads() {
            // SAFETY: kill(2) on a process of our own test cgroup.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        self.processes.clear(); // reaps the direct children
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}

/// (run_delay ns, timeslices) of one thread: `/proc/<tid>/schedstat`'s second and
/// third fields (the third is `sched_info.pcount`, its arrivals on a CPU).
fn schedstat(tid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
    let mut fields = text
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// Total run_delay (ns) of these threads, from /proc/<tid>/schedstat.
pub(crate) fn run_delay(tids: &[u32]) -> u64 {
    tids.iter().filter_map(|&t| schedstat(t)).map(|s| s.0).sum()
}

fn cgroup_hist(probes: &mut Probes, cgroup: &str) -> ExpHistogram {
    cgroup_hist_in(&probes.collect(), cgroup)
}

fn cgroup_hist_in(collection: &Collection, cgroup: &str) -> ExpHistogram {
    collection
        .readings
        .iter()
        .find(|r| {
            r.key.family == "cgroup.runqueue.latency" && r.key.label("cgroup") == Some(cgroup)
        })
        .map(|r| r.hist.clone())
        .unwrap_or_default()
}

#[test]
fn contention_shows_in_its_cgroup_and_matches_schedstat() {
    require_root!();
    contention(CgroupMode::V2);
}

/// The same on the v1 cpu controller's hierarchy, for hosts without cgroup v2.
#[test]
fn contention_on_the_v1_cpu_hierarchy() {
    require_root!();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    if find_hierarchy(&mounts, CgroupMode::V1Cpu).is_none() {
        eprintln!("SKIPPED: no v1 cpu controller mounted on this machine");
        return;
    }
    contention(CgroupMode::V1Cpu);
}

/// The contention tests pin work to the same CPUs: one at a time.
static CPUS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn contention(mode: CgroupMode) {
    let _cpus = CPUS.lock().unwrap_or_else(|e| e.into_inner());
    require_tool("taskset");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let hierarchy = find_hierarchy(&mounts, mode).expect("the cgroup hierarchy");
    let mut config = Config::default();
    config.probes.sched.cgroup = mode;
    let mut probes = Probes::start(&config).expect("load");
    let sched = probes
        .statuses()
        .iter()
        .find(|s| s.probe == "sched")
        .unwrap();
    assert!(sched.is_up(), "{sched:?}");

    let mut busy = TestCgroup::new(&hierarchy.root, "busy");
    let mut idle = TestCgroup::new(&hierarchy.root, "idle");
    // Four CPU hogs sharing CPU 0; a task waking every millisecond alone on CPU 1
    // (thousands of samples, so its p99 shrugs off the odd host steal on this VM).
    // Each hog is a direct child of this test, so it is killed and reaped here.
    for _ in 0..4 {
        busy.spawn("taskset -c 0 sh -c 'while :; do :; done'");
    }
    // One long-lived process (no fork per wakeup), so only its own waits count.
    idle.spawn("taskset -c 1 python3 -c 'import time\nwhile True: time.sleep(0.001)'");
    thread::sleep(Duration::from_millis(1000));

    let busy_before = cgroup_hist(&mut probes, &busy.name);
    let idle_before = cgroup_hist(&mut probes, &idle.name);
    let tids = busy.threads();
    let delay_before = run_delay(&tids);
    thread::sleep(Duration::from_secs(3));
    let delay_after = run_delay(&tids);
    let busy_d = cgroup_hist(&mut probes, &busy.name).since(&busy_before);
    let idle_d = cgroup_hist(&mut probes, &idle.name).since(&idle_before);

    let busy_p99 = busy_d.quantile(0.99).unwrap();
    let idle_p99 = idle_d.quantile(0.99).unwrap();
    eprintln!(
        "busy: {} waits, p99 {busy_p99:.0} ns; idle: {} waits, p99 {idle_p99:.0} ns",
        busy_d.count(),
        idle_d.count()
    );
    assert!(
        busy_p99 > 1_000_000.0,
        "four hogs on one CPU wait milliseconds"
    );
    assert!(busy_p99 > 5.0 * idle_p99, "contention must stand out");
    assert!(idle_d.count() > 1000, "the periodic task woke ~3000 times");

    // The probe reads the scheduler's own enqueue time and clock: over the same span,
    // the sum of its samples equals the kernel's run_delay growth for those threads,
    // up to the one wait per thread that straddles each end of the span.
    let kernel = (delay_after - delay_before) as f64;
    let ours = busy_d.sum as f64;
    eprintln!("sum of waits: nodepulse {ours:.0} ns, schedstat {kernel:.0} ns");
    assert!((ours / kernel - 1.0).abs() < 0.05, "{ours} vs {kernel}");
}

/// `se.nr_migrations` of these threads, from /proc/<tid>/sched.
fn migrations(tids: &[u32]) -> u64 {
    tids.iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{t}/sched")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.starts_with("se.nr_migrations"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// What the kernel has accounted for a stopped thread and the probe has not reported
/// yet: switch-ins the switch program did not see since the last one it saw (their
/// waits come with the thread's next sample), as (run_delay ns, arrivals).
fn unreported(probes: &Probes, tid: u32) -> (u64, u64) {
    let (run_delay, pcount) = schedstat(tid).expect("the thread's schedstat");
    let seen = probes
        .get::<SchedProbe>()
        .expect("the sched probe")
        .remembered(tid)
        .unwrap_or_else(|| panic!("thread {tid} waited, yet the probe remembers nothing"));
    assert!(
        seen.run_delay <= run_delay && seen.pcount <= pcount,
        "thread {tid}: the probe is ahead of the kernel: {seen:?} vs ({run_delay}, {pcount})"
    );
    (run_delay - seen.run_delay, pcount - seen.pcount)
}

/// The kernel's totals and the probe's state for stopped threads, at one end of a span.
struct End {
    hist: ExpHistogram,
    run_delay: u64,
    slices: u64,
    moves: u64,
    /// Summed [`unreported`] over the threads.
    unreported: (u64, u64),
    unseen: u64,
}

impl End {
    fn read(probes: &mut Probes, cgroup: &str, tids: &[u32]) -> Self {
        let collection = probes.collect();
        let hist = cgroup_hist_in(&collection, cgroup);
        let unseen = collection
            .drops
            .iter()
            .find(|(name, _)| *name == "runqueue_switch_ins_unseen")
            .map_or(0, |d| d.1);
        let stats: Vec<_> = tids.iter().map(|&t| schedstat(t).unwrap()).collect();
        let unreported = tids
            .iter()
            .map(|&t| unreported(probes, t))
            .fold((0, 0), |a, u| (a.0 + u.0, a.1 + u.1));
        Self {
            hist,
            run_delay: stats.iter().map(|s| s.0).sum(),
            slices: stats.iter().map(|s| s.1).sum(),
            moves: migrations(tids),
            unreported,
            unseen,
        }
    }
}

/// A cgroup's waits against its threads' run_delay over a span closed by SIGSTOP at
/// both ends (stopped threads wait for nothing, so no wait straddles an end): equal to
/// the nanosecond, for threads pinned to one CPU and for threads the load balancer
/// moves while they wait (each sample is the thread's run_delay growth since its last
/// switch-in, the part accounted on the queue it left included). A switch-in the
/// kernel skipped the program for is counted (`runqueue_switch_ins_unseen`) and its
/// wait comes with the thread's next sample; one skipped just before an end moves
/// its wait across that end, which the probe's per-thread state against schedstat's
/// says exactly.
#[test]
fn cgroup_waits_between_stops_equal_run_delay() {
    require_root!();
    require_tool("taskset");
    let _cpus = CPUS.lock().unwrap_or_else(|e| e.into_inner());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for mode in [CgroupMode::V2, CgroupMode::V1Cpu] {
        let Some(hierarchy) = find_hierarchy(&mounts, mode) else {
            eprintln!("SKIPPED {mode:?}: not mounted");
            continue;
        };
        let mut config = Config::default();
        config.probes.sched.cgroup = mode;
        let mut probes = Probes::start(&config).expect("load");
        for pinned in [true, false] {
            let mut hogs = TestCgroup::new(&hierarchy.root, "stops");
            let pin = if pinned { "taskset -c 0 " } else { "" };
            for _ in 0..4 {
                hogs.spawn(&format!("{pin}sh -c 'while :; do :; done'"));
            }
            thread::sleep(Duration::from_millis(300));
            let tids = hogs.threads();
            let signal = |sig| {
                for &t in &tids {
                    // SAFETY: kill(2) on the test's own workload.
                    unsafe { libc::kill(t as i32, sig) };
                }
            };
            signal(libc::SIGSTOP);
            thread::sleep(Duration::from_millis(100));
            let start = End::read(&mut probes, &hogs.name, &tids);
            signal(libc::SIGCONT);
            thread::sleep(Duration::from_secs(3));
            signal(libc::SIGSTOP);
            thread::sleep(Duration::from_millis(100));
            let end = End::read(&mut probes, &hogs.name, &tids);

            let ours = end.hist.since(&start.hist);
            let kernel = end.run_delay - start.run_delay;
            let slices = end.slices - start.slices;
            // What the kernel accounted in the span and the probe reports in it: less
            // the unseen switch-ins just before the closing stop (reported after it),
            // plus those just before the opening one (reported in the span).
            let expected = kernel - end.unreported.0 + start.unreported.0;
            let arrivals = slices - end.unreported.1 + start.unreported.1;
            let unseen = end.unseen - start.unseen;
            eprintln!(
                "{mode:?}, pinned {pinned}: nodepulse {} ns in {} waits, run_delay {kernel} \
                 ns in {slices} timeslices ({:+.4} %), {} migrations; unseen at the \
                 ends: {:?} then {:?}; switch-ins unseen (host-wide) {unseen}",
                ours.sum,
                ours.count(),
                (ours.sum as f64 / kernel as f64 - 1.0) * 100.0,
                end.moves - start.moves,
                start.unreported,
                end.unreported,
            );
            assert!(kernel > 1_000_000_000, "the hogs waited: {kernel}");
            assert_eq!(
                ours.sum, expected,
                "{mode:?}, pinned {pinned}: every nanosecond of run_delay, in the span"
            );
            // One sample per arrival the program saw; the others are counted (the
            // counter is host-wide, so it may count more than these threads').
            assert!(
                ours.count() <= arrivals && ours.count() + unseen >= arrivals,
                "{mode:?}: {} samples + {unseen} unseen for {arrivals} arrivals",
                ours.count()
            );
        }
    }
}

/// `n` busy loops pinned to CPU 0 in a test cgroup of the default hierarchy, given
/// 300 ms to be switched in.
fn pinned_hogs(role: &str, n: usize) -> TestCgroup {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let hierarchy = find_hierarchy(&mounts, CgroupMode::Auto).expect("a cgroup hierarchy");
    let mut hogs = TestCgroup::new(&hierarchy.root, role);
    for _ in 0..n {
        hogs.spawn("taskset -c 0 sh -c 'while :; do :; done'");
    }
    thread::sleep(Duration::from_millis(300));
    hogs
}

/// The kernel now and then frees a task without running the free program (see
/// architecture.md). The task map never evicts (an evicted live task's next sample
/// would be partial, uncounted), so the agent sweeps out what a skipped free leaves:
/// the entry of a thread that no longer exists goes, the living keep theirs.
#[test]
fn the_task_map_is_swept_of_exited_threads_and_keeps_the_living() {
    require_root!();
    require_tool("taskset");
    let _cpus = CPUS.lock().unwrap_or_else(|e| e.into_inner());
    let mut probes = Probes::start(&Config::default()).expect("load");
    let hogs = pinned_hogs("sweep", 2);
    let tids = hogs.threads();
    // No thread ever has an id above pid_max: such an entry is one a skipped free left.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = pid_max + 1;
    let sched = probes.get_mut::<SchedProbe>().expect("the sched probe");
    let stale = RunqTask {
        start_time: 1,
        run_delay: 5_000,
        pcount: 3,
    };
    assert!(sched.remember_for_test(dead, stale), "planted");
    let mut attribution = Attribution::new(
        "/sys".into(),
        &AttributionConfig::default(),
        CgroupMode::Auto,
    );
    let gone = sched
        .sweep_tasks(&mut attribution)
        .expect("this host's /proc");
    eprintln!("swept {gone} entries of exited threads (the planted one included)");
    assert!(gone >= 1, "swept {gone}");
    assert!(
        sched.remembered(dead).is_none(),
        "the dead thread's entry went"
    );
    for &t in &tids {
        assert!(sched.remembered(t).is_some(), "live hog {t} kept its entry");
    }
}

/// A probe detached by SIGHUP and attached again reports none of the waits made while
/// it was off: what the switch program remembered of each task is dropped at the
/// detach, so a task's first sample afterwards is its last wait alone (pinned threads:
/// no part on another queue), and the span after the attach equals run_delay.
#[test]
fn waits_while_detached_are_not_reported_after_the_probe_returns() {
    require_root!();
    require_tool("taskset");
    let _cpus = CPUS.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = Config::default();
    let mut probes = Probes::start(&config).expect("load");
    let hogs = pinned_hogs("gap", 3);
    let tids = hogs.threads();
    let signal = |sig| {
        for &t in &tids {
            // SAFETY: kill(2) on the test's own workload.
            unsafe { libc::kill(t as i32, sig) };
        }
    };
    let remembered = |probes: &Probes| -> Vec<_> {
        let sched = probes.get::<SchedProbe>().expect("the sched probe");
        tids.iter().filter_map(|&t| sched.remembered(t)).collect()
    };
    assert_eq!(remembered(&probes).len(), tids.len(), "the hogs were seen");

    config.probes.sched.enabled = false;
    probes.set_enabled(&config.probes);
    let gap = run_delay(&tids);
    thread::sleep(Duration::from_millis(1000));
    signal(libc::SIGSTOP);
    thread::sleep(Duration::from_millis(100));
    let gap = run_delay(&tids) - gap;
    config.probes.sched.enabled = true;
    let toggled = probes.set_enabled(&config.probes);
    assert_eq!(toggled.attached, ["sched"], "{toggled:?}");
    assert!(
        remembered(&probes).is_empty(),
        "the detach forgot the tasks"
    );

    let start = End::read(&mut probes, &hogs.name, &[]);
    let kernel_before = run_delay(&tids);
    signal(libc::SIGCONT);
    thread::sleep(Duration::from_millis(1000));
    signal(libc::SIGSTOP);
    thread::sleep(Duration::from_millis(100));
    let end = End::read(&mut probes, &hogs.name, &tids);
    let ours = end.hist.since(&start.hist);
    let kernel = run_delay(&tids) - kernel_before;
    eprintln!(
        "waits while detached {gap} ns; after the attach: nodepulse {} ns in {} waits, \
         run_delay {kernel} ns, unseen at the end {:?}",
        ours.sum,
        ours.count(),
        end.unreported
    );
    assert!(
        gap > 300_000_000,
        "the hogs waited while the probe was off: {gap}"
    );
    assert_eq!(
        ours.sum,
        kernel - end.unreported.0,
        "the span after the attach, and nothing of the gap"
    );
    signal(libc::SIGCONT);
}
