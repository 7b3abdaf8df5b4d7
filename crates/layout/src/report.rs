//! Parsers for what the block tools print, into [`metalcast_proto::BlockTree`] parts. Pure,
//! so they are tested on captured output; [`crate::exec::block_tree`] runs the tools.

use std::collections::BTreeMap;

use metalcast_proto::layout::{
    BlockDevice, LogicalVolume, MdArray, MdMember, PhysicalVolume, VolumeGroup,
};
use serde::Deserialize;

/// lsblk columns [`parse_lsblk`] expects (`lsblk --json -b -o …`).
pub const LSBLK_COLUMNS: &str = "NAME,PATH,SIZE,TYPE,FSTYPE,PTTYPE,LABEL,UUID,PARTLABEL,MOUNTPOINT";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{tool} printed JSON this parser does not understand")]
    Json {
        tool: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{tool}: {field} is {value:?}, not a number")]
    Number {
        tool: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("{tool}: {field} is missing")]
    Missing {
        tool: &'static str,
        field: &'static str,
    },
}

#[derive(Deserialize)]
struct Lsblk {
    blockdevices: Vec<LsblkDevice>,
}

#[derive(Deserialize)]
struct LsblkDevice {
    name: String,
    path: Option<String>,
    size: Option<Number>,
    #[serde(rename = "type")]
    kind: Option<String>,
    fstype: Option<String>,
    pttype: Option<String>,
    label: Option<String>,
    uuid: Option<String>,
    partlabel: Option<String>,
    mountpoint: Option<String>,
    #[serde(default)]
    children: Vec<LsblkDevice>,
}

/// lsblk before util-linux 2.33 printed every value as a string; later ones print numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn value(&self, tool: &'static str, field: &'static str) -> Result<u64, ReportError> {
        match self {
            Number::Int(n) => Ok(*n),
            Number::Text(s) => number(tool, field, s),
        }
    }
}

fn number(tool: &'static str, field: &'static str, s: &str) -> Result<u64, ReportError> {
    s.trim().parse().map_err(|_| ReportError::Number {
        tool,
        field,
        value: s.to_owned(),
    })
}

/// `lsblk --json -b -o` [`LSBLK_COLUMNS`].
pub fn parse_lsblk(json: &str) -> Result<Vec<BlockDevice>, ReportError> {
    let out: Lsblk = serde_json::from_str(json).map_err(|source| ReportError::Json {
        tool: "lsblk",
        source,
    })?;
    out.blockdevices.into_iter().map(device).collect()
}

fn device(d: LsblkDevice) -> Result<BlockDevice, ReportError> {
    let size_bytes = match &d.size {
        Some(n) => n.value("lsblk", "size")?,
        None => 0,
    };
    Ok(BlockDevice {
        path: d.path.unwrap_or_else(|| format!("/dev/{}", d.name)),
        name: d.name,
        size_bytes,
        kind: d.kind.unwrap_or_default(),
        fstype: d.fstype,
        pttype: d.pttype,
        label: d.label,
        uuid: d.uuid,
        partlabel: d.partlabel,
        mountpoint: d.mountpoint,
        children: d
            .children
            .into_iter()
            .map(device)
            .collect::<Result<_, _>>()?,
    })
}

/// `KEY=value` lines as `blkid -o export` and `mdadm --export` print them; a backslash
/// escapes the next character (`VERSION=LVM2\ 001`).
pub fn parse_export(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| {
            let mut value = String::with_capacity(v.len());
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
            (k.trim().to_owned(), value)
        })
        .collect()
}

/// Fill what lsblk left empty from `blkid -p -o export` of the same device: without a udev
/// database (the boot initramfs) lsblk reports no signatures at all.
pub fn fill_from_blkid(dev: &mut BlockDevice, props: &BTreeMap<String, String>) {
    let take = |slot: &mut Option<String>, key: &str| {
        if slot.is_none() {
            *slot = props.get(key).filter(|v| !v.is_empty()).cloned();
        }
    };
    take(&mut dev.fstype, "TYPE");
    take(&mut dev.pttype, "PTTYPE");
    take(&mut dev.label, "LABEL");
    take(&mut dev.uuid, "UUID");
    take(&mut dev.partlabel, "PART_ENTRY_NAME");
}

