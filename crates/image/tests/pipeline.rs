//! Import into a store, then verified extraction: round trips, dedup, corruption, resume.
// Helpers outside #[test] fns unwrap too: in test code a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use metalcast_image::{
    ChunkSource, ExtractError, ExtractOptions, ExtractProgress, ImageMeta, ImportError,
    ImportOptions, ImportReport, SigningKey, SourceError, Store, UnpackOptions, VerifiedManifest,
    extract, import_dir, import_tar, verify_manifest,
};
use metalcast_proto::image::{ChunkRef, Chunking, OsFamily, SignedManifest};

const SMALL: Chunking = Chunking {
    min_size: 4096,
    avg_size: 16384,
    max_size: 65536,
};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn meta(version: &str) -> ImageMeta {
    ImageMeta {
        name: "test".into(),
        version: version.into(),
        parent: None,
        created_ms: 1_777_000_000_000,
        os_family: OsFamily::Debian,
        kernel: None,
        initrd: None,
    }
}

fn small_opts() -> ImportOptions {
    ImportOptions {
        chunking: SMALL,
        ..ImportOptions::default()
    }
}

fn extract_opts(start: usize) -> ExtractOptions {
    ExtractOptions {
        start_chunk: start,
        fetchers: 3,
        unpack: UnpackOptions {
            preserve_owners: common::is_root(),
        },
    }
}

fn verified(m: &SignedManifest) -> VerifiedManifest {
    verify_manifest(m.clone(), &key().verifying_key()).unwrap()
}

fn no_progress() -> impl FnMut(u64) {
    |_| {}
}

/// Files with distinct random contents in a few directories (no xattrs, so the tar crate can
/// list the stream for the checks below).
fn plain_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 5));
        fs::create_dir_all(&dir).unwrap();
        let len = 1000 + (i * 7919) % 90_000;
        fs::write(
            dir.join(format!("f{i:03}")),
            common::noise(i as u64 + 100, len),
        )
        .unwrap();
    }
}

/// A tree made by `fill` imported with small chunks, and the directories holding both.
struct Imported {
    src: tempfile::TempDir,
    store: Store,
    report: ImportReport,
    _store_dir: tempfile::TempDir,
}

fn import_tree(fill: impl FnOnce(&Path)) -> Imported {
    let src = tempfile::tempdir().unwrap();
    fill(src.path());
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let report = import_dir(
        &store,
        src.path(),
        &meta("1"),
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap();
    Imported {
        src,
        store,
        report,
        _store_dir: store_dir,
    }
}

/// The uncompressed stream of a stored image.
fn stream_of(store: &Store, m: &SignedManifest) -> Vec<u8> {
    let mut out = Vec::new();
    for c in &m.manifest.chunks {
        out.extend(zstd::bulk::decompress(&store.get(&c.hash).unwrap(), c.len as usize).unwrap());
    }
    out
}

/// Where each regular file's data lies in the stream: path → (offset, len).
fn data_ranges(stream: &[u8]) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut ar = tar::Archive::new(stream);
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type().is_file() {
            let p = e.path().unwrap().components().collect::<PathBuf>();
            out.insert(p, (e.raw_file_position(), e.size()));
        }
    }
    out
}

#[test]
fn import_then_extract_gives_the_same_tree_and_dedups() {
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut seen = 0;
    let r1 = import_dir(
        &store,
        src.path(),
        &meta("1"),
        &key(),
        &small_opts(),
        &mut |b| {
            assert!(b >= seen);
            seen = b;
        },
    )
    .unwrap();
    assert_eq!(seen, r1.bytes_total);
    assert_eq!(r1.chunks_total, r1.manifest.manifest.chunks.len());
    assert!(r1.chunks_total > 10, "{r1:?}");
    assert_eq!(
        store.manifest("test", "1").unwrap(),
        Some(r1.manifest.clone())
    );

    // Unchanged tree, new version: every chunk is already there, and the chunks are the same.
    let r2 = import_dir(
        &store,
        src.path(),
        &meta("2"),
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(
        (r2.chunks_new, r2.bytes_new, r2.stored_bytes_new),
        (0, 0, 0)
    );
    assert_eq!(r1.manifest.manifest.chunks, r2.manifest.manifest.chunks);
    assert!(
        fs::read_dir(store_dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );

    let dst = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let rep = extract(
        &store,
        &verified(&r1.manifest),
        dst.path(),
        &extract_opts(0),
        &mut |p: &ExtractProgress| events.push(*p),
    )
    .unwrap();
    assert_eq!(rep.chunks_fetched, r1.chunks_total);
    let last = events.last().unwrap();
    assert_eq!(last.resume_chunk, r1.chunks_total);
    assert_eq!(last.stream_bytes, r1.bytes_total);
    assert!(
        events.len() >= r1.chunks_total,
        "a progress event per chunk"
    );
    common::assert_same_tree(src.path(), dst.path());
}

/// Serves chunks from the store, damaged for one index.
struct Damaging<'a> {
    store: &'a Store,
    index: usize,
    /// Flip a bit of the uncompressed content (recompressed), or of the stored bytes.
    content: bool,
    bit: usize,
}

impl ChunkSource for Damaging<'_> {
    fn fetch(&self, index: usize, chunk: &ChunkRef) -> Result<Vec<u8>, SourceError> {
        let stored = self.store.get(&chunk.hash)?;
        if index != self.index {
            return Ok(stored);
        }
        if self.content {
            let mut data = zstd::bulk::decompress(&stored, chunk.len as usize)?;
            let bit = self.bit % (data.len() * 8);
            data[bit / 8] ^= 1 << (bit % 8);
            Ok(zstd::bulk::compress(&data, 3)?)
        } else {
            let mut stored = stored;
            let bit = self.bit % (stored.len() * 8);
            stored[bit / 8] ^= 1 << (bit % 8);
            Ok(stored)
        }
    }
}

