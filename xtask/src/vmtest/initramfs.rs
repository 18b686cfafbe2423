//! The guest's whole userspace, as an uncompressed initramfs (newc cpio): busybox
//! (static), the static nodepulse, the nested KVM guest program, the modules the disks
//! and KVM need (decompressed, in load order) and `/init`, the guest script.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::kernels::Kernel;
use crate::util;

/// Modules the guest loads (with their dependencies): the three disk drivers and the
/// SCSI disk driver, loop devices, KVM for AMD SVM, veth for the TCP probe. Built-in
/// ones (virtio_pci on 6.12) are skipped.
const MODULES: &[&str] = &[
    "virtio_pci",
    "nvme",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "loop",
    "kvm_amd",
    "veth",
];

/// The guest script run as `/init`.
const INIT: &str = include_str!("guest.sh");

/// What goes into the image besides the kernel's modules.
pub struct Programs<'a> {
    pub nodepulse: &'a Path,
    pub kvm_guest: &'a Path,
}

/// Builds `<dir>/initramfs-<release>.cpio` for `kernel` and returns its path.
pub fn build(kernel: &Kernel, programs: &Programs<'_>, dir: &Path) -> Result<PathBuf> {
    let mut archive = Cpio::default();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "lib",
        "lib/modules",
    ] {
        archive.dir(d);
    }
    let busybox = Path::new("/bin/busybox");
    let bytes = std::fs::read(busybox)
        .with_context(|| format!("read {} (Debian package busybox-static)", busybox.display()))?;
    archive.file("bin/busybox", 0o755, bytes);
    archive.file(
        "bin/nodepulse",
        0o755,
        std::fs::read(programs.nodepulse)
            .with_context(|| format!("read {}", programs.nodepulse.display()))?,
    );
    archive.file(
        "bin/kvm_guest_process",
        0o755,
        std::fs::read(programs.kvm_guest)
            .with_context(|| format!("read {}", programs.kvm_guest.display()))?,
    );
    let mut order = String::new();
    for (i, module) in module_files(kernel)?.iter().enumerate() {
        let name = format!("{i:02}-{}.ko", module_name(module));
        archive.file(&format!("lib/modules/{name}"), 0o644, decompress(module)?);
        order.push_str(&name);
        order.push('\n');
    }
    archive.file("lib/modules/order", 0o644, order.into_bytes());
    archive.file("init", 0o755, INIT.as_bytes().to_vec());

    let path = dir.join(format!("initramfs-{}.cpio", kernel.release));
    std::fs::write(&path, archive.finish()).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The module files [`MODULES`] need, dependencies first, each once, as the host's
/// `modprobe --show-depends` lists them from the unpacked tree.
fn module_files(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(&kernel.root)
        .args(["-S", &kernel.release, "--show-depends", "-a"])
        .args(MODULES)
        .output()
        .context("could not run modprobe (Debian package kmod)")?;
    if !out.status.success() {
        bail!(
            "modprobe --show-depends for {} failed: {}",
            kernel.release,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `insmod /path/to/mod.ko[.xz] [params]`; built-in modules are `builtin name`.
        let Some(path) = line.strip_prefix("insmod ") else {
            continue;
        };
        let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// `nvme-core` from `.../nvme-core.ko.xz`.
fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("module");
    file.split(".ko").next().unwrap_or(file).to_owned()
}

/// The module's ELF: busybox's insmod loads uncompressed modules only.
fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return std::fs::read(path).with_context(|| format!("read {name}"));
    };
    let out = Command::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .with_context(|| format!("could not run {tool} (Debian package {tool}-utils / {tool})"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            util::quote_all(&[tool, "-d", "-c", &name]),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, bytes: Vec<u8>) {
        self.entry(name, 0o100_000 | mode, &bytes);
    }

    fn entry(&mut self, name: &str, mode: u32, bytes: &[u8]) {
        self.inode += 1;
        let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(bytes.len()).expect("initramfs files are under 4 GiB"),
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            u32::try_from(name.len() + 1).expect("short names"),
            0, // check
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(bytes);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.inode = 0;
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n".to_vec());
        let data = c.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 4, 0);
        // Header 110 bytes, name "init\0" padded to 116, then the 10-byte file at 116.
        assert_eq!(&data[110..115], b"init\0");
        assert_eq!(&data[116..126], b"#!/bin/sh\n");
        // File size field (7th) is 10.
        assert_eq!(&data[6 + 6 * 8..6 + 7 * 8], b"0000000A");
        let trailer = data
            .windows(10)
            .position(|w| w == b"TRAILER!!!")
            .expect("a trailer");
        assert!(trailer > 126);
    }

    #[test]
    fn the_guest_script_parses() {
        // `sh -n` reads without running; busybox's ash runs it in the guest.
        let mut child = Command::new("sh")
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sh");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(INIT.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "guest.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn module_names_drop_compression_suffixes() {
        assert_eq!(
            module_name(Path::new("/x/drivers/nvme/host/nvme-core.ko.xz")),
            "nvme-core"
        );
        assert_eq!(module_name(Path::new("/x/kvm-amd.ko")), "kvm-amd");
    }
}
