//! From an applied layout to a node that boots on its own: the image, the node's
//! configuration, the boot loader, the unmounts, the appliance told, the reboot.

use std::path::Path;
use std::process::Command as Process;
use std::time::Instant;

use metalcast_layout::exec::{self, Progress};
use metalcast_layout::{Action, Plan};
use metalcast_proto::image::PublicKey;
use metalcast_proto::{AgentPlan, ImagePlan, Level, MacAddr, Phase};
use tracing::{error, info, warn};

use crate::appliance::{Appliance, chain, with_retry};
use crate::apply::TARGET;
use crate::backoff::Backoff;
use crate::events::EventQueue;
use crate::install::{self, label};
use crate::nodeconf::{self, StepKind};

/// Why provisioning stopped; the events already say it in full.
#[derive(Debug, thiserror::Error)]
#[error("provisioning stopped in phase {phase}")]
pub struct Stopped {
    pub phase: Phase,
}

fn record(events: &EventQueue, phase: Phase, level: Level, message: String) {
    match level {
        Level::Error => error!("{message}"),
        Level::Warn => warn!("{message}"),
        _ => info!("{message}"),
    }
    events.record(phase, level, message);
}

/// What the agent's own boot tells the install: the key images must be signed with, and the
/// consoles the installed system keeps.
pub struct FromBoot<'a> {
    pub key: Option<&'a PublicKey>,
    pub consoles: &'a [String],
}

/// Installs `image` into the mounted layout of `layout`, configures it as this node, installs
/// the boot loader and unmounts everything. The node is marked provisioned only after all
/// of it worked; then the caller reboots.
pub fn provision(
    api: &Appliance,
    events: &EventQueue,
    backoff: &mut Backoff,
    boot: FromBoot<'_>,
    plan: &AgentPlan,
    image: &ImagePlan,
    layout: &Plan,
) -> Result<(), Stopped> {
    let target = Path::new(TARGET);
    let stop = |phase| Stopped { phase };
    install::install_image(api, events, boot.key, image, target).map_err(|_| stop(Phase::Image))?;
    configure(events, plan, api.mac(), layout, boot.consoles, target)
        .map_err(|_| stop(Phase::Config))?;

    let binds = nodeconf::chroot_binds(Path::new("/sys/firmware/efi/efivars").is_dir());
    let chrooted = in_chroot(events, layout, &binds);
    // Unmounted whether the chroot steps worked or not: the disks must be left consistent.
    unmount_all(events, layout, &binds);
    chrooted?;

    if let Err(e) = with_retry(
        "marking the node provisioned",
        backoff,
        &mut std::thread::sleep,
        || api.provisioned(),
    ) {
        record(
            events,
            Phase::Reboot,
            Level::Error,
            format!(
                "{} is installed but the appliance did not mark the node provisioned: {}; not rebooting",
                label(image),
                chain(&e)
            ),
        );
        return Err(stop(Phase::Reboot));
    }
    Ok(())
}

/// The files that make the tree this node.
fn configure(
    events: &EventQueue,
    plan: &AgentPlan,
    mac: MacAddr,
    layout: &Plan,
    consoles: &[String],
    target: &Path,
) -> Result<(), ()> {
    let started = Instant::now();
    let fail = |message: String| record(events, Phase::Config, Level::Error, message);
    let name = nodeconf::hostname(plan.hostname.as_deref(), mac).map_err(|e| fail(chain(&e)))?;
    // Enabled units are symlinks to absolute paths inside the image: look at the link itself,
    // since following it would resolve against the agent's root, not the target's.
    let exists = |rel: &str| target.join(rel).symlink_metadata().is_ok();
    let stack = nodeconf::net_stack(exists);
    let interfaces = nodeconf::read(target, "etc/network/interfaces");
    let net = nodeconf::network_files(stack, mac, interfaces.as_deref());
    if stack == nodeconf::NetStack::Unknown {
        record(
            events,
            Phase::Config,
            Level::Warn,
            "the image has neither systemd-networkd enabled nor ifupdown: no network configuration written"
                .to_string(),
        );
    }
    let mut files = nodeconf::config_files(&name, net, layout, consoles);
    let shadow = nodeconf::read(target, "etc/shadow");
    files.extend(
        nodeconf::credential_files(&plan.credentials, shadow.as_deref())
            .map_err(|e| fail(chain(&e)))?,
    );
    let resolved = exists("etc/systemd/system/dbus-org.freedesktop.resolve1.service");
    let dhcp_dns = std::fs::read_to_string("/etc/resolv.conf").ok();
    files.extend(nodeconf::resolv_conf(dhcp_dns.as_deref(), resolved));
    for file in &files {
        nodeconf::write(target, file).map_err(|e| fail(chain(&e)))?;
    }
    let paths: Vec<String> = files.iter().map(|f| format!("/{}", f.path)).collect();
    record(
        events,
        Phase::Config,
        Level::Info,
        format!(
            "configured {name} ({stack:?} network): wrote {} ({:.1} s)",
            paths.join(", "),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

fn phase_of(kind: StepKind) -> Phase {
    match kind {
        StepKind::Config => Phase::Config,
        StepKind::Bootloader => Phase::Bootloader,
    }
}

/// Binds the kernel filesystems into the target and runs the image's own tools there.
fn in_chroot(events: &EventQueue, layout: &Plan, binds: &[&str]) -> Result<(), Stopped> {
    for bind in nodeconf::bind_commands(TARGET, binds) {
        let dir = match &bind {
            Action::Run(c) => c.args.last(),
            Action::WaitForDevice(_) => None,
        };
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                record(
                    events,
                    Phase::Config,
                    Level::Error,
                    format!("creating {dir}: {e}"),
                );
                Stopped {
                    phase: Phase::Config,
                }
            })?;
        }
        run_step(events, Phase::Config, &bind)?;
    }
    for (kind, action) in nodeconf::chroot_steps(layout, TARGET) {
        run_step(events, phase_of(kind), &action)?;
    }
    if Path::new("/sys/firmware/efi").is_dir() {
        order_boot_entries(events)?;
    }
    Ok(())
}

