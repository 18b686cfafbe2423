//! Running a remedial program: argv only (never a shell), the alarm as environment
//! variables and as JSON on stdin, its own process group, output captured (bounded)
//! for the audit log. Every process it started, even one that left the group or the
//! session, is killed when the program ends, at its timeout and when the agent stops:
//! found in the run's cgroup ([`super::run_cgroup`]) and by its environment markers
//! ([`super::sweep`]).

use super::{run_cgroup::RunCgroup, sweep};
use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

/// Output kept per stream.
const OUTPUT_LIMIT: usize = 4096;
/// Between SIGTERM and SIGKILL at a timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct ProgramResult {
    pub exit_code: Option<i32>,
    /// Killed by a signal (not by us): its number.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub output: String,
    /// It could not be started at all.
    pub error: Option<String>,
    /// Killed because the agent is stopping.
    pub stopped: bool,
    /// Processes of the run still alive once the program ended (or was killed), and
    /// then killed: `pid comm`.
    pub killed: Vec<String>,
}

/// Runs `argv` to its end, its timeout, or until `stop` is set; `run_id` marks its
/// processes.
pub fn run(
    argv: &[String],
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
    run_id: &str,
    stop: &AtomicBool,
) -> ProgramResult {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(sweep::RUN_VAR, run_id)
        .env(sweep::AGENT_VAR, sweep::this_agent())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let cgroup = RunCgroup::create(run_id)
        .inspect_err(|e| tracing::debug!("no cgroup for action run {run_id}: {e}"))
        .ok();
    if let Some(cgroup) = &cgroup {
        let mut enter = cgroup.enter_hook();
        // SAFETY: the hook only calls write(2) on a descriptor opened before the fork,
        // which is async-signal-safe. A failure is not fatal: the markers still apply.
        unsafe {
            command.pre_exec(move || {
                let _ = enter();
                Ok(())
            });
        }
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
            return ProgramResult {
                error: Some(format!(
                    "cannot start {}: {e}; check the rule's `program`",
                    argv[0]
                )),
                ..Default::default()
            };
        }
    };
    let pgid = child.id() as i32;
    // spawn() returns after exec, so the hook has run by now.
    if let Some(cgroup) = &cgroup
        && !cgroup.holds(pgid)
    {
        tracing::warn!(
            "action run {run_id} could not enter its cgroup; its processes are found by \
             their environment markers only"
        );
    }
    if let Some(mut input) = child.stdin.take() {
        let data = stdin.to_vec();
        // A program that never reads stdin must not block us: write from a thread,
        // and ignore EPIPE when it exits without reading.
        std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_bounded(stream));
        });
    }
    drop(tx);

    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let mut stopped = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline || stop.load(Ordering::SeqCst) => {
                stopped = Instant::now() < deadline;
                timed_out = !stopped;
                kill_group(pgid, libc::SIGTERM);
                let grace = Instant::now() + KILL_GRACE;
                while Instant::now() < grace {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Whatever is left of the group, the leader included.
                kill_group(pgid, libc::SIGKILL);
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    // Whatever the run started that is still alive, in this group or not: its cgroup's
    // members, then anything carrying its marker (that left the cgroup, as root can).
    let mut killed = cgroup.as_ref().map(RunCgroup::kill_all).unwrap_or_default();
    for m in sweep::kill_run(run_id) {
        if !killed.iter().any(|k| k.pid == m.pid) {
            killed.push(m);
        }
    }
    if let Some(cgroup) = cgroup {
        cgroup.remove();
    }
    let killed: Vec<String> = killed.iter().map(sweep::Marked::describe).collect();
    // The pipes close once the last holder is dead; a holder that hid from the sweep
    // is not waited for.
    let mut output = String::new();
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(text) => output.push_str(&text),
            Err(_) => break,
        }
    }
    use std::os::unix::process::ExitStatusExt;
    ProgramResult {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        output,
        error: None,
        stopped,
        killed,
    }
}

fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) on our own child's process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Reads the stream to its end, keeping its first `OUTPUT_LIMIT` bytes.
fn read_bounded(mut stream: impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn run_sh(script: &str, timeout: Duration) -> ProgramResult {
        let id = crate::util::random::hex_id::<8>();
        run(&sh(script), &[], b"", timeout, &id, &AtomicBool::new(false))
    }

    /// The pids the script wrote to `file`, one a line, once it has `n` of them.
    fn pids(file: &Path, n: usize) -> Vec<i32> {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert_eq!(pids.len(), n, "{text:?}");
        pids
    }

    /// A process is gone once /proc has no live entry for it (a zombie has no process
    /// left; init reaps it). Give the kernel a moment.
    fn assert_gone(pid: i32) {
        let gone = (0..100).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
            false
        });
        assert!(gone, "process {pid} survived");
    }

    /// Shell lines that start `what` in the background, writing its pid to `file`, and
    /// wait until it has.
    fn background(what: &str, file: &Path) -> String {
        let f = file.display();
        format!("{what} & while [ ! -s {f} ]; do sleep 0.01; done; ")
    }

    #[test]
    fn passes_env_and_stdin_and_reports_the_exit_code() {
        let r = run(
            &sh("read line; echo \"$NODEPULSE_ALARM_ID $line\"; exit 3"),
            &[("NODEPULSE_ALARM_ID".into(), "abc".into())],
            b"{\"x\":1}\n",
            Duration::from_secs(10),
            "run-1",
            &AtomicBool::new(false),
        );
        assert_eq!(r.exit_code, Some(3), "{r:?}");
        assert_eq!(r.output.trim(), "abc {\"x\":1}");
        assert!(!r.timed_out);
        assert!(r.killed.is_empty(), "{r:?}");
    }

    #[test]
    fn a_hanging_program_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let f = file.display();
        // A child in the group, and one that left it with setsid.
        let script = format!(
            "sleep 60 & echo $! >> {f}; {}wait",
            background(
                &format!("setsid sh -c 'echo $$ >> {f}.s; exec sleep 300'"),
                &dir.path().join("pids.s")
            )
        );
        let started = Instant::now();
        let r = run_sh(&script, Duration::from_millis(500));
        assert!(r.timed_out, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let group = pids(&file, 1)[0];
        let escaped = pids(&dir.path().join("pids.s"), 1)[0];
        assert_gone(group);
        assert_gone(escaped);
        // The group went with the timeout's signals; the escaped one by the sweep.
        assert!(r.killed.contains(&format!("{escaped} sleep")), "{r:?}");
    }

    #[test]
    fn children_left_behind_by_a_program_that_exits_are_killed_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        // A plain background child and a setsid'd one; the program then exits 0.
        let script = format!(
            "{}{}exit 0",
            background(&format!("sleep 300 & echo $! > {}", a.display()), &a),
            background(
                &format!("setsid sh -c 'echo $$ > {}; exec sleep 300'", b.display()),
                &b
            ),
        );
        let r = run_sh(&script, Duration::from_secs(10));
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        assert!(!r.timed_out);
        let (a, b) = (pids(&a, 1)[0], pids(&b, 1)[0]);
        assert_gone(a);
        assert_gone(b);
        let mut killed = r.killed.clone();
        killed.sort();
        let mut want = vec![format!("{a} sleep"), format!("{b} sleep")];
        want.sort();
        assert_eq!(killed, want);
    }

    #[test]
    fn a_child_that_clears_its_environment_is_still_found_through_the_runs_cgroup() {
        if let Err(why) = super::super::run_cgroup::containment() {
            eprintln!("SKIPPED: no run cgroups on this host (run as root to test them): {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("b");
        // Invisible to the environment sweep: no marker, its own session, parent gone.
        let script = format!(
            "{}exit 0",
            background(
                &format!(
                    "env -i setsid sh -c 'echo $$ > {}; exec sleep 300'",
                    b.display()
                ),
                &b
            ),
        );
        let r = run_sh(&script, Duration::from_secs(10));
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        let hidden = pids(&b, 1)[0];
        assert_gone(hidden);
        assert_eq!(r.killed, vec![format!("{hidden} sleep")], "{r:?}");
    }

    /// The run's cgroup as its program sees it: the root of a namespace of its own.
    #[test]
    fn a_program_sees_its_runs_cgroup_as_the_root() {
        if let Err(why) = super::super::run_cgroup::containment() {
            eprintln!("SKIPPED: no run cgroups on this host (run as root to test them): {why}");
            return;
        }
        let r = run_sh("cat /proc/self/cgroup", Duration::from_secs(10));
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        let hierarchy = super::super::run_cgroup::parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        // Outside the namespace the path would name nodepulse-actions/<run id>.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let v2 = mounts
            .lines()
            .any(|l| l.contains(" cgroup2 ") && l.contains(&format!(" {} ", hierarchy.display())));
        let line = r
            .output
            .lines()
            .find(|l| {
                if v2 {
                    l.starts_with("0::")
                } else {
                    l.contains("pids") || l.contains("freezer")
                }
            })
            .unwrap_or_else(|| panic!("{r:?}"));
        assert!(line.ends_with(":/"), "{line} (in {:?})", r.output);
    }

    /// A program that writes its own pid into the hierarchy's root `cgroup.procs`. With
    /// `nsdelegate` the kernel refuses, root or not, and the run keeps it; without, it
    /// leaves (what `check` says about this host).
    #[test]
    fn a_program_cannot_leave_its_run_where_the_mount_delegates() {
        use super::super::run_cgroup;
        let Ok(parent) = run_cgroup::parent() else {
            eprintln!("SKIPPED: no run cgroups on this host (run as root to test them)");
            return;
        };
        let root = parent.parent().unwrap();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let delegates = run_cgroup::delegates(&mounts, parent);
        let procs = root.join("cgroup.procs");
        let r = run_sh(
            &format!(
                "if echo $$ > {}; then echo left; else echo refused; fi",
                procs.display()
            ),
            Duration::from_secs(10),
        );
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        let first = r.output.lines().next().unwrap_or_default();
        eprintln!("nsdelegate {delegates}: the program {first}");
        assert_eq!(first, if delegates { "refused" } else { "left" }, "{r:?}");
        assert!(run_cgroup::containment().unwrap().contains(if delegates {
            "does not let it leave"
        } else {
            "can still leave"
        }));
    }

    #[test]
    fn a_stop_kills_the_run_and_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("b");
        let script = format!(
            "{}sleep 300",
            background(
                &format!("setsid sh -c 'echo $$ > {}; exec sleep 300'", b.display()),
                &b
            ),
        );
        let stop = AtomicBool::new(false);
        let r = std::thread::scope(|s| {
            let runner = s.spawn(|| {
                run(
                    &sh(&script),
                    &[],
                    b"",
                    Duration::from_secs(60),
                    "stop-1",
                    &stop,
                )
            });
            while !b.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::SeqCst);
            runner.join().unwrap()
        });
        assert!(r.stopped && !r.timed_out, "{r:?}");
        let b = pids(&b, 1)[0];
        assert_gone(b);
        assert!(r.killed.contains(&format!("{b} sleep")), "{r:?}");
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_panic() {
        let r = run_sh("exec /nonexistent/fix", Duration::from_secs(1));
        assert_eq!(r.exit_code, Some(127), "{r:?}");
        let r = run(
            &["/nonexistent/fix".into()],
            &[],
            b"",
            Duration::from_secs(1),
            "x",
            &AtomicBool::new(false),
        );
        let e = r.error.unwrap();
        assert!(e.contains("cannot start /nonexistent/fix"), "{e}");
    }
}
