//! A cgroup per program run, where this host lets the agent create one. A process cannot
//! leave its cgroup by forking, `setsid`, double forks or clearing its environment, so
//! killing the cgroup's members kills the whole run, whatever it did to hide. Where the
//! cgroup filesystem is read-only (most containers) or absent, the environment markers
//! of [`super::sweep`] are all there is, and `check` says so.
//!
//! Runs live in `<hierarchy>/nodepulse-actions/<run id>`, in the cgroup2 mount when there
//! is one, else in the v1 hierarchy of the `pids` (or `freezer`) controller: no
//! controller is enabled or limited, the cgroup only tracks membership.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use super::sweep::{self, Marked};

/// The directory, under the chosen hierarchy, that holds one cgroup per run.
pub const DIR: &str = "nodepulse-actions";

/// Tries at removing a run's cgroup while its last members are being reaped.
const REMOVE_TRIES: usize = 25;

/// Where run cgroups go on this host, from a `/proc/mounts` text: under the cgroup2
/// mount, else under a v1 hierarchy that tracks processes (`pids`, then `freezer`).
pub fn find_parent(mounts: &str) -> Option<PathBuf> {
    let mut v1 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(fs), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let opts: Vec<&str> = opts.split(',').collect();
        if opts.contains(&"ro") {
            continue;
        }
        match *fs {
            "cgroup2" => return Some(Path::new(dir).join(DIR)),
            "cgroup" if opts.contains(&"pids") => v1 = Some(Path::new(dir).join(DIR)),
            "cgroup" if opts.contains(&"freezer") && v1.is_none() => {
                v1 = Some(Path::new(dir).join(DIR));
            }
            _ => {}
        }
    }
    v1
}

/// This host's parent directory for run cgroups, when the agent may create it (found
/// once). It exists only while runs do: nothing is left behind when none is going.
pub fn parent() -> Result<&'static Path, &'static str> {
    static PARENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
            let dir = find_parent(&mounts).ok_or_else(|| {
                "no writable cgroup hierarchy is mounted here (read-only in most containers)"
                    .to_owned()
            })?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let _ = std::fs::remove_dir(&dir);
            Ok(dir)
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(String::as_str)
}

/// Whether the kernel refuses, to a process in a cgroup namespace, migrations out of
/// its namespace's subtree: only on a cgroup2 mount with `nsdelegate` (set at the
/// hierarchy's first mount in the initial namespace; systemd does on cgroup2-only hosts).
pub fn delegates(mounts: &str, parent: &Path) -> bool {
    mounts.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3
            && f[2] == "cgroup2"
            && Some(Path::new(f[1])) == parent.parent()
            && f[3].split(',').any(|o| o == "nsdelegate")
    })
}

/// How runs are contained here, for `check` and the start-up log.
pub fn containment() -> Result<String, String> {
    match parent() {
        Ok(dir) => {
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
            let escape = if delegates(&mounts, dir) {
                "in a cgroup namespace the kernel does not let it leave (nsdelegate), \
                 unless it holds CAP_SYS_ADMIN and joins another process's namespace"
            } else {
                "which a program run as root can still leave by writing another \
                 cgroup.procs (the cgroup2 mount lacks nsdelegate)"
            };
            Ok(format!(
                "each program run in its own cgroup under {}, {escape}",
                dir.display()
            ))
        }
        Err(why) => Err(format!(
            "{why}: runs are found by their environment markers only, and a program that \
             clears its environment can outlive its run; give the agent a writable cgroup \
             filesystem (a privileged pod, or the systemd unit as shipped)"
        )),
    }
}

/// The cgroup directory of run `run_id`: directly under [`parent`], and only for a name
/// of letters, digits, `-` and `_` (never a path that leads elsewhere).
fn run_dir(run_id: &str) -> io::Result<PathBuf> {
    let parent = parent().map_err(io::Error::other)?;
    if run_id.is_empty()
        || !run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(io::Error::other(format!(
            "run id {run_id:?} is not a cgroup name"
        )));
    }
    Ok(parent.join(run_id))
}

/// One run's cgroup.
pub struct RunCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork so the child only has to write to it.
    procs: File,
}