/// `mdadm --detail --export PATH`.
pub fn parse_mdadm_export(path: &str, text: &str) -> Result<MdArray, ReportError> {
    let props = parse_export(text);
    let raid_devices = props
        .get("MD_DEVICES")
        .map(|v| number("mdadm", "MD_DEVICES", v))
        .transpose()?
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    // Members come as MD_DEVICE_<name>_ROLE / MD_DEVICE_<name>_DEV pairs; <name> is
    // mdadm's mangled sysfs name, used here only to pair the two.
    let mut members: BTreeMap<&str, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for (key, value) in &props {
        let Some(rest) = key.strip_prefix("MD_DEVICE_") else {
            continue;
        };
        if let Some(id) = rest.strip_suffix("_ROLE") {
            members.entry(id).or_default().0 = Some(value);
        } else if let Some(id) = rest.strip_suffix("_DEV") {
            members.entry(id).or_default().1 = Some(value);
        }
    }
    let mut members: Vec<MdMember> = members
        .into_values()
        .filter_map(|(role, dev)| {
            Some(MdMember {
                path: dev?.to_owned(),
                role: role.and_then(|r| r.parse().ok()),
            })
        })
        .collect();
    // Active members by slot, spares last.
    members.sort_by_key(|m| (m.role.is_none(), m.role));
    if !props.contains_key("MD_LEVEL") && members.is_empty() {
        return Err(ReportError::Missing {
            tool: "mdadm",
            field: "MD_LEVEL",
        });
    }
    Ok(MdArray {
        path: path.to_owned(),
        level: props.get("MD_LEVEL").cloned(),
        raid_devices,
        metadata: props.get("MD_METADATA").cloned(),
        uuid: props.get("MD_UUID").cloned(),
        name: props.get("MD_NAME").cloned(),
        members,
    })
}

/// LVM's `--reportformat json`: `{"report": [{"<kind>": [{field: "value", …}]}]}`.
fn lvm_rows(
    tool: &'static str,
    kind: &str,
    json: &str,
) -> Result<Vec<BTreeMap<String, String>>, ReportError> {
    #[derive(Deserialize)]
    struct Report {
        report: Vec<BTreeMap<String, Vec<BTreeMap<String, String>>>>,
    }
    let r: Report =
        serde_json::from_str(json).map_err(|source| ReportError::Json { tool, source })?;
    Ok(r.report
        .into_iter()
        .flat_map(|mut section| section.remove(kind).unwrap_or_default())
        .collect())
}

fn field<'r>(
    row: &'r BTreeMap<String, String>,
    tool: &'static str,
    name: &'static str,
) -> Result<&'r str, ReportError> {
    row.get(name)
        .map(String::as_str)
        .ok_or(ReportError::Missing { tool, field: name })
}

/// `pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pv_size`.
pub fn parse_pvs(json: &str) -> Result<Vec<PhysicalVolume>, ReportError> {
    lvm_rows("pvs", "pv", json)?
        .iter()
        .map(|row| {
            let vg = field(row, "pvs", "vg_name")?;
            Ok(PhysicalVolume {
                path: field(row, "pvs", "pv_name")?.to_owned(),
                vg: (!vg.is_empty()).then(|| vg.to_owned()),
                size_bytes: number("pvs", "pv_size", field(row, "pvs", "pv_size")?)?,
            })
        })
        .collect()
}

/// `vgs --reportformat json --units b --nosuffix -o
/// vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_extent_count`.
pub fn parse_vgs(json: &str) -> Result<Vec<VolumeGroup>, ReportError> {
    lvm_rows("vgs", "vg", json)?
        .iter()
        .map(|row| {
            let n = |f| number("vgs", f, field(row, "vgs", f)?);
            Ok(VolumeGroup {
                name: field(row, "vgs", "vg_name")?.to_owned(),
                uuid: field(row, "vgs", "vg_uuid")?.to_owned(),
                size_bytes: n("vg_size")?,
                free_bytes: n("vg_free")?,
                extent_size_bytes: n("vg_extent_size")?,
                extent_count: n("vg_extent_count")?,
            })
        })
        .collect()
}

