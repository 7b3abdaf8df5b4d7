//! `cargo xtask bench deploy`: the Debian image installed by the agent over unicast HTTP into
//! a BIOS VM (one 8 GiB virtio disk, layout `single-bios`), against `curl | zstd -d | tar -x`
//! of the same tree into the same kind of VM, in the same run.
//!
//! Ours: the VM network-boots into the agent, which applies the layout and installs the image.
//! Its "installed … in S s" event gives the time, from the verified manifest to the last
//! member written (no sync, like the baseline). The VM is stopped there: node configuration
//! and boot loader are not part of the figure.
//!
//! Baseline: a VM of the same spec on the same bridge network-boots the same kernel and boot
//! initramfs from a second appliance, with an archive appended that replaces `/init` and adds
//! this host's curl, zstd and GNU tar. That `/init` loads the same modules, takes a DHCP lease,
//! runs the layout's own commands (planned here for the disks the agent reported), times the
//! pipeline from nginx in the appliance namespace, then the fetch alone and the fetch with
//! decompression, and prints one result line on its consoles. The file it fetches is the
//! image's tarball as one zstd frame at the chunk store's default level.
//!
//! Both figures divide the same number, the tar stream's bytes (the manifest's size, which is
//! the tarball's), by their time: MB/s of 10^6 bytes. Other work on the machine stretches
//! wall time, so the CPU time QEMU and the server used over each timed stretch (sampled when
//! the host sees its start and end, to within a second) is printed beside it.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use metalcast_layout::{Action, Layout};
use metalcast_proto::image::ImageSummary;
use metalcast_proto::{Disk, Event, Firmware, ImageVersions, Level, MacAddr, Phase};

use crate::e2e::{self, Ctx, Setup};
use crate::initramfs::{self, BootArtifacts};
use crate::lab::{self, APPLIANCE_IP, Appliance, Binaries, Daemon, DiskBus, Netns, Vm, VmSpec};
use crate::{image, workspace};

const RECIPE: &str = "debian-bookworm";
use crate::e2e::IMAGE;
const LAYOUT: &str = "single-bios";
/// Where the layout mounts the root filesystem, in the agent and in the baseline.
const TARGET: &str = "/target";
const TAP: &str = "tap0";
/// nginx, beside the appliance on the same address.
const NGINX_PORT: u16 = 8081;
/// The chunk store's default zstd level (`metalcast_image::DEFAULT_ZSTD_LEVEL`).
const ZSTD_LEVEL: i32 = 3;
/// Network boot, layout and a 700 MB image under TCG, with other work on the machine.
const TIMEOUT: Duration = Duration::from_secs(1200);
/// What the baseline VM adds to the boot initramfs (tools.list format). GNU tar, since the
/// tree carries file capabilities as xattrs, which busybox tar does not restore.
const BASELINE_TOOLS: &str = "curl curl\nzstd zstd\ntar tar\n";
/// Every line the baseline's `/init` prints starts with this.
const GUEST_PREFIX: &str = "bench-baseline:";
/// QEMU's command name as `/proc/PID/comm` shows it (cut to 15 bytes).
const QEMU_COMM: &str = "qemu-system-x86";

/// The baseline VM's `/init`. `@LAYOUT@` becomes the layout's commands (at the start of a
/// line: an sfdisk script is a here-document), `@URL@` the tree's URL, `@TARGET@` the mount.
const BASELINE_INIT: &str = r#"#!/bin/sh
# /init of the baseline VM of `cargo xtask bench deploy` (busybox sh, PID 1), appended over
# the agent's: the boot initramfs's modules, a DHCP lease, the layout's commands, then
# `curl | zstd -d | tar -x` timed. The result goes to every console, then the VM powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run
mount -t tmpfs tmpfs /run
consoles=""
for c in $(cat /sys/class/tty/console/active 2>/dev/null); do
	[ -c "/dev/$c" ] && consoles="$consoles /dev/$c"
done
[ -n "$consoles" ] || consoles=/dev/console

fail() {
	echo "bench-baseline: failed: $*"
	exit 1
}

