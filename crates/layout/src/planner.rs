//! Layout + disks → [`Plan`]: pure arithmetic, no I/O.

use metalcast_proto::layout::{FsType, PartitionTable, PartitionType, Size};
use metalcast_proto::{Disk, Firmware};

use crate::error::{FieldError, LayoutError};
use crate::model::{Layout, MIN_ESP, MIN_XFS, MdMetadata, RaidLevel, Ref};
use crate::plan::{
    Plan, PlannedBoot, PlannedDisk, PlannedEsp, PlannedFs, PlannedLv, PlannedPartition, PlannedPv,
    PlannedRaid, PlannedVg,
};
use crate::select::select;
use crate::units::{
    KIB, MIB, TIB, ceil_to, derived_md_uuid, derived_uuid, derived_vfat_id, floor_to, human,
    percent_of,
};

/// Partitions start and end on 1 MiB boundaries.
pub const ALIGN: u64 = MIB;
/// Left free at the end of a partitioned disk for GPT's backup header and table (33 sectors
/// of 512 bytes, 6 of 4096: both fit).
pub const TAIL: u64 = MIB;
/// Where LVM puts the first extent on a PV (its label and metadata area come before).
pub const PE_START: u64 = MIB;
/// RAID members may differ in size by this many percent of the smallest; the array uses
/// the smallest size on each, wasting the rest.
pub const MEMBER_TOLERANCE_PERCENT: u64 = 1;
/// An msdos table addresses 2^32 sectors; with 512-byte sectors that is 2 TiB.
const MSDOS_LIMIT: u64 = 2 * TIB;

/// Plan `layout` on `disks` for a node booted with `firmware`. `seed` identifies the node
/// (its MAC): generated UUIDs derive from it, so planning again gives the same ones.
pub fn plan(
    layout: &Layout,
    disks: &[Disk],
    firmware: Firmware,
    seed: &str,
) -> Result<Plan, LayoutError> {
    let mut errors = Vec::new();
    if let Some(boot) = &layout.bootloader
        && !boot.firmware.contains(&firmware)
    {
        errors.push(FieldError::new(
            "bootloader.firmware",
            format!(
                "the layout boots under {} only; this node booted with {firmware}",
                boot.firmware
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    let selected = match select(layout, disks) {
        Ok(s) => s,
        Err(mut e) => {
            errors.append(&mut e);
            return Err(LayoutError::Invalid(errors));
        }
    };
    stage(&mut errors)?;

    let mut p = Planner {
        layout,
        seed,
        errors: Vec::new(),
        disks: Vec::new(),
        raids: Vec::new(),
        vgs: Vec::new(),
    };
    for (i, chosen) in selected.iter().enumerate() {
        let planned = chosen
            .iter()
            .enumerate()
            .filter_map(|(k, d)| p.disk(i, k, d))
            .collect();
        p.disks.push(planned);
    }
    stage(&mut p.errors)?;
    for i in 0..layout.raids.len() {
        if let Some(r) = p.raid(i) {
            p.raids.push(r);
        }
    }
    stage(&mut p.errors)?;
    for i in 0..layout.vgs.len() {
        if let Some(vg) = p.vg(i) {
            p.vgs.push(vg);
        }
    }
    stage(&mut p.errors)?;
    let filesystems = p.filesystems();
    stage(&mut p.errors)?;
    let boot = p.boot(firmware, &filesystems);
    stage(&mut p.errors)?;
    Ok(Plan {
        firmware,
        stateful: layout.stateful,
        seed: seed.to_owned(),
        disks: p.disks.into_iter().flatten().collect(),
        raids: p.raids,
        vgs: p.vgs,
        filesystems,
        boot,
    })
}

/// Stop after a stage that found errors: later stages build on its results.
fn stage(errors: &mut Vec<FieldError>) -> Result<(), LayoutError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LayoutError::Invalid(std::mem::take(errors)))
    }
}

struct Planner<'a> {
    layout: &'a Layout,
    seed: &'a str,
    errors: Vec<FieldError>,
    /// Per disk rule, its planned disks.
    disks: Vec<Vec<PlannedDisk>>,
    raids: Vec<PlannedRaid>,
    vgs: Vec<PlannedVg>,
}