/// Network first, then the entries just created for the installed system (see
/// [`nodeconf::boot_order`]).
fn order_boot_entries(events: &EventQueue) -> Result<(), Stopped> {
    let fail = |message: String| {
        record(events, Phase::Bootloader, Level::Error, message);
        Stopped {
            phase: Phase::Bootloader,
        }
    };
    let listing = std::process::Command::new("efibootmgr")
        .output()
        .map_err(|e| fail(format!("running efibootmgr: {e}")))?;
    if !listing.status.success() {
        return Err(fail(format!(
            "efibootmgr failed ({}): {}",
            listing.status,
            String::from_utf8_lossy(&listing.stderr).trim()
        )));
    }
    let Some(order) = nodeconf::boot_order(&String::from_utf8_lossy(&listing.stdout), "metalcast ")
    else {
        return Ok(());
    };
    let set = Action::Run(metalcast_layout::Command {
        program: "efibootmgr".into(),
        args: vec!["--bootorder".into(), order],
        stdin: None,
    });
    run_step(events, Phase::Bootloader, &set)
}

fn run_step(events: &EventQueue, phase: Phase, action: &Action) -> Result<(), Stopped> {
    let started = Instant::now();
    let what = match action {
        Action::Run(c) => c.to_string(),
        Action::WaitForDevice(p) => format!("wait for {p}"),
    };
    match exec::run(std::slice::from_ref(action), |p: &Progress<'_>| {
        record(
            events,
            phase,
            Level::Info,
            format!("{what} ({:.1} s)", p.duration.as_secs_f64()),
        );
    }) {
        Ok(()) => Ok(()),
        Err(e) => {
            record(
                events,
                phase,
                Level::Error,
                format!(
                    "{what} failed after {:.1} s: {}",
                    started.elapsed().as_secs_f64(),
                    chain(&e)
                ),
            );
            Err(Stopped { phase })
        }
    }
}

/// Unmounts the binds and the layout's filesystems, innermost first, then syncs. A mount
/// that will not go is reported and the rest still tried.
fn unmount_all(events: &EventQueue, layout: &Plan, binds: &[&str]) {
    let started = Instant::now();
    let mut failed = Vec::new();
    for path in nodeconf::unmount_order(layout, TARGET, binds) {
        match Process::new("umount").arg(&path).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => failed.push(format!(
                "{path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => failed.push(format!("{path}: {e}")),
        }
    }
    let synced = Process::new("sync").status();
    if !failed.is_empty() {
        record(
            events,
            Phase::Bootloader,
            Level::Warn,
            format!("could not unmount {}", failed.join("; ")),
        );
    }
    if let Err(e) = synced {
        record(events, Phase::Bootloader, Level::Warn, format!("sync: {e}"));
    }
    record(
        events,
        Phase::Bootloader,
        Level::Info,
        format!(
            "unmounted {TARGET} and synced ({:.1} s)",
            started.elapsed().as_secs_f64()
        ),
    );
}

/// Tells the appliance, prints the line the lab waits for, and reboots. Returns only if the
/// reboot could not be started.
pub fn reboot(events: &EventQueue, image: &ImagePlan) -> anyhow::Result<()> {
    record(
        events,
        Phase::Reboot,
        Level::Info,
        "rebooting into the installed system".to_string(),
    );
    // The appliance should hear of the reboot before the node goes.
    events.flush();
    eprintln!("metalcast-agent: installed {}; rebooting", label(image));
    // busybox `reboot -f`: straight to the kernel, there is no init to ask in the initramfs.
    let status = Process::new("reboot").arg("-f").status()?;
    anyhow::bail!("reboot -f exited with {status}")
}
