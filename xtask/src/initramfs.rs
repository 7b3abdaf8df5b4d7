//! `cargo xtask initramfs`: the kernel and the boot initramfs the agent runs in.
//!
//! Inputs: Debian's `linux-image-amd64` (kernel and modules, downloaded once into the cache),
//! the host's Debian tools listed in `initramfs/tools.list` with their shared libraries, the
//! static `metalcast-agent`, and the files under `initramfs/`. Output: `target/boot/vmlinuz`
//! and `target/boot/initramfs.cpio.zst`, a newc archive written here so that the same inputs
//! give the same bytes (sorted paths, fixed owners, times and inode numbers).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::workspace;

/// Debian's kernel meta-package; it depends on the current versioned image package.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
const AGENT_TARGET: &str = "x86_64-unknown-linux-musl";
const AGENT_PROFILE: &str = "release-agent";
/// zstd level for the archive: decompression speed hardly depends on it, size does, and the
/// node fetches the initramfs on every network boot.
const ZSTD_LEVEL: i32 = 19;
/// Where the host keeps the programs named in tools.list, searched in this order.
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The files a node network-boots.
pub struct BootArtifacts {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Build the agent and the boot initramfs (kernel + initramfs under target/boot/).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    let boot = build()?;
    for path in [&boot.kernel, &boot.initramfs] {
        let size = fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        println!("{} ({})", path.display(), human(size));
    }
    Ok(())
}

/// Builds both artifacts and prints the BLAKE3 of the initramfs, so runs can be compared.
pub fn build() -> Result<BootArtifacts> {
    let started = Instant::now();
    let source = workspace::root().join("initramfs");
    // The image's tree is staged on disk first, then packed.
    let root = workspace::target_dir().join("initramfs-root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let out_dir = workspace::target_dir().join("boot");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mtime = source_date_epoch()?;

    let kernel = kernel::fetch()?;
    println!("initramfs: kernel {}", kernel.version);

    layout::skeleton(&root)?;
    let loaded = kernel::stage_modules(&kernel, &read(&source.join("modules.list"))?, &root)?;
    tools::stage(
        &read(&source.join("tools.list"))?,
        &read(&source.join("busybox.applets"))?,
        &root,
    )?;
    let agent = build_agent()?;
    layout::install(&agent, &root.join("usr/bin/metalcast-agent"), 0o755)?;
    layout::install(&source.join("init"), &root.join("init"), 0o755)?;
    layout::install(
        &source.join("udhcpc.script"),
        &root.join("usr/share/udhcpc/default.script"),
        0o755,
    )?;
    layout::install(
        &source.join("lvm.conf"),
        &root.join("etc/lvm/lvm.conf"),
        0o644,
    )?;
    layout::write(
        &root.join("etc/metalcast/modules"),
        &(loaded.join("\n") + "\n"),
    )?;

    let mut entries = cpio::entries_from_dir(&root)?;
    // The kernel opens /dev/console for init before init can mount devtmpfs.
    entries.push(cpio::Entry::char_dev("dev/console", 0o600, 5, 1));
    entries.push(cpio::Entry::char_dev("dev/null", 0o666, 1, 3));
    let archive = cpio::write(entries, mtime)?;

    let initramfs = out_dir.join("initramfs.cpio.zst");
    let compressed = compress_unless_unchanged(&archive, &initramfs)?;
    let kernel_out = out_dir.join("vmlinuz");
    let vmlinuz = fs::read(&kernel.vmlinuz)
        .with_context(|| format!("reading {}", kernel.vmlinuz.display()))?;
    write_atomically(&kernel_out, &vmlinuz)?;

    println!(
        "initramfs: {} modules loaded at boot, archive {} → {} zstd -{ZSTD_LEVEL}, blake3 {}, {:.1} s",
        loaded.len(),
        human(archive.len() as u64),
        human(compressed.len() as u64),
        blake3::hash(&compressed).to_hex(),
        started.elapsed().as_secs_f64()
    );
    Ok(BootArtifacts {
        kernel: kernel_out,
        initramfs,
    })
}

/// Stages host programs under `root` the way the boot initramfs carries its own (same
/// directories, merged /usr, with their shared libraries), for an archive appended to it.
/// `tools_list` is in the format of `initramfs/tools.list`.
pub fn stage_tools(tools_list: &str, root: &Path) -> Result<()> {
    tools::install(tools_list, root).map(drop)
}

/// The tree under `root` as a zstd-compressed newc archive, made as the boot initramfs is.
/// The kernel unpacks archives concatenated to the initramfs over it, in order, so such an
/// archive adds files to the boot initramfs or replaces some of them.
pub fn pack(root: &Path) -> Result<Vec<u8>> {
    compress(&cpio::write(
        cpio::entries_from_dir(root)?,
        source_date_epoch()?,
    )?)
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) for the archive's times, else 0.
fn source_date_epoch() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

fn build_agent() -> Result<PathBuf> {
    println!("initramfs: building metalcast-agent ({AGENT_TARGET}, profile {AGENT_PROFILE})");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--package",
            "metalcast-agent",
            "--target",
            AGENT_TARGET,
            "--profile",
            AGENT_PROFILE,
        ])
        .current_dir(workspace::root())
        .status()
        .context("running cargo to build metalcast-agent")?;
    ensure!(
        status.success(),
        "building metalcast-agent failed ({status})"
    );
    Ok(workspace::target_dir()
        .join(AGENT_TARGET)
        .join(AGENT_PROFILE)
        .join("metalcast-agent"))
}

