//! Every example in `layouts/` is valid and plans on a disk set it was written for.

use metalcast_layout::{GIB, Layout, Plan, PlannedBoot, commands, fstab, mdadm_conf, plan};
use metalcast_proto::{Disk, Firmware};

fn disk(path: &str, gib: u64, rotational: bool) -> Disk {
    Disk {
        path: path.into(),
        size_bytes: gib * GIB,
        model: Some("QEMU HARDDISK".into()),
        serial: Some(format!("SN-{}", path.trim_start_matches("/dev/"))),
        rotational,
        by_path: None,
    }
}

fn example(name: &str) -> Layout {
    let path = format!("{}/../../layouts/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("reading the example");
    Layout::from_toml(&text).unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

fn plan_ok(name: &str, disks: &[Disk], firmware: Firmware) -> Plan {
    let layout = example(name);
    plan(&layout, disks, firmware, "52:54:00:12:34:56").unwrap_or_else(|e| panic!("{name}:\n{e}"))
}

#[test]
fn every_example_is_covered_here() {
    let dir = format!("{}/../../layouts", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "raid1-lvm-uefi.toml",
            "raid10-xfs.toml",
            "raid5-data.toml",
            "single-bios.toml",
            "single-uefi.toml"
        ]
    );
}

#[test]
fn single_bios() {
    let p = plan_ok(
        "single-bios.toml",
        &[disk("/dev/vda", 20, true)],
        Firmware::Bios,
    );
    println!("{p}");
    assert_eq!(p.disks[0].partitions.len(), 3);
    assert_eq!(
        p.boot,
        Some(PlannedBoot::Bios {
            disks: vec!["/dev/vda".into()]
        })
    );
    assert!(fstab(&p).contains(" / ext4 errors=remount-ro 0 1\n"));
}

#[test]
fn single_uefi() {
    let p = plan_ok(
        "single-uefi.toml",
        &[disk("/dev/sda", 100, false)],
        Firmware::Uefi,
    );
    println!("{p}");
    let parts = &p.disks[0].partitions;
    assert_eq!(parts[0].path, "/dev/sda1");
    assert_eq!(parts[0].size, 512 << 20);
    let Some(PlannedBoot::Uefi { esps, .. }) = &p.boot else {
        panic!("{:?}", p.boot)
    };
    assert_eq!(esps.len(), 1);
    assert_eq!(esps[0].mount, "/boot/efi");
}

#[test]
fn raid1_lvm_uefi() {
    let disks = [disk("/dev/vda", 20, false), disk("/dev/vdb", 20, false)];
    let p = plan_ok("raid1-lvm-uefi.toml", &disks, Firmware::Uefi);
    println!("{p}");
    for a in commands(&p, "/target") {
        println!("{a}");
    }
    println!("{}{}", fstab(&p), mdadm_conf(&p));
    assert_eq!(p.raids[0].members, ["/dev/vda2", "/dev/vdb2"]);
    let Some(PlannedBoot::Uefi { esps, .. }) = &p.boot else {
        panic!("{:?}", p.boot)
    };
    let mounts: Vec<_> = esps
        .iter()
        .map(|e| (e.device.as_str(), e.mount.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [("/dev/vda1", "/boot/efi"), ("/dev/vdb1", "/boot/efi2")]
    );
    assert_eq!(p.vgs[0].lvs.len(), 3);
}

#[test]
fn raid10_xfs_under_both_firmwares() {
    let disks: Vec<Disk> = ["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"]
        .iter()
        .map(|p| disk(p, 10, true))
        .collect();
    let bios = plan_ok("raid10-xfs.toml", &disks, Firmware::Bios);
    println!("{bios}");
    assert_eq!(bios.raids[1].members.len(), 4);
    assert_eq!(
        bios.boot,
        Some(PlannedBoot::Bios {
            disks: disks.iter().map(|d| d.path.clone()).collect()
        })
    );
    let uefi = plan_ok("raid10-xfs.toml", &disks, Firmware::Uefi);
    let Some(PlannedBoot::Uefi { esps, .. }) = &uefi.boot else {
        panic!("{:?}", uefi.boot)
    };
    assert_eq!(esps.len(), 4);
}

#[test]
fn raid5_data() {
    let disks = [
        disk("/dev/sda", 16, false),
        disk("/dev/sdb", 100, true),
        disk("/dev/sdc", 100, true),
        disk("/dev/sdd", 100, true),
    ];
    let p = plan_ok("raid5-data.toml", &disks, Firmware::Uefi);
    println!("{p}");
    assert_eq!(p.disks[0].path, "/dev/sda");
    assert_eq!(p.raids[0].members, ["/dev/sdb", "/dev/sdc", "/dev/sdd"]);
    assert!(p.raids[0].size_bytes > 190 * GIB && p.raids[0].size_bytes < 200 * GIB);
}
