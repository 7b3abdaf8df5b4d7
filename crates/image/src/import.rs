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
    import_stream(store, meta, key, opts, progress, write_from(root, opts))
}

/// A producer that writes the tree's stream into the sink.
fn write_from<'a>(
    root: &'a Path,
    opts: &ImportOptions,
) -> impl FnOnce(&mut Sink) -> Result<(), ImportError> + Send + 'a {
    let tree = opts.tree.clone();
    move |sink| {
        write_tree(root, sink, &tree)
            .map(drop)
            .map_err(ImportError::from)
    }
}

/// Imports a tarball as it is: its bytes are the image stream (no re-serialization, which
/// would need an extraction). It must be an uncompressed tar stream with an end-of-archive
/// block, made of member types the extractor supports; the order of its members is its own
/// (see `docs/image-format.md` on what that means for directory times and resume).
pub fn import_tar<R: Read + Send>(
    store: &Store,
    reader: R,
    meta: &ImageMeta,
    key: &SigningKey,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, ImportError> {
    import_stream(store, meta, key, opts, progress, copy_from(reader))
}

/// A producer that copies a tarball into the sink.
fn copy_from<R: Read + Send>(
    mut reader: R,
) -> impl FnOnce(&mut Sink) -> Result<(), ImportError> + Send {
    move |sink| {
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
    }
}

/// A chunk cut and hashed by the producer.
struct RawChunk {
    hash: Digest,
    offset: u64,
    entry_start: u64,
    data: Vec<u8>,
}

impl RawChunk {
    fn chunk_ref(&self, stored_len: u64) -> ChunkRef {
        ChunkRef {
            hash: self.hash,
            offset: self.offset,
            len: self.data.len() as u64,
            stored_len,
            entry_start: self.entry_start,
        }
    }
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
    let pin = store.pin();
    let mut stored = Stored {
        chunks_new: 0,
        bytes_new: 0,
        stored_bytes_new: 0,
    };
    // One compression context for all chunks: creating one per chunk costs time and memory.
    let mut zstd = zstd::bulk::Compressor::new(opts.zstd_level).map_err(ImportError::Compress)?;
    let mut bytes_total = 0u64;
    let manifest = cut_stream(meta, opts, produce, &mut |raw| {
        let len = raw.data.len() as u64;
        let stored_len = match store.chunk_len(&raw.hash)? {
            Some(n) => n,
            None => {
                let c = zstd.compress(&raw.data).map_err(ImportError::Compress)?;
                store.put_verified(&raw.hash, &c)?;
                stored.chunks_new += 1;
                stored.bytes_new += len;
                stored.stored_bytes_new += c.len() as u64;
                c.len() as u64
            }
        };
        bytes_total += len;
        progress(bytes_total);
        Ok::<_, ImportError>(raw.chunk_ref(stored_len))
    })?;
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
        bytes_total: signed.manifest.size,
        bytes_new: stored.bytes_new,
        stored_bytes_new: stored.stored_bytes_new,
        manifest: signed,
    })
}

/// Where the stream of [`chunk_stream`] comes from.
pub enum StreamInput<'a> {
    /// The tree under this root, written as [`import_dir`] writes it.
    Tree(&'a Path),
    /// A tarball taken as it is, as by [`import_tar`].
    Tar(Box<dyn Read + Send + 'a>),
}

/// Cuts, hashes and compresses an image stream without a store, for a client that uploads
/// chunks to an appliance: `emit` gets every chunk in stream order (repeats included) with its
/// compressed bytes, as the store would keep them. Returns the unsigned manifest, which the
/// appliance signs once it has every chunk. Stops at the first error `emit` returns.
pub fn chunk_stream<E: From<ImportError>>(
    input: StreamInput<'_>,
    meta: &ImageMeta,
    opts: &ImportOptions,
    emit: &mut dyn FnMut(ChunkRef, Vec<u8>) -> Result<(), E>,
) -> Result<Manifest, E> {
    check_meta(meta, opts)?;
    let mut zstd = zstd::bulk::Compressor::new(opts.zstd_level).map_err(ImportError::Compress)?;
    let mut consume = |raw: RawChunk| {
        let c = zstd.compress(&raw.data).map_err(ImportError::Compress)?;
        let chunk = raw.chunk_ref(c.len() as u64);
        emit(chunk, c)?;
        Ok(chunk)
    };
    match input {
        StreamInput::Tree(root) => cut_stream(meta, opts, write_from(root, opts), &mut consume),
        StreamInput::Tar(reader) => cut_stream(meta, opts, copy_from(reader), &mut consume),
    }
}

/// Runs `produce` on its own thread into the framer and chunker and `consume` on this one,
/// chunk by chunk in stream order; returns the unsigned manifest of what was consumed. The
/// caller has checked `meta` and `opts` (`check_meta`).
fn cut_stream<P, E>(
    meta: &ImageMeta,
    opts: &ImportOptions,
    produce: P,
    consume: &mut dyn FnMut(RawChunk) -> Result<ChunkRef, E>,
) -> Result<Manifest, E>
where
    P: FnOnce(&mut Sink) -> Result<(), ImportError> + Send,
    E: From<ImportError>,
{
    let watch: Vec<&str> = [&meta.kernel, &meta.initrd]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let (tx, rx) = sync_channel(QUEUE);
    let sink = Sink {
        framer: Framer::new(&watch),
        chunker: Chunker::new(opts.chunking).map_err(ImportError::from)?,
        tx,
        error: None,
    };
    let (consumed, produced) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut sink = sink;
            match produce(&mut sink) {
                Ok(()) => sink.finish(),
                Err(e) => Err(sink.error.take().map(ImportError::from).unwrap_or(e)),
            }
        });
        let consumed = consume_all(rx, consume);
        let produced = producer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (consumed, produced)
    });
    // A consuming failure stops the producer with a secondary error; report the cause.
    let chunks = consumed?;
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
            }
            .into());
        }
    }
    Ok(Manifest {
        format: FORMAT_VERSION,
        name: meta.name.clone(),
        version: meta.version.clone(),
        parent: meta.parent,
        created_ms: meta.created_ms,
        os_family: meta.os_family,
        kernel: meta.kernel.clone(),
        initrd: meta.initrd.clone(),
        size: chunks.iter().map(|c| c.len).sum(),
        chunking: opts.chunking,
        chunks,
    })
}

