//! The receiving side: collects symbols, rebuilds blocks, verifies them against the trusted
//! block list, and reports status and NACKs to the sender.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::blocks::{BlockList, Geometry, Layout};
use crate::fec::{Decoder, Inserted, SymbolSet};
use crate::packet::{
    self, Announce, Body, Data, HASHES_OUT_OF_BAND, Header, MAX_BITMAP_BITS, MAX_NACKS, Notice,
    NoticeKind, ParseError, Reason, StatusFields,
};
use crate::replay::ReplayWindow;
use crate::{Destination, Transmit};

/// Receiver settings; [`ReceiverConfig::new`] gives the documented defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// Names this receiver in its statuses (random per run, or the node id).
    pub id: u64,
    /// The session to accept; `None` takes the first announcement carrying the manifest hash.
    pub session: Option<u64>,
    /// Silence from the sender after which the receiver falls back to unicast.
    pub sender_timeout: Duration,
    /// Partly received blocks held at once; symbols of further blocks wait for a later pass.
    pub max_partial_blocks: usize,
    /// The rate this receiver can take (bits/s), 0 for no limit of its own.
    pub max_rate: u64,
    /// Final statuses sent on completion (or when giving up), until the sender acknowledges.
    pub done_repeats: u32,
    pub done_spacing: Duration,
}

impl ReceiverConfig {
    pub fn new(id: u64) -> ReceiverConfig {
        ReceiverConfig {
            id,
            session: None,
            sender_timeout: Duration::from_secs(5),
            max_partial_blocks: 256,
            max_rate: 0,
            done_repeats: 10,
            done_spacing: Duration::from_millis(50),
        }
    }
}

/// Why a receiver leaves without completing: the caller fetches the rest by unicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The sender told it to (too slow, or past its deadline).
    Told(Reason),
    /// The sender ended the session first.
    SessionEnded,
    /// Nothing valid from the sender for `sender_timeout`.
    SenderLost,
    /// The caller gave up ([`Receiver::abandon`]).
    Abandoned,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// An announcement of the session was accepted.
    Joined {
        session: u64,
    },
    /// Block `index` (at byte `offset` of the payload), verified against the block list.
    Block {
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// Every block is verified.
    Complete,
    Fallback(Fallback),
}

/// Packets dropped before they could touch any data, by reason (docs/multicast.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub truncated: u64,
    pub not_ours: u64,
    pub wrong_version: u64,
    pub bad_length: u64,
    pub bad_checksum: u64,
    pub unknown_type: u64,
    pub malformed: u64,
    pub wrong_session: u64,
    pub wrong_manifest: u64,
    pub replayed: u64,
    pub unannounced: u64,
    pub bad_symbol: u64,
    pub bad_announcement: u64,
    /// Valid packets of a type a receiver does not take (a status).
    pub unexpected: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.truncated
            + self.not_ours
            + self.wrong_version
            + self.bad_length
            + self.bad_checksum
            + self.unknown_type
            + self.malformed
            + self.wrong_session
            + self.wrong_manifest
            + self.replayed
            + self.unannounced
            + self.bad_symbol
            + self.bad_announcement
            + self.unexpected
    }

    fn count(&mut self, e: ParseError) {
        let counter = match e {
            ParseError::Truncated => &mut self.truncated,
            ParseError::NotOurs => &mut self.not_ours,
            ParseError::Version(_) => &mut self.wrong_version,
            ParseError::Length => &mut self.bad_length,
            ParseError::Checksum => &mut self.bad_checksum,
            ParseError::UnknownType(_) => &mut self.unknown_type,
            ParseError::Malformed => &mut self.malformed,
        };
        *counter += 1;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Packets of this session that passed every check.
    pub packets: u64,
    /// Symbols stored (new to their block).
    pub symbols: u64,
    /// Symbols already held, or of blocks already verified.
    pub duplicates: u64,
    /// Symbols not stored because `max_partial_blocks` blocks were already open.
    pub deferred: u64,
    /// Blocks verified from the network.
    pub blocks: u64,
    /// Blocks rebuilt whose hash did not match (their symbols were discarded).
    pub hash_mismatches: u64,
    /// Blocks the coder failed to rebuild (their symbols were discarded).
    pub decode_errors: u64,
    pub dropped: Drops,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No accepted announcement yet.
    Waiting,
    Receiving,
    /// Every block verified; `left` final statuses still to send.
    Complete {
        left: u32,
    },
    /// Leaving incomplete; `left` leaving statuses still to send.
    Fallback {
        left: u32,
    },
}

