//! `cargo xtask image RECIPE`: build an image tree from a recipe under `images/` and pack it
//! as a tarball ready for `metalcast image import --from-tar`.
//!
//! A recipe directory holds `recipe.json` (suite, mirror, variant, services to enable, the
//! kernel and initrd paths to import with), `packages` (one per line, `#` comments) and
//! `files/` (copied over the tree). The tarball is cached under `.cache/images/` by the hash
//! of the recipe's files and of this builder, so a re-run with nothing changed is instant.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;

use crate::workspace;

/// Part of the cache key: bump it when the build steps below change what a recipe produces.
const BUILDER_VERSION: &str = "2";

/// Build an image tarball from a recipe under images/ (debootstrap; needs root and a Debian
/// mirror) and print its path.
#[derive(clap::Args)]
pub struct Args {
    /// Recipe: a directory name under images/ (e.g. debian-bookworm).
    recipe: String,
    /// Also leave the root tree in this directory (replaced if it exists).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `recipe.json`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Recipe {
    suite: String,
    variant: String,
    mirror: String,
    components: Vec<String>,
    arch: String,
    /// Passed to `metalcast image import --os-family`.
    os_family: String,
    /// Kernel and initrd paths inside the tree, for `--kernel` and `--initrd`.
    kernel: String,
    initrd: String,
    /// Remove manual pages, info, translations and documentation but copyright files.
    #[serde(default)]
    trim_docs: bool,
    /// systemd units enabled in the tree.
    #[serde(default)]
    enable: Vec<String>,
}

/// A built image.
pub struct Built {
    pub tarball: PathBuf,
    pub os_family: String,
    pub kernel: String,
    pub initrd: String,
}

pub fn run(args: Args) -> Result<()> {
    let built = build(&args.recipe, args.out.as_deref())?;
    let size = fs::metadata(&built.tarball)
        .with_context(|| format!("reading {}", built.tarball.display()))?
        .len();
    println!("{} ({} MiB)", built.tarball.display(), size >> 20);
    println!(
        "import: metalcast image import {} --from-tar {} --os-family {} --kernel {} --initrd {}",
        args.recipe,
        built.tarball.display(),
        built.os_family,
        built.kernel,
        built.initrd
    );
    Ok(())
}