#[test]
fn a_flipped_bit_in_any_chunk_stops_extraction_before_it() {
    let imported = import_tree(|dir| plain_tree(dir, 60));
    let (src, store, r) = (&imported.src, &imported.store, &imported.report);
    let m = verified(&r.manifest);
    let stream = stream_of(store, &r.manifest);
    let ranges = data_ranges(&stream);
    let chunks = &r.manifest.manifest.chunks;
    assert!(chunks.len() > 20, "{} chunks", chunks.len());
    let mut compressed_flips_detected = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        for content in [true, false] {
            let source = Damaging {
                store,
                index: i,
                content,
                bit: i * 7919 + 13,
            };
            let dst = tempfile::tempdir().unwrap();
            let result = extract(&source, &m, dst.path(), &extract_opts(0), &mut |_| {});
            match result {
                Err(ExtractError::Corrupt { index, hash, .. }) => {
                    assert_eq!((index, hash), (i, chunk.hash));
                    compressed_flips_detected += usize::from(!content);
                }
                Ok(_) if !content => {
                    // The damaged zstd frame still decoded to the right bytes: nothing wrong
                    // reached the target, which the tree comparison shows.
                    common::assert_same_tree(src.path(), dst.path());
                    continue;
                }
                other => panic!("chunk {i}, content flip {content}: {other:?}"),
            }
            // Nothing at or after the bad chunk's first byte is on disk.
            for (path, (start, len)) in &ranges {
                let original = fs::read(src.path().join(path)).unwrap();
                let Ok(on_disk) = fs::read(dst.path().join(path)) else {
                    assert!(
                        start + len > chunk.offset,
                        "chunk {i}: {} missing",
                        path.display()
                    );
                    continue;
                };
                if start + len <= chunk.offset {
                    assert_eq!(
                        on_disk,
                        original,
                        "chunk {i}: {} incomplete",
                        path.display()
                    );
                }
                assert_eq!(on_disk[..], original[..on_disk.len()], "{}", path.display());
                if !on_disk.is_empty() {
                    let last_byte = start + on_disk.len() as u64 - 1;
                    assert!(
                        last_byte < chunk.offset,
                        "chunk {i}: {} has bytes up to stream offset {last_byte}, \
                         the bad chunk starts at {}",
                        path.display(),
                        chunk.offset
                    );
                }
                assert!(on_disk.len() as u64 <= *len);
            }
        }
    }
    assert!(compressed_flips_detected > chunks.len() / 2);
}

/// Serves chunks until `fail_at`, then fails like an appliance that went away.
struct Outage<'a> {
    store: &'a Store,
    fail_at: usize,
    fetched_min: AtomicUsize,
}

impl ChunkSource for Outage<'_> {
    fn fetch(&self, index: usize, chunk: &ChunkRef) -> Result<Vec<u8>, SourceError> {
        self.fetched_min.fetch_min(index, Ordering::Relaxed);
        if index >= self.fail_at {
            return Err("connection refused".into());
        }
        Ok(self.store.get(&chunk.hash)?)
    }
}

/// Serves runs of chunks as one call each, like one HTTP request per run, and fails every
/// run that reaches `fail_at`; records the runs asked for.
struct Runs<'a> {
    store: &'a Store,
    run_bytes: u64,
    fail_at: usize,
    runs: std::sync::Mutex<Vec<std::ops::Range<usize>>>,
}

