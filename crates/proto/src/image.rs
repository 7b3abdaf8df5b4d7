//! Image manifests: an image version as an ordered list of content-addressed chunks.
//!
//! An image is a POSIX/PAX tar stream of a root file tree, cut into content-defined chunks.
//! Each chunk is named by the BLAKE3 hash of its uncompressed bytes and stored zstd-compressed.
//! The [`Manifest`] lists the chunks in stream order together with the image's metadata; its
//! canonical JSON bytes hashed with BLAKE3 are the manifest id, which the appliance signs with
//! its ed25519 key ([`SignedManifest`]). `docs/image-format.md` describes every byte; the
//! `metalcast-image` crate builds, stores, verifies and extracts these.
//!
//! Field order in these structs is part of the format: the canonical JSON is serde_json's
//! compact output of [`Manifest`], fields in declaration order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The manifest format this crate describes. A reader refuses any other value.
pub const FORMAT_VERSION: u32 = 1;

/// Longest image name or version, in bytes.
pub const MAX_NAME_LEN: usize = 100;

/// A 32-byte BLAKE3 digest: a chunk's name or a manifest id. Lowercase hex on the wire; uppercase
/// is refused so that a value has exactly one spelling (a flipped case bit is tampering).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// An ed25519 public key (32 bytes), lowercase hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// An ed25519 signature (64 bytes), lowercase hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid hex value {value:?}: expected {expected} lowercase hex digits")]
pub struct HexError {
    pub value: String,
    pub expected: usize,
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let err = || HexError {
        value: s.to_string(),
        expected: N * 2,
    };
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return Err(err());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *slot = (nibble(pair[0]).ok_or_else(err)? << 4) | nibble(pair[1]).ok_or_else(err)?;
    }
    Ok(out)
}

/// Display, Debug, FromStr and serde as hex for a fixed-size byte newtype.
macro_rules! hex_newtype {
    ($ty:ident, $n:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $ty {
            type Err = HexError;
            fn from_str(s: &str) -> Result<Self, HexError> {
                parse_hex::<$n>(s).map($ty)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_newtype!(Digest, 32);
hex_newtype!(PublicKey, 32);
hex_newtype!(Signature, 64);

/// The operating system an image holds; decides how node configuration is written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OsFamily {
    /// Debian and derivatives configured with ifupdown or systemd-networkd.
    Debian,
    /// Ubuntu (netplan).
    Ubuntu,
    /// Red Hat Enterprise Linux, Rocky, Alma, Fedora (NetworkManager keyfiles).
    Rhel,
    /// SUSE and openSUSE (wicked).
    Suse,
    /// Anything else: the appliance writes only what is common to all.
    Other,
}

/// How the tar stream was cut: FastCDC 2020, normalization level 1, unseeded gear table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunking {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

/// One chunk of the tar stream, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// BLAKE3 of the uncompressed bytes; also the chunk's name in the store.
    pub hash: Digest,
    /// Offset of the chunk's first byte in the uncompressed tar stream.
    pub offset: u64,
    /// Uncompressed length in bytes.
    pub len: u64,
    /// Length of the stored (zstd-compressed) chunk file in bytes.
    pub stored_len: u64,
    /// Stream offset of the first header of the tar member that holds the chunk's first byte
    /// (equal to `offset` when a member starts exactly there). Extraction resumed at this chunk
    /// starts parsing here.
    pub entry_start: u64,
}

/// One image version. Immutable once stored: a name@version names exactly one manifest id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`].
    pub format: u32,
    pub name: String,
    pub version: String,
    /// Manifest id of the image version this one was derived from, if any.
    pub parent: Option<Digest>,
    /// Creation time, milliseconds since the Unix epoch, appliance clock.
    pub created_ms: i64,
    pub os_family: OsFamily,
    /// Kernel path inside the tree, relative to its root (`boot/vmlinuz-6.1.0-18-amd64`).
    pub kernel: Option<String>,
    /// Initrd path inside the tree, relative to its root.
    pub initrd: Option<String>,
    /// Length of the uncompressed tar stream: the sum of the chunks' `len`.
    pub size: u64,
    pub chunking: Chunking,
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// Bytes of all chunk files this version references (duplicates counted each time).
    pub fn stored_size(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored_len).sum()
    }

    /// Where each chunk starts in the version's stored stream: its chunk files as stored,
    /// concatenated in manifest order (what a multicast session sends, docs/multicast.md).
    pub fn stored_offsets(&self) -> Vec<u64> {
        self.chunks
            .iter()
            .scan(0u64, |at, c| {
                let start = *at;
                *at = at.saturating_add(c.stored_len);
                Some(start)
            })
            .collect()
    }
}

/// A manifest with its id and the appliance's signature over that id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// BLAKE3 of the manifest's canonical JSON.
    pub id: Digest,
    /// The key that signed; a verifier compares it with the key it trusts.
    pub key: PublicKey,
    /// ed25519 over `"metalcast-image-manifest-v1:"` followed by the 32 id bytes.
    pub signature: Signature,
    pub manifest: Manifest,
}

