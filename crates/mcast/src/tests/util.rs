//! A deterministic network for the state machines: one sender, N receivers, a virtual clock,
//! per-link random loss, join times, and packet injection. `step()` advances to the next
//! thing that happens; `drive()` runs until everyone is finished or a time limit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blocks::{BlockList, Geometry, Layout};
use crate::receiver::{self, Event as RxEvent, Fallback, Receiver, ReceiverConfig};
use crate::sender::{self, Sender, SenderConfig};
use crate::{Destination, Transmit};

/// SplitMix64: small, seedable, good enough to draw losses.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

pub fn payload(len: usize, seed: u64) -> Arc<[u8]> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Where an in-flight datagram goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    /// To the sender, from node `i`.
    Sender(usize),
    Receiver(usize),
}

pub struct Node {
    pub config: ReceiverConfig,
    pub join_at: Instant,
    /// Loss on the path from the sender (the group) to this receiver.
    pub loss: f64,
    /// Loss on the path from this receiver to the sender.
    pub uplink_loss: f64,
    /// Fraction of the datagrams that reach this receiver damaged: one bit flipped, or cut.
    pub damage: f64,
    /// Damaged datagrams this receiver was handed while it was still receiving.
    pub damaged: u64,
    pub addr: SocketAddr,
    pub rx: Option<Receiver>,
    /// What the receiver handed out, written at each block's offset.
    pub out: Vec<u8>,
    pub blocks_out: Vec<bool>,
    pub complete: bool,
    pub fallback: Option<Fallback>,
    /// Set to fail the test if a block was handed out twice or did not match the payload.
    pub bad_blocks: u32,
}

pub struct Net {
    pub now: Instant,
    pub start: Instant,
    pub payload: Arc<[u8]>,
    pub list: BlockList,
    pub sender: Sender<Arc<[u8]>>,
    pub sender_events: Vec<sender::Event>,
    pub sender_done: bool,
    pub nodes: Vec<Node>,
    pub latency: Duration,
    rng: Rng,
    sender_addr: SocketAddr,
    in_flight: BinaryHeap<Reverse<(Instant, u64)>>,
    /// In flight: where to, the datagram, whether it was damaged on the way.
    datagrams: HashMap<u64, (Target, Vec<u8>, bool)>,
    order: u64,
    /// Steps taken without the clock moving: a livelock if it grows large.
    stalled: u32,
    /// Copies of group datagrams, for replay tests.
    pub recorded: Vec<Vec<u8>>,
    pub record: bool,
}

