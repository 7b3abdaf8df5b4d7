//! Whole disks from /sys/block, with the by-path name udev's `path_id` would give them.

use metalcast_proto::Disk;

/// What /sys says about one block device, as raw text. Absent attributes are `None`.
#[derive(Debug, Default, Clone)]
pub struct SysBlock {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// `size`: in 512-byte sectors whatever the logical block size.
    pub size: Option<String>,
    /// `device/model`.
    pub model: Option<String>,
    /// `serial` (virtio) or `device/serial` (NVMe, some SCSI).
    pub serial: Option<String>,
    /// `queue/rotational`.
    pub rotational: Option<String>,
    /// Canonical sysfs path of the disk, e.g.
    /// `/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda`. For an NVMe multipath head,
    /// the path of its first controller's namespace path device instead, as udev uses.
    pub devpath: Option<String>,
    /// `nsid` of an NVMe namespace.
    pub nsid: Option<String>,
    /// `port_no` of the libata port (`/sys/class/ata_port/ataN/port_no`) the disk hangs off.
    pub ata_port_no: Option<String>,
    /// Lowest N among the `hostN` entries beside the disk's SCSI host: udev numbers SCSI hosts
    /// relative to their controller.
    pub scsi_host_base: Option<u32>,
}

/// Kernel names of block devices that are not disks to install on: loop, RAM disks,
/// optical drives, floppies, and devices built from other disks (MD, device-mapper, NBD).
pub fn is_disk_name(name: &str) -> bool {
    const SKIP: [&str; 8] = ["loop", "ram", "zram", "sr", "md", "dm-", "nbd", "fd"];
    !name.is_empty() && !SKIP.iter().any(|p| name.starts_with(p))
}

/// The disk report for one device, or `None` when it is not a disk to report (excluded by
/// name, or no medium: size missing or zero).
pub fn to_disk(raw: &SysBlock) -> Option<Disk> {
    if !is_disk_name(&raw.name) {
        return None;
    }
    let sectors: u64 = raw.size.as_deref()?.trim().parse().ok()?;
    let size_bytes = sectors.checked_mul(512)?;
    if size_bytes == 0 {
        return None;
    }
    let by_path = raw.devpath.as_deref().and_then(|p| {
        by_path(
            p,
            raw.nsid.as_deref(),
            raw.ata_port_no.as_deref(),
            raw.scsi_host_base,
        )
    });
    Some(Disk {
        path: format!("/dev/{}", raw.name),
        size_bytes,
        model: clean(raw.model.as_deref()),
        serial: clean(raw.serial.as_deref()),
        // Unknown counts as rotational: the cautious guess for placement rules.
        rotational: raw.rotational.as_deref().is_none_or(|r| r.trim() != "0"),
        by_path,
    })
}

fn clean(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The `/dev/disk/by-path/` name udev's `path_id` builtin gives a disk at `devpath`, for
/// disks behind a PCI function reached over virtio-blk, NVMe, libata, USB storage or plain
/// SCSI (virtio-scsi, HBAs in SCSI mode). `None` for other transports (SAS, FC, iSCSI, …),
/// where udev uses addresses we do not compute: better no name than a wrong one.
pub fn by_path(
    devpath: &str,
    nsid: Option<&str>,
    ata_port_no: Option<&str>,
    scsi_host_base: Option<u32>,
) -> Option<String> {
    let segments: Vec<&str> = devpath
        .trim_start_matches("/sys/devices/")
        .split('/')
        .collect();
    // udev walks up from the disk and names only the first PCI function it meets.
    let pci = segments.iter().rposition(|s| is_pci_address(s))?;
    let below = &segments[pci + 1..];
    if below.iter().any(|s| {
        s.starts_with("end_device-") || s.starts_with("rport-") || s.starts_with("session")
    }) {
        return None;
    }

    let mut parts = vec![format!("pci-{}", segments[pci])];
    if let Some(usb) = below.iter().find_map(|s| usb_interface_port(s)) {
        parts.push(format!("usb-0:{usb}"));
    }
    if let Some((host, bus, target, lun)) = below.iter().find_map(|s| scsi_address(s)) {
        if below.iter().any(|s| is_numbered(s, "ata")) {
            let port: u32 = ata_port_no?.trim().parse().ok()?;
            // Devices behind a port multiplier have a bus number; master/slave a target.
            parts.push(if bus != 0 {
                format!("ata-{port}.{bus}.0")
            } else {
                format!("ata-{port}.{target}")
            });
        } else {
            let base = scsi_host_base.unwrap_or(host);
            let host = host.checked_sub(base)?;
            parts.push(format!("scsi-{host}:{bus}:{target}:{lun}"));
        }
    } else if below.first() == Some(&"nvme") {
        let nsid: u32 = nsid?.trim().parse().ok()?;
        parts.push(format!("nvme-{nsid}"));
    } else if !below.first().is_some_and(|s| is_numbered(s, "virtio")) {
        return None;
    }
    Some(parts.join("-"))
}

/// `0000:00:1f.2`: domain:bus:device.function in hex.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && hex(11..12)
}

