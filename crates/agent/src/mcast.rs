//! Installing from a multicast session (docs/multicast.md): the image's stored chunk stream
//! arrives in blocks, in whatever order the carousel sends them, while the extraction takes
//! chunks strictly in order. The receiver writes every verified block at its offset in a spool
//! file on the target; a chunk is read from the spool once every block under it is verified,
//! and fetched over HTTP once the session can no longer deliver it. Blocks every chunk of
//! which was taken are punched out of the spool, so it holds only what the extraction has not
//! consumed yet.
//!
//! The receiver runs on the calling thread (its sockets stay there), the extraction on a
//! scoped thread of its own; they meet in [`Board`], under one mutex.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metalcast_image::{ChunkSource, MAX_CHUNK_LEN, SourceError};
use metalcast_mcast::blocks::BlockListError;
use metalcast_mcast::receiver::{Event, Fallback, Receiver, ReceiverConfig};
use metalcast_mcast::udp::{Interface, McastSocket, RecvBatch, UdpError};
use metalcast_mcast::{BlockList, Destination, Geometry, Reason, Transmit};
use metalcast_proto::image::{ChunkRef, Manifest};
use metalcast_proto::mcast::{ManifestHash, McastSession};
use metalcast_proto::{Level, MacAddr};
use tracing::{debug, warn};

use crate::appliance::{ApiError, Appliance, chain};
use crate::backoff::Backoff;
use crate::events::EventQueue;
use crate::install::{HttpChunks, RetryPolicy, event, retry_for};
use crate::network;

/// The spool, in the root of the target filesystem (removed after the install).
pub const SPOOL_NAME: &str = ".metalcast-mcast.spool";
/// The sender announces ten times a second: no announcement for this long means multicast
/// does not reach the node (no IGMP snooping querier, a filtering switch, a wrong group).
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A session heard but delivering no new block for this long is left: something is wrong
/// with it, and HTTP is sure to deliver.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Partly received blocks held at once (each up to a block's size in memory): the
/// initramfs lives in RAM, and the carousel rarely leaves more than a few open.
const MAX_PARTIAL_BLOCKS: usize = 64;
/// Shortest interval between two progress events.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Silence on the group, once the session was heard, after which the group is joined again
/// (a snooping switch may have lost this port's membership).
const REJOIN_AFTER: Duration = Duration::from_millis(500);
/// While traffic flows, datagrams are left to queue up this long between batches rather
/// than waking for each one.
const COALESCE: Duration = Duration::from_millis(1);
/// The loop wakes at least this often to notice the extraction ending.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// After the extraction ended, how long a complete receiver may repeat its final status
/// until the sender acknowledges it.
const DONE_GRACE: Duration = Duration::from_secs(1);
/// Datagrams per `recvmmsg`.
const BATCH: usize = 64;
/// A block list line is 65 bytes per block, plus a short header.
const LIST_LINE: u64 = 65;
const LIST_HEADER: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum McastError {
    #[error("the session's block list path {0:?} is not an absolute path on the appliance")]
    ListPath(String),
    #[error("fetching the block list")]
    Fetch(#[source] ApiError),
    #[error("the block list does not parse")]
    Parse(#[source] BlockListError),
    #[error("the block list hashes to {got}, but the session's manifest hash is {expected}")]
    Hash {
        expected: ManifestHash,
        got: ManifestHash,
    },
    #[error(
        "the block list describes {list_len} bytes in blocks of {list_block}, but the session \
         says {session_len} bytes in blocks of {session_block}"
    )]
    Session {
        list_len: u64,
        list_block: u32,
        session_len: u64,
        session_block: u32,
    },
    #[error(
        "the block list describes {list} bytes, but the image's stored chunks add up to {stored}"
    )]
    Length { list: u64, stored: u64 },
    #[error("a chunk of {0} bytes is larger than any chunk can be")]
    ChunkSize(u64),
    #[error("listing the network interfaces")]
    Interfaces(#[source] nix::Error),
    #[error("no network interface has the boot MAC {0}")]
    NoInterface(MacAddr),
    #[error(transparent)]
    Socket(#[from] UdpError),
    #[error("creating the spool {path}")]
    Spool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks the block list the appliance sent for `session` before anything is received: it
/// decides which bytes are accepted, so it must be the one the session's packets name, and
/// describe exactly the image's stored chunks.
pub fn check_block_list(
    text: &[u8],
    session: &McastSession,
    stored_size: u64,
) -> Result<BlockList, McastError> {
    let list = BlockList::parse_text(&String::from_utf8_lossy(text)).map_err(McastError::Parse)?;
    let got = ManifestHash(*list.manifest_hash());
    if got != session.manifest_hash {
        return Err(McastError::Hash {
            expected: session.manifest_hash,
            got,
        });
    }
    let g = list.geometry();
    if g.length() != session.length || g.block_size() != session.block_size {
        return Err(McastError::Session {
            list_len: g.length(),
            list_block: g.block_size(),
            session_len: session.length,
            session_block: session.block_size,
        });
    }
    if g.length() != stored_size {
        return Err(McastError::Length {
            list: g.length(),
            stored: stored_size,
        });
    }
    Ok(list)
}

/// The blocks of `block_size` bytes that hold bytes `[offset, offset + len)` of the payload.
pub fn covering(offset: u64, len: u64, block_size: u32) -> Range<u32> {
    let size = u64::from(block_size.max(1));
    let first = offset / size;
    let end = if len == 0 {
        first
    } else {
        offset.saturating_add(len).div_ceil(size)
    };
    // A checked geometry has fewer than 2^32 blocks.
    let index = |b: u64| u32::try_from(b).unwrap_or(u32::MAX);
    index(first)..index(end)
}

/// One chunk's place in the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    offset: u64,
    len: usize,
    blocks: Range<u32>,
}

fn spans(manifest: &Manifest, block_size: u32) -> Result<Vec<Span>, McastError> {
    manifest
        .chunks
        .iter()
        .zip(manifest.stored_offsets())
        .map(|(c, offset)| {
            let len = usize::try_from(c.stored_len)
                .ok()
                .filter(|&l| l as u64 <= MAX_CHUNK_LEN)
                .ok_or(McastError::ChunkSize(c.stored_len))?;
            Ok(Span {
                offset,
                len,
                blocks: covering(offset, c.stored_len, block_size),
            })
        })
        .collect()
}

/// What is known of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Missing,
    /// Verified and in the spool.
    Verified,
    /// No chunk will be read from it again: punched out of the spool (if it was there).
    Released,
}

