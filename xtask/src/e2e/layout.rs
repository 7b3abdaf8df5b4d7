//! `cargo xtask e2e layout`: the agent applies every example layout with the real tools on a
//! VM with fitting disks, under BIOS and UEFI where the layout allows; the block tree it
//! reports back must match the plan. Then: re-provisioning tears the first run down, a node
//! not marked for provisioning keeps its data byte for byte, and a layout that cannot fit is
//! refused before any disk is touched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use metalcast_proto::{Event, Firmware, Level, NodeDetail, Phase};

use super::{Ctx, Report, Setup, appliance_config, appliance_netns, authoritative_dhcp, url};
use crate::lab::{self, Appliance, DiskBus, Netns, Vm, VmSpec, lab_mac, wait_for};
use crate::workspace;

/// Powered-on VMs at once: two cores, one vCPU each.
const PARALLEL: usize = 2;
/// Boot, register and apply, under TCG.
const APPLY_TIMEOUT: Duration = Duration::from_secs(420);

struct Case {
    layout: &'static str,
    firmware: Firmware,
    bus: DiskBus,
    disks_gib: &'static [u64],
}

const CASES: &[Case] = &[
    Case {
        layout: "single-bios",
        firmware: Firmware::Bios,
        bus: DiskBus::Virtio,
        disks_gib: &[8, 4],
    },
    Case {
        layout: "single-uefi",
        firmware: Firmware::Uefi,
        bus: DiskBus::Virtio,
        disks_gib: &[8, 4],
    },
    Case {
        layout: "raid1-lvm-uefi",
        firmware: Firmware::Uefi,
        bus: DiskBus::Nvme,
        disks_gib: &[16, 16],
    },
    Case {
        layout: "raid10-xfs",
        firmware: Firmware::Bios,
        bus: DiskBus::Virtio,
        disks_gib: &[4, 4, 4, 4],
    },
    Case {
        layout: "raid10-xfs",
        firmware: Firmware::Uefi,
        bus: DiskBus::Virtio,
        disks_gib: &[4, 4, 4, 4],
    },
    Case {
        layout: "raid5-data",
        firmware: Firmware::Bios,
        bus: DiskBus::Virtio,
        disks_gib: &[3, 4, 4, 4],
    },
    Case {
        layout: "raid5-data",
        firmware: Firmware::Uefi,
        bus: DiskBus::Virtio,
        disks_gib: &[3, 4, 4, 4],
    },
];

pub fn scenario(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = lab::run_dir("layout")?;
    let ns = appliance_netns()?;
    for slot in 0..PARALLEL {
        ns.tap(&format!("tap{slot}"), "br0")?;
    }
    let config = appliance_config(
        ctx,
        &Setup {
            dir: &dir,
            dhcp: &authoritative_dhcp(""),
            ra: true,
        },
    );
    let mut appliance = Appliance::start(&ns, &ctx.bins, &dir, &config, &url())?;

    let mut vms = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let name = format!("{}-{}", case.layout, case.firmware);
        let spec = VmSpec {
            name: name.clone(),
            mac: lab_mac(10 + u8::try_from(i)?),
            firmware: case.firmware,
            tap: format!("tap{}", i % PARALLEL),
            disks_gib: case.disks_gib.to_vec(),
            disk_bus: case.bus,
            memory_mib: 1024,
        };
        vms.push(Vm::create(spec, &dir.join(&name))?);
    }

    let mut timings = Vec::new();
    for batch in vms.chunks_mut(PARALLEL) {
        for vm in batch.iter_mut() {
            let layout = CASES[index_of(vm)].layout;
            let mac = vm.spec.mac.to_string();
            appliance.cli(&[
                "node",
                "set",
                &mac,
                "--layout",
                layout,
                "--state",
                "provisioning",
            ])?;
            vm.power_on(&ns)?;
        }
        for vm in batch.iter_mut() {
            let case = &CASES[index_of(vm)];
            let name = format!(
                "{} ({}, {} disks)",
                case.layout,
                case.firmware,
                case.disks_gib.len()
            );
            let outcome = wait_applied(&mut appliance, vm, 0).and_then(|(secs, detail)| {
                check_tree(&detail, case.layout)?;
                timings.push((vm.spec.name.clone(), secs));
                Ok(())
            });
            save(&appliance, vm);
            vm.power_off();
            report.check(
                &format!("layout {name} applied and matches its plan"),
                outcome,
            );
        }
    }
    println!("e2e: time to apply each layout (from the agent's events):");
    for (name, secs) in &timings {
        println!("  {name:<24} {secs:>6.1} s");
    }

    let outcome = reprovision(&mut appliance, &ns, &mut vms[2]);
    report.check(
        "re-provisioning tears the first layout down and applies it again",
        outcome,
    );
    let outcome = refuse_to_wipe(&mut appliance, &ns, &mut vms[0]);
    report.check(
        "a node not marked for provisioning keeps its disks byte for byte",
        outcome,
    );
    let outcome = does_not_fit(&mut appliance, &ns, &mut vms[1]);
    report.check(
        "a layout that does not fit is refused before any disk is touched",
        outcome,
    );
    Ok(())
}

fn index_of(vm: &Vm) -> usize {
    usize::from(vm.spec.mac.0[5] - 10)
}

fn node(appliance: &Appliance, vm: &Vm) -> Result<NodeDetail> {
    appliance
        .node(vm.spec.mac)?
        .with_context(|| format!("{} is not known", vm.spec.mac))
}

