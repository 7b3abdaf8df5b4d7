//! Plan → tool invocations (still pure): what the agent runs in the boot initramfs, and the
//! files the installed system needs (fstab, mdadm.conf).
//!
//! Written for the boot initramfs: busybox, mdadm, lvm2 (with `udev_sync = 0`,
//! `udev_rules = 0`), util-linux and no udev. Nothing waits for udev, so the list says where
//! to wait for a device node ([`Action::WaitForDevice`]); every tool gets the flags that keep
//! it from asking questions on a terminal that is not there.

use std::fmt;

use metalcast_proto::layout::{BlockDevice, BlockTree};
use metalcast_proto::layout::{FsType, PartitionTable};
use serde::Serialize;

use crate::plan::{Plan, PlannedBoot, PlannedDisk, PlannedFs, Step};
use crate::units::KIB;

/// One thing for the executor to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Action {
    Run(Command),
    /// Poll until this device node exists. Without udev nothing announces new partitions,
    /// arrays or LVs; devtmpfs (or the tool itself) creates the node shortly after the tool
    /// returns.
    WaitForDevice(String),
}

/// A program with its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    /// Fed to the program's standard input (sfdisk scripts); otherwise stdin is empty, so a
    /// tool that asks a question reads end-of-file instead of hanging.
    pub stdin: Option<String>,
}

impl Command {
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.to_owned(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
        }
    }
}

fn run<I, S>(program: &str, args: I) -> Action
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Action::Run(Command::new(program, args))
}

impl fmt::Display for Command {
    /// As a shell line, quoted where needed; standard input as a here-document.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        if let Some(input) = &self.stdin {
            write!(f, " <<'EOF'\n{input}EOF")?;
        }
        Ok(())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Run(c) => c.fmt(f),
            Action::WaitForDevice(path) => write!(f, "# wait for {path}"),
        }
    }
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `target` + `mount`, e.g. `/target` + `/boot/efi`.
pub fn under(target: &str, mount: &str) -> String {
    let base = target.trim_end_matches('/');
    if mount == "/" {
        if base.is_empty() {
            "/".to_owned()
        } else {
            base.to_owned()
        }
    } else {
        format!("{base}{mount}")
    }
}

/// Everything that creates the layout, in order, ending with the filesystems mounted under
/// `target` (e.g. `/target`). Run [`teardown_commands`] first on disks that hold anything.
pub fn commands(plan: &Plan, target: &str) -> Vec<Action> {
    let mut out = Vec::new();
    for step in plan.steps() {
        match step {
            Step::WipeDisk(d) => out.push(run("wipefs", ["--all", "--force", d.path.as_str()])),
            Step::Partition(d) => partition(d, &mut out),
            Step::CreateRaid(r) => {
                let mut args = vec![
                    "--create".to_owned(),
                    r.path.clone(),
                    // --run: start the array without asking "Continue creating array?", which
                    // mdadm asks when members look used; they were wiped just before. No
                    // --force: it would only allow 1-device arrays and skip the degraded
                    // start mdadm uses to build RAID 5 faster, neither of which we want.
                    "--run".to_owned(),
                    format!("--level={}", r.level.number()),
                    format!("--raid-devices={}", r.members.len()),
                    format!("--metadata={}", r.metadata.as_str()),
                    format!("--name={}", r.name),
                    format!("--uuid={}", r.uuid),
                ];
                if let Some(chunk) = r.chunk {
                    args.push(format!("--chunk={}K", chunk / KIB));
                }
                args.extend(r.members.iter().cloned());
                out.push(run("mdadm", args));
                out.push(Action::WaitForDevice(r.path.clone()));
                // A re-created array has the old one's data offset, so whatever the old array
                // held (a PV label, a filesystem) shows through unless it is cleared.
                out.push(run("wipefs", ["--all", "--force", r.path.as_str()]));
            }
            Step::CreatePv(pv) => out.push(run("pvcreate", ["--yes", pv.path.as_str()])),
            Step::CreateVg(vg) => {
                let mut args = vec![
                    "--yes".to_owned(),
                    "--physicalextentsize".to_owned(),
                    format!("{}k", vg.extent_size / KIB),
                    vg.name.clone(),
                ];
                args.extend(vg.pvs.iter().map(|p| p.path.clone()));
                out.push(run("vgcreate", args));
            }
            Step::CreateLv(vg, lv) => {
                let extents = if lv.rest {
                    "100%FREE".to_owned()
                } else {
                    lv.extents.to_string()
                };
                out.push(run(
                    "lvcreate",
                    [
                        "--yes",
                        "--wipesignatures",
                        "y",
                        "--name",
                        lv.name.as_str(),
                        "--extents",
                        extents.as_str(),
                        vg.name.as_str(),
                    ],
                ));
                out.push(Action::WaitForDevice(lv.path.clone()));
            }
            Step::Mkfs(fs) => out.push(Action::Run(mkfs(fs))),
            Step::Mount(fs) => {
                let Some(mount) = &fs.mount else { continue };
                let dir = under(target, mount);
                out.push(run("mkdir", ["-p", dir.as_str()]));
                // No options here: fstab options (nofail, x-systemd.*) mean nothing to
                // busybox mount, and the installer needs none.
                out.push(run(
                    "mount",
                    ["-t", fs.kind.as_str(), fs.device.as_str(), dir.as_str()],
                ));
            }
        }
    }
    out
}

