//! Disk layouts: the TOML schema of `layouts/*.toml` as it is written and sent (wire types),
//! and the block tree an agent reports after applying one.
//!
//! The wire types only check syntax (known keys, size strings); everything that needs the
//! whole layout or the node's disks (names, references, fit) is checked by the
//! `metalcast-layout` crate, whose errors name the field. `docs/layouts.md` documents every
//! field.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Firmware;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// A whole layout file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    /// Free text for operators; shown by `metalcast layout check`.
    #[serde(default)]
    pub description: Option<String>,
    /// A stateful layout installs an OS to disk: it needs `/` and a `[bootloader]`. A
    /// stateless node runs from RAM and may only use its disks for data.
    #[serde(default = "default_true")]
    pub stateful: bool,
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub raid: Vec<RaidSpec>,
    #[serde(default)]
    pub vg: Vec<VgSpec>,
    #[serde(default, rename = "filesystem")]
    pub filesystems: Vec<FilesystemSpec>,
    #[serde(default)]
    pub bootloader: Option<BootloaderSpec>,
}

fn default_true() -> bool {
    true
}

/// A rule choosing one disk (or `count` disks of equal size) and how to cut it.
///
/// All given filters must hold; with neither `pick` nor `count` exactly one disk may match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub name: String,
    /// Kernel path, e.g. `/dev/vda`.
    #[serde(default)]
    pub path: Option<String>,
    /// Name under `/dev/disk/by-path/`, e.g. `pci-0000:00:04.0`.
    #[serde(default)]
    pub by_path: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    /// Glob (`*`, `?`) on the model string, case-insensitive.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub min_size: Option<ByteSize>,
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    #[serde(default)]
    pub rotational: Option<bool>,
    /// Choose among several matches instead of refusing them as ambiguous.
    #[serde(default)]
    pub pick: Option<Pick>,
    /// Take exactly this many disks of equal size (for RAID).
    #[serde(default)]
    pub count: Option<u32>,
    /// Partition table; GPT unless `msdos` is asked for. Only with partitions.
    #[serde(default)]
    pub table: Option<PartitionTable>,
    #[serde(default, rename = "partition")]
    pub partitions: Vec<PartitionSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pick {
    Smallest,
    Largest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    Gpt,
    Msdos,
}

impl fmt::Display for PartitionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gpt => "gpt",
            Self::Msdos => "msdos",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// Reference name, used as `<disk>.<name>`.
    pub name: String,
    /// GPT partition name (PARTLABEL); defaults to `name`.
    #[serde(default)]
    pub label: Option<String>,
    pub size: Size,
    #[serde(rename = "type")]
    pub kind: PartitionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionType {
    /// EFI System Partition.
    Esp,
    /// GRUB's core image on a GPT disk booted by BIOS.
    BiosBoot,
    Linux,
    Raid,
    Lvm,
    Swap,
}

impl PartitionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Esp => "esp",
            Self::BiosBoot => "bios_boot",
            Self::Linux => "linux",
            Self::Raid => "raid",
            Self::Lvm => "lvm",
            Self::Swap => "swap",
        }
    }
}

impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An MD RAID array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaidSpec {
    /// Array name (stored in the superblock, `/dev/md/<name>` on the installed system).
    pub name: String,
    /// 0, 1, 5, 6 or 10.
    pub level: u8,
    /// Partitions (`disk.part`) or whole disks (`disk`); a rule with `count` stands for all
    /// of its disks.
    pub members: Vec<String>,
    /// Superblock format: `1.2` (default), `1.1`, `1.0` or `0.90`.
    #[serde(default)]
    pub metadata: Option<String>,
    /// Chunk size for levels 0, 5, 6 and 10 (mdadm's default 512KiB when absent).
    #[serde(default)]
    pub chunk: Option<ByteSize>,
}

