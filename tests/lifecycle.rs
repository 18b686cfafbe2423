//! Starting and stopping: SIGTERM and SIGINT detach every program and exit 0.
//! One test per binary so no other test's programs are loaded meanwhile.

mod common;

use std::{
    io::BufRead,
    process::Stdio,
    time::{Duration, Instant},
};

use common::nodepulse;

fn loaded_block_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("block_rq_")))
        .count()
}

#[test]
fn signals_detach_cleanly() {
    require_root!();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = nodepulse()
            .args(["run", "--interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut log = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.contains("first report in") {
                break;
            }
        }
        assert!(log.contains("probe attached"), "{log}");
        assert!(
            loaded_block_programs() >= 2,
            "programs loaded while running"
        );
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "agent did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(status.success(), "signal {signal}: {status}");
        assert!(
            rest.iter().any(|l| l.contains("probes detached")),
            "{rest:?}"
        );
        // The kernel frees programs asynchronously (RCU) once their last fd is closed.
        let gone = Instant::now();
        while loaded_block_programs() > 0 && gone.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            loaded_block_programs(),
            0,
            "programs left loaded after signal {signal}"
        );
    }
}
