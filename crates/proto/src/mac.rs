use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet MAC address. Displays as lowercase `aa:bb:cc:dd:ee:ff`; parses that form,
/// the `-` separated form, and iPXE's `${mac:hexhyp}` form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex octets like 52:54:00:12:34:56")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The MAC as a number (`0x5254_0012_3456`): a node's receiver id in multicast sessions,
    /// so the appliance knows which node each status comes from.
    pub fn to_u64(&self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes[2..].copy_from_slice(&self.0);
        u64::from_be_bytes(bytes)
    }

    pub fn from_u64(id: u64) -> Option<MacAddr> {
        let bytes = id.to_be_bytes();
        (bytes[..2] == [0, 0]).then(|| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&bytes[2..]);
            MacAddr(mac)
        })
    }

    /// `52-54-00-12-34-56`, safe in file names and URLs.
    pub fn to_hyphenated(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_round_trip() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(mac.to_u64(), 0x5254_0012_3456);
        assert_eq!(MacAddr::from_u64(mac.to_u64()), Some(mac));
        assert_eq!(MacAddr::from_u64(1 << 48), None);
    }

    #[test]
    fn parses_both_separators_and_displays_lowercase() {
        let a: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        let b: MacAddr = "52-54-00-ab-cd-0f".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(a.to_hyphenated(), "52-54-00-ab-cd-0f");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "zz:54:00:ab:cd:0f",
            "525:4:00:ab:cd:0f",
            "52::00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let a: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(j, "\"52:54:00:00:00:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), a);
    }
}
