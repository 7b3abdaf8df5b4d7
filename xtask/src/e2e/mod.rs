//! End-to-end tests: real iPXE firmware in QEMU network-boots from `metalcastd` alone.
//!
//! Each scenario builds its own lab (namespaces, appliance, VMs) and tears it down. Checks
//! assert on what an operator sees: `metalcast nodes list` / `nodes show` output and the
//! serial console.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use metalcast_proto::{Firmware, MacAddr, NodeDetail, Phase};

mod deploy;
mod layout;

pub use deploy::{IMAGE, import_image};
mod mcast_deploy;

use crate::initramfs::{self, BootArtifacts};
use crate::lab::{
    self, APPLIANCE_IP, Appliance, Binaries, DiskBus, Netns, Vm, VmSpec, lab_mac, wait_for,
};
use crate::mcast;
use crate::workspace;

#[derive(Clone, Copy, ValueEnum)]
pub enum Suite {
    /// BIOS and UEFI network boot into the agent; local-disk handoff; proxyDHCP; relay.
    Boot,
    /// Every example layout applied by the agent; re-provision; refuse to wipe; no fit.
    Layout,
    /// Debian installed over unicast HTTP on a UEFI RAID 1 node and a BIOS node, booted.
    Deploy,
    /// The multicast protocol: a sender and 8 receiver processes, 5% loss, late join, restart;
    /// then two VMs installed together from one multicast session.
    Mcast,
}

#[derive(clap::Args)]
pub struct Args {
    /// Suites to run; all of them when none is named.
    #[arg(value_enum)]
    pub suites: Vec<Suite>,
}

/// How long a TCG VM may take from power-on to a registered agent.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(300);

/// The phases every network boot into the agent records, in order.
const BOOT_PHASES: [Phase; 6] = [
    Phase::Dhcp,
    Phase::Tftp,
    Phase::IpxeScript,
    Phase::Kernel,
    Phase::Initramfs,
    Phase::AgentRegistered,
];

pub struct Ctx {
    pub bins: Binaries,
    pub boot: BootArtifacts,
}

type Scenario = fn(&Ctx, &mut Report) -> Result<()>;

/// Named checks with their outcome; printed as the run's summary.
#[derive(Default)]
pub struct Report {
    results: Vec<(String, Result<(), String>)>,
}

impl Report {
    pub(crate) fn check(&mut self, name: &str, outcome: Result<()>) {
        match &outcome {
            Ok(()) => println!("e2e: ok      {name}"),
            Err(e) => println!("e2e: FAILED  {name}: {e:#}"),
        }
        self.results
            .push((name.to_string(), outcome.map_err(|e| format!("{e:#}"))));
    }

    fn failed(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_err()).count()
    }
}