/// An LVM volume group and its logical volumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VgSpec {
    pub name: String,
    /// Physical volumes: partitions of type `lvm`, RAID arrays or whole disks.
    pub pvs: Vec<String>,
    /// Physical extent size; 4MiB when absent.
    #[serde(default)]
    pub extent_size: Option<ByteSize>,
    #[serde(default, rename = "lv")]
    pub lvs: Vec<LvSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LvSpec {
    pub name: String,
    pub size: Size,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSpec {
    /// What to format: `disk.part`, a RAID name, `vg/lv` or a whole disk.
    pub device: String,
    #[serde(rename = "type")]
    pub kind: FsType,
    /// Absolute mount point; absent for swap and for filesystems left unmounted.
    #[serde(default)]
    pub mount: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    /// Filesystem UUID (`XXXX-XXXX` for vfat); generated from the node's seed when absent.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Mount options written to fstab (`defaults` when empty).
    #[serde(default)]
    pub options: Vec<String>,
    /// Extra arguments for mkfs, placed before the device.
    #[serde(default)]
    pub mkfs_options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
    Vfat,
    Swap,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
            Self::Vfat => "vfat",
            Self::Swap => "swap",
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderSpec {
    /// Only `grub` for now; named so a second loader is not a breaking change.
    #[serde(default = "default_loader")]
    pub loader: Loader,
    /// Firmware this layout can boot under: `["bios"]`, `["uefi"]` or both.
    pub firmware: Vec<Firmware>,
    /// Disk rules that receive a boot loader; default: every rule with an `esp` or
    /// `bios_boot` partition.
    #[serde(default)]
    pub disks: Option<Vec<String>>,
    /// Directory under `EFI/` on the ESP and label prefix of the firmware boot entries.
    #[serde(default)]
    pub efi_id: Option<String>,
}

fn default_loader() -> Loader {
    Loader::Grub
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loader {
    Grub,
}

/// A byte count written with a unit: `512MiB`, `20GiB`, `1TiB`, `500GB`, `4096B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(pub u64);

/// A partition or logical volume size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Size {
    Bytes(ByteSize),
    /// Percent (1–100) of the container: the disk's usable space or the VG.
    Percent(u8),
    /// Whatever is left in the container; at most once per container.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("{0:?} is not a size: expected a number with a unit, e.g. 512MiB or 20GiB")]
    Malformed(String),
    #[error("{0:?} has no unit: write e.g. {0}MiB (or {0}B for bytes)")]
    NoUnit(String),
    #[error("unknown unit {unit:?} in {input:?}: use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")]
    UnknownUnit { input: String, unit: String },
    #[error("{0:?} is too large")]
    Overflow(String),
    #[error("{0:?}: a percentage must be a whole number from 1 to 100")]
    Percent(String),
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = (&s[..split], s[split..].trim());
        if number.is_empty() {
            return Err(SizeError::Malformed(s.to_owned()));
        }
        if unit.is_empty() {
            return Err(SizeError::NoUnit(s.to_owned()));
        }
        let multiplier = match unit {
            "B" => 1,
            "KiB" => KIB,
            "MiB" => MIB,
            "GiB" => GIB,
            "TiB" => TIB,
            "KB" | "kB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "TB" => 1000_u64.pow(4),
            _ => {
                return Err(SizeError::UnknownUnit {
                    input: s.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let bytes = scaled(number, multiplier).map_err(|overflow| {
            if overflow {
                SizeError::Overflow(s.to_owned())
            } else {
                SizeError::Malformed(s.to_owned())
            }
        })?;
        Ok(ByteSize(bytes))
    }
}

/// `number × multiplier` with an optional decimal fraction, exact in integers; a result with
/// a fraction of a byte is rounded down. `Err(true)` on overflow, `Err(false)` when malformed.
fn scaled(number: &str, multiplier: u64) -> Result<u64, bool> {
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) if !f.is_empty() && !f.contains('.') && f.len() <= 9 => (w, f),
        Some(_) => return Err(false),
        None => (number, ""),
    };
    // Only digits are left here, so a failed parse of the whole part is an overflow.
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| true)?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or(true)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| false)?;
        let scale = 10_u128.pow(fraction.len() as u32);
        let part = u64::try_from(digits * u128::from(multiplier) / scale).map_err(|_| true)?;
        bytes = bytes.checked_add(part).ok_or(true)?;
    }
    Ok(bytes)
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the value exactly, so it parses back the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if b != 0 && b.is_multiple_of(unit) {
                return write!(f, "{}{name}", b / unit);
            }
        }
        write!(f, "{b}B")
    }
}

impl TryFrom<String> for ByteSize {
    type Error = SizeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> Self {
        b.to_string()
    }
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t == "rest" {
            return Ok(Size::Rest);
        }
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(n @ 1..=100) => Ok(Size::Percent(n)),
                _ => Err(SizeError::Percent(t.to_owned())),
            };
        }
        t.parse().map(Size::Bytes)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Bytes(b) => b.fmt(f),
            Size::Percent(p) => write!(f, "{p}%"),
            Size::Rest => f.write_str("rest"),
        }
    }
}

