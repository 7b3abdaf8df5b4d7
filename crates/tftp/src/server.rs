//! The listening edge: one async socket that only classifies requests, and one thread per
//! accepted request ([`crate::session`]) with its own socket (its own TID).

use std::error::Error;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, TftpConfig};
use crate::options::Limits;
use crate::packet::{self, ErrorCode};
use crate::request::{ReadRequest, RequestError, parse_request};
use crate::session;
use crate::socket;
use crate::transfer::TransferOutcome;

/// Largest UDP payload; the listening socket never truncates a request.
const LISTEN_BUF: usize = 65_536;

/// One finished (or refused) request, sent to the consumer with `try_send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferEvent {
    pub peer: SocketAddr,
    /// The file name as the client sent it.
    pub file: String,
    pub outcome: TransferOutcome,
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("invalid tftp config")]
    Config(#[from] ConfigError),
    #[error("tftp root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding tftp socket to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("receiving on the tftp socket")]
    Receive(#[source] io::Error),
}

/// Running totals, readable while the server runs.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    refused: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) ignored: AtomicU64,
    pub(crate) wrong_tid: AtomicU64,
    completed: AtomicU64,
    aborted_by_client: AtomicU64,
    failed: AtomicU64,
    events_dropped: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Read requests accepted for serving.
    pub requests: u64,
    /// Requests answered with a TFTP error before any data: write requests, bad modes or names,
    /// missing files, non-request packets on the listening port, and requests that found every
    /// transfer slot taken (`max_transfers`).
    pub refused: u64,
    /// Datagrams that did not parse as TFTP; dropped.
    pub malformed: u64,
    /// Well-formed packets that mean nothing where they arrived; dropped.
    pub ignored: u64,
    /// Packets at a transfer's port from another address or port (answered with error 5).
    pub wrong_tid: u64,
    pub completed: u64,
    pub aborted_by_client: u64,
    /// Transfers abandoned by the server (timeouts, read or send errors, the server stopping).
    pub failed: u64,
    /// Events not delivered because the consumer's channel was full or closed.
    pub events_dropped: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            requests: get(&self.requests),
            refused: get(&self.refused),
            malformed: get(&self.malformed),
            ignored: get(&self.ignored),
            wrong_tid: get(&self.wrong_tid),
            completed: get(&self.completed),
            aborted_by_client: get(&self.aborted_by_client),
            failed: get(&self.failed),
            events_dropped: get(&self.events_dropped),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Binds `config.bind` and serves until an unrecoverable socket error. Dropping the future stops
/// the server; transfers in flight send error 0 "server shutting down" and end within 0.1 s.
pub async fn serve(
    config: TftpConfig,
    events: mpsc::Sender<TransferEvent>,
) -> Result<(), TftpError> {
    Server::bind(config).await?.run(events).await
}

/// A bound server; [`serve`] in two steps, for callers that need the bound address or the
/// counters.
pub struct Server {
    socket: UdpSocket,
    bound: SocketAddr,
    root: PathBuf,
    limits: Limits,
    retries: u32,
    max_transfers: usize,
    counters: Arc<Counters>,
}

impl Server {
    /// Validates the config, resolves the root and binds the listening socket.
    pub async fn bind(config: TftpConfig) -> Result<Self, TftpError> {
        config.validate()?;
        let root_error = |source| TftpError::Root {
            path: config.root.clone(),
            source,
        };
        let root = config.root.canonicalize().map_err(root_error)?;
        if !root.is_dir() {
            return Err(root_error(io::ErrorKind::NotADirectory.into()));
        }
        let bind_error = |source| TftpError::Bind {
            addr: config.bind,
            source,
        };
        let socket = UdpSocket::bind(config.bind).await.map_err(bind_error)?;
        socket::enable_pktinfo(&socket).map_err(bind_error)?;
        socket::enlarge_receive_buffer(&socket);
        let bound = socket.local_addr().map_err(bind_error)?;
        info!(%bound, root = %root.display(), "tftp server listening");
        Ok(Self {
            socket,
            bound,
            root,
            limits: config.limits(),
            retries: config.retries,
            max_transfers: config.max_transfers,
            counters: Arc::default(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.bound
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Serves requests. The loop only parses and hands over: opening files and all transfer
    /// traffic happen on per-request threads, which stop when this future ends or is dropped.
    pub async fn run(self, events: mpsc::Sender<TransferEvent>) -> Result<(), TftpError> {
        let shared = Arc::new(Shared {
            root: self.root,
            limits: self.limits,
            retries: self.retries,
            counters: self.counters,
            events,
            stopping: AtomicBool::new(false),
            max_transfers: self.max_transfers,
            active: AtomicUsize::new(0),
        });
        let _stop = StopOnDrop(Arc::clone(&shared));
        let mut buf = vec![0; LISTEN_BUF];
        let mut control = socket::control_buffer();
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                received = socket::recv_with_local(&self.socket, &mut buf, &mut control) => {
                    match received {
                        Ok(r) => {
                            let local = reply_addr(r.local, self.bound.ip(), r.peer);
                            dispatch(&shared, &mut tasks, &buf[..r.len], r.peer, local);
                        }
                        Err(e) if is_transient(&e) => debug!(error = %e, "tftp receive"),
                        Err(e) => return Err(TftpError::Receive(e)),
                    }
                }
                Some(joined) = tasks.join_next() => {
                    if let Err(e) = joined {
                        warn!(error = %e, "tftp transfer task ended abnormally");
                    }
                }
            }
        }
    }
}

/// What every transfer needs.
pub(crate) struct Shared {
    pub(crate) root: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) retries: u32,
    pub(crate) counters: Arc<Counters>,
    events: mpsc::Sender<TransferEvent>,
    /// Set when the listening loop ends: transfer threads stop at their next look.
    stopping: AtomicBool,
    max_transfers: usize,
    /// Transfer threads running.
    active: AtomicUsize,
}

/// One of the `max_transfers` slots, given back however its transfer thread ends.
struct Slot(Arc<Shared>);

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let taken = shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_transfers).then_some(n + 1)
            });
        taken.is_ok().then(|| Slot(Arc::clone(shared)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// Tells the transfer threads to stop when the listening loop's future ends or is dropped.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    datagram: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
) {
    match parse_request(datagram) {
        Ok(request) => {
            bump(&shared.counters.requests);
            debug!(%peer, file = %request.display_name(), mode = ?request.mode,
                options = ?request.options, "tftp read request");
            start_transfer(shared, tasks, request, peer, local);
        }
        Err(err) => match err.reply() {
            Some((code, message)) => {
                tasks.spawn(refuse(Arc::clone(shared), err, code, message, peer, local));
            }
            None => {
                let counter = match err {
                    RequestError::Malformed(_) => &shared.counters.malformed,
                    _ => &shared.counters.ignored,
                };
                bump(counter);
                debug!(%peer, error = %err, "tftp datagram dropped");
            }
        },
    }
}

/// Serves an accepted request on a thread of its own, which reports the outcome.
fn start_transfer(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    request: ReadRequest,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let file = request.display_name();
    let Some(slot) = Slot::take(shared) else {
        // A rack powering on can ask for more than the machine should serve at once; the
        // client asks again, as it does after a lost packet.
        let reason = format!(
            "server busy: all {} transfer slots in use (tftp.max_transfers)",
            shared.max_transfers
        );
        report(shared, peer, file, TransferOutcome::Refused { reason });
        tasks.spawn(answer_error(
            local,
            peer,
            ErrorCode::NotDefined,
            "server busy",
        ));
        return;
    };
    let thread_file = file.clone();
    let started = thread::Builder::new()
        .name("tftp-transfer".to_owned())
        .spawn(move || {
            let shared = Arc::clone(&slot.0);
            let outcome = session::serve(&shared, &request, peer, local);
            // Free before reporting: whoever sees the outcome may start the next transfer.
            drop(slot);
            report(&shared, peer, thread_file, outcome);
        });
    if let Err(e) = started {
        report(
            shared,
            peer,
            file,
            TransferOutcome::Failed {
                reason: format!("starting a transfer thread: {e}"),
            },
        );
        tasks.spawn(answer_error(
            local,
            peer,
            ErrorCode::NotDefined,
            "server busy",
        ));
    }
}

/// The address to answer from (port 0): where the request was sent, else the bound address;
/// never of the other family than the peer's. A link-local IPv6 address takes the peer's scope
/// (interface), without which it cannot be bound.
fn reply_addr(local: Option<IpAddr>, bound: IpAddr, peer: SocketAddr) -> SocketAddr {
    let ip = local.unwrap_or(bound).to_canonical();
    match (ip, peer) {
        (IpAddr::V4(ip), SocketAddr::V4(_)) if !ip.is_unspecified() => SocketAddr::from((ip, 0)),
        (IpAddr::V6(ip), SocketAddr::V6(peer)) if !ip.is_unspecified() => {
            let scope = if ip.is_unicast_link_local() {
                peer.scope_id()
            } else {
                0
            };
            SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, scope))
        }
        (_, SocketAddr::V4(_)) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        (_, SocketAddr::V6(_)) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// Answers a refused request with its TFTP error, from a fresh port like any response.
async fn refuse(
    shared: Arc<Shared>,
    err: RequestError,
    code: ErrorCode,
    message: &'static str,
    peer: SocketAddr,
    local: SocketAddr,
) {
    // Counted and reported before answering, so whoever sees the answer also sees the count.
    match err.file() {
        Some(file) => report(
            &shared,
            peer,
            file.to_owned(),
            TransferOutcome::Refused {
                reason: err.to_string(),
            },
        ),
        None => {
            bump(&shared.counters.refused);
            debug!(%peer, error = %err, "tftp packet refused");
        }
    }
    answer_error(local, peer, code, message).await;
}

/// Sends one TFTP error to `peer` from a fresh port on `local`'s address.
async fn answer_error(local: SocketAddr, peer: SocketAddr, code: ErrorCode, message: &str) {
    let socket = match UdpSocket::bind(local).await {
        Ok(socket) => socket,
        Err(e) => {
            warn!(%peer, %local, error = %e, "tftp: cannot bind a socket to answer from");
            return;
        }
    };
    let mut buf = Vec::new();
    packet::encode_error(&mut buf, code, message);
    if let Err(e) = socket.send_to(&buf, peer).await {
        debug!(to = %peer, error = %e, "tftp: sending an error packet failed");
    }
}

pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
    )
}

