//! `cargo xtask e2e deploy`: bare VMs are installed with the Debian image over unicast HTTP and
//! reboot into it. A UEFI node with two NVMe drives in RAID 1 (`raid1-lvm-uefi`) and a BIOS
//! node with one disk (`single-bios`) each network-boot, get their layout and image, and
//! reboot via the appliance's local-disk handoff until their serial console shows Debian's
//! login prompt with the hostname set for them. The appliance is stopped for 10 s in the middle
//! of the BIOS node's image load; the load resumes. Then the UEFI node boots again with one
//! drive detached (mirrored ESPs). Every node gets a root password hash and an SSH key: the
//! test logs in with the key and reads back the hostname, root's hash and the name servers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use metalcast_proto::{Firmware, Level, NodeState, Phase};

use super::{Ctx, Report, Setup, appliance_config, appliance_netns, authoritative_dhcp, url};
use crate::image;
use crate::lab::{self, Appliance, DiskBus, Netns, Vm, VmSpec, lab_mac, wait_for};

/// Layout, image, configuration, bootloader and the first boot of Debian, under TCG.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1200);
pub const IMAGE: &str = "debian";

struct Node {
    hostname: &'static str,
    layout: &'static str,
    firmware: Firmware,
    bus: DiskBus,
    disks_gib: &'static [u64],
}

const NODES: [Node; 2] = [
    Node {
        hostname: "deb-uefi",
        layout: "raid1-lvm-uefi",
        firmware: Firmware::Uefi,
        bus: DiskBus::Nvme,
        disks_gib: &[16, 16],
    },
    Node {
        hostname: "deb-bios",
        layout: "single-bios",
        firmware: Firmware::Bios,
        bus: DiskBus::Virtio,
        disks_gib: &[8, 4],
    },
];

pub fn scenario(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let lab = DeployLab::new(ctx, "deploy", "")?;
    let (dir, ns, access) = (&lab.dir, &lab.ns, &lab.access);
    let mut appliance = lab.appliance(ctx)?;
    let mut vms = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let tap = format!("tap{i}");
        ns.tap(&tap, "br0")?;
        let spec = VmSpec {
            name: node.hostname.to_string(),
            mac: lab_mac(30 + u8::try_from(i)?),
            firmware: node.firmware,
            tap,
            disks_gib: node.disks_gib.to_vec(),
            disk_bus: node.bus,
            memory_mib: 1024,
        };
        let vm = Vm::create(spec, &dir.join(node.hostname))?;
        let mac = vm.spec.mac.to_string();
        let mut args = vec![
            "node",
            "set",
            &mac,
            "--layout",
            node.layout,
            "--image",
            IMAGE,
        ];
        args.extend(["--hostname", node.hostname, "--state", "provisioning"]);
        args.extend(access.node_set_args());
        appliance.cli(&args)?;
        vms.push(vm);
    }
    for vm in &mut vms {
        vm.power_on(ns)?;
    }

    let outage = appliance_outage_mid_load(&mut appliance, &mut vms[1]);
    report.check(
        "the image load resumes after metalcastd is away for 10 s",
        outage,
    );
    for (vm, node) in vms.iter_mut().zip(&NODES) {
        let installed = wait_login(&mut appliance, vm, node.hostname);
        report.check(
            &format!(
                "{} ({}, {}) is installed and boots Debian with its hostname",
                node.hostname, node.firmware, node.layout
            ),
            installed,
        );
        report.check(
            &format!(
                "root logs into {} with its SSH key; its password hash and name servers are set",
                node.hostname
            ),
            access.check(&appliance, ns, vm, node.hostname),
        );
        let _ = std::fs::write(
            vm.dir.join("events.txt"),
            appliance
                .cli(&["nodes", "show", &vm.spec.mac.to_string()])
                .unwrap_or_default(),
        );
    }
    let degraded = boot_with_one_drive(&mut appliance, ns, &mut vms[0]);
    report.check(
        "the RAID 1 UEFI node still boots with one drive detached",
        degraded,
    );
    Ok(())
}

