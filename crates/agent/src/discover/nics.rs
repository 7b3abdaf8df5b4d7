//! Network interfaces from /sys/class/net.

use metalcast_proto::{MacAddr, Nic};

/// What /sys says about one interface, as raw text.
#[derive(Debug, Default, Clone)]
pub struct SysNet {
    pub name: String,
    /// `address`.
    pub address: Option<String>,
    /// Last component of the `device/driver` link, e.g. `virtio_net`.
    pub driver: Option<String>,
    /// `speed` in Mbit/s; -1 or unreadable while the link is down.
    pub speed: Option<String>,
    /// Whether `device` exists: hardware, not a bridge, bond, tunnel or loopback.
    pub has_device: bool,
}

/// The NIC report for a hardware interface with a usable Ethernet address, else `None`.
pub fn to_nic(raw: &SysNet) -> Option<Nic> {
    if raw.name == "lo" || !raw.has_device {
        return None;
    }
    let mac: MacAddr = raw.address.as_deref()?.trim().parse().ok()?;
    let speed_mbps = raw
        .speed
        .as_deref()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|s| *s > 0)
        .and_then(|s| u32::try_from(s).ok());
    Some(Nic {
        name: raw.name.clone(),
        mac,
        driver: raw
            .driver
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        speed_mbps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str) -> SysNet {
        SysNet {
            name: name.to_string(),
            address: Some("52:54:00:12:34:56\n".to_string()),
            driver: Some("virtio_net".to_string()),
            speed: Some("-1\n".to_string()),
            has_device: true,
        }
    }

    #[test]
    fn hardware_nic_with_link_down() {
        let n = to_nic(&raw("eth0")).unwrap();
        assert_eq!(n.name, "eth0");
        assert_eq!(n.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(n.driver.as_deref(), Some("virtio_net"));
        assert_eq!(n.speed_mbps, None);
    }

    #[test]
    fn speed_when_the_driver_reports_it() {
        let mut r = raw("eno1");
        r.speed = Some("10000\n".to_string());
        assert_eq!(to_nic(&r).unwrap().speed_mbps, Some(10_000));
        r.speed = Some("99999999999".to_string());
        assert_eq!(to_nic(&r).unwrap().speed_mbps, None);
        r.speed = None;
        assert_eq!(to_nic(&r).unwrap().speed_mbps, None);
    }

    #[test]
    fn skips_loopback_virtual_and_non_ethernet() {
        assert!(to_nic(&raw("lo")).is_none());
        let mut r = raw("br0");
        r.has_device = false;
        assert!(to_nic(&r).is_none());
        let mut r = raw("ib0");
        r.address = Some("80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:00:00:01".to_string());
        assert!(to_nic(&r).is_none());
        let mut r = raw("eth1");
        r.address = None;
        assert!(to_nic(&r).is_none());
    }
}
