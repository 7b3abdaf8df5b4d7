//! Manifest ids, signatures and structural checks.
//!
//! The id of a manifest is BLAKE3 over its canonical JSON: serde_json's compact serialization
//! of [`Manifest`] (fields in declaration order, no whitespace, integers only). A verifier
//! re-serializes what it parsed, so a manifest not in canonical form, or with any field
//! changed, gets another id. The signature is ed25519 over [`SIGNING_CONTEXT`] followed by
//! the 32 id bytes.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use metalcast_proto::image::{
    Digest, FORMAT_VERSION, ImageNameError, Manifest, PublicKey, Signature, SignedManifest,
    validate_image_name,
};

use crate::chunker::{ChunkingError, validate_chunking};

/// Prefix of the signed message, so a manifest signature can never pass for another kind.
pub const SIGNING_CONTEXT: &[u8] = b"metalcast-image-manifest-v1:";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON for this format")]
    Json(#[from] serde_json::Error),
    #[error("manifest format {0} is not supported (this reader knows {FORMAT_VERSION})")]
    Format(u32),
    #[error(transparent)]
    Name(#[from] ImageNameError),
    #[error(transparent)]
    Chunking(#[from] ChunkingError),
    #[error("manifest has no chunks")]
    Empty,
    #[error("chunk {index}: {what}")]
    Chunk { index: usize, what: &'static str },
    #[error("chunk lengths add up to {sum} bytes but the manifest says {size}")]
    Size { sum: u64, size: u64 },
    #[error("{what} path {path:?} must be relative, non-empty and without . or .. components")]
    Path { what: &'static str, path: String },
    #[error("manifest id mismatch: the content hashes to {actual}, the envelope says {claimed}")]
    Id { claimed: Digest, actual: Digest },
    #[error("manifest is signed by key {signer}, but the trusted key is {trusted}")]
    Key {
        signer: PublicKey,
        trusted: PublicKey,
    },
    #[error("manifest signature does not verify")]
    Signature,
}

/// A manifest whose id and signature were checked against a trusted key. Only
/// [`verify_manifest`] makes one, so extraction cannot be handed an unchecked manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest(SignedManifest);

impl VerifiedManifest {
    pub fn manifest(&self) -> &Manifest {
        &self.0.manifest
    }

    pub fn id(&self) -> Digest {
        self.0.id
    }

    pub fn signed(&self) -> &SignedManifest {
        &self.0
    }

    pub fn into_signed(self) -> SignedManifest {
        self.0
    }
}

pub fn canonical_json(m: &Manifest) -> Result<Vec<u8>, ManifestError> {
    Ok(serde_json::to_vec(m)?)
}

pub fn manifest_id(m: &Manifest) -> Result<Digest, ManifestError> {
    Ok(Digest(*blake3::hash(&canonical_json(m)?).as_bytes()))
}

fn message(id: &Digest) -> Vec<u8> {
    [SIGNING_CONTEXT, &id.0].concat()
}

/// Checks everything about a manifest that needs no key: format, names, chunk sizes, that the
/// chunks tile the stream, and that resume points are sane.
pub fn validate_manifest(m: &Manifest) -> Result<(), ManifestError> {
    if m.format != FORMAT_VERSION {
        return Err(ManifestError::Format(m.format));
    }
    validate_image_name("name", &m.name)?;
    validate_image_name("version", &m.version)?;
    validate_chunking(&m.chunking)?;
    for (what, p) in [("kernel", &m.kernel), ("initrd", &m.initrd)] {
        if let Some(p) = p {
            validate_tree_path(what, p)?;
        }
    }
    if m.chunks.is_empty() {
        return Err(ManifestError::Empty);
    }
    let mut offset = 0u64;
    let mut last_entry = 0u64;
    for (index, c) in m.chunks.iter().enumerate() {
        let bad = |what| ManifestError::Chunk { index, what };
        if c.offset != offset {
            return Err(bad("offset does not follow the previous chunk"));
        }
        if c.len == 0 || c.len > u64::from(m.chunking.max_size) {
            return Err(bad("length is zero or above the maximum chunk size"));
        }
        if c.stored_len == 0 {
            return Err(bad("stored length is zero"));
        }
        if c.entry_start > c.offset || c.entry_start < last_entry || c.entry_start % 512 != 0 {
            return Err(bad(
                "entry_start is not a member start at or before the chunk",
            ));
        }
        last_entry = c.entry_start;
        offset = offset.checked_add(c.len).ok_or(bad("offset overflows"))?;
    }
    if offset != m.size {
        return Err(ManifestError::Size {
            sum: offset,
            size: m.size,
        });
    }
    Ok(())
}

/// Kernel and initrd paths: relative to the tree root, plain components only.
pub(crate) fn validate_tree_path(what: &'static str, p: &str) -> Result<(), ManifestError> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Path {
            what,
            path: p.to_string(),
        })
    }
}

/// Validates, hashes and signs a manifest.
pub fn sign_manifest(
    manifest: Manifest,
    key: &SigningKey,
) -> Result<SignedManifest, ManifestError> {
    validate_manifest(&manifest)?;
    let id = manifest_id(&manifest)?;
    let sig = key.sign(&message(&id));
    Ok(SignedManifest {
        id,
        key: PublicKey(key.verifying_key().to_bytes()),
        signature: Signature(sig.to_bytes()),
        manifest,
    })
}

/// Checks structure and that the envelope's id is the manifest's id; no key involved.
pub fn check_manifest_id(s: &SignedManifest) -> Result<(), ManifestError> {
    validate_manifest(&s.manifest)?;
    let actual = manifest_id(&s.manifest)?;
    if actual != s.id {
        return Err(ManifestError::Id {
            claimed: s.id,
            actual,
        });
    }
    Ok(())
}

/// Checks structure, id and signature against the trusted key.
pub fn verify_manifest(
    s: SignedManifest,
    trusted: &VerifyingKey,
) -> Result<VerifiedManifest, ManifestError> {
    check_manifest_id(&s)?;
    let trusted_bytes = PublicKey(trusted.to_bytes());
    if s.key != trusted_bytes {
        return Err(ManifestError::Key {
            signer: s.key,
            trusted: trusted_bytes,
        });
    }
    let sig = ed25519_dalek::Signature::from_bytes(&s.signature.0);
    trusted
        .verify_strict(&message(&s.id), &sig)
        .map_err(|_| ManifestError::Signature)?;
    Ok(VerifiedManifest(s))
}

/// Parses a [`SignedManifest`] JSON document and verifies it.
pub fn parse_and_verify(
    json: &[u8],
    trusted: &VerifyingKey,
) -> Result<VerifiedManifest, ManifestError> {
    verify_manifest(serde_json::from_slice(json)?, trusted)
}

#[cfg(test)]
pub(crate) mod tests {
    use metalcast_proto::image::{ChunkRef, Chunking, OsFamily};

    use super::*;

    pub(crate) fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    pub(crate) fn sample() -> Manifest {
        let h = |b| Digest(*blake3::hash(&[b]).as_bytes());
        Manifest {
            format: FORMAT_VERSION,
            name: "debian".into(),
            version: "12.5".into(),
            parent: None,
            created_ms: 1_777_000_000_000,
            os_family: OsFamily::Debian,
            kernel: Some("boot/vmlinuz".into()),
            initrd: Some("boot/initrd.img".into()),
            size: 5000,
            chunking: Chunking {
                min_size: 1024,
                avg_size: 2048,
                max_size: 4096,
            },
            chunks: vec![
                ChunkRef {
                    hash: h(1),
                    offset: 0,
                    len: 3000,
                    stored_len: 100,
                    entry_start: 0,
                },
                ChunkRef {
                    hash: h(2),
                    offset: 3000,
                    len: 2000,
                    stored_len: 90,
                    entry_start: 2560,
                },
            ],
        }
    }

    #[test]
    fn id_is_stable_and_signature_verifies() {
        let signed = sign_manifest(sample(), &key(1)).unwrap();
        // The id only depends on the manifest: pinned so that a change to the canonical form
        // (field order, serializer behaviour) is noticed.
        assert_eq!(signed.id, manifest_id(&sample()).unwrap());
        assert_eq!(
            signed.id.to_string(),
            "5fa587a98ecff145b57cbbae17fe3fd756909c14315b4a03123a153b85d49f1c"
        );
        let json = serde_json::to_vec(&signed).unwrap();
        let v = parse_and_verify(&json, &key(1).verifying_key()).unwrap();
        assert_eq!(v.id(), signed.id);
        assert_eq!(v.manifest(), &sample());
    }

    #[test]
    fn other_keys_are_refused() {
        let signed = sign_manifest(sample(), &key(1)).unwrap();
        let err = verify_manifest(signed.clone(), &key(2).verifying_key()).unwrap_err();
        assert!(matches!(err, ManifestError::Key { .. }), "{err}");
        // Claiming the trusted key does not help: the signature is still the other key's.
        let mut forged = signed;
        forged.key = PublicKey(key(2).verifying_key().to_bytes());
        let err = verify_manifest(forged, &key(2).verifying_key()).unwrap_err();
        assert!(matches!(err, ManifestError::Signature), "{err}");
    }

    #[test]
    fn every_single_bit_flip_of_the_document_is_refused() {
        let signed = sign_manifest(sample(), &key(3)).unwrap();
        let json = serde_json::to_vec(&signed).unwrap();
        let trusted = key(3).verifying_key();
        for i in 0..json.len() {
            for bit in 0..8 {
                let mut bad = json.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    parse_and_verify(&bad, &trusted).is_err(),
                    "flip of bit {bit} of byte {i} ({:?}) accepted",
                    char::from(json[i])
                );
            }
        }
    }

    #[test]
    fn structure_is_checked() {
        let mut gap = sample();
        gap.chunks[1].offset += 1;
        gap.size += 1;
        assert!(matches!(
            validate_manifest(&gap),
            Err(ManifestError::Chunk { index: 1, .. })
        ));
        let mut size = sample();
        size.size += 1;
        assert!(matches!(
            validate_manifest(&size),
            Err(ManifestError::Size { .. })
        ));
        let mut resume = sample();
        resume.chunks[1].entry_start = 3072;
        assert!(validate_manifest(&resume).is_err());
        let mut long = sample();
        long.chunks[0].len = 5000;
        long.chunks[1].offset = 5000;
        long.size = 7000;
        assert!(validate_manifest(&long).is_err());
        let mut path = sample();
        path.kernel = Some("/boot/../vmlinuz".into());
        assert!(matches!(
            validate_manifest(&path),
            Err(ManifestError::Path { .. })
        ));
        let mut fmt = sample();
        fmt.format = 2;
        assert!(matches!(
            validate_manifest(&fmt),
            Err(ManifestError::Format(2))
        ));
    }
}
