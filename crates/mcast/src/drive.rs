//! Blocking loops that run a state machine on real sockets: read datagrams in batches, hand
//! them in with the time, drain transmits and events, sleep until the next timeout. The clock
//! is read here and nowhere else.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::receiver::{self, Receiver};
use crate::sender::{self, Sender, Source};
use crate::udp::{McastSocket, RecvBatch};
use crate::{Destination, Transmit};

/// How often the loops log their progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a receiver lets datagrams queue up between batches while traffic flows: at
/// 500 Mbit/s about 40 datagrams, a fraction of the socket buffer.
const COALESCE: Duration = Duration::from_millis(1);
/// Silence on the group, once the session has been heard (the sender announces every 20 ms),
/// after which a receiver joins the group again.
const REJOIN_AFTER: Duration = Duration::from_millis(250);

/// How the sender loop batches and sleeps.
#[derive(Clone, Copy, Debug)]
pub struct SendLoop {
    /// Datagrams per `sendmmsg`.
    pub batch: usize,
    /// Shortest sleep between sends: tokens pile up meanwhile and go out as one batch, so the
    /// loop wakes a few thousand times a second rather than once per packet.
    pub granularity: Duration,
}

impl Default for SendLoop {
    fn default() -> Self {
        SendLoop {
            batch: 64,
            granularity: Duration::from_micros(500),
        }
    }
}

/// Runs `sender` on `socket` until it finishes. Setting `stop` closes the session
/// (incomplete receivers are sent to unicast). `on_event` sees every event as it happens,
/// `on_progress` the sender once a second (for status displays).
pub fn run_sender<S: Source>(
    sender: &mut Sender<S>,
    socket: &McastSocket,
    options: SendLoop,
    stop: &AtomicBool,
    mut on_event: impl FnMut(&Sender<S>, sender::Event),
    mut on_progress: impl FnMut(&Sender<S>),
) -> io::Result<()> {
    let group = socket.group_addr();
    let batch = options.batch.max(1);
    let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| Vec::with_capacity(2048)).collect();
    let mut feedback = RecvBatch::new(64);
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    loop {
        let now = Instant::now();
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            let s = sender.stats();
            let active = sender
                .receivers()
                .filter(|r| r.state == sender::PeerState::Active)
                .count();
            tracing::info!(
                rate = sender.rate(),
                packets = s.packets,
                repair = s.repair_symbols,
                nack = s.nack_symbols,
                passes = s.passes,
                loss = format!("{:.3}", sender.worst_loss()),
                active,
                "sending"
            );
            on_progress(sender);
        }
        loop {
            let n = socket.recv_batch(&mut feedback)?;
            for i in 0..n {
                if let Some((d, from)) = feedback.get(i) {
                    sender.handle(now, d, from);
                }
            }
            if n < feedback.capacity() {
                break;
            }
        }
        if stop.load(Ordering::Relaxed) {
            sender.close(now);
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        let mut n = 0;
        while n < batch {
            match sender.poll_transmit(now, &mut bufs[n]) {
                Some(Transmit { len, .. }) => {
                    bufs[n].truncate(len);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            let datagrams: Vec<&[u8]> = bufs[..n].iter().map(Vec::as_slice).collect();
            socket.send_batch(&datagrams, group)?;
        }
        while let Some(e) = sender.poll_event() {
            on_event(sender, e);
        }
        if sender.is_finished() {
            return Ok(());
        }
        if n == batch {
            continue;
        }
        let wait = sender.poll_timeout().map(|t| {
            t.saturating_duration_since(Instant::now())
                .max(options.granularity)
        });
        socket.wait_readable(wait)?;
    }
}

/// Runs `receiver` on the group socket until it is finished, sending statuses with
/// `status_socket`. Setting `stop` abandons the transfer (the receiver falls back).
/// `on_event` gets every event; an error from it (e.g. writing a block) ends the loop.
pub fn run_receiver(
    receiver: &mut Receiver,
    group: &McastSocket,
    status_socket: &McastSocket,
    stop: &AtomicBool,
    mut on_event: impl FnMut(receiver::Event) -> io::Result<()>,
) -> io::Result<()> {
    let mut batch = RecvBatch::new(64);
    let mut buf = Vec::with_capacity(2048);
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    let mut heard = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            let (have, total) = receiver.progress();
            let s = receiver.stats();
            tracing::info!(
                have,
                total,
                packets = s.packets,
                dropped = s.dropped.total(),
                socket_drops = batch.socket_drops(),
                "receiving"
            );
        }
        let n = group.recv_batch(&mut batch)?;
        if n > 0 {
            heard = now;
        } else if now >= heard + REJOIN_AFTER
            // Before the session starts silence is normal, and rejoining would only churn the
            // switch's membership table.
            && receiver.layout().is_some()
            && !receiver.is_complete()
        {
            heard = now;
            tracing::warn!(
                "nothing from the group for {} ms; joining it again",
                REJOIN_AFTER.as_millis()
            );
            group.rejoin()?;
        }
        for i in 0..n {
            if let Some((d, from)) = batch.get(i) {
                receiver.handle(now, d, from);
            }
        }
        receiver.note_socket_drops(batch.socket_drops());
        if stop.load(Ordering::Relaxed) {
            receiver.abandon(now);
        }
        if receiver.poll_timeout().is_some_and(|t| t <= now) {
            receiver.handle_timeout(now);
        }
        while let Some(Transmit { to, len }) = receiver.poll_transmit(now, &mut buf) {
            if let Destination::Unicast(addr) = to {
                send_status(status_socket, &buf[..len], addr);
            }
        }
        while let Some(e) = receiver.poll_event() {
            on_event(e)?;
        }
        if receiver.is_finished() {
            return Ok(());
        }
        if n == batch.capacity() {
            continue;
        }
        // Wake at least every 100 ms to notice `stop`.
        let wait = receiver
            .poll_timeout()
            .map_or(Duration::from_millis(100), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(100));
        if n > 0 {
            // Traffic is flowing: let a batch build up in the socket buffer rather than wake
            // for every datagram (tens of thousands a second per receiver).
            std::thread::sleep(wait.min(COALESCE));
        } else {
            group.wait_readable(Some(wait))?;
        }
    }
}

/// A lost status is repeated by the next one; a failure to send one is not worth stopping for.
fn send_status(socket: &McastSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(datagram, to) {
        tracing::debug!(error = %e, %to, "sending status");
    }
}
