//! The sending side: carousels the blocks, sizes repair to the loss receivers report,
//! answers NACKs, paces itself, and sends receivers that cannot keep up to unicast.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blocks::{Hash, Layout};
use crate::fec::{EncodedBlock, Encoder};
use crate::packet::{
    self, Announce, Body, Data, HASHES_OUT_OF_BAND, Header, NoticeKind, Reason, Status,
};
use crate::{Destination, Transmit, WIRE_OVERHEAD};

/// Where the sender reads the payload from.
pub trait Source {
    /// Fills `buf` with the payload's bytes starting at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

fn read_slice(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
    let src = data
        .get(start..start.saturating_add(buf.len()))
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    buf.copy_from_slice(src);
    Ok(())
}

impl Source for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice(self, offset, buf)
    }
}

impl Source for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice(self, offset, buf)
    }
}

impl Source for Arc<[u8]> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice(self, offset, buf)
    }
}

impl Source for File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

/// Sender settings; [`SenderConfig::new`] gives the documented defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SenderConfig {
    /// Random, non-zero, never reused.
    pub session: u64,
    /// Highest rate, bits/s on the wire (UDP payload + [`WIRE_OVERHEAD`] per packet).
    pub rate_ceiling: u64,
    /// The rate never drops under this for a slow receiver; it goes unicast instead.
    pub rate_floor: u64,
    /// Depth of the pacing bucket, as time at the current rate.
    pub burst: Duration,
    pub announce_interval: Duration,
    /// How often receivers report (announced to them).
    pub status_interval: Duration,
    /// Loss assumed before any receiver has reported.
    pub initial_loss: f64,
    /// Receivers that must be done before the session may end on its own.
    pub expected_receivers: usize,
    /// How long the session stays up with no incomplete receiver before it ends.
    pub linger: Duration,
    /// Hard bound: then every incomplete receiver goes unicast and the session ends.
    pub max_duration: Option<Duration>,
    /// Silence after which a receiver is taken to have left.
    pub receiver_timeout: Duration,
    /// A receiver not done this long after it joined goes unicast.
    pub deadline: Duration,
    /// A receiver overloaded this long while the rate is at the floor goes unicast.
    pub slow_grace: Duration,
    /// Socket overflow (ppm of packets) from which a receiver counts as overloaded.
    pub overload_ppm: u32,
    pub notice_repeats: u32,
    pub notice_spacing: Duration,
    /// Encoded blocks kept for NACK repair.
    pub cache_blocks: usize,
}

