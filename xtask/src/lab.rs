//! The netboot lab: network namespaces with a bridge and tap devices, `metalcastd` running
//! inside, and QEMU nodes with real iPXE firmware booting from it.
//!
//! Everything the lab makes is owned by a value whose `Drop` removes it, so a failed test
//! leaves no namespaces or processes behind. Traffic never leaves the namespaces made here.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use metalcast_proto::{Firmware, MacAddr, NodeDetail};

use crate::workspace;

/// Every namespace the lab makes starts with this, so `lab clean` can find leftovers.
const NETNS_PREFIX: &str = "mclab-";

/// Runs a command to completion; a non-zero exit is an error that carries its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(label: &str) -> Result<Netns> {
        let name = format!("{NETNS_PREFIX}{}-{label}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(drop)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))
        .map(drop)
    }

    /// A bridge with an IPv4 address (`addr/prefix`), up. Multicast snooping stays on with a
    /// querier so later multicast tests see realistic switching.
    /// A bridge with an IGMPv3 querier, as on current switches. With the bridge's default
    /// IGMPv2 queries hosts suppress their join report when they hear another member's first;
    /// the snooping bridge then never learns their port and forwards them no multicast (seen
    /// here: one port of four missing in half the trials).
    pub fn bridge(&self, name: &str, cidr: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "mcast_querier",
            "1",
            "mcast_igmp_version",
            "3",
        ])?;
        self.ip(&["addr", "add", cidr, "brd", "+", "dev", name])?;
        self.ip(&["link", "set", name, "up"])
    }

    /// A tap device enslaved to `bridge`, for one QEMU NIC.
    pub fn tap(&self, name: &str, bridge: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.ip(&["link", "set", name, "master", bridge, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes lab namespaces whose creating process is gone (a run that was killed).
pub fn clean_stale() -> Result<usize> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        if Command::new("ip")
            .args(["netns", "del", name])
            .status()
            .is_ok_and(|s| s.success())
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// A child process stopped on drop: SIGTERM, then SIGKILL if it lingers.
pub struct Daemon {
    pub name: String,
    child: Child,
}

/// Starts `cmd` with no input and its output (stdout and stderr) in the file `log`.
pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name}: {cmd:?}"))
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Daemon> {
        Ok(Daemon {
            name: name.to_string(),
            child: spawn_logged(name, cmd, log)?,
        })
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `probe` every `every` until it yields a value or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        sleep(every);
    }
}

/// Release binaries the lab runs.
pub struct Binaries {
    pub metalcastd: PathBuf,
    pub metalcast: PathBuf,
}

pub fn build_binaries() -> Result<Binaries> {
    println!("lab: building metalcastd and metalcast (release)");
    run(Command::new(env!("CARGO"))
        .current_dir(workspace::root())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "metalcast-server",
            "-p",
            "metalcast-cli",
        ])
        .stderr(Stdio::inherit()))?;
    let dir = workspace::target_dir().join("release");
    Ok(Binaries {
        metalcastd: dir.join("metalcastd"),
        metalcast: dir.join("metalcast"),
    })
}

/// A running `metalcastd` inside a namespace, with an admin token for the CLI.
pub struct Appliance<'a> {
    ns: &'a Netns,
    bins: &'a Binaries,
    pub url: String,
    pub token: String,
    config: PathBuf,
    daemon: Daemon,
}

impl<'a> Appliance<'a> {
    /// Writes `config` to `dir/metalcastd.toml`, makes an admin token and starts serving.
    pub fn start(
        ns: &'a Netns,
        bins: &'a Binaries,
        dir: &Path,
        config: &str,
        url: &str,
    ) -> Result<Self> {
        let config_path = dir.join("metalcastd.toml");
        fs::write(&config_path, config)?;
        let out = run(Command::new(&bins.metalcastd)
            .args(["token", "create", "--name", "lab", "--config"])
            .arg(&config_path))?;
        let token = parse_token(&String::from_utf8_lossy(&out.stdout))
            .context("`metalcastd token create` printed no token")?;
        let daemon = Self::spawn(ns, bins, &config_path, &dir.join("metalcastd.log"))?;
        let mut appliance = Appliance {
            ns,
            bins,
            url: url.to_string(),
            token,
            config: config_path,
            daemon,
        };
        appliance.wait_healthy()?;
        Ok(appliance)
    }

