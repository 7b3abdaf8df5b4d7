//! After an apply: does the block tree the agent reads back match the plan?

use metalcast_proto::layout::{BlockDevice, BlockTree, PartitionTable};

use crate::commands::under;
use crate::plan::Plan;
use crate::units::human;

/// Every way `tree` differs from what `plan` created, one sentence each; empty when it
/// matches: partitions (size, name), arrays (level, UUID, members), volume groups and LVs
/// (extent size, sizes; a `rest` LV at least its planned size), filesystems found by UUID
/// (type, label, mount point under `target`).
pub fn verify(plan: &Plan, tree: &BlockTree, target: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let all: Vec<&BlockDevice> = tree.devices.iter().flat_map(BlockDevice::walk).collect();
    let find = |path: &str| all.iter().copied().find(|d| d.path == path);

    for d in &plan.disks {
        if find(&d.path).is_none() {
            problems.push(format!("disk {} is missing", d.path));
            continue;
        }
        for p in &d.partitions {
            match find(&p.path) {
                None => problems.push(format!("partition {} is missing", p.path)),
                Some(dev) => {
                    if dev.size_bytes != p.size {
                        problems.push(format!(
                            "{} is {} bytes, planned {}",
                            p.path, dev.size_bytes, p.size
                        ));
                    }
                    if d.table == Some(PartitionTable::Gpt)
                        && dev.partlabel.as_deref() != Some(p.label.as_str())
                    {
                        problems.push(format!(
                            "{} is named {:?}, planned {:?}",
                            p.path, dev.partlabel, p.label
                        ));
                    }
                }
            }
        }
    }

    for r in &plan.raids {
        let Some(md) = tree.md_arrays.iter().find(|m| {
            m.uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(&r.uuid))
        }) else {
            problems.push(format!("array {} (UUID {}) is missing", r.name, r.uuid));
            continue;
        };
        if md.level.as_deref() != Some(r.level.name()) {
            problems.push(format!(
                "array {} is {:?}, planned {}",
                r.name,
                md.level,
                r.level.name()
            ));
        }
        let mut got: Vec<&str> = md
            .members
            .iter()
            .filter(|m| m.role.is_some())
            .map(|m| m.path.as_str())
            .collect();
        let mut want: Vec<&str> = r.members.iter().map(String::as_str).collect();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            problems.push(format!(
                "array {} has members {}, planned {}",
                r.name,
                got.join(" "),
                want.join(" ")
            ));
        }
    }

    for vg in &plan.vgs {
        let Some(found) = tree.volume_groups.iter().find(|g| g.name == vg.name) else {
            problems.push(format!("volume group {} is missing", vg.name));
            continue;
        };
        if found.extent_size_bytes != vg.extent_size {
            problems.push(format!(
                "volume group {} has extents of {}, planned {}",
                vg.name,
                human(found.extent_size_bytes),
                human(vg.extent_size)
            ));
        }
        for lv in &vg.lvs {
            let planned = lv.extents * vg.extent_size;
            match tree
                .logical_volumes
                .iter()
                .find(|l| l.vg == vg.name && l.name == lv.name)
            {
                None => problems.push(format!("{} is missing", lv.path)),
                Some(l) if lv.rest && l.size_bytes < planned => problems.push(format!(
                    "{} has {}, planned at least {}",
                    lv.path,
                    human(l.size_bytes),
                    human(planned)
                )),
                Some(l) if !lv.rest && l.size_bytes != planned => problems.push(format!(
                    "{} has {}, planned {}",
                    lv.path,
                    human(l.size_bytes),
                    human(planned)
                )),
                Some(_) => {}
            }
        }
    }

    for fs in &plan.filesystems {
        // By UUID: lsblk names LVs /dev/mapper/<vg>-<lv>, not /dev/<vg>/<lv>.
        let Some(dev) = all.iter().find(|d| {
            d.uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(&fs.uuid))
                && d.fstype.as_deref() == Some(fs.kind.as_str())
        }) else {
            problems.push(format!(
                "no {} filesystem with UUID {} (planned on {})",
                fs.kind, fs.uuid, fs.device
            ));
            continue;
        };
        if fs.label.is_some() && dev.label != fs.label {
            problems.push(format!(
                "{} on {} is labelled {:?}, planned {:?}",
                fs.kind, dev.path, dev.label, fs.label
            ));
        }
        // Swap and unmounted filesystems have no mount point to check.
        if let Some(want) = fs.mount.as_deref().map(|m| under(target, m))
            && dev.mountpoint.as_deref() != Some(want.as_str())
        {
            problems.push(format!(
                "{} on {} is mounted at {:?}, planned {want}",
                fs.kind, dev.path, dev.mountpoint
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use metalcast_proto::layout::{LogicalVolume, MdArray, MdMember, VolumeGroup};
    use metalcast_proto::{Disk, Firmware};

    use super::*;
    use crate::units::GIB;
    use crate::{Layout, plan};

    fn raid1_plan() -> Plan {
        let layout =
            Layout::from_toml(include_str!("../../../layouts/raid1-lvm-uefi.toml")).unwrap();
        let disks: Vec<Disk> = ["/dev/vda", "/dev/vdb"]
            .iter()
            .map(|p| Disk {
                path: (*p).into(),
                size_bytes: 20 * GIB,
                model: None,
                serial: None,
                rotational: false,
                by_path: None,
            })
            .collect();
        plan(&layout, &disks, Firmware::Uefi, "52:54:00:12:34:56").unwrap()
    }

    fn device(path: &str, size: u64, kind: &str) -> BlockDevice {
        BlockDevice {
            name: path.rsplit('/').next().unwrap_or(path).into(),
            path: path.into(),
            size_bytes: size,
            kind: kind.into(),
            fstype: None,
            pttype: None,
            label: None,
            uuid: None,
            partlabel: None,
            mountpoint: None,
            children: vec![],
        }
    }

    /// The tree a faithful apply of `p` leaves, mounted under /target.
    fn applied(p: &Plan) -> BlockTree {
        let mut devices = Vec::new();
        for d in &p.disks {
            let mut disk = device(&d.path, d.size_bytes, "disk");
            for part in &d.partitions {
                let mut dev = device(&part.path, part.size, "part");
                dev.partlabel = Some(part.label.clone());
                disk.children.push(dev);
            }
            devices.push(disk);
        }
        for r in &p.raids {
            devices.push(device(&r.path, r.size_bytes, r.level.name()));
        }
        let mut volume_groups = Vec::new();
        let mut logical_volumes = Vec::new();
        for vg in &p.vgs {
            volume_groups.push(VolumeGroup {
                name: vg.name.clone(),
                uuid: "x".into(),
                size_bytes: vg.extents * vg.extent_size,
                free_bytes: 0,
                extent_size_bytes: vg.extent_size,
                extent_count: vg.extents,
            });
            for lv in &vg.lvs {
                let size = lv.extents * vg.extent_size;
                let mapper = format!("/dev/mapper/{}-{}", vg.name, lv.name);
                devices.push(device(&mapper, size, "lvm"));
                logical_volumes.push(LogicalVolume {
                    vg: vg.name.clone(),
                    name: lv.name.clone(),
                    path: lv.path.clone(),
                    size_bytes: size,
                });
            }
        }
        let mut tree = BlockTree {
            devices,
            md_arrays: p
                .raids
                .iter()
                .map(|r| MdArray {
                    path: r.path.clone(),
                    level: Some(r.level.name().into()),
                    raid_devices: Some(r.members.len() as u32),
                    metadata: Some(r.metadata.as_str().into()),
                    uuid: Some(r.uuid.clone()),
                    name: Some(format!("(none):{}", r.name)),
                    members: r
                        .members
                        .iter()
                        .enumerate()
                        .map(|(i, m)| MdMember {
                            path: m.clone(),
                            role: Some(i as u32),
                        })
                        .collect(),
                })
                .collect(),
            physical_volumes: vec![],
            volume_groups,
            logical_volumes,
        };
        for fs in &p.filesystems {
            let lv_mapper = fs.device.strip_prefix("/dev/").and_then(|rest| {
                let (vg, lv) = rest.split_once('/')?;
                Some(format!("/dev/mapper/{vg}-{lv}"))
            });
            let path = lv_mapper.unwrap_or_else(|| fs.device.clone());
            let dev = tree
                .devices
                .iter_mut()
                .find_map(|d| find_mut(d, &path))
                .unwrap();
            dev.fstype = Some(fs.kind.as_str().into());
            dev.uuid = Some(fs.uuid.clone());
            dev.label = fs.label.clone();
            dev.mountpoint = fs.mount.as_deref().map(|m| under("/target", m));
        }
        tree
    }

    fn find_mut<'a>(d: &'a mut BlockDevice, path: &str) -> Option<&'a mut BlockDevice> {
        if d.path == path {
            return Some(d);
        }
        d.children.iter_mut().find_map(|c| find_mut(c, path))
    }

    #[test]
    fn a_faithful_apply_matches() {
        let p = raid1_plan();
        assert_eq!(verify(&p, &applied(&p), "/target"), Vec::<String>::new());
    }

    #[test]
    fn every_difference_is_reported() {
        let p = raid1_plan();
        let mut tree = applied(&p);
        tree.devices[0].children[1].size_bytes -= 1 << 20;
        tree.devices[1].children[0].label = Some("OTHER".into());
        tree.md_arrays[0].members.pop();
        tree.logical_volumes[0].size_bytes /= 2;
        tree.logical_volumes[2].size_bytes += 4 << 20;
        let root = tree
            .devices
            .iter_mut()
            .find_map(|d| find_mut(d, "/dev/mapper/vg0-root"))
            .unwrap();
        root.mountpoint = None;
        let problems = verify(&p, &tree, "/target");
        let expected = [
            "/dev/vda2 is 20934819840 bytes, planned 20935868416",
            "array system has members /dev/vda2, planned /dev/vda2 /dev/vdb2",
            "/dev/vg0/root has 4 GiB, planned 8 GiB",
            "vfat on /dev/vdb1 is labelled Some(\"OTHER\"), planned Some(\"ESP\")",
            "ext4 on /dev/mapper/vg0-root is mounted at None, planned /target",
        ];
        assert_eq!(problems, expected);
        tree.volume_groups.clear();
        assert!(verify(&p, &tree, "/target").contains(&"volume group vg0 is missing".to_owned()));
    }
}