/// Takes the receiver by value so that it is dropped (stopping the producer) on an error.
fn consume_all<E>(
    rx: Receiver<RawChunk>,
    consume: &mut dyn FnMut(RawChunk) -> Result<ChunkRef, E>,
) -> Result<Vec<ChunkRef>, E> {
    rx.into_iter().map(consume).collect()
}

struct Stored {
    chunks_new: usize,
    bytes_new: u64,
    stored_bytes_new: u64,
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const SMALL: Chunking = Chunking {
        min_size: 1024,
        avg_size: 4096,
        max_size: 16384,
    };

    fn meta() -> ImageMeta {
        ImageMeta {
            name: "t".into(),
            version: "1".into(),
            parent: None,
            created_ms: 1_777_000_000_000,
            os_family: OsFamily::Other,
            kernel: Some("boot/vmlinuz".into()),
            initrd: None,
        }
    }

    fn opts() -> ImportOptions {
        ImportOptions {
            chunking: SMALL,
            ..ImportOptions::default()
        }
    }

    /// Files of distinct incompressible bytes, one of them twice (so a chunk repeats).
    fn tree(root: &Path) {
        fs::create_dir_all(root.join("boot")).unwrap();
        let mut x = 0x9e37_79b9_u32;
        let mut noise = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect()
        };
        fs::write(root.join("boot/vmlinuz"), noise(40_000)).unwrap();
        let twice = noise(60_000);
        fs::write(root.join("a"), &twice).unwrap();
        fs::write(root.join("b"), &twice).unwrap();
    }

    #[test]
    fn chunk_stream_emits_what_import_would_store() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let report = import_dir(&store, src.path(), &meta(), &key, &opts(), &mut |_| {}).unwrap();

        let mut emitted = Vec::new();
        let manifest = chunk_stream(
            StreamInput::Tree(src.path()),
            &meta(),
            &opts(),
            &mut |c: ChunkRef, bytes: Vec<u8>| -> Result<(), ImportError> {
                emitted.push((c, bytes));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(manifest, report.manifest.manifest);
        assert_eq!(emitted.len(), manifest.chunks.len());
        let distinct: std::collections::HashSet<_> = emitted.iter().map(|(c, _)| c.hash).collect();
        assert!(distinct.len() < emitted.len(), "no chunk repeats");
        for ((c, bytes), listed) in emitted.iter().zip(&manifest.chunks) {
            assert_eq!(c, listed);
            assert_eq!(bytes, &store.get(&c.hash).unwrap());
        }

        // The same stream as a tarball gives the same manifest.
        let mut tar = Vec::new();
        write_tree(src.path(), &mut tar, &TreeOptions::default()).unwrap();
        let from_tar = chunk_stream(
            StreamInput::Tar(Box::new(&tar[..])),
            &meta(),
            &opts(),
            &mut |_, _| Ok::<_, ImportError>(()),
        )
        .unwrap();
        assert_eq!(from_tar, manifest);
    }

    #[derive(Debug)]
    enum Upload {
        Refused,
        Import(ImportError),
    }

    impl From<ImportError> for Upload {
        fn from(e: ImportError) -> Self {
            Upload::Import(e)
        }
    }

    #[test]
    fn chunk_stream_stops_at_the_first_emit_error_and_checks_meta() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let mut calls = 0;
        let err = chunk_stream(
            StreamInput::Tree(src.path()),
            &meta(),
            &opts(),
            &mut |_, _| {
                calls += 1;
                if calls == 2 {
                    Err(Upload::Refused)
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(matches!(err, Upload::Refused), "{err:?}");
        assert_eq!(calls, 2);

        let missing = ImageMeta {
            initrd: Some("boot/initrd.img".into()),
            ..meta()
        };
        let err = chunk_stream(
            StreamInput::Tree(src.path()),
            &missing,
            &opts(),
            &mut |_, _| Ok::<_, Upload>(()),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Upload::Import(ImportError::MissingPath { what: "initrd", .. })
            ),
            "{err:?}"
        );
    }
}