    fn spawn(ns: &Netns, bins: &Binaries, config: &Path, log: &Path) -> Result<Daemon> {
        let mut cmd = ns.command(&bins.metalcastd);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,metalcast=debug");
        Daemon::spawn("metalcastd", &mut cmd, log)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let health = format!("{}/healthz", self.url);
        wait_for(
            "metalcastd /healthz",
            Duration::from_secs(20),
            Duration::from_millis(200),
            || {
                self.daemon.check_alive()?;
                let ok = self
                    .ns
                    .command("curl")
                    .args(["-sf", "-o", "/dev/null", "--max-time", "2", &health])
                    .status()
                    .is_ok_and(|s| s.success());
                Ok(ok.then_some(()))
            },
        )
    }

    /// Stops `metalcastd` for `outage`, then starts it again on the same config and data
    /// (its second log is `metalcastd.restarted.log`).
    pub fn outage(&mut self, outage: Duration) -> Result<()> {
        self.daemon.stop();
        std::thread::sleep(outage);
        let log = self.config.with_file_name("metalcastd.restarted.log");
        self.daemon = Self::spawn(self.ns, self.bins, &self.config, &log)?;
        self.wait_healthy()
    }

    /// Runs the `metalcast` CLI against this appliance; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = run(self
            .ns
            .command(&self.bins.metalcast)
            .args(["--url", &self.url])
            .env("METALCAST_TOKEN", &self.token)
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn node(&self, mac: MacAddr) -> Result<Option<NodeDetail>> {
        match self.cli(&["nodes", "show", &mac.to_string(), "--json"]) {
            Ok(json) => Ok(Some(
                serde_json::from_str(&json).context("parsing `nodes show --json`")?,
            )),
            Err(e) if e.to_string().contains("404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.daemon.check_alive()
    }
}

/// `metalcastd token create` prints the token alone on its last non-empty line.
fn parse_token(stdout: &str) -> Option<String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    let token = line.split_whitespace().last()?;
    token
        .chars()
        .all(|c| c.is_ascii_alphanumeric())
        .then(|| token.to_string())
}

/// How a VM's disks are attached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk: `/dev/vdX`, reported as rotational.
    Virtio,
    /// NVMe: `/dev/nvmeXn1`, non-rotational like the drives it stands for.
    Nvme,
}

/// What a lab VM looks like.
pub struct VmSpec {
    pub name: String,
    pub mac: MacAddr,
    pub firmware: Firmware,
    pub tap: String,
    /// Sizes of the virtual disks, in GiB (sparse qcow2 files).
    pub disks_gib: Vec<u64>,
    pub disk_bus: DiskBus,
    pub memory_mib: u32,
}

/// A QEMU node with its serial console logged to `dir/serial.log`.
pub struct Vm {
    pub spec: VmSpec,
    pub dir: PathBuf,
    daemon: Option<Daemon>,
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const ROM_DIR: &str = "/usr/lib/ipxe/qemu";

impl Vm {
    /// Makes the VM's disks and firmware store under `dir`; does not power it on.
    pub fn create(spec: VmSpec, dir: &Path) -> Result<Vm> {
        fs::create_dir_all(dir)?;
        for (i, gib) in spec.disks_gib.iter().enumerate() {
            let disk = dir.join(format!("disk{i}.qcow2"));
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg(format!("{gib}G")))?;
        }
        if spec.firmware == Firmware::Uefi {
            fs::copy(OVMF_VARS, dir.join("OVMF_VARS.fd"))
                .with_context(|| format!("copying {OVMF_VARS} (Debian package ovmf)"))?;
        }
        Ok(Vm {
            spec,
            dir: dir.to_path_buf(),
            daemon: None,
        })
    }