pub fn run(args: Args) -> Result<()> {
    let removed = lab::clean_stale()?;
    if removed > 0 {
        println!("e2e: removed {removed} stale lab namespace(s)");
    }
    let ctx = Ctx {
        bins: lab::build_binaries()?,
        boot: initramfs::build()?,
    };
    let suites = if args.suites.is_empty() {
        Suite::value_variants().to_vec()
    } else {
        args.suites
    };
    let scenarios = suites.iter().flat_map(|suite| -> &[(&str, Scenario)] {
        match suite {
            Suite::Boot => &[
                ("authoritative", authoritative),
                ("proxy-dhcp", proxy_dhcp),
                ("relay", relay),
            ],
            Suite::Layout => &[("layouts", layout::scenario)],
            Suite::Deploy => &[("deploy", deploy::scenario)],
            Suite::Mcast => &[
                ("mcast", mcast::scenario),
                ("mcast-deploy", mcast_deploy::scenario),
            ],
        }
    });
    let mut report = Report::default();
    for (name, scenario) in scenarios {
        println!("e2e: scenario {name}");
        let started = Instant::now();
        let failed_before = report.failed();
        // A scenario that cannot even set up counts as one failed check.
        if let Err(e) = scenario(&ctx, &mut report) {
            report.check(&format!("{name} (setup)"), Err(e));
        }
        // A failed scenario keeps its disks to be looked at; a passed one frees the space.
        let dirs = lab::take_run_dirs();
        if report.failed() == failed_before {
            for dir in dirs {
                lab::remove_disks(&dir)?;
            }
        }
        println!(
            "e2e: scenario {name} took {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    let failed = report.failed();
    println!(
        "{} passed, {} failed",
        report.results.len() - failed,
        failed
    );
    if failed > 0 {
        bail!(
            "{failed} end-to-end check(s) failed; logs and serial consoles are under target/lab/"
        );
    }
    Ok(())
}

/// What the appliance config of a scenario varies in.
pub struct Setup<'a> {
    pub dir: &'a Path,
    pub dhcp: &'a str,
    pub ra: bool,
}

pub fn appliance_config(ctx: &Ctx, setup: &Setup) -> String {
    let mut cfg = String::new();
    let _ = writeln!(cfg, "data_dir = {:?}", setup.dir.join("data"));
    let _ = writeln!(cfg, "layouts_dir = {:?}", workspace::root().join("layouts"));
    let _ = writeln!(cfg, "\n[http]\nlisten = \"0.0.0.0:8080\"");
    let _ = writeln!(
        cfg,
        "\n[boot]\nkernel = {:?}\ninitramfs = {:?}",
        ctx.boot.kernel, ctx.boot.initramfs
    );
    let _ = writeln!(
        cfg,
        "\n[ra]\nenabled = {}\ninterfaces = [\"br0\"]",
        setup.ra
    );
    cfg.push('\n');
    cfg.push_str(setup.dhcp);
    cfg
}

pub fn authoritative_dhcp(extra_pools: &str) -> String {
    format!(
        r#"[dhcp]
mode = "authoritative"
interfaces = ["br0"]
unknown_nodes = "discover"

[[dhcp.pools]]
subnet = "10.77.0.0/24"
range = ["10.77.0.100", "10.77.0.199"]
dns = ["10.77.0.1"]
domain = "lab.metalcast"
{extra_pools}"#
    )
}

pub fn url() -> String {
    format!("http://{APPLIANCE_IP}:8080")
}

/// An appliance namespace with `br0` at 10.77.0.1/24.
pub fn appliance_netns() -> Result<Netns> {
    let ns = Netns::create("appl")?;
    ns.bridge("br0", &format!("{APPLIANCE_IP}/24"))?;
    Ok(ns)
}

pub fn vm(name: &str, n: u8, firmware: Firmware, tap: &str) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        mac: lab_mac(n),
        firmware,
        tap: tap.to_string(),
        disks_gib: vec![8, 4],
        disk_bus: DiskBus::Virtio,
        memory_mib: 1024,
    }
}

