//! Which Ceph image a kernel RBD device maps. The kernel client names the disk
//! `rbd<id>` and publishes the mapping as `<sys>/bus/rbd/devices/<id>/`: `pool`,
//! `name` (the image), `pool_ns` (empty for the default namespace), `snap` (`-` for
//! the image head), `major`.

use std::path::Path;

use super::sysfs::read_attr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdImage {
    pub pool: String,
    pub image: String,
    pub namespace: Option<String>,
    pub snapshot: Option<String>,
}

/// The image behind disk `disk_name` with major number `major`, if it is an RBD disk.
pub fn image(sys_root: &Path, disk_name: &str, major: u32) -> Option<RbdImage> {
    let id = disk_name.strip_prefix("rbd")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let dir = sys_root.join("bus/rbd/devices").join(id);
    // Guards against a stale or unrelated entry: the disk must have this entry's major.
    let entry_major = read_attr(&dir.join("major")).and_then(|m| m.parse::<u32>().ok());
    if entry_major != Some(major) {
        tracing::debug!(
            dir = %dir.display(),
            ?entry_major,
            major,
            "RBD sysfs entry missing or for another device"
        );
        return None;
    }
    let (Some(pool), Some(image)) = (read_attr(&dir.join("pool")), read_attr(&dir.join("name")))
    else {
        tracing::debug!(dir = %dir.display(), "RBD sysfs entry without pool or image name");
        return None;
    };
    Some(RbdImage {
        pool,
        image,
        namespace: read_attr(&dir.join("pool_ns")),
        snapshot: read_attr(&dir.join("snap")).filter(|s| s != "-"),
    })
}
