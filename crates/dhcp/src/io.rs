//! The tokio edge: sockets in, [`Server`] decisions out. No protocol logic lives here.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use metalcast_proto::MacAddr;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config::Mode;
use crate::{Counters, Lease, LeaseChange, PXE_PORT, Received, SERVER_PORT, Seen, Server};

/// Larger than any DHCP message a client sends over Ethernet.
const RECV_BUF: usize = 4096;
/// Pause after a failed receive.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long a lease change may wait for a full notice queue before it is dropped.
const LEASE_NOTICE_WAIT: Duration = Duration::from_secs(1);

/// What [`run`] reports to the appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Persist this.
    Lease(LeaseChange),
    /// Record this as the node's "dhcp" event.
    Seen(Seen),
}

/// What the appliance tells [`run`].
#[derive(Debug)]
pub enum Control {
    /// See [`Server::set_known`].
    Known(MacAddr),
    /// See [`Server::tftp_done`].
    TftpDone(MacAddr),
    /// See [`Server::set_local_boot`].
    LocalBoot(MacAddr, bool),
    /// Reply with the current counters.
    Counters(oneshot::Sender<Counters>),
    /// Reply with [`Server::lease_for_ip`]: lets the TFTP side name a client by address
    /// while `run` owns the server.
    LeaseForIp(Ipv4Addr, oneshot::Sender<Option<Lease>>),
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("listing interface addresses")]
    Interfaces(#[source] nix::Error),
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("opening UDP port {port} on {iface}")]
    Bind {
        iface: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the notice receiver was dropped")]
    NoticesClosed,
}

/// One socket: an interface and a port.
struct Endpoint {
    iface: String,
    ip: Ipv4Addr,
    port: u16,
    sock: UdpSocket,
}

enum Event {
    Control(Option<Control>),
    Datagram {
        at: usize,
        len: usize,
        src: SocketAddr,
    },
    RecvError {
        at: usize,
        error: std::io::Error,
    },
}

