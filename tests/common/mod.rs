//! Helpers for integration tests against the real kernel: root checks, loop devices
//! that clean up after themselves, workloads that are killed when the test ends.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use nodepulse::{
    aggregate::ExpHistogram,
    config::Config,
    probes::{AttachKind, Probes, block::FAMILY_DEVICE},
};

/// `N` distinct free TCP ports on loopback (all bound at once, so no two are the same,
/// then released for the agent to take).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test with a visible message when not root; as root, holds the
/// test's subject lock until it ends (see [`subject`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            // Written to the real stderr: libtest would hide an eprintln! of a test
            // that passes, and a skip must be visible.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {}:{}: needs root to load eBPF programs (run `sudo -E cargo xtask test`)",
                file!(),
                line!()
            );
            return;
        }
        $crate::one_subject_at_a_time!();
    };
}

/// Fails with the fix when a workload tool is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{tool} is not installed: run `cargo xtask setup`");
}

/// A system tool by name: from PATH, or from the sbin directories a non-login root
/// shell may lack in its PATH.
pub fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    Command::new(found.unwrap_or_else(|| PathBuf::from(name)))
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    stdout_of_success(cmd, out)
}

/// The standard output of a command that must have succeeded (else its stderr).
pub fn stdout_of_success(cmd: &Command, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Completed requests per operation, from `/sys/block/<dev>/stat`
/// (Documentation/block/stat.rst).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub read: u64,
    pub write: u64,
    pub discard: u64,
    pub flush: u64,
}

impl DiskStat {
    pub fn get(&self, op: &str) -> u64 {
        match op {
            "read" => self.read,
            "write" => self.write,
            "discard" => self.discard,
            "flush" => self.flush,
            _ => 0,
        }
    }
}

/// A loop device over a sparse file with direct I/O, detached and deleted on drop
/// (also when the test panics).
pub struct LoopDevice {
    pub path: PathBuf,
    pub name: String,
    /// `major:minor`.
    pub number: String,
    backing: PathBuf,
}

impl LoopDevice {
    pub fn new(size_mib: u64) -> Self {
        // Under the target directory: it is on a disk that supports O_DIRECT (tmpfs
        // does not).
        Self::backed_in(Path::new(env!("CARGO_TARGET_TMPDIR")), size_mib, true)
    }

    /// A loop device whose sparse backing file lives in `dir` (a small tmpfs makes a
    /// device whose writes fail with "no space").
    pub fn backed_in(dir: &Path, size_mib: u64, direct_io: bool) -> Self {
        let backing = tempfile::Builder::new()
            .prefix("nodepulse-loop-")
            .tempfile_in(dir)
            .expect("backing file")
            .into_temp_path()
            .keep()
            .expect("keep backing file");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap();
        f.set_len(size_mib << 20).unwrap();
        let path = run(tool("losetup")
            .arg(format!(
                "--direct-io={}",
                if direct_io { "on" } else { "off" }
            ))
            .args(["-f", "--show"])
            .arg(&backing));
        let path = PathBuf::from(path.trim());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let number = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .expect("loop device in sysfs")
            .trim()
            .to_owned();
        let device = Self {
            path,
            name,
            number,
            backing,
        };
        // The kernel reads a new disk by itself (partition scan) right after attach:
        // let that finish so it does not straddle a test's baseline.
        std::thread::sleep(std::time::Duration::from_millis(200));
        device.wait_idle();
        device
    }

