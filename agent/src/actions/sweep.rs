//! Finding and killing every process a run started, wherever it went. Each program runs
//! with `NODEPULSE_ACTION_RUN=<run id>` in its environment; children inherit it through
//! `fork`, `setsid`, double forks and re-parenting to init, so a scan of
//! `/proc/*/environ` finds them all, after the program exits, at its timeout, when the
//! agent stops, and after a crash when the agent starts again. (A program that clears
//! its environment on purpose can hide from this scan: where the agent may create
//! cgroups, [`super::run_cgroup`] closes that gap.)

use std::{collections::BTreeMap, time::Duration};

/// The environment variable that marks a run's processes.
pub const RUN_VAR: &str = "NODEPULSE_ACTION_RUN";

/// The agent that started the run, as `pid:start-time` (clock ticks after boot, field 22
/// of `/proc/PID/stat`), so that a restarted agent only takes over the runs of an agent
/// that is gone, never those of another one still running.
pub const AGENT_VAR: &str = "NODEPULSE_ACTION_AGENT";

/// The audit log of the agent that started the run: a restarted agent takes over the
/// runs of its own earlier life (same audit log), not those of another agent.
pub const AUDIT_VAR: &str = "NODEPULSE_ACTION_AUDIT";

/// This process as [`AGENT_VAR`] names it.
pub fn this_agent() -> String {
    let pid = std::process::id() as i32;
    format!("{pid}:{}", start_time(pid).unwrap_or(0))
}

/// Whether the agent named by an [`AGENT_VAR`] value still runs.
pub fn agent_alive(agent: &str) -> bool {
    let Some((pid, start)) = agent.split_once(':') else {
        return false;
    };
    match (pid.parse::<i32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
        _ => false,
    }
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3, start
    // time field 22.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Rounds of scan-and-kill: a process forking while we kill is found in the next round.
const ROUNDS: usize = 20;

/// A process found carrying a run's marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marked {
    pub pid: i32,
    pub comm: String,
    /// Its whole environment (for audit records after a restart).
    pub env: BTreeMap<String, String>,
}

impl Marked {
    /// `pid comm`, as the audit log lists killed processes.
    pub fn describe(&self) -> String {
        format!("{} {}", self.pid, self.comm)
    }
}

/// Every live process (not a zombie, not this one) whose environment carries
/// [`RUN_VAR`], with `run_id` or any value when `None`.
pub fn find(run_id: Option<&str>) -> Vec<Marked> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<Marked> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        // Most processes carry no marker: their environment is all that is read.
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|raw| {
                parse_environ(&raw)
                    .get(RUN_VAR)
                    .is_some_and(|value| run_id.is_none_or(|id| id == value))
            })
        })
        .filter_map(marked)
        .collect();
    found.sort_by_key(|m| m.pid);
    found
}

/// Process `pid` with its name and environment, unless it is gone, a zombie or this
/// process. Processes of other users are unreadable, and not ours: `None` too.
pub fn marked(pid: i32) -> Option<Marked> {
    if pid == std::process::id() as i32 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    if is_zombie(pid) {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default();
    Some(Marked {
        pid,
        comm,
        env: parse_environ(&raw),
    })
}

/// `NAME=value` pairs separated by NULs, as in `/proc/PID/environ`.
pub fn parse_environ(raw: &[u8]) -> BTreeMap<String, String> {
    raw.split(|b| *b == 0)
        .filter_map(|pair| {
            let text = String::from_utf8_lossy(pair);
            let (k, v) = text.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the command name, which may hold spaces and parentheses.
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(true)
}

/// Kills (SIGKILL) every process of the run, round after round until none is left,
/// and reaps those that were re-parented to this process (the agent is PID 1 in its
/// container, or a subreaper). Returns what was killed.
pub fn kill_run(run_id: &str) -> Vec<Marked> {
    kill_marked(|| find(Some(run_id)))
}

/// [`kill_run`] for every run recorded in `audit_log` whose agent is gone (at start,
/// after a crash).
pub fn kill_orphaned_runs(audit_log: &str) -> Vec<Marked> {
    kill_marked(|| {
        find(None)
            .into_iter()
            .filter(|m| {
                m.env.get(AUDIT_VAR).map(String::as_str) == Some(audit_log)
                    && !m.env.get(AGENT_VAR).is_some_and(|a| agent_alive(a))
            })
            .collect()
    })
}

/// Kills what `scan` finds, round after round until it finds nothing, and reaps our
/// children among them.
pub fn kill_marked(scan: impl Fn() -> Vec<Marked>) -> Vec<Marked> {
    let mut killed: Vec<Marked> = Vec::new();
    for _ in 0..ROUNDS {
        let found = scan();
        if found.is_empty() {
            break;
        }
        for m in found {
            // SAFETY: kill(2) with a pid we just read from /proc; no memory is involved.
            // A pid found by its marker and reused in between would have to carry the
            // run's marker too; one found in a run cgroup could be reused unmarked in
            // that instant, which is why cgroup2 kills by `cgroup.kill` first.
            unsafe {
                libc::kill(m.pid, libc::SIGKILL);
            }
            if !killed.iter().any(|k| k.pid == m.pid) {
                killed.push(m);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        reap(&killed);
    }
    reap(&killed);
    killed
}

/// Collects the exit status of killed processes that are our children, so that none
/// stays a zombie of the agent.
pub fn reap(killed: &[Marked]) {
    for m in killed {
        let mut status = 0;
        // SAFETY: waitpid on one pid with WNOHANG writes only `status`; for a pid that
        // is not our child it fails with ECHILD and touches nothing.
        unsafe {
            libc::waitpid(m.pid, &mut status, libc::WNOHANG);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_agent_is_alive_and_a_made_up_one_is_not() {
        assert!(agent_alive(&this_agent()));
        let me = std::process::id();
        assert!(!agent_alive(&format!("{me}:1")));
        assert!(!agent_alive("junk"));
    }

    #[test]
    fn environ_is_split_on_nuls() {
        let env = parse_environ(b"A=1\0NODEPULSE_ACTION_RUN=ab=c\0junk\0");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get(RUN_VAR).map(String::as_str), Some("ab=c"));
        assert_eq!(env.len(), 2);
    }
}