impl ChunkSource for Runs<'_> {
    fn fetch(&self, index: usize, chunk: &ChunkRef) -> Result<Vec<u8>, SourceError> {
        self.fetch_run(index, std::slice::from_ref(chunk))
    }

    fn run_bytes(&self) -> u64 {
        self.run_bytes
    }

    fn fetch_run(&self, first: usize, chunks: &[ChunkRef]) -> Result<Vec<u8>, SourceError> {
        let run = first..first + chunks.len();
        self.runs.lock().unwrap().push(run.clone());
        if run.contains(&self.fail_at) {
            return Err("connection refused".into());
        }
        Ok(chunks
            .iter()
            .flat_map(|c| self.store.get(&c.hash).unwrap())
            .collect())
    }
}

#[test]
fn runs_of_chunks_extract_the_same_tree_and_resume_at_a_failed_runs_start() {
    let imported = import_tree(|dir| {
        common::sample_tree(dir);
    });
    let (src, store, r) = (&imported.src, &imported.store, &imported.report);
    let m = verified(&r.manifest);
    let chunks = &r.manifest.manifest.chunks;
    let n = chunks.len();
    let run_bytes = 100_000;
    let source = |fail_at| Runs {
        store,
        run_bytes,
        fail_at,
        runs: std::sync::Mutex::new(Vec::new()),
    };

    let whole = source(usize::MAX);
    let dst = tempfile::tempdir().unwrap();
    extract(&whole, &m, dst.path(), &extract_opts(0), &mut |_| {}).unwrap();
    common::assert_same_tree(src.path(), dst.path());
    let mut runs = whole.runs.into_inner().unwrap();
    runs.sort_by_key(|r| r.start);
    assert_eq!(runs.first().map(|r| r.start), Some(0));
    assert!(runs.windows(2).all(|w| w[0].end == w[1].start), "{runs:?}");
    assert_eq!(runs.last().map(|r| r.end), Some(n));
    for run in &runs {
        let stored: u64 = chunks[run.clone()].iter().map(|c| c.stored_len).sum();
        assert!(
            run.len() == 1 || stored <= run_bytes,
            "{run:?}: {stored} bytes"
        );
    }
    assert!(runs.len() < n / 2, "{} runs for {n} chunks", runs.len());

    // A run that fails is not written at all: resume at its first chunk, finish the tree.
    let fail_at = n / 2;
    let down = source(fail_at);
    let dst = tempfile::tempdir().unwrap();
    let mut last = None;
    let err = extract(&down, &m, dst.path(), &extract_opts(0), &mut |p| {
        last = Some(*p)
    })
    .unwrap_err();
    let failed_run = down
        .runs
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.contains(&fail_at))
        .cloned()
        .unwrap();
    assert!(
        matches!(err, ExtractError::Fetch { index, .. } if index == failed_run.start),
        "{err}"
    );
    let resume = last.unwrap().resume_chunk;
    assert_eq!(resume, failed_run.start);
    extract(
        &source(usize::MAX),
        &m,
        dst.path(),
        &extract_opts(resume),
        &mut |_| {},
    )
    .unwrap();
    common::assert_same_tree(src.path(), dst.path());
}

#[test]
fn extraction_resumes_from_the_first_chunk_not_written() {
    let imported = import_tree(|dir| {
        common::sample_tree(dir);
    });
    let (src, store, r) = (&imported.src, &imported.store, &imported.report);
    let m = verified(&r.manifest);
    let n = r.chunks_total;
    let mut continuations = 0;
    for fail_at in [1, n / 3, n / 2, n - 1] {
        let dst = tempfile::tempdir().unwrap();
        let down = Outage {
            store,
            fail_at,
            fetched_min: AtomicUsize::new(usize::MAX),
        };
        let mut last = None;
        let err = extract(&down, &m, dst.path(), &extract_opts(0), &mut |p| {
            last = Some(*p)
        })
        .unwrap_err();
        assert!(
            matches!(err, ExtractError::Fetch { index, .. } if index == fail_at),
            "{err}"
        );
        let resume = last.unwrap().resume_chunk;
        assert_eq!(
            resume, fail_at,
            "every chunk before the failed one was written"
        );
        let back = Outage {
            store,
            fail_at: usize::MAX,
            fetched_min: AtomicUsize::new(usize::MAX),
        };
        let rep = extract(&back, &m, dst.path(), &extract_opts(resume), &mut |_| {}).unwrap();
        // Fetching restarts at the chunk holding the resume member's header; from there the
        // stream jumps to the resume chunk when that member is a file being continued.
        let first = back.fetched_min.load(Ordering::Relaxed);
        assert_eq!(first, rep.first_fetched);
        let entry = r.manifest.manifest.chunks[resume].entry_start;
        let holder = &r.manifest.manifest.chunks[first];
        assert!(holder.offset <= entry && entry < holder.offset + holder.len);
        println!(
            "outage at chunk {fail_at} of {n}: resumed at chunk {resume}, header in chunk \
             {first}, {} chunks read",
            rep.chunks_fetched
        );
        // Either the file was continued (its header's chunk, then the resume chunk onwards)
        // or the member was extracted again from its header.
        let continued = rep.chunks_fetched == n - resume + 1;
        assert!(continued || rep.chunks_fetched == n - first, "{rep:?}");
        continuations += usize::from(continued && first + 1 < resume);
        common::assert_same_tree(src.path(), dst.path());
    }
    // usr/bin/big spans many chunks: an outage inside it continues the file.
    assert!(continuations > 0, "no partly written file was continued");
}