    /// Waits until no request is in flight (`/sys/block/<dev>/inflight` reads 0 0): a
    /// workload that exits leaves requests the device still completes afterwards.
    pub fn wait_idle(&self) {
        let path = format!("/sys/block/{}/inflight", self.name);
        for _ in 0..500 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.split_whitespace().all(|n| n == "0") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} still has requests in flight after 5 s", self.name);
    }

    /// Selects the device's I/O scheduler (`none`, `mq-deadline`, …).
    pub fn set_scheduler(&self, scheduler: &str) {
        let path = format!("/sys/block/{}/queue/scheduler", self.name);
        std::fs::write(&path, scheduler).unwrap_or_else(|e| panic!("{path}: {e}"));
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.contains(&format!("[{scheduler}]")), "{path}: {now}");
    }

    /// Completed requests so far, once the device is idle.
    pub fn stat(&self) -> DiskStat {
        self.wait_idle();
        let text = std::fs::read_to_string(format!("/sys/block/{}/stat", self.name)).unwrap();
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        DiskStat {
            read: f[0],
            write: f[4],
            discard: f.get(11).copied().unwrap_or(0),
            flush: f.get(15).copied().unwrap_or(0),
        }
    }

    /// `count` direct reads of `bs` bytes with dd: one request each.
    pub fn dd_read(&self, count: u32, bs: &str) {
        run(Command::new("dd")
            .arg(format!("if={}", self.path.display()))
            .args(["of=/dev/null", "iflag=direct", "status=none"])
            .arg(format!("bs={bs}"))
            .arg(format!("count={count}")));
    }

    /// `count` direct writes; with `fsync`, dd ends with an fsync, which flushes.
    pub fn dd_write(&self, count: u32, bs: &str, fsync: bool) {
        let mut cmd = Command::new("dd");
        cmd.arg(format!("of={}", self.path.display()))
            .args(["if=/dev/zero", "oflag=direct", "status=none"])
            .arg(format!("bs={bs}"))
            .arg(format!("count={count}"));
        if fsync {
            cmd.arg("conv=fsync");
        }
        run(&mut cmd);
    }

    /// Starts fio against this device; killed when the guard drops.
    pub fn fio(&self, args: &[&str]) -> Workload {
        self.fio_under(&[], args)
    }

    /// Starts fio through `wrapper` (e.g. `chrt -f 10`, which runs it under
    /// SCHED_FIFO), against this device; killed when the guard drops.
    pub fn fio_under(&self, wrapper: &[&str], args: &[&str]) -> Workload {
        require_tool("fio");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                require_tool(program);
                let mut c = Command::new(program);
                c.args(rest).arg("fio");
                c
            }
            None => Command::new("fio"),
        };
        let child = command
            .args([
                "--name=np",
                "--ioengine=libaio",
                "--direct=1",
                "--output-format=json",
                // Jobs as threads: a killed fio takes them with it (job processes run
                // in sessions of their own and would keep the device busy).
                "--thread",
            ])
            .arg(format!("--filename={}", self.path.display()))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fio");
        Workload(Some(child))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = tool("losetup").arg("-d").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// A child process killed (by PID) when the test ends, whatever the outcome.
pub struct Workload(pub Option<Child>);

impl Workload {
    /// Waits for a normal exit and returns stdout.
    pub fn finish(mut self) -> String {
        let child = self.0.take().expect("running");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "workload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn start_probes(attach: Option<AttachKind>) -> Probes {
    start_probes_with(attach, true)
}

/// `kernel_timestamps: false` makes the probe time every request itself.
pub fn start_probes_with(attach: Option<AttachKind>, kernel_timestamps: bool) -> Probes {
    let mut config = Config::default();
    config.probes.block.attach = attach;
    config.probes.block.kernel_timestamps = kernel_timestamps;
    let probes = Probes::start(&config).expect("load the eBPF object");
    let status = probes
        .statuses()
        .iter()
        .find(|s| s.probe == "block")
        .unwrap();
    assert!(
        status.is_up(),
        "block probe must attach via {attach:?} on this kernel: {status:?}"
    );
    probes
}

/// Cumulative device-time histograms (issue → completion, measured on every attach
/// kind) per operation for one device (`major:minor`), and the probes' drop counters.
pub struct BlockSnapshot {
    pub hists: BTreeMap<String, ExpHistogram>,
    pub drops: BTreeMap<&'static str, u64>,
}

impl BlockSnapshot {
    pub fn take(probes: &mut Probes, number: &str) -> Self {
        let c = probes.collect();
        Self {
            hists: c
                .readings
                .into_iter()
                .filter(|r| r.key.family == FAMILY_DEVICE && r.key.label("dev") == Some(number))
                .map(|r| (r.key.label("op").unwrap().to_owned(), r.hist))
                .collect(),
            drops: c.drops.into_iter().collect(),
        }
    }

