//! tracefs: where classic tracepoints live, and the `format` files that describe their
//! records. nodepulse reads field offsets from those files instead of assuming them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); mount it with \
         `mount -t tracefs tracefs /sys/kernel/tracing` or grant CAP_SYS_ADMIN"
    )]
    NotMounted(std::io::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}` in its format file")]
    NoField { tracepoint: String, field: String },
}

/// The mounted tracefs, if any.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Finds tracefs, mounting it at its standard place when it is missing (a fresh
/// Firecracker or minimal host boots without it). When nodepulse mounted it, the
/// returned guard unmounts it again on drop, leaving the host as it was.
pub fn find_or_mount() -> Result<(PathBuf, Option<Mounted>), TracefsError> {
    if let Some(path) = find() {
        return Ok((path, None));
    }
    let target = Path::new(CANDIDATES[0]);
    mount(target).map_err(TracefsError::NotMounted)?;
    tracing::info!(path = %target.display(), "mounted tracefs for classic tracepoints");
    Ok((target.to_path_buf(), Some(Mounted(target.to_path_buf()))))
}

/// tracefs as mounted by nodepulse; unmounted on drop (after the programs detached).
#[derive(Debug)]
pub struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        use std::{ffi::CString, os::unix::ffi::OsStrExt};
        let Ok(dir) = CString::new(self.0.as_os_str().as_bytes()) else {
            return;
        };
        // Lazily: another process (a second agent, `nodepulse check`) may have a format
        // file open right now; a plain unmount would then fail and leave tracefs behind.
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        if unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) } == 0 {
            tracing::info!(path = %self.0.display(), "unmounted the tracefs nodepulse mounted");
        } else {
            tracing::debug!("tracefs left mounted: {}", std::io::Error::last_os_error());
        }
    }
}

fn mount(target: &Path) -> std::io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let fs = CString::new("tracefs").expect("no NUL");
    let dir = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: plain mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe { libc::mount(fs.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Field name → (offset, size) of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub tracepoint: String,
    fields: HashMap<String, (u32, u32)>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    /// Parses lines like `field:dev_t dev; offset:8; size:4; signed:0;` (tab-separated).
    pub fn parse(tracepoint: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let mut name = None;
            let mut offset = None;
            let mut size = None;
            for part in line.trim().split(';').map(str::trim) {
                if let Some(decl) = part.strip_prefix("field:") {
                    // Last word of the declaration, without an array suffix.
                    name = decl
                        .split_whitespace()
                        .last()
                        .map(|w| w.split('[').next().unwrap_or(w).to_owned());
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            if let (Some(n), Some(o), Some(s)) = (name, offset, size) {
                fields.insert(n, (o, s));
            }
        }
        Self {
            tracepoint: tracepoint.to_owned(),
            fields,
        }
    }

    /// Offset of a field, checking its size so a changed type is caught, not misread.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, TracefsError> {
        match self.fields.get(field) {
            Some(&(off, sz)) if sz == size || size == 0 => Ok(off),
            _ => Err(TracefsError::NoField {
                tracepoint: self.tracepoint.clone(),
                field: format!("{field} ({size} bytes)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK_RQ_COMPLETE: &str = "name: block_rq_complete
ID: 2107
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:44;\tsize:4;\tsigned:0;

print fmt: \"%d,%d\", REC->dev
";

    #[test]
    fn parses_field_offsets() {
        let f = Format::parse("block:block_rq_complete", BLOCK_RQ_COMPLETE);
        assert_eq!(f.offset("dev", 4).unwrap(), 8);
        assert_eq!(f.offset("sector", 8).unwrap(), 16);
        assert_eq!(f.offset("rwbs", 0).unwrap(), 34);
        assert_eq!(f.offset("cmd", 4).unwrap(), 44);
    }

    #[test]
    fn wrong_size_or_missing_field_is_an_error() {
        let f = Format::parse("block:block_rq_complete", BLOCK_RQ_COMPLETE);
        assert!(f.offset("sector", 4).is_err());
        let err = f.offset("bytes", 4).unwrap_err().to_string();
        assert!(
            err.contains("block:block_rq_complete has no field `bytes"),
            "{err}"
        );
    }
}
