//! The audit trail: one JSON line per action run (or skip), appended and synced to disk
//! before the run is reported, so it survives a crash or a restart of the agent.
//!
//! Lines are whole or absent. A write that fails part-way (ENOSPC, EIO) is cut back to
//! where the line began, so a later append never glues onto half a record; a tail torn
//! by a crash mid-write is cut off, with a warning, when the log is opened. The log can
//! be rotated (renamed or removed, as logrotate does): the next record goes to a new
//! file at the configured path.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::ActionRun;

/// How far back from the end a torn tail's start is looked for; a record is far
/// shorter (its output is capped at 4 KiB per stream).
const TAIL_SCAN: u64 = 1 << 20;

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
    failures: AtomicU64,
}

impl AuditLog {
    /// Opens (creating it and its directory if needed) for appending, cutting off a
    /// torn last record.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_repaired(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
            failures: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that could not be written since the agent started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Appends one run as a line and syncs it; on failure nothing of it stays.
    pub fn record(&self, run: &ActionRun) -> io::Result<()> {
        let mut line = serde_json::to_vec(run).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.reopen_if_rotated(&mut file).and_then(|()| {
            let before = file.metadata()?.len();
            append_whole(&mut file, &line, before)
        });
        result.map_err(|e| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
                "; the filesystem is full: free space there or point actions.audit_log \
                 elsewhere"
            } else {
                ""
            };
            io::Error::new(
                e.kind(),
                format!("{e}: the record was not written (the log keeps whole lines only){hint}"),
            )
        })
    }

    /// After a rotation (the path now names another file, or none), continue in a
    /// file at the path.
    fn reopen_if_rotated(&self, file: &mut File) -> io::Result<()> {
        let open = file.metadata()?;
        let same = std::fs::metadata(&self.path)
            .is_ok_and(|m| m.dev() == open.dev() && m.ino() == open.ino());
        if !same {
            *file = open_repaired(&self.path)?;
            tracing::info!(path = %self.path.display(), "action audit log reopened after rotation");
        }
        Ok(())
    }
}

/// The `started` records near the end of the log (its last [`TAIL_SCAN`] bytes) that
/// no later record of the same run (span id) closes: runs an agent began and never
/// recorded an end for.
pub fn unfinished(path: &Path) -> Vec<serde_json::Value> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut tail = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(TAIL_SCAN)))
        .is_err()
        || file.read_to_end(&mut tail).is_err()
    {
        return Vec::new();
    }
    let mut open: Vec<serde_json::Value> = Vec::new();
    // The first line may be cut by the scan's start: it fails to parse and is skipped.
    for line in tail.split(|b| *b == b'\n') {
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if record["outcome"] == "started" {
            open.push(record);
        } else {
            open.retain(|r| r["span_id"] != record["span_id"]);
        }
    }
    open
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path` (the
/// nearest existing ancestor when `path` does not exist yet).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let mut at = path;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes only the struct we pass; `c` is NUL-terminated and lives
    // across the call; an all-zero statvfs is a valid value of that plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes `line` at the end and syncs it; on any error, cuts the file back to
/// `before`, its length when the line began.
fn append_whole(file: &mut File, line: &[u8], before: u64) -> io::Result<()> {
    let result = file.write_all(line).and_then(|()| file.sync_data());
    if let Err(e) = result {
        if let Err(cut) = file.set_len(before) {
            tracing::error!("cannot cut a partly written audit record back: {cut}");
        }
        return Err(e);
    }
    Ok(())
}

fn open_repaired(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let cut = cut_torn_tail(&mut file)?;
    if cut > 0 {
        tracing::warn!(
            path = %path.display(),
            "action audit log: cut off a torn last record of {cut} bytes (a crash or a full \
             disk interrupted its write)"
        );
    }
    Ok(file)
}

/// Cuts everything after the last newline; returns how many bytes that was.
pub fn cut_torn_tail(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let start = len.saturating_sub(TAIL_SCAN);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    Read::by_ref(file)
        .take(len - start)
        .read_to_end(&mut tail)?;
    let keep = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None => start,
    };
    if keep < len {
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(len - keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_on_open_and_whole_lines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        drop(log);
        // A tail with no newline at all is all torn.
        std::fs::write(&path, "{\"half").unwrap();
        AuditLog::open(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn a_rotated_log_continues_in_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let run = crate::actions::tests::sample_run();
        log.record(&run).unwrap();
        std::fs::rename(&path, dir.path().join("a.jsonl.1")).unwrap();
        log.record(&run).unwrap();
        log.record(&run).unwrap();
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&dir.path().join("a.jsonl.1")), 1);
        assert_eq!(lines(&path), 2);
    }

    /// A tmpfs of 16 KiB, mounted for the test and unmounted after it (root only).
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount() -> Option<Self> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("SKIPPED: mounting a tmpfs needs root");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=16k", "nodepulse-test"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot mount a tmpfs on {}", dir.path().display());
            Some(Self(dir))
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let umount = |lazy: bool| {
                std::process::Command::new("umount")
                    .args(lazy.then_some("-l"))
                    .arg(self.0.path())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            // A child another test forks at the wrong instant can hold the log's file
            // open for a moment (busy); a lazy unmount still leaves no mount behind.
            if !umount(false) && !umount(true) {
                eprintln!("could not unmount {}", self.0.path().display());
            }
        }
    }

    fn assert_whole_lines(path: &Path) -> usize {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "torn: {text:?}");
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        }
        text.lines().count()
    }

    #[test]
    fn on_a_full_filesystem_records_are_whole_or_absent_and_the_failure_says_so() {
        let Some(fs) = SmallFs::mount() else {
            return;
        };
        // Room that can be freed later.
        let filler = fs.0.path().join("filler");
        std::fs::write(&filler, vec![0u8; 4096]).unwrap();
        let path = fs.0.path().join("actions.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let run = crate::actions::tests::sample_run();
        let mut written = 0;
        let err = loop {
            match log.record(&run) {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 100, "a 16 KiB filesystem never filled");
        };
        assert!(written >= 1);
        assert_eq!(err.raw_os_error(), None);
        let msg = err.to_string();
        assert!(
            msg.contains("the record was not written") && msg.contains("the filesystem is full"),
            "{msg}"
        );
        assert_eq!(assert_whole_lines(&path), written);
        // `check` says so.
        let item = crate::check::audit_log_item(&path);
        assert_eq!(item.verdict, crate::check::Verdict::Fail);
        assert!(
            item.detail.contains("its filesystem is full"),
            "{}",
            item.detail
        );
        // Still full: refused again, still whole.
        assert!(log.record(&run).is_err());
        assert_eq!(log.failures(), 2);
        assert_eq!(assert_whole_lines(&path), written);
        // Space comes back: the next record is a line of its own, not glued to a half.
        std::fs::remove_file(&filler).unwrap();
        log.record(&run).unwrap();
        assert_eq!(assert_whole_lines(&path), written + 1);
        drop(log);
        // Reopening finds nothing torn.
        AuditLog::open(&path).unwrap();
        assert_eq!(assert_whole_lines(&path), written + 1);
    }
}
