//! Every program the agent runs to apply a layout is in the boot initramfs: planned on the
//! disk sets the examples in `layouts/` were written for, under both firmwares, the commands
//! (with a teardown and the boot loader steps) only name programs that `initramfs/tools.list`
//! or `initramfs/busybox.applets` put there.

use std::collections::BTreeSet;

use metalcast_layout::{
    Action, GIB, Layout, bootloader_commands, commands, plan, teardown_commands,
};
use metalcast_proto::layout::{BlockDevice, BlockTree, MdArray, MdMember, PhysicalVolume};
use metalcast_proto::{Disk, Firmware};

/// What `metalcast_layout::exec::block_tree` runs to read the disks.
const BLOCK_TREE_TOOLS: [&str; 6] = ["lsblk", "blkid", "mdadm", "pvs", "vgs", "lvs"];

fn repo_file(path: &str) -> String {
    let full = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The program names the initramfs carries.
fn initramfs_programs() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in lines(&repo_file("initramfs/tools.list")) {
        // <name> <Debian package> [<other names>...]
        let words: Vec<&str> = line.split_whitespace().collect();
        names.extend(
            words
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, w)| w.to_string()),
        );
    }
    for line in lines(&repo_file("initramfs/busybox.applets")) {
        names.extend(line.split_whitespace().map(str::to_owned));
    }
    names
}

fn disk(path: &str, gib: u64, rotational: bool) -> Disk {
    Disk {
        path: path.into(),
        size_bytes: gib * GIB,
        model: None,
        serial: None,
        rotational,
        by_path: None,
    }
}

fn disk_sets() -> Vec<Vec<Disk>> {
    vec![
        vec![disk("/dev/vda", 20, true)],
        vec![disk("/dev/vda", 20, false), disk("/dev/vdb", 20, false)],
        ["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"]
            .map(|p| disk(p, 10, true))
            .to_vec(),
        vec![
            disk("/dev/sda", 16, false),
            disk("/dev/sdb", 100, true),
            disk("/dev/sdc", 100, true),
            disk("/dev/sdd", 100, true),
        ],
    ]
}

fn dev(path: &str, kind: &str, children: Vec<BlockDevice>) -> BlockDevice {
    BlockDevice {
        name: path.trim_start_matches("/dev/").into(),
        path: path.into(),
        size_bytes: GIB,
        kind: kind.into(),
        fstype: None,
        pttype: None,
        label: None,
        uuid: None,
        partlabel: None,
        mountpoint: None,
        children,
    }
}

/// A previous install on `path`: a mounted partition, and an array holding a volume group.
fn used(path: &str) -> BlockTree {
    let md = dev("/dev/md127", "raid1", Vec::new());
    let mut mounted = dev(&format!("{path}1"), "part", Vec::new());
    mounted.mountpoint = Some("/target".into());
    BlockTree {
        devices: vec![dev(
            path,
            "disk",
            vec![mounted, dev(&format!("{path}2"), "part", vec![md])],
        )],
        md_arrays: vec![MdArray {
            path: "/dev/md127".into(),
            level: Some("raid1".into()),
            raid_devices: Some(2),
            metadata: Some("1.2".into()),
            uuid: None,
            name: None,
            members: vec![MdMember {
                path: format!("{path}2"),
                role: Some(0),
            }],
        }],
        physical_volumes: vec![PhysicalVolume {
            path: "/dev/md127".into(),
            vg: Some("vg0".into()),
            size_bytes: GIB,
        }],
        ..BlockTree::default()
    }
}

#[test]
fn every_program_the_layouts_need_is_in_the_initramfs() {
    let have = initramfs_programs();
    let dir = format!("{}/../../layouts", env!("CARGO_MANIFEST_DIR"));
    let mut examples: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty());

    let mut needed: BTreeSet<String> = BLOCK_TREE_TOOLS.map(str::to_owned).into();
    for name in &examples {
        let layout = Layout::from_toml(&repo_file(&format!("layouts/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut planned = 0;
        for firmware in [Firmware::Bios, Firmware::Uefi] {
            for disks in disk_sets() {
                let Ok(p) = plan(&layout, &disks, firmware, "52:54:00:12:34:56") else {
                    continue;
                };
                planned += 1;
                let mut actions = teardown_commands(&used(&disks[0].path), &p);
                assert!(!actions.is_empty(), "{name}: the teardown is exercised");
                actions.extend(commands(&p, "/target"));
                actions.extend(bootloader_commands(&p, "/target"));
                needed.extend(actions.iter().filter_map(|a| match a {
                    Action::Run(c) => Some(c.program.clone()),
                    Action::WaitForDevice(_) => None,
                }));
            }
        }
        assert!(planned > 0, "{name} planned on none of the disk sets here");
    }
    // Installing an image: bind mounts for the chroot, the chroot itself, unmounts, the
    // flush to disk and the reboot (the tools run inside the chroot come from the image).
    needed.extend(["mount", "umount", "chroot", "sync", "reboot"].map(str::to_owned));
    // The test sees the whole tool chain: teardown, mkfs of every kind, LVM, mounting.
    for tool in [
        "umount", "vgchange", "mkswap", "mkfs.xfs", "lvcreate", "mount",
    ] {
        assert!(needed.contains(tool), "{tool} not exercised: {needed:?}");
    }
    let missing: Vec<&String> = needed.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "not in initramfs/tools.list or busybox.applets: {missing:?}"
    );
}
