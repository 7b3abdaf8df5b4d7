//! `metalcast-agent`: the service the boot initramfs runs. It reads its boot parameters from
//! the kernel command line, brings up the boot NIC, registers the node's hardware with the
//! appliance and then follows the node's state. Progress goes to stderr, which init points at
//! the console the lab and operators read.

mod appliance;
mod apply;
mod backoff;
mod cmdline;
mod discover;
mod events;
mod install;
mod mcast;
mod network;
mod nodeconf;
mod provision;

use std::convert::Infallible;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Context as _;
use metalcast_proto::image::PublicKey;
use metalcast_proto::{EventReport, Hardware, Level, Node, NodeState, Phase, RegisterRequest};
use tracing::{error, info, warn};

use appliance::{ApiError, Appliance, chain, with_retry};
use apply::Outcome;
use backoff::Backoff;
use cmdline::BootParams;
use events::EventQueue;

/// How often the node's plan is read again once registered: an admin may assign a layout
/// or mark the node for provisioning at any time.
const POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Pause before asking again after the appliance refused a registration (4xx): long, since
/// only a person can fix what it refused, but not forever, so the node recovers once they have.
const REFUSED_PAUSE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    init_console();
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's life, one step after another. Each step either finishes or retries on its own;
/// only problems the node cannot get past without a person end it.
fn run() -> anyhow::Result<Infallible> {
    let started = discover::uptime();
    info!("metalcast-agent {} starting", env!("CARGO_PKG_VERSION"));
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let params = BootParams::parse(&cmdline).context("reading the boot parameters")?;
    info!("appliance {}, boot NIC {}", params.url, params.mac);
    if params.key.is_none() {
        warn!(
            "no {} on the kernel command line: images cannot be verified and will not be installed",
            metalcast_proto::cmdline::KEY
        );
    }

    let link = network::bring_up(params.mac).context("bringing up the boot NIC")?;
    let network_up = discover::uptime();
    info!("network up on {} with {}", link.iface, link.addr);

    // Local work first: the console shows what the node is made of even while the
    // appliance cannot be reached.
    let hardware = discover::hardware();
    log_hardware(&hardware);

    let api = Appliance::new(&params);
    let mut agent = Agent {
        events: EventQueue::start(api.clone(), Backoff::for_api()),
        api,
        backoff: Backoff::for_api(),
        last: None,
        key: params.key,
        consoles: params.consoles,
    };
    agent.report("agent started".to_string(), started);
    agent.report(
        format!("network up on {} with {}", link.iface, link.addr),
        network_up,
    );
    // The appliance hears of the boot before the registration, as it happened.
    agent.events.flush();

    let node = agent.register(&hardware);
    eprintln!(
        "metalcast-agent: registered {} ({}, {} disks)",
        agent.api.mac(),
        hardware.firmware,
        hardware.disks.len()
    );
    if let Some(node) = &node {
        info!("node state: {}", node.state);
    }
    agent.follow(node.map(|n| n.state))
}

/// The steps that talk to the appliance.
struct Agent {
    api: Appliance,
    events: EventQueue,
    backoff: Backoff,
    /// What this boot did with a layout, so each assignment is acted on once.
    last: Option<Outcome>,
    /// The appliance's image-signing key from the boot parameters.
    key: Option<PublicKey>,
    consoles: Vec<String>,
}

impl Agent {
    /// Queues an agent event taken at `uptime_secs`.
    fn report(&self, message: String, uptime_secs: Option<f64>) {
        self.events.push(EventReport {
            phase: Phase::Agent,
            level: Level::Info,
            message,
            uptime_secs,
        });
    }

    /// Registers the hardware, waiting as long as it takes. The node the appliance answers
    /// with, unless its answer was unreadable (the registration itself went through).
    fn register(&mut self, hardware: &Hardware) -> Option<Node> {
        let request = RegisterRequest {
            hardware: hardware.clone(),
        };
        loop {
            match with_retry("registering", &mut self.backoff, &mut sleep, || {
                self.api.register(&request)
            }) {
                Ok(node) => return Some(node),
                Err(e @ ApiError::BadBody(_)) => {
                    warn!("registered, but {}", chain(&e));
                    return None;
                }
                Err(e) => {
                    error!("registration refused: {}", chain(&e));
                    if let Some(hint) = e.hint() {
                        error!("{hint}");
                    }
                    info!("asking again in {} s", REFUSED_PAUSE.as_secs());
                    sleep(REFUSED_PAUSE);
                }
            }
        }
    }

