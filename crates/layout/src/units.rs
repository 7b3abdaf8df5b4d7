//! Byte arithmetic, human-readable sizes and the deterministic identifiers of a plan.

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

pub fn floor_to(value: u64, unit: u64) -> u64 {
    value / unit * unit
}

/// `None` when rounding up overflows.
pub fn ceil_to(value: u64, unit: u64) -> Option<u64> {
    value.div_ceil(unit).checked_mul(unit)
}

/// `percent`% of `total`, rounded down to `unit`.
pub fn percent_of(total: u64, percent: u8, unit: u64) -> u64 {
    let exact = u128::from(total) * u128::from(percent) / 100;
    // At most `total`, so it fits.
    floor_to(u64::try_from(exact).unwrap_or(total), unit)
}

/// `20 GiB`, `512 MiB`, `19.48 GiB`: exact when a binary unit divides the value, else two
/// decimals.
pub fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.2} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// 16 bytes derived from the caller's seed (the node) and what they name, so re-planning
/// the same layout for the same node yields the same identifiers.
fn derive(seed: &str, what: &str) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new_derive_key("metalcast layout identifiers v1");
    // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
    hasher.update(&(seed.len() as u64).to_le_bytes());
    hasher.update(seed.as_bytes());
    hasher.update(what.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// An RFC 9562 version 8 (custom) UUID, `xxxxxxxx-xxxx-8xxx-yxxx-xxxxxxxxxxxx`.
pub fn derived_uuid(seed: &str, what: &str) -> String {
    let mut b = derive(seed, what);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A FAT volume ID as `blkid` and fstab show it: `1A2B-3C4D`.
pub fn derived_vfat_id(seed: &str, what: &str) -> String {
    let hex = hex(&derive(seed, what)[..4]).to_uppercase();
    format!("{}-{}", &hex[..4], &hex[4..])
}

/// An MD array UUID as mdadm writes it: `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`.
pub fn derived_md_uuid(seed: &str, what: &str) -> String {
    let hex = hex(&derive(seed, what));
    format!(
        "{}:{}:{}:{}",
        &hex[0..8],
        &hex[8..16],
        &hex[16..24],
        &hex[24..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(floor_to(3 * MIB - 1, MIB), 2 * MIB);
        assert_eq!(ceil_to(2 * MIB + 1, MIB), Some(3 * MIB));
        assert_eq!(ceil_to(u64::MAX, MIB), None);
        assert_eq!(percent_of(100 * MIB, 50, MIB), 50 * MIB);
        assert_eq!(percent_of(3 * MIB, 50, MIB), MIB);
        assert_eq!(percent_of(u64::MAX, 100, 1), u64::MAX);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(20 * GIB), "20 GiB");
        assert_eq!(human(513 * MIB), "513 MiB");
        assert_eq!(human(GIB + GIB / 2), "1.50 GiB");
        assert_eq!(human(100), "100 B");
    }

    #[test]
    fn identifiers_are_stable_per_seed_and_name() {
        let a = derived_uuid("52:54:00:12:34:56", "fs vg0/root");
        assert_eq!(a, derived_uuid("52:54:00:12:34:56", "fs vg0/root"));
        assert_ne!(a, derived_uuid("52:54:00:12:34:57", "fs vg0/root"));
        assert_ne!(a, derived_uuid("52:54:00:12:34:56", "fs vg0/var"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "variant: {a}");
        let id = derived_vfat_id("s", "esp");
        assert_eq!(id.len(), 9);
        assert_eq!(&id[4..5], "-");
        let md = derived_md_uuid("s", "raid root");
        assert_eq!(md.split(':').count(), 4);
        assert_eq!(md.len(), 35);
    }
}
