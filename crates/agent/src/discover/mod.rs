//! What the node is made of: thin readers over /sys and /proc that feed the pure parsers in
//! the submodules. Nothing here fails: an unreadable attribute is an absent value.

pub mod disks;
pub mod nics;
pub mod system;

use std::fs;
use std::path::{Path, PathBuf};

use metalcast_proto::{Firmware, Hardware};

use disks::SysBlock;
use nics::SysNet;

/// Everything the registration reports.
pub fn hardware() -> Hardware {
    let firmware = if Path::new("/sys/firmware/efi").exists() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let dmi_attr = |name: &str| read(Path::new("/sys/class/dmi/id").join(name));
    Hardware {
        firmware,
        cpu: system::cpu(&read("/proc/cpuinfo").unwrap_or_default()),
        memory_bytes: read("/proc/meminfo")
            .and_then(|m| system::mem_total_bytes(&m))
            .unwrap_or(0),
        disks: read_disks(),
        nics: read_nics(),
        dmi: system::dmi(
            dmi_attr("product_uuid").as_deref(),
            dmi_attr("sys_vendor").as_deref(),
            dmi_attr("product_name").as_deref(),
            dmi_attr("product_serial").as_deref(),
        ),
    }
}

/// Seconds since the kernel started, when /proc/uptime says.
pub fn uptime() -> Option<f64> {
    read("/proc/uptime").and_then(|u| system::uptime_secs(&u))
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Entry names of a directory, sorted; empty when it cannot be read.
fn names(dir: impl AsRef<Path>) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn read_disks() -> Vec<metalcast_proto::Disk> {
    let mut names: Vec<String> = names("/sys/block")
        .into_iter()
        .filter(|n| disks::is_disk_name(n))
        .collect();
    // sda … sdz before sdaa, vda before vdb: length first, then name.
    names.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    names
        .iter()
        .filter_map(|n| disks::to_disk(&read_sys_block(n)))
        .collect()
}

fn read_sys_block(name: &str) -> SysBlock {
    let dir = Path::new("/sys/block").join(name);
    let attr = |rel: &str| read(dir.join(rel));
    let mut devpath = fs::canonicalize(&dir).ok();
    // An NVMe multipath head lives under /sys/devices/virtual; udev names it after the
    // namespace path device of its first controller, which its `multipath` directory links to.
    if devpath
        .as_ref()
        .is_some_and(|p| p.to_string_lossy().contains("/nvme-subsystem/"))
    {
        devpath = names(dir.join("multipath"))
            .first()
            .and_then(|first| fs::canonicalize(dir.join("multipath").join(first)).ok());
    }
    let devpath_text = devpath.as_ref().map(|p| p.to_string_lossy().into_owned());
    SysBlock {
        name: name.to_string(),
        size: attr("size"),
        model: attr("device/model"),
        serial: attr("serial").or_else(|| attr("device/serial")),
        rotational: attr("queue/rotational"),
        nsid: attr("nsid"),
        ata_port_no: devpath.as_deref().and_then(ata_port_no),
        scsi_host_base: devpath.as_deref().and_then(scsi_host_base),
        devpath: devpath_text,
    }
}

/// `port_no` of the `ataN` component of a disk's sysfs path.
fn ata_port_no(devpath: &Path) -> Option<String> {
    let port = devpath.components().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        s.strip_prefix("ata")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|_| s.to_string())
    })?;
    read(Path::new("/sys/class/ata_port").join(port).join("port_no"))
}

/// The lowest `hostN` beside the disk's SCSI host in its parent directory.
fn scsi_host_base(devpath: &Path) -> Option<u32> {
    let host_dir: PathBuf = devpath
        .ancestors()
        .find(|p| host_number(p).is_some())?
        .to_path_buf();
    let parent = host_dir.parent()?;
    names(parent)
        .iter()
        .filter_map(|n| n.strip_prefix("host")?.parse::<u32>().ok())
        .min()
}

fn host_number(p: &Path) -> Option<u32> {
    p.file_name()?.to_str()?.strip_prefix("host")?.parse().ok()
}

fn read_nics() -> Vec<metalcast_proto::Nic> {
    names("/sys/class/net")
        .into_iter()
        .filter_map(|name| {
            let dir = Path::new("/sys/class/net").join(&name);
            let driver = fs::read_link(dir.join("device/driver"))
                .ok()
                .and_then(|l| l.file_name().map(|f| f.to_string_lossy().into_owned()));
            nics::to_nic(&SysNet {
                address: read(dir.join("address")),
                speed: read(dir.join("speed")),
                has_device: dir.join("device").exists(),
                driver,
                name,
            })
        })
        .collect()
}
