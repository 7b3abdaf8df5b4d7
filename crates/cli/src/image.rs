//! `metalcast image …`: import image versions into the appliance, list and inspect them, move
//! `latest` (rollback) and collect unreferenced chunks.
//!
//! Import streams: the tar stream is cut, hashed and compressed here a chunk at a time; every
//! batch of chunks is checked against the appliance's store ("which of these do you lack?")
//! and only the missing ones are uploaded, by a few threads at once, while the next batch is
//! being cut. Then the unsigned manifest is posted and the appliance signs it.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use metalcast_image::{ImageMeta, ImportOptions, StreamInput, chunk_stream};
use metalcast_proto::image::{ChunkRef, Digest, ImageRef, OsFamily, validate_image_name};

use crate::client::Client;
use crate::render;

/// Chunks asked about in one "which do you lack?" call.
const BATCH: usize = 64;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a file tree or a tarball as a new version of an image.
    Import(ImportArgs),
    /// Every version of every image.
    List {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The versions of one image and which one is `latest`.
    Show {
        #[arg(value_parser = parse_name)]
        name: String,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Point `latest` of an image at another (e.g. the previous) version.
    Rollback {
        #[arg(value_parser = parse_name)]
        name: String,
        #[arg(value_parser = parse_version)]
        version: String,
    },
    /// Remove chunks no version references any more.
    Gc,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Image name; nodes name it in `node set --image NAME[@VERSION]`.
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Version name; default: the current UTC time as YYYYMMDD-HHMMSS.
    #[arg(long, value_parser = parse_version)]
    pub version: Option<String>,
    /// Root of the file tree to import (run as root to read every file and keep owners).
    #[arg(
        long,
        required_unless_present = "from_tar",
        conflicts_with = "from_tar"
    )]
    pub from_dir: Option<PathBuf>,
    /// An uncompressed tarball of the root tree, imported byte for byte.
    #[arg(long)]
    pub from_tar: Option<PathBuf>,
    /// How node configuration is written into the image: debian, ubuntu, rhel, suse, other.
    #[arg(long, default_value = "debian", value_parser = parse_os_family)]
    pub os_family: OsFamily,
    /// Kernel path inside the tree, relative to its root (e.g. vmlinuz or boot/vmlinuz-…).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Initrd path inside the tree, relative to its root.
    #[arg(long)]
    pub initrd: Option<String>,
    /// Chunk uploads in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,
}

fn parse_name(s: &str) -> Result<String, String> {
    validate_image_name("name", s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_version(s: &str) -> Result<String, String> {
    validate_image_name("version", s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_os_family(s: &str) -> Result<OsFamily, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: expected debian, ubuntu, rhel, suse or other"))
}

/// `NAME` or `NAME@VERSION`, checked, for `node set --image`.
pub fn parse_image_ref(s: &str) -> Result<String, String> {
    s.parse::<ImageRef>()
        .map(|r| r.to_string())
        .map_err(|e| e.to_string())
}

pub fn run(client: &Client, command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Import(args) => import(client, args),
        ImageCommand::List { json } => {
            let images = client.images()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                print!("{}", render::image_table(&images));
            }
            Ok(())
        }
        ImageCommand::Show { name, json } => {
            let versions = client.image(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                print!("{}", render::image_versions(&versions));
            }
            Ok(())
        }
        ImageCommand::Rollback { name, version } => {
            let before = client.image(&name)?.latest;
            let after = client.set_latest(&name, &version)?;
            println!(
                "{name}: latest is now {} (was {})",
                after.latest.as_deref().unwrap_or("-"),
                before.as_deref().unwrap_or("-")
            );
            Ok(())
        }
        ImageCommand::Gc => {
            let gc = client.image_gc()?;
            println!("{}", render::gc_summary(&gc));
            Ok(())
        }
    }
}

/// What an import sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UploadStats {
    /// Chunks uploaded because the appliance lacked them (each distinct chunk once).
    pub chunks_new: usize,
    /// Their uncompressed bytes.
    pub bytes_new: u64,
    /// Their compressed bytes: what went over the wire.
    pub bytes_sent: u64,
}

