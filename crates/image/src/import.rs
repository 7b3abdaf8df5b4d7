//! Importing an image version: tar stream → chunks → store → signed manifest.
//!
//! Two threads: a producer writes the tar stream (from a tree, or copies a given tarball) into
//! the framer and chunker and hashes each chunk; the caller's thread compresses and stores the
//! chunks the store lacks and reports progress. At most a few chunks are in memory at once.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use ed25519_dalek::SigningKey;
use metalcast_proto::image::{
    ChunkRef, Chunking, Digest, FORMAT_VERSION, ImageNameError, Manifest, OsFamily, SignedManifest,
    validate_image_name,
};

use crate::chunker::{Chunker, ChunkingError, DEFAULT_CHUNKING};
use crate::frame::{FrameError, Framer};
use crate::manifest::{ManifestError, sign_manifest, validate_tree_path};
use crate::store::{Store, StoreError};
use crate::write::{TreeError, TreeOptions, write_tree};

/// zstd level of newly stored chunks unless told otherwise.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Chunks in flight between the producer and the storing thread.
const QUEUE: usize = 4;
/// Read size when copying a tarball in.
const READ_BUF: usize = 1 << 20;

/// What an import records about the image besides its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMeta {
    pub name: String,
    pub version: String,
    /// Manifest id of the version this one derives from.
    pub parent: Option<Digest>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub os_family: OsFamily,
    /// Kernel and initrd paths relative to the tree root; each must exist in the stream.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub chunking: Chunking,
    pub zstd_level: i32,
    /// Only for `import_dir`.
    pub tree: TreeOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            chunking: DEFAULT_CHUNKING,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            tree: TreeOptions::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub manifest_id: Digest,
    pub manifest: SignedManifest,
    pub chunks_total: usize,
    /// Distinct chunks the store did not have before.
    pub chunks_new: usize,
    /// Uncompressed stream bytes.
    pub bytes_total: u64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new: u64,
    /// Compressed bytes the store grew by.
    pub stored_bytes_new: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Name(#[from] ImageNameError),
    #[error(transparent)]
    Chunking(#[from] ChunkingError),
    #[error("zstd level {0} is outside {min}..={max}", min = zstd_levels().start(), max = zstd_levels().end())]
    Level(i32),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("reading the tar input")]
    Input(#[source] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("compressing a chunk")]
    Compress(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the {what} {path:?} named in the metadata is not in the image")]
    MissingPath { what: &'static str, path: String },
}

fn zstd_levels() -> std::ops::RangeInclusive<i32> {
    zstd::compression_level_range()
}

/// Imports the tree under `root` as `meta.name@meta.version`. `progress` gets the number of
/// stream bytes chunked so far.
pub fn import_dir(
    store: &Store,
    root: &Path,
    meta: &ImageMeta,
    key: &SigningKey,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let tree = opts.tree.clone();
    import_stream(store, meta, key, opts, progress, move |sink| {
        write_tree(root, sink, &tree)
            .map(drop)
            .map_err(ImportError::from)
    })
}

/// Imports a tarball as it is: its bytes are the image stream (no re-serialization, which
/// would need an extraction). It must be an uncompressed tar stream with an end-of-archive
/// block, made of member types the extractor supports; the order of its members is its own
/// (see `docs/image-format.md` on what that means for directory times and resume).
pub fn import_tar<R: Read + Send>(
    store: &Store,
    mut reader: R,
    meta: &ImageMeta,
    key: &SigningKey,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, ImportError> {
    import_stream(store, meta, key, opts, progress, move |sink| {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImportError::Input(e)),
            };
            sink.write_all(&buf[..n]).map_err(ImportError::Input)?;
        }
    })
}

/// A chunk cut and hashed by the producer.
struct RawChunk {
    hash: Digest,
    offset: u64,
    entry_start: u64,
    data: Vec<u8>,
}

/// The producer's end: frames, cuts and hashes what the tar writer writes.
struct Sink {
    framer: Framer,
    chunker: Chunker,
    tx: SyncSender<RawChunk>,
    /// A framing error, kept so it is reported as such rather than as a write error.
    error: Option<FrameError>,
}

impl Sink {
    fn emit(
        framer: &mut Framer,
        tx: &SyncSender<RawChunk>,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let raw = RawChunk {
            hash: Digest(*blake3::hash(data).as_bytes()),
            offset,
            entry_start: framer.member_start_at(offset),
            data: data.to_vec(),
        };
        // The receiver only goes away when storing failed; that error is the one reported.
        tx.send(raw).map_err(|_| io::Error::other("import stopped"))
    }

    fn finish(self) -> Result<Vec<bool>, ImportError> {
        let Sink {
            mut framer,
            chunker,
            tx,
            ..
        } = self;
        let found = framer.finish()?;
        chunker
            .finish(&mut |off, data| Self::emit(&mut framer, &tx, off, data))
            .map_err(ImportError::Input)?;
        Ok(found)
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = self.framer.feed(buf) {
            self.error = Some(e.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        let (framer, tx) = (&mut self.framer, &self.tx);
        self.chunker
            .push(buf, &mut |off, data| Self::emit(framer, tx, off, data))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn check_meta(meta: &ImageMeta, opts: &ImportOptions) -> Result<(), ImportError> {
    validate_image_name("name", &meta.name)?;
    validate_image_name("version", &meta.version)?;
    crate::chunker::validate_chunking(&opts.chunking)?;
    if !zstd_levels().contains(&opts.zstd_level) {
        return Err(ImportError::Level(opts.zstd_level));
    }
    for (what, p) in [("kernel", &meta.kernel), ("initrd", &meta.initrd)] {
        if let Some(p) = p {
            validate_tree_path(what, p)?;
        }
    }
    Ok(())
}

fn import_stream<P>(
    store: &Store,
    meta: &ImageMeta,
    key: &SigningKey,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(u64),
    produce: P,
) -> Result<ImportReport, ImportError>
where
    P: FnOnce(&mut Sink) -> Result<(), ImportError> + Send,
{
    check_meta(meta, opts)?;
    let watch: Vec<&str> = [&meta.kernel, &meta.initrd]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let (tx, rx) = sync_channel(QUEUE);
    let sink = Sink {
        framer: Framer::new(&watch),
        chunker: Chunker::new(opts.chunking)?,
        tx,
        error: None,
    };
    let pin = store.pin();
    let (stored, produced) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut sink = sink;
            match produce(&mut sink) {
                Ok(()) => sink.finish(),
                Err(e) => Err(sink.error.take().map(ImportError::from).unwrap_or(e)),
            }
        });
        let stored = store_chunks(store, rx, opts.zstd_level, progress);
        let produced = producer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (stored, produced)
    });
    // A storing failure stops the producer with a secondary error; report the cause.
    let stored = stored?;
    let found = produced?;
    for ((what, path), seen) in [("kernel", &meta.kernel), ("initrd", &meta.initrd)]
        .into_iter()
        .filter_map(|(w, p)| p.as_ref().map(|p| (w, p)))
        .zip(found)
    {
        if !seen {
            return Err(ImportError::MissingPath {
                what,
                path: path.clone(),
            });
        }
    }
    let manifest = Manifest {
        format: FORMAT_VERSION,
        name: meta.name.clone(),
        version: meta.version.clone(),
        parent: meta.parent,
        created_ms: meta.created_ms,
        os_family: meta.os_family,
        kernel: meta.kernel.clone(),
        initrd: meta.initrd.clone(),
        size: stored.bytes_total,
        chunking: opts.chunking,
        chunks: stored.chunks,
    };
    let signed = sign_manifest(manifest, key)?;
    store.put_manifest_pinned(&signed, &pin)?;
    tracing::info!(
        name = %meta.name,
        version = %meta.version,
        id = %signed.id,
        chunks = signed.manifest.chunks.len(),
        new = stored.chunks_new,
        "image imported"
    );
    Ok(ImportReport {
        manifest_id: signed.id,
        chunks_total: signed.manifest.chunks.len(),
        chunks_new: stored.chunks_new,
        bytes_total: stored.bytes_total,
        bytes_new: stored.bytes_new,
        stored_bytes_new: stored.stored_bytes_new,
        manifest: signed,
    })
}

struct Stored {
    chunks: Vec<ChunkRef>,
    chunks_new: usize,
    bytes_total: u64,
    bytes_new: u64,
    stored_bytes_new: u64,
}

fn store_chunks(
    store: &Store,
    rx: Receiver<RawChunk>,
    level: i32,
    progress: &mut dyn FnMut(u64),
) -> Result<Stored, ImportError> {
    let mut s = Stored {
        chunks: Vec::new(),
        chunks_new: 0,
        bytes_total: 0,
        bytes_new: 0,
        stored_bytes_new: 0,
    };
    // One compression context for all chunks: creating one per chunk costs time and memory.
    let mut zstd = zstd::bulk::Compressor::new(level).map_err(ImportError::Compress)?;
    for raw in rx {
        let len = raw.data.len() as u64;
        let stored_len = match store.chunk_len(&raw.hash)? {
            Some(n) => n,
            None => {
                let c = zstd.compress(&raw.data).map_err(ImportError::Compress)?;
                store.put_verified(&raw.hash, &c)?;
                s.chunks_new += 1;
                s.bytes_new += len;
                s.stored_bytes_new += c.len() as u64;
                c.len() as u64
            }
        };
        s.chunks.push(ChunkRef {
            hash: raw.hash,
            offset: raw.offset,
            len,
            stored_len,
            entry_start: raw.entry_start,
        });
        s.bytes_total += len;
        progress(s.bytes_total);
    }
    Ok(s)
}
