//! `[agent] btf`: an external BTF file, as BTFHub provides for kernels built without
//! `/sys/kernel/btf/vmlinux`. It replaces the kernel's own BTF for nodepulse's layout
//! resolution ([`super::btf`]) and for aya's loader (`EbpfLoader::btf`). It cannot
//! replace it for tp_btf and fentry: those name a type id of the BTF the kernel holds
//! itself, so they still need `/sys/kernel/btf/vmlinux` (raw and classic tracepoints do
//! not).

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::btf::{Btf, VMLINUX_BTF};

/// A struct every kernel's vmlinux BTF holds and a module's split BTF does not.
const KERNEL_STRUCT: &str = "task_struct";

#[derive(Debug, Error)]
#[error("[agent] btf = \"{path}\": {problem}")]
pub struct BtfFileError {
    pub path: PathBuf,
    pub problem: String,
}

/// The file, read both ways.
pub struct BtfFile {
    /// nodepulse's reading, for struct offsets and tracepoint prototypes.
    pub layouts: Btf,
    /// aya's reading, for its loader.
    pub loader: aya::Btf,
    /// Whether the running kernel has BTF of its own (then the file equals it).
    pub kernel_has_own: bool,
}

/// Reads and checks the file: readable, BTF, a kernel's (not a module's), and, when the
/// running kernel publishes its own BTF, the same bytes (otherwise it belongs to another
/// kernel and its offsets would be wrong). Without the kernel's own BTF a mismatch
/// cannot be detected: the file must be the one built for `uname -r`.
pub fn open(path: &Path) -> Result<BtfFile, BtfFileError> {
    let fail = |problem: String| BtfFileError {
        path: path.to_owned(),
        problem,
    };
    let data = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let layouts = Btf::parse(&data).map_err(|e| {
        fail(format!(
            "not a BTF file ({e}); give the running kernel's vmlinux BTF, e.g. BTFHub's \
             <release>.btf for `uname -r`"
        ))
    })?;
    if layouts.member_offset(KERNEL_STRUCT, "pid").is_err() {
        return Err(fail(format!(
            "BTF, but not a kernel's: it has no struct {KERNEL_STRUCT} (a module's BTF? \
             give the vmlinux BTF)"
        )));
    }
    let loader = aya::Btf::parse(&data, aya::Endianness::default())
        .map_err(|e| fail(format!("the eBPF loader cannot read it: {e}")))?;
    let kernel_has_own = Path::new(VMLINUX_BTF).exists();
    if kernel_has_own {
        let own = std::fs::read(VMLINUX_BTF)
            .map_err(|e| fail(format!("cannot compare it with {VMLINUX_BTF}: {e}")))?;
        if own != data {
            return Err(fail(format!(
                "not the running kernel's BTF: it differs from the kernel's own \
                 {VMLINUX_BTF} ({} vs {} bytes), so its offsets belong to another kernel; \
                 remove [agent] btf, this kernel needs none",
                data.len(),
                own.len()
            )));
        }
    }
    Ok(BtfFile {
        layouts,
        loader,
        kernel_has_own,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(data: &[u8]) -> String {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), data).unwrap();
        match open(f.path()) {
            Ok(_) => panic!("{data:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_missing_file_is_named_with_the_reason() {
        let e = open(Path::new("/nonexistent/vmlinux.btf")).err().unwrap();
        assert_eq!(
            e.to_string(),
            "[agent] btf = \"/nonexistent/vmlinux.btf\": cannot read it: No such file or \
             directory (os error 2)"
        );
    }

    #[test]
    fn a_directory_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("cannot read it: Is a directory"), "{e}");
    }

    #[test]
    fn garbage_is_not_btf() {
        let e = problem(b"this is not BTF at all, just text that is long enough");
        assert!(
            e.contains("not a BTF file (malformed BTF: bad magic"),
            "{e}"
        );
        let e = problem(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
        assert!(e.contains("not a BTF file"), "{e}");
    }

    #[test]
    fn btf_without_kernel_structs_is_not_a_kernels() {
        let e = problem(&super::super::btf::tests::sample());
        assert!(
            e.contains("not a kernel's: it has no struct task_struct"),
            "{e}"
        );
    }

    #[test]
    fn the_running_kernels_own_btf_is_accepted_and_another_refused() {
        let Ok(own) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("SKIPPED: {VMLINUX_BTF} absent on this machine");
            return;
        };
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &own).unwrap();
        let file = open(f.path()).unwrap();
        assert!(file.kernel_has_own);
        assert!(file.layouts.member_offset("request", "q").is_ok());

        // Another kernel's BTF, as far as this check can tell: the same types with one
        // string changed (a struct renamed), so every reader still accepts it.
        let mut other = own.clone();
        let at = other
            .windows(b"\0request\0".len())
            .position(|w| w == b"\0request\0")
            .expect("the string `request` in the kernel's BTF");
        other[at + 1] = b'R';
        std::fs::write(f.path(), &other).unwrap();
        let e = open(f.path()).err().unwrap().to_string();
        assert!(
            e.contains("not the running kernel's BTF: it differs from the kernel's own"),
            "{e}"
        );
    }
}