/// Builds (or finds in the cache) the tarball of recipe `name`.
pub fn build(name: &str, out: Option<&Path>) -> Result<Built> {
    let dir = workspace::root().join("images").join(name);
    ensure!(
        dir.join("recipe.json").is_file(),
        "no recipe {name}: expected {}",
        dir.join("recipe.json").display()
    );
    let recipe: Recipe = serde_json::from_str(&read(&dir.join("recipe.json"))?)
        .with_context(|| format!("parsing {}/recipe.json", dir.display()))?;
    let packages = parse_packages(&read(&dir.join("packages"))?);
    let key = recipe_key(&dir)?;
    let cache = workspace::cache_dir().join("images");
    let tarball = cache.join(format!("{name}-{}.tar", &key[..16]));
    let built = Built {
        tarball: tarball.clone(),
        os_family: recipe.os_family.clone(),
        kernel: recipe.kernel.clone(),
        initrd: recipe.initrd.clone(),
    };
    if tarball.is_file() {
        println!("image {name}: cached (recipe {})", &key[..16]);
        if let Some(out) = out {
            fresh_dir(out)?;
            run_cmd(
                Command::new("tar")
                    .args(["-xpf"])
                    .arg(&tarball)
                    .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
                    .arg(out),
            )?;
        }
        return Ok(built);
    }
    let started = Instant::now();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = BuildLock::take(cache.join(format!("build-{name}.lock")))?;
    let build_dir = cache.join(format!("build-{name}"));
    let root = match out {
        Some(out) => out.to_path_buf(),
        None => build_dir.join("root"),
    };
    fresh_dir(&root)?;
    println!(
        "image {name}: debootstrap {} into {}",
        recipe.suite,
        root.display()
    );
    run_cmd(
        Command::new("debootstrap")
            .arg(format!("--variant={}", recipe.variant))
            .arg(format!("--arch={}", recipe.arch))
            .arg(format!("--components={}", recipe.components.join(",")))
            .arg(format!("--include={}", packages.join(",")))
            .arg(&recipe.suite)
            .arg(&root)
            .arg(&recipe.mirror),
    )?;
    overlay(&dir.join("files"), &root)?;
    for unit in &recipe.enable {
        // systemctl works offline on a tree it is chrooted into: it only makes the links.
        run_cmd(
            Command::new("chroot")
                .arg(&root)
                .args(["systemctl", "enable", unit]),
        )?;
    }
    clean_tree(&root)?;
    if recipe.trim_docs {
        trim_docs(&root)?;
    }
    for path in [&recipe.kernel, &recipe.initrd] {
        ensure!(
            fs::symlink_metadata(root.join(path)).is_ok(),
            "the recipe names {path} but the built tree has no such file"
        );
    }
    let partial = tarball.with_extension("tar.partial");
    run_cmd(&mut tar_command(&root, &partial))?;
    fs::rename(&partial, &tarball)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    if out.is_none() {
        fs::remove_dir_all(&build_dir)
            .with_context(|| format!("removing {}", build_dir.display()))?;
    }
    println!(
        "image {name}: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(built)
}

/// Package names: one per line, `#` starts a comment.
fn parse_packages(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// BLAKE3 over every file of the recipe (path and bytes, sorted) and [`BUILDER_VERSION`].
fn recipe_key(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut h = blake3::Hasher::new();
    h.update(BUILDER_VERSION.as_bytes());
    for file in files {
        let rel = file.strip_prefix(dir).unwrap_or(&file);
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        // Lengths first so that no two different recipes feed the hasher the same bytes.
        h.update(&(rel.as_os_str().len() as u64).to_le_bytes());
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        // Not following symlinks: inside an image tree they point into the image, not here.
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Copies `files/` over the tree as root-owned files, keeping their modes.
fn overlay(files: &Path, root: &Path) -> Result<()> {
    if !files.is_dir() {
        return Ok(());
    }
    let mut src = files.as_os_str().to_owned();
    src.push("/.");
    run_cmd(
        Command::new("cp")
            .args(["-r", "--preserve=mode", "--no-target-directory"])
            .arg(src)
            .arg(root),
    )?;
    run_cmd(
        Command::new("chown")
            .args(["-R", "--no-dereference", "root:root"])
            .args(overlaid(files, root)?),
    )
}

/// The paths in `root` that `overlay` wrote.
fn overlaid(files: &Path, root: &Path) -> Result<Vec<PathBuf>> {
    let mut list = Vec::new();
    walk(files, &mut list)?;
    Ok(list
        .iter()
        .filter_map(|f| f.strip_prefix(files).ok())
        .map(|rel| root.join(rel))
        .collect())
}

/// What must not be the same on every node, and what only the build needed.
fn clean_tree(root: &Path) -> Result<()> {
    run_cmd(Command::new("chroot").arg(root).args(["apt-get", "clean"]))?;
    for dir in ["var/lib/apt/lists", "var/cache/apt", "tmp", "var/tmp"] {
        empty_dir(&root.join(dir))?;
    }
    remove_files(&root.join("var/log"))?;
    // An empty machine-id makes systemd create one on first boot (and treat it as such).
    fs::write(root.join("etc/machine-id"), b"").context("emptying etc/machine-id")?;
    remove_if_present(&root.join("var/lib/dbus/machine-id"))?;
    // Host-specific files debootstrap copied in; node configuration writes the real ones.
    remove_if_present(&root.join("etc/resolv.conf"))?;
    let hostname = root.join("etc/hostname");
    fs::write(&hostname, b"localhost\n").context("writing etc/hostname")?;
    fs::set_permissions(&hostname, fs::Permissions::from_mode(0o644))
        .context("setting the mode of etc/hostname")?;
    for entry in fs::read_dir(root.join("etc/ssh")).context("listing etc/ssh")? {
        let path = entry?.path();
        let is_host_key = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ssh_host_"));
        if is_host_key {
            remove_if_present(&path)?;
        }
    }
    Ok(())
}

fn trim_docs(root: &Path) -> Result<()> {
    for dir in ["usr/share/man", "usr/share/info", "usr/share/lintian"] {
        empty_dir(&root.join(dir))?;
    }
    let locale = root.join("usr/share/locale");
    for entry in fs::read_dir(&locale).with_context(|| format!("listing {}", locale.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    let mut docs = Vec::new();
    walk(&root.join("usr/share/doc"), &mut docs)?;
    for doc in docs {
        if doc.file_name().is_some_and(|n| n != "copyright") {
            remove_if_present(&doc)?;
        }
    }
    Ok(())
}

fn empty_dir(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Removes the files under `dir`, keeping the directories (their modes matter to services).
fn remove_files(dir: &Path) -> Result<()> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.iter().try_for_each(|f| remove_if_present(f))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A pax tar of the tree the image extractor accepts: numeric owners, extended attributes
/// (file capabilities), members sorted by name, no access/change times (they would make every
/// build's stream differ and add a header per member).
fn tar_command(root: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("tar");
    cmd.args([
        "--create",
        "--format=posix",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--sort=name",
        "--one-file-system",
    ])
    .arg("--file")
    .arg(out)
    .arg("-C")
    .arg(root)
    .arg(".");
    cmd
}

/// Held while a recipe builds: a second build would clear the tree under the first one.
struct BuildLock(PathBuf);

impl BuildLock {
    fn take(path: PathBuf) -> Result<Self> {
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(BuildLock(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = fs::read_to_string(&path).unwrap_or_default();
                    let pid = pid.trim();
                    if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
                        bail!(
                            "process {pid} is building this recipe (lock {})",
                            path.display()
                        );
                    }
                    // Left by a build that was killed.
                    remove_if_present(&path)?;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("could not take {}", path.display())
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Mount points at or below `dir` in a `/proc/self/mounts` text, deepest first. (Paths with
/// blanks are escaped there and are not matched; build paths have none.)
fn mounts_below(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    let mut below: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    below
}

/// Clears `dir`, first unmounting what an interrupted debootstrap left mounted in it (its
/// /proc and /sys), so that clearing never reaches into those.
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let real = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        let mounts = read(Path::new("/proc/self/mounts"))?;
        for mount in mounts_below(&mounts, &real) {
            run_cmd(Command::new("umount").arg(&mount))?;
        }
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_list_skips_comments_and_blanks() {
        let text = "# header\nlinux-image-amd64\n\n  mdadm  # raid\n#lvm2\n";
        assert_eq!(parse_packages(text), ["linux-image-amd64", "mdadm"]);
    }

    #[test]
    fn shipped_recipe_parses() {
        let dir = workspace::root().join("images/debian-bookworm");
        let recipe: Recipe =
            serde_json::from_str(&read(&dir.join("recipe.json")).unwrap()).unwrap();
        assert_eq!(recipe.suite, "bookworm");
        let packages = parse_packages(&read(&dir.join("packages")).unwrap());
        for needed in ["linux-image-amd64", "grub-efi-amd64-bin", "mdadm", "lvm2"] {
            assert!(packages.iter().any(|p| p == needed), "{needed}");
        }
    }

    #[test]
    fn mounts_below_the_tree_come_deepest_first() {
        let mounts = "proc /proc proc rw 0 0\n\
                      proc /b/root/proc proc rw 0 0\n\
                      sysfs /b/root/sys sysfs rw 0 0\n\
                      binfmt /b/root/proc/sys/fs/binfmt_misc binfmt_misc rw 0 0\n\
                      tmpfs /b/rootfs tmpfs rw 0 0\n";
        assert_eq!(
            mounts_below(mounts, Path::new("/b/root")),
            [
                "/b/root/proc/sys/fs/binfmt_misc",
                "/b/root/proc",
                "/b/root/sys"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn key_changes_with_any_recipe_file() {
        let dir = std::env::temp_dir().join(format!("xtask-recipe-key-{}", std::process::id()));
        fresh_dir(&dir.join("files")).unwrap();
        fs::write(dir.join("packages"), "a\n").unwrap();
        let first = recipe_key(&dir).unwrap();
        assert_eq!(recipe_key(&dir).unwrap(), first);
        fs::write(dir.join("files/x"), "").unwrap();
        let second = recipe_key(&dir).unwrap();
        assert_ne!(second, first);
        fs::write(dir.join("packages"), "b\n").unwrap();
        assert_ne!(recipe_key(&dir).unwrap(), second);
        fs::remove_dir_all(&dir).unwrap();
    }
}