/// Waits for a layout event after the first `skip` events of the node that says it was
/// applied (returning the seconds it reports) or that it failed.
fn wait_applied(appliance: &mut Appliance, vm: &mut Vm, skip: usize) -> Result<(f64, NodeDetail)> {
    let event = wait_event(appliance, vm, skip, |e| {
        e.phase == Phase::Layout && (e.level == Level::Error || e.message.contains(" applied"))
    })?;
    ensure!(
        event.level != Level::Error,
        "the agent reported: {}",
        event.message
    );
    let secs = event
        .message
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .with_context(|| format!("no duration in {:?}", event.message))?;
    Ok((secs, node(appliance, vm)?))
}

fn wait_event(
    appliance: &mut Appliance,
    vm: &mut Vm,
    skip: usize,
    want: impl Fn(&Event) -> bool,
) -> Result<Event> {
    let started = Instant::now();
    wait_for(
        "the layout event",
        APPLY_TIMEOUT,
        Duration::from_secs(3),
        || {
            appliance.check_alive()?;
            vm.check_alive()?;
            let events = appliance
                .node(vm.spec.mac)?
                .map(|d| d.events)
                .unwrap_or_default();
            Ok(events.into_iter().skip(skip).find(|e| want(e)))
        },
    )
    .with_context(|| {
        format!(
            "{} after {:.0}s; serial console ends with:\n{}",
            vm.spec.name,
            started.elapsed().as_secs_f64(),
            super::tail(&vm.serial(), 8)
        )
    })
}

/// The reported block tree must match the plan the appliance makes for the registered disks.
fn check_tree(detail: &NodeDetail, layout: &str) -> Result<()> {
    let hardware = detail
        .node
        .hardware
        .as_ref()
        .context("node has no hardware report")?;
    let tree = detail
        .block_tree
        .as_ref()
        .context("the agent reported no block tree")?;
    let text = std::fs::read_to_string(layouts_dir().join(format!("{layout}.toml")))?;
    let parsed = metalcast_layout::Layout::from_toml(&text)?;
    let plan = metalcast_layout::plan(
        &parsed,
        &hardware.disks,
        hardware.firmware,
        &detail.node.mac.to_string(),
    )?;
    let problems = metalcast_layout::verify(&plan, tree, "/target");
    ensure!(
        problems.is_empty(),
        "block tree differs from the plan:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

fn layouts_dir() -> PathBuf {
    workspace::root().join("layouts")
}

fn save(appliance: &Appliance, vm: &Vm) {
    if let Ok(text) = appliance.cli(&["nodes", "show", &vm.spec.mac.to_string()]) {
        let _ = std::fs::write(vm.dir.join("events.txt"), text);
    }
}

fn reprovision(appliance: &mut Appliance, ns: &Netns, vm: &mut Vm) -> Result<()> {
    let before = node(appliance, vm)?.events.len();
    vm.power_on(ns)?;
    let (secs, detail) = wait_applied(appliance, vm, before)?;
    let torn_down = detail.events[before..].iter().any(|e| {
        e.phase == Phase::Layout
            && ["mdadm --stop", "vgchange", "wipefs"]
                .iter()
                .any(|t| e.message.contains(t))
    });
    ensure!(
        torn_down,
        "the second run shows no teardown of the first run's arrays and signatures"
    );
    check_tree(&detail, CASES[index_of(vm)].layout)?;
    println!("e2e: re-provisioned {} in {secs:.1} s", vm.spec.name);
    save(appliance, vm);
    vm.power_off();
    Ok(())
}

fn checksums(vm: &Vm) -> Result<Vec<blake3::Hash>> {
    vm.disk_paths()
        .iter()
        .map(|p| {
            Ok(blake3::hash(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            ))
        })
        .collect()
}

/// Boots `vm` and returns the agent's first layout event of that boot, checking that its
/// disks hash the same before and after.
fn boot_without_writes(appliance: &mut Appliance, ns: &Netns, vm: &mut Vm) -> Result<Event> {
    let before = checksums(vm)?;
    let seen = node(appliance, vm)?.events.len();
    vm.power_on(ns)?;
    let event = wait_event(appliance, vm, seen, |e| e.phase == Phase::Layout)?;
    // Leave the agent a moment in which it must not write anything either.
    std::thread::sleep(Duration::from_secs(5));
    save(appliance, vm);
    vm.power_off();
    ensure!(
        checksums(vm)? == before,
        "the disks changed although the agent said: {}",
        event.message
    );
    Ok(event)
}

fn refuse_to_wipe(appliance: &mut Appliance, ns: &Netns, vm: &mut Vm) -> Result<()> {
    let mac = vm.spec.mac.to_string();
    appliance.cli(&["node", "set", &mac, "--state", "discovered"])?;
    let event = boot_without_writes(appliance, ns, vm)?;
    ensure!(
        event.message.contains("refusing to wipe"),
        "the agent said: {}",
        event.message
    );
    Ok(())
}

fn does_not_fit(appliance: &mut Appliance, ns: &Netns, vm: &mut Vm) -> Result<()> {
    let mac = vm.spec.mac.to_string();
    // Three data disks and an OS disk, on a node with two.
    appliance.cli(&[
        "node",
        "set",
        &mac,
        "--layout",
        "raid5-data",
        "--state",
        "provisioning",
    ])?;
    let refused = appliance.cli(&["node", "plan", &mac]);
    let message = match refused {
        Ok(out) => anyhow::bail!("`metalcast node plan` accepted it:\n{out}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        message.contains("does not fit"),
        "`metalcast node plan` said: {message}"
    );
    let event = boot_without_writes(appliance, ns, vm)?;
    ensure!(
        event.level == Level::Error,
        "the agent did not refuse: {}",
        event.message
    );
    Ok(())
}
