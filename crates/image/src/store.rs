//! The appliance's chunk store: one file per chunk, manifests beside them.
//!
//! ```text
//! ROOT/chunks/ab/cdef…       zstd frame of the chunk whose BLAKE3 is abcdef… (64 hex digits,
//!                            the first two name the shard directory)
//! ROOT/manifests/NAME/VERSION.json   a SignedManifest, compact JSON
//! ROOT/tmp/                  files being written; renamed into place when complete
//! ```
//!
//! Every file is written to `tmp/`, fsynced, then renamed (chunks) or hard-linked (manifests,
//! so an existing version is never replaced) into place, and the directory fsynced: a crash
//! leaves either the old state or the new one, plus at most a stray file in `tmp/` that
//! [`Store::gc`] removes. All methods block; call them from `spawn_blocking` in async code.
//! One process owns a store directory.
//!
//! References are counted from the manifests themselves when needed (no separate counter to
//! drift): a chunk is referenced by every manifest that lists it. `gc` removes chunks no
//! manifest references, but only once they are older than a grace period, so that chunks of
//! an upload still in progress (uploaded, manifest not yet stored) survive; [`Store::missing`]
//! refreshes the time of chunks it reports present, for the same reason.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use metalcast_proto::image::{Digest, ImageNameError, SignedManifest, validate_image_name};
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

use crate::manifest::{ManifestError, check_manifest_id};

/// Largest uncompressed chunk anyone may upload (FastCDC 2020's largest maximum).
pub const MAX_CHUNK_LEN: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("chunk {0} is not in the store")]
    MissingChunk(Digest),
    #[error("chunk {hash} is not what its name says: {why}")]
    BadChunk { hash: Digest, why: String },
    #[error("{name}@{version} already exists as manifest {existing}; versions are immutable")]
    VersionExists {
        name: String,
        version: String,
        existing: Digest,
    },
    #[error("manifest {name}@{version} lists {count} chunks the store lacks, e.g. {first}")]
    ChunksMissing {
        name: String,
        version: String,
        count: usize,
        first: Digest,
    },
    #[error("stored manifest {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error(transparent)]
    Name(#[from] ImageNameError),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Proof of holding the gc lock shared.
pub(crate) type Pin<'a> = RwLockReadGuard<'a, ()>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    pub chunks_kept: u64,
    pub temp_files_removed: u64,
}

