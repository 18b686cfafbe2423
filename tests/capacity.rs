//! Capacity signals against the kernel's own accounting (root, real kernel, loop
//! devices, cgroups): the block probe's busy time against `/sys/block/<dev>/stat`
//! io_ticks under fio, and pressure stall shares of a cgroup squeezed by a CPU quota.

use crate::common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{LoopDevice, require_tool};
use nodepulse::probes::{Probes, block::BlockProbe};

/// io_ticks (ms with requests in flight) of a device, field 10 of its stat file.
fn io_ticks_ms(name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    text.split_whitespace().nth(9).unwrap().parse().unwrap()
}

/// The probe's busy time of one device, ns.
fn busy_ns(probes: &Probes, device: &LoopDevice) -> u64 {
    let (major, minor) = device.number.split_once(':').unwrap();
    let dev = (major.parse::<u32>().unwrap() << 20) | minor.parse::<u32>().unwrap();
    probes
        .get::<BlockProbe>()
        .expect("the block probe is attached")
        .read_busy()
        .unwrap()
        .into_iter()
        .find(|&(d, _)| d == dev)
        .map_or(0, |(_, ns)| ns)
}

/// Busy fraction by the probe and by io_ticks over the same `secs`, taken in the
/// middle of a fio run (`fio_args` empty: an idle device).
fn measure(probes: &Probes, device: &LoopDevice, fio_args: &[&str], secs: u64) -> (f64, f64) {
    let runtime = format!("--runtime={}", secs + 2);
    let mut args = vec!["--time_based", runtime.as_str()];
    args.extend_from_slice(fio_args);
    let fio = (!fio_args.is_empty()).then(|| device.fio(&args));
    thread::sleep(Duration::from_secs(1));
    let (ticks0, busy0, started) = (
        io_ticks_ms(&device.name),
        busy_ns(probes, device),
        Instant::now(),
    );
    thread::sleep(Duration::from_secs(secs));
    let (ticks1, busy1) = (io_ticks_ms(&device.name), busy_ns(probes, device));
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Some(fio) = fio {
        fio.finish();
    }
    device.wait_idle();
    (
        (busy1 - busy0) as f64 / 1e6 / elapsed_ms,
        (ticks1 - ticks0) as f64 / elapsed_ms,
    )
}

#[test]
fn busy_fraction_matches_io_ticks_under_fio() {
    require_root!();
    require_tool("fio");
    let probes = common::start_probes(None);
    let device = LoopDevice::new(512);
    let mut rows = Vec::new();
    for (what, args) in [
        ("idle", vec![]),
        (
            "qd1 saturating",
            vec!["--rw=randread", "--bs=4k", "--iodepth=1"],
        ),
        (
            "qd8 saturating",
            vec!["--rw=randread", "--bs=4k", "--iodepth=8"],
        ),
        (
            "1M reads at 20/s",
            vec!["--rw=randread", "--bs=1m", "--iodepth=1", "--rate_iops=20"],
        ),
        (
            "4k reads at 200/s",
            vec!["--rw=randread", "--bs=4k", "--iodepth=1", "--rate_iops=200"],
        ),
    ] {
        let (ours, kernel) = measure(&probes, &device, &args, 3);
        eprintln!("{what}: nodepulse busy {ours:.3}, io_ticks {kernel:.3}");
        rows.push((what, ours, kernel));
    }
    for (what, ours, kernel) in rows {
        // io_ticks adds whole jiffies (4 ms at HZ=250) between its stamps, so for
        // short, sparse requests it errs either way; the probe counts nanoseconds.
        let tolerance = (0.15 * kernel).max(0.03);
        assert!(
            (ours - kernel).abs() <= tolerance,
            "{what}: nodepulse busy {ours:.3}, io_ticks {kernel:.3}"
        );
        assert!(ours <= 1.0 + 1e-3, "{what}: busy above 1: {ours}");
        if what != "idle" {
            assert!(kernel > 0.0, "{what}: the device did work");
        }
    }
}

/// A cgroup2 cgroup for the test, its processes killed and the cgroup removed on drop.
struct PressureCgroup {
    path: std::path::PathBuf,
    scope: String,
    workload: Option<common::Workload>,
}

impl PressureCgroup {
    fn new(root: &std::path::Path, role: &str) -> Self {
        let name = format!("nodepulse-test-capacity-{role}-{}", std::process::id());
        let path = root.join(&name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self {
            path,
            scope: format!("/{name}"),
            workload: None,
        }
    }

    fn spawn(&mut self, script: &str) {
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {script}",
                self.path.display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn workload");
        self.workload = Some(common::Workload(Some(child)));
    }
}

impl Drop for PressureCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        self.workload = None; // kills (by PID) and reaps the child
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}

/// A cgroup with four CPU hogs on this machine's two CPUs stalls most of the time; a
/// cgroup that sleeps does not; both as the kernel's own totals say, read through
/// the same shares the agent reports.
#[test]
fn cpu_pressure_moves_when_a_cgroup_is_squeezed() {
    require_root!();
    require_tool("stress-ng");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let root = nodepulse::capacity::psi::cgroup2_root(&mounts).expect("a cgroup2 mount");
    if !root.join("cpu.pressure").exists() && !std::path::Path::new("/proc/pressure/cpu").exists() {
        eprintln!("skipped: this kernel has no PSI");
        return;
    }
    let mut squeezed = PressureCgroup::new(&root, "squeezed");
    let mut calm = PressureCgroup::new(&root, "calm");
    let hogs = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    squeezed.spawn(&format!("stress-ng --cpu {hogs} --timeout 30s"));
    calm.spawn("sleep 30");
    thread::sleep(Duration::from_millis(500));
    let mut pressure = nodepulse::capacity::psi::Pressure::new(
        std::path::Path::new("/proc"),
        Some(root.clone()),
        10_000,
    );
    let started = Instant::now();
    pressure.update(0.0);
    thread::sleep(Duration::from_secs(3));
    let shares = pressure.update(started.elapsed().as_secs_f64() * 1e6);
    let share = |scope: &str| {
        shares
            .iter()
            .find(|s| s.scope == scope && s.resource == "cpu" && s.kind == "some")
            .map(|s| s.share)
    };
    let (sq, ca, host) = (share(&squeezed.scope), share(&calm.scope), share("host"));
    eprintln!("cpu some: squeezed {sq:?}, calm {ca:?}, host {host:?}");
    // Twice as many runnable hogs as CPUs: one always waits.
    assert!(sq.is_some_and(|s| s > 0.8), "squeezed: {sq:?}");
    // A sleeping cgroup has no stall, and is under the budget only if it stalled.
    assert!(ca.is_none_or(|s| s < 0.02), "calm: {ca:?}");
    assert!(host.is_some_and(|h| h > 0.5), "host: {host:?}");
}