/// One sfdisk run per disk: byte units in the script keep it right for 512- and 4096-byte
/// sectors, and sfdisk writes GPT and msdos alike.
fn partition(d: &PlannedDisk, out: &mut Vec<Action>) {
    let table = d.table.unwrap_or(PartitionTable::Gpt);
    out.push(Action::Run(Command {
        program: "sfdisk".into(),
        // Old signatures go (--wipe always); new partitions are wiped below, once their
        // nodes exist, rather than by sfdisk racing devtmpfs.
        args: vec![
            "--wipe".into(),
            "always".into(),
            "--wipe-partitions".into(),
            "never".into(),
            d.path.clone(),
        ],
        stdin: Some(sfdisk_script(d, table)),
    }));
    for p in &d.partitions {
        out.push(Action::WaitForDevice(p.path.clone()));
        out.push(run("wipefs", ["--all", "--force", p.path.as_str()]));
    }
}

/// The sfdisk script for a disk: every start and size in MiB.
pub fn sfdisk_script(d: &PlannedDisk, table: PartitionTable) -> String {
    let mut s = format!(
        "label: {}\n",
        match table {
            PartitionTable::Gpt => "gpt",
            PartitionTable::Msdos => "dos",
        }
    );
    let mib = |b: u64| b >> 20;
    for p in &d.partitions {
        match table {
            PartitionTable::Gpt => s.push_str(&format!(
                "start={}MiB, size={}MiB, type={}, name=\"{}\"\n",
                mib(p.start),
                mib(p.size),
                p.type_guid(),
                p.label
            )),
            PartitionTable::Msdos => s.push_str(&format!(
                "start={}MiB, size={}MiB, type={}\n",
                mib(p.start),
                mib(p.size),
                p.mbr_type()
            )),
        }
    }
    s
}

fn mkfs(fs: &PlannedFs) -> Command {
    let mut args: Vec<String> = Vec::new();
    let label = |flag: &str, args: &mut Vec<String>| {
        if let Some(l) = &fs.label {
            args.push(flag.to_owned());
            args.push(l.clone());
        }
    };
    let program = match fs.kind {
        FsType::Ext4 => {
            // -F: no "proceed anyway?" question on a device that held something.
            args.push("-F".into());
            label("-L", &mut args);
            args.extend(["-U".into(), fs.uuid.clone()]);
            "mkfs.ext4"
        }
        FsType::Xfs => {
            args.push("-f".into());
            label("-L", &mut args);
            args.extend(["-m".into(), format!("uuid={}", fs.uuid)]);
            "mkfs.xfs"
        }
        FsType::Vfat => {
            // FAT32 always: the UEFI specification's ESP format.
            args.extend(["-F".into(), "32".into()]);
            label("-n", &mut args);
            args.extend(["-i".into(), fs.uuid.replace('-', "")]);
            "mkfs.vfat"
        }
        FsType::Swap => {
            label("-L", &mut args);
            args.extend(["-U".into(), fs.uuid.clone()]);
            "mkswap"
        }
    };
    args.extend(fs.mkfs_options.iter().cloned());
    args.push(fs.device.clone());
    Command {
        program: program.into(),
        args,
        stdin: None,
    }
}

/// Devices of the tree that lie on the plan's disks: the disks and everything stacked on
/// them, parents first.
pub(crate) fn in_scope<'t>(tree: &'t BlockTree, plan: &Plan) -> Vec<&'t BlockDevice> {
    tree.devices
        .iter()
        .filter(|d| plan.disks.iter().any(|p| p.path == d.path))
        .flat_map(BlockDevice::walk)
        .collect()
}

