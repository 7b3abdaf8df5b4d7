//! The boot services beside HTTP: DHCP, TFTP and router advertisements, and the recorder
//! that turns what they report into leases and events in the store.
//!
//! ```text
//!  DHCP ──Notice──▶ recorder ──batched writes──▶ SQLite
//!  TFTP ──TransferEvent──▶ recorder ──TftpDone──▶ DHCP
//!  HTTP ──known MAC──▶ forwarder ──Known──▶ DHCP
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use metalcast_dhcp::{Control, LeaseChange, Notice};
use metalcast_proto::{Event, Level, MacAddr, Node, NodeState, Phase};
use metalcast_tftp::{TransferEvent, TransferOutcome};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::http::{error_chain, now_ms};
use crate::ra;
use crate::store::{Store, StoreError, StoredLease, Write};

/// Room for DHCP notices while a batch is being written. The DHCP service drops (and
/// counts) notices when this is full, so it is sized for a burst of thousands of clients.
const NOTICE_QUEUE: usize = 65_536;
const TRANSFER_QUEUE: usize = 4_096;
const CONTROL_QUEUE: usize = 1_024;
const KNOWN_QUEUE: usize = 256;
/// Most writes per transaction; more simply wait for the next one.
const MAX_BATCH: usize = 8_192;
const PROC_NET_ARP: &str = "/proc/net/arp";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("reading stored nodes and leases")]
    Store(#[from] StoreError),
    #[error("dhcp: invalid configuration")]
    DhcpConfig(#[source] metalcast_dhcp::ConfigError),
    #[error("dhcp service stopped")]
    Dhcp(#[source] metalcast_dhcp::DhcpError),
    #[error("tftp service stopped")]
    Tftp(#[source] metalcast_tftp::TftpError),
    #[error("router advertisements stopped")]
    Ra(#[source] ra::RaError),
    #[error("{0} service ended on its own")]
    Ended(&'static str),
    #[error("a boot service task panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// The running boot services.
pub struct Services {
    /// For the HTTP service: nodes it creates, registers or changes, passed on to DHCP.
    pub known_nodes: Option<mpsc::Sender<Node>>,
    /// One phrase per service started, for the start-up log line.
    pub started: Vec<String>,
    tasks: JoinSet<Result<(), BootError>>,
    recorder: JoinHandle<()>,
}

impl Services {
    /// Start DHCP (if configured), TFTP and router advertisements (if enabled).
    pub async fn start(config: &Config, store: &Store) -> Result<Services, BootError> {
        let mut tasks = JoinSet::new();
        let mut started = Vec::new();
        let leases = store.leases().await?;
        let ip_macs = IpMacMap::from_leases(&leases);

        let (transfer_tx, transfer_rx) = mpsc::channel(TRANSFER_QUEUE);
        let tftp = metalcast_tftp::Server::bind(config.tftp.clone())
            .await
            .map_err(BootError::Tftp)?;
        started.push(format!(
            "tftp on {} (root {})",
            tftp.local_addr(),
            config.tftp.root.display()
        ));
        tasks.spawn(async move {
            tftp.run(transfer_tx).await.map_err(BootError::Tftp)?;
            Err(BootError::Ended("tftp"))
        });

        let mut known_nodes = None;
        let mut notices = None;
        let mut control = None;
        let mut boot_files = Vec::new();
        if let Some(dhcp) = &config.dhcp {
            boot_files = vec![dhcp.boot.bios.clone(), dhcp.boot.uefi.clone()];
            let lease_list = leases
                .iter()
                .map(|l| metalcast_dhcp::Lease {
                    mac: l.mac,
                    ip: l.ip,
                    expires_unix: l.expires_unix,
                    hostname: l.hostname.clone(),
                })
                .collect();
            let server =
                metalcast_dhcp::Server::new(dhcp.clone(), config.http_listen.port(), lease_list)
                    .map_err(BootError::DhcpConfig)?;
            let (notice_tx, notice_rx) = mpsc::channel(NOTICE_QUEUE);
            let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
            let (known_tx, known_rx) = mpsc::channel(KNOWN_QUEUE);
            started.push(format!(
                "dhcp ({}) on {}",
                format!("{:?}", dhcp.mode).to_lowercase(),
                dhcp.interfaces.join(", ")
            ));
            tasks.spawn(async move {
                metalcast_dhcp::run(server, notice_tx, control_rx)
                    .await
                    .map_err(BootError::Dhcp)?;
                Err(BootError::Ended("dhcp"))
            });
            tasks.spawn(forward_known(
                store.nodes().await?,
                known_rx,
                control_tx.clone(),
            ));
            known_nodes = Some(known_tx);
            notices = Some(notice_rx);
            control = Some(control_tx);
        }

        if let Some(ra_config) = &config.ra {
            for interface in &ra_config.interfaces {
                let (name, interval, prefix) =
                    (interface.clone(), ra_config.interval, ra_config.prefix);
                tasks.spawn(async move {
                    ra::run(name, interval, prefix)
                        .await
                        .map_err(BootError::Ra)?;
                    Err(BootError::Ended("router advertisement"))
                });
            }
            started.push(format!(
                "router advertisements on {} every {} s",
                ra_config.interfaces.join(", "),
                ra_config.interval.as_secs()
            ));
        }

        let recorder = tokio::spawn(
            Recorder {
                store: store.clone(),
                ip_macs,
                control,
                boot_files,
            }
            .run(notices, Some(transfer_rx)),
        );
        Ok(Services {
            known_nodes,
            started,
            tasks,
            recorder,
        })
    }

    /// Resolves when a service stops; they are meant to run until shutdown, so this is
    /// always a failure.
    pub async fn failure(&mut self) -> BootError {
        match self.tasks.join_next().await {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(()))) => BootError::Ended("a boot"),
            Some(Err(e)) => BootError::Panicked(e),
            None => std::future::pending().await,
        }
    }

    /// Stop the services, then let the recorder write what they reported last.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        drop(self.known_nodes);
        if let Err(e) = self.recorder.await {
            tracing::error!(error = %e, "the lease and event recorder failed");
        }
    }
}

/// Tell DHCP the nodes already in the store, then every node HTTP creates, registers or
/// changes: that it is known, and whether its next boot is its local disk.
async fn forward_known(
    stored: Vec<Node>,
    mut from_http: mpsc::Receiver<Node>,
    control: mpsc::Sender<Control>,
) -> Result<(), BootError> {
    let notices = |node: &Node| {
        [
            Control::Known(node.mac),
            Control::LocalBoot(node.mac, node.state == NodeState::Provisioned),
        ]
    };
    // When a send fails the DHCP task has ended; its own result says why.
    for node in &stored {
        for notice in notices(node) {
            if control.send(notice).await.is_err() {
                return std::future::pending().await;
            }
        }
    }
    'http: while let Some(node) = from_http.recv().await {
        for notice in notices(&node) {
            if control.send(notice).await.is_err() {
                break 'http;
            }
        }
    }
    // HTTP is shutting down: so are we, by being aborted.
    std::future::pending().await
}

/// Which MAC holds which IPv4 address, from the DHCP lease changes.
#[derive(Debug, Default)]
pub struct IpMacMap {
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
}

impl IpMacMap {
    pub fn from_leases(leases: &[StoredLease]) -> IpMacMap {
        let mut map = IpMacMap::default();
        for l in leases {
            map.bind(l.mac, l.ip);
        }
        map
    }

    pub fn bind(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        if let Some(old) = self.by_mac.insert(mac, ip)
            && old != ip
        {
            self.by_ip.remove(&old);
        }
        if let Some(previous) = self.by_ip.insert(ip, mac)
            && previous != mac
        {
            self.by_mac.remove(&previous);
        }
    }

    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        if self.by_ip.get(&ip) == Some(&mac) {
            self.by_ip.remove(&ip);
            self.by_mac.remove(&mac);
        }
    }

    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.by_ip.get(&ip).copied()
    }
}