impl SenderConfig {
    pub fn new(session: u64, rate_ceiling: u64) -> SenderConfig {
        SenderConfig {
            session,
            rate_ceiling,
            rate_floor: rate_ceiling / 4,
            burst: Duration::from_millis(20),
            announce_interval: Duration::from_millis(20),
            status_interval: Duration::from_millis(100),
            initial_loss: 0.01,
            expected_receivers: 1,
            linger: Duration::from_secs(1),
            max_duration: None,
            receiver_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(600),
            slow_grace: Duration::from_secs(5),
            overload_ppm: 1000,
            notice_repeats: 3,
            notice_spacing: Duration::from_millis(50),
            cache_blocks: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Active,
    Done,
    /// Told to go unicast.
    Unicast,
    /// Said it leaves, or went silent.
    Left,
}

/// What the sender knows about one receiver, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReceiverInfo {
    pub id: u64,
    pub addr: SocketAddr,
    pub state: PeerState,
    pub blocks_done: u32,
    /// Smoothed loss fraction (0..1).
    pub loss: f64,
    /// Last reported socket overflow, ppm.
    pub overflow_ppm: u32,
    /// Last reported receive rate, bits/s.
    pub rx_rate: u64,
}

#[derive(Debug)]
pub enum Event {
    ReceiverJoined {
        id: u64,
        addr: SocketAddr,
    },
    ReceiverDone {
        id: u64,
    },
    ReceiverLeft {
        id: u64,
    },
    /// The product turns this into an HTTP fallback for that receiver.
    GoUnicast {
        id: u64,
        addr: SocketAddr,
        reason: Reason,
    },
    /// The rate went down because `receiver` reported overload.
    Slowed {
        rate: u64,
        receiver: u64,
    },
    SourceFailed(io::Error),
    /// Nothing more will be sent.
    Finished,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub packets: u64,
    /// UDP payload bytes sent.
    pub bytes: u64,
    pub source_symbols: u64,
    pub repair_symbols: u64,
    /// Symbols sent in answer to NACKs (also counted as source or repair).
    pub nack_symbols: u64,
    pub announcements: u64,
    pub notices: u64,
    pub statuses: u64,
    /// Datagrams that were not a valid status of this session.
    pub dropped: u64,
    /// Statuses older than the receiver's last one.
    pub replayed: u64,
    /// NACKs ignored because the receiver had not yet seen what was already sent.
    pub stale_nacks: u64,
    /// Completed carousel passes.
    pub passes: u32,
}

struct Peer {
    info: ReceiverInfo,
    joined: Instant,
    last_heard: Instant,
    last_seq: u64,
    reported: bool,
    /// Bit set: block not verified by this receiver (as last reported).
    missing: Vec<u64>,
    /// Sorted blocks it holds some symbols of (its last NACK list).
    partial: Vec<u32>,
    /// Highest sequence number it had seen when it last reported.
    highest_seq: u64,
    /// Since when every report shows overload, and whether the rate hit the floor meanwhile.
    overloaded_since: Option<Instant>,
    hit_floor: bool,
    max_rate: u64,
}

impl Peer {
    fn is_missing(&self, b: u32) -> bool {
        self.missing
            .get(b as usize / 64)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    fn set_missing(&mut self, b: u32, missing: bool) {
        if let Some(w) = self.missing.get_mut(b as usize / 64) {
            if missing {
                *w |= 1 << (b % 64);
            } else {
                *w &= !(1 << (b % 64));
            }
        }
    }

    /// Whether the carousel should visit `b` for this receiver (partial blocks get repair).
    fn wants(&self, b: u32) -> bool {
        self.info.state == PeerState::Active
            && self.is_missing(b)
            && self.partial.binary_search(&b).is_err()
    }
}

#[derive(Clone, Copy)]
struct Visit {
    block: u32,
    left: usize,
    repair: bool,
}

struct PendingNotice {
    kind: NoticeKind,
    reason: Reason,
    ids: Vec<u64>,
    left: u32,
    next_at: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Sending the last notices.
    Ending,
    Finished,
}

/// Token bucket in bytes, refilled by the time passed in.
struct Pacer {
    rate: u64,
    tokens: f64,
    burst: Duration,
    last: Instant,
}

impl Pacer {
    fn depth(&self) -> f64 {
        let max_packet = (packet::DATA_OVERHEAD + 1500 + WIRE_OVERHEAD) as f64;
        (self.rate as f64 / 8.0 * self.burst.as_secs_f64()).max(8.0 * max_packet)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate as f64 / 8.0).min(self.depth());
        self.last = self.last.max(now);
    }

    /// A packet may go while the bucket is not in debt (a byte of slack absorbs rounding).
    fn ready(&self) -> bool {
        self.tokens > -1.0
    }

    fn ready_at(&self) -> Instant {
        if self.ready() || self.rate == 0 {
            return self.last;
        }
        let nanos = (-self.tokens * 8.0 / self.rate as f64 * 1e9).ceil();
        self.last + Duration::from_nanos(nanos as u64)
    }