impl TryFrom<String> for Size {
    type Error = SizeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Size> for String {
    fn from(s: Size) -> Self {
        s.to_string()
    }
}

/// What an agent sees on its block devices (before a teardown, after an apply).
///
/// Built from `lsblk --json` (completed with `blkid -p`, as there is no udev database in the
/// boot initramfs), `mdadm --detail --export` and the LVM JSON reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockTree {
    /// Top-level devices (disks, loop devices, …) with partitions, arrays and LVs below them;
    /// a device stacked on several parents (an MD array) appears under each of them.
    pub devices: Vec<BlockDevice>,
    pub md_arrays: Vec<MdArray>,
    pub physical_volumes: Vec<PhysicalVolume>,
    pub volume_groups: Vec<VolumeGroup>,
    pub logical_volumes: Vec<LogicalVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vda1`, `md0`, `vg0-root`.
    pub name: String,
    pub path: String,
    pub size_bytes: u64,
    /// lsblk's TYPE: `disk`, `part`, `raid1`, `lvm`, `loop`, `rom`, …
    pub kind: String,
    /// Content signature: `ext4`, `xfs`, `vfat`, `swap`, `linux_raid_member`, `LVM2_member`, …
    pub fstype: Option<String>,
    /// Partition table type on a whole device (`gpt`, `dos`).
    pub pttype: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub partlabel: Option<String>,
    pub mountpoint: Option<String>,
    #[serde(default)]
    pub children: Vec<BlockDevice>,
}

impl BlockDevice {
    /// This device and everything below it, depth first, parents before children.
    pub fn walk(&self) -> Vec<&BlockDevice> {
        let mut out = vec![self];
        for child in &self.children {
            out.extend(child.walk());
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdArray {
    /// `/dev/md0`.
    pub path: String,
    /// mdadm's level name: `raid0`, `raid1`, `raid5`, `raid6`, `raid10`, …
    pub level: Option<String>,
    pub raid_devices: Option<u32>,
    pub metadata: Option<String>,
    /// `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`.
    pub uuid: Option<String>,
    /// Superblock name, often `homehost:name`.
    pub name: Option<String>,
    pub members: Vec<MdMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdMember {
    pub path: String,
    /// Slot in the array; `None` for a spare.
    pub role: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalVolume {
    pub path: String,
    /// Volume group, `None` for an orphan PV.
    pub vg: Option<String>,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeGroup {
    pub name: String,
    pub uuid: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub extent_size_bytes: u64,
    pub extent_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalVolume {
    pub vg: String,
    pub name: String,
    pub path: String,
    pub size_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_in_binary_and_decimal_units() {
        let cases = [
            ("512MiB", 512 * MIB),
            ("20GiB", 20 * GIB),
            ("1TiB", TIB),
            ("4096B", 4096),
            ("1.5GiB", 3 * GIB / 2),
            ("500GB", 500_000_000_000),
            ("2 MiB", 2 * MIB),
            ("64KiB", 64 * KIB),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn byte_sizes_refuse_what_an_operator_could_misread() {
        assert_eq!(
            "512".parse::<ByteSize>(),
            Err(SizeError::NoUnit("512".into()))
        );
        assert!(matches!(
            "512M".parse::<ByteSize>(),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "MiB".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "1.2.3GiB".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "99999999999TiB".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!("".parse::<ByteSize>(), Err(SizeError::Empty));
    }

    #[test]
    fn sizes_parse_percent_rest_and_bytes_and_print_back() {
        assert_eq!("rest".parse::<Size>(), Ok(Size::Rest));
        assert_eq!("25%".parse::<Size>(), Ok(Size::Percent(25)));
        assert!(matches!("0%".parse::<Size>(), Err(SizeError::Percent(_))));
        assert!(matches!("101%".parse::<Size>(), Err(SizeError::Percent(_))));
        assert!(matches!("2.5%".parse::<Size>(), Err(SizeError::Percent(_))));
        for text in ["rest", "25%", "512MiB", "3GiB", "1000B", "1536MiB"] {
            let size: Size = text.parse().unwrap();
            assert_eq!(size.to_string(), text);
        }
        assert_eq!(ByteSize(1536 * MIB).to_string(), "1536MiB");
    }

    #[test]
    fn block_tree_walk_visits_parents_first() {
        let leaf = |name: &str, kind: &str| BlockDevice {
            name: name.into(),
            path: format!("/dev/{name}"),
            size_bytes: 1,
            kind: kind.into(),
            fstype: None,
            pttype: None,
            label: None,
            uuid: None,
            partlabel: None,
            mountpoint: None,
            children: vec![],
        };
        let mut part = leaf("vda1", "part");
        part.children.push(leaf("md0", "raid1"));
        let mut disk = leaf("vda", "disk");
        disk.children.push(part);
        disk.children.push(leaf("vda2", "part"));
        let names: Vec<_> = disk.walk().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "vda1", "md0", "vda2"]);
    }
}