/// Where a chunk comes from, now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    Spool,
    /// The session cannot deliver it (any more): over HTTP.
    Http,
    /// Wait for the session.
    Wait,
}

/// The decision for a chunk lying in `blocks`, given whether the receiver has ended.
pub fn decide(blocks: &[Block], ended: bool) -> Take {
    if blocks.contains(&Block::Released) {
        Take::Http
    } else if blocks.iter().all(|b| *b == Block::Verified) {
        Take::Spool
    } else if ended {
        Take::Http
    } else {
        Take::Wait
    }
}

/// The state the receiver and the extraction share.
#[derive(Debug)]
pub struct Board {
    blocks: Vec<Block>,
    /// Per block: chunks lying in it that were not taken yet, plus spool reads in progress.
    readers: Vec<u32>,
    /// Per chunk: handed to the extraction once (a resumed extraction may ask again).
    taken: Vec<bool>,
    verified: u32,
    /// The receiver will verify no more blocks.
    ended: bool,
}

impl Board {
    /// A board for `block_count` blocks and chunks lying in `chunks`.
    pub fn new(block_count: u32, chunks: impl Iterator<Item = Range<u32>>) -> Board {
        let mut readers = vec![0u32; block_count as usize];
        let mut taken = Vec::new();
        for blocks in chunks {
            for b in blocks {
                if let Some(r) = readers.get_mut(b as usize) {
                    *r += 1;
                }
            }
            taken.push(false);
        }
        Board {
            blocks: vec![Block::Missing; block_count as usize],
            readers,
            taken,
            verified: 0,
            ended: false,
        }
    }

    fn slice(&self, blocks: &Range<u32>) -> &[Block] {
        let start = (blocks.start as usize).min(self.blocks.len());
        let end = (blocks.end as usize).clamp(start, self.blocks.len());
        &self.blocks[start..end]
    }

    /// Whether block `index` is still worth writing to the spool.
    pub fn wants(&self, index: u32) -> bool {
        self.blocks.get(index as usize) == Some(&Block::Missing)
    }

    /// Block `index` is in the spool.
    pub fn verify(&mut self, index: u32) {
        if let Some(b) = self.blocks.get_mut(index as usize)
            && *b == Block::Missing
        {
            *b = Block::Verified;
            self.verified += 1;
        }
    }

    pub fn end(&mut self) {
        self.ended = true;
    }

    pub fn verified(&self) -> u32 {
        self.verified
    }

    /// Where a chunk lying in `blocks` comes from now. A spool read holds its blocks until
    /// [`Board::done`], so that they are not punched under it.
    pub fn claim(&mut self, blocks: &Range<u32>) -> Take {
        let take = decide(self.slice(blocks), self.ended);
        if take == Take::Spool {
            self.count(blocks, |r| *r += 1);
        }
        take
    }

    /// Chunk `chunk` over `blocks` was read (from the spool if `from_spool`) and, if
    /// `delivered`, handed to the extraction. Returns the blocks no chunk will read again,
    /// which are now released.
    pub fn done(
        &mut self,
        chunk: usize,
        blocks: &Range<u32>,
        from_spool: bool,
        delivered: bool,
    ) -> Vec<u32> {
        if from_spool {
            self.count(blocks, |r| *r = r.saturating_sub(1));
        }
        if delivered
            && let Some(t) = self.taken.get_mut(chunk)
            && !*t
        {
            *t = true;
            self.count(blocks, |r| *r = r.saturating_sub(1));
        }
        let mut freed = Vec::new();
        for b in blocks.clone() {
            let i = b as usize;
            if self.readers.get(i) == Some(&0)
                && let Some(state) = self.blocks.get_mut(i)
                && *state != Block::Released
            {
                if *state == Block::Verified {
                    freed.push(b);
                }
                *state = Block::Released;
            }
        }
        freed
    }

    fn count(&mut self, blocks: &Range<u32>, f: impl Fn(&mut u32)) {
        for b in blocks.clone() {
            if let Some(r) = self.readers.get_mut(b as usize) {
                f(r);
            }
        }
    }
}

/// The board and its wake-up.
struct Shared {
    board: Mutex<Board>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update<T>(&self, f: impl FnOnce(&mut Board) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_all();
        out
    }