wait_for_device() {
	n=0
	while [ ! -b "$1" ]; do
		n=$((n + 1))
		[ "$n" -le 100 ] || fail "$1 did not appear"
		sleep 0.1
	done
}

now() {
	cut -d ' ' -f 1 /proc/uptime
}

# This busybox sh runs its own applets before it searches PATH (mkswap, tar), so the real
# tools are called by path, the first in PATH order, as the agent's exec finds them.
tool() {
	for d in /usr/sbin /usr/bin; do
		[ -x "$d/$1" ] && { echo "$d/$1"; return; }
	done
	echo "$1"
}

bench() {
	echo /usr/bin/modprobe >/proc/sys/kernel/modprobe
	while read -r module; do
		[ "$module" = efivarfs ] || modprobe -q "$module"
	done </etc/metalcast/modules
	nic=""
	for dev in /sys/class/net/*; do
		[ "${dev##*/}" = lo ] || { nic=${dev##*/}; break; }
	done
	[ -n "$nic" ] || fail "no network interface"
	udhcpc -q -n -t 20 -i "$nic" -s /usr/share/udhcpc/default.script || fail "no DHCP lease on $nic"
@LAYOUT@
	set -o pipefail
	curl=$(tool curl)
	zstd=$(tool zstd)
	tar=$(tool tar)
	echo "bench-baseline: start"
	start=$(now)
	"$curl" -sSf "@URL@" | "$zstd" -d -q | "$tar" -x -f - --numeric-owner --xattrs --xattrs-include='*' -C @TARGET@ || fail "curl | zstd -d | tar -x"
	extracted=$(now)
	echo "bench-baseline: extracted"
	bytes=$("$curl" -sSf -o /dev/null -w '%{size_download}' "@URL@") || fail "curl -o /dev/null"
	fetched=$(now)
	"$curl" -sSf "@URL@" | "$zstd" -d -q >/dev/null || fail "curl | zstd -d"
	decompressed=$(now)
	echo "bench-baseline: result start=$start extracted=$extracted fetched=$fetched decompressed=$decompressed downloaded=$bytes"
}

bench 2>&1 | tee $consoles >/dev/null
poweroff -f
"#;

pub fn run() -> Result<()> {
    let ctx = Ctx {
        bins: lab::build_binaries()?,
        boot: initramfs::build()?,
    };
    let built = image::build(RECIPE, None)?;
    let dir = lab::run_dir("bench-deploy")?;
    let ns = e2e::appliance_netns()?;
    ns.tap(TAP, "br0")?;

    let ours = ours(&ctx, &ns, &dir.join("ours"), &built)?;
    let size = fs::metadata(&built.tarball)
        .with_context(|| format!("reading {}", built.tarball.display()))?
        .len();
    ensure!(
        size == ours.image.size,
        "the image's stream is {} bytes but {} has {size}: not the same tree",
        ours.image.size,
        built.tarball.display()
    );
    println!(
        "bench: ours: {IMAGE}@{} installed in {:.1} s; load average {}",
        ours.image.version,
        ours.secs,
        super::load_average()
    );
    let base = baseline(&ctx, &ns, &dir.join("baseline"), &built, &ours)?;
    println!(
        "bench: baseline: extracted in {:.1} s; load average {}",
        base.times.extract_secs(),
        super::load_average()
    );
    report(&ours, &base);
    Ok(())
}

/// The one VM both sides use, on the same tap of the same bridge.
fn spec() -> VmSpec {
    VmSpec {
        name: "bench-deploy".to_string(),
        mac: lab::lab_mac(40),
        firmware: Firmware::Bios,
        tap: TAP.to_string(),
        disks_gib: vec![8],
        disk_bus: DiskBus::Virtio,
        memory_mib: 1024,
    }
}

/// What the agent's run gives.
struct Ours {
    image: ImageSummary,
    /// From the agent's "installed" event.
    secs: f64,
    /// MB/s of each progress event (the rate over the second before it).
    rates: Vec<f64>,
    /// As the agent reported them: the baseline plans the layout for the same disks.
    disks: Vec<Disk>,
    /// CPU of the VM and of metalcastd from the "installing" event to the "installed" one,
    /// as seen by polling every second.
    used: Option<Usage>,
}