#[test]
fn gc_running_alongside_imports_never_takes_their_chunks() {
    let src = tempfile::tempdir().unwrap();
    plain_tree(src.path(), 40);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                store.gc(std::time::Duration::ZERO).unwrap();
            }
        });
        for v in ["1", "2", "3"] {
            let r = import_dir(
                &store,
                src.path(),
                &meta(v),
                &key(),
                &small_opts(),
                &mut no_progress(),
            )
            .unwrap();
            // Version 1 is removed before the next import, which then relies on chunks that
            // are unreferenced until its own manifest is stored.
            store.remove_manifest("test", v).unwrap();
            assert!(r.chunks_total > 10);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let r = import_dir(
        &store,
        src.path(),
        &meta("4"),
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap();
    for c in &r.manifest.manifest.chunks {
        assert!(store.has(&c.hash).unwrap());
    }
    let dst = tempfile::tempdir().unwrap();
    extract(
        &store,
        &verified(&r.manifest),
        dst.path(),
        &extract_opts(0),
        &mut |_| {},
    )
    .unwrap();
}

#[test]
fn tarballs_import_as_they_are() {
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    fs::create_dir(src.path().join("boot")).unwrap();
    fs::write(src.path().join("boot/vmlinuz-6.1"), b"kernel").unwrap();
    let tarball = metalcast_image::write_tree(src.path(), Vec::new(), &Default::default()).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let mut m = meta("tar");
    m.kernel = Some("boot/vmlinuz-6.1".into());
    let r = import_tar(
        &store,
        &tarball[..],
        &m,
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(stream_of(&store, &r.manifest), tarball);
    // The same bytes imported from the tree give the same chunks.
    let from_dir = import_dir(
        &store,
        src.path(),
        &meta("dir"),
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(
        from_dir.manifest.manifest.chunks,
        r.manifest.manifest.chunks
    );
    let dst = tempfile::tempdir().unwrap();
    extract(
        &store,
        &verified(&r.manifest),
        dst.path(),
        &extract_opts(0),
        &mut |_| {},
    )
    .unwrap();
    common::assert_same_tree(src.path(), dst.path());

    m.version = "missing-kernel".into();
    m.kernel = Some("boot/vmlinuz-9".into());
    let err = import_tar(
        &store,
        &tarball[..],
        &m,
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ImportError::MissingPath { what: "kernel", .. }),
        "{err}"
    );

    let err = import_tar(
        &store,
        &tarball[..tarball.len() - 2048],
        &meta("cut"),
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(matches!(err, ImportError::Frame(_)), "{err}");
    let gz = {
        let mut v = vec![0x1f, 0x8b, 8, 0];
        v.resize(4096, 0);
        v
    };
    let err = import_tar(
        &store,
        &gz[..],
        &meta("gz"),
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the stream is gzip-compressed; give the plain tar stream"
    );
    assert!(store.manifest("test", "gz").unwrap().is_none());
}

#[test]
fn gnu_tar_tarballs_import_and_extract() {
    if std::process::Command::new("tar")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("note: no tar binary; skipped");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    common::sample_tree(src.path());
    let mut child = std::process::Command::new("tar")
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--sparse",
            "--numeric-owner",
            "-cf",
            "-",
            "-C",
        ])
        .arg(src.path())
        .arg(".")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdout.take().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let r = import_tar(
        &store,
        &mut pipe,
        &meta("gnu"),
        &key(),
        &small_opts(),
        &mut no_progress(),
    )
    .unwrap();
    let mut rest = Vec::new();
    pipe.read_to_end(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let dst = tempfile::tempdir().unwrap();
    extract(
        &store,
        &verified(&r.manifest),
        dst.path(),
        &extract_opts(0),
        &mut |_| {},
    )
    .unwrap();
    common::assert_same_tree(src.path(), dst.path());
}
