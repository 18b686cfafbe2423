//! Starting and stopping: SIGTERM and SIGINT detach every program and exit 0.
//! Programs are told apart by id, so other processes' programs (another agent, a test
//! run elsewhere on the machine) do not count.

use crate::common;

use std::{
    collections::BTreeSet,
    io::BufRead,
    process::Stdio,
    time::{Duration, Instant},
};

use common::nodepulse;

/// Ids of the block programs loaded in the kernel now.
fn block_program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("block_rq_")))
        .map(|p| p.id())
        .collect()
}

#[test]
fn signals_detach_cleanly() {
    require_root!();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let before = block_program_ids();
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
        let ours: BTreeSet<u32> = block_program_ids().difference(&before).copied().collect();
        assert!(ours.len() >= 2, "programs loaded while running: {ours:?}");
        let still_loaded = || block_program_ids().intersection(&ours).count();
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
        while still_loaded() > 0 && gone.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            still_loaded(),
            0,
            "programs left loaded after signal {signal}"
        );
    }
}