    /// Samples of `op` recorded since `earlier`.
    pub fn since(&self, earlier: &Self, op: &str) -> ExpHistogram {
        let empty = ExpHistogram::default();
        let now = self.hists.get(op).unwrap_or(&empty);
        now.since(earlier.hists.get(op).unwrap_or(&empty))
    }

    pub fn drops_since(&self, earlier: &Self, name: &str) -> u64 {
        self.drops[name] - earlier.drops[name]
    }
}

pub fn nodepulse() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nodepulse"))
}

/// `nodepulse run <args>`, returned once its probes are attached (it has logged that
/// the first report is coming). Killed if the test ends first.
pub struct RunningAgent {
    pub process: Workload,
    stderr: std::thread::JoinHandle<String>,
    /// What it logged up to "first report in".
    startup_log: String,
}

impl RunningAgent {
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = nodepulse()
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nodepulse");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = String::new();
        for line in lines.by_ref().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
            if line.contains("first report in") {
                break;
            }
        }
        assert!(
            log.contains("first report in"),
            "nodepulse did not start: {log}"
        );
        let startup_log = log.clone();
        let stderr = std::thread::spawn(move || {
            lines.map_while(Result::ok).fold(log, |mut acc, l| {
                acc.push_str(&l);
                acc.push('\n');
                acc
            })
        });
        Self {
            process: Workload(Some(child)),
            stderr,
            startup_log,
        }
    }

    /// `nodepulse run` with a configuration file, reporting JSON every second.
    pub fn with_config(config: &Path) -> Self {
        Self::start(&[
            "--interval",
            "1s",
            "--format",
            "json",
            "--config",
            config.to_str().expect("UTF-8 path"),
        ])
    }

    /// The first line of the startup log containing `needle`.
    pub fn log_line(&self, needle: &str) -> Option<String> {
        self.startup_log
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
    }

    pub fn pid(&self) -> u32 {
        self.process.0.as_ref().map_or(0, |c| c.id())
    }

    /// SIGTERM, then waits for a clean exit (the agent sends a final report and flushes
    /// its exporters first); returns (stdout, stderr).
    pub fn terminate(self) -> (String, String) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.finish()
    }

    /// Waits for a normal exit; returns (stdout, stderr).
    pub fn finish(self) -> (String, String) {
        let stdout = self.process.finish();
        (stdout, self.stderr.join().unwrap_or_default())
    }
}

/// A bpffs of the test's own, in a temporary directory: what the agent pins there is
/// invisible to other agents and is detached when it is unmounted (on drop).
pub struct Bpffs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nodepulse-bpffs-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        // Reachable by the unprivileged users some tests run the agent as.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("bpf");
        std::fs::create_dir(&path).unwrap();
        run(tool("mount").args(["-t", "bpf", "bpf"]).arg(&path));
        Self { path, _dir: dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path.join("nodepulse"));
        let _ = tool("umount").arg(&self.path).status();
    }
}

pub mod deploy;
// The guest itself runs in the kvm_guest_process executable; tests here only start it.
#[allow(dead_code)]
pub mod kvm_guest;
pub mod otlp_server;
#[macro_use]
pub mod subject;

/// `GET path` over plain HTTP/1.1: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// The address an endpoint logged at startup: `<needle>http://ADDR/...`.
pub fn logged_address(agent: &RunningAgent, needle: &str) -> String {
    agent
        .log_line(needle)
        .and_then(|l| {
            let rest = l.split("http://").nth(1)?;
            Some(rest.split('/').next()?.to_owned())
        })
        .unwrap_or_else(|| panic!("the agent logs `{needle}`"))
}