    fn spend(&mut self, datagram_len: usize) {
        self.tokens -= (datagram_len + WIRE_OVERHEAD) as f64;
    }
}

/// The sending state machine.
///
/// Call contract: feed datagrams that arrive on the sender's socket (receivers' statuses) to
/// [`Sender::handle`]; call [`Sender::handle_timeout`] when [`Sender::poll_timeout`] has
/// passed; then drain [`Sender::poll_transmit`] (packets for the group) and
/// [`Sender::poll_event`] until both return `None`. `poll_transmit` returns `None` when the
/// pacing bucket is empty: wait for `poll_timeout` again. Stop when [`Sender::is_finished`].
pub struct Sender<S> {
    config: SenderConfig,
    layout: Layout,
    manifest: Hash,
    source: S,
    state: State,
    start: Instant,
    seq: u64,
    pacer: Pacer,
    encoder: Encoder,
    cache: VecDeque<(u32, EncodedBlock)>,
    cursor: Vec<u16>,
    last_sent_seq: Vec<u64>,
    visit: Option<Visit>,
    repairs: VecDeque<u32>,
    repair_need: HashMap<u32, usize>,
    carousel_next: u32,
    first_pass_done: bool,
    peers: HashMap<u64, Peer>,
    want: Vec<u32>,
    want_total: u64,
    next_announce: Instant,
    next_tick: Instant,
    notices: Vec<PendingNotice>,
    last_decrease: Option<Instant>,
    quiet_since: Option<Instant>,
    /// Set when nothing could be sent for lack of fresh reports; cleared by the next one.
    idle: bool,
    events: VecDeque<Event>,
    stats: SenderStats,
}

impl<S: Source> Sender<S> {
    pub fn new(
        config: SenderConfig,
        layout: Layout,
        manifest: Hash,
        source: S,
        now: Instant,
    ) -> Sender<S> {
        let blocks = layout.geometry().block_count() as usize;
        let pacer = Pacer {
            rate: config.rate_ceiling,
            tokens: 0.0,
            burst: config.burst,
            last: now,
        };
        Sender {
            layout,
            manifest,
            source,
            state: State::Running,
            start: now,
            seq: 0,
            pacer,
            encoder: Encoder::default(),
            cache: VecDeque::new(),
            cursor: vec![0; blocks],
            last_sent_seq: vec![0; blocks],
            visit: None,
            repairs: VecDeque::new(),
            repair_need: HashMap::new(),
            carousel_next: 0,
            first_pass_done: blocks == 0,
            peers: HashMap::new(),
            want: vec![0; blocks],
            want_total: 0,
            next_announce: now,
            next_tick: now + config.status_interval,
            notices: Vec::new(),
            last_decrease: None,
            quiet_since: None,
            idle: false,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            config,
        }
    }