/// Whether the plan's disks hold anything (a partition table, a signature, partitions,
/// arrays or volumes), i.e. whether applying the plan destroys data. The agent refuses to go
/// on when this is true and the node may not be wiped.
pub fn teardown_needed(tree: &BlockTree, plan: &Plan) -> bool {
    in_scope(tree, plan)
        .iter()
        .any(|d| !d.children.is_empty() || d.fstype.is_some() || d.pttype.is_some())
        || !teardown_commands(tree, plan).is_empty()
}

/// What to undo before the plan's disks can be reused: unmount, deactivate volume groups,
/// stop arrays, clear signatures on old partitions. The disks themselves are wiped by the
/// plan's first steps. Volume groups and arrays that also span other disks are stopped too
/// (they cannot survive losing these members).
pub fn teardown_commands(tree: &BlockTree, plan: &Plan) -> Vec<Action> {
    let scope = in_scope(tree, plan);
    let inside = |path: &str| scope.iter().any(|d| d.path == path);
    let mut out = Vec::new();

    let scoped: Vec<&str> = scope
        .iter()
        .filter_map(|d| d.mountpoint.as_deref())
        .filter(|m| m.starts_with('/'))
        .collect();
    // A mount below one of ours comes off first even when its device is outside the plan
    // (another disk's ESP on /target/boot/efi2), or ours would be busy.
    let mut mounts: Vec<&str> = tree
        .devices
        .iter()
        .flat_map(BlockDevice::walk)
        .filter_map(|d| d.mountpoint.as_deref())
        .filter(|m| {
            scoped
                .iter()
                .any(|s| m == s || m.strip_prefix(s).is_some_and(|rest| rest.starts_with('/')))
        })
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
    mounts.dedup();
    for m in mounts {
        out.push(run("umount", [m]));
    }

    let mut vgs: Vec<&str> = tree
        .physical_volumes
        .iter()
        .filter(|pv| inside(&pv.path))
        .filter_map(|pv| pv.vg.as_deref())
        .collect();
    vgs.sort_unstable();
    vgs.dedup();
    for vg in vgs {
        out.push(run("vgchange", ["--activate", "n", vg]));
    }

    // Arrays on top of arrays are stopped top first.
    for md in tree.md_arrays.iter().rev() {
        if inside(&md.path) || md.members.iter().any(|m| inside(&m.path)) {
            out.push(run("mdadm", ["--stop", md.path.as_str()]));
        }
    }

    // Signatures on old partitions: a new partition starting at the same offset would
    // otherwise show the old filesystem, PV label or MD superblock.
    let mut parts: Vec<&str> = scope
        .iter()
        .filter(|d| d.kind == "part")
        .map(|d| d.path.as_str())
        .collect();
    parts.sort_unstable();
    parts.dedup();
    for p in parts {
        out.push(run("wipefs", ["--all", "--force", p]));
    }
    out
}

/// `/etc/fstab` for the installed system, by UUID.
pub fn fstab(plan: &Plan) -> String {
    let mut s = String::from(
        "# written by metalcast from the node's layout\n\
         # <file system> <mount point> <type> <options> <dump> <pass>\n",
    );
    let mut entries: Vec<&PlannedFs> = plan.mount_order();
    entries.extend(plan.filesystems.iter().filter(|f| f.kind == FsType::Swap));
    for fs in entries {
        let mut options = fs.options.clone();
        // Mirrored ESPs: a dead disk must not stop the boot.
        if fs.copies > 1 && !options.iter().any(|o| o == "nofail") {
            options.push("nofail".into());
        }
        let options = if options.is_empty() {
            if fs.kind == FsType::Swap {
                "sw".to_owned()
            } else {
                "defaults".to_owned()
            }
        } else {
            options.join(",")
        };
        let mount = fs.mount.as_deref().unwrap_or("none");
        let pass = match (fs.kind, mount) {
            (FsType::Swap | FsType::Xfs, _) => 0,
            (_, "/") => 1,
            _ => 2,
        };
        s.push_str(&format!(
            "{} {mount} {} {options} 0 {pass}\n",
            fs.fstab_source(),
            fs.kind
        ));
    }
    s
}