    /// Waits until the chunk over `blocks` can be taken from somewhere: true for the spool
    /// (its blocks held until [`Board::done`]), false for HTTP.
    fn claim(&self, blocks: &Range<u32>) -> bool {
        let mut board = self.lock();
        loop {
            match board.claim(blocks) {
                Take::Wait => {
                    board = self.changed.wait(board).unwrap_or_else(|p| p.into_inner());
                }
                Take::Spool => return true,
                Take::Http => return false,
            }
        }
    }
}

/// The spool file: the payload's bytes at their offsets, only verified blocks written.
struct Spool {
    file: File,
    path: PathBuf,
    geometry: Geometry,
}

impl Spool {
    /// Creates it sparse at the payload's length.
    fn create(path: PathBuf, geometry: Geometry) -> Result<Spool, McastError> {
        let err = |source| McastError::Spool {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(err)?;
        let spool = Spool {
            file,
            path: path.clone(),
            geometry,
        };
        // Dropping `spool` on failure removes the file again.
        spool.file.set_len(geometry.length()).map_err(err)?;
        Ok(spool)
    }

    fn read(&self, span: &Span) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; span.len];
        self.file.read_exact_at(&mut buf, span.offset)?;
        Ok(buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Gives released blocks' space back to the filesystem. Failing only costs space.
    fn punch(&self, blocks: &[u32]) {
        use nix::fcntl::{FallocateFlags, fallocate};
        for &b in blocks {
            let offset = self.geometry.block_offset(b);
            let len = self.geometry.block_len(b) as u64;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
                continue;
            };
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            if let Err(e) = fallocate(&self.file, flags, offset, len) {
                debug!(block = b, error = %e, "punching a block out of the spool");
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!("removing {}: {e}", self.path.display());
        }
    }
}

/// The extraction's chunk source during a multicast install: the spool for chunks the
/// session delivered, HTTP for the rest.
pub struct McastChunks<'a> {
    shared: &'a Shared,
    spool: &'a Spool,
    spans: &'a [Span],
    http: HttpChunks<'a>,
}

impl ChunkSource for McastChunks<'_> {
    fn fetch(&self, index: usize, chunk: &ChunkRef) -> Result<Vec<u8>, SourceError> {
        let span = self
            .spans
            .get(index)
            .ok_or_else(|| format!("chunk {index} is beyond the manifest"))?;
        let from_spool = self.shared.claim(&span.blocks);
        let got = if from_spool {
            self.spool
                .read(span)
                .map_err(|e| format!("reading {}: {e}", self.spool.path.display()).into())
        } else {
            self.http.fetch(index, chunk)
        };
        let freed = self
            .shared
            .update(|b| b.done(index, &span.blocks, from_spool, got.is_ok()));
        self.spool.punch(&freed);
        got
    }
}

/// How many datagrams a [`Link::recv`] handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub count: usize,
    /// The batch was full: more may be queued already.
    pub more: bool,
}

/// The receiver's way to the network: the group it listens on and the unicast path of its
/// statuses. [`udp_link`] is the real one; tests connect a sender state machine in process.
pub trait Link {
    /// Hands every datagram queued now to `each`, without waiting.
    fn recv(&mut self, each: &mut dyn FnMut(&[u8], SocketAddr)) -> io::Result<Received>;
    /// Waits up to `timeout` for datagrams to arrive.
    fn wait(&mut self, timeout: Duration) -> io::Result<()>;
    /// Sends a status; a lost one is repeated by the next.
    fn send(&mut self, datagram: &[u8], to: SocketAddr);
    /// Joins the group again, which sends fresh IGMP reports.
    fn rejoin(&mut self) -> io::Result<()>;
    /// Datagrams the socket dropped for lack of buffer space, since it was opened.
    fn socket_drops(&self) -> u64;
}

/// The session's group joined on the boot NIC, and a socket for statuses.
struct UdpLink {
    group: McastSocket,
    status: McastSocket,
    batch: RecvBatch,
    flowing: bool,
}

/// Joins `session`'s group on the NIC with the boot MAC.
pub fn udp_link(session: &McastSession, mac: MacAddr) -> Result<Box<dyn Link>, McastError> {
    let iface = boot_interface(mac)?;
    Ok(Box::new(UdpLink {
        group: McastSocket::group(&iface, session.group)?,
        status: McastSocket::unicast(&iface)?,
        batch: RecvBatch::new(BATCH),
        flowing: false,
    }))
}

fn boot_interface(mac: MacAddr) -> Result<Interface, McastError> {
    let links: Vec<(String, String)> = nix::ifaddrs::getifaddrs()
        .map_err(McastError::Interfaces)?
        .filter_map(|a| {
            let link = *a.address?.as_link_addr()?;
            // Tunnels have shorter hardware addresses, or none.
            let hw = link.addr().filter(|_| link.halen() == 6)?;
            Some((a.interface_name, MacAddr(hw).to_string()))
        })
        .collect();
    let name = network::find_interface(&links, mac).ok_or(McastError::NoInterface(mac))?;
    Ok(Interface::by_name(&name)?)
}

impl Link for UdpLink {
    fn recv(&mut self, each: &mut dyn FnMut(&[u8], SocketAddr)) -> io::Result<Received> {
        let count = self.group.recv_batch(&mut self.batch)?;
        for i in 0..count {
            if let Some((d, from)) = self.batch.get(i) {
                each(d, from);
            }
        }
        self.flowing = count > 0;
        Ok(Received {
            count,
            more: count == self.batch.capacity(),
        })
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if self.flowing {
            // Traffic flows: let a batch build up in the socket buffer rather than wake for
            // every datagram.
            std::thread::sleep(timeout.min(COALESCE));
            Ok(())
        } else {
            self.group.wait_readable(Some(timeout))
        }
    }

