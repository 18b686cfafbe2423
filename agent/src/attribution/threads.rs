//! Which thread ids of the host still exist, read from the host's `/proc`.

use std::path::PathBuf;

pub struct HostThreads {
    proc_root: PathBuf,
    /// Whether `proc_root` shows the host's PID namespace; checked once.
    host: Option<bool>,
}

impl HostThreads {
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            host: None,
        }
    }

    /// Whether `tid` exists (`<proc_root>/<tid>` resolves threads as well as processes);
    /// `None` when `proc_root` is another PID namespace's tree (a container given no
    /// host `/proc`), whose ids are not the kernel's.
    pub fn exists(&mut self, tid: u32) -> Option<bool> {
        if !*self.host.get_or_insert_with(|| {
            // Thread 2 is the kernel's kthreadd in the host's namespace only (pid 1's
            // namespace link, which would say it directly, is unreadable on some hosts
            // even to root).
            let comm = std::fs::read_to_string(self.proc_root.join("2/comm"));
            let host = comm.as_ref().is_ok_and(|c| c.trim_end() == "kthreadd");
            if !host {
                tracing::warn!(
                    proc_root = %self.proc_root.display(),
                    thread_2 = ?comm,
                    "the process tree read is not the host's PID namespace: threads the \\
                     kernel names cannot be looked up there. Mount the host's /proc and \\
                     set [attribution] proc_root to it"
                );
            }
            host
        }) {
            return None;
        }
        Some(self.proc_root.join(tid.to_string()).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(thread_2: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("2")).unwrap();
        std::fs::write(root.path().join("2/comm"), format!("{thread_2}\n")).unwrap();
        std::fs::create_dir(root.path().join("4242")).unwrap();
        root
    }

    #[test]
    fn a_thread_is_looked_up_in_the_hosts_tree() {
        let root = tree("kthreadd");
        let mut threads = HostThreads::new(root.path().to_owned());
        assert_eq!(threads.exists(4242), Some(true));
        assert_eq!(threads.exists(4243), Some(false));
    }

    #[test]
    fn another_namespaces_tree_cannot_tell() {
        let root = tree("sh");
        let mut threads = HostThreads::new(root.path().to_owned());
        assert_eq!(threads.exists(4242), None);
    }

    #[test]
    fn this_hosts_proc_finds_a_thread_of_this_test() {
        let mut threads = HostThreads::new("/proc".into());
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert_eq!(threads.exists(tid), Some(true));
    }
}