/// Waits until the agent on `vm` has registered, keeping an eye on QEMU and the appliance.
pub fn wait_registered(appliance: &mut Appliance, vms: &mut [&mut Vm]) -> Result<Vec<NodeDetail>> {
    let macs: Vec<MacAddr> = vms.iter().map(|v| v.spec.mac).collect();
    let mut done: Vec<Option<NodeDetail>> = vec![None; macs.len()];
    wait_for(
        "agents to register",
        REGISTER_TIMEOUT,
        Duration::from_secs(2),
        || {
            appliance.check_alive()?;
            for (i, vm) in vms.iter_mut().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                vm.check_alive()?;
                if let Some(detail) = appliance.node(macs[i])?
                    && detail.node.hardware.is_some()
                {
                    done[i] = Some(detail);
                }
            }
            Ok(done
                .iter()
                .all(Option::is_some)
                .then(|| done.iter().flatten().cloned().collect()))
        },
    )
    .with_context(|| {
        let tails: Vec<String> = vms
            .iter()
            .map(|v| format!("{}: {}", v.spec.name, tail(&v.serial(), 6)))
            .collect();
        format!("serial consoles end with:\n{}", tails.join("\n"))
    })
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Checks what an operator sees for a registered node: the list row and the boot timeline.
fn check_registered(appliance: &Appliance, vm: &Vm) -> Result<String> {
    let mac = vm.spec.mac.to_string();
    let list = appliance.cli(&["nodes", "list"])?;
    let row = list
        .lines()
        .find(|l| l.starts_with(&mac))
        .with_context(|| format!("{mac} missing from `metalcast nodes list`:\n{list}"))?;
    let firmware = vm.spec.firmware.to_string();
    ensure!(
        row.contains("discovered"),
        "{mac} is not listed as discovered: {row}"
    );
    ensure!(
        row.contains(&format!("  {firmware}  ")),
        "{mac} not listed with firmware {firmware}: {row}"
    );
    ensure!(
        row.contains("vda 8.0G, vdb 4.0G"),
        "{mac} not listed with its two disks: {row}"
    );

    let show = appliance.cli(&["nodes", "show", &mac])?;
    let timeline: Vec<&str> = show
        .lines()
        .skip_while(|l| !l.starts_with("latest boot"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    let phases: Vec<&str> = timeline
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut expected = BOOT_PHASES.iter().map(|p| p.as_str()).peekable();
    for p in &phases {
        if expected.peek() == Some(p) {
            expected.next();
        }
    }
    let missing: Vec<&str> = expected.collect();
    ensure!(
        missing.is_empty(),
        "{mac}: boot timeline lacks {missing:?} in order; it shows:\n{}",
        timeline.join("\n")
    );
    Ok(timeline.join("\n"))
}

fn authoritative(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = lab::run_dir("boot-authoritative")?;
    let ns = appliance_netns()?;
    ns.tap("tap0", "br0")?;
    ns.tap("tap1", "br0")?;
    let config = appliance_config(
        ctx,
        &Setup {
            dir: &dir,
            dhcp: &authoritative_dhcp(""),
            ra: true,
        },
    );
    let mut appliance = Appliance::start(&ns, &ctx.bins, &dir, &config, &url())?;
    let mut bios = Vm::create(vm("bios", 1, Firmware::Bios, "tap0"), &dir.join("bios"))?;
    let mut uefi = Vm::create(vm("uefi", 2, Firmware::Uefi, "tap1"), &dir.join("uefi"))?;
    let started = Instant::now();
    bios.power_on(&ns)?;
    uefi.power_on(&ns)?;
    let registered = wait_registered(&mut appliance, &mut [&mut bios, &mut uefi]);
    report.check(
        "BIOS and UEFI VMs register over the network",
        registered.map(drop),
    );
    println!(
        "e2e: both registered {:.0}s after power-on",
        started.elapsed().as_secs_f64()
    );
    for vm in [&bios, &uefi] {
        let name = format!(
            "{} node listed with MAC, disks, firmware and the boot phases",
            vm.spec.name
        );
        let checked = check_registered(&appliance, vm).map(|timeline| {
            println!("e2e: {} boot timeline:\n{timeline}", vm.spec.name);
        });
        report.check(&name, checked);
        save_events(&appliance, vm);
    }

    report.check(
        "a provisioned node is told to boot its local disk",
        local_disk_handoff(&mut appliance, &ns, &mut bios),
    );
    Ok(())
}

fn local_disk_handoff(appliance: &mut Appliance, ns: &Netns, vm: &mut Vm) -> Result<()> {
    let mac = vm.spec.mac.to_string();
    let out = appliance.cli(&["nodes", "set-state", &mac, "provisioned"])?;
    ensure!(out.contains("provisioned"), "set-state said: {out}");
    let before = appliance
        .node(vm.spec.mac)?
        .map(|d| d.events.len())
        .unwrap_or(0);
    vm.power_on(ns)?;
    let script = wait_for(
        "the local-disk iPXE script",
        Duration::from_secs(180),
        Duration::from_secs(2),
        || {
            vm.check_alive()?;
            let detail = appliance.node(vm.spec.mac)?.context("node vanished")?;
            Ok(detail.events[before.min(detail.events.len())..]
                .iter()
                .find(|e| e.phase == Phase::IpxeScript)
                .cloned())
        },
    )?;
    ensure!(
        script.message.contains("local disk"),
        "the script served was: {}",
        script.message
    );
    // Give the firmware time to act on the script; it must not fetch the agent kernel.
    std::thread::sleep(Duration::from_secs(10));
    let detail = appliance.node(vm.spec.mac)?.context("node vanished")?;
    let fetched_kernel = detail.events[before..]
        .iter()
        .any(|e| e.phase == Phase::Kernel);
    ensure!(
        !fetched_kernel,
        "the provisioned node fetched the agent kernel again"
    );
    save_events(appliance, vm);
    Ok(())
}

/// Keeps `metalcast nodes show` beside the VM's serial console for a reader of the run.
fn save_events(appliance: &Appliance, vm: &Vm) {
    if let Ok(text) = appliance.cli(&["nodes", "show", &vm.spec.mac.to_string()]) {
        let _ = std::fs::write(vm.dir.join("events.txt"), text);
    }
}

/// Another DHCP server (dnsmasq, in its own namespace on the same segment) owns addresses;
/// `metalcastd` answers only PXE as a proxy.
fn proxy_dhcp(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = lab::run_dir("boot-proxy")?;
    let ns = appliance_netns()?;
    ns.tap("tap0", "br0")?;
    let site = Netns::create("site")?;
    link_netns(&ns, "br0", &site, "eth0", "10.77.0.2/24")?;
    let mut dnsmasq_cmd = site.command("dnsmasq");
    dnsmasq_cmd
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--no-ping",
            "--log-dhcp",
        ])
        .args([
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ))
        .arg("--log-facility=-");
    let _dnsmasq = lab::Daemon::spawn("dnsmasq", &mut dnsmasq_cmd, &dir.join("dnsmasq.log"))?;
    let dhcp = "[dhcp]\nmode = \"proxy\"\ninterfaces = [\"br0\"]\nunknown_nodes = \"discover\"\n";
    let config = appliance_config(
        ctx,
        &Setup {
            dir: &dir,
            dhcp,
            ra: true,
        },
    );
    let mut appliance = Appliance::start(&ns, &ctx.bins, &dir, &config, &url())?;
    let mut bios = Vm::create(
        vm("bios-proxy", 3, Firmware::Bios, "tap0"),
        &dir.join("bios"),
    )?;
    bios.power_on(&ns)?;
    let registered = wait_registered(&mut appliance, &mut [&mut bios]).and_then(|_| {
        let leases = std::fs::read_to_string(dir.join("dnsmasq.leases")).unwrap_or_default();
        ensure!(
            leases.contains(&bios.spec.mac.to_string()),
            "dnsmasq leased nothing to {}: the address did not come from it",
            bios.spec.mac
        );
        check_registered(&appliance, &bios).map(drop)
    });
    save_events(&appliance, &bios);
    report.check(
        "proxyDHCP beside dnsmasq: BIOS VM boots and registers",
        registered,
    );
    Ok(())
}