impl Net {
    pub fn new(payload: Arc<[u8]>, layout: Layout, mut config: SenderConfig, seed: u64) -> Net {
        let start = Instant::now();
        let list = BlockList::from_bytes(&payload, layout.geometry().block_size())
            .expect("test payload hashes");
        config.session = config.session.max(1);
        let sender = Sender::new(
            config,
            layout,
            *list.manifest_hash(),
            payload.clone(),
            start,
        );
        Net {
            now: start,
            start,
            payload,
            list,
            sender,
            sender_events: Vec::new(),
            sender_done: false,
            nodes: Vec::new(),
            latency: Duration::from_micros(200),
            rng: Rng::new(seed),
            sender_addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 5000)),
            in_flight: BinaryHeap::new(),
            datagrams: HashMap::new(),
            order: 0,
            stalled: 0,
            recorded: Vec::new(),
            record: false,
        }
    }

    /// A sender with small blocks (16 KiB of 512-byte symbols: K = 32, R = 16).
    pub fn small(len: usize, seed: u64, rate: u64) -> Net {
        Net::small_with(len, seed, rate, |_| {})
    }

    pub fn small_with(
        len: usize,
        seed: u64,
        rate: u64,
        tweak: impl FnOnce(&mut SenderConfig),
    ) -> Net {
        let g = Geometry::new(len as u64, 16 * 1024).expect("geometry");
        let layout = Layout::new(g, 512, crate::blocks::default_repair(32)).expect("layout");
        let mut config = SenderConfig::new(0x5e55_1011 ^ seed, rate);
        config.linger = Duration::from_millis(300);
        tweak(&mut config);
        Net::new(payload(len, seed), layout, config, seed ^ 0xabcdef)
    }

    pub fn add_receiver(&mut self, join_after: Duration, loss: f64) -> usize {
        let i = self.nodes.len();
        let mut config = ReceiverConfig::new(1000 + i as u64);
        config.session = Some(self.sender.session());
        self.nodes.push(Node {
            config,
            join_at: self.start + join_after,
            loss,
            uplink_loss: loss,
            damage: 0.0,
            damaged: 0,
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, i as u8), 6000)),
            rx: None,
            out: vec![0; self.payload.len()],
            blocks_out: vec![false; self.list.geometry().block_count() as usize],
            complete: false,
            fallback: None,
            bad_blocks: 0,
        });
        i
    }

    /// Replaces node `i`'s receiver by a fresh one with a new id that keeps the blocks
    /// already written (as the tool does when restarted on the same output file).
    pub fn restart(&mut self, i: usize, new_id: u64) {
        let node = &mut self.nodes[i];
        node.config.id = new_id;
        let mut rx = Receiver::new(node.config.clone(), self.list.clone(), self.now);
        let g = *self.list.geometry();
        for b in 0..g.block_count() {
            let off = g.block_offset(b) as usize;
            let data = &node.out[off..off + g.block_len(b)];
            // Blocks handed out verify again; the zeros where nothing came do not.
            let kept = rx.offer_existing(self.now, b, data);
            assert_eq!(kept, node.blocks_out[b as usize], "block {b}");
        }
        node.rx = Some(rx);
        node.complete = false;
    }

    /// Drops node `i`'s receiver, as if its process were killed.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].rx = None;
        self.nodes[i].join_at = self.now + Duration::from_secs(3600 * 24);
    }

    /// Delivers `datagram` to every joined receiver now (as if sent to the group).
    pub fn inject(&mut self, datagram: Vec<u8>) {
        for i in 0..self.nodes.len() {
            self.schedule(Target::Receiver(i), datagram.clone(), Duration::ZERO);
        }
    }

    fn schedule(&mut self, to: Target, datagram: Vec<u8>, delay: Duration) {
        self.schedule_damaged(to, datagram, delay, false);
    }

    fn schedule_damaged(&mut self, to: Target, datagram: Vec<u8>, delay: Duration, damaged: bool) {
        self.order += 1;
        self.datagrams.insert(self.order, (to, datagram, damaged));
        self.in_flight.push(Reverse((self.now + delay, self.order)));
    }

    fn next_time(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if !self.sender_done {
            consider(self.sender.poll_timeout());
        }
        for n in &self.nodes {
            match &n.rx {
                Some(rx) if !rx.is_finished() => consider(rx.poll_timeout()),
                Some(_) => {}
                None if n.join_at > self.now => consider(Some(n.join_at)),
                None => {}
            }
        }
        consider(self.in_flight.peek().map(|Reverse((t, _))| *t));
        t
    }

    /// Advances to the next event and processes everything due. False when nothing is left.
    pub fn step(&mut self) -> bool {
        let Some(t) = self.next_time() else {
            return false;
        };
        if t > self.now {
            self.now = t;
            self.stalled = 0;
        } else {
            self.stalled += 1;
            assert!(
                self.stalled < 10_000,
                "no progress at {:?}: sender timeout {:?}, receivers {:?}",
                self.now - self.start,
                self.sender
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(self.start)),
                self.nodes
                    .iter()
                    .map(|n| n
                        .rx
                        .as_ref()
                        .and_then(Receiver::poll_timeout)
                        .map(|t| t.saturating_duration_since(self.start)))
                    .collect::<Vec<_>>()
            );
        }
        let now = self.now;
        for n in &mut self.nodes {
            if n.rx.is_none() && n.join_at <= now && !n.complete {
                n.rx = Some(Receiver::new(n.config.clone(), self.list.clone(), now));
            }
        }
        while let Some(Reverse((t, key))) = self.in_flight.peek().copied() {
            if t > now {
                break;
            }
            self.in_flight.pop();
            let Some((to, d, damaged)) = self.datagrams.remove(&key) else {
                continue;
            };
            match to {
                Target::Sender(i) => self.sender.handle(now, &d, self.nodes[i].addr),
                Target::Receiver(i) => {
                    let node = &mut self.nodes[i];
                    if let Some(rx) = node.rx.as_mut() {
                        if damaged && !rx.is_finished() {
                            node.damaged += 1;
                        }
                        rx.handle(now, &d, self.sender_addr);
                    }
                }
            }
        }
        self.run_sender(now);
        self.run_receivers(now);
        true
    }

    fn run_sender(&mut self, now: Instant) {
        if self.sender_done {
            return;
        }
        if self.sender.poll_timeout().is_some_and(|t| t <= now) {
            self.sender.handle_timeout(now);
        }
        let mut buf = Vec::new();
        while let Some(Transmit { to, len }) = self.sender.poll_transmit(now, &mut buf) {
            assert_eq!(to, Destination::Group);
            let d = buf[..len].to_vec();
            if self.record {
                self.recorded.push(d.clone());
            }
            for i in 0..self.nodes.len() {
                let joined = self.nodes[i].rx.is_some();
                if joined && !self.rng.chance(self.nodes[i].loss) {
                    let mut d = d.clone();
                    let damaged = self.rng.chance(self.nodes[i].damage);
                    if damaged {
                        let r = self.rng.next_u64() as usize;
                        if r.is_multiple_of(2) {
                            d.truncate(r / 2 % d.len());
                        } else {
                            let bit = r / 2 % (d.len() * 8);
                            d[bit / 8] ^= 1 << (bit % 8);
                        }
                    }
                    self.schedule_damaged(Target::Receiver(i), d, self.latency, damaged);
                }
            }
        }
        while let Some(e) = self.sender.poll_event() {
            if matches!(e, sender::Event::Finished) {
                self.sender_done = true;
            }
            self.sender_events.push(e);
        }
    }

    fn run_receivers(&mut self, now: Instant) {
        let mut buf = Vec::new();
        for i in 0..self.nodes.len() {
            let payload = self.payload.clone();
            let node = &mut self.nodes[i];
            let Some(rx) = node.rx.as_mut() else {
                continue;
            };
            if rx.poll_timeout().is_some_and(|t| t <= now) {
                rx.handle_timeout(now);
            }
            let mut uplink = Vec::new();
            while let Some(Transmit { to, len }) = rx.poll_transmit(now, &mut buf) {
                assert_eq!(to, Destination::Unicast(self.sender_addr));
                uplink.push(buf[..len].to_vec());
            }
            while let Some(e) = rx.poll_event() {
                match e {
                    RxEvent::Block {
                        index,
                        offset,
                        data,
                    } => {
                        let off = offset as usize;
                        let fits = payload.get(off..off + data.len()) == Some(&data[..]);
                        if !fits || node.blocks_out[index as usize] {
                            node.bad_blocks += 1;
                        }
                        node.out[off..off + data.len()].copy_from_slice(&data);
                        node.blocks_out[index as usize] = true;
                    }
                    RxEvent::Complete => node.complete = true,
                    RxEvent::Fallback(f) => node.fallback = Some(f),
                    RxEvent::Joined { .. } => {}
                }
            }
            let loss = node.uplink_loss;
            for d in uplink {
                if !self.rng.chance(loss) {
                    self.schedule(Target::Sender(i), d, self.latency);
                }
            }
        }
    }

    /// Runs until the sender and every receiver are finished, or `limit` of virtual time.
    pub fn drive(&mut self, limit: Duration) -> bool {
        while self.now < self.start + limit {
            let all_done = self.sender_done
                && self
                    .nodes
                    .iter()
                    .all(|n| n.rx.as_ref().is_none_or(Receiver::is_finished));
            if all_done || !self.step() {
                return all_done;
            }
        }
        false
    }

    /// Runs until `cond` holds or `limit` of virtual time has passed.
    pub fn drive_until(&mut self, limit: Duration, mut cond: impl FnMut(&Net) -> bool) -> bool {
        while self.now < self.start + limit {
            if cond(self) {
                return true;
            }
            if !self.step() {
                return cond(self);
            }
        }
        cond(self)
    }

    pub fn receiver(&self, i: usize) -> &Receiver {
        self.nodes[i].rx.as_ref().expect("receiver has joined")
    }

    /// Blocks node `i` has verified (0 before it joined).
    pub fn verified(&self, i: usize) -> u32 {
        self.nodes[i].rx.as_ref().map_or(0, |rx| rx.progress().0)
    }

    pub fn stats(&self, i: usize) -> receiver::ReceiverStats {
        *self.receiver(i).stats()
    }

    /// Every block of node `i` is out, exactly once, byte-identical.
    pub fn assert_complete(&self, i: usize) {
        let n = &self.nodes[i];
        assert!(n.complete, "receiver {i} is complete");
        assert_eq!(n.bad_blocks, 0, "receiver {i} handed out no bad block");
        assert!(
            n.out[..] == self.payload[..],
            "receiver {i} output is identical"
        );
    }
}
