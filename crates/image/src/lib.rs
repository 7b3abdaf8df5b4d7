//! The metalcast image format (`docs/image-format.md` describes every byte).
//!
//! An image version is a POSIX/PAX tar stream of a root tree, cut into content-defined chunks
//! (FastCDC), each stored zstd-compressed under the BLAKE3 hash of its bytes, and a signed
//! manifest listing them. The layers, bottom up:
//!
//! - [`write_tree`] / [`unpack`]: tree ⇄ tar stream, keeping owners, modes, times, xattrs
//!   (ACLs, capabilities), hard links, symlinks, devices, fifos and holes.
//! - [`sign_manifest`] / [`verify_manifest`]: manifest ids and ed25519 signatures; only a
//!   [`VerifiedManifest`] can be extracted. Keys: [`load_or_generate_key_file`].
//! - [`Store`]: the appliance's chunk and manifest files (blocking; call it from
//!   `spawn_blocking`).
//! - [`import_dir`] / [`import_tar`]: stream → chunks → store → signed manifest.
//! - [`chunk_stream`]: stream → compressed chunks handed to the caller → unsigned manifest,
//!   for clients that upload to an appliance.
//! - [`extract`]: the agent's pipeline, chunks from a [`ChunkSource`] verified one by one
//!   before the extractor sees them, resumable at any chunk.

mod chunker;
mod extract;
mod frame;
mod import;
mod keys;
mod manifest;
mod pax;
mod read;
mod store;
mod unpack;
mod write;

pub use chunker::{ChunkingError, DEFAULT_CHUNKING, validate_chunking};
pub use extract::{
    ChunkSource, ExtractError, ExtractOptions, ExtractProgress, ExtractReport, SourceError, extract,
};
pub use frame::FrameError;
pub use import::{
    DEFAULT_ZSTD_LEVEL, ImageMeta, ImportError, ImportOptions, ImportReport, StreamInput,
    chunk_stream, import_dir, import_tar,
};
pub use keys::{
    KeyError, SigningKey, VerifyingKey, generate_key_file, load_key_file,
    load_or_generate_key_file, public_key, verifying_key,
};
pub use manifest::{
    ManifestError, SIGNING_CONTEXT, VerifiedManifest, canonical_json, check_manifest_id,
    manifest_id, parse_and_verify, sign_manifest, validate_manifest, verify_manifest,
};
pub use read::TarError;
pub use store::{GcReport, MAX_CHUNK_LEN, Store, StoreError};
pub use unpack::{UnpackError, UnpackOptions, UnpackStats, unpack};
pub use write::{TreeError, TreeOptions, write_tree};