/// The MAC of `ip` in the kernel's ARP table (`/proc/net/arp`), for clients whose address
/// another DHCP server gave (proxy mode). Incomplete entries do not count.
pub fn arp_lookup(table: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    const ATF_COM: u32 = 0x2;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [addr, _hw_type, flags, mac, ..] = fields.as_slice() else {
            return None;
        };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        (addr.parse() == Ok(ip) && flags & ATF_COM != 0)
            .then(|| mac.parse().ok())
            .flatten()
    })
}

/// Whether a requested TFTP file name is one of `boot_files` (clients may add a leading `/`).
pub fn is_boot_file(boot_files: &[String], requested: &str) -> bool {
    let name = requested.trim_start_matches('/');
    boot_files.iter().any(|f| f.trim_start_matches('/') == name)
}

/// The event for a TFTP transfer, and whether it delivered a whole file.
pub fn transfer_event(mac: MacAddr, t: &TransferEvent, at_ms: i64) -> (Event, bool) {
    let file = &t.file;
    let (level, message, done) = match &t.outcome {
        TransferOutcome::Completed {
            bytes,
            duration,
            blksize,
            windowsize,
        } => (
            Level::Info,
            format!(
                "{file} sent, {bytes} bytes in {} ms (blksize {blksize}, windowsize {windowsize})",
                duration.as_millis()
            ),
            true,
        ),
        // UEFI firmware asks for the size this way before the real download: not an error.
        TransferOutcome::AbortedByClient {
            message,
            after_bytes,
        } => (
            Level::Info,
            format!("{file}: the client ended the transfer after {after_bytes} bytes ({message})"),
            false,
        ),
        TransferOutcome::Failed { reason } => {
            (Level::Warn, format!("{file} failed: {reason}"), false)
        }
        TransferOutcome::Refused { reason } => {
            (Level::Warn, format!("{file} refused: {reason}"), false)
        }
    };
    let event = Event {
        mac,
        phase: Phase::Tftp,
        level,
        message,
        at_ms,
    };
    (event, done)
}