/// Serves DHCP on every configured interface until `control` is closed (every sender
/// dropped), which is how the caller stops it; then returns `Ok`.
///
/// Binds 0.0.0.0:67 (and 0.0.0.0:4011 in proxy mode) per interface with SO_BINDTODEVICE,
/// so each reply leaves by the interface its request came in on. Each interface's IPv4
/// address is read once at start (the one inside a pool's subnet if there are several).
/// Seen notices are dropped when the queue is full; lease changes wait up to a second.
/// Both kinds of drop are counted in [`Counters::notices_dropped`].
pub async fn run(
    mut server: Server,
    notices: mpsc::Sender<Notice>,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), DhcpError> {
    let ports: &[u16] = match server.mode() {
        Mode::Authoritative => &[SERVER_PORT],
        Mode::Proxy => &[SERVER_PORT, PXE_PORT],
    };
    let addresses = interface_addresses()?;
    let mut endpoints = Vec::new();
    for iface in server.interfaces() {
        let candidates = addresses.get(iface).map(Vec::as_slice).unwrap_or_default();
        let ip = candidates
            .iter()
            .copied()
            .find(|&ip| server.serves(ip))
            .or_else(|| candidates.first().copied())
            .ok_or_else(|| DhcpError::NoAddress(iface.clone()))?;
        for &port in ports {
            let sock = open(iface, port).map_err(|source| DhcpError::Bind {
                iface: iface.clone(),
                port,
                source,
            })?;
            endpoints.push(Endpoint {
                iface: iface.clone(),
                ip,
                port,
                sock,
            });
        }
        info!(iface, %ip, ?ports, "serving DHCP");
    }

    let mut edge = Edge {
        notices,
        notices_dropped: 0,
        send_errors: 0,
    };
    let mut buf = vec![0u8; RECV_BUF];
    let mut next = 0;
    loop {
        let event = poll_fn(|cx| {
            if let Poll::Ready(c) = control.poll_recv(cx) {
                return Poll::Ready(Event::Control(c));
            }
            // Start after the last socket served, so a busy interface cannot starve others.
            for k in 0..endpoints.len() {
                let at = (next + k) % endpoints.len();
                let mut rb = ReadBuf::new(&mut buf);
                match endpoints[at].sock.poll_recv_from(cx, &mut rb) {
                    Poll::Ready(Ok(src)) => {
                        return Poll::Ready(Event::Datagram {
                            at,
                            len: rb.filled().len(),
                            src,
                        });
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Event::RecvError { at, error }),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;

        match event {
            Event::Control(None) => return Ok(()),
            Event::Control(Some(Control::Known(mac))) => server.set_known(mac),
            Event::Control(Some(Control::TftpDone(mac))) => {
                server.tftp_done(mac, SystemTime::now())
            }
            Event::Control(Some(Control::LocalBoot(mac, on))) => server.set_local_boot(mac, on),
            Event::Control(Some(Control::Counters(reply))) => {
                let mut counters = server.counters();
                counters.notices_dropped = edge.notices_dropped;
                counters.send_errors = edge.send_errors;
                // The asker may have given up; nothing to do then.
                let _ = reply.send(counters);
            }
            Event::Control(Some(Control::LeaseForIp(ip, reply))) => {
                let _ = reply.send(server.lease_for_ip(ip).cloned());
            }
            Event::RecvError { at, error } => {
                next = (at + 1) % endpoints.len();
                warn!(iface = endpoints[at].iface, %error, "receive failed");
                // Should the error repeat at once, do not spin on it.
                tokio::time::sleep(RECV_ERROR_PAUSE).await;
            }
            Event::Datagram { at, len, src } => {
                next = (at + 1) % endpoints.len();
                let SocketAddr::V4(src) = src else { continue };
                let ep = &endpoints[at];
                let rx = Received {
                    data: &buf[..len],
                    src,
                    local_port: ep.port,
                    iface_ip: ep.ip,
                };
                let outcome = server.handle(SystemTime::now(), &rx);
                if let Some(tx) = outcome.reply
                    && let Err(error) = ep.sock.send_to(&tx.data, tx.to).await
                {
                    edge.send_errors += 1;
                    warn!(iface = ep.iface, to = %tx.to, %error, "send failed");
                }
                if let Some(change) = outcome.lease {
                    edge.lease(change).await?;
                }
                if let Some(seen) = outcome.seen {
                    edge.seen(seen)?;
                }
            }
        }
    }
}

/// Notice delivery and what it counts.
struct Edge {
    notices: mpsc::Sender<Notice>,
    notices_dropped: u64,
    send_errors: u64,
}

impl Edge {
    async fn lease(&mut self, change: LeaseChange) -> Result<(), DhcpError> {
        let notice = match self.notices.try_send(Notice::Lease(change)) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(DhcpError::NoticesClosed),
            Err(mpsc::error::TrySendError::Full(notice)) => notice,
        };
        match self.notices.send_timeout(notice, LEASE_NOTICE_WAIT).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(DhcpError::NoticesClosed),
            Err(mpsc::error::SendTimeoutError::Timeout(notice)) => {
                self.notices_dropped += 1;
                error!(
                    ?notice,
                    "lease change not persisted: the notice queue stayed full"
                );
                Ok(())
            }
        }
    }

    fn seen(&mut self, seen: Seen) -> Result<(), DhcpError> {
        match self.notices.try_send(Notice::Seen(seen)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DhcpError::NoticesClosed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.notices_dropped += 1;
                Ok(())
            }
        }
    }
}

/// A UDP socket on 0.0.0.0:`port` that only sees `iface`'s traffic and may broadcast.
fn open(iface: &str, port: u16) -> std::io::Result<UdpSocket> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Another socket on the same port, bound to another interface, must not conflict.
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    sock.bind_device(Some(iface.as_bytes()))?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    UdpSocket::from_std(sock.into())
}

/// IPv4 addresses of every interface, in the order the kernel lists them.
fn interface_addresses() -> Result<HashMap<String, Vec<Ipv4Addr>>, DhcpError> {
    let mut out: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(DhcpError::Interfaces)? {
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            out.entry(ifa.interface_name).or_default().push(sin.ip());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
