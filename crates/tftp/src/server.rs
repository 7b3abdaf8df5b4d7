//! The tokio edge: one listening socket that only classifies requests, and one task with its own
//! socket (its own TID) per transfer, driving a [`Sender`].

use std::error::Error;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, TftpConfig};
use crate::netascii::Netascii;
use crate::options::{Limits, negotiate};
use crate::packet::{self, ErrorCode, Packet};
use crate::path::{self, PathError};
use crate::request::{Mode, ReadRequest, RequestError, parse_request};
use crate::socket;
use crate::transfer::{BlockSource, Sender, TransferOutcome};

/// Largest UDP payload; the listening socket never truncates a request.
const LISTEN_BUF: usize = 65_536;
/// Clients send only ACK and ERROR to a transfer; a longer datagram is cut, which at worst
/// shortens an ERROR message.
const TRANSFER_RECV_BUF: usize = 1_500;

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
    malformed: AtomicU64,
    ignored: AtomicU64,
    wrong_tid: AtomicU64,
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
    /// missing files, non-request packets on the listening port.
    pub refused: u64,
    /// Datagrams that did not parse as TFTP; dropped.
    pub malformed: u64,
    /// Well-formed packets that mean nothing where they arrived; dropped.
    pub ignored: u64,
    /// Packets at a transfer's port from another address or port (answered with error 5).
    pub wrong_tid: u64,
    pub completed: u64,
    pub aborted_by_client: u64,
    /// Transfers abandoned by the server (timeouts, read or send errors).
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

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Binds `config.bind` and serves until an unrecoverable socket error. Dropping the future stops
/// the server and every transfer in flight.
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
        let bound = socket.local_addr().map_err(bind_error)?;
        info!(%bound, root = %root.display(), "tftp server listening");
        Ok(Self {
            socket,
            bound,
            root,
            limits: config.limits(),
            retries: config.retries,
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

    /// Serves requests. The loop only parses and spawns: opening files and all transfer traffic
    /// happen in per-request tasks.
    pub async fn run(self, events: mpsc::Sender<TransferEvent>) -> Result<(), TftpError> {
        let shared = Arc::new(Shared {
            root: self.root,
            limits: self.limits,
            retries: self.retries,
            counters: self.counters,
            events,
        });
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

/// What every transfer task needs.
struct Shared {
    root: PathBuf,
    limits: Limits,
    retries: u32,
    counters: Arc<Counters>,
    events: mpsc::Sender<TransferEvent>,
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
            tasks.spawn(run_request(Arc::clone(shared), request, peer, local));
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
    if let Ok(socket) = bind_transfer_socket(local, peer).await {
        send_error(&socket, peer, code, message).await;
    }
}

async fn run_request(
    shared: Arc<Shared>,
    request: ReadRequest,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let file = request.display_name();
    let outcome = serve_request(&shared, request, peer, local).await;
    report(&shared, peer, file, outcome);
}

async fn serve_request(
    shared: &Shared,
    request: ReadRequest,
    peer: SocketAddr,
    local: SocketAddr,
) -> TransferOutcome {
    let socket = match bind_transfer_socket(local, peer).await {
        Ok(socket) => socket,
        Err(e) => {
            return TransferOutcome::Failed {
                reason: format!("binding a transfer socket on {}: {e}", local.ip()),
            };
        }
    };
    let root = shared.root.clone();
    let name = request.filename.clone();
    let mode = request.mode;
    // Canonicalizing and opening may touch a slow disk: keep it off the async workers.
    let source = match tokio::task::spawn_blocking(move || open_source(&root, &name, mode)).await {
        Ok(Ok(source)) => source,
        Ok(Err(err)) => {
            let (code, message) = err.reply();
            send_error(&socket, peer, code, message).await;
            return TransferOutcome::Refused {
                reason: error_chain(&err),
            };
        }
        Err(e) => {
            send_error(&socket, peer, ErrorCode::NotDefined, "internal error").await;
            return TransferOutcome::Failed {
                reason: format!("opening the file: {e}"),
            };
        }
    };
    let agreed = negotiate(&request.options, &shared.limits, source.size());
    let sender = Sender::new(source, &agreed, shared.retries, now());
    drive(shared, &socket, peer, sender).await
}

async fn bind_transfer_socket(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(local)
        .await
        .inspect_err(|e| warn!(%peer, %local, error = %e, "tftp: cannot bind a transfer socket"))
}

/// Runs the state machine against the transfer's socket until it finishes.
async fn drive(
    shared: &Shared,
    socket: &UdpSocket,
    peer: SocketAddr,
    mut sender: Sender<FileSource>,
) -> TransferOutcome {
    let mut buf = vec![0; TRANSFER_RECV_BUF];
    // The deadline moves with every block; re-registering a tokio timer each time costs more than
    // the rest of the block. Instead the timer stays armed and is moved only when it must fire
    // sooner; firing early is harmless (the sender checks its own deadline) and re-arms it.
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        while let Some(datagram) = sender.poll_transmit(now()) {
            if let Err(e) = socket.send_to(datagram, peer).await {
                return TransferOutcome::Failed {
                    reason: format!("sending to {peer}: {e}"),
                };
            }
        }
        if let Some(outcome) = sender.outcome().filter(|_| sender.is_finished()) {
            return outcome.clone();
        }
        match (sender.poll_timeout(), armed) {
            (Some(deadline), Some(at)) if at <= deadline => {}
            (Some(deadline), _) => {
                timer.as_mut().reset(deadline.into());
                armed = Some(deadline);
            }
            (None, _) => armed = None,
        }
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(received) => received,
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return TransferOutcome::Failed {
                        reason: format!("receiving from {peer}: {e}"),
                    },
                };
                let datagram = &buf[..len];
                if socket::canonical(from) != peer {
                    wrong_tid(shared, socket, from, datagram).await;
                    continue;
                }
                match packet::parse(datagram) {
                    Ok(Packet::Ack { block }) => sender.handle_ack(now(), block),
                    Ok(Packet::Error { code, message }) => {
                        sender.handle_error(code, &String::from_utf8_lossy(message));
                    }
                    Ok(other) => {
                        bump(&shared.counters.ignored);
                        debug!(%peer, packet = ?other, "tftp: unexpected packet in a transfer");
                    }
                    Err(e) => {
                        bump(&shared.counters.malformed);
                        debug!(%peer, error = %e, "tftp: malformed packet in a transfer");
                    }
                }
            }
            () = &mut timer, if armed.is_some() => {
                armed = None;
                sender.handle_timeout(now());
            }
        }
    }
}