    pub fn session(&self) -> u64 {
        self.config.session
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Current pacing rate, bits/s on the wire.
    pub fn rate(&self) -> u64 {
        self.pacer.rate
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    pub fn receivers(&self) -> impl Iterator<Item = &ReceiverInfo> {
        self.peers.values().map(|p| &p.info)
    }

    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Ends the session now: incomplete receivers go unicast, then "done" is sent.
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Running {
            self.unicast_all_incomplete(now, Reason::SessionEnded);
            self.end(now, Reason::SessionEnded);
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn handle(&mut self, now: Instant, datagram: &[u8], from: SocketAddr) {
        if self.state != State::Running {
            return;
        }
        let status = match packet::parse(datagram) {
            Ok((h, Body::Status(s)))
                if h.session == self.config.session && h.manifest == self.manifest =>
            {
                (h, s)
            }
            _ => {
                self.stats.dropped += 1;
                return;
            }
        };
        self.stats.statuses += 1;
        self.on_status(now, &status.0, &status.1, from);
    }

    fn on_status(&mut self, now: Instant, header: &Header, s: &Status<'_>, from: SocketAddr) {
        let f = s.fields;
        let id = f.receiver;
        let blocks = self.layout.geometry().block_count();
        if let Entry::Vacant(slot) = self.peers.entry(id) {
            let mut missing = vec![u64::MAX; (blocks as usize).div_ceil(64)];
            if let Some(last) = missing.last_mut()
                && !blocks.is_multiple_of(64)
            {
                *last = (1u64 << (blocks % 64)) - 1;
            }
            let peer = Peer {
                info: ReceiverInfo {
                    id,
                    addr: from,
                    state: PeerState::Active,
                    blocks_done: 0,
                    loss: 0.0,
                    overflow_ppm: 0,
                    rx_rate: 0,
                },
                joined: now,
                last_heard: now,
                last_seq: 0,
                reported: false,
                missing,
                partial: Vec::new(),
                highest_seq: 0,
                overloaded_since: None,
                hit_floor: false,
                max_rate: 0,
            };
            slot.insert(peer);
            self.add_all_wants(id);
            self.events
                .push_back(Event::ReceiverJoined { id, addr: from });
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if header.seq <= peer.last_seq {
            self.stats.replayed += 1;
            return;
        }
        peer.last_seq = header.seq;
        peer.last_heard = now;
        self.idle = false;
        // A final status is repeated until acknowledged; acknowledge every copy, since an
        // earlier acknowledgement may have been lost.
        if f.done || f.leaving {
            self.queue_ack(now, id);
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match peer.info.state {
            PeerState::Active => {}
            // Its statuses were lost for a while, but it finished.
            PeerState::Left if f.done => {
                peer.info.state = PeerState::Done;
                self.events.push_back(Event::ReceiverDone { id });
                return;
            }
            // A receiver that went silent and came back is served again.
            PeerState::Left if !f.leaving => {
                peer.info.state = PeerState::Active;
                peer.joined = now;
                self.add_all_wants(id);
            }
            PeerState::Left | PeerState::Done | PeerState::Unicast => return,
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let loss = f64::from(f.loss_ppm) / 1e6;
        peer.info.loss = if peer.reported {
            0.7 * peer.info.loss + 0.3 * loss
        } else {
            loss
        };
        peer.reported = true;
        peer.info.blocks_done = f.blocks_done;
        peer.info.overflow_ppm = f.overflow_ppm;
        peer.info.rx_rate = u64::from(f.rx_kbit) * 1000;
        peer.max_rate = u64::from(f.max_kbit) * 1000;
        peer.highest_seq = peer.highest_seq.max(f.highest_seq);

        if f.done || f.leaving {
            let state = if f.done {
                PeerState::Done
            } else {
                PeerState::Left
            };
            self.deactivate(id, state);
            self.events.push_back(if f.done {
                Event::ReceiverDone { id }
            } else {
                Event::ReceiverLeft { id }
            });
            return;
        }
        self.apply_window(id, s);
        for (block, need) in s.nacks() {
            if block >= blocks || need == 0 {
                continue;
            }
            let in_flight = self.visit.is_some_and(|v| v.block == block);
            if in_flight || self.last_sent_seq[block as usize] > f.highest_seq {
                self.stats.stale_nacks += 1;
                continue;
            }
            let need = usize::from(need);
            match self.repair_need.get_mut(&block) {
                Some(n) => *n = (*n).max(need),
                None => {
                    self.repair_need.insert(block, need);
                    self.repairs.push_back(block);
                }
            }
        }
        self.on_rate_report(now, id, f.overflow_ppm);
    }

    /// Overwrites the receiver's view with its bitmap window and NACK list, keeping the
    /// per-block want counts in step.
    fn apply_window(&mut self, id: u64, s: &Status<'_>) {
        let blocks = self.layout.geometry().block_count();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let start = s.fields.window_start.min(blocks);
        let end = start.saturating_add(s.window_len()).min(blocks);
        let mut partial: Vec<u32> = s.nacks().map(|(b, _)| b).filter(|&b| b < blocks).collect();
        partial.sort_unstable();
        partial.dedup();
        let mut outside: Vec<u32> = peer
            .partial
            .iter()
            .chain(&partial)
            .copied()
            .filter(|b| !(start..end).contains(b))
            .collect();
        outside.sort_unstable();
        outside.dedup();
        let touched = || (start..end).chain(outside.iter().copied());
        for b in touched() {
            if peer.wants(b) {
                self.want[b as usize] -= 1;
                self.want_total -= 1;
            }
        }
        for b in start..end {
            peer.set_missing(b, s.missing(b - start));
        }
        peer.partial = partial;
        for b in touched() {
            if peer.wants(b) {
                self.want[b as usize] += 1;
                self.want_total += 1;
            }
        }
    }

    fn add_all_wants(&mut self, id: u64) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        for b in 0..self.want.len() as u32 {
            if peer.wants(b) {
                self.want[b as usize] += 1;
                self.want_total += 1;
            }
        }
    }

    fn deactivate(&mut self, id: u64, state: PeerState) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        for b in 0..self.want.len() as u32 {
            if peer.wants(b) {
                self.want[b as usize] -= 1;
                self.want_total -= 1;
            }
        }
        peer.info.state = state;
        peer.overloaded_since = None;
    }

    /// The lowest limit an active receiver declared that is still above the floor.
    fn effective_ceiling(&self) -> u64 {
        self.peers
            .values()
            .filter(|p| p.info.state == PeerState::Active && p.max_rate >= self.config.rate_floor)
            .map(|p| p.max_rate)
            .filter(|&r| r > 0)
            .fold(self.config.rate_ceiling, u64::min)
    }

    fn on_rate_report(&mut self, now: Instant, id: u64, overflow_ppm: u32) {
        let floor = self.config.rate_floor;
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        if peer.max_rate > 0 && peer.max_rate < floor {
            self.go_unicast(now, id, Reason::TooSlow);
            return;
        }
        let ceiling = self.effective_ceiling();
        if self.pacer.rate > ceiling {
            self.pacer.rate = ceiling;
        }
        let overloaded = overflow_ppm > self.config.overload_ppm;
        let holdoff = self.config.status_interval * 2;
        if overloaded
            && self.pacer.rate > floor
            && self.last_decrease.is_none_or(|t| now >= t + holdoff)
        {
            self.pacer.rate = (self.pacer.rate / 4 * 3).max(floor);
            self.last_decrease = Some(now);
            self.events.push_back(Event::Slowed {
                rate: self.pacer.rate,
                receiver: id,
            });
        }
        let at_floor = self.pacer.rate <= floor;
        if let Some(peer) = self.peers.get_mut(&id) {
            if overloaded {
                peer.overloaded_since.get_or_insert(now);
                peer.hit_floor |= at_floor;
            } else {
                peer.overloaded_since = None;
                peer.hit_floor = false;
            }
        }
    }

    fn go_unicast(&mut self, now: Instant, id: u64, reason: Reason) {
        let Some(addr) = self.peers.get(&id).map(|p| p.info.addr) else {
            return;
        };
        self.deactivate(id, PeerState::Unicast);
        self.queue_notice(now, NoticeKind::GoUnicast, reason, vec![id]);
        self.events.push_back(Event::GoUnicast { id, addr, reason });
    }

    fn unicast_all_incomplete(&mut self, now: Instant, reason: Reason) {
        let active: Vec<u64> = self
            .peers
            .values()
            .filter(|p| p.info.state == PeerState::Active)
            .map(|p| p.info.id)
            .collect();
        for id in active {
            self.go_unicast(now, id, reason);
        }
    }

    fn queue_notice(&mut self, now: Instant, kind: NoticeKind, reason: Reason, ids: Vec<u64>) {
        self.notices.push(PendingNotice {
            kind,
            reason,
            ids,
            left: self.config.notice_repeats.max(1),
            next_at: now,
        });
    }

    /// Adds `id` to the acknowledgement waiting to go out, or starts one.
    fn queue_ack(&mut self, now: Instant, id: u64) {
        let pending = self
            .notices
            .iter_mut()
            .find(|n| n.kind == NoticeKind::Acknowledged && n.ids.len() < packet::MAX_NOTICE_IDS);
        match pending {
            Some(n) if n.ids.contains(&id) => {}
            Some(n) => n.ids.push(id),
            None => self.notices.push(PendingNotice {
                kind: NoticeKind::Acknowledged,
                reason: Reason::None,
                ids: vec![id],
                left: 1,
                next_at: now,
            }),
        }
    }

    fn end(&mut self, now: Instant, reason: Reason) {
        self.queue_notice(now, NoticeKind::Done, reason, Vec::new());
        self.state = State::Ending;
        self.visit = None;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_tick;
        match self.state {
            State::Finished => return None,
            State::Ending => {}
            State::Running => {
                t = t.min(self.next_announce);
                if self.has_work() {
                    t = t.min(self.pacer.ready_at());
                }
            }
        }
        Some(self.notices.iter().map(|n| n.next_at).fold(t, Instant::min))
    }

    fn has_work(&self) -> bool {
        let blocks = self.layout.geometry().block_count();
        self.visit.is_some()
            || !self.repairs.is_empty()
            || blocks > 0
                && (!self.first_pass_done
                    || self.peers.is_empty()
                    || self.want_total > 0 && !self.idle)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.next_tick = now + self.config.status_interval;
            if self.state == State::Running {
                self.tick(now);
            }
        }
        if self.state == State::Ending && self.notices.is_empty() {
            self.state = State::Finished;
            self.events.push_back(Event::Finished);
        }
    }

    fn tick(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        let mut late = Vec::new();
        let mut slow = Vec::new();
        for p in self.peers.values() {
            if p.info.state != PeerState::Active {
                continue;
            }
            if now >= p.last_heard + self.config.receiver_timeout {
                timed_out.push(p.info.id);
            } else if now >= p.joined + self.config.deadline {
                late.push(p.info.id);
            } else if p.hit_floor
                && p.overloaded_since
                    .is_some_and(|t| now >= t + self.config.slow_grace)
            {
                slow.push(p.info.id);
            }
        }
        for id in timed_out {
            self.deactivate(id, PeerState::Left);
            self.events.push_back(Event::ReceiverLeft { id });
        }
        for id in late {
            self.go_unicast(now, id, Reason::Deadline);
        }
        for id in slow {
            self.go_unicast(now, id, Reason::TooSlow);
        }

        // Additive increase, only while no active receiver's last report shows overload.
        let holdoff = self.config.status_interval * 2;
        let ceiling = self.effective_ceiling();
        let overloaded = self
            .peers
            .values()
            .any(|p| p.info.state == PeerState::Active && p.overloaded_since.is_some());
        if !overloaded && self.last_decrease.is_none_or(|t| now >= t + holdoff) {
            self.pacer.rate = (self.pacer.rate + self.config.rate_ceiling / 20).min(ceiling);
        }
        self.idle = false;

        if self
            .config
            .max_duration
            .is_some_and(|d| now >= self.start + d)
        {
            self.unicast_all_incomplete(now, Reason::Deadline);
            self.end(now, Reason::SessionEnded);
            return;
        }
        let active = self
            .peers
            .values()
            .filter(|p| p.info.state == PeerState::Active)
            .count();
        // Receivers sent to unicast are finished with this session too.
        let finished = self
            .peers
            .values()
            .filter(|p| matches!(p.info.state, PeerState::Done | PeerState::Unicast))
            .count();
        if self.first_pass_done && active == 0 && finished >= self.config.expected_receivers {
            let since = *self.quiet_since.get_or_insert(now);
            if now >= since + self.config.linger {
                self.end(now, Reason::SessionEnded);
            }
        } else {
            self.quiet_since = None;
        }
    }

    /// The loss the repair allowance is sized for: the highest an active receiver reports
    /// (smoothed), or the configured guess before any has.
    pub fn worst_loss(&self) -> f64 {
        self.peers
            .values()
            .filter(|p| p.info.state == PeerState::Active && p.reported)
            .map(|p| p.info.loss)
            .reduce(f64::max)
            .unwrap_or(self.config.initial_loss)
    }

    fn next_visit(&mut self) -> Option<Visit> {
        let p = self.worst_loss();
        while let Some(block) = self.repairs.pop_front() {
            let need = self.repair_need.remove(&block).unwrap_or(0);
            if !self.anyone_missing(block) {
                continue;
            }
            let total = self.layout.total_symbols(block);
            return Some(Visit {
                block,
                left: symbols_for(need, p).clamp(1, total),
                repair: true,
            });
        }
        let blocks = self.layout.geometry().block_count();
        if blocks == 0 {
            return None;
        }
        let block = if !self.first_pass_done || self.peers.is_empty() {
            self.carousel_next
        } else {
            let found = (0..blocks)
                .map(|i| (self.carousel_next + i) % blocks)
                .find(|&b| self.want[b as usize] > 0 && self.wanted_after_last_visit(b));
            let Some(b) = found else {
                // Wanted blocks, if any, were sent after their receivers last reported:
                // wait for a status rather than send them again blindly.
                self.idle = true;
                return None;
            };
            b
        };
        self.advance_carousel(block);
        let k = self.layout.source_symbols(block);
        let n = symbols_for(k, p).max(k + 1);
        Some(Visit {
            block,
            left: n.min(self.layout.total_symbols(block)),
            repair: false,
        })
    }

    /// Whether a receiver still lacks `block` after having seen its last visit.
    fn wanted_after_last_visit(&self, block: u32) -> bool {
        let sent = self.last_sent_seq[block as usize];
        self.peers
            .values()
            .any(|p| p.highest_seq >= sent && p.wants(block))
    }

    fn anyone_missing(&self, block: u32) -> bool {
        self.peers
            .values()
            .any(|p| p.info.state == PeerState::Active && p.is_missing(block))
    }

    fn advance_carousel(&mut self, visited: u32) {
        let blocks = self.layout.geometry().block_count();
        if visited + 1 >= blocks {
            self.carousel_next = 0;
            self.first_pass_done = true;
            self.stats.passes += 1;
        } else {
            self.carousel_next = visited + 1;
        }
    }

    /// Index of block `b` in the encoded-block cache, encoding it if needed.
    fn encoded(&mut self, b: u32) -> io::Result<usize> {
        if let Some(i) = self.cache.iter().position(|(c, _)| *c == b) {
            return Ok(i);
        }
        let g = self.layout.geometry();
        let mut data = vec![0u8; g.block_len(b)];
        self.source.read_at(g.block_offset(b), &mut data)?;
        let coded = self
            .encoder
            .encode(
                &data,
                usize::from(self.layout.symbol_size()),
                usize::from(self.layout.repair_count()),
            )
            .map_err(io::Error::other)?;
        if self.cache.len() >= self.config.cache_blocks.max(1) {
            self.cache.pop_front();
        }
        self.cache.push_back((b, coded));
        Ok(self.cache.len() - 1)
    }

    fn header(&mut self) -> Header {
        self.seq += 1;
        Header {
            session: self.config.session,
            manifest: self.manifest,
            seq: self.seq,
        }
    }

    fn sent(&mut self, len: usize) -> Transmit {
        self.pacer.spend(len);
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        Transmit {
            to: Destination::Group,
            len,
        }
    }

    /// Writes the next packet for the group into `buf`, if one may go now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.state == State::Finished {
            return None;
        }
        self.pacer.refill(now);
        if let Some(t) = self.poll_notice(now, buf) {
            return Some(t);
        }
        if self.state != State::Running {
            return None;
        }
        if now >= self.next_announce {
            self.next_announce = now + self.config.announce_interval;
            self.write_announce(buf);
            self.stats.announcements += 1;
            return Some(self.sent(buf.len()));
        }
        if !self.pacer.ready() {
            return None;
        }
        let mut visit = match self.visit {
            Some(v) => v,
            None => self.next_visit()?,
        };
        let b = visit.block;
        let slot = match self.encoded(b) {
            Ok(slot) => slot,
            Err(e) => {
                tracing::error!(block = b, error = %e, "reading the payload");
                self.events.push_back(Event::SourceFailed(e));
                self.unicast_all_incomplete(now, Reason::SenderFailed);
                self.end(now, Reason::SenderFailed);
                return self.poll_notice(now, buf);
            }
        };
        let header = self.header();
        let coded = &self.cache[slot].1;
        let k = coded.source_symbols();
        let total = k + usize::from(self.layout.repair_count());
        let index = usize::from(self.cursor[b as usize]) % total;
        let payload = coded.symbol(index)?;
        packet::write_data(
            buf,
            &header,
            &Data {
                block: b,
                symbol: index as u16,
                repair: index >= k,
                payload,
            },
        );
        self.cursor[b as usize] = ((index + 1) % total) as u16;
        self.last_sent_seq[b as usize] = header.seq;
        if index < k {
            self.stats.source_symbols += 1;
        } else {
            self.stats.repair_symbols += 1;
        }
        if visit.repair {
            self.stats.nack_symbols += 1;
        }
        visit.left -= 1;
        self.visit = (visit.left > 0).then_some(visit);
        Some(self.sent(buf.len()))
    }

    fn poll_notice(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let i = self.notices.iter().position(|n| n.next_at <= now)?;
        let (kind, reason, ids) = {
            let n = &self.notices[i];
            (n.kind, n.reason, n.ids.clone())
        };
        let header = self.header();
        packet::write_notice(buf, &header, kind, reason, &ids);
        let n = &mut self.notices[i];
        n.left -= 1;
        n.next_at = now + self.config.notice_spacing;
        if n.left == 0 {
            self.notices.remove(i);
        }
        self.stats.notices += 1;
        Some(self.sent(buf.len()))
    }

    fn write_announce(&mut self, buf: &mut Vec<u8>) {
        let header = self.header();
        let g = self.layout.geometry();
        let a = Announce {
            length: g.length(),
            block_size: g.block_size(),
            block_count: g.block_count(),
            symbol_size: self.layout.symbol_size(),
            repair_count: self.layout.repair_count(),
            status_interval_ms: u16::try_from(self.config.status_interval.as_millis())
                .unwrap_or(u16::MAX),
            flags: HASHES_OUT_OF_BAND,
            rate_kbit: u32::try_from(self.pacer.rate / 1000).unwrap_or(u32::MAX),
            pass: self.stats.passes,
        };
        packet::write_announce(buf, &header, &a);
    }
}

/// Symbols to send so that a receiver losing a fraction `p` gets `need` of them with 95%
/// probability: the smallest n with n(1−p) − 1.65·sqrt(n·p·(1−p)) ≥ need (normal
/// approximation of the binomial).
pub fn symbols_for(need: usize, p: f64) -> usize {
    const Z: f64 = 1.65;
    if need == 0 {
        return 0;
    }
    let p = if p.is_finite() {
        p.clamp(0.0, 0.5)
    } else {
        0.5
    };
    if p == 0.0 {
        return need;
    }
    let q = 1.0 - p;
    let a = Z * (p * q).sqrt();
    let s = (a + (a * a + 4.0 * q * need as f64).sqrt()) / (2.0 * q);
    (s * s).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_grows_with_loss() {
        assert_eq!(symbols_for(749, 0.0), 749);
        assert_eq!(symbols_for(0, 0.3), 0);
        let at1 = symbols_for(749, 0.01);
        let at5 = symbols_for(749, 0.05);
        assert!((760..766).contains(&at1), "{at1}");
        assert!((795..805).contains(&at5), "{at5}");
        assert!(symbols_for(3, 0.05) >= 4);
        assert_eq!(symbols_for(10, f64::NAN), symbols_for(10, 0.5));
    }

    fn status(seq: u64, done: bool, manifest: Hash) -> Vec<u8> {
        let mut buf = Vec::new();
        let header = Header {
            session: 7,
            manifest,
            seq,
        };
        let fields = packet::StatusFields {
            receiver: 42,
            done,
            blocks_done: if done { 4 } else { 0 },
            ..Default::default()
        };
        packet::write_status(&mut buf, &header, &fields, &[0x0f], &[]);
        buf
    }

    #[test]
    fn receiver_heard_again_after_timing_out_counts_as_done() {
        let t0 = Instant::now();
        let g = crate::Geometry::new(4000, 1000).unwrap();
        let layout = Layout::new(g, 100, 8).unwrap();
        let manifest = [3; 32];
        let mut s = Sender::new(
            SenderConfig::new(7, 1_000_000),
            layout,
            manifest,
            vec![0u8; 4000],
            t0,
        );
        let from = "10.0.0.2:9".parse().unwrap();
        s.handle(t0, &status(1, false, manifest), from);
        let later = t0 + Duration::from_secs(3);
        s.handle_timeout(later);
        let state = |s: &Sender<Vec<u8>>| s.receivers().next().map(|r| r.state);
        assert_eq!(state(&s), Some(PeerState::Left));
        // A stale copy is refused, the fresh final status counts.
        s.handle(later, &status(1, true, manifest), from);
        assert_eq!(state(&s), Some(PeerState::Left));
        s.handle(later, &status(2, true, manifest), from);
        assert_eq!(state(&s), Some(PeerState::Done));
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            matches!(events.last(), Some(Event::ReceiverDone { id: 42 })),
            "{events:?}"
        );
        // Its final status is acknowledged.
        let mut buf = Vec::new();
        let mut acked = false;
        while let Some(t) = s.poll_transmit(later, &mut buf) {
            if let Ok((_, Body::Notice(n))) = packet::parse(&buf[..t.len]) {
                acked |= n.kind == NoticeKind::Acknowledged && n.ids().eq([42]);
            }
        }
        assert!(acked);
        // A status of another session or manifest is not counted.
        s.handle(later, &status(3, true, [4; 32]), from);
        assert_eq!(s.stats().dropped, 1);
    }

    #[test]
    fn pacer_holds_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer {
            rate: 8_000_000,
            tokens: 0.0,
            burst: Duration::from_millis(4),
            last: t0,
        };
        let mut sent = 0usize;
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            p.refill(now);
            while p.ready() {
                p.spend(1000 - WIRE_OVERHEAD);
                sent += 1000;
            }
            now = p.ready_at().max(now + Duration::from_micros(1));
        }
        // 8 Mbit/s is 1 MB/s, give or take one packet.
        assert!((999_000..=1_001_000).contains(&sent), "{sent}");
    }
}
