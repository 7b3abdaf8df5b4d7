//! `cargo xtask lab demo`: the appliance on its embedded default store, and one VM that
//! network-boots from it and registers — the first thing a newcomer runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::ValueEnum;
use metalcast_proto::Firmware;

use crate::e2e::{self, Ctx, Setup};
use crate::initramfs;
use crate::lab::{self, APPLIANCE_IP, Appliance, DiskBus, Netns, Vm, VmSpec, lab_mac, wait_for};

#[derive(Clone, Copy, ValueEnum)]
enum FirmwareArg {
    Bios,
    Uefi,
}

#[derive(clap::Args)]
pub struct Args {
    /// Firmware of the demo VM.
    #[arg(long, value_enum, default_value = "bios")]
    firmware: FirmwareArg,
    /// Stop once the VM has registered instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
}

pub fn run(args: Args) -> Result<()> {
    lab::clean_stale()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;

    let ctx = Ctx {
        bins: lab::build_binaries()?,
        boot: initramfs::build()?,
    };
    let dir = lab::run_dir("demo")?;
    let ns = Netns::create("demo")?;
    ns.bridge("br0", &format!("{APPLIANCE_IP}/24"))?;
    ns.tap("tap0", "br0")?;
    let config = e2e::appliance_config(
        &ctx,
        &Setup {
            dir: &dir,
            dhcp: &e2e::authoritative_dhcp(""),
            ra: true,
        },
    );
    let url = format!("http://{APPLIANCE_IP}:8080");
    let mut appliance = Appliance::start(&ns, &ctx.bins, &dir, &config, &url)?;
    let firmware = match args.firmware {
        FirmwareArg::Bios => Firmware::Bios,
        FirmwareArg::Uefi => Firmware::Uefi,
    };
    let spec = VmSpec {
        name: "demo".into(),
        mac: lab_mac(1),
        firmware,
        tap: "tap0".into(),
        disks_gib: vec![8, 4],
        disk_bus: DiskBus::Virtio,
        memory_mib: 1024,
    };
    let mut vm = Vm::create(spec, &dir.join("node"))?;
    println!(
        "demo: appliance API and console at {url} inside network namespace {}",
        ns.name
    );
    println!("demo: admin token {}", appliance.token);
    println!(
        "demo: powering on a {firmware} VM ({}); serial console: {}",
        vm.spec.mac,
        vm.serial_log().display()
    );
    let started = Instant::now();
    vm.power_on(&ns)?;
    let mac = vm.spec.mac;
    wait_for(
        "the node to register",
        Duration::from_secs(300),
        Duration::from_secs(2),
        || {
            if stop.load(Ordering::SeqCst) {
                anyhow::bail!("interrupted");
            }
            appliance.check_alive()?;
            vm.check_alive()?;
            Ok(appliance
                .node(mac)?
                .filter(|d| d.node.hardware.is_some())
                .map(drop))
        },
    )?;
    println!(
        "demo: registered {:.0}s after power-on\n",
        started.elapsed().as_secs_f64()
    );
    print!(
        "$ metalcast nodes list\n{}",
        appliance.cli(&["nodes", "list"])?
    );
    print!(
        "\n$ metalcast nodes show {mac}\n{}",
        appliance.cli(&["nodes", "show", &mac.to_string()])?
    );
    if args.once {
        return Ok(());
    }
    println!("\ndemo: running; try");
    println!(
        "  ip netns exec {} {} --url {url} --token {} nodes list",
        ns.name,
        ctx.bins.metalcast.display(),
        appliance.token
    );
    println!("demo: Ctrl-C stops the VM and the appliance and removes the namespace");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("demo: stopping");
    Ok(())
}
