//! Cgroup ids → paths. The kernel reports a cgroup by its id, which is the inode number
//! of the cgroup's directory in its hierarchy; nodepulse names it by walking that
//! hierarchy, so `/kubepods.slice/…/cri-containerd-….scope` or
//! `/machine.slice/machine-qemu….scope` label the series instead of a number.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::CgroupMode;

/// Which hierarchy the probe reads ids from, and where it is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub v2: bool,
    pub root: PathBuf,
}

/// Finds the hierarchy for `mode` in a `/proc/mounts` text: the cgroup2 mount, or the
/// v1 mount carrying the `cpu` controller. `auto` takes the one holding the cpu
/// controller: on a hybrid host (cgroup2 at `/sys/fs/cgroup/unified`, controllers on
/// v1) pods, services and VMs get their CPU limits, and their place in the scheduler's
/// run queues, from the v1 cpu hierarchy, while the unified one holds every task in
/// whatever cgroup systemd put it, often the root.
pub fn find_hierarchy(mounts: &str, mode: CgroupMode) -> Option<Hierarchy> {
    let mut v2 = None;
    let mut v1_cpu = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(fs), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        match *fs {
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(dir)),
            "cgroup" if opts.split(',').any(|o| o == "cpu") => v1_cpu = Some(PathBuf::from(dir)),
            _ => {}
        }
    }
    let v2 = v2.map(|root| Hierarchy { v2: true, root });
    let v1 = v1_cpu.map(|root| Hierarchy { v2: false, root });
    match mode {
        // A controller bound to a v1 hierarchy cannot be enabled on cgroup2.
        CgroupMode::Auto => v1.or(v2),
        CgroupMode::V2 => v2,
        CgroupMode::V1Cpu => v1,
    }
}

/// The hierarchy block I/O cgroup ids come from: the v1 mount carrying the `blkio`
/// controller when there is one (the controller is then bound to v1), else cgroup2.
pub fn find_io_hierarchy(mounts: &str) -> Option<PathBuf> {
    let mut v2 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(fs), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        match *fs {
            "cgroup" if opts.split(',').any(|o| o == "blkio") => return Some(PathBuf::from(dir)),
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(dir)),
            _ => {}
        }
    }
    v2
}

/// Caps so a pathological hierarchy cannot stall the collection loop.
const MAX_DEPTH: usize = 16;
const MAX_CGROUPS: usize = 100_000;
const MAX_LABEL: usize = 200;
/// An unknown id triggers a rescan at most this often (new cgroups appear all the time).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

pub struct CgroupNames {
    root: PathBuf,
    names: HashMap<u64, String>,
    last_scan: Option<Instant>,
    /// When each id not found so far was first asked for: a scan that starts after
    /// that finds the cgroup if it exists, so a new id gets one scan at once (a
    /// cgroup that lives a few seconds is still named) and then waits its turn.
    unknown_since: HashMap<u64, Instant>,
}

impl CgroupNames {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            names: HashMap::new(),
            last_scan: None,
            unknown_since: HashMap::new(),
        }
    }

    /// Path of cgroup `id` relative to the hierarchy's root (`/` for the root), or
    /// `id:<n>` when it is not (or no longer) there.
    pub fn name(&mut self, id: u64) -> String {
        if !self.names.contains_key(&id) {
            if self.unknown_since.len() >= MAX_CGROUPS {
                self.unknown_since.clear();
            }
            let since = *self.unknown_since.entry(id).or_insert_with(Instant::now);
            if self
                .last_scan
                .is_none_or(|t| t <= since || t.elapsed() >= RESCAN_EVERY)
            {
                self.rescan();
            }
        }
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("id:{id}"))
    }

    /// Path of cgroup `id` while it exists; `None` once it was removed (its directory
    /// is gone, or the path now belongs to a newer cgroup: ids are inode numbers and
    /// are not reused while the old cgroup's counts are read).
    pub fn lookup(&mut self, id: u64) -> Option<String> {
        let name = self.name(id);
        if !self.names.contains_key(&id) {
            return None;
        }
        let dir = self.root.join(name.trim_start_matches('/'));
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            Some(name)
        } else {
            self.names.remove(&id);
            None
        }
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.names.clear();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            self.names.insert(meta.ino(), relative(&self.root, &dir));
            if depth >= MAX_DEPTH || self.names.len() >= MAX_CGROUPS {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        let names = &self.names;
        self.unknown_since.retain(|id, _| !names.contains_key(id));
        tracing::debug!(root = %self.root.display(), cgroups = self.names.len(), "scanned cgroups");
    }
}

fn relative(root: &Path, dir: &Path) -> String {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut s = format!("/{}", rel.display());
    if s.len() > MAX_LABEL {
        let cut = (0..=MAX_LABEL)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_hierarchy_prefers_a_v1_blkio_mount() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            find_io_hierarchy(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/blkio"))
        );
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(find_io_hierarchy(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(find_io_hierarchy(""), None);
    }

    const MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn finds_the_hierarchy_for_each_mode() {
        let auto = find_hierarchy(MOUNTS, CgroupMode::Auto).unwrap();
        assert_eq!(
            auto,
            Hierarchy {
                v2: false,
                root: "/sys/fs/cgroup/cpu".into()
            },
            "on a hybrid host the cpu controller's hierarchy"
        );
        let v2_only = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert!(find_hierarchy(v2_only, CgroupMode::Auto).unwrap().v2);
        let v2 = find_hierarchy(MOUNTS, CgroupMode::V2).unwrap();
        assert_eq!(
            v2,
            Hierarchy {
                v2: true,
                root: "/sys/fs/cgroup/unified".into()
            }
        );
        let v1 = find_hierarchy(MOUNTS, CgroupMode::V1Cpu).unwrap();
        assert_eq!(
            v1,
            Hierarchy {
                v2: false,
                root: "/sys/fs/cgroup/cpu".into()
            }
        );
        let v1_only = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        assert!(!find_hierarchy(v1_only, CgroupMode::Auto).unwrap().v2);
        assert_eq!(find_hierarchy(v1_only, CgroupMode::V2), None);
    }

    #[test]
    fn names_ids_by_directory_inode() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("kubepods.slice/pod-1234.slice");
        std::fs::create_dir_all(&pod).unwrap();
        let ino = std::fs::metadata(&pod).unwrap().ino();
        let root_ino = std::fs::metadata(dir.path()).unwrap().ino();
        let mut names = CgroupNames::new(dir.path().to_path_buf());
        assert_eq!(names.name(ino), "/kubepods.slice/pod-1234.slice");
        assert_eq!(names.name(root_ino), "/");
        assert_eq!(names.name(1), "id:1");
        // A cgroup created after the last scan is found at once, not after a pause.
        let late = dir.path().join("system.slice");
        std::fs::create_dir(&late).unwrap();
        let late_ino = std::fs::metadata(&late).unwrap().ino();
        assert_eq!(names.name(late_ino), "/system.slice");

        assert_eq!(
            names.lookup(ino).as_deref(),
            Some("/kubepods.slice/pod-1234.slice")
        );
        std::fs::remove_dir(&pod).unwrap();
        assert_eq!(names.lookup(ino), None, "removed");
        assert_eq!(names.lookup(root_ino).as_deref(), Some("/"));
    }
}