/// CPU time of the VM (QEMU) and of the server the VM fetches from.
#[derive(Debug, Clone, Copy)]
struct Usage {
    vm: Duration,
    server: Duration,
}

impl Usage {
    /// What QEMU and the processes named `server` in `ns` have used so far.
    fn now(ns: &Netns, server: &str) -> Result<Usage> {
        let ticks = ns_ticks(ns)?;
        let per_sec = clock_ticks()?;
        let of = |comm: &str| {
            let t: u64 = ticks
                .iter()
                .filter(|(c, _)| c == comm)
                .map(|(_, t)| t)
                .sum();
            Duration::from_secs_f64(t as f64 / per_sec)
        };
        Ok(Usage {
            vm: of(QEMU_COMM),
            server: of(server),
        })
    }

    /// The difference from an earlier reading, if there is one.
    fn since(self, earlier: Option<&Usage>) -> Option<Usage> {
        let e = earlier?;
        Some(Usage {
            vm: self.vm.saturating_sub(e.vm),
            server: self.server.saturating_sub(e.server),
        })
    }
}

/// The command name (`/proc/PID/comm`) and CPU ticks of every process in `ns`.
fn ns_ticks(ns: &Netns) -> Result<Vec<(String, u64)>> {
    let out = lab::run(std::process::Command::new("ip").args(["netns", "pids", &ns.name]))?;
    let mut found = Vec::new();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        // A process may exit between the listing and the reads.
        let (Ok(comm), Ok(stat)) = (
            fs::read_to_string(format!("/proc/{pid}/comm")),
            fs::read_to_string(format!("/proc/{pid}/stat")),
        ) else {
            continue;
        };
        let ticks =
            super::stat_ticks(&stat).with_context(|| format!("reading /proc/{pid}/stat"))?;
        found.push((comm.trim().to_string(), ticks));
    }
    Ok(found)
}

fn clock_ticks() -> Result<f64> {
    let out = lab::run(std::process::Command::new("getconf").arg("CLK_TCK"))?;
    let per_sec: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    Ok(f64::from(per_sec.max(1)))
}

fn ours(ctx: &Ctx, ns: &Netns, dir: &Path, built: &image::Built) -> Result<Ours> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = e2e::appliance_config(
        ctx,
        &Setup {
            dir,
            dhcp: &e2e::authoritative_dhcp(""),
            ra: true,
        },
    );
    let mut appliance = Appliance::start(ns, &ctx.bins, dir, &config, &e2e::url())?;
    e2e::import_image(&appliance, built)?;
    let versions: ImageVersions =
        serde_json::from_str(&appliance.cli(&["image", "show", IMAGE, "--json"])?)
            .context("parsing `metalcast image show --json`")?;
    let image = versions
        .versions
        .into_iter()
        .last()
        .context("the imported image has no version")?;

    let mut vm = Vm::create(spec(), &dir.join("vm"))?;
    let mac = vm.spec.mac;
    appliance.cli(&[
        "node",
        "set",
        &mac.to_string(),
        "--layout",
        LAYOUT,
        "--image",
        IMAGE,
        "--hostname",
        "bench-deploy",
        "--state",
        "provisioning",
    ])?;
    vm.power_on(ns)?;
    let mut at_start = None;
    let waited = lab::wait_for(
        "the agent's installed event",
        TIMEOUT,
        Duration::from_secs(1),
        || {
            appliance.check_alive()?;
            vm.check_alive()?;
            let Some(detail) = appliance.node(mac)? else {
                return Ok(None);
            };
            if let Some(e) = detail.events.iter().find(|e| e.level == Level::Error) {
                bail!("{} failed: {}", e.phase, e.message);
            }
            if at_start.is_none() && detail.events.iter().any(is_installing) {
                at_start = Some(Usage::now(ns, "metalcastd")?);
            }
            if detail.events.iter().any(|e| installed_secs(e).is_some()) {
                let used = Usage::now(ns, "metalcastd")?.since(at_start.as_ref());
                return Ok(Some((detail, used)));
            }
            Ok(None)
        },
    );
    vm.power_off();
    save_events(&appliance, mac, &vm.dir);
    let (detail, used) = waited
        .with_context(|| format!("serial console ends with:\n{}", e2e::tail(&vm.serial(), 10)))?;
    let secs = detail
        .events
        .iter()
        .find_map(installed_secs)
        .context("no installed event")?;
    let disks = detail
        .node
        .hardware
        .map(|h| h.disks)
        .context("the node has no hardware report")?;
    let rates = detail
        .events
        .iter()
        .filter(|e| e.phase == Phase::Image)
        .filter_map(|e| progress_rate(&e.message))
        .collect();
    Ok(Ours {
        image,
        secs,
        rates,
        disks,
        used,
    })
}