fn import(client: &Client, args: ImportArgs) -> Result<()> {
    let version = args
        .version
        .clone()
        .unwrap_or_else(|| version_from_time(render::now_ms() / 1000));
    if let Some(dir) = &args.from_dir {
        check_paths(dir, &args)?;
    }
    let parent = parent_of(client, &args.name, &version)?;
    let meta = ImageMeta {
        name: args.name.clone(),
        version: version.clone(),
        parent,
        created_ms: render::now_ms(),
        os_family: args.os_family,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
    };
    let (input, total) = match (&args.from_dir, &args.from_tar) {
        (Some(dir), None) => (StreamInput::Tree(dir), None),
        (None, Some(tar)) => {
            let file = File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
            let len = file.metadata().map(|m| m.len()).ok();
            (StreamInput::Tar(Box::new(file)), len)
        }
        // clap enforces exactly one of the two.
        _ => bail!("give one of --from-dir and --from-tar"),
    };
    let bar = progress_bar(total);
    let (tx, rx) = sync_channel::<Vec<(ChunkRef, Vec<u8>)>>(1);
    let jobs = usize::from(args.jobs);
    let (manifest, uploaded) = std::thread::scope(|scope| {
        let uploader = scope.spawn(|| upload_batches(client, rx, jobs));
        let mut batch = Vec::with_capacity(BATCH);
        let mut chunks = 0usize;
        let streamed = chunk_stream(
            input,
            &meta,
            &ImportOptions::default(),
            &mut |chunk: ChunkRef, bytes: Vec<u8>| -> Result<()> {
                chunks += 1;
                bar.set_position(chunk.offset + chunk.len);
                bar.set_message(format!("{chunks} chunks"));
                batch.push((chunk, bytes));
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    // The uploader only hangs up after an error, which join reports.
                    tx.send(full)
                        .map_err(|_| anyhow::anyhow!("upload stopped"))?;
                }
                Ok(())
            },
        );
        if streamed.is_ok() && !batch.is_empty() {
            // Cannot fail while the uploader runs; if it stopped, join says why.
            let _ = tx.send(batch);
        }
        drop(tx);
        let uploaded = uploader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (streamed, uploaded)
    });
    bar.finish_and_clear();
    // An upload failure stops the stream with a secondary error; report the cause.
    let stats = uploaded?;
    let manifest = manifest?;
    let signed = client
        .create_image(&manifest)
        .with_context(|| format!("storing the manifest of {}@{version}", args.name))?;
    print!("{}", render::import_summary(&signed, &stats));
    Ok(())
}

/// Fails before anything is sent when the tree lacks the kernel or initrd named. (Absolute
/// paths are left to the import, which refuses them.)
fn check_paths(dir: &Path, args: &ImportArgs) -> Result<()> {
    for (flag, path) in [("--kernel", &args.kernel), ("--initrd", &args.initrd)] {
        let Some(path) = path.as_deref().filter(|p| Path::new(p).is_relative()) else {
            continue;
        };
        if std::fs::symlink_metadata(dir.join(path)).is_err() {
            bail!("{flag} {path}: {} has no such file", dir.display());
        }
    }
    Ok(())
}

/// The manifest id of the current `latest`, as the new version's parent; refuses a version
/// that exists before anything is uploaded.
fn parent_of(client: &Client, name: &str, version: &str) -> Result<Option<Digest>> {
    let versions = match client.image(name) {
        Ok(v) => v,
        Err(e) if e.status() == Some(404) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if versions.versions.iter().any(|v| v.version == version) {
        bail!("{name}@{version} exists already: versions are immutable, pick another --version");
    }
    Ok(versions.latest.and_then(|latest| {
        versions
            .versions
            .iter()
            .find(|v| v.version == latest)
            .map(|v| v.id)
    }))
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    match total {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }
    }
}