    fn send(&mut self, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = self.status.send_to(datagram, to) {
            debug!(error = %e, %to, "sending a multicast status");
        }
    }

    fn rejoin(&mut self) -> io::Result<()> {
        self.group.rejoin()
    }

    fn socket_drops(&self) -> u64 {
        self.batch.socket_drops()
    }
}

/// A session ready to receive: its block list checked and the spool created.
pub struct Prepared {
    session: McastSession,
    list: BlockList,
    spans: Vec<Span>,
    spool: Spool,
}

/// Fetches and checks `session`'s block list against `manifest`, then creates the spool in
/// `target`.
pub fn prepare(
    api: &Appliance,
    policy: RetryPolicy,
    session: &McastSession,
    manifest: &Manifest,
    target: &Path,
) -> Result<Prepared, McastError> {
    let path = &session.block_list;
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(McastError::ListPath(path.clone()));
    }
    let blocks = session
        .length
        .div_ceil(u64::from(session.block_size.max(1)));
    let limit = LIST_HEADER.saturating_add(blocks.saturating_mul(LIST_LINE));
    let mut backoff = Backoff::new(policy.initial, policy.cap, 1);
    let text = retry_for(
        "fetching the block list",
        &mut backoff,
        policy.give_up,
        &mut std::thread::sleep,
        || api.block_list(path, limit),
    )
    .map_err(McastError::Fetch)?;
    let list = check_block_list(&text, session, manifest.stored_size())?;
    let spans = spans(manifest, list.geometry().block_size())?;
    let spool = Spool::create(target.join(SPOOL_NAME), *list.geometry())?;
    Ok(Prepared {
        session: session.clone(),
        list,
        spans,
        spool,
    })
}

/// Who receives, for the events.
pub struct Receiving<'a> {
    pub events: &'a EventQueue,
    /// `NAME@VERSION`.
    pub image: &'a str,
    /// The receiver id statuses carry: the boot MAC as a number.
    pub id: u64,
}

/// Receives `prepared`'s session over `link` while `body` runs on a thread of its own with
/// the chunk source; returns what `body` returned once both have ended. The spool is
/// removed however it ends.
pub fn receive<T: Send>(
    prepared: Prepared,
    link: &mut dyn Link,
    who: &Receiving<'_>,
    http: HttpChunks<'_>,
    body: impl FnOnce(&McastChunks<'_>) -> T + Send,
) -> T {
    let Prepared {
        session,
        list,
        spans,
        spool,
    } = prepared;
    let geometry = *list.geometry();
    let shared = Shared {
        board: Mutex::new(Board::new(
            geometry.block_count(),
            spans.iter().map(|s| s.blocks.clone()),
        )),
        changed: Condvar::new(),
    };
    let source = McastChunks {
        shared: &shared,
        spool: &spool,
        spans: &spans,
        http,
    };
    let stop = AtomicBool::new(false);
    let mut config = ReceiverConfig::new(who.id);
    config.session = Some(session.id.0);
    config.max_partial_blocks = MAX_PARTIAL_BLOCKS;
    let silence = config.sender_timeout;
    let mut rx = Receiver::new(config, list, Instant::now());
    let run = Run {
        link,
        shared: &shared,
        spool: &spool,
        stop: &stop,
        who,
        session: &session,
        geometry,
        silence,
        over: false,
    };
    let joined = std::thread::scope(|scope| {
        let extraction = scope.spawn(|| {
            let _stop = StopOnDrop(&stop);
            body(&source)
        });
        run.run(&mut rx);
        extraction.join()
    });
    drop(spool);
    match joined {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Tells the receiver that the extraction is over, however it ended.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Run<'a> {
    link: &'a mut dyn Link,
    shared: &'a Shared,
    spool: &'a Spool,
    stop: &'a AtomicBool,
    who: &'a Receiving<'a>,
    session: &'a McastSession,
    geometry: Geometry,
    /// The receiver's sender timeout, for the event that says it ran out.
    silence: Duration,
    /// Complete or fallen back: no more progress to tell.
    over: bool,
}

/// Nothing more comes once the receiver stops, however it stops: whatever is missing, the
/// extraction fetches over HTTP.
struct EndOnDrop<'a>(&'a Shared);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.update(Board::end);
    }
}