/// `metalcast nodes show` beside the VM's serial console, for a reader of the run.
fn save_events(appliance: &Appliance, mac: MacAddr, dir: &Path) {
    if let Ok(text) = appliance.cli(&["nodes", "show", &mac.to_string()]) {
        let _ = fs::write(dir.join("events.txt"), text);
    }
}

fn is_installing(event: &Event) -> bool {
    event.phase == Phase::Image && event.message.starts_with("installing ")
}

/// The seconds of the agent's `installed NAME: 684.9 MiB in 76.8 s (9.3 MB/s), N members`.
fn installed_secs(event: &Event) -> Option<f64> {
    if event.phase != Phase::Image {
        return None;
    }
    let rest = event.message.strip_prefix("installed ")?;
    let (_, after) = rest.split_once(" in ")?;
    after.split_once(" s")?.0.parse().ok()
}

/// The MB/s of a progress event: `written 13.1 MiB of 684.9 MiB (1%), 13.7 MB/s`.
fn progress_rate(message: &str) -> Option<f64> {
    if !message.starts_with("written ") {
        return None;
    }
    let (_, rate) = message.rsplit_once(", ")?;
    rate.strip_suffix(" MB/s")?.parse().ok()
}

/// Seconds since the baseline VM's kernel started, at each step of its `/init`.
#[derive(Debug, PartialEq)]
struct Baseline {
    start: f64,
    extracted: f64,
    fetched: f64,
    decompressed: f64,
    /// Compressed bytes curl downloaded.
    downloaded: u64,
}

/// The baseline's times and what the VM and nginx used while it extracted.
struct BaselineRun {
    times: Baseline,
    used: Option<Usage>,
}

impl Baseline {
    fn extract_secs(&self) -> f64 {
        self.extracted - self.start
    }

    fn fetch_secs(&self) -> f64 {
        self.fetched - self.extracted
    }

    fn decompress_secs(&self) -> f64 {
        self.decompressed - self.fetched
    }
}

