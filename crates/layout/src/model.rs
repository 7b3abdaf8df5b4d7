//! Validated layouts: the wire types of `metalcast_proto::layout` with every reference
//! resolved and every rule that needs no disks checked.

use std::collections::{BTreeSet, HashMap};

use metalcast_proto::Firmware;
use metalcast_proto::layout::{
    BootloaderSpec, DiskSpec, FilesystemSpec, FsType, LayoutFile, PartitionTable, PartitionType,
    Pick, RaidSpec, Size, VgSpec,
};

use serde::Serialize;

use crate::error::{FieldError, LayoutError};
use crate::units::{GIB, KIB, MIB};

/// Smallest ESP we create; FAT32 needs this many clusters at 512-byte sectors.
pub const MIN_ESP: u64 = 32 * MIB;
/// mkfs.xfs refuses smaller filesystems.
pub const MIN_XFS: u64 = 300 * MIB;
pub const DEFAULT_EXTENT: u64 = 4 * MIB;
pub const DEFAULT_CHUNK: u64 = 512 * KIB;
pub const DEFAULT_EFI_ID: &str = "metalcast";
const MAX_NAME: usize = 32;
const MAX_GROUP: u32 = 64;

/// A layout that passed every check that does not need the node's disks.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub description: Option<String>,
    pub stateful: bool,
    pub disks: Vec<DiskRule>,
    pub raids: Vec<Raid>,
    pub vgs: Vec<Vg>,
    pub filesystems: Vec<Filesystem>,
    pub bootloader: Option<Bootloader>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiskRule {
    pub name: String,
    pub filter: DiskFilter,
    pub pick: Option<Pick>,
    /// `Some(n)`: exactly `n` disks of equal size.
    pub count: Option<u32>,
    pub table: PartitionTable,
    pub partitions: Vec<Partition>,
}