/// The kernel's name for partition `n` of `disk`: `vda1`, but `nvme0n1p1`.
pub fn partition_path(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// Usable bytes per member of an MD array, estimated low by following mdadm's `super1.c`:
/// metadata 1.1/1.2 put the data after superblock (12 KiB), bitmap space (up to 128 KiB)
/// and a "headroom" for reshapes — 128 MiB, halved while more than 0.1% of the member
/// (striped levels keep at least two chunks) — rounded up to 1 MiB; 0.90/1.0 keep under
/// 256 KiB at the end. One more MiB of slack absorbs differences between mdadm versions.
pub fn md_data_size(member: u64, metadata: MdMetadata, chunk: Option<u64>) -> u64 {
    let overhead = if metadata.at_end() {
        MIB
    } else {
        let mut headroom = 128 * MIB;
        while headroom.saturating_mul(1024) > member
            && chunk.is_none_or(|c| headroom / 2 >= 2 * c)
            && headroom > 0
        {
            headroom /= 2;
        }
        ceil_to(12 * KIB + 128 * KIB + headroom, MIB).unwrap_or(u64::MAX)
    };
    floor_to(member.saturating_sub(overhead.saturating_add(MIB)), MIB)
}

/// Usable size of an array of `n` members with `data` bytes each.
pub fn array_size(level: RaidLevel, n: u64, data: u64, chunk: u64) -> u64 {
    let unit = chunk.max(MIB);
    let data = floor_to(data, unit);
    match level {
        RaidLevel::Raid0 => n * data,
        RaidLevel::Raid1 => data,
        RaidLevel::Raid5 => n.saturating_sub(1) * data,
        RaidLevel::Raid6 => n.saturating_sub(2) * data,
        // The default near=2 layout keeps two copies of every chunk.
        RaidLevel::Raid10 => floor_to(n * data / 2, unit),
    }
}

impl Planner<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// Partition geometry of one disk of rule `i`.
    fn disk(&mut self, i: usize, index: usize, d: &Disk) -> Option<PlannedDisk> {
        let rule = &self.layout.disks[i];
        let mut planned = PlannedDisk {
            rule: rule.name.clone(),
            index,
            path: d.path.clone(),
            size_bytes: d.size_bytes,
            model: d.model.clone(),
            serial: d.serial.clone(),
            table: None,
            partitions: Vec::new(),
        };
        if rule.partitions.is_empty() {
            return Some(planned);
        }
        planned.table = Some(rule.table);
        let start = ALIGN;
        let end = floor_to(d.size_bytes, ALIGN).saturating_sub(TAIL);
        if end <= start {
            self.err(
                format!("disk[{i}]"),
                format!(
                    "{} ({}) is too small to partition",
                    d.path,
                    human(d.size_bytes)
                ),
            );
            return None;
        }
        let total = end - start;
        let at = format!("disk[{i}].partition");
        let sizes = self.fit(
            &at,
            total,
            ALIGN,
            rule.partitions.iter().map(|p| p.size).collect(),
            &format!("{} (disk {}, {} usable)", d.path, rule.name, human(total)),
        )?;
        let mut offset = start;
        for (j, (p, size)) in rule.partitions.iter().zip(sizes).enumerate() {
            if p.kind == PartitionType::Esp && size < MIN_ESP {
                self.err(
                    format!("{at}[{j}].size"),
                    format!(
                        "{} gives the ESP {}; it needs at least 32 MiB",
                        p.size,
                        human(size)
                    ),
                );
            }
            let number = u32::try_from(j + 1).unwrap_or(u32::MAX);
            planned.partitions.push(PlannedPartition {
                number,
                name: p.name.clone(),
                label: p.label.clone(),
                kind: p.kind,
                path: partition_path(&d.path, number),
                start: offset,
                size,
            });
            offset += size;
        }
        if rule.table == PartitionTable::Msdos && offset > MSDOS_LIMIT {
            self.err(
                format!("disk[{i}].table"),
                format!(
                    "partitions on {} reach {}; an msdos table addresses 2 TiB (use a GPT)",
                    d.path,
                    human(offset)
                ),
            );
            return None;
        }
        Some(planned)
    }

    /// Resolve sizes in one container of `total` bytes, in units of `unit`: fixed sizes
    /// round up, percentages of the total round down, `rest` takes what is left.
    fn fit(
        &mut self,
        at: &str,
        total: u64,
        unit: u64,
        sizes: Vec<Size>,
        container: &str,
    ) -> Option<Vec<u64>> {
        let mut out = Vec::with_capacity(sizes.len());
        let mut used: u64 = 0;
        let mut ok = true;
        for (j, size) in sizes.iter().enumerate() {
            let bytes = match *size {
                Size::Bytes(b) => ceil_to(b.0, unit).unwrap_or(u64::MAX),
                Size::Percent(p) => percent_of(total, p, unit),
                Size::Rest => 0,
            };
            if *size != Size::Rest && bytes == 0 {
                self.err(
                    format!("{at}[{j}].size"),
                    format!("{size} of {container} is less than {}", human(unit)),
                );
                ok = false;
            } else if used.saturating_add(bytes) > total {
                self.err(
                    format!("{at}[{j}].size"),
                    format!(
                        "{} does not fit on {container}: {} left after the entries before it",
                        human(bytes),
                        human(total - used)
                    ),
                );
                return None;
            }
            used += bytes;
            out.push(bytes);
        }
        if let Some(j) = sizes.iter().position(|s| *s == Size::Rest) {
            let left = floor_to(total - used, unit);
            if left < unit {
                self.err(
                    format!("{at}[{j}].size"),
                    format!("rest leaves nothing on {container}: the other entries take it all"),
                );
                return None;
            }
            out[j] = left;
        }
        ok.then_some(out)
    }

    /// Block devices (path, bytes) a reference stands for, in disk order.
    fn instances(&self, r: Ref) -> Vec<(String, u64)> {
        match r {
            Ref::Disk(d) => self.disks[d]
                .iter()
                .map(|p| (p.path.clone(), p.size_bytes))
                .collect(),
            Ref::Partition { disk, part } => self.disks[disk]
                .iter()
                .filter_map(|p| p.partitions.get(part))
                .map(|p| (p.path.clone(), p.size))
                .collect(),
            Ref::Raid(i) => self
                .raids
                .get(i)
                .map(|r| vec![(r.path.clone(), r.size_bytes)])
                .unwrap_or_default(),
            Ref::Lv { vg, lv } => self
                .vgs
                .get(vg)
                .and_then(|g| {
                    g.lvs
                        .get(lv)
                        .map(|l| (l.path.clone(), l.extents * g.extent_size))
                })
                .into_iter()
                .collect(),
        }
    }

    fn raid(&mut self, i: usize) -> Option<PlannedRaid> {
        let spec = &self.layout.raids[i];
        let members: Vec<(String, u64)> = spec
            .members
            .iter()
            .flat_map(|&m| self.instances(m))
            .collect();
        let at = format!("raid[{i}].members");
        if members.len() < spec.level.min_members() {
            self.err(
                at,
                format!(
                    "{} needs at least {} members, got {}",
                    spec.level.name(),
                    spec.level.min_members(),
                    members.len()
                ),
            );
            return None;
        }
        let smallest = members.iter().map(|m| m.1).min().unwrap_or(0);
        let largest = members.iter().map(|m| m.1).max().unwrap_or(0);
        if (largest - smallest).saturating_mul(100)
            > smallest.saturating_mul(MEMBER_TOLERANCE_PERCENT)
        {
            self.err(
                at,
                format!(
                    "members differ in size by more than {MEMBER_TOLERANCE_PERCENT}%: {}",
                    members
                        .iter()
                        .map(|(p, s)| format!("{p} {}", human(*s)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return None;
        }
        let chunk = spec.level.striped().then_some(spec.chunk);
        let data = md_data_size(smallest, spec.metadata, chunk);
        let n = members.len() as u64;
        let size = array_size(spec.level, n, data, spec.chunk);
        if size == 0 {
            self.err(
                at,
                format!(
                    "members of {} are too small for MD metadata",
                    human(smallest)
                ),
            );
            return None;
        }
        Some(PlannedRaid {
            name: spec.name.clone(),
            path: format!("/dev/md{i}"),
            level: spec.level,
            metadata: spec.metadata,
            chunk,
            uuid: derived_md_uuid(self.seed, &format!("raid {}", spec.name)),
            members: members.into_iter().map(|m| m.0).collect(),
            member_size: smallest,
            size_bytes: size,
        })
    }

    fn vg(&mut self, i: usize) -> Option<PlannedVg> {
        let spec = &self.layout.vgs[i];
        let extent = spec.extent_size;
        let errors_before = self.errors.len();
        let mut pvs = Vec::new();
        for (k, &r) in spec.pvs.iter().enumerate() {
            for (path, size) in self.instances(r) {
                let extents = size.saturating_sub(PE_START) / extent;
                if extents == 0 {
                    self.err(
                        format!("vg[{i}].pvs[{k}]"),
                        format!(
                            "{path} ({}) holds no {} extent after LVM's metadata",
                            human(size),
                            human(extent)
                        ),
                    );
                    continue;
                }
                pvs.push(PlannedPv {
                    path,
                    size_bytes: size,
                    extents,
                });
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        let total: u64 = pvs.iter().map(|p| p.extents).sum();
        let container = format!(
            "vg {} ({} extents, {})",
            spec.name,
            total,
            human(total * extent)
        );
        let sizes = spec.lvs.iter().map(|l| l.size).collect();
        // Sizes in bytes of whole extents, so `fit` works for disks and VGs alike.
        let bytes = self.fit(
            &format!("vg[{i}].lv"),
            total * extent,
            extent,
            sizes,
            &container,
        )?;
        let lvs = spec
            .lvs
            .iter()
            .zip(bytes)
            .map(|(lv, b)| PlannedLv {
                name: lv.name.clone(),
                path: format!("/dev/{}/{}", spec.name, lv.name),
                extents: b / extent,
                rest: lv.size == Size::Rest,
            })
            .collect();
        Some(PlannedVg {
            name: spec.name.clone(),
            extent_size: extent,
            pvs,
            extents: total,
            lvs,
        })
    }

    fn filesystems(&mut self) -> Vec<PlannedFs> {
        let mut out = Vec::new();
        for (i, fs) in self.layout.filesystems.iter().enumerate() {
            let source = self.layout.ref_name(fs.device);
            let instances = self.instances(fs.device);
            let copies = instances.len();
            for (copy, (device, size)) in instances.into_iter().enumerate() {
                if fs.kind == FsType::Xfs && size < MIN_XFS {
                    self.err(
                        format!("filesystem[{i}].device"),
                        format!(
                            "{source} ({device}) has {}; xfs needs at least {}",
                            human(size),
                            human(MIN_XFS)
                        ),
                    );
                }
                let what = format!("fs {source} {copy}");
                let uuid = fs.uuid.clone().unwrap_or_else(|| match fs.kind {
                    FsType::Vfat => derived_vfat_id(self.seed, &what),
                    _ => derived_uuid(self.seed, &what),
                });
                out.push(PlannedFs {
                    source: source.clone(),
                    device,
                    kind: fs.kind,
                    label: fs.label.clone(),
                    uuid,
                    mount: fs.mount.as_deref().map(|m| Layout::copy_mount(m, copy)),
                    options: fs.options.clone(),
                    mkfs_options: fs.mkfs_options.clone(),
                    size_bytes: size,
                    copy,
                    copies,
                });
            }
        }
        out
    }

    fn boot(&mut self, firmware: Firmware, filesystems: &[PlannedFs]) -> Option<PlannedBoot> {
        let boot = self.layout.bootloader.as_ref()?;
        let disks: Vec<PlannedDisk> = boot
            .disks
            .iter()
            .flat_map(|&d| self.disks[d].iter().cloned())
            .collect();
        match firmware {
            Firmware::Bios => Some(PlannedBoot::Bios {
                disks: disks.iter().map(|d| d.path.clone()).collect(),
            }),
            Firmware::Uefi => {
                // Keyed by the filesystem's place in the layout, so the primary copy leads.
                let mut esps: Vec<(usize, PlannedEsp)> = Vec::new();
                for d in disks {
                    let Some(part) = d.partitions.iter().find(|p| p.kind == PartitionType::Esp)
                    else {
                        continue;
                    };
                    let Some((key, mount)) = filesystems
                        .iter()
                        .enumerate()
                        .find(|(_, f)| f.device == part.path)
                        .and_then(|(k, f)| Some((k, f.mount.clone()?)))
                    else {
                        self.err(
                            "bootloader",
                            format!("the ESP {} has no mounted filesystem", part.path),
                        );
                        continue;
                    };
                    esps.push((
                        key,
                        PlannedEsp {
                            disk: d.path.clone(),
                            partition: part.number,
                            device: part.path.clone(),
                            mount,
                            entry_label: format!(
                                "{} {}",
                                boot.efi_id,
                                d.path.trim_start_matches("/dev/")
                            ),
                        },
                    ));
                }
                esps.sort_by_key(|(key, _)| *key);
                Some(PlannedBoot::Uefi {
                    efi_id: boot.efi_id.clone(),
                    esps: esps.into_iter().map(|(_, e)| e).collect(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;

    fn disk(path: &str, bytes: u64) -> Disk {
        Disk {
            path: path.into(),
            size_bytes: bytes,
            model: Some("QEMU HARDDISK".into()),
            serial: None,
            rotational: false,
            by_path: None,
        }
    }

    use crate::fixtures::ONE_DISK_UEFI as ONE_DISK;

    fn refused(text: &str, disks: &[Disk], firmware: Firmware) -> Vec<FieldError> {
        let layout = Layout::from_toml(text).unwrap();
        match plan(&layout, disks, firmware, "seed") {
            Ok(p) => panic!("planned:\n{p}"),
            Err(e) => e.fields().to_vec(),
        }
    }

    fn assert_refused(text: &str, disks: &[Disk], firmware: Firmware, field: &str, words: &str) {
        let errors = refused(text, disks, firmware);
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.message.contains(words)),
            "expected `{field}: …{words}…`, got {errors:#?}"
        );
    }

    #[test]
    fn partitions_are_aligned_and_leave_the_gpt_backup_alone() {
        let layout = Layout::from_toml(ONE_DISK).unwrap();
        let size = 10 * GIB + 12345;
        let p = plan(&layout, &[disk("/dev/nvme0n1", size)], Firmware::Uefi, "s").unwrap();
        let parts = &p.disks[0].partitions;
        assert_eq!(parts[0].path, "/dev/nvme0n1p1");
        assert_eq!((parts[0].start, parts[0].size), (MIB, 512 * MIB));
        assert_eq!(parts[1].start, 513 * MIB);
        assert_eq!(parts[1].end(), 10 * GIB - MIB);
    }

    #[test]
    fn no_disk_matches_lists_the_disks_seen() {
        let text = ONE_DISK.replace("name = \"os\"", "name = \"os\"\nmin_size = \"1TiB\"");
        assert_refused(
            &text,
            &[disk("/dev/vda", 20 * GIB)],
            Firmware::Uefi,
            "disk[0]",
            "rule os (min_size = 1 TiB): no disk matches; disks seen: /dev/vda 20 GiB \"QEMU HARDDISK\"",
        );
    }

    #[test]
    fn several_matches_are_ambiguous_unless_picked() {
        let disks = [disk("/dev/vda", 20 * GIB), disk("/dev/vdb", 30 * GIB)];
        assert_refused(
            ONE_DISK,
            &disks,
            Firmware::Uefi,
            "disk[0]",
            "2 disks match (/dev/vda, /dev/vdb)",
        );
        let largest = Layout::from_toml(
            &ONE_DISK.replace("name = \"os\"", "name = \"os\"\npick = \"largest\""),
        )
        .unwrap();
        let p = plan(&largest, &disks, Firmware::Uefi, "s").unwrap();
        assert_eq!(p.disks[0].path, "/dev/vdb");
    }

    #[test]
    fn count_needs_that_many_disks_of_equal_size() {
        let layout =
            Layout::from_toml("stateful = false\n[[disk]]\nname = \"d\"\ncount = 2\n").unwrap();
        let unequal = [disk("/dev/vda", 20 * GIB), disk("/dev/vdb", 30 * GIB)];
        let e = plan(&layout, &unequal, Firmware::Bios, "s").unwrap_err();
        assert_eq!(e.fields()[0].field, "disk[0]");
        assert!(
            e.fields()[0].message.contains(
                "needs exactly 2 disks of equal size; the matching disks come in sizes \
                 20 GiB ×1, 30 GiB ×1"
            ),
            "{e}"
        );
        let equal = [disk("/dev/vda", 20 * GIB), disk("/dev/vdb", 20 * GIB)];
        let p = plan(&layout, &equal, Firmware::Bios, "s").unwrap();
        assert_eq!(p.disks.len(), 2);
        assert_eq!(p.disks[1].table, None);
    }

    #[test]
    fn sizes_that_do_not_fit() {
        let text = ONE_DISK.replace("size = \"512MiB\"", "size = \"30GiB\"");
        assert_refused(
            &text,
            &[disk("/dev/vda", 20 * GIB)],
            Firmware::Uefi,
            "disk[0].partition[0].size",
            "30 GiB does not fit on /dev/vda",
        );
        let text = ONE_DISK.replace("size = \"512MiB\"", "size = \"100%\"");
        assert_refused(
            &text,
            &[disk("/dev/vda", 20 * GIB)],
            Firmware::Uefi,
            "disk[0].partition[1].size",
            "rest leaves nothing",
        );
        assert_refused(
            ONE_DISK,
            &[disk("/dev/vda", MIB)],
            Firmware::Uefi,
            "disk[0]",
            "too small to partition",
        );
    }

    /// Two disks, RAID 1 of `level`, VG with one LV of `lv`.
    fn raid_vg(lv: &str) -> String {
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
[[disk.partition]]
name = "esp"
size = "512MiB"
type = "esp"
[[disk.partition]]
name = "r"
size = "rest"
type = "raid"

[[raid]]
name = "md"
level = 1
members = ["a.r", "b.r"]

[[vg]]
name = "vg0"
pvs = ["md"]
[[vg.lv]]
name = "root"
size = "{lv}"

[[filesystem]]
device = "a.esp"
type = "vfat"
mount = "/boot/efi"
[[filesystem]]
device = "b.esp"
type = "vfat"
mount = "/boot/efi2"
[[filesystem]]
device = "vg0/root"
type = "ext4"
mount = "/"

[bootloader]
firmware = ["uefi"]
"#
        )
    }

    #[test]
    fn lv_larger_than_its_vg() {
        let disks = [disk("/dev/vda", 20 * GIB), disk("/dev/vdb", 20 * GIB)];
        assert_refused(
            &raid_vg("20GiB"),
            &disks,
            Firmware::Uefi,
            "vg[0].lv[0].size",
            "20 GiB does not fit on vg vg0",
        );
        let layout = Layout::from_toml(&raid_vg("19GiB")).unwrap();
        let p = plan(&layout, &disks, Firmware::Uefi, "s").unwrap();
        assert_eq!(p.vgs[0].lvs[0].extents, 19 * 256);
    }

    #[test]
    fn raid_members_of_unequal_size() {
        let disks = [disk("/dev/vda", 20 * GIB), disk("/dev/vdb", 30 * GIB)];
        assert_refused(
            &raid_vg("1GiB"),
            &disks,
            Firmware::Uefi,
            "raid[0].members",
            "members differ in size by more than 1%: /dev/vda2 19.50 GiB, /dev/vdb2 29.50 GiB",
        );
        // Within tolerance: the array uses the smaller size on both.
        let layout = Layout::from_toml(&raid_vg("1GiB")).unwrap();
        let p = plan(
            &layout,
            &[
                disk("/dev/vda", 20 * GIB),
                disk("/dev/vdb", 20 * GIB + 100 * MIB),
            ],
            Firmware::Uefi,
            "s",
        )
        .unwrap();
        assert_eq!(p.raids[0].member_size, p.disks[0].partitions[1].size);
    }

    #[test]
    fn firmware_the_layout_does_not_boot_under() {
        assert_refused(
            ONE_DISK,
            &[disk("/dev/vda", 20 * GIB)],
            Firmware::Bios,
            "bootloader.firmware",
            "boots under uefi only; this node booted with bios",
        );
    }

    #[test]
    fn xfs_too_small() {
        let text = ONE_DISK
            .replace("size = \"rest\"", "size = \"200MiB\"")
            .replace("type = \"ext4\"", "type = \"xfs\"");
        assert_refused(
            &text,
            &[disk("/dev/vda", 20 * GIB)],
            Firmware::Uefi,
            "filesystem[1].device",
            "xfs needs at least 300 MiB",
        );
    }

    #[test]
    fn msdos_stops_at_2_tib() {
        let text = ONE_DISK.replace("name = \"os\"", "name = \"os\"\ntable = \"msdos\"");
        assert_refused(
            &text,
            &[disk("/dev/sda", 3 * TIB)],
            Firmware::Uefi,
            "disk[0].table",
            "msdos table addresses 2 TiB",
        );
        let layout = Layout::from_toml(&text).unwrap();
        plan(&layout, &[disk("/dev/sda", TIB)], Firmware::Uefi, "s").unwrap();
    }

    #[test]
    fn uuids_derive_from_the_seed() {
        let layout = Layout::from_toml(&raid_vg("5GiB")).unwrap();
        let disks = [disk("/dev/vda", 20 * GIB), disk("/dev/vdb", 20 * GIB)];
        let a = plan(&layout, &disks, Firmware::Uefi, "52:54:00:00:00:01").unwrap();
        let again = plan(&layout, &disks, Firmware::Uefi, "52:54:00:00:00:01").unwrap();
        let other = plan(&layout, &disks, Firmware::Uefi, "52:54:00:00:00:02").unwrap();
        assert_eq!(a, again);
        assert_ne!(a.filesystems[2].uuid, other.filesystems[2].uuid);
        assert_ne!(a.raids[0].uuid, other.raids[0].uuid);
        let uuids: std::collections::BTreeSet<_> = a.filesystems.iter().map(|f| &f.uuid).collect();
        assert_eq!(uuids.len(), a.filesystems.len());
    }

    #[test]
    fn md_overhead_follows_mdadm() {
        // A 20 GiB member of metadata 1.2: 16 MiB headroom (≤ 0.1%), 140 KiB of superblock
        // and bitmap rounded to 17 MiB, plus our 1 MiB slack.
        assert_eq!(
            md_data_size(20 * GIB, MdMetadata::V1_2, None),
            20 * GIB - 18 * MIB
        );
        // 1 TiB and more: headroom stays at 128 MiB.
        assert_eq!(md_data_size(TIB, MdMetadata::V1_2, None), TIB - 130 * MIB);
        // Striped levels keep two chunks of headroom: 8 MiB here, not 1 MiB.
        assert_eq!(
            md_data_size(GIB, MdMetadata::V1_2, Some(4 * MIB)),
            GIB - 10 * MIB
        );
        assert_eq!(md_data_size(GIB, MdMetadata::V1_2, None), GIB - 3 * MIB);
        assert_eq!(
            md_data_size(20 * GIB, MdMetadata::V1_0, None),
            20 * GIB - 2 * MIB
        );
        assert_eq!(md_data_size(MIB, MdMetadata::V1_2, None), 0);
        assert_eq!(
            array_size(RaidLevel::Raid5, 3, 10 * GIB, 512 * KIB),
            20 * GIB
        );
        assert_eq!(
            array_size(RaidLevel::Raid6, 4, 10 * GIB, 512 * KIB),
            20 * GIB
        );
        assert_eq!(
            array_size(RaidLevel::Raid10, 3, 10 * GIB, 512 * KIB),
            15 * GIB
        );
        assert_eq!(
            array_size(RaidLevel::Raid0, 2, 10 * GIB, 512 * KIB),
            20 * GIB
        );
    }
}