/// `lvs --reportformat json --units b --nosuffix -o vg_name,lv_name,lv_path,lv_size`.
pub fn parse_lvs(json: &str) -> Result<Vec<LogicalVolume>, ReportError> {
    lvm_rows("lvs", "lv", json)?
        .iter()
        .map(|row| {
            let vg = field(row, "lvs", "vg_name")?.to_owned();
            let name = field(row, "lvs", "lv_name")?.to_owned();
            let path = row
                .get("lv_path")
                .filter(|p| !p.is_empty())
                .cloned()
                .unwrap_or_else(|| format!("/dev/{vg}/{name}"));
            Ok(LogicalVolume {
                size_bytes: number("lvs", "lv_size", field(row, "lvs", "lv_size")?)?,
                vg,
                name,
                path,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsblk_tree_with_raid_and_lvm_parses_numbers_and_strings() {
        let devices = parse_lsblk(include_str!("../testdata/lsblk-node.json")).unwrap();
        assert_eq!(devices.len(), 3);
        let vda = &devices[0];
        assert_eq!(vda.path, "/dev/vda");
        assert_eq!(vda.size_bytes, 20 << 30);
        assert_eq!(vda.pttype.as_deref(), Some("gpt"));
        // The old string form of numbers.
        assert_eq!(devices[1].size_bytes, 20 << 30);
        let names: Vec<_> = vda.walk().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "vda1", "vda2", "md0", "vg0-root"]);
        let root = vda.walk()[4];
        assert_eq!(root.kind, "lvm");
        assert_eq!(root.mountpoint.as_deref(), Some("/target"));
        assert_eq!(vda.children[0].partlabel.as_deref(), Some("esp"));
        assert_eq!(devices[2].kind, "rom");
    }

    #[test]
    fn lsblk_garbage_is_an_error_not_a_panic() {
        assert!(matches!(parse_lsblk("{}"), Err(ReportError::Json { .. })));
        assert!(matches!(
            parse_lsblk(r#"{"blockdevices":[{"name":"x","size":"12a"}]}"#),
            Err(ReportError::Number { .. })
        ));
    }

    #[test]
    fn blkid_export_of_real_signatures() {
        let cases = [
            (
                include_str!("../testdata/blkid-ext4.txt"),
                "ext4",
                Some("root"),
            ),
            (
                include_str!("../testdata/blkid-xfs.txt"),
                "xfs",
                Some("data"),
            ),
            (
                include_str!("../testdata/blkid-vfat.txt"),
                "vfat",
                Some("ESP"),
            ),
            (
                include_str!("../testdata/blkid-swap.txt"),
                "swap",
                Some("swap"),
            ),
            (
                include_str!("../testdata/blkid-lvm.txt"),
                "LVM2_member",
                None,
            ),
        ];
        for (text, fstype, label) in cases {
            let props = parse_export(text);
            let mut dev = parse_lsblk(r#"{"blockdevices":[{"name":"vdz","size":1}]}"#)
                .unwrap()
                .remove(0);
            fill_from_blkid(&mut dev, &props);
            assert_eq!(dev.fstype.as_deref(), Some(fstype));
            assert_eq!(dev.label.as_deref(), label);
            assert!(dev.uuid.is_some());
        }
        let lvm = parse_export(include_str!("../testdata/blkid-lvm.txt"));
        assert_eq!(lvm["VERSION"], "LVM2 001", "escaped space");
        let vfat = parse_export(include_str!("../testdata/blkid-vfat.txt"));
        assert_eq!(vfat["UUID"], "1A2B-3C4D");
    }

    #[test]
    fn blkid_does_not_override_what_lsblk_knew() {
        let mut dev = parse_lsblk(r#"{"blockdevices":[{"name":"vdz","size":1,"fstype":"xfs"}]}"#)
            .unwrap()
            .remove(0);
        fill_from_blkid(&mut dev, &parse_export("TYPE=ext4\nPART_ENTRY_NAME=root\n"));
        assert_eq!(dev.fstype.as_deref(), Some("xfs"));
        assert_eq!(dev.partlabel.as_deref(), Some("root"));
    }

    #[test]
    fn mdadm_export_pairs_members_and_orders_them_by_slot() {
        let md = parse_mdadm_export(
            "/dev/md0",
            include_str!("../testdata/mdadm-detail-export.txt"),
        )
        .unwrap();
        assert_eq!(md.level.as_deref(), Some("raid1"));
        assert_eq!(md.raid_devices, Some(2));
        assert_eq!(md.metadata.as_deref(), Some("1.2"));
        assert_eq!(
            md.uuid.as_deref(),
            Some("3a1f0c2e:9b8d7e6f:5a4b3c2d:1e0f9a8b")
        );
        assert_eq!(md.name.as_deref(), Some("node1:root"));
        let members: Vec<_> = md
            .members
            .iter()
            .map(|m| (m.path.as_str(), m.role))
            .collect();
        assert_eq!(
            members,
            [
                ("/dev/vda2", Some(0)),
                ("/dev/vdb2", Some(1)),
                ("/dev/vdc2", None)
            ]
        );
        assert!(parse_mdadm_export("/dev/md9", "").is_err());
        assert!(parse_mdadm_export("/dev/md9", "MD_LEVEL=raid1\nMD_DEVICES=x\n").is_err());
    }

    #[test]
    fn lvm_reports_from_real_lvm2_output() {
        let pvs = parse_pvs(include_str!("../testdata/pvs.json")).unwrap();
        assert_eq!(pvs.len(), 2);
        assert_eq!(pvs[0].vg.as_deref(), Some("vgt"));
        assert_eq!(pvs[0].size_bytes, 196 << 20);
        let vgs = parse_vgs(include_str!("../testdata/vgs.json")).unwrap();
        assert_eq!(vgs[0].extent_size_bytes, 4 << 20);
        assert_eq!(vgs[0].extent_count, 98);
        assert_eq!(vgs[0].size_bytes, 98 * (4 << 20));
        let lvs = parse_lvs(include_str!("../testdata/lvs.json")).unwrap();
        let names: Vec<_> = lvs
            .iter()
            .map(|l| (l.path.as_str(), l.size_bytes))
            .collect();
        assert_eq!(
            names,
            [
                ("/dev/vgt/root", 100 << 20),
                ("/dev/vgt/var", 73 * (4 << 20))
            ]
        );
        assert!(matches!(
            parse_lvs(r#"{"report":[{"lv":[{"vg_name":"a"}]}]}"#),
            Err(ReportError::Missing { .. })
        ));
        assert!(parse_vgs(r#"{"report":[{"vg":[]}]}"#).unwrap().is_empty());
    }
}