struct Partial {
    set: SymbolSet,
    last_symbol: Instant,
}

/// Counters for one status interval.
struct Interval {
    start: Instant,
    first_seq: u64,
    packets: u64,
    bytes: u64,
    socket_drops: u64,
}

/// The receiving state machine.
///
/// Call contract: feed every datagram from the group socket to [`Receiver::handle`] and the
/// socket's cumulative drop counter to [`Receiver::note_socket_drops`]; call
/// [`Receiver::handle_timeout`] when [`Receiver::poll_timeout`] has passed; after either,
/// drain [`Receiver::poll_event`] (blocks to write) and [`Receiver::poll_transmit`] (statuses
/// to send) until both return `None`. Stop when [`Receiver::is_finished`].
pub struct Receiver {
    config: ReceiverConfig,
    list: BlockList,
    state: State,
    session: Option<u64>,
    sender: Option<SocketAddr>,
    layout: Option<Layout>,
    status_interval: Duration,
    verified: Vec<u64>,
    verified_count: u32,
    partial: HashMap<u32, Partial>,
    decoder: Decoder,
    replay: ReplayWindow,
    interval: Interval,
    socket_drops: u64,
    last_valid: Instant,
    next_status: Option<Instant>,
    window_start: u32,
    seq: u64,
    events: VecDeque<Event>,
    stats: ReceiverStats,
}

impl Receiver {
    /// `list` must come from a trusted source: it decides what is accepted.
    pub fn new(config: ReceiverConfig, list: BlockList, now: Instant) -> Receiver {
        let blocks = list.geometry().block_count();
        let mut rx = Receiver {
            config,
            list,
            state: State::Waiting,
            session: None,
            sender: None,
            layout: None,
            status_interval: Duration::from_millis(100),
            verified: vec![0; (blocks as usize).div_ceil(64)],
            verified_count: 0,
            partial: HashMap::new(),
            decoder: Decoder::default(),
            replay: ReplayWindow::default(),
            interval: Interval {
                start: now,
                first_seq: 0,
                packets: 0,
                bytes: 0,
                socket_drops: 0,
            },
            socket_drops: 0,
            last_valid: now,
            next_status: None,
            window_start: 0,
            seq: 0,
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
        };
        rx.session = rx.config.session;
        rx.check_complete(now);
        rx
    }