fn baseline(
    ctx: &Ctx,
    ns: &Netns,
    dir: &Path,
    built: &image::Built,
    ours: &Ours,
) -> Result<BaselineRun> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let served = compressed_tree(&built.tarball)?;
    let name = served
        .file_name()
        .and_then(|n| n.to_str())
        .context("the compressed tree's name is not UTF-8")?;
    let url = format!("http://{APPLIANCE_IP}:{NGINX_PORT}/{name}");
    let spec = spec();
    let script = init_script(&ours.disks, spec.mac, &url)?;

    let stage = dir.join("initramfs-extra");
    initramfs::stage_tools(BASELINE_TOOLS, &stage)?;
    let init = stage.join("init");
    fs::write(&init, script).with_context(|| format!("writing {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", init.display()))?;
    let mut combined = fs::read(&ctx.boot.initramfs)
        .with_context(|| format!("reading {}", ctx.boot.initramfs.display()))?;
    combined.extend(initramfs::pack(&stage)?);
    let initramfs = dir.join("initramfs-baseline.cpio.zst");
    fs::write(&initramfs, combined).with_context(|| format!("writing {}", initramfs.display()))?;

    let boot_ctx = Ctx {
        bins: Binaries {
            metalcastd: ctx.bins.metalcastd.clone(),
            metalcast: ctx.bins.metalcast.clone(),
        },
        boot: BootArtifacts {
            kernel: ctx.boot.kernel.clone(),
            initramfs,
        },
    };
    let config = e2e::appliance_config(
        &boot_ctx,
        &Setup {
            dir,
            dhcp: &e2e::authoritative_dhcp(""),
            ra: true,
        },
    );
    let mut appliance = Appliance::start(ns, &boot_ctx.bins, dir, &config, &e2e::url())?;
    let served_dir = served
        .parent()
        .context("the compressed tree has no directory")?;
    let mut nginx = nginx(ns, dir, served_dir)?;
    lab::wait_for(
        "nginx",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            nginx.check_alive()?;
            let ok = ns
                .command("curl")
                .args(["-sfI", "-o", "/dev/null", "--max-time", "2", &url])
                .status()
                .is_ok_and(|s| s.success());
            Ok(ok.then_some(()))
        },
    )?;

    let mut vm = Vm::create(spec, &dir.join("vm"))?;
    vm.power_on(ns)?;
    let (mut at_start, mut used) = (None, None);
    let outcome = lab::wait_for(
        "the baseline's result line",
        TIMEOUT,
        Duration::from_millis(500),
        || {
            // Read before the liveness checks: the VM powers off right after the line.
            let serial = vm.serial();
            if let Some(outcome) = guest_outcome(&serial) {
                return Ok(Some(outcome));
            }
            if at_start.is_none() && guest_marker(&serial, "start") {
                at_start = Some(Usage::now(ns, "nginx")?);
            }
            if used.is_none() && guest_marker(&serial, "extracted") {
                used = Usage::now(ns, "nginx")?.since(at_start.as_ref());
            }
            appliance.check_alive()?;
            nginx.check_alive()?;
            vm.check_alive()?;
            Ok(None)
        },
    );
    vm.power_off();
    let tail = || format!("serial console ends with:\n{}", e2e::tail(&vm.serial(), 10));
    match outcome.with_context(tail)? {
        Ok(times) => Ok(BaselineRun { times, used }),
        Err(why) => Err(anyhow::anyhow!("the baseline VM failed: {why}")).with_context(tail),
    }
}

/// The image's tarball as one zstd frame at [`ZSTD_LEVEL`] (with a checksum, as the zstd
/// tool writes it), kept in the cache under the tarball's name (which holds its recipe hash).
fn compressed_tree(tarball: &Path) -> Result<PathBuf> {
    let stem = tarball
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the image tarball's name is not UTF-8")?;
    let dir = workspace::cache_dir().join("bench");
    let out = dir.join(format!("{stem}.zstd-{ZSTD_LEVEL}.tar.zst"));
    if out.is_file() {
        return Ok(out);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "bench: compressing {} at zstd level {ZSTD_LEVEL}",
        tarball.display()
    );
    let partial = out.with_extension("partial");
    let mut input =
        fs::File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let output =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut encoder = zstd::stream::Encoder::new(output, ZSTD_LEVEL).context("starting zstd")?;
    encoder.include_checksum(true).context("configuring zstd")?;
    io::copy(&mut input, &mut encoder)
        .with_context(|| format!("compressing {}", tarball.display()))?;
    encoder
        .finish()
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &out).with_context(|| format!("renaming {}", partial.display()))?;
    Ok(out)
}

/// The baseline VM's `/init` for a node with `disks`, fetching the tree from `url`.
fn init_script(disks: &[Disk], mac: MacAddr, url: &str) -> Result<String> {
    Ok(BASELINE_INIT
        .replace("@LAYOUT@", &layout_script(disks, mac)?)
        .replace("@URL@", url)
        .replace("@TARGET@", TARGET))
}

/// The layout's commands for `disks`, as the agent runs them, as lines of the baseline's
/// `/init`: the same partitions and the same filesystem, mounted at [`TARGET`].
fn layout_script(disks: &[Disk], mac: MacAddr) -> Result<String> {
    let path = workspace::root()
        .join("layouts")
        .join(format!("{LAYOUT}.toml"));
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let layout = Layout::from_toml(&text).with_context(|| format!("parsing {}", path.display()))?;
    let plan = metalcast_layout::plan(&layout, disks, Firmware::Bios, &mac.to_string())
        .context("planning the layout for the baseline VM")?;
    Ok(render(&metalcast_layout::commands(&plan, TARGET)))
}