impl Run<'_> {
    fn run(mut self, rx: &mut Receiver) {
        let _end = EndOnDrop(self.shared);
        let started = Instant::now();
        if let Err(e) = self.receive(rx, started) {
            let (have, total) = rx.progress();
            if !rx.is_finished() {
                self.say(
                    Level::Warn,
                    fallback_text(have, total, &format!("receiving failed: {e}")),
                );
            }
        }
    }

    fn say(&self, level: Level, message: String) {
        event(self.who.events, level, message);
    }

    fn receive(&mut self, rx: &mut Receiver, started: Instant) -> io::Result<()> {
        let mut heard = started;
        let mut last_block = started;
        let mut meter = Meter::new(Duration::ZERO);
        let mut stopped_at: Option<Instant> = None;
        // Why this side gave up, when it did (`None` when the extraction no longer needs it).
        let mut ours: Option<String> = None;
        let mut buf = Vec::with_capacity(2048);
        loop {
            let now = Instant::now();
            if now >= heard + REJOIN_AFTER && rx.layout().is_some() && !self.over {
                heard = now;
                debug!(
                    "nothing from the group for {} ms; joining it again",
                    REJOIN_AFTER.as_millis()
                );
                if let Err(e) = self.link.rejoin() {
                    ours.get_or_insert(format!("joining the group again failed: {e}"));
                    rx.abandon(now);
                }
            }
            let got = self.link.recv(&mut |d, from| {
                let before = rx.stats().packets;
                rx.handle(now, d, from);
                if rx.stats().packets > before
                    && let Ok((header, _)) = metalcast_mcast::packet::parse(d)
                {
                    meter.packet(header.seq, d.len());
                }
            })?;
            if got.count > 0 {
                heard = now;
            }
            rx.note_socket_drops(self.link.socket_drops());
            if self.stop.load(Ordering::Relaxed) {
                let since = *stopped_at.get_or_insert(now);
                // A complete receiver still tells the sender so, for a moment.
                if !rx.is_complete() || now >= since + DONE_GRACE {
                    rx.abandon(now);
                }
            }
            if rx.layout().is_none() && now >= started + JOIN_TIMEOUT {
                ours.get_or_insert(format!(
                    "no announcement of the session on {} within {} s",
                    self.session.group,
                    JOIN_TIMEOUT.as_secs()
                ));
                rx.abandon(now);
            }
            if rx.layout().is_none() {
                last_block = now;
            } else if !self.over && now >= last_block + STALL_TIMEOUT {
                ours.get_or_insert(format!("no new block for {} s", STALL_TIMEOUT.as_secs()));
                rx.abandon(now);
            }
            if rx.poll_timeout().is_some_and(|t| t <= now) {
                rx.handle_timeout(now);
            }
            while let Some(Transmit { to, len, .. }) = rx.poll_transmit(now, &mut buf) {
                if let (Destination::Unicast(addr), Some(d)) = (to, buf.get(..len)) {
                    self.link.send(d, addr);
                }
            }
            while let Some(e) = rx.poll_event() {
                if matches!(e, Event::Block { .. }) {
                    last_block = now;
                }
                self.on_event(rx, e, now, started, &mut ours);
            }
            if rx.layout().is_some()
                && !self.over
                && let Some(line) =
                    meter.tick(now.saturating_duration_since(started), rx.progress())
            {
                self.say(Level::Info, line);
            }
            if rx.is_finished() {
                return Ok(());
            }
            if got.more {
                continue;
            }
            let wait = rx
                .poll_timeout()
                .map_or(MAX_WAIT, |t| t.saturating_duration_since(Instant::now()))
                .min(MAX_WAIT);
            self.link.wait(wait)?;
        }
    }

    fn on_event(
        &mut self,
        rx: &mut Receiver,
        e: Event,
        now: Instant,
        started: Instant,
        ours: &mut Option<String>,
    ) {
        let total = self.geometry.block_count();
        match e {
            Event::Joined { .. } => {
                let line = joined_text(self.session, self.who.image, total);
                self.say(Level::Info, line);
            }
            Event::Block {
                index,
                offset,
                data,
            } => {
                if !self.shared.lock().wants(index) {
                    return;
                }
                match self.spool.write(offset, &data) {
                    Ok(()) => self.shared.update(|b| b.verify(index)),
                    Err(e) => {
                        ours.get_or_insert(format!("writing the spool failed: {e}"));
                        rx.abandon(now);
                    }
                }
            }
            Event::Complete => {
                self.over = true;
                let secs = now.saturating_duration_since(started).as_secs_f64();
                self.say(
                    Level::Info,
                    complete_text(total, secs, self.geometry.length()),
                );
            }
            Event::Fallback(why) => {
                self.shared.update(Board::end);
                self.over = true;
                let have = self.shared.lock().verified();
                if let Some(reason) = fallback_reason(why, ours.as_deref(), self.silence) {
                    self.say(Level::Warn, fallback_text(have, total, &reason));
                }
            }
        }
    }
}

/// Why the receiver left, for the operator; `None` when the extraction simply no longer
/// needed it (it ended first, successfully or not). `ours` is this side's own reason,
/// `silence` the receiver's sender timeout.
pub fn fallback_reason(why: Fallback, ours: Option<&str>, silence: Duration) -> Option<String> {
    let text = match why {
        Fallback::Told(Reason::TooSlow) => "the sender found this node too slow",
        Fallback::Told(Reason::Deadline) => "the session's deadline for this node passed",
        Fallback::Told(Reason::SessionEnded) | Fallback::SessionEnded => "the session ended",
        Fallback::Told(Reason::SenderFailed) => "the sender failed",
        Fallback::Told(Reason::None) => "the sender said so",
        Fallback::SenderLost => {
            return Some(format!(
                "nothing from the sender for {} s",
                silence.as_secs_f64()
            ));
        }
        Fallback::Abandoned => return ours.map(str::to_string),
    };
    Some(text.to_string())
}

pub fn joined_text(session: &McastSession, image: &str, blocks: u32) -> String {
    format!(
        "multicast: joined session {} ({}) for {image}, {blocks} blocks",
        session.id, session.group
    )
}

pub fn progress_text(have: u32, total: u32, loss: f64, mbit: f64) -> String {
    let percent = (u64::from(have) * 100)
        .checked_div(u64::from(total))
        .unwrap_or(100);
    format!(
        "multicast: {have} of {total} blocks ({percent}%), loss {:.1}%, {mbit:.0} Mbit/s",
        loss * 100.0
    )
}

pub fn complete_text(total: u32, secs: f64, bytes: u64) -> String {
    format!(
        "multicast: all {total} blocks in {secs:.1} s ({:.1} MB/s)",
        bytes as f64 / secs.max(1e-3) / 1e6
    )
}