    /// Follows the node's plan: prints every state change and applies a newly assigned
    /// layout. Polling is its own retry: a failed read is logged and the next one waits at
    /// least the poll interval, longer (backoff) while the appliance stays away.
    fn follow(&mut self, mut known_state: Option<NodeState>) -> ! {
        // Whether the last plan read had no layout: the console says so once, not every poll.
        let mut waiting = false;
        loop {
            let wait = match self.api.plan() {
                Ok(plan) => {
                    self.backoff.reset();
                    if known_state != Some(plan.state) {
                        info!("node state: {}", plan.state);
                        known_state = Some(plan.state);
                    }
                    if plan.layout.is_none() && !waiting {
                        eprintln!("metalcast-agent: no layout assigned; waiting");
                    }
                    waiting = plan.layout.is_none();
                    if let Some(layout) = apply::to_apply(&plan, self.last.as_ref()) {
                        let (outcome, applied) = apply::apply(
                            &self.api,
                            &self.events,
                            &mut self.backoff,
                            layout,
                            plan.may_wipe,
                        );
                        self.last = Some(outcome);
                        if let (Some(applied), Some(image)) = (applied, &plan.image) {
                            self.provision(&plan, image, &applied);
                        }
                    }
                    POLL_INTERVAL
                }
                Err(e) => {
                    warn!("reading the node's plan: {}", chain(&e));
                    if let Some(hint) = e.hint() {
                        warn!("{hint}");
                    }
                    if e.is_retryable() {
                        self.backoff.next_delay().max(POLL_INTERVAL)
                    } else {
                        POLL_INTERVAL
                    }
                }
            };
            sleep(wait);
        }
    }

    /// Installs the image into the layout just applied and reboots into it. Returns only
    /// when that stopped (the events say why); the layout is not applied again in this boot.
    fn provision(
        &mut self,
        plan: &metalcast_proto::AgentPlan,
        image: &metalcast_proto::ImagePlan,
        layout: &metalcast_layout::Plan,
    ) {
        let done = provision::provision(
            &self.api,
            &self.events,
            &mut self.backoff,
            provision::FromBoot {
                key: self.key.as_ref(),
                consoles: &self.consoles,
            },
            plan,
            image,
            layout,
        );
        match done {
            Ok(()) => {
                if let Err(e) = provision::reboot(&self.events, image) {
                    error!("{e:#}");
                }
            }
            Err(e) => eprintln!("metalcast-agent: {e}; waiting"),
        }
    }
}

fn log_hardware(hw: &Hardware) {
    info!(
        "{} firmware, {} CPUs ({}), {} MiB RAM",
        hw.firmware,
        hw.cpu.count,
        hw.cpu.model.as_deref().unwrap_or("unknown model"),
        hw.memory_bytes >> 20
    );
    info!(
        "system {} {} serial {} uuid {}",
        hw.dmi.vendor.as_deref().unwrap_or("-"),
        hw.dmi.product.as_deref().unwrap_or("-"),
        hw.dmi.serial.as_deref().unwrap_or("-"),
        hw.dmi.system_uuid.as_deref().unwrap_or("-")
    );
    for d in &hw.disks {
        info!(
            "disk {} {} MiB{} model {} serial {} by-path {}",
            d.path,
            d.size_bytes >> 20,
            if d.rotational { " rotational" } else { "" },
            d.model.as_deref().unwrap_or("-"),
            d.serial.as_deref().unwrap_or("-"),
            d.by_path.as_deref().unwrap_or("-")
        );
    }
    for n in &hw.nics {
        info!(
            "nic {} {} driver {} speed {}",
            n.name,
            n.mac,
            n.driver.as_deref().unwrap_or("-"),
            n.speed_mbps
                .map_or("-".to_string(), |s| format!("{s} Mbit/s"))
        );
    }
}

/// Console lines look like `[   4.211] metalcast-agent:  INFO network up …`: the kernel's
/// uptime clock, so they line up with the kernel's own messages on the serial console.
struct ConsolePrefix;

impl tracing_subscriber::fmt::time::FormatTime for ConsolePrefix {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match discover::uptime() {
            Some(secs) => write!(w, "[{secs:>9.3}] metalcast-agent:"),
            None => write!(w, "[        ?] metalcast-agent:"),
        }
    }
}

fn init_console() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A log that cannot be written (a full disk) must not take the process down:
        // the subscriber would report it with `eprintln!`, which panics.
        .log_internal_errors(false)
        .with_ansi(false)
        .with_target(false)
        .with_timer(ConsolePrefix)
        .init();
}