/// A deploy lab: the appliance's namespace and configuration (with `extra_config` appended),
/// the Debian image, and the credentials nodes get.
pub(super) struct DeployLab {
    pub dir: PathBuf,
    pub ns: Netns,
    pub access: Access,
    config: String,
    built: image::Built,
}

impl DeployLab {
    pub(super) fn new(ctx: &Ctx, label: &str, extra_config: &str) -> Result<DeployLab> {
        let built = image::build("debian-bookworm", None)?;
        let dir = lab::run_dir(label)?;
        let ns = appliance_netns()?;
        let mut config = appliance_config(
            ctx,
            &Setup {
                dir: &dir,
                dhcp: &authoritative_dhcp(""),
                ra: true,
            },
        );
        config.push_str(extra_config);
        let access = Access::create(&dir)?;
        Ok(DeployLab {
            dir,
            ns,
            access,
            config,
            built,
        })
    }

    /// Starts the appliance and imports the image into it.
    pub(super) fn appliance<'a>(&'a self, ctx: &'a Ctx) -> Result<Appliance<'a>> {
        let appliance = Appliance::start(&self.ns, &ctx.bins, &self.dir, &self.config, &url())?;
        import_image(&appliance, &self.built)?;
        Ok(appliance)
    }
}

/// Imports the built image as `IMAGE` version 1.
pub fn import_image(appliance: &Appliance, built: &image::Built) -> Result<()> {
    let tarball = built.tarball.to_string_lossy().into_owned();
    let imported = appliance.cli(&[
        "image",
        "import",
        IMAGE,
        "--version",
        "1",
        "--from-tar",
        &tarball,
        "--os-family",
        &built.os_family,
        "--kernel",
        &built.kernel,
        "--initrd",
        &built.initrd,
    ])?;
    println!("{}", imported.lines().last().unwrap_or_default());
    Ok(())
}

/// Waits until the node has reported some image progress, stops the appliance for 10 s, and
/// checks that the agent says it resumed rather than starting over.
fn appliance_outage_mid_load(appliance: &mut Appliance, vm: &mut Vm) -> Result<()> {
    let mac = vm.spec.mac;
    wait_for(
        "image progress",
        INSTALL_TIMEOUT,
        Duration::from_secs(1),
        || {
            vm.check_alive()?;
            let events = appliance.node(mac)?.map(|d| d.events).unwrap_or_default();
            Ok(events
                .iter()
                .any(|e| e.phase == Phase::Image && e.message.contains('%'))
                .then_some(()))
        },
    )?;
    appliance.outage(Duration::from_secs(10))?;
    let resumed = wait_for(
        "the resume event",
        INSTALL_TIMEOUT,
        Duration::from_secs(2),
        || {
            vm.check_alive()?;
            let events = appliance.node(mac)?.map(|d| d.events).unwrap_or_default();
            if let Some(e) = events
                .iter()
                .find(|e| e.level == Level::Error && e.phase == Phase::Image)
            {
                anyhow::bail!("image load failed: {}", e.message);
            }
            Ok(events
                .into_iter()
                .find(|e| e.phase == Phase::Image && e.message.contains("resum")))
        },
    )?;
    println!("e2e: {}: {}", vm.spec.name, resumed.message);
    Ok(())
}

/// The node is marked provisioned by its agent, reboots through the local-disk handoff and
/// its serial console shows `HOSTNAME login:`.
pub(super) fn wait_login(appliance: &mut Appliance, vm: &mut Vm, hostname: &str) -> Result<()> {
    let prompt = format!("{hostname} login:");
    wait_for(&prompt, INSTALL_TIMEOUT, Duration::from_secs(3), || {
        vm.check_alive()?;
        let detail = appliance.node(vm.spec.mac)?.context("node vanished")?;
        if let Some(e) = detail.events.iter().find(|e| e.level == Level::Error) {
            anyhow::bail!("{:?} failed: {}", e.phase, e.message);
        }
        Ok(
            (detail.node.state == NodeState::Provisioned && vm.serial().contains(&prompt))
                .then_some(()),
        )
    })
    .with_context(|| {
        format!(
            "serial console ends with:\n{}",
            super::tail(&vm.serial(), 10)
        )
    })?;
    let detail = appliance.node(vm.spec.mac)?.context("node vanished")?;
    let local = detail
        .events
        .iter()
        .rev()
        .find(|e| e.phase == Phase::IpxeScript)
        .context("no iPXE script event")?;
    ensure!(
        local.message.contains("local disk"),
        "the last script was not the local-disk one: {}",
        local.message
    );
    Ok(())
}

