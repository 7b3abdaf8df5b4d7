//! One read request served on its own thread with a blocking UDP socket (its own TID), driving a
//! [`Sender`].
//!
//! A thread per transfer rather than a task: a lock-step transfer is one small datagram each way
//! per block, and the kernel's UDP path dominates its cost. Blocking `recvfrom` on a thread of
//! its own skips the async readiness machinery (about a quarter of the server's CPU per block),
//! and the scheduler sees each transfer as the short-running sleeper it is, so transfers keep
//! their pace when other work competes for the CPUs, as tftpd-hpa's process per transfer does.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::netascii::Netascii;
use crate::options::negotiate;
use crate::packet::{self, ErrorCode, Packet};
use crate::path::{self, PathError};
use crate::request::{Mode, ReadRequest};
use crate::server::{Shared, bump, error_chain, is_transient};
use crate::socket;
use crate::transfer::{BlockSource, Sender, TransferOutcome};

/// Clients send only ACK and ERROR to a transfer; a longer datagram is cut, which at worst
/// shortens an ERROR message.
const TRANSFER_RECV_BUF: usize = 1_500;
/// Longest single wait for a datagram: how soon a transfer notices that the server stopped.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Serves `request` to `peer` from a fresh socket on `local`'s address; blocking, returns when the
/// transfer is over.
pub(crate) fn serve(
    shared: &Shared,
    request: &ReadRequest,
    peer: SocketAddr,
    local: SocketAddr,
) -> TransferOutcome {
    let socket = match UdpSocket::bind(local) {
        Ok(socket) => socket,
        Err(e) => {
            warn!(%peer, %local, error = %e, "tftp: cannot bind a transfer socket");
            return TransferOutcome::Failed {
                reason: format!("binding a transfer socket on {}: {e}", local.ip()),
            };
        }
    };
    let source = match open_source(&shared.root, &request.filename, request.mode) {
        Ok(source) => source,
        Err(err) => {
            let (code, message) = err.reply();
            send_error(&socket, peer, code, message);
            return TransferOutcome::Refused {
                reason: error_chain(&err),
            };
        }
    };
    let agreed = negotiate(&request.options, &shared.limits, source.size());
    let sender = Sender::new(source, &agreed, shared.retries, Instant::now());
    drive(shared, &socket, peer, sender)
}

/// Runs the state machine against the transfer's socket until it finishes or the server stops.
fn drive(
    shared: &Shared,
    socket: &UdpSocket,
    peer: SocketAddr,
    mut sender: Sender<FileSource>,
) -> TransferOutcome {
    let mut buf = vec![0; TRANSFER_RECV_BUF];
    let mut timeout = ReceiveTimeout::default();
    loop {
        if shared.is_stopping() {
            send_error(socket, peer, ErrorCode::NotDefined, "server shutting down");
            return TransferOutcome::Failed {
                reason: "the server stopped".to_owned(),
            };
        }
        while let Some(datagram) = sender.poll_transmit(Instant::now()) {
            if let Err(e) = socket.send_to(datagram, peer) {
                return TransferOutcome::Failed {
                    reason: format!("sending to {peer}: {e}"),
                };
            }
        }
        if let Some(outcome) = sender.outcome().filter(|_| sender.is_finished()) {
            return outcome.clone();
        }
        let now = Instant::now();
        let Some(wait) = wait_time(sender.poll_timeout(), now) else {
            sender.handle_timeout(now);
            continue;
        };
        if let Err(e) = timeout.set(socket, wait) {
            return TransferOutcome::Failed {
                reason: format!("setting the receive timeout: {e}"),
            };
        }
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            // SO_RCVTIMEO expired: EAGAIN on Linux.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // A no-op before the sender's deadline (a wait cut short by STOP_CHECK).
                sender.handle_timeout(Instant::now());
                continue;
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                return TransferOutcome::Failed {
                    reason: format!("receiving from {peer}: {e}"),
                };
            }
        };
        let datagram = &buf[..len];
        if socket::canonical(from) != peer {
            wrong_tid(shared, socket, from, datagram);
            continue;
        }
        match packet::parse(datagram) {
            Ok(Packet::Ack { block }) => sender.handle_ack(Instant::now(), block),
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
}