impl DiskRule {
    /// How many disks this rule stands for.
    pub fn disk_count(&self) -> usize {
        self.count.unwrap_or(1) as usize
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskFilter {
    pub path: Option<String>,
    pub by_path: Option<String>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub rotational: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub name: String,
    /// GPT partition name; unused on msdos.
    pub label: String,
    pub size: Size,
    pub kind: PartitionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RaidLevel {
    Raid0,
    Raid1,
    Raid5,
    Raid6,
    Raid10,
}

impl RaidLevel {
    pub fn number(self) -> u8 {
        match self {
            Self::Raid0 => 0,
            Self::Raid1 => 1,
            Self::Raid5 => 5,
            Self::Raid6 => 6,
            Self::Raid10 => 10,
        }
    }

    /// mdadm's name, as `mdadm --detail --export` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raid0 => "raid0",
            Self::Raid1 => "raid1",
            Self::Raid5 => "raid5",
            Self::Raid6 => "raid6",
            Self::Raid10 => "raid10",
        }
    }

    /// Fewest members that make a redundant (or, for RAID 0, striped) array. mdadm accepts
    /// a 2-member RAID 10, which is a mirror; we accept it too.
    pub fn min_members(self) -> usize {
        match self {
            Self::Raid0 | Self::Raid1 | Self::Raid10 => 2,
            Self::Raid5 => 3,
            Self::Raid6 => 4,
        }
    }

    pub fn striped(self) -> bool {
        self != Self::Raid1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MdMetadata {
    #[serde(rename = "0.90")]
    V0_90,
    #[serde(rename = "1.0")]
    V1_0,
    #[serde(rename = "1.1")]
    V1_1,
    #[serde(rename = "1.2")]
    V1_2,
}

impl MdMetadata {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_90 => "0.90",
            Self::V1_0 => "1.0",
            Self::V1_1 => "1.1",
            Self::V1_2 => "1.2",
        }
    }

    /// 0.90 and 1.0 keep the superblock at the end and the data at offset 0.
    pub fn at_end(self) -> bool {
        matches!(self, Self::V0_90 | Self::V1_0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Raid {
    pub name: String,
    pub level: RaidLevel,
    pub members: Vec<Ref>,
    pub metadata: MdMetadata,
    /// Chunk size in bytes (striped levels; ignored for RAID 1).
    pub chunk: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vg {
    pub name: String,
    pub pvs: Vec<Ref>,
    pub extent_size: u64,
    pub lvs: Vec<Lv>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lv {
    pub name: String,
    pub size: Size,
}

/// A resolved reference to something that holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// A whole disk (every disk of the rule).
    Disk(usize),
    /// A partition (on every disk of the rule).
    Partition {
        disk: usize,
        part: usize,
    },
    Raid(usize),
    Lv {
        vg: usize,
        lv: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filesystem {
    pub device: Ref,
    pub kind: FsType,
    pub mount: Option<String>,
    pub label: Option<String>,
    /// Normalized: lowercase UUID, or uppercase `XXXX-XXXX` for vfat.
    pub uuid: Option<String>,
    pub options: Vec<String>,
    pub mkfs_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bootloader {
    pub firmware: Vec<Firmware>,
    /// Disk rules that receive the boot loader.
    pub disks: Vec<usize>,
    pub efi_id: String,
}

impl Layout {
    /// Parse and validate a layout file.
    pub fn from_toml(text: &str) -> Result<Self, LayoutError> {
        let file: LayoutFile =
            toml::from_str(text).map_err(|e| LayoutError::Parse(e.to_string()))?;
        Self::try_from(file)
    }

    /// How an operator writes the reference: `sys.root`, `md0`, `vg0/root`.
    pub fn ref_name(&self, r: Ref) -> String {
        match r {
            Ref::Disk(d) => self.disks[d].name.clone(),
            Ref::Partition { disk, part } => format!(
                "{}.{}",
                self.disks[disk].name, self.disks[disk].partitions[part].name
            ),
            Ref::Raid(i) => self.raids[i].name.clone(),
            Ref::Lv { vg, lv } => format!("{}/{}", self.vgs[vg].name, self.vgs[vg].lvs[lv].name),
        }
    }

    /// How many block devices a reference stands for (a rule with `count` has several disks).
    pub fn multiplicity(&self, r: Ref) -> usize {
        match r {
            Ref::Disk(d) | Ref::Partition { disk: d, .. } => self.disks[d].disk_count(),
            Ref::Raid(_) | Ref::Lv { .. } => 1,
        }
    }

    /// Disk rules whose disks hold (part of) the reference.
    pub fn disks_under(&self, r: Ref) -> BTreeSet<usize> {
        match r {
            Ref::Disk(d) | Ref::Partition { disk: d, .. } => BTreeSet::from([d]),
            Ref::Raid(i) => self.raids[i]
                .members
                .iter()
                .flat_map(|&m| self.disks_under(m))
                .collect(),
            Ref::Lv { vg, .. } => self.vgs[vg]
                .pvs
                .iter()
                .flat_map(|&p| self.disks_under(p))
                .collect(),
        }
    }

    /// Mount point of copy `copy` of a filesystem: copies of a mirrored ESP get `/boot/efi2`,
    /// `/boot/efi3`, …
    pub fn copy_mount(base: &str, copy: usize) -> String {
        if copy == 0 {
            base.to_owned()
        } else {
            format!("{base}{}", copy + 1)
        }
    }
}

impl TryFrom<LayoutFile> for Layout {
    type Error = LayoutError;

    fn try_from(file: LayoutFile) -> Result<Self, Self::Error> {
        let mut v = Validator::default();
        let layout = v.layout(file);
        if v.errors.is_empty() {
            Ok(layout)
        } else {
            Err(LayoutError::Invalid(v.errors))
        }
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

/// Where each name is defined, for references.
#[derive(Default)]
struct Names {
    disks: HashMap<String, usize>,
    raids: HashMap<String, usize>,
    vgs: HashMap<String, usize>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn layout(&mut self, file: LayoutFile) -> Layout {
        let mut names = Names::default();
        let disks: Vec<DiskRule> = file
            .disks
            .into_iter()
            .enumerate()
            .map(|(i, d)| self.disk_rule(i, d, &mut names))
            .collect();
        let raid_specs = file.raid;
        for (i, r) in raid_specs.iter().enumerate() {
            let field = format!("raid[{i}].name");
            self.name(&field, &r.name);
            if names.disks.contains_key(&r.name) {
                self.err(field, format!("{:?} is already a disk rule's name", r.name));
            } else if names.raids.insert(r.name.clone(), i).is_some() {
                self.err(field, format!("{:?} is defined twice", r.name));
            }
        }
        for (i, g) in file.vg.iter().enumerate() {
            let field = format!("vg[{i}].name");
            self.name(&field, &g.name);
            if names.vgs.insert(g.name.clone(), i).is_some() {
                self.err(field, format!("{:?} is defined twice", g.name));
            }
        }
        let mut layout = Layout {
            description: file.description,
            stateful: file.stateful,
            disks,
            raids: Vec::new(),
            vgs: Vec::new(),
            filesystems: Vec::new(),
            bootloader: None,
        };
        // Volume groups get their LVs before references are resolved; their PVs, which may
        // be arrays, only after the arrays.
        layout.vgs = file
            .vg
            .iter()
            .enumerate()
            .map(|(i, g)| self.vg_shell(i, g))
            .collect();
        layout.raids = raid_specs
            .iter()
            .enumerate()
            .map(|(i, r)| self.raid(i, r, &layout, &names))
            .collect();
        let pvs: Vec<Vec<Ref>> = file
            .vg
            .iter()
            .enumerate()
            .map(|(i, g)| self.pvs(i, g, &layout, &names))
            .collect();
        for (vg, pvs) in layout.vgs.iter_mut().zip(pvs) {
            vg.pvs = pvs;
        }
        layout.filesystems = file
            .filesystems
            .into_iter()
            .enumerate()
            .filter_map(|(i, f)| self.filesystem(i, f, &layout, &names))
            .collect();
        self.usage(&layout);
        self.mounts(&layout);
        layout.bootloader = self.bootloader(file.bootloader, &layout, &names);
        layout
    }

    fn name(&mut self, field: &str, name: &str) {
        let ok = name.len() <= MAX_NAME
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            self.err(
                field,
                format!(
                    "{name:?} is not a valid name: 1–{MAX_NAME} characters of A–Z, a–z, 0–9, \
                     '_' and '-', starting with a letter or digit"
                ),
            );
        }
    }

    fn disk_rule(&mut self, i: usize, d: DiskSpec, names: &mut Names) -> DiskRule {
        let at = format!("disk[{i}]");
        self.name(&format!("{at}.name"), &d.name);
        if names.disks.insert(d.name.clone(), i).is_some() {
            self.err(
                format!("{at}.name"),
                format!("{:?} is defined twice", d.name),
            );
        }
        if let Some(p) = &d.path
            && !p.starts_with("/dev/")
        {
            self.err(
                format!("{at}.path"),
                format!("{p:?} is not a device path under /dev/"),
            );
        }
        if d.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            self.err(format!("{at}.model"), "an empty pattern matches nothing");
        }
        if let (Some(min), Some(max)) = (d.min_size, d.max_size)
            && min > max
        {
            self.err(
                format!("{at}.min_size"),
                format!("{min} is larger than max_size {max}"),
            );
        }
        if let Some(n) = d.count {
            if n == 0 || n > MAX_GROUP {
                self.err(
                    format!("{at}.count"),
                    format!("{n} is outside 1..={MAX_GROUP}"),
                );
            } else if n > 1 && (d.path.is_some() || d.serial.is_some() || d.by_path.is_some()) {
                self.err(
                    format!("{at}.count"),
                    format!("count = {n} with path, by_path or serial, which select one disk"),
                );
            }
        }
        if d.partitions.is_empty() && d.table.is_some() {
            self.err(
                format!("{at}.table"),
                "a partition table needs at least one [[disk.partition]]",
            );
        }
        let table = d.table.unwrap_or(PartitionTable::Gpt);
        let partitions = self.partitions(&at, table, &d);
        DiskRule {
            name: d.name,
            filter: DiskFilter {
                path: d.path,
                by_path: d.by_path,
                serial: d.serial,
                model: d.model,
                min_size: d.min_size.map(|b| b.0),
                max_size: d.max_size.map(|b| b.0),
                rotational: d.rotational,
            },
            pick: d.pick,
            count: d.count,
            table,
            partitions,
        }
    }

    fn partitions(&mut self, at: &str, table: PartitionTable, d: &DiskSpec) -> Vec<Partition> {
        if table == PartitionTable::Msdos && d.partitions.len() > 4 {
            self.err(
                format!("{at}.partition"),
                format!(
                    "{} partitions on an msdos table; it holds 4 primary partitions \
                     (use a GPT)",
                    d.partitions.len()
                ),
            );
        }
        if d.partitions.len() > 128 {
            self.err(
                format!("{at}.partition"),
                "a GPT holds at most 128 partitions",
            );
        }
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (j, p) in d.partitions.iter().enumerate() {
            let pat = format!("{at}.partition[{j}]");
            self.name(&format!("{pat}.name"), &p.name);
            if seen.insert(p.name.clone(), j).is_some() {
                self.err(
                    format!("{pat}.name"),
                    format!("{:?} is defined twice on disk {}", p.name, d.name),
                );
            }
            let label = p.label.clone().unwrap_or_else(|| p.name.clone());
            if table == PartitionTable::Msdos && p.label.is_some() {
                self.err(
                    format!("{pat}.label"),
                    "msdos partitions have no names; use a GPT for labels",
                );
            } else if label.encode_utf16().count() > 36
                || label
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                self.err(
                    format!("{pat}.label"),
                    format!(
                        "{label:?}: a GPT partition name has at most 36 characters and no \
                         quotes, backslashes or control characters"
                    ),
                );
            }
            if p.kind == PartitionType::BiosBoot && table == PartitionTable::Msdos {
                self.err(
                    format!("{pat}.type"),
                    "bios_boot is for GPT disks; on msdos GRUB uses the gap before the \
                     first partition",
                );
            }
            if let Size::Bytes(b) = p.size {
                if b.0 == 0 {
                    self.err(format!("{pat}.size"), "a partition cannot be empty");
                } else if p.kind == PartitionType::Esp && b.0 < MIN_ESP {
                    self.err(
                        format!("{pat}.size"),
                        format!("an ESP needs at least 32MiB (512MiB is usual), got {b}"),
                    );
                }
            }
            out.push(Partition {
                name: p.name.clone(),
                label,
                size: p.size,
                kind: p.kind,
            });
        }
        for (kind, what) in [
            (PartitionType::Esp, "esp"),
            (PartitionType::BiosBoot, "bios_boot"),
        ] {
            if out.iter().filter(|p| p.kind == kind).count() > 1 {
                self.err(
                    format!("{at}.partition"),
                    format!("more than one {what} partition on disk {}", d.name),
                );
            }
        }
        let sizes: Vec<Size> = out.iter().map(|p| p.size).collect();
        self.container_sizes(&format!("{at}.partition"), &sizes);
        out
    }

    /// `rest` at most once, percentages at most 100 in total.
    fn container_sizes(&mut self, at: &str, sizes: &[Size]) {
        let rests: Vec<usize> = (0..sizes.len())
            .filter(|&j| sizes[j] == Size::Rest)
            .collect();
        if let [_, second, ..] = rests[..] {
            self.err(
                format!("{at}[{second}].size"),
                format!(
                    "rest is used more than once in one container (also {at}[{}])",
                    rests[0]
                ),
            );
        }
        let percent: u32 = sizes
            .iter()
            .map(|s| match s {
                Size::Percent(p) => u32::from(*p),
                _ => 0,
            })
            .sum();
        if percent > 100 {
            self.err(
                at.to_owned(),
                format!("percentages add up to {percent}%, more than 100%"),
            );
        }
    }

    fn vg_shell(&mut self, i: usize, g: &VgSpec) -> Vg {
        let at = format!("vg[{i}]");
        let extent_size = g.extent_size.map_or(DEFAULT_EXTENT, |b| b.0);
        if !extent_size.is_power_of_two() || !(MIB..=16 * GIB).contains(&extent_size) {
            self.err(
                format!("{at}.extent_size"),
                format!(
                    "{}: a physical extent is a power of two from 1MiB to 16GiB",
                    metalcast_proto::layout::ByteSize(extent_size)
                ),
            );
        }
        let mut seen = HashMap::new();
        let mut lvs = Vec::new();
        for (j, lv) in g.lvs.iter().enumerate() {
            let field = format!("{at}.lv[{j}].name");
            self.name(&field, &lv.name);
            if RESERVED_LV.iter().any(|r| lv.name.contains(r))
                || lv.name == "snapshot"
                || lv.name == "pvmove"
            {
                self.err(field.clone(), format!("{:?} is reserved by LVM", lv.name));
            }
            if seen.insert(lv.name.clone(), j).is_some() {
                self.err(
                    field,
                    format!("{:?} is defined twice in vg {}", lv.name, g.name),
                );
            }
            if lv.size == Size::Bytes(metalcast_proto::layout::ByteSize(0)) {
                self.err(
                    format!("{at}.lv[{j}].size"),
                    "a logical volume cannot be empty",
                );
            }
            lvs.push(Lv {
                name: lv.name.clone(),
                size: lv.size,
            });
        }
        let sizes: Vec<Size> = lvs.iter().map(|l| l.size).collect();
        self.container_sizes(&format!("{at}.lv"), &sizes);
        Vg {
            name: g.name.clone(),
            pvs: Vec::new(),
            extent_size,
            lvs,
        }
    }

    /// Resolve `disk`, `disk.part`, `raid` or `vg/lv`.
    fn resolve(&mut self, field: &str, text: &str, layout: &Layout, names: &Names) -> Option<Ref> {
        let found = if let Some((vg, lv)) = text.split_once('/') {
            match names.vgs.get(vg) {
                None => Err(format!("{text:?}: no vg named {vg:?}")),
                Some(&v) => layout.vgs[v]
                    .lvs
                    .iter()
                    .position(|l| l.name == lv)
                    .map(|l| Ref::Lv { vg: v, lv: l })
                    .ok_or_else(|| {
                        format!(
                            "{text:?}: vg {vg} has no lv {lv:?} (it has {})",
                            list(layout.vgs[v].lvs.iter().map(|l| l.name.as_str()))
                        )
                    }),
            }
        } else if let Some((disk, part)) = text.split_once('.') {
            match names.disks.get(disk) {
                None => Err(format!("{text:?}: no disk rule named {disk:?}")),
                Some(&d) => layout.disks[d]
                    .partitions
                    .iter()
                    .position(|p| p.name == part)
                    .map(|p| Ref::Partition { disk: d, part: p })
                    .ok_or_else(|| {
                        format!(
                            "{text:?}: disk {disk} has no partition {part:?} (it has {})",
                            list(layout.disks[d].partitions.iter().map(|p| p.name.as_str()))
                        )
                    }),
            }
        } else if let Some(&d) = names.disks.get(text) {
            Ok(Ref::Disk(d))
        } else if let Some(&r) = names.raids.get(text) {
            Ok(Ref::Raid(r))
        } else {
            Err(format!(
                "{text:?} names no disk rule or raid (write disk.partition for a partition, \
                 vg/lv for a logical volume)"
            ))
        };
        match found {
            Ok(r) => Some(r),
            Err(message) => {
                self.err(field, message);
                None
            }
        }
    }

    fn raid(&mut self, i: usize, r: &RaidSpec, layout: &Layout, names: &Names) -> Raid {
        let at = format!("raid[{i}]");
        let level = match r.level {
            0 => RaidLevel::Raid0,
            1 => RaidLevel::Raid1,
            5 => RaidLevel::Raid5,
            6 => RaidLevel::Raid6,
            10 => RaidLevel::Raid10,
            n => {
                self.err(
                    format!("{at}.level"),
                    format!("{n} is not a supported level: use 0, 1, 5, 6 or 10"),
                );
                RaidLevel::Raid1
            }
        };
        let metadata = match r.metadata.as_deref().unwrap_or("1.2") {
            "1.2" => MdMetadata::V1_2,
            "1.1" => MdMetadata::V1_1,
            "1.0" => MdMetadata::V1_0,
            "0.90" => MdMetadata::V0_90,
            other => {
                self.err(
                    format!("{at}.metadata"),
                    format!("{other:?}: use \"1.2\", \"1.1\", \"1.0\" or \"0.90\""),
                );
                MdMetadata::V1_2
            }
        };
        let chunk = match r.chunk {
            Some(c) if !level.striped() => {
                self.err(
                    format!("{at}.chunk"),
                    format!("raid1 mirrors whole devices and has no chunk size (got {c})"),
                );
                DEFAULT_CHUNK
            }
            Some(c) if !c.0.is_power_of_two() || c.0 < 4 * KIB => {
                self.err(
                    format!("{at}.chunk"),
                    format!("{c}: a chunk is a power of two of at least 4KiB"),
                );
                DEFAULT_CHUNK
            }
            Some(c) => c.0,
            None => DEFAULT_CHUNK,
        };
        let mut members = Vec::new();
        for (k, text) in r.members.iter().enumerate() {
            let field = format!("{at}.members[{k}]");
            let Some(m) = self.resolve(&field, text, layout, names) else {
                continue;
            };
            match m {
                Ref::Partition { disk, part }
                    if layout.disks[disk].partitions[part].kind != PartitionType::Raid =>
                {
                    self.err(
                        field,
                        format!(
                            "{text} is a {} partition; RAID members have type = \"raid\"",
                            layout.disks[disk].partitions[part].kind
                        ),
                    );
                }
                Ref::Disk(d) if !layout.disks[d].partitions.is_empty() => self.err(
                    field,
                    format!("disk {text} is partitioned; name one of its partitions"),
                ),
                Ref::Raid(_) | Ref::Lv { .. } => self.err(
                    field,
                    format!("{text}: RAID members are partitions or whole disks"),
                ),
                _ => members.push(m),
            }
        }
        let count: usize = members.iter().map(|&m| layout.multiplicity(m)).sum();
        let all_resolved = members.len() == r.members.len();
        if all_resolved && count < level.min_members() {
            self.err(
                format!("{at}.members"),
                format!(
                    "{} needs at least {} members, got {count}",
                    level.name(),
                    level.min_members()
                ),
            );
        }
        Raid {
            name: r.name.clone(),
            level,
            members,
            metadata,
            chunk,
        }
    }

    fn pvs(&mut self, i: usize, g: &VgSpec, layout: &Layout, names: &Names) -> Vec<Ref> {
        let at = format!("vg[{i}]");
        if g.pvs.is_empty() {
            self.err(format!("{at}.pvs"), "a volume group needs at least one pv");
        }
        let mut out = Vec::new();
        for (k, text) in g.pvs.iter().enumerate() {
            let field = format!("{at}.pvs[{k}]");
            let Some(r) = self.resolve(&field, text, layout, names) else {
                continue;
            };
            match r {
                Ref::Partition { disk, part }
                    if layout.disks[disk].partitions[part].kind != PartitionType::Lvm =>
                {
                    self.err(
                        field,
                        format!(
                            "{text} is a {} partition; physical volumes have type = \"lvm\"",
                            layout.disks[disk].partitions[part].kind
                        ),
                    );
                }
                Ref::Disk(d) if !layout.disks[d].partitions.is_empty() => self.err(
                    field,
                    format!("disk {text} is partitioned; name one of its partitions"),
                ),
                Ref::Lv { .. } => self.err(field, format!("{text}: an LV cannot be a PV here")),
                _ => out.push(r),
            }
        }
        out
    }

    fn filesystem(
        &mut self,
        i: usize,
        f: FilesystemSpec,
        layout: &Layout,
        names: &Names,
    ) -> Option<Filesystem> {
        let at = format!("filesystem[{i}]");
        let device = self.resolve(&format!("{at}.device"), &f.device, layout, names)?;
        let copies = layout.multiplicity(device);
        let partition = match device {
            Ref::Partition { disk, part } => Some(layout.disks[disk].partitions[part].kind),
            _ => None,
        };
        if let Ref::Disk(d) = device
            && !layout.disks[d].partitions.is_empty()
        {
            self.err(
                format!("{at}.device"),
                format!(
                    "disk {} is partitioned; name one of its partitions",
                    f.device
                ),
            );
        }
        match (partition, f.kind) {
            (Some(PartitionType::Esp), FsType::Vfat)
            | (Some(PartitionType::Swap), FsType::Swap)
            | (Some(PartitionType::Linux), _)
            | (None, _) => {}
            (Some(PartitionType::Esp), _) => self.err(
                format!("{at}.type"),
                format!("{} is an ESP, which firmware reads as vfat", f.device),
            ),
            (Some(PartitionType::Swap), _) => self.err(
                format!("{at}.type"),
                format!("{} is a swap partition", f.device),
            ),
            (Some(kind), _) => self.err(
                format!("{at}.device"),
                format!(
                    "{} is a {kind} partition, which holds no filesystem",
                    f.device
                ),
            ),
        }
        if copies > 1 && partition != Some(PartitionType::Esp) {
            self.err(
                format!("{at}.device"),
                format!(
                    "{} stands for {copies} disks; only an ESP may be placed on every disk \
                     of a rule (mirrored ESPs) — put other filesystems on a raid",
                    f.device
                ),
            );
        }
        let mount = match f.mount {
            Some(m) if f.kind == FsType::Swap => {
                self.err(
                    format!("{at}.mount"),
                    format!("swap is not mounted (got {m:?}); leave mount out"),
                );
                None
            }
            Some(m) => {
                if !valid_mount(&m) {
                    self.err(
                        format!("{at}.mount"),
                        format!(
                            "{m:?} is not a clean absolute path (no spaces, no '.' or '..', \
                             no trailing '/')"
                        ),
                    );
                }
                Some(m)
            }
            None => None,
        };
        if partition == Some(PartitionType::Esp) && mount.is_none() {
            self.err(
                format!("{at}.mount"),
                "an ESP must be mounted (usually at /boot/efi) so GRUB can be installed into it",
            );
        }
        if let Some(label) = &f.label
            && let Err(why) = check_label(f.kind, label)
        {
            self.err(format!("{at}.label"), why);
        }
        let uuid = match f.uuid {
            Some(_) if copies > 1 => {
                self.err(
                    format!("{at}.uuid"),
                    format!("{} stands for {copies} filesystems, which cannot share one UUID; leave uuid out", f.device),
                );
                None
            }
            Some(u) => match normalize_uuid(f.kind, &u) {
                Ok(u) => Some(u),
                Err(why) => {
                    self.err(format!("{at}.uuid"), why);
                    None
                }
            },
            None => None,
        };
        for (k, o) in f.options.iter().enumerate() {
            if o.is_empty()
                || o.contains(',')
                || o.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                self.err(
                    format!("{at}.options[{k}]"),
                    format!("{o:?}: one option per entry, without spaces or commas"),
                );
            }
        }
        for (k, o) in f.mkfs_options.iter().enumerate() {
            if o.is_empty() {
                self.err(format!("{at}.mkfs_options[{k}]"), "empty argument");
            }
        }
        Some(Filesystem {
            device,
            kind: f.kind,
            mount,
            label: f.label,
            uuid,
            options: f.options,
            mkfs_options: f.mkfs_options,
        })
    }

    /// Every device is used once; partitions whose type promises a use have it.
    fn usage(&mut self, layout: &Layout) {
        let mut users: HashMap<Ref, String> = HashMap::new();
        let mut claim = |v: &mut Self, r: Ref, by: String| {
            if let Some(first) = users.get(&r) {
                v.err(
                    by.clone(),
                    format!("{} is already used by {first}", layout.ref_name(r)),
                );
            } else {
                users.insert(r, by);
            }
        };
        for (i, raid) in layout.raids.iter().enumerate() {
            for &m in &raid.members {
                claim(self, m, format!("raid[{i}].members"));
            }
        }
        for (i, vg) in layout.vgs.iter().enumerate() {
            for &p in &vg.pvs {
                claim(self, p, format!("vg[{i}].pvs"));
            }
        }
        for (i, fs) in layout.filesystems.iter().enumerate() {
            claim(self, fs.device, format!("filesystem[{i}].device"));
        }
        for (d, disk) in layout.disks.iter().enumerate() {
            for (p, part) in disk.partitions.iter().enumerate() {
                let used = users.contains_key(&Ref::Partition { disk: d, part: p });
                let field = format!("disk[{d}].partition[{p}].type");
                let what = match part.kind {
                    PartitionType::Raid => "is not a member of any raid",
                    PartitionType::Lvm => "is not a pv of any vg",
                    PartitionType::Esp => "has no vfat filesystem",
                    PartitionType::Swap => "has no swap filesystem",
                    PartitionType::Linux | PartitionType::BiosBoot => continue,
                };
                if !used {
                    self.err(field, format!("{}.{} {what}", disk.name, part.name));
                }
            }
        }
        for (d, disk) in layout.disks.iter().enumerate() {
            for (p, part) in disk.partitions.iter().enumerate() {
                if part.kind == PartitionType::BiosBoot
                    && users.contains_key(&Ref::Partition { disk: d, part: p })
                {
                    self.err(
                        format!("disk[{d}].partition[{p}].type"),
                        format!(
                            "{}.{} is GRUB's bios_boot area and holds nothing else",
                            disk.name, part.name
                        ),
                    );
                }
            }
        }
    }

    fn mounts(&mut self, layout: &Layout) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, fs) in layout.filesystems.iter().enumerate() {
            let Some(base) = &fs.mount else { continue };
            for copy in 0..layout.multiplicity(fs.device) {
                let mount = Layout::copy_mount(base, copy);
                if let Some(first) = seen.insert(mount.clone(), i) {
                    self.err(
                        format!("filesystem[{i}].mount"),
                        format!("{mount} is also the mount point of filesystem[{first}]"),
                    );
                }
            }
        }
        let root = seen.contains_key("/");
        if layout.stateful && !root {
            self.err(
                "filesystem",
                "a stateful layout needs a filesystem mounted at /",
            );
        }
        if !layout.stateful && root {
            self.err(
                format!("filesystem[{}].mount", seen["/"]),
                "a stateless node runs from RAM; its layout may not mount /",
            );
        }
    }

    fn bootloader(
        &mut self,
        spec: Option<BootloaderSpec>,
        layout: &Layout,
        names: &Names,
    ) -> Option<Bootloader> {
        let boot_parts = |kind: PartitionType| {
            layout.disks.iter().enumerate().flat_map(move |(d, disk)| {
                disk.partitions
                    .iter()
                    .enumerate()
                    .filter(move |(_, p)| p.kind == kind)
                    .map(move |(p, _)| (d, p))
            })
        };
        let Some(spec) = spec else {
            if layout.stateful {
                self.err(
                    "bootloader",
                    "a stateful layout needs a [bootloader] section saying how the node boots",
                );
            }
            for (d, p) in boot_parts(PartitionType::Esp).chain(boot_parts(PartitionType::BiosBoot))
            {
                self.err(
                    format!("disk[{d}].partition[{p}].type"),
                    "a boot partition on a layout without [bootloader]",
                );
            }
            return None;
        };
        if !layout.stateful {
            self.err(
                "bootloader",
                "a stateless node boots from the network; its layout has no boot loader",
            );
        }
        let mut firmware = Vec::new();
        for fw in &spec.firmware {
            if !firmware.contains(fw) {
                firmware.push(*fw);
            }
        }
        if firmware.is_empty() {
            self.err(
                "bootloader.firmware",
                "name the firmware this layout boots under: [\"bios\"], [\"uefi\"] or both",
            );
        }
        let bios = firmware.contains(&Firmware::Bios);
        let uefi = firmware.contains(&Firmware::Uefi);
        if !firmware.is_empty() {
            if !uefi {
                for (d, p) in boot_parts(PartitionType::Esp) {
                    self.err(
                        format!("disk[{d}].partition[{p}].type"),
                        "esp on a layout that boots under bios only (bootloader.firmware)",
                    );
                }
            }
            if !bios {
                for (d, p) in boot_parts(PartitionType::BiosBoot) {
                    self.err(
                        format!("disk[{d}].partition[{p}].type"),
                        "bios_boot on a layout that boots under uefi only (bootloader.firmware)",
                    );
                }
            }
        }
        let efi_id = spec.efi_id.unwrap_or_else(|| DEFAULT_EFI_ID.to_owned());
        self.name("bootloader.efi_id", &efi_id);
        let explicit = spec.disks.is_some();
        let disks: Vec<usize> = match spec.disks {
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(k, name)| match names.disks.get(name) {
                    Some(&d) => Some(d),
                    None => {
                        self.err(
                            format!("bootloader.disks[{k}]"),
                            format!("{name:?} names no disk rule"),
                        );
                        None
                    }
                })
                .collect(),
            None => (0..layout.disks.len())
                .filter(|&d| {
                    layout.disks[d]
                        .partitions
                        .iter()
                        .any(|p| matches!(p.kind, PartitionType::Esp | PartitionType::BiosBoot))
                })
                .collect(),
        };
        if disks.is_empty() && !firmware.is_empty() {
            self.err(
                "bootloader.disks",
                "no disk receives the boot loader: add an esp or bios_boot partition, or list \
                 disk rules here",
            );
        }
        for &d in &disks {
            let disk = &layout.disks[d];
            let has = |kind| disk.partitions.iter().any(|p| p.kind == kind);
            let field = if explicit {
                "bootloader.disks".to_owned()
            } else {
                format!("disk[{d}]")
            };
            if disk.partitions.is_empty() {
                self.err(field, format!("boot disk {} has no partitions", disk.name));
                continue;
            }
            if bios && disk.table == PartitionTable::Gpt && !has(PartitionType::BiosBoot) {
                self.err(
                    field.clone(),
                    format!(
                        "boot disk {} has a GPT but no bios_boot partition, which GRUB needs \
                         under bios",
                        disk.name
                    ),
                );
            }
            if uefi && !has(PartitionType::Esp) {
                self.err(
                    field,
                    format!(
                        "boot disk {} has no esp partition, which uefi needs",
                        disk.name
                    ),
                );
            }
        }
        // A /boot (or /) spread over several disks must stay bootable when one of them
        // fails, so each of those disks carries the boot loader (a mirrored ESP under UEFI).
        let boot_fs = layout
            .filesystems
            .iter()
            .find(|f| f.mount.as_deref() == Some("/boot"))
            .or_else(|| {
                layout
                    .filesystems
                    .iter()
                    .find(|f| f.mount.as_deref() == Some("/"))
            });
        if let Some(fs) = boot_fs
            && !firmware.is_empty()
        {
            let under = layout.disks_under(fs.device);
            let spread = under
                .iter()
                .map(|&d| layout.disks[d].disk_count())
                .sum::<usize>()
                > 1;
            if spread {
                for &d in &under {
                    if !disks.contains(&d) {
                        let field = if explicit {
                            "bootloader.disks".to_owned()
                        } else {
                            format!("disk[{d}]")
                        };
                        self.err(
                            field,
                            format!(
                                "{} lies on {}, which spans disk {}; every such disk needs the \
                                 boot loader ({}) so the node boots when a disk fails",
                                fs.mount.as_deref().unwrap_or("/"),
                                layout.ref_name(fs.device),
                                layout.disks[d].name,
                                match (bios, uefi) {
                                    (true, true) => "an esp and a bios_boot partition",
                                    (false, true) => "an esp partition",
                                    _ => "a bios_boot partition on GPT",
                                }
                            ),
                        );
                    }
                }
            }
        }
        Some(Bootloader {
            firmware,
            disks,
            efi_id,
        })
    }
}

/// LVM reserves these substrings for its internal volumes.
const RESERVED_LV: [&str; 13] = [
    "_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta", "_tdata",
    "_tmeta", "_vorigin", "_vdata", "_cpool",
];

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

fn valid_mount(m: &str) -> bool {
    if m == "/" {
        return true;
    }
    m.starts_with('/')
        && !m.ends_with('/')
        && !m.chars().any(|c| c.is_whitespace() || c.is_control())
        && m[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn check_label(kind: FsType, label: &str) -> Result<(), String> {
    let max = match kind {
        FsType::Ext4 | FsType::Swap => 16,
        FsType::Xfs => 12,
        FsType::Vfat => 11,
    };
    if label.is_empty() {
        return Err("an empty label; leave label out instead".into());
    }
    if label.len() > max {
        return Err(format!(
            "{label:?} is {} bytes; a {kind} label has at most {max}",
            label.len()
        ));
    }
    if !label.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(format!("{label:?}: labels are printable ASCII"));
    }
    if kind == FsType::Vfat && label.chars().any(|c| "\"*+,./:;<=>?[\\]|".contains(c)) {
        return Err(format!(
            "{label:?}: FAT labels cannot contain \"*+,./:;<=>?[\\]|"
        ));
    }
    Ok(())
}

fn normalize_uuid(kind: FsType, uuid: &str) -> Result<String, String> {
    let is_hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    if kind == FsType::Vfat {
        return match uuid.split_once('-') {
            Some((a, b)) if is_hex(a, 4) && is_hex(b, 4) => Ok(uuid.to_uppercase()),
            _ => Err(format!(
                "{uuid:?}: a vfat volume ID is written XXXX-XXXX (8 hex digits)"
            )),
        };
    }
    let parts: Vec<&str> = uuid.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if parts.len() == 5 && parts.iter().zip(lens).all(|(p, n)| is_hex(p, n)) {
        Ok(uuid.to_lowercase())
    } else {
        Err(format!(
            "{uuid:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid one-disk UEFI layout; tests splice in their mistake.
    use crate::fixtures::ONE_DISK_UEFI as BASE;

    /// The layout's errors as `field: message` lines.
    fn errors(text: &str) -> Vec<String> {
        match Layout::from_toml(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    fn assert_error(text: &str, field: &str, words: &str) {
        let errors = errors(text);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{field}: ")) && e.contains(words)),
            "expected `{field}: …{words}…`, got {errors:#?}"
        );
    }

    #[test]
    fn the_base_layout_is_valid() {
        let layout = Layout::from_toml(BASE).unwrap();
        assert_eq!(layout.disks[0].partitions.len(), 2);
        assert_eq!(layout.bootloader.unwrap().disks, [0]);
    }

    #[test]
    fn syntax_errors_name_the_key() {
        let e = Layout::from_toml(&format!("{BASE}\n[extra]\n")).unwrap_err();
        assert!(
            matches!(e, LayoutError::Parse(ref m) if m.contains("extra")),
            "{e}"
        );
        let e = Layout::from_toml(&BASE.replace("\"512MiB\"", "\"512M\"")).unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
        let e =
            Layout::from_toml(&BASE.replace("type = \"linux\"", "type = \"ntfs\"")).unwrap_err();
        assert!(e.to_string().contains("ntfs"), "{e}");
        let e =
            Layout::from_toml(&BASE.replace("mount = \"/\"", "mountpoint = \"/\"")).unwrap_err();
        assert!(e.to_string().contains("mountpoint"), "{e}");
    }

    #[test]
    fn rest_twice_on_one_disk() {
        let text = BASE.replace("size = \"512MiB\"", "size = \"rest\"");
        assert_error(
            &text,
            "disk[0].partition[1].size",
            "rest is used more than once",
        );
    }

    #[test]
    fn rest_twice_in_one_vg() {
        let text = format!(
            "{}\n[[vg]]\nname = \"vg0\"\npvs = [\"os.pv\"]\n[[vg.lv]]\nname = \"a\"\nsize = \"rest\"\n\
             [[vg.lv]]\nname = \"b\"\nsize = \"rest\"\n",
            BASE.replace(
                "[[filesystem]]\ndevice = \"os.esp\"",
                "[[disk.partition]]\nname = \"pv\"\nsize = \"1GiB\"\ntype = \"lvm\"\n\n\
                 [[filesystem]]\ndevice = \"os.esp\""
            )
        );
        assert_error(&text, "vg[0].lv[1].size", "rest is used more than once");
    }

    #[test]
    fn percentages_over_100() {
        let text = BASE
            .replace("size = \"512MiB\"", "size = \"60%\"")
            .replace("size = \"rest\"", "size = \"50%\"");
        assert_error(&text, "disk[0].partition", "110%");
    }

    #[test]
    fn duplicate_mount_points() {
        let text = BASE.replace("mount = \"/boot/efi\"", "mount = \"/\"");
        assert_error(
            &text,
            "filesystem[1].mount",
            "/ is also the mount point of filesystem[0]",
        );
    }

    #[test]
    fn missing_root() {
        let text = BASE.replace("mount = \"/\"", "mount = \"/srv\"");
        assert_error(&text, "filesystem", "needs a filesystem mounted at /");
    }

    #[test]
    fn esp_under_bios_only_and_bios_boot_under_uefi_only() {
        let text = BASE.replace("firmware = [\"uefi\"]", "firmware = [\"bios\"]");
        assert_error(
            &text,
            "disk[0].partition[0].type",
            "esp on a layout that boots under bios only",
        );
        let text = BASE.replace(
            "[[disk.partition]]\nname = \"root\"",
            "[[disk.partition]]\nname = \"grub\"\nsize = \"1MiB\"\ntype = \"bios_boot\"\n\n\
             [[disk.partition]]\nname = \"root\"",
        );
        assert_error(
            &text,
            "disk[0].partition[1].type",
            "bios_boot on a layout that boots under uefi only",
        );
    }

    #[test]
    fn bios_on_gpt_needs_bios_boot() {
        let text = BASE.replace("firmware = [\"uefi\"]", "firmware = [\"bios\", \"uefi\"]");
        assert_error(&text, "disk[0]", "no bios_boot partition");
    }

    #[test]
    fn undefined_references() {
        assert_error(
            &BASE.replace("device = \"os.root\"", "device = \"os.rot\""),
            "filesystem[1].device",
            "disk os has no partition \"rot\" (it has esp, root)",
        );
        assert_error(
            &BASE.replace("device = \"os.root\"", "device = \"vg0/root\""),
            "filesystem[1].device",
            "no vg named \"vg0\"",
        );
        assert_error(
            &BASE.replace("device = \"os.root\"", "device = \"md0\""),
            "filesystem[1].device",
            "names no disk rule or raid",
        );
        assert_error(
            &BASE.replace(
                "firmware = [\"uefi\"]",
                "firmware = [\"uefi\"]\ndisks = [\"sys\"]",
            ),
            "bootloader.disks[0]",
            "names no disk rule",
        );
    }

    /// Two single-disk rules mirrored, ESP on both: the shape RAID tests start from.
    fn mirror(level: u8, second_esp: bool) -> String {
        let esp_b = if second_esp {
            "[[disk.partition]]\nname = \"esp\"\nsize = \"512MiB\"\ntype = \"esp\"\n"
        } else {
            ""
        };
        let esp_fs_b = if second_esp {
            "[[filesystem]]\ndevice = \"b.esp\"\ntype = \"vfat\"\nmount = \"/boot/efi2\"\n"
        } else {
            ""
        };
        format!(
            r#"
[[disk]]
name = "a"
path = "/dev/vda"
[[disk.partition]]
name = "esp"
size = "512MiB"
type = "esp"
[[disk.partition]]
name = "r"
size = "rest"
type = "raid"

[[disk]]
name = "b"
path = "/dev/vdb"
{esp_b}
[[disk.partition]]
name = "r"
size = "rest"
type = "raid"

[[raid]]
name = "md"
level = {level}
members = ["a.r", "b.r"]

[[filesystem]]
device = "a.esp"
type = "vfat"
mount = "/boot/efi"
{esp_fs_b}
[[filesystem]]
device = "md"
type = "ext4"
mount = "/"

[bootloader]
firmware = ["uefi"]
"#
        )
    }

    #[test]
    fn mirrored_root_is_valid_with_an_esp_on_each_disk() {
        let layout = Layout::from_toml(&mirror(1, true)).unwrap();
        assert_eq!(layout.bootloader.unwrap().disks, [0, 1]);
    }

    #[test]
    fn raid_with_too_few_members() {
        assert_error(
            &mirror(5, true),
            "raid[0].members",
            "raid5 needs at least 3 members, got 2",
        );
        assert_error(
            &mirror(6, true),
            "raid[0].members",
            "raid6 needs at least 4 members, got 2",
        );
    }

    #[test]
    fn unsupported_raid_level() {
        assert_error(
            &mirror(4, true),
            "raid[0].level",
            "4 is not a supported level",
        );
    }

    #[test]
    fn root_on_raid_needs_the_boot_loader_on_every_member_disk() {
        assert_error(
            &mirror(1, false),
            "disk[1]",
            "every such disk needs the boot loader (an esp partition)",
        );
    }

    #[test]
    fn raid_members_must_be_raid_partitions() {
        let text = mirror(1, true).replacen("type = \"raid\"", "type = \"linux\"", 1);
        assert_error(&text, "raid[0].members[0]", "a.r is a linux partition");
    }

    #[test]
    fn a_device_is_used_once() {
        let text = mirror(1, true).replace("device = \"md\"", "device = \"a.r\"");
        assert_error(
            &text,
            "filesystem[2].device",
            "a.r is already used by raid[0].members",
        );
    }

    #[test]
    fn only_an_esp_may_be_spread_over_a_rule_of_several_disks() {
        let text = BASE.replace("name = \"os\"", "name = \"os\"\ncount = 2");
        assert_error(
            &text,
            "filesystem[1].device",
            "only an ESP may be placed on every disk",
        );
    }

    #[test]
    fn stateful_needs_a_bootloader_and_stateless_has_none() {
        let text = BASE.replace("[bootloader]\nfirmware = [\"uefi\"]", "");
        assert_error(&text, "bootloader", "needs a [bootloader]");
        let text = format!("stateful = false\n{BASE}");
        assert_error(&text, "bootloader", "stateless");
        assert_error(&text, "filesystem[1].mount", "may not mount /");
    }

    #[test]
    fn names_labels_and_uuids_are_checked() {
        assert_error(
            &BASE.replace("name = \"os\"", "name = \"os disk\""),
            "disk[0].name",
            "not a valid name",
        );
        assert_error(
            &BASE.replace(
                "mount = \"/\"",
                "mount = \"/\"\nlabel = \"a-very-long-label-for-ext4\"",
            ),
            "filesystem[1].label",
            "at most 16",
        );
        assert_error(
            &BASE.replace(
                "mount = \"/boot/efi\"",
                "mount = \"/boot/efi\"\nlabel = \"E.S.P\"",
            ),
            "filesystem[0].label",
            "FAT labels cannot contain",
        );
        assert_error(
            &BASE.replace("mount = \"/\"", "mount = \"/\"\nuuid = \"not-a-uuid\""),
            "filesystem[1].uuid",
            "is not a UUID",
        );
        assert_error(
            &BASE.replace(
                "mount = \"/boot/efi\"",
                "mount = \"/boot/efi\"\nuuid = \"12345678\"",
            ),
            "filesystem[0].uuid",
            "XXXX-XXXX",
        );
        assert_error(
            &BASE.replace("mount = \"/boot/efi\"", "mount = \"boot/efi\""),
            "filesystem[0].mount",
            "absolute",
        );
        assert_error(
            &BASE.replace("mount = \"/boot/efi\"", "mount = \"/boot/../efi\""),
            "filesystem[0].mount",
            "absolute",
        );
        let layout = Layout::from_toml(&BASE.replace(
            "mount = \"/\"",
            "mount = \"/\"\nuuid = \"0B6F2B8E-1F3C-4E9A-8D2B-6A7C1E0F9A11\"",
        ))
        .unwrap();
        assert_eq!(
            layout.filesystems[1].uuid.as_deref(),
            Some("0b6f2b8e-1f3c-4e9a-8d2b-6a7c1e0f9a11")
        );
    }

    #[test]
    fn msdos_limits() {
        let text = BASE
            .replace("name = \"os\"", "name = \"os\"\ntable = \"msdos\"")
            .replace("firmware = [\"uefi\"]", "firmware = [\"bios\", \"uefi\"]");
        // msdos needs no bios_boot for BIOS: GRUB sits in the gap before partition 1.
        Layout::from_toml(&text).unwrap();
        let with_bios_boot = text.replace(
            "[[disk.partition]]\nname = \"root\"",
            "[[disk.partition]]\nname = \"grub\"\nsize = \"1MiB\"\ntype = \"bios_boot\"\n\n\
             [[disk.partition]]\nname = \"root\"",
        );
        assert_error(
            &with_bios_boot,
            "disk[0].partition[1].type",
            "bios_boot is for GPT disks",
        );
        let labelled = text.replace("name = \"root\"", "name = \"root\"\nlabel = \"root\"");
        assert_error(
            &labelled,
            "disk[0].partition[1].label",
            "msdos partitions have no names",
        );
    }

    #[test]
    fn unused_typed_partitions_are_mistakes() {
        let text = BASE.replace(
            "[[filesystem]]\ndevice = \"os.esp\"",
            "[[disk.partition]]\nname = \"spare\"\nsize = \"1GiB\"\ntype = \"raid\"\n\n\
             [[filesystem]]\ndevice = \"os.esp\"",
        );
        assert_error(
            &text,
            "disk[0].partition[2].type",
            "os.spare is not a member of any raid",
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = BASE
            .replace("mount = \"/\"", "mount = \"/boot/efi\"")
            .replace("firmware = [\"uefi\"]", "firmware = []");
        let errors = errors(&text);
        assert!(errors.len() >= 3, "{errors:#?}");
    }
}
