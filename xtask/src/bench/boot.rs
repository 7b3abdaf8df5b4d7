//! `cargo xtask bench boot`: power-on → agent registered, with and without the appliance's
//! router advertisements. iPXE waits about 13 s for IPv6 autoconfiguration on a segment where
//! no router advertises; `[ra] enabled = true` ends that wait.

use std::time::Instant;

use anyhow::Result;
use metalcast_proto::Firmware;

use crate::e2e::{self, Ctx, Setup};
use crate::initramfs;
use crate::lab::{self, Appliance, Vm};

pub fn run() -> Result<()> {
    let ctx = Ctx {
        bins: lab::build_binaries()?,
        boot: initramfs::build()?,
    };
    let mut rows = Vec::new();
    for firmware in [Firmware::Bios, Firmware::Uefi] {
        for ra in [false, true] {
            let secs = boot_once(&ctx, firmware, ra)?;
            println!(
                "bench: {firmware} with router advertisements {}: registered {secs:.1} s after power-on",
                if ra { "on" } else { "off" }
            );
            rows.push((firmware, ra, secs));
        }
    }
    println!("\n| firmware | RA off | RA on | saved |");
    println!("|---|---|---|---|");
    for pair in rows.chunks(2) {
        if let [(firmware, _, off), (_, _, on)] = pair {
            println!(
                "| {firmware} | {off:.1} s | {on:.1} s | {:.1} s |",
                off - on
            );
        }
    }
    Ok(())
}

/// One VM, one fresh appliance: seconds from power-on until the agent has registered.
fn boot_once(ctx: &Ctx, firmware: Firmware, ra: bool) -> Result<f64> {
    let label = format!("bench-boot-{firmware}-ra-{}", if ra { "on" } else { "off" });
    let dir = lab::run_dir(&label)?;
    let ns = e2e::appliance_netns()?;
    ns.tap("tap0", "br0")?;
    let dhcp = e2e::authoritative_dhcp("");
    let config = e2e::appliance_config(
        ctx,
        &Setup {
            dir: &dir,
            dhcp: &dhcp,
            ra,
        },
    );
    let mut appliance = Appliance::start(&ns, &ctx.bins, &dir, &config, &e2e::url())?;
    let mut vm = Vm::create(e2e::vm("node", 1, firmware, "tap0"), &dir.join("node"))?;
    let started = Instant::now();
    vm.power_on(&ns)?;
    e2e::wait_registered(&mut appliance, &mut [&mut vm])?;
    Ok(started.elapsed().as_secs_f64())
}
