//! `cargo xtask e2e mcast` (VM part): two bare BIOS nodes are installed together from one
//! multicast session opened with `metalcast mcast start`, and boot into the installed Debian.
//! `metalcast mcast status` must show both members done, and neither node may have fetched
//! the image over HTTP instead.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use metalcast_proto::{Firmware, McastSessionStatus, McastState, MemberState, Phase};

use super::deploy::{DeployLab, IMAGE, wait_login};
use super::{Ctx, Report};
use crate::lab::{Appliance, DiskBus, Vm, VmSpec, lab_mac, wait_for};

const NODES: [&str; 2] = ["mc-one", "mc-two"];
/// TCG guests take far less than a real NIC; the sender slows further on their reports.
const RATE_MBIT: u32 = 200;

pub fn scenario(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let lab = DeployLab::new(
        ctx,
        "mcast-deploy",
        &format!("\n[mcast]\ninterface = \"br0\"\nrate_mbit = {RATE_MBIT}\n"),
    )?;
    let (dir, ns, access) = (&lab.dir, &lab.ns, &lab.access);
    let mut appliance = lab.appliance(ctx)?;

    let mut vms = Vec::new();
    for (i, name) in NODES.iter().enumerate() {
        let tap = format!("tap{i}");
        ns.tap(&tap, "br0")?;
        let spec = VmSpec {
            name: (*name).to_string(),
            mac: lab_mac(50 + u8::try_from(i)?),
            firmware: Firmware::Bios,
            tap,
            disks_gib: vec![8],
            disk_bus: DiskBus::Virtio,
            memory_mib: 1024,
        };
        let vm = Vm::create(spec, &dir.join(name))?;
        let mac = vm.spec.mac.to_string();
        let mut args = vec![
            "node",
            "set",
            &mac,
            "--layout",
            "single-bios",
            "--image",
            IMAGE,
        ];
        args.extend(["--hostname", name, "--state", "provisioning"]);
        args.extend(access.node_set_args());
        appliance.cli(&args)?;
        vms.push(vm);
    }
    let macs: Vec<String> = vms.iter().map(|vm| vm.spec.mac.to_string()).collect();
    let started = appliance.cli(&[
        "mcast",
        "start",
        IMAGE,
        "--nodes",
        &macs.join(","),
        "--rate-mbit",
        &RATE_MBIT.to_string(),
    ])?;
    print!("e2e: {started}");
    let session = sessions(&appliance)?
        .pop()
        .context("`mcast start` opened no session")?;
    for vm in &mut vms {
        vm.power_on(ns)?;
    }

    for vm in &mut vms {
        let name = vm.spec.name.clone();
        let installed = wait_login(&mut appliance, vm, &name);
        report.check(
            &format!("{name} is installed from the multicast session and boots Debian"),
            installed,
        );
        report.check(
            &format!("{name} received the whole image by multicast, nothing over HTTP"),
            only_multicast(&appliance, vm),
        );
        let _ = std::fs::write(
            vm.dir.join("events.txt"),
            appliance
                .cli(&["nodes", "show", &vm.spec.mac.to_string()])
                .unwrap_or_default(),
        );
    }
    report.check(
        "`metalcast mcast status` shows the session done with both members done",
        session_done(&appliance, &session),
    );
    report.check(
        "root logs into mc-one with its SSH key",
        access.check(&appliance, ns, &vms[0], NODES[0]),
    );
    Ok(())
}

fn sessions(appliance: &Appliance) -> Result<Vec<McastSessionStatus>> {
    let json = appliance.cli(&["mcast", "status", "--json"])?;
    serde_json::from_str(&json).context("parsing `mcast status --json`")
}

/// The agent's own account of the transfer: every block from the session, no fallback.
fn only_multicast(appliance: &Appliance, vm: &Vm) -> Result<()> {
    let events = appliance
        .node(vm.spec.mac)?
        .map(|d| d.events)
        .unwrap_or_default();
    let image: Vec<&str> = events
        .iter()
        .filter(|e| e.phase == Phase::Image)
        .map(|e| e.message.as_str())
        .collect();
    ensure!(
        image.iter().any(|m| m.starts_with("multicast: all ")),
        "no event says the whole image arrived by multicast: {image:#?}"
    );
    ensure!(
        !image.iter().any(|m| m.contains("falling back to unicast")),
        "the node fell back to unicast: {image:#?}"
    );
    Ok(())
}

fn session_done(appliance: &Appliance, session: &McastSessionStatus) -> Result<()> {
    let id = session.session.id.to_string();
    // The sender lingers a moment after the last member is done.
    let status = wait_for(
        "the session to end",
        Duration::from_secs(60),
        Duration::from_secs(2),
        || {
            let s = sessions(appliance)?
                .into_iter()
                .find(|s| s.session.id == session.session.id)
                .context("the session vanished")?;
            Ok((s.state != McastState::Sending).then_some(s))
        },
    )?;
    let text = appliance.cli(&["mcast", "status", &id])?;
    print!("e2e: {text}");
    ensure!(
        status.state == McastState::Done,
        "session ended as {:?}",
        status.state
    );
    for m in &status.members {
        ensure!(
            m.state == MemberState::Done && m.blocks_done == m.blocks_total,
            "member {} ended {:?} with {}/{} blocks",
            m.mac,
            m.state,
            m.blocks_done,
            m.blocks_total
        );
    }
    ensure!(text.contains("  done  "), "status text: {text}");
    Ok(())
}
