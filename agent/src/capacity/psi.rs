//! Pressure stall information: the kernel's own count of time tasks stalled waiting for
//! CPU, I/O or memory (`/proc/pressure/*`, and per cgroup `<cgroup>/*.pressure` on
//! cgroup2). The `total=` fields are cumulative microseconds; their increase over an
//! interval divided by its length is the share of time stalled.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

pub const RESOURCES: [&str; 3] = ["cpu", "io", "memory"];

/// Cumulative stall times of one pressure file, in microseconds. `full` is absent
/// for host CPU on kernels before 5.13.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub some_us: u64,
    pub full_us: Option<u64>,
}

/// Parses a pressure file: `some avg10=.. avg60=.. avg300=.. total=N` and the same
/// for `full`.
pub fn parse(text: &str) -> Result<Totals, String> {
    let mut out = Totals::default();
    let mut some = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let total = words
            .find_map(|w| w.strip_prefix("total="))
            .ok_or_else(|| format!("no total= in line {line:?}"))?
            .parse::<u64>()
            .map_err(|e| format!("bad total in line {line:?}: {e}"))?;
        match kind {
            "some" => {
                out.some_us = total;
                some = true;
            }
            "full" => out.full_us = Some(total),
            other => return Err(format!("unknown line kind {other:?}")),
        }
    }
    if !some {
        return Err("no `some` line".into());
    }
    Ok(out)
}

/// Share of an interval spent stalled, per scope ("host" or a cgroup path), resource
/// and kind ("some": at least one task stalled, "full": all non-idle tasks stalled).
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub scope: String,
    pub resource: &'static str,
    pub kind: &'static str,
    pub share: f64,
}

/// Reads pressure files and turns their totals into shares of each interval.
pub struct Pressure {
    proc_root: PathBuf,
    cgroup_root: Option<PathBuf>,
    max_cgroups: usize,
    previous: HashMap<(String, &'static str), Totals>,
    /// Cgroups with pressure this interval beyond `max_cgroups` (not reported).
    pub cgroups_dropped: usize,
    /// Whether the kernel has PSI (the host files exist and parse).
    pub available: bool,
}

impl Pressure {
    pub fn new(proc_root: &Path, cgroup_root: Option<PathBuf>, max_cgroups: usize) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            cgroup_root,
            max_cgroups,
            previous: HashMap::new(),
            cgroups_dropped: 0,
            available: false,
        }
    }

    /// Shares since the previous call over `elapsed_us`; nothing for a scope seen for
    /// the first time. Host first, then the cgroups that stalled most.
    pub fn update(&mut self, elapsed_us: f64) -> Vec<Share> {
        let mut current: Vec<(String, &'static str, Totals)> = Vec::new();
        self.available = false;
        for r in RESOURCES {
            let path = self.proc_root.join("pressure").join(r);
            if let Some(t) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| parse(&s).ok())
            {
                self.available = true;
                current.push(("host".into(), r, t));
            }
        }
        if let Some(root) = &self.cgroup_root
            && self.max_cgroups > 0
        {
            walk(root, root, &mut current);
        }
        let mut host = Vec::new();
        let mut cgroups: Vec<(f64, Vec<Share>)> = Vec::new();
        let mut by_scope: HashMap<String, Vec<Share>> = HashMap::new();
        let mut seen = HashMap::new();
        for (scope, resource, now) in current {
            let key = (scope.clone(), resource);
            if let Some(before) = self.previous.get(&key)
                && elapsed_us > 0.0
            {
                let mut push = |kind, now: u64, before: u64| {
                    let share = (now.saturating_sub(before) as f64 / elapsed_us).min(1.0);
                    let s = Share {
                        scope: scope.clone(),
                        resource,
                        kind,
                        share,
                    };
                    if scope == "host" {
                        host.push(s);
                    } else {
                        by_scope.entry(scope.clone()).or_default().push(s);
                    }
                };
                push("some", now.some_us, before.some_us);
                if let (Some(n), Some(b)) = (now.full_us, before.full_us) {
                    push("full", n, b);
                }
            }
            seen.insert(key, now);
        }
        self.previous = seen;
        for (_, shares) in by_scope {
            let worst = shares.iter().map(|s| s.share).fold(0.0, f64::max);
            if worst > 0.0 {
                cgroups.push((worst, shares));
            }
        }
        // Within the budget: those that stalled most.
        cgroups.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1[0].scope.cmp(&b.1[0].scope)));
        self.cgroups_dropped = cgroups.len().saturating_sub(self.max_cgroups);
        host.extend(cgroups.into_iter().take(self.max_cgroups).flat_map(|c| c.1));
        host
    }
}

/// Every cgroup below `root` with pressure files, by path relative to the root.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, &'static str, Totals)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let scope = format!(
            "/{}",
            path.strip_prefix(root).unwrap_or(&path).to_string_lossy()
        );
        for r in RESOURCES {
            let file = path.join(format!("{r}.pressure"));
            if let Some(t) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| parse(&s).ok())
            {
                out.push((scope.clone(), r, t));
            }
        }
        walk(root, &path, out);
    }
}

/// The cgroup2 mount in a `/proc/mounts` text.
pub fn cgroup2_root(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_cgroup_files() {
        let t = parse(
            "some avg10=1.04 avg60=6.83 avg300=5.94 total=443757849\n\
             full avg10=0.00 avg60=3.24 avg300=3.05 total=109243034\n",
        )
        .unwrap();
        assert_eq!(t.some_us, 443_757_849);
        assert_eq!(t.full_us, Some(109_243_034));
        let t = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!(t.full_us, None);
        assert!(parse("some avg10=0.00\n").unwrap_err().contains("total"));
        assert!(parse("").unwrap_err().contains("some"));
    }

    #[test]
    fn shares_are_deltas_over_the_interval_and_cgroups_keep_the_worst() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let cg = dir.path().join("cg");
        std::fs::create_dir_all(proc_root.join("pressure")).unwrap();
        for c in ["a", "b", "a/c"] {
            std::fs::create_dir_all(cg.join(c)).unwrap();
        }
        let write = |p: PathBuf, some: u64, full: u64| {
            std::fs::write(
                p,
                format!("some avg10=0 avg60=0 avg300=0 total={some}\nfull avg10=0 avg60=0 avg300=0 total={full}\n"),
            )
            .unwrap()
        };
        let set = |k: u64| {
            for r in RESOURCES {
                write(proc_root.join("pressure").join(r), 1000 * k, 500 * k);
                write(cg.join(format!("a/{r}.pressure")), 100 * k, 0);
                write(cg.join(format!("b/{r}.pressure")), 300 * k, 0);
                write(cg.join(format!("a/c/{r}.pressure")), 200 * k, 0);
            }
        };
        set(1);
        let mut p = Pressure::new(&proc_root, Some(cg.clone()), 2);
        assert!(p.update(10_000.0).is_empty());
        set(3);
        let shares = p.update(10_000.0);
        let get = |scope: &str, kind| {
            shares
                .iter()
                .find(|s| s.scope == scope && s.resource == "io" && s.kind == kind)
                .map(|s| s.share)
        };
        assert_eq!(get("host", "some"), Some(0.2));
        assert_eq!(get("host", "full"), Some(0.1));
        assert_eq!(get("/b", "some"), Some(0.06));
        assert_eq!(get("/a/c", "some"), Some(0.04));
        assert_eq!(get("/a", "some"), None, "over the budget of 2");
        assert_eq!(p.cgroups_dropped, 1);
        assert!(p.available);
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let m = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root(m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }
}