enum Item {
    Notice(Notice),
    Transfer(TransferEvent),
}

/// Persists what DHCP and TFTP report. It writes whatever has arrived in one transaction,
/// then looks again: under load batches grow and the DHCP service never waits for a disk
/// flush; when idle a lease is written as soon as it arrives.
struct Recorder {
    store: Store,
    ip_macs: IpMacMap,
    control: Option<mpsc::Sender<Control>>,
    /// The iPXE builds DHCP hands out: a completed transfer of one is reported to DHCP.
    boot_files: Vec<String>,
}

impl Recorder {
    async fn run(
        mut self,
        mut notices: Option<mpsc::Receiver<Notice>>,
        mut transfers: Option<mpsc::Receiver<TransferEvent>>,
    ) {
        let mut batch = Vec::new();
        let mut done_macs = Vec::new();
        while notices.is_some() || transfers.is_some() {
            let first = tokio::select! {
                n = recv_or_pending(&mut notices) => match n {
                    Some(n) => Item::Notice(n),
                    None => { notices = None; continue; }
                },
                t = recv_or_pending(&mut transfers) => match t {
                    Some(t) => Item::Transfer(t),
                    None => { transfers = None; continue; }
                },
            };
            let now = now_ms();
            self.take(first, now, &mut batch, &mut done_macs).await;
            while batch.len() < MAX_BATCH {
                let next = match (&mut notices, &mut transfers) {
                    (Some(n), _) if !n.is_empty() => n.try_recv().ok().map(Item::Notice),
                    (_, Some(t)) if !t.is_empty() => t.try_recv().ok().map(Item::Transfer),
                    _ => None,
                };
                match next {
                    Some(item) => self.take(item, now, &mut batch, &mut done_macs).await,
                    None => break,
                }
            }
            if let Err(e) = self.store.apply(&batch).await {
                tracing::error!(
                    error = %error_chain(&e),
                    writes = batch.len(),
                    "persisting DHCP leases and boot events failed; they are lost"
                );
            }
            batch.clear();
            if let Some(control) = &self.control {
                for mac in done_macs.drain(..) {
                    if control.send(Control::TftpDone(mac)).await.is_err() {
                        tracing::debug!(%mac, "dhcp is gone; TftpDone not delivered");
                    }
                }
            }
            done_macs.clear();
        }
    }

    async fn take(
        &mut self,
        item: Item,
        now: i64,
        batch: &mut Vec<Write>,
        done: &mut Vec<MacAddr>,
    ) {
        match item {
            Item::Notice(Notice::Lease(LeaseChange::Bound(l))) => {
                self.ip_macs.bind(l.mac, l.ip);
                batch.push(Write::LeaseBound(StoredLease {
                    mac: l.mac,
                    ip: l.ip,
                    expires_unix: l.expires_unix,
                    hostname: l.hostname,
                }));
            }
            Item::Notice(Notice::Lease(LeaseChange::Released { mac, ip })) => {
                self.ip_macs.release(mac, ip);
                batch.push(Write::LeaseReleased { mac, ip });
            }
            Item::Notice(Notice::Seen(seen)) => batch.push(Write::Event(Event {
                mac: seen.mac,
                phase: Phase::Dhcp,
                level: Level::Info,
                message: seen.message,
                at_ms: now,
            })),
            Item::Transfer(t) => {
                let Some(mac) = self.mac_of(t.peer.ip()).await else {
                    tracing::debug!(peer = %t.peer, file = %t.file, "tftp transfer from an address with no known MAC");
                    return;
                };
                let (event, completed) = transfer_event(mac, &t, now);
                if completed && is_boot_file(&self.boot_files, &t.file) {
                    done.push(mac);
                }
                batch.push(Write::Event(event));
            }
        }
    }

