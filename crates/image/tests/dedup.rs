//! Dedup across versions: a ~64 MiB tree of mixed files is imported, ~1% of its files are
//! edited in place, and the tree is imported again as a new version.
//!
//! Content-defined chunking confines an edit to the chunks around it, so every edited file
//! costs about one chunk (plus the one holding its header, whose mtime changed). New bytes
//! are therefore about `files edited x average chunk size`: with ~1 MiB chunks that is far more
//! than 3% of a tree of many small files, with the format's default ~64 KiB chunks it is not.
//! The test prints both and asserts the 3% goal for the default, and the locality property
//! (at most three new chunks per edit) for both.
// Helpers outside #[test] fns unwrap too: in test code a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use metalcast_image::{DEFAULT_CHUNKING, ImageMeta, ImportOptions, SigningKey, Store, import_dir};
use metalcast_proto::image::{Chunking, OsFamily};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Text-like bytes (compressible, like configs and scripts) or noise (like binaries).
fn contents(rng: &mut Rng, len: usize) -> Vec<u8> {
    if rng.next().is_multiple_of(2) {
        return common::noise(rng.next(), len);
    }
    const WORDS: [&str; 12] = [
        "option",
        "value",
        "enable",
        "path",
        "/usr/lib",
        "true",
        "false",
        "# comment\n",
        "server",
        "=",
        "\n",
        "port 22",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(rng.next() % 12) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// ~64 MiB: a quarter in many small files (0.5–64 KiB), a third in libraries (64 KiB–1 MiB),
/// the rest in a few large files (1–8 MiB), spread over nested directories.
fn mixed_tree(root: &Path, rng: &mut Rng) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (budget, lo, hi) in [
        (16u64 << 20, 512u64, 64 << 10),
        (22 << 20, 64 << 10, 1 << 20),
        (26 << 20, 1 << 20, 8 << 20),
    ] {
        let mut used = 0;
        while used < budget {
            let len = rng.range(lo, hi);
            let dir = root
                .join(format!("usr{}", files.len() % 3))
                .join(format!("pkg{:02}", files.len() % 29));
            fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("file{:04}", files.len()));
            fs::write(&path, contents(rng, len as usize)).unwrap();
            files.push(path);
            used += len;
        }
    }
    files
}

struct Outcome {
    files: usize,
    edited: usize,
    chunks_new: usize,
    ratio: f64,
}

fn measure(chunking: Chunking) -> Outcome {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let src = tempfile::tempdir().unwrap();
    let files = mixed_tree(src.path(), &mut rng);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let key = SigningKey::from_bytes(&[3; 32]);
    let opts = ImportOptions {
        chunking,
        ..ImportOptions::default()
    };
    let meta = |version: &str| ImageMeta {
        name: "mixed".into(),
        version: version.into(),
        parent: None,
        created_ms: 0,
        os_family: OsFamily::Debian,
        kernel: None,
        initrd: None,
    };
    let first = import_dir(&store, src.path(), &meta("1"), &key, &opts, &mut |_| {}).unwrap();
    assert!(first.bytes_total > 60 << 20, "{} bytes", first.bytes_total);

    // Edit ~1% of the files in place: overwrite 100–1100 bytes at a random offset.
    let edited = (files.len() as f64 / 100.0).round().max(1.0) as usize;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < edited {
        picked.insert((rng.next() % files.len() as u64) as usize);
    }
    for &i in &picked {
        let len = fs::metadata(&files[i]).unwrap().len();
        let n = rng.range(100, 1100).min(len);
        let at = rng.range(0, len - n + 1);
        let f = fs::OpenOptions::new().write(true).open(&files[i]).unwrap();
        f.write_all_at(&common::noise(rng.next(), n as usize), at)
            .unwrap();
    }

    let second = import_dir(&store, src.path(), &meta("2"), &key, &opts, &mut |_| {}).unwrap();
    Outcome {
        files: files.len(),
        edited,
        chunks_new: second.chunks_new,
        ratio: second.bytes_new as f64 / second.bytes_total as f64,
    }
}

#[test]
fn re_import_after_editing_one_percent_of_the_files() {
    let large = Chunking {
        min_size: 256 << 10,
        avg_size: 1 << 20,
        max_size: 4 << 20,
    };
    for (label, chunking) in [("default ~64 KiB", DEFAULT_CHUNKING), ("~1 MiB", large)] {
        let o = measure(chunking);
        println!(
            "dedup, {label} chunks: {} files, {} edited in place: {} new chunks, \
             new chunk bytes {:.2}% of the stream",
            o.files,
            o.edited,
            o.chunks_new,
            o.ratio * 100.0
        );
        assert!(
            o.chunks_new <= 3 * o.edited,
            "{label}: {} new chunks for {} edits",
            o.chunks_new,
            o.edited
        );
        if chunking == DEFAULT_CHUNKING {
            assert!(o.ratio <= 0.03, "{label}: {:.2}% new", o.ratio * 100.0);
        }
    }
}
