//! `cargo xtask e2e deploy`: bare VMs are installed with the Debian image over unicast HTTP and
//! reboot into it. A UEFI node with two NVMe drives in RAID 1 (`raid1-lvm-uefi`) and a BIOS
//! node with one disk (`single-bios`) each network-boot, get their layout and image, and
//! reboot via the appliance's local-disk handoff until their serial console shows Debian's
//! login prompt with the hostname set for them. The appliance is stopped for 10 s in the middle
//! of the BIOS node's image load; the load resumes. Then the UEFI node boots again with one
//! drive detached (mirrored ESPs).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use metalcast_proto::{Firmware, Level, NodeState, Phase};

use super::{Ctx, Report, Setup, appliance_config, appliance_netns, authoritative_dhcp, url};
use crate::image;
use crate::lab::{self, Appliance, DiskBus, Netns, Vm, VmSpec, lab_mac, wait_for};

/// Layout, image, configuration, bootloader and the first boot of Debian, under TCG.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1200);
const IMAGE: &str = "debian";

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
    let built = image::build("debian-bookworm", None)?;
    let dir = lab::run_dir("deploy")?;
    let ns = appliance_netns()?;
    let config = appliance_config(
        ctx,
        &Setup {
            dir: &dir,
            dhcp: &authoritative_dhcp(""),
            ra: true,
        },
    );
    let mut appliance = Appliance::start(&ns, &ctx.bins, &dir, &config, &url())?;
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
    println!("e2e: {}", imported.lines().last().unwrap_or_default());

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
        appliance.cli(&[
            "node",
            "set",
            &vm.spec.mac.to_string(),
            "--layout",
            node.layout,
            "--image",
            IMAGE,
            "--hostname",
            node.hostname,
            "--state",
            "provisioning",
        ])?;
        vms.push(vm);
    }
    for vm in &mut vms {
        vm.power_on(&ns)?;
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
        let _ = std::fs::write(
            vm.dir.join("events.txt"),
            appliance
                .cli(&["nodes", "show", &vm.spec.mac.to_string()])
                .unwrap_or_default(),
        );
    }
    let degraded = boot_with_one_drive(&mut appliance, &ns, &mut vms[0]);
    report.check(
        "the RAID 1 UEFI node still boots with one drive detached",
        degraded,
    );
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
fn wait_login(appliance: &mut Appliance, vm: &mut Vm, hostname: &str) -> Result<()> {
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
