//! Tests of the parent module.
use super::*;
use crate::attribution::fixture::{Tree, dev, storage_node, with_debug_log};

fn scan_tree(t: &Tree) -> HashMap<u32, OsdUse> {
    scan(&t.roots())
}

fn osd(ids: &[u32], roles: &[Role]) -> OsdUse {
    OsdUse {
        ids: ids.iter().copied().collect(),
        roles: roles.iter().copied().collect(),
    }
}

#[test]
fn follows_every_layout_down_to_the_physical_disks() {
    let t = storage_node();
    let found = scan_tree(&t);
    let expected = HashMap::from([
        // OSD 3, plain layout: /dev/ceph-abc/osd-block-xyz → dm-0 → sdb.
        (dev(253, 0), osd(&[3], &[Role::Block])),
        (dev(8, 16), osd(&[3], &[Role::Block])),
        // OSD 12, cephadm: /dev/mapper/… → dm-1 → nvme0n1p2.
        (dev(253, 1), osd(&[12], &[Role::Block])),
        (dev(259, 2), osd(&[12], &[Role::Block])),
        // Both DBs are volumes on nvme0n1p3; the whole NVMe serves both OSDs.
        (dev(253, 2), osd(&[12], &[Role::Db])),
        (dev(253, 3), osd(&[3], &[Role::Db])),
        (dev(259, 3), osd(&[3, 12], &[Role::Db])),
        (dev(259, 0), osd(&[3, 12], &[Role::Block, Role::Db])),
        // OSD 5 on a raw disk.
        (dev(8, 32), osd(&[5], &[Role::Block])),
    ]);
    assert_eq!(found, expected);
    let nvme = &found[&dev(259, 0)];
    assert_eq!(nvme.ids_label(), "3,12", "numeric order");
    assert_eq!(nvme.roles_label(), "block,db");
}

#[test]
fn follows_links_through_the_hosts_dev_when_mounted() {
    let t = storage_node();
    // A /dev like the host's: the LV link to its dm node, the node itself.
    t.link("dev/ceph-abc/osd-block-xyz", "../dm-0");
    t.write("dev/dm-0", "");
    // The dm name now disagrees with the path, so only following /dev finds dm-0.
    std::fs::write(
        t.path("sys/devices/virtual/block/dm-0/dm/name"),
        "renamed\n",
    )
    .unwrap();
    assert_eq!(scan_tree(&t)[&dev(8, 16)], osd(&[3], &[Role::Block]));
}

#[test]
fn broken_links_and_trees_give_no_label() {
    let t = storage_node();
    // Dangling: nothing in /dev or sysfs has that name.
    t.link("ceph/osd/ceph-20/block", "/dev/sdz");
    // A link loop inside /dev, and one on itself.
    t.link("ceph/osd/ceph-21/block", "/dev/loopy/a");
    t.link("dev/loopy/a", "b");
    t.link("dev/loopy/b", "a");
    t.link("ceph/osd/ceph-22/block", t.path("ceph/osd/ceph-22/block"));
    // A file instead of a link; a directory name that is not an OSD id.
    t.write("ceph/osd/ceph-23/block", "\u{0}garbage\u{1b}[31m");
    t.link("ceph/osd/ceph-banana/block", "/dev/sdb");
    // Targets /dev cannot name through sysfs, or that escape it.
    t.link(
        "ceph/osd/ceph-24/block",
        "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
    );
    t.link("ceph/osd/ceph-25/block", "/dev/../../etc/passwd");
    t.link("ceph/osd/ceph-26/block", "/dev/mapper/../../sdb");
    // A device whose `dev` is garbage.
    t.disk("virtual/block/dm-9", "253:9", "0");
    std::fs::write(t.path("sys/devices/virtual/block/dm-9/dev"), "garbage").unwrap();
    t.link("ceph/osd/ceph-27/block", "/dev/dm-9");
    let (found, log) = with_debug_log(|| scan_tree(&t));
    assert_eq!(found, scan_tree(&storage_node()));
    for id in 20..=26 {
        let line = format!("ceph-{id}/block");
        assert!(log.contains(&line), "no debug line for {line} in:\n{log}");
    }
    assert!(log.contains("OSD link chain too long or looping"), "{log}");
    assert!(log.contains("malformed device number"), "{log}");
}

#[test]
fn a_slaves_cycle_ends() {
    let t = storage_node();
    let a = t.dm(5, "a", "CRYPT-x", &[]);
    let b = t.dm(6, "b", "mpath-y", &[&a, "sys/devices/gone"]);
    t.link(&format!("{a}/slaves/dm-6"), t.path(&b));
    t.link("ceph/osd/ceph-30/wal", "/dev/dm-5");
    t.link("ceph/osd/ceph-30/block.wal", "/dev/dm-5");
    let (found, log) = with_debug_log(|| scan_tree(&t));
    assert!(log.contains("device-mapper stack loops"), "{log}");
    assert!(log.contains("dangling sysfs slave link"), "{log}");
    assert_eq!(found[&dev(253, 5)], osd(&[30], &[Role::Wal]));
    assert_eq!(found[&dev(253, 6)], osd(&[30], &[Role::Wal]));
    assert_eq!(found.len(), scan_tree(&storage_node()).len() + 2);
}

#[test]
fn no_ceph_directory_is_no_osd() {
    let t = Tree::new();
    assert!(scan_tree(&t).is_empty());
    let mut map = OsdMap::new(t.roots());
    assert_eq!(map.get(dev(8, 0)), None);
}

#[test]
fn lvm_names_double_their_dashes() {
    assert_eq!(
        lvm_dm_name("ceph-abc", "osd-block-1"),
        "ceph--abc-osd--block--1"
    );
    assert_eq!(lvm_dm_name("vg", "lv"), "vg-lv");
}

/// On this machine: an OSD link to a real device node is resolved by the node's number
/// (skipped where `/dev` has no block device that `/sys` lists, loop devices aside).
#[test]
fn a_real_device_node_is_resolved_by_its_number() {
    let sys = Path::new("/sys");
    let node = std::fs::read_dir(sys.join("class/block"))
        .into_iter()
        .flatten()
        .flatten()
        // Loop devices come and go with other tests.
        .filter(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .map(|e| Path::new("/dev").join(e.file_name()))
        .find(|node| std::fs::metadata(node).is_ok_and(|m| m.file_type().is_block_device()));
    let Some(node) = node else {
        eprintln!("skipped: no block device node in /dev");
        return;
    };
    let t = Tree::new();
    t.link("ceph/osd/ceph-0/block", &node);
    let roots = Roots {
        sys: sys.into(),
        dev: "/dev".into(),
        ceph: t.path("ceph"),
    };
    let number = BlockTree::new(sys)
        .by_name(&node.file_name().unwrap().to_string_lossy())
        .and_then(|dir| sysfs::number_of(&dir));
    let Some(number) = number else {
        eprintln!("skipped: {} went away", node.display());
        return;
    };
    let by_node = device_node(&node, &BlockTree::new(sys));
    assert_eq!(by_node.and_then(|dir| sysfs::number_of(&dir)), Some(number));
    assert_eq!(scan(&roots)[&number], osd(&[0], &[Role::Block]));
}
