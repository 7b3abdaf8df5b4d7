//! `metalcast-agent`: the service the boot initramfs runs. It reads its boot parameters from
//! the kernel command line, brings up the boot NIC, registers the node's hardware with the
//! appliance and then follows the node's state. Progress goes to stderr, which init points at
//! the console the lab and operators read.

mod appliance;
mod backoff;
mod cmdline;
mod discover;
mod network;

use std::convert::Infallible;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Context as _;
use metalcast_proto::{EventReport, Hardware, Level, Node, NodeState, Phase, RegisterRequest};
use tracing::{error, info, warn};

use appliance::{ApiError, Appliance, chain, with_retry};
use backoff::Backoff;
use cmdline::BootParams;

/// How often the node's record is read back once registered.
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

    let link = network::bring_up(params.mac).context("bringing up the boot NIC")?;
    let network_up = discover::uptime();
    info!("network up on {} with {}", link.iface, link.addr);

    // Local work first: the console shows what the node is made of even while the
    // appliance cannot be reached.
    let hardware = discover::hardware();
    log_hardware(&hardware);

    let mut agent = Agent {
        api: Appliance::new(&params),
        backoff: Backoff::for_api(),
    };
    agent.report(Level::Info, "agent started".to_string(), started);
    agent.report(
        Level::Info,
        format!("network up on {} with {}", link.iface, link.addr),
        network_up,
    );

    let node = agent.register(&hardware);
    eprintln!(
        "metalcast-agent: registered {} ({}, {} disks)",
        agent.api.mac(),
        hardware.firmware,
        hardware.disks.len()
    );
    agent.watch(node.map(|n| n.state))
}

/// The steps that talk to the appliance.
struct Agent {
    api: Appliance,
    backoff: Backoff,
}

impl Agent {
    /// Records an event; an event the appliance refuses is logged and dropped, it never stops
    /// the node.
    fn report(&mut self, level: Level, message: String, uptime_secs: Option<f64>) {
        let event = EventReport {
            phase: Phase::Agent,
            level,
            message,
            uptime_secs,
        };
        let what = format!("sending event {:?}", event.message);
        let sent = with_retry(&what, &mut self.backoff, &mut sleep, || {
            self.api.send_event(&event)
        });
        if let Err(e) = sent {
            warn!("event {:?} not recorded: {}", event.message, chain(&e));
            if let Some(hint) = e.hint() {
                warn!("{hint}");
            }
        }
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

    /// Follows the node's record and prints every state change. Polling is its own retry:
    /// a failed read is logged and the next one waits at least the poll interval, longer
    /// (backoff) while the appliance stays away.
    fn watch(&mut self, mut known: Option<NodeState>) -> ! {
        if let Some(state) = known {
            info!("node state: {state}");
        }
        loop {
            let wait = match self.api.node() {
                Ok(detail) => {
                    self.backoff.reset();
                    let state = detail.node.state;
                    if known != Some(state) {
                        info!("node state: {state}");
                        known = Some(state);
                    }
                    POLL_INTERVAL
                }
                Err(e) => {
                    warn!("reading the node's state: {}", chain(&e));
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
        .with_ansi(false)
        .with_target(false)
        .with_timer(ConsolePrefix)
        .init();
}