    async fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        let IpAddr::V4(ip) = ip.to_canonical() else {
            return None;
        };
        if let Some(mac) = self.ip_macs.mac_of(ip) {
            return Some(mac);
        }
        match tokio::fs::read_to_string(PROC_NET_ARP).await {
            Ok(table) => arp_lookup(&table, ip),
            Err(e) => {
                tracing::debug!(error = %e, "reading {PROC_NET_ARP}");
                None
            }
        }
    }
}

async fn recv_or_pending<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_mac_map_follows_moves_and_releases() {
        let a = mac("52:54:00:00:00:0a");
        let b = mac("52:54:00:00:00:0b");
        let ip1 = Ipv4Addr::new(10, 0, 0, 1);
        let ip2 = Ipv4Addr::new(10, 0, 0, 2);
        let mut m = IpMacMap::default();
        m.bind(a, ip1);
        assert_eq!(m.mac_of(ip1), Some(a));
        m.bind(a, ip2);
        assert_eq!((m.mac_of(ip1), m.mac_of(ip2)), (None, Some(a)));
        m.bind(b, ip2);
        assert_eq!(m.mac_of(ip2), Some(b));
        m.release(a, ip2); // a no longer holds it: no effect
        assert_eq!(m.mac_of(ip2), Some(b));
        m.release(b, ip2);
        assert_eq!(m.mac_of(ip2), None);
    }

    #[test]
    fn arp_table_lookup() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                     10.77.0.23       0x1         0x2         52:54:00:12:34:56     *        br0\n\
                     10.77.0.24       0x1         0x0         00:00:00:00:00:00     *        br0\n\
                     10.77.0.25       0x1         0x6         52:54:00:12:34:57     *        br0\n";
        assert_eq!(
            arp_lookup(table, Ipv4Addr::new(10, 77, 0, 23)),
            Some(mac("52:54:00:12:34:56"))
        );
        assert_eq!(
            arp_lookup(table, Ipv4Addr::new(10, 77, 0, 24)),
            None,
            "incomplete entry"
        );
        assert_eq!(
            arp_lookup(table, Ipv4Addr::new(10, 77, 0, 25)),
            Some(mac("52:54:00:12:34:57"))
        );
        assert_eq!(arp_lookup(table, Ipv4Addr::new(10, 77, 0, 26)), None);
        assert_eq!(
            arp_lookup("garbage\nmore garbage here\n", Ipv4Addr::new(10, 77, 0, 23)),
            None
        );
    }

    #[test]
    fn boot_files_match_with_or_without_a_leading_slash() {
        let files = vec!["undionly.kpxe".to_string(), "ipxe.efi".to_string()];
        assert!(is_boot_file(&files, "undionly.kpxe"));
        assert!(is_boot_file(&files, "/ipxe.efi"));
        assert!(!is_boot_file(&files, "snponly.efi"));
        assert!(!is_boot_file(&[], "undionly.kpxe"));
    }

    #[test]
    fn transfer_events() {
        let m = mac("52:54:00:12:34:56");
        let ev = |outcome| TransferEvent {
            peer: "10.77.0.23:2070".parse().unwrap(),
            file: "undionly.kpxe".into(),
            outcome,
        };
        let (e, done) = transfer_event(
            m,
            &ev(TransferOutcome::Completed {
                bytes: 70_000,
                duration: Duration::from_millis(42),
                blksize: 1468,
                windowsize: 4,
            }),
            9,
        );
        assert!(done);
        assert_eq!(
            (e.mac, e.phase, e.level, e.at_ms),
            (m, Phase::Tftp, Level::Info, 9)
        );
        assert_eq!(
            e.message,
            "undionly.kpxe sent, 70000 bytes in 42 ms (blksize 1468, windowsize 4)"
        );
        let (e, done) = transfer_event(
            m,
            &ev(TransferOutcome::AbortedByClient {
                message: "tsize probe".into(),
                after_bytes: 0,
            }),
            9,
        );
        assert!(!done);
        assert_eq!(e.level, Level::Info);
        let (e, done) = transfer_event(
            m,
            &ev(TransferOutcome::Refused {
                reason: "no such file".into(),
            }),
            9,
        );
        assert!(!done);
        assert_eq!(
            (e.level, e.message.as_str()),
            (Level::Warn, "undionly.kpxe refused: no such file")
        );
        let (e, done) = transfer_event(
            m,
            &ev(TransferOutcome::Failed {
                reason: "timed out".into(),
            }),
            9,
        );
        assert!(!done);
        assert_eq!(e.level, Level::Warn);
    }
}