/// Shell lines for `actions`, each checked; programs are found with the script's `tool`.
/// A here-document's end stays at the start of a line, so the check follows on the next.
fn render(actions: &[Action]) -> String {
    let mut out = String::new();
    for (i, action) in actions.iter().enumerate() {
        match action {
            Action::Run(cmd) => {
                let _ = write!(out, "\"$(tool {})\"", sh_quote(&cmd.program));
                for arg in &cmd.args {
                    let _ = write!(out, " {}", sh_quote(arg));
                }
                match &cmd.stdin {
                    Some(input) => {
                        let _ = writeln!(out, " <<'EOF'");
                        out.push_str(input);
                        if !input.ends_with('\n') {
                            out.push('\n');
                        }
                        out.push_str("EOF\n");
                    }
                    None => out.push('\n'),
                }
                let _ = writeln!(
                    out,
                    "[ $? -eq 0 ] || fail {}",
                    sh_quote(&format!("layout step {}: {}", i + 1, cmd.program))
                );
            }
            Action::WaitForDevice(path) => {
                let _ = writeln!(out, "wait_for_device {}", sh_quote(path));
            }
        }
    }
    out
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An nginx serving `root` on the appliance's address, stopped on drop.
fn nginx(ns: &Netns, dir: &Path, root: &Path) -> Result<Daemon> {
    let tmp = dir.join("nginx");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let config = format!(
        r#"worker_processes 1;
pid {pid:?};
# The served file belongs to whoever runs the benchmark (root: it makes namespaces).
user root;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {body:?};
    proxy_temp_path {proxy:?};
    fastcgi_temp_path {fastcgi:?};
    uwsgi_temp_path {uwsgi:?};
    scgi_temp_path {scgi:?};
    server {{
        listen {APPLIANCE_IP}:{NGINX_PORT};
        root {root:?};
    }}
}}
"#,
        pid = tmp.join("nginx.pid"),
        body = tmp.join("body"),
        proxy = tmp.join("proxy"),
        fastcgi = tmp.join("fastcgi"),
        uwsgi = tmp.join("uwsgi"),
        scgi = tmp.join("scgi"),
    );
    let conf = dir.join("nginx.conf");
    fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
    let mut cmd = ns.command("nginx");
    cmd.arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    Daemon::spawn("nginx", &mut cmd, &dir.join("nginx.log"))
        .context("starting nginx (Debian package nginx-light)")
}

/// Whether the serial console holds the complete line `bench-baseline: MARKER`.
fn guest_marker(serial: &str, marker: &str) -> bool {
    serial
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n')?.trim().strip_prefix(GUEST_PREFIX))
        .any(|rest| rest.trim() == marker)
}

/// The baseline's result or failure line, once the serial console holds a complete one.
fn guest_outcome(serial: &str) -> Option<Result<Baseline, String>> {
    serial
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix(GUEST_PREFIX))
        .find_map(|rest| {
            let rest = rest.trim();
            if let Some(why) = rest.strip_prefix("failed: ") {
                return Some(Err(why.to_string()));
            }
            let fields = rest.strip_prefix("result ")?;
            Some(parse_result(fields).ok_or_else(|| format!("unreadable result line: {rest}")))
        })
}

/// `start=1.2 extracted=3.4 fetched=5.6 decompressed=7.8 downloaded=123`.
fn parse_result(fields: &str) -> Option<Baseline> {
    let get = |key: &str| {
        fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
    };
    let secs = |key: &str| get(key)?.parse::<f64>().ok();
    Some(Baseline {
        start: secs("start")?,
        extracted: secs("extracted")?,
        fetched: secs("fetched")?,
        decompressed: secs("decompressed")?,
        downloaded: get("downloaded")?.parse().ok()?,
    })
}

fn mb_per_s(bytes: u64, secs: f64) -> Option<f64> {
    (secs > 0.0).then(|| bytes as f64 / secs / 1e6)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Smallest, median and largest.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}