/// `virtio3`, `ata1`: a prefix followed by digits only.
fn is_numbered(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

/// `2:0:1:0` → (host, bus/channel, target, lun).
fn scsi_address(s: &str) -> Option<(u32, u32, u32, u64)> {
    let mut it = s.split(':');
    let addr = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    it.next().is_none().then_some(addr)
}

/// A USB interface `1-1.2:1.0` → its port part after the bus number, `1.2:1.0`.
fn usb_interface_port(s: &str) -> Option<&str> {
    let (bus, rest) = s.split_once('-')?;
    let (ports, config) = rest.split_once(':')?;
    let digits_and =
        |t: &str, extra: u8| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit() || c == extra);
    (digits_and(bus, b'0') && digits_and(ports, b'.') && digits_and(config, b'.')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, devpath: &str) -> SysBlock {
        SysBlock {
            name: name.to_string(),
            size: Some("2097152\n".to_string()),
            model: None,
            serial: None,
            rotational: Some("1\n".to_string()),
            devpath: Some(devpath.to_string()),
            nsid: None,
            ata_port_no: None,
            scsi_host_base: None,
        }
    }

    #[test]
    fn virtio_blk_disk() {
        let mut r = raw(
            "vda",
            "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
        );
        r.serial = Some("  disk-one \n".to_string());
        let d = to_disk(&r).unwrap();
        assert_eq!(d.path, "/dev/vda");
        assert_eq!(d.size_bytes, 1 << 30);
        assert_eq!(d.serial.as_deref(), Some("disk-one"));
        assert_eq!(d.model, None);
        assert!(d.rotational);
        assert_eq!(d.by_path.as_deref(), Some("pci-0000:00:04.0"));
    }

    #[test]
    fn virtio_disk_behind_a_pcie_root_port_names_the_inner_function() {
        let p = "/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/virtio2/block/vdb";
        assert_eq!(
            by_path(p, None, None, None).as_deref(),
            Some("pci-0000:01:00.0")
        );
    }

    #[test]
    fn nvme_namespace() {
        let p = "/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1";
        assert_eq!(
            by_path(p, Some("1\n"), None, None).as_deref(),
            Some("pci-0000:00:05.0-nvme-1")
        );
        // The multipath head's path device, as the reader resolves it.
        let p = "/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0c0n2";
        assert_eq!(
            by_path(p, Some("2"), None, None).as_deref(),
            Some("pci-0000:00:05.0-nvme-2")
        );
        assert_eq!(by_path(p, None, None, None), None);
    }

    #[test]
    fn sata_disk_on_ahci() {
        let p = "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda";
        assert_eq!(
            by_path(p, None, Some("3\n"), Some(0)).as_deref(),
            Some("pci-0000:00:1f.2-ata-3.0")
        );
        // Behind a port multiplier the bus number shows.
        let p = "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:1:0/2:1:0:0/block/sdb";
        assert_eq!(
            by_path(p, None, Some("3"), Some(0)).as_deref(),
            Some("pci-0000:00:1f.2-ata-3.1.0")
        );
        // No port number read: no name rather than a guess.
        assert_eq!(by_path(p, None, None, Some(0)), None);
    }

    #[test]
    fn ide_slave_on_piix() {
        let p = "/sys/devices/pci0000:00/0000:00:01.1/ata1/host0/target0:0:1/0:0:1:0/block/sdb";
        assert_eq!(
            by_path(p, None, Some("1"), None).as_deref(),
            Some("pci-0000:00:01.1-ata-1.1")
        );
    }

    #[test]
    fn virtio_scsi_numbers_hosts_relative_to_the_controller() {
        let p = "/sys/devices/pci0000:00/0000:00:06.0/virtio3/host4/target4:0:2/4:0:2:3/block/sdc";
        assert_eq!(
            by_path(p, None, None, Some(4)).as_deref(),
            Some("pci-0000:00:06.0-scsi-0:0:2:3")
        );
        assert_eq!(
            by_path(p, None, None, None).as_deref(),
            Some("pci-0000:00:06.0-scsi-0:0:2:3")
        );
        // A base above the host number is inconsistent sysfs: no name.
        assert_eq!(by_path(p, None, None, Some(5)), None);
    }

    #[test]
    fn usb_storage() {
        let p = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host6/target6:0:0/6:0:0:0/block/sdd";
        assert_eq!(
            by_path(p, None, None, Some(6)).as_deref(),
            Some("pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0")
        );
    }

    #[test]
    fn unsupported_transports_have_no_name() {
        let sas = "/sys/devices/pci0000:00/0000:03:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sda";
        assert_eq!(by_path(sas, None, None, Some(0)), None);
        assert_eq!(
            by_path("/sys/devices/virtual/block/loop0", None, None, None),
            None
        );
        assert_eq!(
            by_path("/sys/devices/platform/host0/block/sda", None, None, None),
            None
        );
        assert_eq!(
            by_path(
                "/sys/devices/pci0000:00/0000:00:07.0/mmc_host/mmc0/block/mmcblk0",
                None,
                None,
                None
            ),
            None
        );
        assert_eq!(by_path("", None, None, None), None);
    }

    #[test]
    fn skips_pseudo_devices_and_empty_media() {
        for name in [
            "loop0", "ram0", "zram0", "sr0", "md127", "dm-0", "nbd0", "fd0",
        ] {
            assert!(
                to_disk(&raw(name, "/sys/devices/virtual/block/x")).is_none(),
                "{name}"
            );
        }
        let mut r = raw(
            "sda",
            "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
        );
        r.size = Some("0\n".to_string());
        assert!(to_disk(&r).is_none());
        r.size = Some("garbage".to_string());
        assert!(to_disk(&r).is_none());
        r.size = None;
        assert!(to_disk(&r).is_none());
        r.size = Some(u64::MAX.to_string());
        assert!(
            to_disk(&r).is_none(),
            "overflowing sizes are refused, not wrapped"
        );
    }

    #[test]
    fn ssd_model_and_blank_values() {
        let mut r = raw(
            "nvme0n1",
            "/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1",
        );
        r.rotational = Some("0\n".to_string());
        r.model = Some("QEMU NVMe Ctrl                          \n".to_string());
        r.serial = Some("   \n".to_string());
        r.nsid = Some("1".to_string());
        let d = to_disk(&r).unwrap();
        assert!(!d.rotational);
        assert_eq!(d.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(d.serial, None);
        assert_eq!(d.by_path.as_deref(), Some("pci-0000:00:05.0-nvme-1"));
    }

    #[test]
    fn pci_address_shape() {
        assert!(is_pci_address("0000:00:1f.2"));
        assert!(is_pci_address("10de:af:00.7"));
        assert!(!is_pci_address("pci0000:00"));
        assert!(!is_pci_address("0000:00:1f"));
        assert!(!is_pci_address("0000:0g:1f.2"));
        assert!(!is_pci_address("0000:00:1f.2x"));
    }
}
