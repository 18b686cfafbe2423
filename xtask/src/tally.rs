//! Runs `cargo test` while passing its output through, and adds up what the test
//! binaries report, so the suite ends with one line: `tests: N passed, N failed, N skipped`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{Context, Result, bail};

use crate::util::display;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Tests that returned early with a `SKIPPED …` line (e.g. root-only tests).
    pub skipped: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.skipped += other.skipped;
    }
}

impl Tally {
    /// Reads one line of test output: libtest's `test result:` summaries and the
    /// `SKIPPED` lines nodepulse's root-only tests print.
    pub fn add_line(&mut self, line: &str) {
        if line.starts_with("SKIPPED") {
            self.skipped += 1;
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cmd`, forwarding its stdout and stderr as they come, and tallies the results.
pub fn run_tallied(cmd: &mut Command) -> Result<Tally> {
    let line = display(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let forward = |stream: Box<dyn Read + Send>, to_stderr: bool| {
        let tally = Arc::clone(&tally);
        thread::spawn(move || {
            for l in BufReader::new(stream).lines().map_while(Result::ok) {
                tally.lock().expect("tally").add_line(&l);
                if to_stderr {
                    let _ = writeln!(std::io::stderr(), "{l}");
                } else {
                    let _ = writeln!(std::io::stdout(), "{l}");
                }
            }
        })
    };
    let out = forward(Box::new(child.stdout.take().expect("piped")), false);
    let err = forward(Box::new(child.stderr.take().expect("piped")), true);
    let status = child.wait().context("waiting for cargo test")?;
    let _ = out.join();
    let _ = err.join();
    let tally = *tally.lock().expect("tally");
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_libtest_summaries_and_skips() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 35 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.06s");
        t.add_line(
            "test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("SKIPPED block_probe: needs root to load eBPF programs");
        t.add_line("running 7 tests");
        assert_eq!(
            t,
            Tally {
                passed: 39,
                failed: 1,
                ignored: 2,
                skipped: 1
            }
        );
    }
}
