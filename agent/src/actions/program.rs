//! Running a remedial program: argv only (never a shell), the alarm as environment
//! variables and as JSON on stdin, its own process group so that a timeout kills
//! everything it started, output captured (bounded) for the audit log.

use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Output kept per stream.
const OUTPUT_LIMIT: usize = 4096;
/// Between SIGTERM and SIGKILL at a timeout.
const KILL_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct ProgramResult {
    pub exit_code: Option<i32>,
    /// Killed by a signal (not by us): its number.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub output: String,
    /// It could not be started at all.
    pub error: Option<String>,
}

pub fn run(
    argv: &[String],
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
) -> ProgramResult {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
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
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
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
    // Output of children that outlive the program (they hold the pipes) is not waited for.
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
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn passes_env_and_stdin_and_reports_the_exit_code() {
        let r = run(
            &sh("read line; echo \"$NODEPULSE_ALARM_ID $line\"; exit 3"),
            &[("NODEPULSE_ALARM_ID".into(), "abc".into())],
            b"{\"x\":1}\n",
            Duration::from_secs(10),
        );
        assert_eq!(r.exit_code, Some(3), "{r:?}");
        assert_eq!(r.output.trim(), "abc {\"x\":1}");
        assert!(!r.timed_out);
    }

    #[test]
    fn a_hanging_program_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let r = run(&sh(&script), &[], b"", Duration::from_millis(300));
        assert!(r.timed_out, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let child: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild (same process group) is gone too; give the kernel a moment
        // to reap it (its parent was killed, init reaps it).
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z")
        });
        assert!(gone, "sleep {child} survived the timeout");
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_panic() {
        let r = run(
            &["/nonexistent/fix".into()],
            &[],
            b"",
            Duration::from_secs(1),
        );
        let e = r.error.unwrap();
        assert!(e.contains("cannot start /nonexistent/fix"), "{e}");
    }
}