fn report(shared: &Shared, peer: SocketAddr, file: String, outcome: TransferOutcome) {
    let counters = &shared.counters;
    match &outcome {
        TransferOutcome::Completed {
            bytes,
            duration,
            blksize,
            windowsize,
        } => {
            bump(&counters.completed);
            info!(%peer, %file, bytes, ms = duration.as_millis() as u64, blksize, windowsize,
                "tftp transfer completed");
        }
        TransferOutcome::AbortedByClient {
            message,
            after_bytes,
        } => {
            bump(&counters.aborted_by_client);
            info!(%peer, %file, %message, after_bytes, "tftp transfer aborted by client");
        }
        TransferOutcome::Failed { reason } => {
            bump(&counters.failed);
            warn!(%peer, %file, %reason, "tftp transfer failed");
        }
        TransferOutcome::Refused { reason } => {
            bump(&counters.refused);
            warn!(%peer, %file, %reason, "tftp request refused");
        }
    }
    let event = TransferEvent {
        peer,
        file,
        outcome,
    };
    if let Err(e) = shared.events.try_send(event) {
        bump(&counters.events_dropped);
        debug!(error = %e, "tftp event dropped");
    }
}

/// An error and its sources, for a log line or an event reason.
pub(crate) fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::PathError;

    #[test]
    fn reply_addr_prefers_the_request_destination() {
        let peer: SocketAddr = "192.0.2.10:3000".parse().expect("addr");
        let here = IpAddr::from(Ipv4Addr::new(192, 0, 2, 1));
        let unspec4 = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let unspec6 = IpAddr::from(Ipv6Addr::UNSPECIFIED);
        let at = |ip: IpAddr| SocketAddr::new(ip, 0);
        assert_eq!(reply_addr(Some(here), unspec4, peer), at(here));
        assert_eq!(reply_addr(None, here, peer), at(here));
        assert_eq!(reply_addr(None, unspec4, peer), at(unspec4));
        // IPv6 socket, IPv4 client without packet info: answer from an IPv4 socket.
        assert_eq!(reply_addr(None, unspec6, peer), at(unspec4));
        let mapped = IpAddr::from(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(reply_addr(Some(mapped), unspec6, peer), at(here));
    }

    #[test]
    fn link_local_reply_takes_the_peer_scope() {
        let peer = SocketAddr::V6(SocketAddrV6::new(
            "fe80::2".parse().expect("ip"),
            3000,
            0,
            7,
        ));
        let local: IpAddr = "fe80::1".parse().expect("ip");
        let SocketAddr::V6(addr) =
            reply_addr(Some(local), IpAddr::from(Ipv6Addr::UNSPECIFIED), peer)
        else {
            panic!("not v6");
        };
        assert_eq!(
            (*addr.ip(), addr.scope_id()),
            ("fe80::1".parse().expect("ip"), 7)
        );
        let global: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(
            reply_addr(Some(global), global, peer),
            SocketAddr::new(global, 0)
        );
    }

    #[test]
    fn error_chain_includes_sources() {
        let err = PathError::Io {
            path: "x".into(),
            source: io::Error::other("disk on fire"),
        };
        assert_eq!(error_chain(&err), "opening x: disk on fire");
    }
}
