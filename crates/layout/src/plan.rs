//! A plan: a layout resolved against one node's disks, every size in bytes, every device
//! named. Built by [`crate::plan`]; turned into tool invocations by [`crate::commands`].

use std::fmt;

use metalcast_proto::Firmware;
use metalcast_proto::layout::{FsType, PartitionTable, PartitionType};
use serde::Serialize;

use crate::model::{MdMetadata, RaidLevel};
use crate::units::{MIB, human};

/// The resolved layout for one node. Read [`Plan::steps`] for the order things happen in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub firmware: Firmware,
    pub stateful: bool,
    /// What generated identifiers derive from (the node); re-planning with the same seed
    /// gives the same UUIDs.
    pub seed: String,
    pub disks: Vec<PlannedDisk>,
    pub raids: Vec<PlannedRaid>,
    pub vgs: Vec<PlannedVg>,
    pub filesystems: Vec<PlannedFs>,
    /// Installed after the image, into its root; `None` for a stateless layout.
    pub boot: Option<PlannedBoot>,
}

/// One selected disk. Every disk a plan names is wiped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedDisk {
    /// The `[[disk]]` rule and this disk's index among the rule's disks.
    pub rule: String,
    pub index: usize,
    pub path: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// `None`: the disk is used whole (RAID member, PV, filesystem) or only wiped.
    pub table: Option<PartitionTable>,
    pub partitions: Vec<PlannedPartition>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedPartition {
    pub number: u32,
    /// Reference name in the layout.
    pub name: String,
    /// GPT partition name.
    pub label: String,
    pub kind: PartitionType,
    pub path: String,
    /// Byte offset, a multiple of 1 MiB.
    pub start: u64,
    /// Bytes, a multiple of 1 MiB.
    pub size: u64,
}

impl PlannedPartition {
    /// First byte after the partition.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// GPT partition type GUID.
    pub fn type_guid(&self) -> &'static str {
        match self.kind {
            PartitionType::Esp => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            PartitionType::BiosBoot => "21686148-6449-6E6F-744E-656564454649",
            PartitionType::Linux => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            PartitionType::Raid => "A19D880F-05FC-4D3B-A006-743F0F84911E",
            PartitionType::Lvm => "E6D6D379-F507-44C2-A23C-238F2A3DF928",
            PartitionType::Swap => "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        }
    }