/// Writes the compressed archive to `out`, unless `out` already holds this very archive at
/// this level (recorded beside it): compression is a pure function of the two, and the slow
/// part of a rebuild.
fn compress_unless_unchanged(archive: &[u8], out: &Path) -> Result<Vec<u8>> {
    let stamp = out.with_extension("zst.source");
    let source = format!("{} zstd-{ZSTD_LEVEL}\n", blake3::hash(archive).to_hex());
    let unchanged = fs::read_to_string(&stamp).ok().filter(|s| *s == source);
    if let Some(existing) = unchanged.and_then(|_| fs::read(out).ok()) {
        println!("initramfs: archive unchanged, keeping {}", out.display());
        return Ok(existing);
    }
    let compressed = compress(archive)?;
    write_atomically(out, &compressed)?;
    write_atomically(&stamp, source.as_bytes())?;
    Ok(compressed)
}

fn compress(archive: &[u8]) -> Result<Vec<u8>> {
    let mut encoder =
        zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).context("starting zstd")?;
    encoder.include_checksum(true).context("configuring zstd")?;
    encoder
        .write_all(archive)
        .context("compressing the archive")?;
    encoder.finish().context("finishing the zstd stream")
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs a command and returns its stdout, or an error with its stderr.
fn output(program: &str, args: &[&str], dir: Option<&Path>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Lines of a list file without comments and blank lines.
fn list_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
}

/// The image's directory tree: merged /usr (bin, sbin, lib, lib64 are symlinks into usr/, as
/// on Debian 12, so the host's library paths and the loader path work unchanged).
mod layout {
    use super::*;

    pub fn skeleton(root: &Path) -> Result<()> {
        for dir in [
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
            "root",
            "mnt",
            "etc",
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
        ] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("etc/mtab", "/proc/self/mounts"),
        ] {
            symlink(target, &root.join(link))?;
        }
        Ok(())
    }

    pub fn symlink(target: &str, link: &Path) -> Result<()> {
        std::os::unix::fs::symlink(target, link)
            .with_context(|| format!("linking {} → {target}", link.display()))
    }

    /// Copies `from` (following symlinks) to `to`, creating parent directories.
    pub fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        write_bytes(to, &data)?;
        fs::set_permissions(to, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", to.display()))
    }

    pub fn write(to: &Path, text: &str) -> Result<()> {
        write_bytes(to, text.as_bytes())
    }

    fn write_bytes(to: &Path, data: &[u8]) -> Result<()> {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(to, data).with_context(|| format!("writing {}", to.display()))
    }

    /// Where a host library path lives in the image: /lib and /lib64 are symlinks into usr/
    /// there, so their files go under usr/.
    pub fn image_path(host: &Path) -> Result<PathBuf> {
        let rel = host
            .strip_prefix("/")
            .map_err(|_| anyhow!("{} is not an absolute path", host.display()))?;
        let mut parts = rel.components();
        let first = parts
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(match first.as_str() {
            "lib" | "lib64" | "bin" | "sbin" => Path::new("usr").join(rel),
            _ => rel.to_path_buf(),
        })
    }
}

/// Debian's kernel package and the modules the image carries.
mod kernel {
    use super::*;

    pub struct Kernel {
        pub version: String,
        /// `lib/modules/VERSION` of the unpacked package, with a full modules.dep.
        pub modules: PathBuf,
        pub vmlinuz: PathBuf,
    }