    fn geometry(&self) -> &Geometry {
        self.list.geometry()
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// (blocks verified, blocks in the payload).
    pub fn progress(&self) -> (u32, u32) {
        (self.verified_count, self.geometry().block_count())
    }

    pub fn is_verified(&self, index: u32) -> bool {
        self.verified
            .get(index as usize / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// The coding announced by the sender, once an announcement was accepted.
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// The session id in use, once known.
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete { .. })
    }

    /// True once there is nothing left to receive or send.
    pub fn is_finished(&self) -> bool {
        match self.state {
            State::Complete { left } | State::Fallback { left } => left == 0,
            State::Waiting | State::Receiving => false,
        }
    }

    /// Offers a block the caller already has (e.g. from an interrupted run's output): it
    /// counts as received only if its hash matches. Returns whether it did.
    pub fn offer_existing(&mut self, now: Instant, index: u32, data: &[u8]) -> bool {
        if self.is_verified(index) || !self.list.verify(index, data) {
            return false;
        }
        self.partial.remove(&index);
        self.mark_verified(index);
        self.check_complete(now);
        true
    }

    /// The socket's cumulative count of datagrams it dropped for lack of buffer space.
    pub fn note_socket_drops(&mut self, total: u64) {
        self.socket_drops = self.socket_drops.max(total);
    }

    /// Gives up: a leaving status goes to the sender and the receiver falls back. A complete
    /// receiver just stops repeating its final status.
    pub fn abandon(&mut self, now: Instant) {
        match self.state {
            State::Complete { .. } => {
                self.state = State::Complete { left: 0 };
                self.next_status = None;
            }
            _ => self.fall_back(now, Fallback::Abandoned),
        }
    }

    pub fn handle(&mut self, now: Instant, datagram: &[u8], from: SocketAddr) {
        if self.is_finished() {
            return;
        }
        let (header, body) = match packet::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.stats.dropped.count(e);
                return;
            }
        };
        if !self.accept_header(&header, &body) {
            return;
        }
        self.stats.packets += 1;
        self.last_valid = now;
        if self.interval.first_seq == 0 {
            self.interval.first_seq = header.seq;
        }
        self.interval.packets += 1;
        self.interval.bytes += datagram.len() as u64;
        match body {
            Body::Announce(a) => self.on_announce(now, &header, &a, from),
            Body::Data(d) => self.on_data(now, &d),
            Body::Notice(n) => self.on_notice(now, &n),
            Body::Status(_) => self.stats.dropped.unexpected += 1,
        }
    }

    /// Session, manifest and replay checks, in the documented order.
    fn accept_header(&mut self, header: &Header, body: &Body<'_>) -> bool {
        let manifest_ok = header.manifest == *self.list.manifest_hash();
        match self.session {
            Some(s) if s != header.session => {
                self.stats.dropped.wrong_session += 1;
                return false;
            }
            Some(_) if !manifest_ok => {
                self.stats.dropped.wrong_manifest += 1;
                return false;
            }
            Some(_) => {}
            None if !manifest_ok => {
                self.stats.dropped.wrong_manifest += 1;
                return false;
            }
            // Only an announcement can name the session; it is adopted once it checks out.
            None if !matches!(body, Body::Announce(_)) => {
                self.stats.dropped.unannounced += 1;
                return false;
            }
            None => {}
        }
        if !self.replay.accept(header.seq) {
            self.stats.dropped.replayed += 1;
            return false;
        }
        true
    }

    fn on_announce(&mut self, now: Instant, header: &Header, a: &Announce, from: SocketAddr) {
        let g = self.geometry();
        let layout = (a.length == g.length()
            && a.block_size == g.block_size()
            && a.block_count == g.block_count()
            && a.flags & HASHES_OUT_OF_BAND != 0)
            .then(|| Layout::new(*g, a.symbol_size, a.repair_count).ok())
            .flatten();
        let Some(layout) = layout else {
            self.stats.dropped.bad_announcement += 1;
            return;
        };
        match self.layout {
            Some(known) if known != layout => {
                self.stats.dropped.bad_announcement += 1;
                return;
            }
            Some(_) => return,
            None => {}
        }
        self.layout = Some(layout);
        self.session = Some(header.session);
        self.sender = Some(from);
        self.status_interval =
            Duration::from_millis(u64::from(a.status_interval_ms.clamp(10, 10_000)));
        self.events.push_back(Event::Joined {
            session: header.session,
        });
        match self.state {
            State::Waiting => {
                self.state = State::Receiving;
                self.next_status = Some(now);
            }
            // Complete before joining (resumed): tell the sender at once.
            State::Complete { .. } => self.next_status = Some(now),
            State::Receiving | State::Fallback { .. } => {}
        }
    }

    fn on_data(&mut self, now: Instant, d: &Data<'_>) {
        // Leaving: only an acknowledgement is still awaited.
        if matches!(self.state, State::Fallback { .. }) {
            return;
        }
        let Some(layout) = self.layout else {
            self.stats.dropped.unannounced += 1;
            return;
        };
        let block = d.block;
        let k = layout.source_symbols(block);
        let index = usize::from(d.symbol);
        let valid = block < self.geometry().block_count()
            && index < layout.total_symbols(block)
            && d.repair == (index >= k)
            && d.payload.len() == usize::from(layout.symbol_size());
        if !valid {
            self.stats.dropped.bad_symbol += 1;
            return;
        }
        if self.is_verified(block) {
            self.stats.duplicates += 1;
            return;
        }
        if !self.partial.contains_key(&block)
            && self.partial.len() >= self.config.max_partial_blocks
        {
            self.stats.deferred += 1;
            return;
        }
        let partial = self.partial.entry(block).or_insert_with(|| Partial {
            set: SymbolSet::new(
                k,
                usize::from(layout.repair_count()),
                usize::from(layout.symbol_size()),
            ),
            last_symbol: now,
        });
        match partial.set.insert(index, d.payload) {
            Inserted::New => {
                self.stats.symbols += 1;
                partial.last_symbol = now;
            }
            Inserted::Duplicate => self.stats.duplicates += 1,
            Inserted::Invalid => self.stats.dropped.bad_symbol += 1,
        }
        if partial.set.is_complete() {
            self.rebuild(now, block);
        }
    }

    fn rebuild(&mut self, now: Instant, block: u32) {
        let Some(partial) = self.partial.remove(&block) else {
            return;
        };
        let len = self.geometry().block_len(block);
        match partial.set.rebuild(&mut self.decoder, len) {
            Ok(data) if self.list.verify(block, &data) => {
                self.stats.blocks += 1;
                self.mark_verified(block);
                self.events.push_back(Event::Block {
                    index: block,
                    offset: self.geometry().block_offset(block),
                    data,
                });
                self.check_complete(now);
            }
            Ok(_) => {
                self.stats.hash_mismatches += 1;
                tracing::warn!(
                    block,
                    "rebuilt block does not match its hash; collecting again"
                );
            }
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::warn!(block, error = %e, "block could not be rebuilt; collecting again");
            }
        }
    }

    fn mark_verified(&mut self, index: u32) {
        if let Some(w) = self.verified.get_mut(index as usize / 64) {
            *w |= 1 << (index % 64);
            self.verified_count += 1;
        }
    }

    fn check_complete(&mut self, now: Instant) {
        if self.verified_count < self.geometry().block_count()
            || matches!(self.state, State::Complete { .. } | State::Fallback { .. })
        {
            return;
        }
        self.partial.clear();
        self.state = State::Complete {
            left: self.config.done_repeats,
        };
        self.next_status = self.sender.map(|_| now);
        self.events.push_back(Event::Complete);
    }

    fn on_notice(&mut self, now: Instant, n: &Notice<'_>) {
        match n.kind {
            NoticeKind::GoUnicast if n.ids().any(|id| id == self.config.id) => {
                self.fall_back(now, Fallback::Told(n.reason));
            }
            NoticeKind::GoUnicast => {}
            NoticeKind::Acknowledged if n.ids().any(|id| id == self.config.id) => {
                if let State::Complete { left } | State::Fallback { left } = &mut self.state {
                    *left = 0;
                    self.next_status = None;
                }
            }
            NoticeKind::Acknowledged => {}
            NoticeKind::Done => match self.state {
                State::Waiting | State::Receiving => self.fall_back(now, Fallback::SessionEnded),
                State::Complete { .. } | State::Fallback { .. } => {}
            },
        }
    }

    fn fall_back(&mut self, now: Instant, why: Fallback) {
        if matches!(self.state, State::Complete { .. } | State::Fallback { .. }) {
            return;
        }
        // The sender needs no goodbye when it is the one that ended things or went silent.
        let tell = matches!(why, Fallback::Abandoned) && self.sender.is_some();
        self.state = State::Fallback {
            left: if tell { self.config.done_repeats } else { 0 },
        };
        self.next_status = tell.then_some(now);
        self.partial.clear();
        self.events.push_back(Event::Fallback(why));
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = match self.state {
            State::Receiving => Some(self.last_valid + self.config.sender_timeout),
            _ => None,
        };
        match (self.next_status, silence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Receiving && now >= self.last_valid + self.config.sender_timeout {
            self.fall_back(now, Fallback::SenderLost);
        }
    }

    /// Writes the next status into `buf` when one is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let due = self.next_status.is_some_and(|t| t <= now);
        let (sender, session) = (self.sender?, self.session?);
        if !due {
            return None;
        }
        let complete = self.is_complete();
        let (done, leaving) = match &mut self.state {
            State::Waiting => return None,
            State::Receiving => {
                self.next_status = Some(now + self.status_interval);
                (false, false)
            }
            State::Complete { left } | State::Fallback { left } => {
                if *left == 0 {
                    self.next_status = None;
                    return None;
                }
                *left -= 1;
                self.next_status = (*left > 0).then_some(now + self.config.done_spacing);
                (complete, !complete)
            }
        };
        self.write_status(now, buf, session, done, leaving);
        Some(Transmit {
            to: Destination::Unicast(sender),
            len: buf.len(),
        })
    }

    fn write_status(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        session: u64,
        done: bool,
        leaving: bool,
    ) {
        let highest = self.replay.highest();
        let iv = &self.interval;
        let expected = if iv.first_seq == 0 {
            0
        } else {
            highest + 1 - iv.first_seq
        };
        let ppm = |n: u64| -> u32 {
            (n.min(expected) * 1_000_000)
                .checked_div(expected)
                .map_or(0, |v| v as u32)
        };
        let loss_ppm = ppm(expected.saturating_sub(iv.packets));
        let overflow_ppm = ppm(self.socket_drops.saturating_sub(iv.socket_drops));
        let elapsed = now.saturating_duration_since(iv.start).as_secs_f64();
        let rx_kbit = if elapsed > 0.0 {
            (iv.bytes as f64 * 8.0 / elapsed / 1000.0).min(f64::from(u32::MAX)) as u32
        } else {
            0
        };
        let (window_start, bitmap) = self.next_window();
        let nacks = self.nacks();
        self.seq += 1;
        let fields = StatusFields {
            receiver: self.config.id,
            done,
            leaving,
            blocks_done: self.verified_count,
            loss_ppm,
            overflow_ppm,
            rx_kbit,
            max_kbit: u32::try_from(self.config.max_rate / 1000).unwrap_or(u32::MAX),
            highest_seq: highest,
            window_start,
        };
        let header = Header {
            session,
            manifest: *self.list.manifest_hash(),
            seq: self.seq,
        };
        packet::write_status(buf, &header, &fields, &bitmap, &nacks);
        self.interval = Interval {
            start: now,
            first_seq: if highest == 0 { 0 } else { highest + 1 },
            packets: 0,
            bytes: 0,
            socket_drops: self.socket_drops,
        };
    }

    /// The next window of the missing-blocks bitmap: windows are aligned to
    /// [`MAX_BITMAP_BITS`] and taken in turn, so the sender's view of every block is refreshed.
    fn next_window(&mut self) -> (u32, Vec<u8>) {
        let count = self.geometry().block_count();
        let start = if self.window_start >= count {
            0
        } else {
            self.window_start
        };
        let end = count.min(start.saturating_add(MAX_BITMAP_BITS as u32));
        let mut bitmap = vec![0u8; ((end - start) as usize).div_ceil(8)];
        for b in start..end {
            if !self.is_verified(b) {
                let i = (b - start) as usize;
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        self.window_start = end;
        (start, bitmap)
    }

    /// Every partly received block and the symbols it still needs, longest waiting first. A
    /// block still being sent is listed too: the sender tells from the sequence numbers which
    /// entries its visits have not yet reached this receiver, and ignores those.
    fn nacks(&self) -> Vec<(u32, u16)> {
        let mut waiting: Vec<(Instant, u32, u16)> = self
            .partial
            .iter()
            .map(|(&b, p)| {
                let need = u16::try_from(p.set.needed()).unwrap_or(u16::MAX);
                (p.last_symbol, b, need)
            })
            .collect();
        waiting.sort_unstable();
        waiting
            .into_iter()
            .take(MAX_NACKS)
            .map(|(_, b, need)| (b, need))
            .collect()
    }
}