/// `/etc/mdadm/mdadm.conf` lines for the installed system: arrays by UUID only, so the
/// homehost part of the superblock name (the initramfs' hostname) does not matter.
pub fn mdadm_conf(plan: &Plan) -> String {
    let mut s = String::from("# written by metalcast from the node's layout\n");
    for r in &plan.raids {
        s.push_str(&format!(
            "ARRAY /dev/md/{} metadata={} UUID={}\n",
            r.name,
            r.metadata.as_str(),
            r.uuid
        ));
    }
    s
}

/// The boot loader, once the image is in `target` with its filesystems mounted (and
/// `/dev`, `/proc`, `/sys` bound into it for the chroot). GRUB's configuration file is
/// the image's business (`update-grub`, `grub2-mkconfig`) and comes after.
///
/// Under UEFI GRUB goes into every ESP twice: as `EFI/<id>/grubx64.efi` for its boot entry
/// and at the removable-media path `EFI/BOOT/BOOTX64.EFI`, which firmware finds without an
/// entry. Entries are created with `--create-only`: the network stays first in BootOrder,
/// so the appliance keeps control of the node.
pub fn bootloader_commands(plan: &Plan, target: &str) -> Vec<Action> {
    let mut out = Vec::new();
    match &plan.boot {
        None => {}
        Some(PlannedBoot::Bios { disks }) => {
            for d in disks {
                out.push(run(
                    "chroot",
                    [target, "grub-install", "--target=i386-pc", d.as_str()],
                ));
            }
        }
        Some(PlannedBoot::Uefi { efi_id, esps }) => {
            for esp in esps {
                let dir = format!("--efi-directory={}", esp.mount);
                out.push(run(
                    "chroot",
                    [
                        target,
                        "grub-install",
                        "--target=x86_64-efi",
                        dir.as_str(),
                        &format!("--bootloader-id={efi_id}"),
                        "--no-nvram",
                    ],
                ));
                out.push(run(
                    "chroot",
                    [
                        target,
                        "grub-install",
                        "--target=x86_64-efi",
                        dir.as_str(),
                        "--removable",
                    ],
                ));
            }
            for esp in esps {
                let part = esp.partition.to_string();
                let loader = format!("\\EFI\\{efi_id}\\grubx64.efi");
                out.push(run(
                    "efibootmgr",
                    [
                        "--create-only",
                        "--disk",
                        esp.disk.as_str(),
                        "--part",
                        part.as_str(),
                        "--label",
                        esp.entry_label.as_str(),
                        "--loader",
                        loader.as_str(),
                    ],
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use metalcast_proto::layout::{MdArray, MdMember, PhysicalVolume};
    use metalcast_proto::{Disk, Firmware};

    use super::*;
    use crate::units::GIB;
    use crate::{Layout, plan};

    fn raid1_plan(firmware: Firmware) -> Plan {
        let text = include_str!("../../../layouts/raid1-lvm-uefi.toml");
        let text = if firmware == Firmware::Bios {
            text.replace("firmware = [\"uefi\"]", "firmware = [\"uefi\", \"bios\"]")
                .replace(
                    "[[disk.partition]]\nname = \"esp\"",
                    "[[disk.partition]]\nname = \"grub\"\nsize = \"1MiB\"\ntype = \"bios_boot\"\n\n\
                     [[disk.partition]]\nname = \"esp\"",
                )
        } else {
            text.to_owned()
        };
        let layout = Layout::from_toml(&text).unwrap();
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
        plan(&layout, &disks, firmware, "52:54:00:12:34:56").unwrap()
    }

    /// `single-uefi` on /dev/vda alone.
    fn single_disk_plan() -> Plan {
        let layout = Layout::from_toml(include_str!("../../../layouts/single-uefi.toml")).unwrap();
        let disk = Disk {
            path: "/dev/vda".into(),
            size_bytes: 20 * GIB,
            model: None,
            serial: None,
            rotational: false,
            by_path: None,
        };
        plan(&layout, &[disk], Firmware::Uefi, "52:54:00:12:34:56").unwrap()
    }

    fn lines(actions: &[Action]) -> Vec<String> {
        actions.iter().map(ToString::to_string).collect()
    }

    /// The fixture tree: the raid1 layout already applied and mounted under /target.
    fn applied_tree() -> BlockTree {
        BlockTree {
            devices: crate::report::parse_lsblk(include_str!("../testdata/lsblk-node.json"))
                .unwrap(),
            md_arrays: vec![MdArray {
                path: "/dev/md0".into(),
                level: Some("raid1".into()),
                raid_devices: Some(2),
                metadata: Some("1.2".into()),
                uuid: None,
                name: Some("node1:root".into()),
                members: ["/dev/vda2", "/dev/vdb2"]
                    .iter()
                    .enumerate()
                    .map(|(i, p)| MdMember {
                        path: (*p).into(),
                        role: Some(i as u32),
                    })
                    .collect(),
            }],
            physical_volumes: vec![PhysicalVolume {
                path: "/dev/md0".into(),
                vg: Some("vg0".into()),
                size_bytes: 20 * GIB,
            }],
            volume_groups: vec![],
            logical_volumes: vec![],
        }
    }

    #[test]
    fn create_commands_wait_for_nodes_and_ask_no_questions() {
        let p = raid1_plan(Firmware::Uefi);
        let all = lines(&commands(&p, "/target"));
        let at = |prefix: &str| {
            all.iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` in {all:#?}"))
        };
        assert!(
            at(
                "sfdisk --wipe always --wipe-partitions never /dev/vda <<'EOF'\nlabel: gpt\nstart=1MiB, size=512MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n"
            ) < at("# wait for /dev/vda1")
        );
        assert!(at("# wait for /dev/vda2") < at("wipefs --all --force /dev/vda2"));
        let mdadm = at(
            "mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --name=system --uuid=",
        );
        assert!(all[mdadm].ends_with(" /dev/vda2 /dev/vdb2"));
        assert_eq!(all[mdadm + 1], "# wait for /dev/md0");
        assert_eq!(all[mdadm + 2], "wipefs --all --force /dev/md0");
        assert!(
            at("pvcreate --yes /dev/md0")
                < at("vgcreate --yes --physicalextentsize 4096k vg0 /dev/md0")
        );
        assert_eq!(
            all[at("lvcreate --yes --wipesignatures y --name root --extents 2048 vg0") + 1],
            "# wait for /dev/vg0/root"
        );
        // The rest volume last, taking every free extent.
        assert!(
            at("lvcreate --yes --wipesignatures y --name var --extents 100%FREE vg0")
                > at("lvcreate --yes --wipesignatures y --name swap")
        );
        assert!(at("mkfs.vfat -F 32 -n ESP -i ") < at("mkfs.ext4 -F -L root -U "));
        assert!(at("mkswap -L swap -U ") > 0);
        assert!(at("mkfs.xfs -f -L var -m uuid=") > 0);
        let root = at("mount -t ext4 /dev/vg0/root /target");
        assert_eq!(all[root - 1], "mkdir -p /target");
        assert!(root < at("mount -t xfs /dev/vg0/var /target/var"));
        assert!(root < at("mount -t vfat /dev/vdb1 /target/boot/efi2"));
    }

    #[test]
    fn teardown_undoes_the_old_layout_top_down() {
        let p = raid1_plan(Firmware::Uefi);
        let tree = applied_tree();
        assert!(teardown_needed(&tree, &p));
        assert_eq!(
            lines(&teardown_commands(&tree, &p)),
            [
                "umount /target/boot/efi",
                "umount /target",
                "vgchange --activate n vg0",
                "mdadm --stop /dev/md0",
                "wipefs --all --force /dev/vda1",
                "wipefs --all --force /dev/vda2",
                "wipefs --all --force /dev/vdb1",
                "wipefs --all --force /dev/vdb2",
            ]
        );
    }

    /// Regression: a second layout in the same boot, on vda alone, failed at `umount /target`
    /// because vdb1 (outside the new plan) was still mounted on /target/boot/efi2.
    #[test]
    fn teardown_unmounts_what_other_disks_mounted_below_ours() {
        let p = single_disk_plan();
        let mut tree = applied_tree();
        let vdb = tree
            .devices
            .iter_mut()
            .find(|d| d.path == "/dev/vdb")
            .unwrap();
        vdb.children[0].mountpoint = Some("/target/boot/efi2".into());
        let all = lines(&teardown_commands(&tree, &p));
        let at = |line: &str| {
            all.iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("{all:#?}"))
        };
        assert!(at("umount /target/boot/efi2") < at("umount /target"));
    }

    #[test]
    fn blank_disks_and_other_disks_need_no_teardown() {
        let p = raid1_plan(Firmware::Uefi);
        let blank = |path: &str| BlockDevice {
            name: path.trim_start_matches("/dev/").into(),
            path: path.into(),
            size_bytes: 20 * GIB,
            kind: "disk".into(),
            fstype: None,
            pttype: None,
            label: None,
            uuid: None,
            partlabel: None,
            mountpoint: None,
            children: vec![],
        };
        let mut other = blank("/dev/vdc");
        other.pttype = Some("gpt".into());
        other.mountpoint = Some("/data".into());
        let tree = BlockTree {
            devices: vec![blank("/dev/vda"), blank("/dev/vdb"), other],
            ..BlockTree::default()
        };
        assert!(!teardown_needed(&tree, &p));
        assert!(teardown_commands(&tree, &p).is_empty());
        let mut signed = tree.clone();
        signed.devices[1].fstype = Some("linux_raid_member".into());
        assert!(teardown_needed(&signed, &p));
    }

    #[test]
    fn fstab_by_uuid_with_mirrored_esps_optional() {
        let p = raid1_plan(Firmware::Uefi);
        let fstab = fstab(&p);
        let entries: Vec<Vec<&str>> = fstab
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(' ').collect())
            .collect();
        let mounts: Vec<(&str, &str, &str, &str)> =
            entries.iter().map(|e| (e[1], e[2], e[3], e[5])).collect();
        assert_eq!(
            mounts,
            [
                ("/", "ext4", "errors=remount-ro", "1"),
                ("/var", "xfs", "defaults", "0"),
                ("/boot/efi", "vfat", "umask=0077,nofail", "2"),
                ("/boot/efi2", "vfat", "umask=0077,nofail", "2"),
                ("none", "swap", "sw", "0"),
            ]
        );
        let root = p
            .filesystems
            .iter()
            .find(|f| f.mount.as_deref() == Some("/"))
            .unwrap();
        assert_eq!(entries[0][0], format!("UUID={}", root.uuid));
    }

    #[test]
    fn mdadm_conf_names_arrays_by_uuid() {
        let p = raid1_plan(Firmware::Uefi);
        let conf = mdadm_conf(&p);
        assert_eq!(
            conf.lines().nth(1).unwrap(),
            format!("ARRAY /dev/md/system metadata=1.2 UUID={}", p.raids[0].uuid)
        );
    }

    #[test]
    fn uefi_boot_loader_on_every_esp_with_its_own_entry() {
        let p = raid1_plan(Firmware::Uefi);
        assert_eq!(
            lines(&bootloader_commands(&p, "/target")),
            [
                "chroot /target grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=metalcast --no-nvram",
                "chroot /target grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable",
                "chroot /target grub-install --target=x86_64-efi --efi-directory=/boot/efi2 --bootloader-id=metalcast --no-nvram",
                "chroot /target grub-install --target=x86_64-efi --efi-directory=/boot/efi2 --removable",
                r"efibootmgr --create-only --disk /dev/vda --part 1 --label 'metalcast vda' --loader '\EFI\metalcast\grubx64.efi'",
                r"efibootmgr --create-only --disk /dev/vdb --part 1 --label 'metalcast vdb' --loader '\EFI\metalcast\grubx64.efi'",
            ]
        );
    }

    #[test]
    fn bios_boot_loader_on_every_disk() {
        let p = raid1_plan(Firmware::Bios);
        assert_eq!(
            lines(&bootloader_commands(&p, "/target")),
            [
                "chroot /target grub-install --target=i386-pc /dev/vda",
                "chroot /target grub-install --target=i386-pc /dev/vdb",
            ]
        );
    }

    #[test]
    fn display_quotes_for_a_shell() {
        let c = Command::new("echo", ["plain", "two words", "it's", ""]);
        assert_eq!(c.to_string(), r"echo plain 'two words' 'it'\''s' ''");
        assert_eq!(under("/target", "/"), "/target");
        assert_eq!(under("/target/", "/boot"), "/target/boot");
        assert_eq!(under("/", "/"), "/");
    }

    #[test]
    fn dry_run_lists_what_goes_and_what_comes() {
        let p = raid1_plan(Firmware::Uefi);
        let text = crate::dry_run(&p, Some(&applied_tree()));
        for line in [
            "- /dev/vda disk 20 GiB table gpt",
            "- /dev/vda1 part 512 MiB vfat LABEL=ESP PARTLABEL=esp (mounted at /target/boot/efi)",
            "- array /dev/md0 raid1 node1:root",
            "- volume group vg0",
            "+ /dev/vda gpt table",
            "+ /dev/vda2 raid 19.50 GiB at 513 MiB \"pv\"",
            "+ volume group vg0 on /dev/md0",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "no `{line}` in\n{text}"
            );
        }
        let fresh = crate::dry_run(&p, None);
        assert!(fresh.lines().all(|l| l.starts_with('+')), "{fresh}");
    }
}