fn report(ours: &Ours, run: &BaselineRun) {
    let base = &run.times;
    let size = ours.image.size;
    let ours_rate = mb_per_s(size, ours.secs);
    let base_rate = mb_per_s(size, base.extract_secs());
    let show = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.1} MB/s"));
    println!(
        "\nbench: image {IMAGE}@{}: {:.1} MB tar stream; chunk store {:.1} MB in {} chunks \
         (zstd {ZSTD_LEVEL} per chunk); baseline file {:.1} MB (zstd -{ZSTD_LEVEL}, one frame)",
        ours.image.version,
        mb(size),
        mb(ours.image.stored_size),
        ours.image.chunks,
        mb(base.downloaded),
    );
    println!(
        "bench: metalcast-agent (unicast HTTP)      {:>6.1} s  {:>10}  {}",
        ours.secs,
        show(ours_rate),
        cpu_line(ours.used, "metalcastd", size)
    );
    println!(
        "bench: curl | zstd -d | tar -x (nginx)     {:>6.1} s  {:>10}  {}",
        base.extract_secs(),
        show(base_rate),
        cpu_line(run.used, "nginx", size)
    );
    println!(
        "bench: ratio {} of the baseline (goal ≥ 0.80×); per VM CPU second {}",
        super::ratio(ours_rate, base_rate),
        super::ratio(
            ours.used.and_then(|u| mb_per_s(size, u.vm.as_secs_f64())),
            run.used.and_then(|u| mb_per_s(size, u.vm.as_secs_f64())),
        )
    );
    println!(
        "bench: baseline parts: curl -o /dev/null {:.1} s ({} compressed), \
         curl | zstd -d >/dev/null {:.1} s ({} of tar bytes); tar -x is the rest",
        base.fetch_secs(),
        show(mb_per_s(base.downloaded, base.fetch_secs())),
        base.decompress_secs(),
        show(mb_per_s(size, base.decompress_secs())),
    );
    if let Some((low, median, high)) = spread(&ours.rates) {
        println!(
            "bench: agent progress events: {} per-second rates, min {low:.1} / median {median:.1} / max {high:.1} MB/s",
            ours.rates.len()
        );
    }
    println!("bench: load average {}", super::load_average());
}