impl RunCgroup {
    /// Creates the cgroup of run `run_id`.
    pub fn create(run_id: &str) -> io::Result<Self> {
        let dir = run_dir(run_id)?;
        let parent = dir.parent().unwrap_or(&dir);
        // Another run may remove the parent as it ends, between our two steps: retry.
        let mut made = Err(io::Error::other("not tried"));
        for _ in 0..3 {
            made = std::fs::create_dir_all(parent).and_then(|()| std::fs::create_dir(&dir));
            match &made {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => made = Ok(()),
                _ => {}
            }
            break;
        }
        made?;
        // std opens files close-on-exec: the program never inherits it.
        match std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(procs) => Ok(Self { dir, procs }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                let _ = std::fs::remove_dir(parent);
                Err(e)
            }
        }
    }

    /// The run's cgroup if one was left by an earlier life of the agent. The run id comes
    /// from a process's environment, which anyone can set: only a plain name is taken.
    pub fn existing(run_id: &str) -> Option<Self> {
        let dir = run_dir(run_id).ok()?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .ok()?;
        Some(Self { dir, procs })
    }

    /// What the child runs between `fork` and `exec` to move itself into the cgroup,
    /// then into a cgroup namespace rooted there. Where the cgroup2 mount has
    /// `nsdelegate` (systemd mounts it so on cgroup2-only hosts), the kernel then refuses
    /// any migration out of the run's subtree from inside it, root or not: a program
    /// cannot leave its run by writing another `cgroup.procs`. It still can by joining
    /// another process's cgroup namespace first (`setns`, which needs CAP_SYS_ADMIN), or
    /// by asking a process outside to start one (see docs/architecture.md). Only
    /// `write(2)` and `unshare(2)`: async-signal-safe, as a forked child of a threaded
    /// process needs.
    pub fn enter_hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let fd: RawFd = self.procs.as_raw_fd();
        move || {
            // SAFETY: `fd` stays open in the parent until after the spawn, so the child's
            // copy is valid; "0" names the writing process itself.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a plain system call on the calling process. Without CAP_SYS_ADMIN
            // it fails and the run is contained as before, by membership only.
            if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    /// Whether `pid` is a member (the program did enter it).
    pub fn holds(&self, pid: i32) -> bool {
        self.members().contains(&pid)
    }

    fn members(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every live member, round after round until none is left (a member forking
    /// while we kill is found in the next round), and reaps our children among them.
    /// Where the kernel has `cgroup.kill` (cgroup2, 5.14+), it kills them all by
    /// membership first, so no pid read from `cgroup.procs` can have been reused by
    /// another process before its signal; the rounds then only name the dead and reap.
    pub fn kill_all(&self) -> Vec<Marked> {
        let members = || -> Vec<Marked> {
            self.members()
                .into_iter()
                .filter_map(sweep::marked)
                .collect()
        };
        let named = members();
        let by_kernel = std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok();
        let mut killed = sweep::kill_marked(members);
        if by_kernel {
            for m in named {
                if !killed.iter().any(|k| k.pid == m.pid) {
                    killed.push(m);
                }
            }
            sweep::reap(&killed);
        }
        killed
    }

    /// Removes the cgroup once its members are gone (zombies can hold it briefly), and
    /// the parent when no other run is going (it fails while one is: that is fine).
    pub fn remove(self) {
        for _ in 0..REMOVE_TRIES {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if self.dir.exists() {
            tracing::debug!(dir = %self.dir.display(), "run cgroup still busy; emptied at the next start");
        } else if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_that_is_a_path_is_refused() {
        if parent().is_err() {
            eprintln!("SKIPPED: no run cgroups on this host");
            return;
        }
        for id in ["/sys/fs/cgroup/system.slice", "../x", "a/b", "", "."] {
            assert!(run_dir(id).is_err(), "{id:?}");
            assert!(RunCgroup::existing(id).is_none(), "{id:?}");
        }
        assert!(run_dir("0123abcd-ef_9").is_ok());
    }

    #[test]
    fn prefers_cgroup2_then_pids_then_freezer_and_skips_read_only_mounts() {
        let v1 = "cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n\
                  cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n";
        assert_eq!(
            find_parent(v1),
            Some(PathBuf::from("/sys/fs/cgroup/pids/nodepulse-actions"))
        );
        let freezer_only = "cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n";
        assert_eq!(
            find_parent(freezer_only),
            Some(PathBuf::from("/sys/fs/cgroup/freezer/nodepulse-actions"))
        );
        let hybrid = format!("{v1}cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n");
        assert_eq!(
            find_parent(&hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified/nodepulse-actions"))
        );
        let container = "cgroup2 /sys/fs/cgroup cgroup2 ro,nosuid 0 0\n";
        assert_eq!(find_parent(container), None);
        assert_eq!(find_parent("proc /proc proc rw 0 0\n"), None);
    }
}