/// The VM sits on another subnet (10.78.0.0/24) behind a router running Debian's dhcrelay.
fn relay(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let dir = lab::run_dir("boot-relay")?;
    let ns = appliance_netns()?;
    let router = Netns::create("rtr")?;
    link_netns(&ns, "br0", &router, "up0", "10.77.0.254/24")?;
    router.bridge("br1", "10.78.0.1/24")?;
    router.tap("tap0", "br1")?;
    router.sysctl("net.ipv4.ip_forward", "1")?;
    ns.ip(&["route", "add", "10.78.0.0/24", "via", "10.77.0.254"])?;
    let mut relay_cmd = router.command("dhcrelay");
    relay_cmd.args([
        "-d",
        "-4",
        "-iu",
        "up0",
        "-id",
        "br1",
        &APPLIANCE_IP.to_string(),
    ]);
    let _relay = lab::Daemon::spawn("dhcrelay", &mut relay_cmd, &dir.join("dhcrelay.log"))?;
    let pools = "\n[[dhcp.pools]]\nsubnet = \"10.78.0.0/24\"\nrange = [\"10.78.0.100\", \"10.78.0.199\"]\nrouter = \"10.78.0.1\"\n";
    let config = appliance_config(
        ctx,
        &Setup {
            dir: &dir,
            dhcp: &authoritative_dhcp(pools),
            ra: true,
        },
    );
    let mut appliance = Appliance::start(&ns, &ctx.bins, &dir, &config, &url())?;
    let mut bios = Vm::create(
        vm("bios-relay", 4, Firmware::Bios, "tap0"),
        &dir.join("bios"),
    )?;
    bios.power_on(&router)?;
    let registered = wait_registered(&mut appliance, &mut [&mut bios]).and_then(|details| {
        let ip = details
            .first()
            .and_then(|d| d.node.ip.clone())
            .unwrap_or_default();
        ensure!(
            ip.starts_with("10.78.0."),
            "the relayed node got {ip:?}, not an address of its own subnet"
        );
        check_registered(&appliance, &bios).map(drop)
    });
    save_events(&appliance, &bios);
    report.check(
        "relay: a VM behind dhcrelay on another subnet boots and registers",
        registered,
    );
    Ok(())
}

/// A veth pair from `a` (enslaved to `bridge`) to `b` (named `b_if`, addressed `b_cidr`).
fn link_netns(a: &Netns, bridge: &str, b: &Netns, b_if: &str, b_cidr: &str) -> Result<()> {
    let a_if = format!("v-{b_if}");
    a.ip(&[
        "link", "add", &a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", &a_if, "master", bridge, "up"])?;
    b.ip(&["addr", "add", b_cidr, "dev", b_if])?;
    b.ip(&["link", "set", b_if, "up"])
}
