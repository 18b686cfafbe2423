//! What a stacked block device is backed by, as part of its identity: the same loop
//! device number attached to another file (or a file replaced at the same path) is
//! another device to the detector, whose series start anew. A held-out soak's false
//! alarm was `loop7` re-attached by another engineer's test to a new file, judged
//! against the old file's baseline.
//!
//! A loop device: its backing file (`loop/backing_file`), the file's inode and device
//! (so a file replaced at the same path counts), and `loop/offset`. A device-mapper
//! device: its uuid and the devices under it (`slaves/`). A table reloaded onto the
//! same devices (a linear target moved within one disk) is not visible in sysfs
//! (only through the `DM_TABLE_STATUS` ioctl) and keeps its identity.

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// The backing identity of `device` (a kernel name: `loop7`, `dm-0`), or None when it
/// has none (not a loop or device-mapper device, a loop device with no file bound).
pub fn identity(sys_root: &Path, device: &str) -> Option<String> {
    let block = sys_root.join("block").join(device);
    let read = |rel: &str| {
        std::fs::read_to_string(block.join(rel))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    if let Some(file) = read("loop/backing_file") {
        let offset = read("loop/offset").unwrap_or_else(|| "0".into());
        // The path as the kernel holds it: a deleted file reads "<path> (deleted)",
        // and its inode is no longer the path's.
        let inode = std::fs::metadata(&file)
            .map(|m| {
                format!(
                    "{}:{}/{}",
                    libc::major(m.dev()),
                    libc::minor(m.dev()),
                    m.ino()
                )
            })
            .unwrap_or_else(|_| "?".into());
        return Some(format!("{file} (inode {inode}, offset {offset})"));
    }
    let uuid = read("dm/uuid")?;
    let mut under: Vec<String> = std::fs::read_dir(block.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    under.sort();
    Some(format!("dm uuid {uuid} on {}", under.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_devices_identity_is_its_file_inode_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.img");
        std::fs::write(&file, b"x").unwrap();
        let lo = dir.path().join("block/loop7/loop");
        std::fs::create_dir_all(&lo).unwrap();
        std::fs::write(lo.join("backing_file"), format!("{}\n", file.display())).unwrap();
        std::fs::write(lo.join("offset"), "0\n").unwrap();
        let first = identity(dir.path(), "loop7").unwrap();
        assert!(
            first.starts_with(&format!("{} (inode ", file.display())),
            "{first}"
        );
        assert_eq!(identity(dir.path(), "loop7"), Some(first.clone()));
        // The same path, a new file: another identity.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(dir.path().join("other"), b"y").unwrap();
        std::fs::write(&file, b"x").unwrap();
        assert_ne!(identity(dir.path(), "loop7"), Some(first.clone()));
        // Another offset into the same file: another identity.
        let same = identity(dir.path(), "loop7").unwrap();
        std::fs::write(lo.join("offset"), "4096\n").unwrap();
        assert_ne!(identity(dir.path(), "loop7").unwrap(), same);
        // No file bound, not stacked: none.
        std::fs::create_dir_all(dir.path().join("block/loop8")).unwrap();
        assert_eq!(identity(dir.path(), "loop8"), None);
        assert_eq!(identity(dir.path(), "sda"), None);
    }

    #[test]
    fn a_device_mapper_devices_identity_is_its_uuid_and_the_devices_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let dm = dir.path().join("block/dm-0");
        std::fs::create_dir_all(dm.join("dm")).unwrap();
        std::fs::create_dir_all(dm.join("slaves/sdb")).unwrap();
        std::fs::write(dm.join("dm/uuid"), "LVM-abc\n").unwrap();
        assert_eq!(
            identity(dir.path(), "dm-0").as_deref(),
            Some("dm uuid LVM-abc on sdb")
        );
        std::fs::create_dir_all(dm.join("slaves/sdc")).unwrap();
        assert_eq!(
            identity(dir.path(), "dm-0").as_deref(),
            Some("dm uuid LVM-abc on sdb,sdc")
        );
    }
}