    /// Resolves the current kernel package, then downloads and unpacks it into the cache
    /// unless an earlier build already did.
    pub fn fetch() -> Result<Kernel> {
        let depends = output("apt-cache", &["depends", KERNEL_META_PACKAGE], None)
            .context("asking apt which kernel linux-image-amd64 is (run apt-get update first?)")?;
        let package = image_package(&depends).ok_or_else(|| {
            anyhow!("apt-cache depends {KERNEL_META_PACKAGE} names no linux-image-*-amd64 package")
        })?;
        let policy = output("apt-cache", &["policy", &package], None)?;
        let version = candidate(&policy)
            .ok_or_else(|| anyhow!("apt has no installable version of {package}"))?;

        let debs = workspace::cache_dir().join("debs");
        fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        // apt names downloads with the epoch's ':' escaped.
        let deb = debs.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ));
        if deb.exists() {
            println!("initramfs: using cached {}", deb.display());
        } else {
            println!("initramfs: downloading {package} {version}");
            output(
                "apt-get",
                &["download", &format!("{package}={version}")],
                Some(&debs),
            )?;
            ensure!(
                deb.exists(),
                "apt-get download did not produce {}",
                deb.display()
            );
        }

        // Unpacked once per package version: the .deb never changes under its name.
        let dir = workspace::cache_dir()
            .join("kernel")
            .join(format!("{package}_{version}"));
        let done = dir.join(".unpacked");
        let release = package
            .strip_prefix("linux-image-")
            .ok_or_else(|| anyhow!("unexpected kernel package name {package}"))?
            .to_string();
        if !done.exists() {
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
            }
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            output(
                "dpkg-deb",
                &["-x", &path_str(&deb)?, &path_str(&dir)?],
                None,
            )?;
            // Debian's package ships no modules.dep: depmod writes it at install time.
            output("depmod", &["-b", &path_str(&dir)?, &release], None)?;
            layout::write(&done, "")?;
        }
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|m| dir.join(m).join(&release))
            .find(|p| p.is_dir())
            .ok_or_else(|| anyhow!("{} has no modules for {release}", deb.display()))?;
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
        ensure!(
            vmlinuz.is_file(),
            "{} has no boot/vmlinuz-{release}",
            deb.display()
        );
        Ok(Kernel {
            version: release,
            modules,
            vmlinuz,
        })
    }

    /// Copies the listed modules and their dependencies into the image, writes the image's own
    /// modules.dep/alias with depmod, and returns the names init loads, in list order.
    pub fn stage_modules(kernel: &Kernel, list: &str, root: &Path) -> Result<Vec<String>> {
        let wanted = parse_module_list(list)?;
        let deps = parse_modules_dep(&read(&kernel.modules.join("modules.dep"))?);
        let builtin = parse_builtin(&read(&kernel.modules.join("modules.builtin"))?);
        let resolved = resolve(&wanted, &deps, &builtin)
            .with_context(|| format!("kernel {}", kernel.version))?;
        for name in &resolved.builtin {
            println!("initramfs: {name} is built into the kernel");
        }
        for name in &resolved.absent {
            println!("initramfs: optional module {name} is not in this kernel");
        }

        let staged = root.join("usr/lib/modules").join(&kernel.version);
        for rel in &resolved.files {
            let to = staged.join(rel);
            layout::install(&kernel.modules.join(rel), &to, 0o644)?;
        }
        for file in ["modules.builtin", "modules.order"] {
            layout::install(&kernel.modules.join(file), &staged.join(file), 0o644)?;
        }
        output("depmod", &["-b", &path_str(root)?, &kernel.version], None)?;
        // busybox modprobe reads the text files; kmod's binary indexes and modules.order only
        // cost space.
        for entry in
            fs::read_dir(&staged).with_context(|| format!("listing {}", staged.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".bin")
                || name == "modules.order"
                || name == "modules.builtin.modinfo"
            {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        println!("initramfs: {} module files", resolved.files.len());
        Ok(resolved.load)
    }

    /// `Depends: linux-image-6.1.0-NN-amd64` out of `apt-cache depends linux-image-amd64`.
    pub fn image_package(depends: &str) -> Option<String> {
        depends.lines().find_map(|l| {
            let pkg = l.trim().strip_prefix("Depends:")?.trim();
            (pkg.starts_with("linux-image-")
                && pkg != KERNEL_META_PACKAGE
                && !pkg.contains(['<', '>', '|']))
            .then(|| pkg.to_string())
        })
    }

    /// `Candidate: 6.1.192-2` out of `apt-cache policy PKG`.
    pub fn candidate(policy: &str) -> Option<String> {
        policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "(none)")
            .map(str::to_string)
    }

    #[derive(Debug, PartialEq)]
    pub struct Wanted {
        pub name: String,
        pub optional: bool,
    }

    /// modules.list: one module per line, `name?` when the kernel may lack it.
    pub fn parse_module_list(text: &str) -> Result<Vec<Wanted>> {
        list_lines(text)
            .map(|line| {
                ensure!(
                    !line.contains(char::is_whitespace),
                    "modules.list: one module per line, got {line:?}"
                );
                let (name, optional) = match line.strip_suffix('?') {
                    Some(n) => (n, true),
                    None => (line, false),
                };
                Ok(Wanted {
                    name: normalize(name),
                    optional,
                })
            })
            .collect()
    }

    /// Module names treat `-` and `_` alike; files use either (dm-mod.ko is dm_mod).
    pub fn normalize(name: &str) -> String {
        name.replace('-', "_")
    }

    /// `kernel/drivers/md/dm-mod.ko` → `dm_mod`.
    pub fn module_name(path: &str) -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        normalize(file.split(".ko").next().unwrap_or(file))
    }

    pub struct DepEntry {
        pub path: String,
        pub deps: Vec<String>,
    }

    /// modules.dep: `path: dep-path dep-path…`, keyed by module name.
    pub fn parse_modules_dep(text: &str) -> BTreeMap<String, DepEntry> {
        text.lines()
            .filter_map(|l| {
                let (path, deps) = l.split_once(':')?;
                let path = path.trim();
                (!path.is_empty()).then(|| {
                    let deps = deps.split_whitespace().map(str::to_string).collect();
                    (
                        module_name(path),
                        DepEntry {
                            path: path.to_string(),
                            deps,
                        },
                    )
                })
            })
            .collect()
    }

    /// modules.builtin: paths of modules compiled into the kernel, as names.
    pub fn parse_builtin(text: &str) -> BTreeSet<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect()
    }

    #[derive(Debug, Default)]
    pub struct Resolved {
        /// Module files relative to lib/modules/VERSION: the list and its dependencies.
        pub files: BTreeSet<String>,
        /// Names init loads, in list order.
        pub load: Vec<String>,
        pub builtin: Vec<String>,
        pub absent: Vec<String>,
    }

    pub fn resolve(
        wanted: &[Wanted],
        deps: &BTreeMap<String, DepEntry>,
        builtin: &BTreeSet<String>,
    ) -> Result<Resolved> {
        let mut out = Resolved::default();
        for w in wanted {
            if builtin.contains(&w.name) {
                out.builtin.push(w.name.clone());
                continue;
            }
            let Some(entry) = deps.get(&w.name) else {
                if w.optional {
                    out.absent.push(w.name.clone());
                    continue;
                }
                bail!(
                    "module {} is neither a module nor built in (mark it `{}?` if it may be missing)",
                    w.name,
                    w.name
                );
            };
            out.files.insert(entry.path.clone());
            // modules.dep lists the full transitive closure on each line.
            out.files.extend(entry.deps.iter().cloned());
            if !out.load.contains(&w.name) {
                out.load.push(w.name.clone());
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const DEP: &str = "kernel/drivers/md/dm-mod.ko:\n\
                           kernel/drivers/md/dm-mirror.ko: kernel/drivers/md/dm-region-hash.ko kernel/drivers/md/dm-log.ko kernel/drivers/md/dm-mod.ko\n\
                           kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\n\
                           kernel/fs/nls/nls_iso8859-1.ko:\n";

        #[test]
        fn finds_the_versioned_image_package() {
            let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
            assert_eq!(
                image_package(out).as_deref(),
                Some("linux-image-6.1.0-56-amd64")
            );
            assert_eq!(
                image_package("linux-image-amd64\n  Depends: <linux-image>\n"),
                None
            );
            assert_eq!(image_package(""), None);
        }

        #[test]
        fn reads_the_candidate_version() {
            let out = "linux-image-6.1.0-56-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
            assert_eq!(candidate(out).as_deref(), Some("6.1.192-2"));
            assert_eq!(candidate("x:\n  Candidate: (none)\n"), None);
        }

        #[test]
        fn list_marks_optional_and_normalizes_names() {
            let list = "# comment\nvirtio_pci\n\ndm-mirror?   # trailing comment\n";
            assert_eq!(
                parse_module_list(list).unwrap(),
                vec![
                    Wanted {
                        name: "virtio_pci".into(),
                        optional: false
                    },
                    Wanted {
                        name: "dm_mirror".into(),
                        optional: true
                    }
                ]
            );
            assert!(parse_module_list("two words\n").is_err());
        }

        #[test]
        fn names_from_paths() {
            assert_eq!(module_name("kernel/drivers/md/dm-mod.ko"), "dm_mod");
            assert_eq!(
                module_name("kernel/fs/nls/nls_iso8859-1.ko.xz"),
                "nls_iso8859_1"
            );
            assert_eq!(module_name("raid456.ko"), "raid456");
        }

        #[test]
        fn closure_builtins_and_missing_modules() {
            let deps = parse_modules_dep(DEP);
            let builtin = parse_builtin("kernel/net/packet/af_packet.ko\n");
            let wanted =
                parse_module_list("dm_mirror\naf_packet\nxfs\nnls_iso8859_1\ndm_mod\nzfs?\n")
                    .unwrap();
            let r = resolve(&wanted, &deps, &builtin).unwrap();
            assert_eq!(r.load, vec!["dm_mirror", "xfs", "nls_iso8859_1", "dm_mod"]);
            assert_eq!(r.builtin, vec!["af_packet"]);
            assert_eq!(r.absent, vec!["zfs"]);
            let files: Vec<&str> = r.files.iter().map(String::as_str).collect();
            assert_eq!(
                files,
                vec![
                    "kernel/drivers/md/dm-log.ko",
                    "kernel/drivers/md/dm-mirror.ko",
                    "kernel/drivers/md/dm-mod.ko",
                    "kernel/drivers/md/dm-region-hash.ko",
                    "kernel/fs/nls/nls_iso8859-1.ko",
                    "kernel/fs/xfs/xfs.ko",
                    "kernel/lib/libcrc32c.ko",
                ]
            );
            let err = resolve(&parse_module_list("zfs\n").unwrap(), &deps, &builtin).unwrap_err();
            assert!(err.to_string().contains("zfs"), "{err}");
        }
    }
}

/// Host programs and their shared libraries.
mod tools {
    use super::*;

    #[derive(Debug, PartialEq)]
    pub struct Tool {
        pub name: String,
        pub package: String,
        pub aliases: Vec<String>,
    }

    /// tools.list: `name package [alias…]` per line.
    pub fn parse_tools_list(text: &str) -> Result<Vec<Tool>> {
        list_lines(text)
            .map(|line| {
                let mut words = line.split_whitespace().map(str::to_string);
                match (words.next(), words.next()) {
                    (Some(name), Some(package)) => Ok(Tool { name, package, aliases: words.collect() }),
                    _ => bail!("tools.list: expected `<name> <Debian package> [<other names>…]`, got {line:?}"),
                }
            })
            .collect()
    }

    /// Shared objects from `ldd` output: resolved paths and the loader. `vdso` has no file.
    pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.contains("not a dynamic executable") || line.contains("statically linked") {
                continue;
            }
            let target = match line.split_once("=>") {
                Some((lib, rest)) => {
                    let rest = rest.trim();
                    ensure!(
                        !rest.starts_with("not found"),
                        "shared library {} not found",
                        lib.trim()
                    );
                    rest
                }
                None => line,
            };
            let path = target.split_whitespace().next().unwrap_or_default();
            if path.starts_with('/') {
                out.push(PathBuf::from(path));
            }
        }
        Ok(out)
    }

    fn find(name: &str) -> Option<(PathBuf, &'static str)> {
        TOOL_DIRS
            .iter()
            .map(|d| (Path::new(d).join(name), *d))
            .find(|(p, _)| p.exists())
            .map(|(p, d)| {
                // Host sbin tools stay in sbin, the rest go to bin.
                (
                    p,
                    if d.ends_with("sbin") {
                        "usr/sbin"
                    } else {
                        "usr/bin"
                    },
                )
            })
    }

    pub fn stage(tools_list: &str, applets: &str, root: &Path) -> Result<()> {
        let installed = install(tools_list, root)?;
        link_applets(applets, root, &installed)
    }

    /// Copies the tools of a tools.list text, and every shared library they link, from this
    /// host into `root`; returns the image paths of the tools and their other names.
    pub fn install(tools_list: &str, root: &Path) -> Result<BTreeSet<String>> {
        let tools = parse_tools_list(tools_list)?;
        let mut libs = BTreeSet::new();
        let mut installed = BTreeSet::new();
        for tool in &tools {
            let (host, dir) = find(&tool.name).ok_or_else(|| {
                anyhow!(
                    "{} is not installed on this machine: install the Debian package {} (apt-get install {})",
                    tool.name,
                    tool.package,
                    tool.package
                )
            })?;
            let bytes = fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
            if bytes.starts_with(b"\x7fELF") {
                let ldd = Command::new("ldd")
                    .arg(&host)
                    .output()
                    .context("running ldd")?;
                let text = String::from_utf8_lossy(&ldd.stdout).into_owned()
                    + &String::from_utf8_lossy(&ldd.stderr);
                libs.extend(
                    parse_ldd(&text).with_context(|| format!("libraries of {}", host.display()))?,
                );
            } else {
                ensure!(
                    bytes.starts_with(b"#!"),
                    "{} is neither an ELF program nor a script",
                    host.display()
                );
            }
            let to = root.join(dir).join(&tool.name);
            layout::install(&host, &to, 0o755)?;
            installed.insert(format!("{dir}/{}", tool.name));
            for alias in &tool.aliases {
                layout::symlink(&tool.name, &root.join(dir).join(alias))?;
                installed.insert(format!("{dir}/{alias}"));
            }
        }
        for lib in &libs {
            let mode = fs::metadata(lib)
                .with_context(|| format!("reading {}", lib.display()))?
                .permissions()
                .mode();
            layout::install(
                lib,
                &root.join(layout::image_path(lib)?),
                if mode & 0o111 != 0 { 0o755 } else { 0o644 },
            )?;
        }
        println!(
            "initramfs: {} tools, {} shared libraries",
            tools.len(),
            libs.len()
        );
        Ok(installed)
    }

    /// Busybox applet symlinks in usr/bin, refusing names a real tool already has.
    fn link_applets(applets: &str, root: &Path, installed: &BTreeSet<String>) -> Result<()> {
        let available = output(&path_str(&root.join("usr/bin/busybox"))?, &["--list"], None)?;
        let available: BTreeSet<&str> = available.lines().map(str::trim).collect();
        let mut count = 0;
        for applet in list_lines(applets).flat_map(str::split_whitespace) {
            ensure!(
                available.contains(applet),
                "busybox.applets: this busybox has no applet {applet}"
            );
            ensure!(
                !installed.contains(&format!("usr/bin/{applet}"))
                    && !installed.contains(&format!("usr/sbin/{applet}")),
                "busybox.applets: {applet} would shadow the tool of that name from tools.list"
            );
            layout::symlink("busybox", &root.join("usr/bin").join(applet))?;
            count += 1;
        }
        println!("initramfs: {count} busybox applets");
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ldd_output() {
            let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                        \tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f38)\n\
                        \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f38)\n\
                        \t/lib64/ld-linux-x86-64.so.2 (0x00007f38)\n";
            assert_eq!(
                parse_ldd(text).unwrap(),
                vec![
                    PathBuf::from("/lib/x86_64-linux-gnu/libudev.so.1"),
                    PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                    PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
                ]
            );
            assert!(
                parse_ldd("\tnot a dynamic executable\n")
                    .unwrap()
                    .is_empty()
            );
            assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
            let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
            assert!(err.to_string().contains("libfoo.so.1"), "{err}");
        }

        #[test]
        fn tools_list_lines() {
            let t = parse_tools_list("# c\nlvm lvm2 vgcreate lvs\nmdadm mdadm\n").unwrap();
            assert_eq!(
                t[0],
                Tool {
                    name: "lvm".into(),
                    package: "lvm2".into(),
                    aliases: vec!["vgcreate".into(), "lvs".into()]
                }
            );
            assert_eq!(t[1].aliases, Vec::<String>::new());
            assert!(parse_tools_list("lonely\n").is_err());
        }

        #[test]
        fn library_paths_move_under_usr() {
            assert_eq!(
                layout::image_path(Path::new("/lib64/ld-linux-x86-64.so.2")).unwrap(),
                Path::new("usr/lib64/ld-linux-x86-64.so.2")
            );
            assert_eq!(
                layout::image_path(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap(),
                Path::new("usr/lib/x86_64-linux-gnu/libc.so.6")
            );
            assert_eq!(
                layout::image_path(Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1")).unwrap(),
                Path::new("usr/lib/x86_64-linux-gnu/libz.so.1")
            );
            assert!(layout::image_path(Path::new("lib/x")).is_err());
        }
    }
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", p.display()))
}