/// Asks which chunks of each batch the appliance lacks and uploads those, `jobs` at a time.
/// Chunks seen in an earlier batch (repeats within the image) are not asked about again.
fn upload_batches(
    client: &Client,
    batches: Receiver<Vec<(ChunkRef, Vec<u8>)>>,
    jobs: usize,
) -> Result<UploadStats> {
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut stats = UploadStats::default();
    for batch in batches {
        let fresh: Vec<&(ChunkRef, Vec<u8>)> =
            batch.iter().filter(|(c, _)| seen.insert(c.hash)).collect();
        if fresh.is_empty() {
            continue;
        }
        let missing: HashSet<Digest> = client
            .missing_chunks(fresh.iter().map(|(c, _)| c.hash).collect())
            .context("asking which chunks the appliance lacks")?
            .into_iter()
            .collect();
        let todo: Vec<&(ChunkRef, Vec<u8>)> = fresh
            .into_iter()
            .filter(|(c, _)| missing.contains(&c.hash))
            .collect();
        upload_parallel(client, &todo, jobs)?;
        for (c, bytes) in todo {
            stats.chunks_new += 1;
            stats.bytes_new += c.len;
            stats.bytes_sent += bytes.len() as u64;
        }
    }
    Ok(stats)
}

fn upload_parallel(client: &Client, todo: &[&(ChunkRef, Vec<u8>)], jobs: usize) -> Result<()> {
    let queue = Mutex::new(todo.iter());
    let next = || queue.lock().ok().and_then(|mut q| q.next().copied());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.min(todo.len()))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while let Some((chunk, bytes)) = next() {
                        client
                            .put_chunk(&chunk.hash, bytes)
                            .with_context(|| format!("uploading chunk {}", chunk.hash))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// `YYYYMMDD-HHMMSS` of a UTC time in seconds since the epoch.
pub fn version_from_time(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = render::utc_fields(secs);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ImageCommand,
    }

    fn parse(args: &[&str]) -> Result<ImageCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("metalcast").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn import_needs_exactly_one_source() {
        assert!(parse(&["import", "deb"]).is_err());
        assert!(parse(&["import", "deb", "--from-dir", "/a", "--from-tar", "/b"]).is_err());
        let Ok(ImageCommand::Import(a)) = parse(&["import", "deb", "--from-tar", "/b.tar"]) else {
            panic!("import with --from-tar did not parse");
        };
        assert_eq!(a.from_tar, Some(PathBuf::from("/b.tar")));
        assert_eq!(
            (a.os_family, a.version, a.jobs),
            (OsFamily::Debian, None, 4)
        );
    }

    #[test]
    fn import_takes_metadata_and_checks_names() {
        let Ok(ImageCommand::Import(a)) = parse(&[
            "import",
            "deb",
            "--from-dir",
            "/t",
            "--version",
            "1.2",
            "--os-family",
            "rhel",
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.img",
        ]) else {
            panic!("full import did not parse");
        };
        assert_eq!(a.os_family, OsFamily::Rhel);
        assert_eq!(a.version.as_deref(), Some("1.2"));
        assert_eq!(a.kernel.as_deref(), Some("vmlinuz"));
        assert!(parse(&["import", "a/b", "--from-dir", "/t"]).is_err());
        assert!(parse(&["import", "deb", "--from-dir", "/t", "--version", "../x"]).is_err());
        assert!(parse(&["import", "deb", "--from-dir", "/t", "--os-family", "bsd"]).is_err());
        assert!(parse(&["import", "deb", "--from-dir", "/t", "--jobs", "0"]).is_err());
    }

    #[test]
    fn rollback_and_show_take_names() {
        assert!(matches!(
            parse(&["rollback", "deb", "20260101-000000"]),
            Ok(ImageCommand::Rollback { name, version }) if name == "deb" && version == "20260101-000000"
        ));
        assert!(parse(&["rollback", "deb"]).is_err());
        assert!(parse(&["show", ".x"]).is_err());
    }

    #[test]
    fn image_refs_are_checked() {
        assert_eq!(parse_image_ref("deb@1.2"), Ok("deb@1.2".into()));
        assert_eq!(parse_image_ref("deb"), Ok("deb".into()));
        assert!(parse_image_ref("deb@").is_err());
        assert!(parse_image_ref("a b").is_err());
    }

    #[test]
    fn default_version_is_the_utc_time() {
        assert_eq!(version_from_time(0), "19700101-000000");
        // 2026-11-21 01:40:30 UTC
        assert_eq!(version_from_time(1_795_225_230), "20261121-014030");
        // Leap day.
        assert_eq!(version_from_time(951_782_400), "20000229-000000");
        let now = version_from_time(render::now_ms() / 1000);
        assert!(parse_version(&now).is_ok());
    }
}