/// Most chunks one `POST /chunks/fetch` may ask for: at the default ~64 KiB average that is
/// ~16 MiB of image, far more than one request needs to hide its round trip.
pub const MAX_CHUNKS_PER_FETCH: usize = 256;

/// A list of chunk names: the body of the "which of these do you lack?" call and its answer,
/// and of a fetch of several chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkList {
    pub chunks: Vec<Digest>,
}

/// What lists of images show about one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub name: String,
    pub version: String,
    pub id: Digest,
    pub parent: Option<Digest>,
    pub created_ms: i64,
    pub os_family: OsFamily,
    /// Uncompressed tar stream bytes.
    pub size: u64,
    /// Sum of the referenced chunk files' sizes.
    pub stored_size: u64,
    pub chunks: usize,
}

impl From<&SignedManifest> for ImageSummary {
    fn from(s: &SignedManifest) -> Self {
        let m = &s.manifest;
        ImageSummary {
            name: m.name.clone(),
            version: m.version.clone(),
            id: s.id,
            parent: m.parent,
            created_ms: m.created_ms,
            os_family: m.os_family,
            size: m.size,
            stored_size: m.stored_size(),
            chunks: m.chunks.len(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid image {what} {value:?}: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ + -, \
     not starting with . or -"
)]
pub struct ImageNameError {
    /// `name` or `version`.
    pub what: &'static str,
    pub value: String,
}

/// Checks an image name or version: it becomes a directory or file name in the store and a URL
/// path segment, so only a conservative character set is allowed.
pub fn validate_image_name(what: &'static str, value: &str) -> Result<(), ImageNameError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && !value.starts_with(['.', '-'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ImageNameError {
            what,
            value: value.to_string(),
        })
    }
}

/// `NAME` or `NAME@VERSION`: an image, optionally pinned to one version (else "latest").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub name: String,
    pub version: Option<String>,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ImageNameError;

    fn from_str(s: &str) -> Result<Self, ImageNameError> {
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        validate_image_name("name", name)?;
        if let Some(v) = version {
            validate_image_name("version", v)?;
        }
        Ok(ImageRef {
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SignedManifest {
        SignedManifest {
            id: Digest([0xab; 32]),
            key: PublicKey([7; 32]),
            signature: Signature([9; 64]),
            manifest: Manifest {
                format: FORMAT_VERSION,
                name: "debian-bookworm".into(),
                version: "2026.05.01".into(),
                parent: Some(Digest([1; 32])),
                created_ms: 1_777_000_000_000,
                os_family: OsFamily::Debian,
                kernel: Some("boot/vmlinuz".into()),
                initrd: None,
                size: 3072,
                chunking: Chunking {
                    min_size: 256 << 10,
                    avg_size: 1 << 20,
                    max_size: 4 << 20,
                },
                chunks: vec![ChunkRef {
                    hash: Digest([0x5a; 32]),
                    offset: 0,
                    len: 3072,
                    stored_len: 120,
                    entry_start: 0,
                }],
            },
        }
    }

    #[test]
    fn digest_hex_round_trips_and_rejects_bad_input() {
        let d = Digest([0x0f; 32]);
        let s = d.to_string();
        assert_eq!(s, "0f".repeat(32));
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!(s.to_uppercase().parse::<Digest>().is_err());
        assert!(s[..62].parse::<Digest>().is_err());
        assert!(format!("{}zz", &s[..62]).parse::<Digest>().is_err());
        let sig = Signature([0xc3; 64]);
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
    }

    #[test]
    fn signed_manifest_json_round_trips() {
        let m = sample();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.starts_with(r#"{"id":"abab"#), "{json}");
        assert!(json.contains(r#""os_family":"debian""#));
        let back: SignedManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn unknown_manifest_fields_are_refused() {
        let mut v = serde_json::to_value(sample().manifest).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Manifest>(v).is_err());
    }

    #[test]
    fn summary_sums_stored_sizes() {
        let s = ImageSummary::from(&sample());
        assert_eq!((s.stored_size, s.chunks, s.size), (120, 1, 3072));
    }

    #[test]
    fn names_and_refs() {
        for ok in [
            "debian-bookworm",
            "a",
            "v1.2.3+build_4",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(validate_image_name("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "..",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(validate_image_name("name", bad).is_err(), "{bad}");
        }
        let r: ImageRef = "deb@2026.1".parse().unwrap();
        assert_eq!(r.version.as_deref(), Some("2026.1"));
        assert_eq!(r.to_string(), "deb@2026.1");
        let latest: ImageRef = "deb".parse().unwrap();
        assert_eq!(latest.version, None);
        assert!("deb@".parse::<ImageRef>().is_err());
        assert!("deb@a@b".parse::<ImageRef>().is_err());
    }
}
