//! Memory, CPUs, uptime and DMI identity from /proc and /sys text.

use metalcast_proto::{Cpu, Dmi};

/// `MemTotal` from /proc/meminfo, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let rest = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = rest.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    // The kernel always prints kB (KiB); anything else is not a meminfo we understand.
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// Logical CPU count and the first model name from /proc/cpuinfo.
pub fn cpu(cpuinfo: &str) -> Cpu {
    let field = |line: &str, key: &str| -> Option<String> {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    };
    let count = cpuinfo
        .lines()
        .filter(|l| field(l, "processor").is_some())
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| field(l, "model name"))
        .filter(|m| !m.is_empty());
    Cpu {
        count: u32::try_from(count).unwrap_or(u32::MAX),
        model,
    }
}

/// Seconds since boot, the first number of /proc/uptime.
pub fn uptime_secs(uptime: &str) -> Option<f64> {
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// DMI identity from the raw contents of /sys/class/dmi/id/{product_uuid, sys_vendor,
/// product_name, product_serial}. Blank values are absent.
pub fn dmi(
    uuid: Option<&str>,
    vendor: Option<&str>,
    product: Option<&str>,
    serial: Option<&str>,
) -> Dmi {
    let clean = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Dmi {
        // Firmware prints the UUID in either case; one spelling keeps lookups simple.
        system_uuid: clean(uuid).map(|u| u.to_ascii_lowercase()),
        vendor: clean(vendor),
        product: clean(product),
        serial: clean(serial),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str =
        "MemTotal:        1004584 kB\nMemFree:          912312 kB\nMemAvailable:     890000 kB\n";

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: fpu\n\n\
                           processor\t: 1\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU Virtual CPU version 2.5+\n\n";

    #[test]
    fn memory_in_bytes() {
        assert_eq!(mem_total_bytes(MEMINFO), Some(1_004_584 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: 100\n"), None);
        assert_eq!(mem_total_bytes(""), None);
    }

    #[test]
    fn cpus_and_model() {
        let c = cpu(CPUINFO);
        assert_eq!(c.count, 2);
        assert_eq!(c.model.as_deref(), Some("QEMU Virtual CPU version 2.5+"));
        let c = cpu("");
        assert_eq!(c.count, 0);
        assert_eq!(c.model, None);
    }

    #[test]
    fn uptime() {
        assert_eq!(uptime_secs("12.34 20.01\n"), Some(12.34));
        assert_eq!(uptime_secs(""), None);
        assert_eq!(uptime_secs("nan 1"), None);
        assert_eq!(uptime_secs("-1 1"), None);
    }

    #[test]
    fn dmi_trims_and_drops_blanks() {
        let d = dmi(
            Some("ABCDEF01-2345-6789-ABCD-EF0123456789\n"),
            Some("QEMU\n"),
            Some("Standard PC (Q35 + ICH9, 2009)\n"),
            Some("\n"),
        );
        assert_eq!(
            d.system_uuid.as_deref(),
            Some("abcdef01-2345-6789-abcd-ef0123456789")
        );
        assert_eq!(d.vendor.as_deref(), Some("QEMU"));
        assert_eq!(d.product.as_deref(), Some("Standard PC (Q35 + ICH9, 2009)"));
        assert_eq!(d.serial, None);
        assert_eq!(dmi(None, None, None, None), Dmi::default());
    }
}