/// `VM CPU 40.1 s (17.9 MB/s), metalcastd CPU 3.2 s`, or why there is no such reading.
fn cpu_line(used: Option<Usage>, server: &str, size: u64) -> String {
    match used {
        Some(u) => format!(
            "VM CPU {:.1} s ({:.1} MB/s), {server} CPU {:.1} s",
            u.vm.as_secs_f64(),
            mb_per_s(size, u.vm.as_secs_f64()).unwrap_or(0.0),
            u.server.as_secs_f64()
        ),
        None => "CPU not sampled (start and end seen in the same poll)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(phase: Phase, message: &str) -> Event {
        Event {
            mac: lab::lab_mac(40),
            phase,
            level: Level::Info,
            message: message.to_string(),
            at_ms: 0,
        }
    }

    #[test]
    fn reads_the_install_time_of_the_installed_event_only() {
        let done = "installed debian@1: 684.9 MiB in 76.8 s (9.3 MB/s), 12974 members";
        assert_eq!(installed_secs(&event(Phase::Image, done)), Some(76.8));
        assert_eq!(installed_secs(&event(Phase::Reboot, done)), None);
        let other = "installing debian@1: 8968 chunks, 684.9 MiB";
        assert_eq!(installed_secs(&event(Phase::Image, other)), None);
    }

    #[test]
    fn reads_progress_rates() {
        assert_eq!(
            progress_rate("written 13.1 MiB of 684.9 MiB (1%), 13.7 MB/s"),
            Some(13.7)
        );
        assert_eq!(progress_rate("resumed at chunk 3 of 9 after 2 s"), None);
    }

    #[test]
    fn finds_complete_result_and_failure_lines() {
        let serial = "[    5.1] virtio_net\r\nudhcpc: eth0 10.77.0.100/24\r\n\
             bench-baseline: result start=12.50 extracted=60.25 fetched=70.00 decompressed=90.75 downloaded=250000000\r\n";
        let b = guest_outcome(serial).unwrap().unwrap();
        assert_eq!(
            b,
            Baseline {
                start: 12.5,
                extracted: 60.25,
                fetched: 70.0,
                decompressed: 90.75,
                downloaded: 250_000_000,
            }
        );
        assert_eq!(b.extract_secs(), 47.75);
        assert_eq!(b.fetch_secs(), 9.75);
        assert_eq!(b.decompress_secs(), 20.75);
        // A line still being written is not read yet.
        assert!(guest_outcome("bench-baseline: result start=12.50 extr").is_none());
        assert_eq!(
            guest_outcome("bench-baseline: failed: no DHCP lease on eth0\n"),
            Some(Err("no DHCP lease on eth0".to_string()))
        );
        assert!(matches!(
            guest_outcome("bench-baseline: result start=x\n"),
            Some(Err(_))
        ));
        assert!(guest_outcome("init: starting metalcast-agent\n").is_none());
    }

    #[test]
    fn markers_count_once_their_line_is_complete() {
        let serial = "bench-baseline: start\r\nbench-baseline: extr";
        assert!(guest_marker(serial, "start"));
        assert!(!guest_marker(serial, "extracted"));
        assert!(guest_marker(&format!("{serial}acted\r\n"), "extracted"));
        assert!(!guest_marker("bench-baseline: started\n", "start"));
    }

    #[test]
    fn layout_lines_are_checked_and_here_documents_stay_whole() {
        let mut sfdisk = metalcast_layout::Command::new("sfdisk", ["/dev/vda"]);
        sfdisk.stdin = Some("label: gpt\n".to_string());
        let text = render(&[
            Action::Run(sfdisk),
            Action::WaitForDevice("/dev/vda1".to_string()),
            Action::Run(metalcast_layout::Command::new(
                "mkfs.ext4",
                ["-F", "/dev/vda1"],
            )),
        ]);
        assert_eq!(
            text,
            "\"$(tool 'sfdisk')\" '/dev/vda' <<'EOF'\nlabel: gpt\nEOF\n\
             [ $? -eq 0 ] || fail 'layout step 1: sfdisk'\n\
             wait_for_device '/dev/vda1'\n\
             \"$(tool 'mkfs.ext4')\" '-F' '/dev/vda1'\n\
             [ $? -eq 0 ] || fail 'layout step 3: mkfs.ext4'\n"
        );
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    /// The one 8 GiB virtio disk of the bench VM, as the agent reports it.
    fn bench_disk() -> Disk {
        Disk {
            path: "/dev/vda".to_string(),
            size_bytes: 8 << 30,
            model: None,
            serial: None,
            rotational: true,
            by_path: None,
        }
    }

    #[test]
    fn the_single_bios_layout_mounts_one_ext4_root_at_the_target() {
        let disks = [bench_disk()];
        let script = layout_script(&disks, lab::lab_mac(40)).unwrap();
        assert!(
            script.contains("mkfs.ext4')\" '-F' '-L' 'root'"),
            "{script}"
        );
        assert!(
            script.contains("mount')\" '-t' 'ext4' '/dev/vda3' '/target'"),
            "{script}"
        );
    }

    #[test]
    fn the_baseline_init_is_valid_shell() {
        let disks = [bench_disk()];
        let script =
            init_script(&disks, lab::lab_mac(40), "http://10.77.0.1:8081/t.tar.zst").unwrap();
        assert!(!script.contains('@'), "{script}");
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn spread_and_rates() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(spread(&[]), None);
        assert_eq!(mb_per_s(10_000_000, 2.0), Some(5.0));
        assert_eq!(mb_per_s(1, 0.0), None);
    }

    #[test]
    fn the_init_template_has_every_placeholder() {
        for p in ["@LAYOUT@", "@URL@", "@TARGET@"] {
            assert!(BASELINE_INIT.contains(p), "{p}");
        }
        assert!(BASELINE_INIT.contains(GUEST_PREFIX));
    }
}