/// RFC 1350: a packet from an unknown TID gets error 5 and does not disturb the transfer.
async fn wrong_tid(shared: &Shared, socket: &UdpSocket, from: SocketAddr, datagram: &[u8]) {
    bump(&shared.counters.wrong_tid);
    debug!(%from, "tftp: packet from an unknown transfer id");
    // Never answer an ERROR with an ERROR.
    if !matches!(packet::parse(datagram), Ok(Packet::Error { .. })) {
        send_error(
            socket,
            from,
            ErrorCode::UnknownTransferId,
            "unknown transfer ID",
        )
        .await;
    }
}

async fn send_error(socket: &UdpSocket, to: SocketAddr, code: ErrorCode, message: &str) {
    let mut buf = Vec::new();
    packet::encode_error(&mut buf, code, message);
    if let Err(e) = socket.send_to(&buf, to).await {
        debug!(%to, error = %e, "tftp: sending an error packet failed");
    }
}

/// The one clock of the edge; tokio's, so paused-time tests control it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn is_transient(e: &io::Error) -> bool {
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
fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// The bytes of an opened file as the transfer mode presents them.
enum FileSource {
    Octet { file: File, size: u64 },
    Netascii(Netascii<File>),
}

impl FileSource {
    /// Bytes the client will receive (what tsize reports).
    fn size(&self) -> u64 {
        match self {
            Self::Octet { size, .. } => *size,
            Self::Netascii(text) => text.translated_len(),
        }
    }
}

impl BlockSource for FileSource {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Octet { file, .. } => file.read_at(offset, buf),
            Self::Netascii(text) => text.read_at(offset, buf),
        }
    }
}

/// Resolves and opens the requested file; blocking.
fn open_source(root: &Path, requested: &[u8], mode: Mode) -> Result<FileSource, PathError> {
    let relative = path::sanitize(requested)?;
    let (file, size) = path::open_in_root(root, &relative)?;
    match mode {
        Mode::Octet => Ok(FileSource::Octet { file, size }),
        Mode::Netascii => Netascii::new(file)
            .map(FileSource::Netascii)
            .map_err(|source| PathError::Io {
                path: relative,
                source,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