#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Shared by writers of manifests and imports, exclusive for gc: gc never runs between
    /// an import's "chunk present" answer and its manifest.
    gc_lock: RwLock<()>,
    seq: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in ["chunks", "manifests", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        Ok(Store {
            root,
            gc_lock: RwLock::new(()),
            seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where chunk `hash` is (or would be) stored; for serving it with HTTP ranges.
    pub fn chunk_path(&self, hash: &Digest) -> PathBuf {
        let hex = hash.to_string();
        self.root.join("chunks").join(&hex[..2]).join(&hex[2..])
    }

    pub fn has(&self, hash: &Digest) -> Result<bool> {
        Ok(self.chunk_len(hash)?.is_some())
    }

    /// Size of the stored (compressed) chunk file, if present.
    pub fn chunk_len(&self, hash: &Digest) -> Result<Option<u64>> {
        let p = self.chunk_path(hash);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("inspecting", &p)(e)),
        }
    }

    /// The stored (zstd-compressed) bytes of a chunk.
    pub fn get(&self, hash: &Digest) -> Result<Vec<u8>> {
        let p = self.chunk_path(hash);
        match fs::read(&p) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingChunk(*hash)),
            Err(e) => Err(io_err("reading", &p)(e)),
        }
    }

    /// The chunks of `hashes` the store lacks, in the order given, each once. Present chunks
    /// get their time refreshed so gc's grace period covers an upload that relies on them.
    pub fn missing(&self, hashes: &[Digest]) -> Result<Vec<Digest>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for h in hashes {
            if !seen.insert(*h) {
                continue;
            }
            let p = self.chunk_path(h);
            let touched = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &TimeSpec::UTIME_OMIT,
                &TimeSpec::UTIME_NOW,
                UtimensatFlags::NoFollowSymlink,
            );
            match touched {
                Ok(()) => {}
                Err(nix::errno::Errno::ENOENT) => out.push(*h),
                Err(e) => return Err(io_err("touching", &p)(e.into())),
            }
        }
        Ok(out)
    }

    /// Stores an uploaded chunk after checking that it decompresses to bytes whose BLAKE3 is
    /// `hash`. Returns whether it was new.
    pub fn put(&self, hash: &Digest, stored: &[u8]) -> Result<bool> {
        if self.has(hash)? {
            return Ok(false);
        }
        let bad = |why: String| StoreError::BadChunk { hash: *hash, why };
        let mut decoder = zstd::stream::read::Decoder::with_buffer(stored)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        let mut hasher = blake3::Hasher::new();
        let n = io::copy(&mut (&mut decoder).take(MAX_CHUNK_LEN + 1), &mut hasher)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        if n > MAX_CHUNK_LEN {
            return Err(bad(format!(
                "decompresses to more than {MAX_CHUNK_LEN} bytes"
            )));
        }
        let actual = Digest(*hasher.finalize().as_bytes());
        if actual != *hash {
            return Err(bad(format!("content hashes to {actual}")));
        }
        self.put_verified(hash, stored)
    }

    /// Stores a chunk whose name the caller computed itself.
    pub(crate) fn put_verified(&self, hash: &Digest, stored: &[u8]) -> Result<bool> {
        let dest = self.chunk_path(hash);
        if dest.exists() {
            return Ok(false);
        }
        let shard = dest.parent().unwrap_or(&self.root).to_path_buf();
        if !shard.is_dir() {
            fs::create_dir_all(&shard).map_err(io_err("creating", &shard))?;
            sync_dir(&self.root.join("chunks"))?;
        }
        let tmp = self.write_temp(stored)?;
        fs::rename(&tmp, &dest).map_err(io_err("renaming into", &dest))?;
        sync_dir(&shard)?;
        Ok(true)
    }

    /// Writes `data` to a new fsynced file in `tmp/` and returns its path.
    fn write_temp(&self, data: &[u8]) -> Result<PathBuf> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{seq}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        let written = f.write_all(data).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("writing", &tmp)(e));
        }
        Ok(tmp)
    }

    fn manifest_path(&self, name: &str, version: &str) -> Result<PathBuf> {
        validate_image_name("name", name)?;
        validate_image_name("version", version)?;
        Ok(self
            .root
            .join("manifests")
            .join(name)
            .join(format!("{version}.json")))
    }

    /// Stores a manifest after checking its id and that every chunk it lists is present.
    /// Storing the same manifest again is fine; another one under an existing name@version
    /// is refused. Returns whether it was new. The signature is not checked here: the store
    /// holds what the appliance signed or accepted, and readers verify.
    pub fn put_manifest(&self, m: &SignedManifest) -> Result<bool> {
        let pin = self.pin();
        self.put_manifest_pinned(m, &pin)
    }

    /// [`Store::put_manifest`] for a caller that already holds the gc lock (taking a read lock
    /// twice in one thread can deadlock behind a waiting writer).
    pub(crate) fn put_manifest_pinned(&self, m: &SignedManifest, _pin: &Pin<'_>) -> Result<bool> {
        let (name, version) = (&m.manifest.name, &m.manifest.version);
        let dest = self.manifest_path(name, version)?;
        check_manifest_id(m).map_err(|source| StoreError::Manifest {
            path: dest.clone(),
            source,
        })?;
        let hashes: Vec<Digest> = m.manifest.chunks.iter().map(|c| c.hash).collect();
        let lacking = self.missing(&hashes)?;
        if let Some(first) = lacking.first() {
            return Err(StoreError::ChunksMissing {
                name: name.clone(),
                version: version.clone(),
                count: lacking.len(),
                first: *first,
            });
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            sync_dir(&self.root.join("manifests"))?;
        }
        let json = serde_json::to_vec(m).map_err(|e| StoreError::Manifest {
            path: dest.clone(),
            source: e.into(),
        })?;
        let tmp = self.write_temp(&json)?;
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = self.read_manifest(&dest)?;
                if existing.id == m.id {
                    Ok(false)
                } else {
                    Err(StoreError::VersionExists {
                        name: name.clone(),
                        version: version.clone(),
                        existing: existing.id,
                    })
                }
            }
            Err(e) => Err(io_err("linking", &dest)(e)),
        }
    }

    fn read_manifest(&self, path: &Path) -> Result<SignedManifest> {
        let bytes = fs::read(path).map_err(io_err("reading", path))?;
        let bad = |source| StoreError::Manifest {
            path: path.to_path_buf(),
            source,
        };
        let m: SignedManifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(ManifestError::from(e)))?;
        check_manifest_id(&m).map_err(bad)?;
        Ok(m)
    }

    pub fn manifest(&self, name: &str, version: &str) -> Result<Option<SignedManifest>> {
        let p = self.manifest_path(name, version)?;
        if !p.exists() {
            return Ok(None);
        }
        self.read_manifest(&p).map(Some)
    }

    /// Every stored manifest, ordered by name, then creation time, then version.
    pub fn manifests(&self) -> Result<Vec<SignedManifest>> {
        let top = self.root.join("manifests");
        let mut out = Vec::new();
        for name in read_dir_names(&top)? {
            let dir = top.join(&name);
            for file in read_dir_names(&dir)? {
                if file.ends_with(".json") {
                    out.push(self.read_manifest(&dir.join(&file))?);
                }
            }
        }
        out.sort_by(|a, b| {
            let key = |m: &SignedManifest| {
                (
                    m.manifest.name.clone(),
                    m.manifest.created_ms,
                    m.manifest.version.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(out)
    }

    /// Removes a version; its chunks stay until [`Store::gc`]. Returns whether it existed.
    pub fn remove_manifest(&self, name: &str, version: &str) -> Result<bool> {
        let p = self.manifest_path(name, version)?;
        match fs::remove_file(&p) {
            Ok(()) => {
                sync_dir(p.parent().unwrap_or(&self.root))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &p)(e)),
        }
    }

    /// How many manifests reference each chunk.
    pub fn references(&self) -> Result<HashMap<Digest, usize>> {
        let mut refs: HashMap<Digest, usize> = HashMap::new();
        for m in self.manifests()? {
            let distinct: HashSet<Digest> = m.manifest.chunks.iter().map(|c| c.hash).collect();
            for h in distinct {
                *refs.entry(h).or_default() += 1;
            }
        }
        Ok(refs)
    }

    /// Removes chunks no manifest references and stray temporary files, when older than
    /// `grace`. Fails without removing anything if a manifest cannot be read.
    pub fn gc(&self, grace: Duration) -> Result<GcReport> {
        let _exclusive = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let refs = self.references()?;
        let cutoff = SystemTime::now().checked_sub(grace);
        let old_enough = |m: &fs::Metadata| match (cutoff, m.modified()) {
            (Some(c), Ok(t)) => t <= c,
            _ => false,
        };
        let mut report = GcReport::default();
        let chunks = self.root.join("chunks");
        for shard in read_dir_names(&chunks)? {
            let dir = chunks.join(&shard);
            for file in read_dir_names(&dir)? {
                let p = dir.join(&file);
                let Ok(hash) = format!("{shard}{file}").parse::<Digest>() else {
                    continue; // not a chunk: leave it alone
                };
                let meta = fs::metadata(&p).map_err(io_err("inspecting", &p))?;
                if refs.contains_key(&hash) || !old_enough(&meta) {
                    report.chunks_kept += 1;
                    continue;
                }
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
                report.chunks_removed += 1;
                report.bytes_freed += meta.len();
            }
        }
        let tmp = self.root.join("tmp");
        for file in read_dir_names(&tmp)? {
            let p = tmp.join(&file);
            let meta = fs::metadata(&p).map_err(io_err("inspecting", &p))?;
            if old_enough(&meta) {
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
                report.temp_files_removed += 1;
            }
        }
        tracing::info!(
            removed = report.chunks_removed,
            freed = report.bytes_freed,
            kept = report.chunks_kept,
            "chunk store gc"
        );
        Ok(report)
    }

    /// Holds gc off while an import decides which chunks it can reuse.
    pub(crate) fn pin(&self) -> Pin<'_> {
        self.gc_lock.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let e = e.map_err(io_err("listing", dir))?;
        if let Ok(name) = e.file_name().into_string() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

#[cfg(test)]
mod tests {
    use metalcast_proto::image::ChunkRef;

    use super::*;
    use crate::manifest::sign_manifest;
    use crate::manifest::tests::{key, sample};

    fn chunk(data: &[u8]) -> (Digest, Vec<u8>) {
        (
            Digest(*blake3::hash(data).as_bytes()),
            zstd::bulk::compress(data, 3).unwrap(),
        )
    }

    /// A signed manifest over the given chunk contents.
    fn manifest_over(version: &str, parts: &[&[u8]], store: &Store) -> SignedManifest {
        let mut m = sample();
        m.version = version.into();
        m.chunks.clear();
        let mut off = 0;
        for p in parts {
            let (h, c) = chunk(p);
            store.put(&h, &c).unwrap();
            m.chunks.push(ChunkRef {
                hash: h,
                offset: off,
                len: p.len() as u64,
                stored_len: c.len() as u64,
                entry_start: 0,
            });
            off += p.len() as u64;
        }
        m.size = off;
        sign_manifest(m, &key(1)).unwrap()
    }

    fn tmp_is_empty(s: &Store) -> bool {
        fs::read_dir(s.root().join("tmp")).unwrap().next().is_none()
    }

    #[test]
    fn put_get_has_missing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (h, c) = chunk(b"hello chunk");
        let (absent, _) = chunk(b"not stored");
        assert!(!s.has(&h).unwrap());
        assert!(s.put(&h, &c).unwrap());
        assert!(!s.put(&h, &c).unwrap(), "second put is a no-op");
        assert_eq!(s.get(&h).unwrap(), c);
        assert_eq!(s.chunk_len(&h).unwrap(), Some(c.len() as u64));
        let hex = h.to_string();
        assert!(
            dir.path()
                .join("chunks")
                .join(&hex[..2])
                .join(&hex[2..])
                .is_file()
        );
        assert_eq!(s.missing(&[h, absent, absent]).unwrap(), vec![absent]);
        assert!(matches!(s.get(&absent), Err(StoreError::MissingChunk(_))));
        assert!(tmp_is_empty(&s), "temporary files left behind");
    }

    #[test]
    fn uploads_are_checked_against_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (h, _) = chunk(b"claimed");
        let (_, other) = chunk(b"actual");
        assert!(matches!(
            s.put(&h, &other),
            Err(StoreError::BadChunk { .. })
        ));
        assert!(matches!(
            s.put(&h, b"not zstd"),
            Err(StoreError::BadChunk { .. })
        ));
        assert!(!s.has(&h).unwrap());
        assert!(tmp_is_empty(&s));
    }

    #[test]
    fn versions_are_immutable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = manifest_over("1", &[b"aaaa"], &s);
        assert!(s.put_manifest(&a).unwrap());
        assert!(!s.put_manifest(&a).unwrap(), "same manifest again is fine");
        let b = manifest_over("1", &[b"bbbb"], &s);
        assert!(matches!(
            s.put_manifest(&b),
            Err(StoreError::VersionExists { existing, .. }) if existing == a.id
        ));
        assert_eq!(s.manifest("debian", "1").unwrap(), Some(a.clone()));
        assert_eq!(s.manifest("debian", "2").unwrap(), None);
        let mut tampered = a.clone();
        tampered.manifest.version = "3".into();
        assert!(matches!(
            s.put_manifest(&tampered),
            Err(StoreError::Manifest { .. })
        ));
        assert!(tmp_is_empty(&s));
    }

    #[test]
    fn manifests_need_their_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let m = manifest_over("1", &[b"x1", b"x2"], &s);
        fs::remove_file(s.chunk_path(&m.manifest.chunks[1].hash)).unwrap();
        assert!(matches!(
            s.put_manifest(&m),
            Err(StoreError::ChunksMissing { count: 1, .. })
        ));
    }

    #[test]
    fn gc_removes_only_unreferenced_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let shared: &[u8] = b"shared by both versions";
        let v1 = manifest_over("1", &[shared, b"only in one"], &s);
        let v2 = manifest_over("2", &[shared, b"only in two"], &s);
        s.put_manifest(&v1).unwrap();
        s.put_manifest(&v2).unwrap();
        let (loose, c) = chunk(b"never referenced");
        s.put(&loose, &c).unwrap();
        fs::write(s.root().join("tmp/stray"), b"crash leftover").unwrap();

        let refs = s.references().unwrap();
        assert_eq!(refs[&v1.manifest.chunks[0].hash], 2);
        assert_eq!(refs[&v1.manifest.chunks[1].hash], 1);

        // Within the grace period nothing goes.
        let r = s.gc(Duration::from_secs(3600)).unwrap();
        assert_eq!((r.chunks_removed, r.temp_files_removed), (0, 0));

        let r = s.gc(Duration::ZERO).unwrap();
        assert_eq!(r.chunks_removed, 1);
        assert_eq!(r.bytes_freed, c.len() as u64);
        assert_eq!(r.temp_files_removed, 1);
        assert!(!s.has(&loose).unwrap());

        assert!(s.remove_manifest("debian", "1").unwrap());
        let r = s.gc(Duration::ZERO).unwrap();
        assert_eq!(r.chunks_removed, 1, "the chunk only v1 used");
        assert!(s.has(&v2.manifest.chunks[0].hash).unwrap());
        assert!(s.has(&v2.manifest.chunks[1].hash).unwrap());
        assert_eq!(s.manifests().unwrap(), vec![v2]);
    }
}