    pub fn disk_paths(&self) -> Vec<PathBuf> {
        (0..self.spec.disks_gib.len())
            .map(|i| self.dir.join(format!("disk{i}.qcow2")))
            .collect()
    }

    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    pub fn serial(&self) -> String {
        fs::read(self.serial_log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Powers the VM on (again): a fresh QEMU process on the same disks and MAC.
    pub fn power_on(&mut self, ns: &Netns) -> Result<()> {
        self.power_off();
        let spec = &self.spec;
        let (machine, rom) = match spec.firmware {
            Firmware::Bios => ("pc", "pxe-virtio.rom"),
            Firmware::Uefi => ("q35", "efi-virtio.rom"),
        };
        // SeaBIOS boots the NIC first, then the disks, by `bootindex`. OVMF is left to its
        // NVRAM BootOrder, as real UEFI firmware is: given a `bootindex` list it rewrites
        // BootOrder from it on every boot and drops the entries an installed system adds.
        let bootindex = |n: usize| match spec.firmware {
            Firmware::Bios => format!(",bootindex={n}"),
            Firmware::Uefi => String::new(),
        };
        let mut cmd = ns.command("qemu-system-x86_64");
        cmd.args(accel_args())
            .args([
                "-name",
                &spec.name,
                "-m",
                &spec.memory_mib.to_string(),
                "-smp",
                "1",
            ])
            .args(["-machine", &format!("{machine},graphics=off")])
            .args(["-display", "none", "-monitor", "none", "-vga", "none"])
            .arg("-serial")
            .arg(format!("file:{}", self.serial_log().display()))
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
            ])
            // The ROM declares the modern virtio ID; SeaBIOS skips it on the transitional one.
            .args([
                "-device",
                &format!(
                    "virtio-net-pci,netdev=n0,mac={},romfile={ROM_DIR}/{rom},disable-legacy=on{}",
                    spec.mac,
                    bootindex(1)
                ),
            ]);
        if spec.firmware == Firmware::Uefi {
            cmd.args([
                "-drive",
                &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
            ])
            .args([
                "-drive",
                &format!(
                    "if=pflash,format=raw,file={}",
                    self.dir.join("OVMF_VARS.fd").display()
                ),
            ]);
        }
        for i in 0..spec.disks_gib.len() {
            let disk = self.dir.join(format!("disk{i}.qcow2"));
            let device = match spec.disk_bus {
                DiskBus::Virtio => "virtio-blk-pci",
                DiskBus::Nvme => "nvme",
            };
            // Zero writes (an md resync of blank members) stay unallocated, so a RAID lab
            // does not fill the host's disk; a host write error reaches the guest as an I/O
            // error instead of silently pausing it.
            cmd.args([
                "-drive",
                &format!(
                    "file={},if=none,id=d{i},format=qcow2,discard=unmap,detect-zeroes=unmap,\
                     werror=report,rerror=report",
                    disk.display()
                ),
            ])
            .args([
                "-device",
                &format!(
                    "{device},drive=d{i},serial={}-d{i}{}",
                    spec.name,
                    bootindex(i + 2)
                ),
            ]);
        }
        let log = self.dir.join("qemu.log");
        self.daemon = Some(Daemon::spawn(
            &format!("qemu {}", spec.name),
            &mut cmd,
            &log,
        )?);
        Ok(())
    }

    pub fn power_off(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        match self.daemon.as_mut() {
            Some(d) => d.check_alive().with_context(|| {
                format!(
                    "see {} and {}",
                    self.dir.join("qemu.log").display(),
                    self.serial_log().display()
                )
            }),
            None => bail!("{} is powered off", self.spec.name),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_off();
    }
}

/// TCG unless the operator opts in to KVM (`METALCAST_LAB_KVM=1`): some hosts expose a
/// `/dev/kvm` that opens but cannot run a stock kernel.
fn accel_args() -> [&'static str; 2] {
    if std::env::var("METALCAST_LAB_KVM").is_ok_and(|v| v == "1") {
        ["-accel", "kvm"]
    } else {
        ["-accel", "tcg"]
    }
}

/// Run directories made since [`take_run_dirs`] was last called.
static RUN_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Where a lab run keeps its files (configs, logs, disks, serial consoles).
pub fn run_dir(label: &str) -> Result<PathBuf> {
    let dir = workspace::target_dir().join("lab").join(label);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    RUN_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(dir.clone());
    Ok(dir)
}

/// The run directories made since the last call.
pub fn take_run_dirs() -> Vec<PathBuf> {
    std::mem::take(
        &mut *RUN_DIRS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// Removes the VM disks (`*.qcow2`) under `dir`: a passed scenario's disks are many GiB once
/// RAID arrays have synced, and nothing needs them; its logs and consoles stay.
pub fn remove_disks(dir: &Path) -> Result<u64> {
    let mut freed = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            freed += remove_disks(&path)?;
        } else if path.extension().is_some_and(|e| e == "qcow2") {
            freed += fs::metadata(&path).map_or(0, |m| m.len());
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(freed)
}

/// A locally administered MAC in QEMU's 52:54:00 range, numbered per lab VM.
pub fn lab_mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x6d, 0x63, n])
}

/// The appliance's address on a lab segment.
pub const APPLIANCE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_last_word_of_last_line() {
        assert_eq!(
            parse_token("created token lab\nabc123\n\n").as_deref(),
            Some("abc123")
        );
        assert_eq!(parse_token("token: ab12").as_deref(), Some("ab12"));
        assert_eq!(parse_token("\n"), None);
        assert_eq!(parse_token("not-a-token!"), None);
    }
}
