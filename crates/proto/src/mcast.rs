//! Multicast session descriptions the appliance hands to receivers (docs/multicast.md).
//!
//! The description comes over the authenticated HTTP API, so it is what a receiver trusts:
//! the session id to accept, the manifest hash every packet must carry, and where to fetch the
//! block list (the per-block BLAKE3 hashes) that decides which bytes are accepted.

use std::fmt;
use std::net::SocketAddrV4;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A session id: random, non-zero, never reused. Written as 16 hex digits, since JSON
/// numbers lose precision past 2^53 in many clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum McastParseError {
    #[error("session id must be 1 to 16 hex digits, not zero")]
    SessionId,
    #[error("hash must be 64 hex digits")]
    Hash,
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = McastParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(McastParseError::SessionId);
        }
        match u64::from_str_radix(s, 16) {
            Ok(0) | Err(_) => Err(McastParseError::SessionId),
            Ok(v) => Ok(SessionId(v)),
        }
    }
}

/// BLAKE3 of a payload's block list: the manifest hash every packet of the session carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ManifestHash(pub [u8; 32]);

impl fmt::Display for ManifestHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for ManifestHash {
    type Err = McastParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        // `from_str_radix` would take a leading '+'.
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(McastParseError::Hash);
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| McastParseError::Hash)?;
            *o = u8::from_str_radix(digits, 16).map_err(|_| McastParseError::Hash)?;
        }
        Ok(ManifestHash(out))
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_string!(SessionId);
serde_as_string!(ManifestHash);

/// What a node needs to join a multicast session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct McastSession {
    pub id: SessionId,
    /// IPv4 multicast group and UDP port, e.g. `239.77.0.1:5000`.
    pub group: SocketAddrV4,
    pub manifest_hash: ManifestHash,
    /// Payload length in bytes.
    pub length: u64,
    pub block_size: u32,
    /// API path of the block list (text form, docs/multicast.md); its BLAKE3 must be
    /// `manifest_hash`.
    pub block_list: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_round_trips_through_json_with_hex_ids() {
        let s = McastSession {
            id: SessionId(0x00ab_cdef_0123_4567),
            group: "239.77.0.1:5000".parse().unwrap(),
            manifest_hash: ManifestHash([0x5a; 32]),
            length: 1 << 30,
            block_size: 1 << 20,
            block_list: "/api/v1/mcast/sessions/00abcdef01234567/blocks".into(),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""id":"00abcdef01234567""#), "{json}");
        assert!(json.contains(&"5a".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<McastSession>(&json).unwrap(), s);
    }

    #[test]
    fn bad_ids_and_hashes_are_refused() {
        assert_eq!("0".parse::<SessionId>(), Err(McastParseError::SessionId));
        assert_eq!("".parse::<SessionId>(), Err(McastParseError::SessionId));
        assert_eq!("+1".parse::<SessionId>(), Err(McastParseError::SessionId));
        assert_eq!(
            "12345678901234567".parse::<SessionId>(),
            Err(McastParseError::SessionId)
        );
        assert_eq!("ff".parse::<SessionId>(), Ok(SessionId(255)));
        assert_eq!("ab".parse::<ManifestHash>(), Err(McastParseError::Hash));
        assert_eq!(
            "zz".repeat(32).parse::<ManifestHash>(),
            Err(McastParseError::Hash)
        );
        assert_eq!(
            "+a".repeat(32).parse::<ManifestHash>(),
            Err(McastParseError::Hash)
        );
        assert!(
            serde_json::from_str::<McastSession>(r#"{"id":"0","group":"239.0.0.1:1"}"#).is_err()
        );
    }
}