/// How long to wait for a datagram before looking at the sender's deadline again: until the
/// deadline, at most [`STOP_CHECK`], rounded up to whole milliseconds so the socket option rarely
/// changes (after every block sent the wait is exactly `STOP_CHECK` again). `None`: the deadline
/// has passed.
fn wait_time(deadline: Option<Instant>, now: Instant) -> Option<Duration> {
    let left = match deadline {
        Some(deadline) if deadline <= now => return None,
        Some(deadline) => (deadline - now).min(STOP_CHECK),
        None => STOP_CHECK,
    };
    let millis = left.as_nanos().div_ceil(1_000_000);
    Some(Duration::from_millis(
        u64::try_from(millis).unwrap_or(u64::MAX),
    ))
}

/// The socket's receive timeout, set only when it changes (one system call saved per block).
#[derive(Default)]
struct ReceiveTimeout(Option<Duration>);

impl ReceiveTimeout {
    fn set(&mut self, socket: &UdpSocket, wait: Duration) -> io::Result<()> {
        if self.0 != Some(wait) {
            socket.set_read_timeout(Some(wait))?;
            self.0 = Some(wait);
        }
        Ok(())
    }
}

/// RFC 1350: a packet from an unknown TID gets error 5 and does not disturb the transfer.
fn wrong_tid(shared: &Shared, socket: &UdpSocket, from: SocketAddr, datagram: &[u8]) {
    bump(&shared.counters.wrong_tid);
    debug!(%from, "tftp: packet from an unknown transfer id");
    // Never answer an ERROR with an ERROR.
    if !matches!(packet::parse(datagram), Ok(Packet::Error { .. })) {
        send_error(
            socket,
            from,
            ErrorCode::UnknownTransferId,
            "unknown transfer ID",
        );
    }
}

fn send_error(socket: &UdpSocket, to: SocketAddr, code: ErrorCode, message: &str) {
    let mut buf = Vec::new();
    packet::encode_error(&mut buf, code, message);
    if let Err(e) = socket.send_to(&buf, to) {
        debug!(%to, error = %e, "tftp: sending an error packet failed");
    }
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

/// Resolves and opens the requested file.
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
    fn waits_until_the_deadline_at_most_stop_check() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(wait_time(Some(now + ms(1000)), now), Some(STOP_CHECK));
        assert_eq!(wait_time(None, now), Some(STOP_CHECK));
        assert_eq!(wait_time(Some(now + ms(30)), now), Some(ms(30)));
        // Rounded up: never wakes before the deadline because of rounding.
        assert_eq!(
            wait_time(Some(now + Duration::from_micros(29_001)), now),
            Some(ms(30))
        );
        assert_eq!(
            wait_time(Some(now + Duration::from_nanos(1)), now),
            Some(ms(1))
        );
        assert_eq!(wait_time(Some(now), now), None);
        assert_eq!(wait_time(Some(now), now + ms(5)), None);
    }

    #[test]
    fn the_receive_timeout_is_set_only_when_it_changes() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut timeout = ReceiveTimeout::default();
        timeout.set(&socket, STOP_CHECK).expect("set");
        assert_eq!(socket.read_timeout().expect("get"), Some(STOP_CHECK));
        // Changed behind its back: an unchanged wait does not touch the socket.
        socket
            .set_read_timeout(Some(Duration::from_secs(7)))
            .expect("set");
        timeout.set(&socket, STOP_CHECK).expect("set");
        assert_eq!(
            socket.read_timeout().expect("get"),
            Some(Duration::from_secs(7))
        );
        timeout
            .set(&socket, Duration::from_millis(20))
            .expect("set");
        assert_eq!(
            socket.read_timeout().expect("get"),
            Some(Duration::from_millis(20))
        );
    }
}