/// The credentials the nodes get: a fresh SSH key pair and a SHA-512 crypt hash.
pub(super) struct Access {
    private_key: String,
    public_key: String,
    hash: String,
}

/// Name server the lab's DHCP pool hands out (see `authoritative_dhcp`).
const LAB_DNS: &str = "nameserver 10.77.0.1";

impl Access {
    pub(super) fn create(dir: &std::path::Path) -> Result<Access> {
        let key = dir.join("id_ed25519");
        let _ = std::fs::remove_file(&key);
        lab::run(
            std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e@metalcast", "-f"])
                .arg(&key),
        )?;
        let hashed = lab::run(std::process::Command::new("openssl").args([
            "passwd",
            "-6",
            "e2e-root-password",
        ]))?;
        Ok(Access {
            private_key: key.to_string_lossy().into_owned(),
            public_key: format!("{}.pub", key.display()),
            hash: String::from_utf8_lossy(&hashed.stdout).trim().to_string(),
        })
    }

    /// The `metalcast node set` arguments that give a node these credentials.
    pub(super) fn node_set_args(&self) -> [&str; 4] {
        [
            "--root-password-hash",
            &self.hash,
            "--ssh-key-file",
            &self.public_key,
        ]
    }

    /// `ssh root@NODE` from the appliance's namespace (sshd may start after the login prompt).
    pub(super) fn check(
        &self,
        appliance: &Appliance,
        ns: &Netns,
        vm: &Vm,
        hostname: &str,
    ) -> Result<()> {
        let ip = appliance
            .node(vm.spec.mac)?
            .and_then(|d| d.node.ip)
            .context("the node has no lease")?;
        let login = || -> Result<Option<String>> {
            let out = ns
                .command("ssh")
                .args(["-i", &self.private_key, "-o", "BatchMode=yes"])
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
                .arg(format!("root@{ip}"))
                .arg("hostname; grep ^root: /etc/shadow; cat /etc/resolv.conf")
                .output()?;
            Ok(out
                .status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
        };
        let seen = wait_for(
            "ssh root@node",
            Duration::from_secs(180),
            Duration::from_secs(5),
            login,
        )?;
        let mut lines = seen.lines();
        ensure!(lines.next() == Some(hostname), "hostname: {seen}");
        ensure!(
            lines
                .next()
                .is_some_and(|l| l.starts_with(&format!("root:{}:", self.hash))),
            "root's shadow entry does not carry the hash set on the appliance: {seen}"
        );
        ensure!(
            seen.contains(LAB_DNS),
            "no lab name server in resolv.conf: {seen}"
        );
        Ok(())
    }
}

fn boot_with_one_drive(appliance: &mut Appliance, ns: &Netns, vm: &mut Vm) -> Result<()> {
    vm.power_off();
    let prompt = format!("{} login:", vm.spec.name);
    vm.spec.disks_gib.truncate(1);
    // QEMU truncates the serial log when it starts, so a prompt in it is from this boot.
    vm.power_on(ns)?;
    wait_for(&prompt, INSTALL_TIMEOUT, Duration::from_secs(3), || {
        vm.check_alive()?;
        appliance.check_alive()?;
        Ok(vm.serial().contains(&prompt).then_some(()))
    })
    .with_context(|| {
        format!(
            "serial console ends with:\n{}",
            super::tail(&vm.serial(), 10)
        )
    })
}