    /// MBR partition type byte (bios_boot never reaches an msdos table).
    pub fn mbr_type(&self) -> &'static str {
        match self.kind {
            PartitionType::Esp => "ef",
            PartitionType::Linux | PartitionType::BiosBoot => "83",
            PartitionType::Raid => "fd",
            PartitionType::Lvm => "8e",
            PartitionType::Swap => "82",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedRaid {
    pub name: String,
    /// Kernel device the array is created as, `/dev/md0`, `/dev/md1`, … in layout order.
    pub path: String,
    pub level: RaidLevel,
    pub metadata: MdMetadata,
    /// Chunk in bytes for striped levels.
    pub chunk: Option<u64>,
    /// `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`, derived from the seed.
    pub uuid: String,
    pub members: Vec<String>,
    /// Size of the smallest member; the array uses this much of each.
    pub member_size: u64,
    /// Usable size, estimated low: MD's data offset and bitmap are taken at their largest.
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedVg {
    pub name: String,
    pub extent_size: u64,
    pub pvs: Vec<PlannedPv>,
    /// Extents of all PVs together (a lower bound, see [`PlannedRaid::size_bytes`]).
    pub extents: u64,
    pub lvs: Vec<PlannedLv>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedPv {
    pub path: String,
    pub size_bytes: u64,
    pub extents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedLv {
    pub name: String,
    pub path: String,
    /// Exact for fixed and percent sizes; for `rest` the planned minimum (the LV takes all
    /// free extents, which may be a few more).
    pub extents: u64,
    pub rest: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedFs {
    /// The layout's reference (`vg0/root`, `sys.esp`).
    pub source: String,
    pub device: String,
    pub kind: FsType,
    pub label: Option<String>,
    /// UUID (`XXXX-XXXX` for vfat), given in the layout or derived from the seed.
    pub uuid: String,
    pub mount: Option<String>,
    pub options: Vec<String>,
    pub mkfs_options: Vec<String>,
    pub size_bytes: u64,
    /// Copies of one filesystem on every disk of a rule (mirrored ESPs): copy 0 is the primary.
    pub copy: usize,
    pub copies: usize,
}

impl PlannedFs {
    /// `UUID=…` as fstab and the kernel command line take it.
    pub fn fstab_source(&self) -> String {
        format!("UUID={}", self.uuid)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "firmware", rename_all = "lowercase")]
pub enum PlannedBoot {
    /// `grub-install --target=i386-pc` into each disk's boot sector.
    Bios { disks: Vec<String> },
    /// GRUB into every ESP, each with its own firmware boot entry.
    Uefi {
        efi_id: String,
        esps: Vec<PlannedEsp>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedEsp {
    pub disk: String,
    pub partition: u32,
    pub device: String,
    /// Where it is mounted in the installed system; the first ESP is the primary.
    pub mount: String,
    /// Firmware boot entry label, `metalcast vda`.
    pub entry_label: String,
}

/// One thing the executor does, in order. Borrowed from the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step<'a> {
    /// Clear signatures (partition tables, filesystems, RAID and LVM labels) on the disk.
    WipeDisk(&'a PlannedDisk),
    /// Write a new partition table with every partition.
    Partition(&'a PlannedDisk),
    CreateRaid(&'a PlannedRaid),
    CreatePv(&'a PlannedPv),
    CreateVg(&'a PlannedVg),
    CreateLv(&'a PlannedVg, &'a PlannedLv),
    Mkfs(&'a PlannedFs),
    /// Mount under the target root, parents before children.
    Mount(&'a PlannedFs),
}

impl Plan {
    /// Everything to do on the disks, in order: wipe, partition, RAID, LVM, mkfs, mount.
    pub fn steps(&self) -> Vec<Step<'_>> {
        let mut steps: Vec<Step<'_>> = self.disks.iter().map(Step::WipeDisk).collect();
        steps.extend(
            self.disks
                .iter()
                .filter(|d| d.table.is_some())
                .map(Step::Partition),
        );
        steps.extend(self.raids.iter().map(Step::CreateRaid));
        for vg in &self.vgs {
            steps.extend(vg.pvs.iter().map(Step::CreatePv));
            steps.push(Step::CreateVg(vg));
            // The `rest` volume last: it takes whatever the others leave.
            let (rest, sized): (Vec<_>, Vec<_>) = vg.lvs.iter().partition(|lv| lv.rest);
            steps.extend(
                sized
                    .into_iter()
                    .chain(rest)
                    .map(|lv| Step::CreateLv(vg, lv)),
            );
        }
        steps.extend(self.filesystems.iter().map(Step::Mkfs));
        steps.extend(self.mount_order().into_iter().map(Step::Mount));
        steps
    }

    /// Mounted filesystems, parents before children (fewer path components first).
    pub fn mount_order(&self) -> Vec<&PlannedFs> {
        let mut mounts: Vec<&PlannedFs> = self
            .filesystems
            .iter()
            .filter(|f| f.mount.is_some())
            .collect();
        mounts.sort_by_key(|f| f.mount.as_deref().map_or(0, depth));
        mounts
    }
}

fn depth(mount: &str) -> usize {
    mount.split('/').filter(|c| !c.is_empty()).count()
}

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::WipeDisk(d) => write!(
                f,
                "wipe all signatures on {} ({})",
                d.path,
                human(d.size_bytes)
            ),
            Step::Partition(d) => {
                let table = d.table.map_or("gpt".to_owned(), |t| t.to_string());
                write!(
                    f,
                    "write a {table} table on {} with {} partition(s)",
                    d.path,
                    d.partitions.len()
                )
            }
            Step::CreateRaid(r) => write!(
                f,
                "create {} ({}) \"{}\" from {}",
                r.path,
                r.level.name(),
                r.name,
                r.members.join(" ")
            ),
            Step::CreatePv(p) => write!(f, "create LVM physical volume {}", p.path),
            Step::CreateVg(vg) => write!(
                f,
                "create volume group {} ({} extents of {})",
                vg.name,
                vg.extents,
                human(vg.extent_size)
            ),
            Step::CreateLv(vg, lv) if lv.rest => write!(
                f,
                "create {} from the free extents of {} (at least {})",
                lv.path,
                vg.name,
                human(lv.extents * vg.extent_size)
            ),
            Step::CreateLv(vg, lv) => write!(
                f,
                "create {} with {} extents ({})",
                lv.path,
                lv.extents,
                human(lv.extents * vg.extent_size)
            ),
            Step::Mkfs(fs) => {
                write!(f, "make {} on {} uuid {}", fs.kind, fs.device, fs.uuid)?;
                if let Some(l) = &fs.label {
                    write!(f, " label {l:?}")?;
                }
                Ok(())
            }
            Step::Mount(fs) => write!(
                f,
                "mount {} at {}",
                fs.device,
                fs.mount.as_deref().unwrap_or("-")
            ),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan for {} firmware, {} layout",
            self.firmware,
            if self.stateful {
                "stateful"
            } else {
                "stateless"
            }
        )?;
        writeln!(f, "\ndisks:")?;
        for d in &self.disks {
            write!(
                f,
                "  {}[{}]  {}  {}",
                d.rule,
                d.index,
                d.path,
                human(d.size_bytes)
            )?;
            if let Some(m) = &d.model {
                write!(f, "  {:?}", m.trim())?;
            }
            if let Some(s) = &d.serial {
                write!(f, "  serial {s}")?;
            }
            match d.table {
                Some(t) => writeln!(f, "  {t}")?,
                None => writeln!(f, "  (whole disk)")?,
            }
            for p in &d.partitions {
                writeln!(
                    f,
                    "    {:<14} {:<9} {:>13} .. {:<13} {:>11}  {:?}",
                    p.path,
                    p.kind.as_str(),
                    format!("{} MiB", p.start / MIB),
                    format!("{} MiB", p.end() / MIB),
                    human(p.size),
                    p.label
                )?;
            }
        }
        if !self.raids.is_empty() {
            writeln!(f, "\nraid:")?;
            for r in &self.raids {
                write!(
                    f,
                    "  {} \"{}\" {} metadata {}",
                    r.path,
                    r.name,
                    r.level.name(),
                    r.metadata.as_str()
                )?;
                if let Some(c) = r.chunk {
                    write!(f, " chunk {}", human(c))?;
                }
                writeln!(
                    f,
                    " over {} ({} each) -> {}, uuid {}",
                    r.members.join(" "),
                    human(r.member_size),
                    human(r.size_bytes),
                    r.uuid
                )?;
            }
        }
        if !self.vgs.is_empty() {
            writeln!(f, "\nlvm:")?;
            for vg in &self.vgs {
                writeln!(
                    f,
                    "  vg {} over {}: {} extents of {} ({})",
                    vg.name,
                    vg.pvs
                        .iter()
                        .map(|p| p.path.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    vg.extents,
                    human(vg.extent_size),
                    human(vg.extents * vg.extent_size)
                )?;
                for lv in &vg.lvs {
                    writeln!(
                        f,
                        "    {:<20} {}{} extents ({})",
                        lv.path,
                        if lv.rest { "rest, at least " } else { "" },
                        lv.extents,
                        human(lv.extents * vg.extent_size)
                    )?;
                }
            }
        }
        writeln!(f, "\nfilesystems:")?;
        for fs in &self.filesystems {
            write!(
                f,
                "  {:<12} {:<5} {:<18} {:>11}  UUID={}",
                fs.mount.as_deref().unwrap_or("-"),
                fs.kind.as_str(),
                fs.device,
                human(fs.size_bytes),
                fs.uuid
            )?;
            if let Some(l) = &fs.label {
                write!(f, " LABEL={l}")?;
            }
            if !fs.options.is_empty() {
                write!(f, " options {}", fs.options.join(","))?;
            }
            if fs.copies > 1 {
                if fs.copy == 0 {
                    write!(f, " (primary of {} mirrored copies)", fs.copies)?;
                } else {
                    write!(f, " (mirror {} of {})", fs.copy + 1, fs.copies)?;
                }
            }
            writeln!(f)?;
        }
        match &self.boot {
            None => {}
            Some(PlannedBoot::Bios { disks }) => {
                writeln!(
                    f,
                    "\nbootloader (bios): GRUB i386-pc into {}",
                    disks.join(" ")
                )?;
            }
            Some(PlannedBoot::Uefi { efi_id, esps }) => {
                writeln!(
                    f,
                    "\nbootloader (uefi): GRUB x86_64-efi as EFI/{efi_id}, one boot entry per ESP"
                )?;
                for (i, esp) in esps.iter().enumerate() {
                    writeln!(
                        f,
                        "  {} at {} -> boot entry {:?} (disk {} partition {}){}",
                        esp.device,
                        esp.mount,
                        esp.entry_label,
                        esp.disk,
                        esp.partition,
                        if i == 0 {
                            ", primary"
                        } else {
                            ", mirror kept in sync with the primary"
                        }
                    )?;
                }
                if esps.len() > 1 {
                    writeln!(
                        f,
                        "  the ESPs are mirrored: GRUB is installed into each, and the installed \
                         system must copy the primary to the others after every boot loader update"
                    )?;
                }
            }
        }
        writeln!(f, "\nsteps:")?;
        for (i, step) in self.steps().iter().enumerate() {
            writeln!(f, "  {:>2}. {step}", i + 1)?;
        }
        Ok(())
    }
}