pub fn fallback_text(have: u32, total: u32, reason: &str) -> String {
    format!(
        "multicast: falling back to unicast after {have} of {total} blocks: {reason}; \
         the rest comes over HTTP"
    )
}

/// Decides when a progress event is due, and measures loss (gaps in the sender's sequence
/// numbers among the packets accepted) and rate over the interval since the last one.
pub struct Meter {
    last_at: Duration,
    lowest: u64,
    highest: u64,
    packets: u64,
    bytes: u64,
}

impl Meter {
    /// Starts measuring at `now` (time since any fixed instant).
    pub fn new(now: Duration) -> Meter {
        Meter {
            last_at: now,
            lowest: u64::MAX,
            highest: 0,
            packets: 0,
            bytes: 0,
        }
    }

    /// A packet of the session, accepted, with sequence number `seq` and `len` bytes.
    pub fn packet(&mut self, seq: u64, len: usize) {
        self.lowest = self.lowest.min(seq);
        self.highest = self.highest.max(seq);
        self.packets += 1;
        self.bytes += len as u64;
    }

    /// The progress line if one is due at `now`, with `(have, total)` blocks.
    pub fn tick(&mut self, now: Duration, (have, total): (u32, u32)) -> Option<String> {
        let elapsed = now.saturating_sub(self.last_at);
        if elapsed < PROGRESS_EVERY {
            return None;
        }
        let expected = self.highest.saturating_sub(self.lowest).saturating_add(1);
        let loss = if self.packets == 0 {
            0.0
        } else {
            1.0 - (self.packets as f64 / expected as f64).min(1.0)
        };
        let mbit = self.bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
        *self = Meter::new(now);
        Some(progress_text(have, total, loss, mbit))
    }
}