/// The newc ("070701") cpio format the kernel unpacks into its initial rootfs, written
/// deterministically: entries sorted by path, owner root, one given mtime, inode numbers by
/// position.
mod cpio {
    use super::*;

    const MAGIC: &[u8] = b"070701";
    pub const TRAILER: &str = "TRAILER!!!";
    const S_IFDIR: u32 = 0o040000;
    const S_IFREG: u32 = 0o100000;
    const S_IFLNK: u32 = 0o120000;
    const S_IFCHR: u32 = 0o020000;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Kind {
        Dir,
        File(Vec<u8>),
        Symlink(String),
        CharDev { major: u32, minor: u32 },
    }

    /// One archive member; `path` is relative (`usr/bin/busybox`), permissions are 0o7777 bits.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Entry {
        pub path: String,
        pub perm: u32,
        pub kind: Kind,
    }

    impl Entry {
        pub fn char_dev(path: &str, perm: u32, major: u32, minor: u32) -> Self {
            Self {
                path: path.to_string(),
                perm,
                kind: Kind::CharDev { major, minor },
            }
        }
    }

    /// Every file, directory and symlink under `dir`. Permissions are normalized (0755 for
    /// directories and executables, 0644 otherwise) so the host's umask does not leak in.
    pub fn entries_from_dir(dir: &Path) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        walk(dir, dir, &mut out)?;
        Ok(out)
    }

    fn walk(base: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
        let mut children: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        children.sort();
        for path in children {
            let rel = path_str(
                path.strip_prefix(base)
                    .context("walking the staging tree")?,
            )?;
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let kind = if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)
                    .with_context(|| format!("reading link {}", path.display()))?;
                Kind::Symlink(path_str(&target)?)
            } else if meta.is_dir() {
                Kind::Dir
            } else if meta.is_file() {
                Kind::File(fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
            } else {
                bail!("{} is neither file, directory nor symlink", path.display());
            };
            let perm = match kind {
                Kind::Symlink(_) => 0o777,
                Kind::File(_) if meta.permissions().mode() & 0o111 == 0 => 0o644,
                _ => 0o755,
            };
            let is_dir = kind == Kind::Dir;
            out.push(Entry {
                path: rel,
                perm,
                kind,
            });
            if is_dir {
                walk(base, &path, out)?;
            }
        }
        Ok(())
    }

    /// The archive bytes: entries sorted by path (a directory before what it holds), then the
    /// trailer. Refuses duplicate paths and entries whose parent directory is not in the archive.
    pub fn write(mut entries: Vec<Entry>, mtime: u32) -> Result<Vec<u8>> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut dirs = BTreeSet::new();
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            ensure!(
                !e.path.is_empty() && !e.path.starts_with('/'),
                "cpio: bad path {:?}",
                e.path
            );
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                ensure!(
                    dirs.contains(parent),
                    "cpio: {} comes without its directory {parent}",
                    e.path
                );
            }
            if i > 0 {
                ensure!(
                    entries[i - 1].path != e.path,
                    "cpio: {} is in the archive twice",
                    e.path
                );
            }
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &e.kind {
                Kind::Dir => {
                    dirs.insert(e.path.as_str());
                    (S_IFDIR, 2, &[], (0, 0))
                }
                Kind::File(d) => (S_IFREG, 1, d, (0, 0)),
                Kind::Symlink(t) => (S_IFLNK, 1, t.as_bytes(), (0, 0)),
                Kind::CharDev { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
            };
            // Inode 0 is not used: some extractors treat it as "no inode".
            let ino = u32::try_from(i + 1).context("cpio: too many entries")?;
            member(
                &mut out,
                ino,
                mode | (e.perm & 0o7777),
                nlink,
                mtime,
                rdev,
                &e.path,
                data,
            )?;
        }
        member(&mut out, 0, 0, 1, 0, (0, 0), TRAILER, &[])?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn member(
        out: &mut Vec<u8>,
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        name: &str,
        data: &[u8],
    ) -> Result<()> {
        let size =
            u32::try_from(data.len()).with_context(|| format!("cpio: {name} is over 4 GiB"))?;
        let namesize = u32::try_from(name.len() + 1).context("cpio: name too long")?;
        out.extend_from_slice(MAGIC);
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        for field in [
            ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ] {
            out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
        Ok(())
    }

    fn pad4(out: &mut Vec<u8>) {
        let padding = (4 - out.len() % 4) % 4;
        out.resize(out.len() + padding, 0);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const HEADER_LEN: usize = 110;

        /// (name, mode, ino, nlink, mtime, rdev, data) of each member, checking alignment.
        type Member = (String, u32, u32, u32, u32, (u32, u32), Vec<u8>);

        fn parse(mut buf: &[u8]) -> Vec<Member> {
            let total = buf.len();
            let mut out = Vec::new();
            loop {
                let offset = total - buf.len();
                assert_eq!(offset % 4, 0, "header at {offset} not aligned");
                assert_eq!(&buf[..6], MAGIC);
                let field = |i: usize| {
                    u32::from_str_radix(
                        std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap(),
                        16,
                    )
                    .unwrap()
                };
                let (ino, mode, uid, gid, nlink, mtime, size) = (
                    field(0),
                    field(1),
                    field(2),
                    field(3),
                    field(4),
                    field(5),
                    field(6),
                );
                let (rmaj, rmin, namesize, check) = (field(9), field(10), field(11), field(12));
                assert_eq!((uid, gid, check), (0, 0, 0));
                let name_end = HEADER_LEN + namesize as usize;
                assert_eq!(buf[name_end - 1], 0, "name is NUL-terminated");
                let name = std::str::from_utf8(&buf[HEADER_LEN..name_end - 1])
                    .unwrap()
                    .to_string();
                let data_start = name_end.next_multiple_of(4);
                let data = buf[data_start..data_start + size as usize].to_vec();
                let next = (data_start + size as usize).next_multiple_of(4);
                assert!(buf[name_end..data_start].iter().all(|b| *b == 0));
                assert!(
                    buf[data_start + size as usize..next]
                        .iter()
                        .all(|b| *b == 0)
                );
                buf = &buf[next..];
                let done = name == TRAILER;
                out.push((name, mode, ino, nlink, mtime, (rmaj, rmin), data));
                if done {
                    assert!(buf.is_empty(), "nothing after the trailer");
                    return out;
                }
            }
        }

        fn sample() -> Vec<Entry> {
            vec![
                Entry {
                    path: "usr/bin/sh".into(),
                    perm: 0o777,
                    kind: Kind::Symlink("busybox".into()),
                },
                Entry {
                    path: "usr".into(),
                    perm: 0o755,
                    kind: Kind::Dir,
                },
                Entry {
                    path: "init".into(),
                    perm: 0o755,
                    kind: Kind::File(b"#!/bin/sh\n".to_vec()),
                },
                Entry {
                    path: "usr/bin".into(),
                    perm: 0o755,
                    kind: Kind::Dir,
                },
                Entry {
                    path: "usr/bin/busybox".into(),
                    perm: 0o755,
                    kind: Kind::File(vec![1, 2, 3, 4, 5]),
                },
                Entry {
                    path: "dev".into(),
                    perm: 0o755,
                    kind: Kind::Dir,
                },
                Entry::char_dev("dev/console", 0o600, 5, 1),
            ]
        }

        #[test]
        fn round_trips_sorted_with_trailer() {
            let bytes = write(sample(), 1_700_000_000).unwrap();
            let members = parse(&bytes);
            let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
            assert_eq!(
                names,
                [
                    "dev",
                    "dev/console",
                    "init",
                    "usr",
                    "usr/bin",
                    "usr/bin/busybox",
                    "usr/bin/sh",
                    TRAILER
                ]
            );
            let inos: Vec<u32> = members.iter().map(|m| m.2).collect();
            assert_eq!(inos, [1, 2, 3, 4, 5, 6, 7, 0]);
            let by_name = |n: &str| members.iter().find(|m| m.0 == n).unwrap().clone();
            assert_eq!(by_name("dev").1, S_IFDIR | 0o755);
            assert_eq!(by_name("dev").3, 2);
            assert_eq!(by_name("dev/console").1, S_IFCHR | 0o600);
            assert_eq!(by_name("dev/console").5, (5, 1));
            assert_eq!(by_name("init").6, b"#!/bin/sh\n");
            assert_eq!(by_name("usr/bin/busybox").6, [1, 2, 3, 4, 5]);
            assert_eq!(by_name("usr/bin/sh").1, S_IFLNK | 0o777);
            assert_eq!(by_name("usr/bin/sh").6, b"busybox");
            assert!(members[..7].iter().all(|m| m.4 == 1_700_000_000));
            assert_eq!(members[7].1, 0);
        }

        #[test]
        fn same_entries_same_bytes_in_any_order() {
            let mut reversed = sample();
            reversed.reverse();
            assert_eq!(write(sample(), 0).unwrap(), write(reversed, 0).unwrap());
            assert_ne!(write(sample(), 0).unwrap(), write(sample(), 1).unwrap());
        }

        #[test]
        fn refuses_orphans_duplicates_and_absolute_paths() {
            let orphan = vec![Entry {
                path: "etc/x".into(),
                perm: 0o644,
                kind: Kind::File(vec![]),
            }];
            assert!(write(orphan, 0).is_err());
            let mut dup = sample();
            dup.push(Entry {
                path: "init".into(),
                perm: 0o644,
                kind: Kind::File(vec![]),
            });
            assert!(write(dup, 0).is_err());
            let abs = vec![Entry {
                path: "/init".into(),
                perm: 0o644,
                kind: Kind::File(vec![]),
            }];
            assert!(write(abs, 0).is_err());
        }

        #[test]
        fn empty_archive_is_just_the_trailer() {
            let bytes = write(Vec::new(), 0).unwrap();
            assert_eq!(parse(&bytes).len(), 1);
            assert_eq!(bytes.len() % 4, 0);
        }

        #[test]
        fn reads_a_staging_tree() {
            let dir =
                std::env::temp_dir().join(format!("metalcast-cpio-test-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("usr/bin")).unwrap();
            fs::write(dir.join("usr/bin/tool"), b"x").unwrap();
            fs::set_permissions(dir.join("usr/bin/tool"), fs::Permissions::from_mode(0o700))
                .unwrap();
            fs::write(dir.join("usr/data"), b"y").unwrap();
            fs::set_permissions(dir.join("usr/data"), fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
            let entries = entries_from_dir(&dir).unwrap();
            fs::remove_dir_all(&dir).unwrap();
            let got: Vec<(&str, u32)> = entries.iter().map(|e| (e.path.as_str(), e.perm)).collect();
            assert_eq!(
                got,
                [
                    ("bin", 0o777),
                    ("usr", 0o755),
                    ("usr/bin", 0o755),
                    ("usr/bin/tool", 0o755),
                    ("usr/data", 0o644)
                ]
            );
            assert_eq!(entries[0].kind, Kind::Symlink("usr/bin".into()));
            write(entries, 0).unwrap();
        }
    }
}