/// `multicast: not used: …`, when a session cannot be received at all.
pub fn not_used_text(err: &McastError) -> String {
    format!(
        "multicast: not used: {}; the whole image comes over HTTP",
        chain(err)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    use metalcast_mcast::Layout;
    use metalcast_mcast::sender::{Sender, SenderConfig};
    use metalcast_proto::mcast::SessionId;

    use super::*;

    fn session(list: &BlockList) -> McastSession {
        McastSession {
            id: SessionId(0x1234_5678_9abc_def0),
            group: "239.77.0.1:5000".parse().unwrap(),
            manifest_hash: ManifestHash(*list.manifest_hash()),
            length: list.geometry().length(),
            block_size: list.geometry().block_size(),
            block_list: "/api/v1/mcast/sessions/123456789abcdef0/blocks".into(),
        }
    }

    #[test]
    fn a_block_list_must_be_the_sessions_and_the_images() {
        let payload = vec![7u8; 10_000];
        let list = BlockList::from_bytes(&payload, 4096).unwrap();
        let text = list.to_text();
        let s = session(&list);
        assert_eq!(check_block_list(text.as_bytes(), &s, 10_000).unwrap(), list);

        let mut other = s.clone();
        other.manifest_hash = ManifestHash([1; 32]);
        let err = check_block_list(text.as_bytes(), &other, 10_000).unwrap_err();
        assert!(matches!(err, McastError::Hash { .. }), "{err}");
        assert!(err.to_string().contains(&"01".repeat(32)), "{err}");

        let mut other = s.clone();
        other.block_size = 8192;
        let err = check_block_list(text.as_bytes(), &other, 10_000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the block list describes 10000 bytes in blocks of 4096, but the session says \
             10000 bytes in blocks of 8192"
        );

        let err = check_block_list(text.as_bytes(), &s, 9_999).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the block list describes 10000 bytes, but the image's stored chunks add up to 9999"
        );

        let err = check_block_list(b"hello\n", &s, 10_000).unwrap_err();
        assert!(matches!(err, McastError::Parse(_)), "{err}");
        let err = check_block_list(&[0xff, 0xfe], &s, 10_000).unwrap_err();
        assert!(matches!(err, McastError::Parse(_)), "{err}");
    }

    #[test]
    fn the_boot_nic_is_found_by_its_mac() {
        // The loopback interface's hardware address is all zeros.
        let lo = boot_interface(MacAddr([0; 6])).unwrap();
        assert_eq!(lo.addr, std::net::Ipv4Addr::LOCALHOST);
        let nobody = MacAddr([0x02, 0, 0x5e, 0x12, 0x34, 0x56]);
        assert!(matches!(
            boot_interface(nobody),
            Err(McastError::NoInterface(m)) if m == nobody
        ));
    }

    #[test]
    fn blocks_covering_a_chunk() {
        assert_eq!(covering(0, 100, 100), 0..1);
        assert_eq!(covering(0, 101, 100), 0..2);
        assert_eq!(covering(99, 2, 100), 0..2);
        assert_eq!(covering(100, 100, 100), 1..2);
        assert_eq!(covering(250, 1000, 100), 2..13);
        assert_eq!(covering(300, 0, 100), 3..3);
    }

    #[test]
    fn spans_follow_the_stored_offsets() {
        let chunk = |stored_len| ChunkRef {
            hash: metalcast_proto::image::Digest([0; 32]),
            offset: 0,
            len: 1,
            stored_len,
            entry_start: 0,
        };
        let mut m = Manifest {
            format: metalcast_proto::image::FORMAT_VERSION,
            name: "debian".into(),
            version: "1".into(),
            parent: None,
            created_ms: 1,
            os_family: metalcast_proto::image::OsFamily::Debian,
            kernel: None,
            initrd: None,
            size: 3,
            chunking: metalcast_image::DEFAULT_CHUNKING,
            chunks: vec![chunk(150), chunk(50), chunk(100)],
        };
        let got = spans(&m, 100).unwrap();
        let want = [(0, 150, 0..2), (150, 50, 1..2), (200, 100, 2..3)];
        for (s, (offset, len, blocks)) in got.iter().zip(want) {
            assert_eq!((s.offset, s.len, s.blocks.clone()), (offset, len, blocks));
        }
        m.chunks.push(chunk(MAX_CHUNK_LEN + 1));
        assert!(matches!(spans(&m, 100), Err(McastError::ChunkSize(_))));
    }

    #[test]
    fn a_chunk_waits_for_its_blocks_until_the_receiver_ends() {
        use Block::*;
        assert_eq!(decide(&[Verified, Verified], false), Take::Spool);
        assert_eq!(decide(&[Verified, Missing], false), Take::Wait);
        assert_eq!(decide(&[Verified, Missing], true), Take::Http);
        assert_eq!(decide(&[Verified, Verified], true), Take::Spool);
        assert_eq!(decide(&[Verified, Released], false), Take::Http);
        assert_eq!(decide(&[], false), Take::Spool);
    }

    #[test]
    fn blocks_are_released_once_every_chunk_over_them_was_taken() {
        // Chunks over blocks 0..2, 1..2, 2..3 (as in the spans test).
        let mut b = Board::new(3, [0..2, 1..2, 2..3].into_iter());
        assert_eq!(b.claim(&(0..2)), Take::Wait);
        b.verify(0);
        b.verify(1);
        b.verify(1);
        assert_eq!(b.verified(), 2);
        assert_eq!(b.claim(&(0..2)), Take::Spool);
        // Block 1 is still under chunk 1.
        assert_eq!(b.done(0, &(0..2), true, true), vec![0]);
        assert!(!b.wants(0));
        // A resumed extraction asking for chunk 0 again gets it over HTTP.
        assert_eq!(b.claim(&(0..2)), Take::Http);
        assert_eq!(b.done(0, &(0..2), false, true), Vec::<u32>::new());
        // A spool read holds its blocks: chunk 1 read, chunk 1 asked again meanwhile.
        assert_eq!(b.claim(&(1..2)), Take::Spool);
        assert_eq!(b.claim(&(1..2)), Take::Spool);
        assert_eq!(b.done(1, &(1..2), true, true), Vec::<u32>::new());
        assert_eq!(b.done(1, &(1..2), true, true), vec![1]);
        // A failed read hands nothing out and keeps the block.
        b.verify(2);
        assert_eq!(b.claim(&(2..3)), Take::Spool);
        assert_eq!(b.done(2, &(2..3), true, false), Vec::<u32>::new());
        assert_eq!(b.claim(&(2..3)), Take::Spool);
        assert_eq!(b.done(2, &(2..3), true, true), vec![2]);
    }

    #[test]
    fn missing_blocks_are_fetched_over_http_after_the_end_and_never_written_after() {
        let mut b = Board::new(2, [0..1, 0..2].into_iter());
        b.verify(0);
        assert_eq!(b.claim(&(0..2)), Take::Wait);
        b.end();
        assert_eq!(b.claim(&(0..2)), Take::Http);
        assert_eq!(b.done(1, &(0..2), false, true), Vec::<u32>::new());
        assert!(!b.wants(1), "released without ever being written");
        assert_eq!(b.claim(&(0..1)), Take::Spool);
        assert_eq!(b.done(0, &(0..1), true, true), vec![0]);
    }

    const SILENCE: Duration = Duration::from_secs(5);

    #[test]
    fn event_texts() {
        let list = BlockList::from_bytes(&[1u8; 100], 10).unwrap();
        assert_eq!(
            joined_text(&session(&list), "debian@12", 10),
            "multicast: joined session 123456789abcdef0 (239.77.0.1:5000) for debian@12, 10 blocks"
        );
        assert_eq!(
            progress_text(250, 1000, 0.0123, 412.4),
            "multicast: 250 of 1000 blocks (25%), loss 1.2%, 412 Mbit/s"
        );
        assert_eq!(
            complete_text(1000, 20.0, 1 << 30),
            "multicast: all 1000 blocks in 20.0 s (53.7 MB/s)"
        );
        assert_eq!(
            fallback_text(
                10,
                1000,
                &fallback_reason(Fallback::Told(Reason::TooSlow), None, SILENCE).unwrap()
            ),
            "multicast: falling back to unicast after 10 of 1000 blocks: the sender found this \
             node too slow; the rest comes over HTTP"
        );
        assert_eq!(
            fallback_reason(Fallback::SessionEnded, Some("ignored"), SILENCE).as_deref(),
            Some("the session ended")
        );
        assert_eq!(
            fallback_reason(Fallback::SenderLost, None, SILENCE).as_deref(),
            Some("nothing from the sender for 5 s")
        );
        assert_eq!(fallback_reason(Fallback::Abandoned, None, SILENCE), None);
        assert_eq!(
            fallback_reason(Fallback::Abandoned, Some("no announcement"), SILENCE).as_deref(),
            Some("no announcement")
        );
        let err = McastError::Fetch(ApiError::Status {
            status: 404,
            message: "no such session".into(),
        });
        assert_eq!(
            not_used_text(&err),
            "multicast: not used: fetching the block list: the appliance answered 404: no such \
             session; the whole image comes over HTTP"
        );
    }

    #[test]
    fn progress_every_five_seconds_with_loss_from_sequence_gaps() {
        let mut m = Meter::new(Duration::from_secs(1));
        // Sequence numbers 1..=100, every tenth missing.
        for seq in 1..=100u64 {
            if seq % 10 != 5 {
                m.packet(seq, 1000);
            }
        }
        assert_eq!(m.tick(Duration::from_secs(5), (1, 10)), None);
        assert_eq!(
            m.tick(Duration::from_secs(6), (5, 10)).as_deref(),
            Some("multicast: 5 of 10 blocks (50%), loss 10.0%, 0 Mbit/s")
        );
        // A fresh interval: nothing heard is no loss.
        assert_eq!(
            m.tick(Duration::from_secs(11), (5, 10)).as_deref(),
            Some("multicast: 5 of 10 blocks (50%), loss 0.0%, 0 Mbit/s")
        );
        m.packet(1, 1_250_000);
        assert_eq!(
            m.tick(Duration::from_secs(16), (10, 10)).as_deref(),
            Some("multicast: 10 of 10 blocks (100%), loss 0.0%, 2 Mbit/s")
        );
    }

    /// The sender's address on the fake network.
    const SENDER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 1),
        5000,
    ));
    const NODE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 2),
        40000,
    ));

    type Datagram = (Vec<u8>, SocketAddr);

    /// A receiver's end of an in-process network with one sender.
    pub(crate) struct ChannelLink {
        group: mpsc::Receiver<Datagram>,
        status: mpsc::Sender<Datagram>,
        pending: VecDeque<Datagram>,
    }

    impl Link for ChannelLink {
        fn recv(&mut self, each: &mut dyn FnMut(&[u8], SocketAddr)) -> io::Result<Received> {
            let mut count = 0;
            while count < BATCH {
                let Some((d, from)) = self
                    .pending
                    .pop_front()
                    .or_else(|| self.group.try_recv().ok())
                else {
                    break;
                };
                each(&d, from);
                count += 1;
            }
            Ok(Received {
                count,
                more: count == BATCH,
            })
        }

        fn wait(&mut self, timeout: Duration) -> io::Result<()> {
            if self.pending.is_empty() {
                match self.group.recv_timeout(timeout) {
                    Ok(d) => self.pending.push_back(d),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(timeout),
                }
            }
            Ok(())
        }

        fn send(&mut self, datagram: &[u8], _to: SocketAddr) {
            let _ = self.status.send((datagram.to_vec(), NODE));
        }

        fn rejoin(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn socket_drops(&self) -> u64 {
            0
        }
    }

    /// How the fake sender treats the one receiver.
    #[derive(Clone, Copy, Default)]
    pub(crate) struct Script {
        /// Datagrams sent before the receiver is there (it joins late).
        pub join_after: u64,
        /// Every n-th datagram after that is lost.
        pub lose_every: Option<u64>,
        /// Ends the session once the receiver reported this many blocks.
        pub close_after_blocks: Option<u32>,
    }

    /// A real sender state machine on a thread, sending `payload` in blocks of `block_size`
    /// at `rate_bps`, and the receiver's link to it. The thread returns the sender's events.
    pub(crate) fn fake_session(
        payload: Vec<u8>,
        block_size: u32,
        rate_bps: u64,
        script: Script,
    ) -> (BlockList, ChannelLink, JoinHandle<Vec<String>>) {
        let list = BlockList::from_bytes(&payload, block_size).unwrap();
        let layout = Layout::with_defaults(*list.geometry()).unwrap();
        let mut config = SenderConfig::new(0x1234_5678_9abc_def0, rate_bps);
        config.max_duration = Some(Duration::from_secs(60));
        let manifest = *list.manifest_hash();
        let (group_tx, group_rx) = mpsc::channel();
        let (status_tx, status_rx) = mpsc::channel::<Datagram>();
        let sender = std::thread::spawn(move || {
            let mut s = Sender::new(config, layout, manifest, payload, Instant::now());
            let mut buf = Vec::new();
            let mut sent = 0u64;
            let mut events = Vec::new();
            loop {
                let now = Instant::now();
                while let Ok((d, from)) = status_rx.try_recv() {
                    s.handle(now, &d, from);
                }
                let reported = s.receivers().map(|r| r.blocks_done).max().unwrap_or(0);
                if script.close_after_blocks.is_some_and(|n| reported >= n) {
                    s.close(now);
                }
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                while let Some(t) = s.poll_transmit(now, &mut buf) {
                    sent += 1;
                    let lost = sent <= script.join_after
                        || script.lose_every.is_some_and(|n| sent.is_multiple_of(n));
                    if !lost {
                        let _ = group_tx.send((buf[..t.len].to_vec(), SENDER));
                    }
                }
                while let Some(e) = s.poll_event() {
                    events.push(format!("{e:?}"));
                }
                if s.is_finished() {
                    return events;
                }
                let wait = s
                    .poll_timeout()
                    .map_or(Duration::from_millis(1), |t| {
                        t.saturating_duration_since(Instant::now())
                    })
                    .min(Duration::from_millis(5));
                if let Ok((d, from)) = status_rx.recv_timeout(wait) {
                    s.handle(Instant::now(), &d, from);
                }
            }
        });
        let link = ChannelLink {
            group: group_rx,
            status: status_tx,
            pending: VecDeque::new(),
        };
        (list, link, sender)
    }
}
