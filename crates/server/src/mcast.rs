//! Multicast sessions (docs/multicast.md): one image version sent to a set of nodes at once.
//!
//! A session is created by an admin or, when configured, when enough nodes want the same
//! version; its sender starts when the first member asks for its plan, so nothing is sent
//! into an empty network while the machines are still booting. The payload is the version's
//! stored stream (its chunk files concatenated in manifest order), cut into blocks whose
//! hashes the members fetch over the authenticated API. Sender events become node events; the
//! sender's view of every receiver is the session status `metalcast mcast status` shows.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metalcast_image::Store;
use metalcast_mcast::drive::{self, SendLoop};
use metalcast_mcast::sender::{self, PeerState, Sender, SenderConfig};
use metalcast_mcast::udp::{Interface, McastSocket};
use metalcast_mcast::{BlockList, Layout, Reason, Source};
use metalcast_proto::image::{Digest, Manifest, SignedManifest};
use metalcast_proto::mcast::{ManifestHash, McastSession, SessionId};
use metalcast_proto::{
    Event, Level, MacAddr, McastMember, McastSessionStatus, McastState, MemberState, Phase,
};
use tokio::sync::mpsc;

use crate::http::now_ms;

/// Block size of product sessions: the protocol's default.
const BLOCK_SIZE: u32 = 1 << 20;
/// How often a receiving member's progress is recorded as an event (the status shown by the
/// API is refreshed every second).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `[mcast]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McastSettings {
    /// The interface sessions are sent on.
    pub interface: String,
    /// Sessions get groups `group_base + 1`, `+ 2`, … (wrapping inside its /16).
    pub group_base: Ipv4Addr,
    pub port: u16,
    /// Rate ceiling on the wire, bits/s, unless a session names its own.
    pub rate_ceiling: u64,
    /// A session ends after this, sending incomplete members to unicast.
    pub max_duration: Duration,
    /// A member not done this long after it joined is sent to unicast.
    pub member_deadline: Duration,
    /// Automatic sessions: when at least this many nodes in state `provisioning` want one
    /// image version, the first of them to ask for its plan opens a session for all of them.
    /// 0 turns automatic sessions off.
    pub auto_min_nodes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum McastError {
    #[error("multicast is not configured: add an [mcast] section to the appliance config")]
    NotConfigured,
    #[error("a session needs at least one node")]
    NoMembers,
    #[error("image {0} has no chunks to send")]
    Empty(String),
    #[error("reading the stored stream of {image}")]
    Read {
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cutting {image} into multicast blocks: {reason}")]
    Blocks { image: String, reason: String },
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("settings", &self.settings)
            .field(
                "sessions",
                &self.inner.try_lock().map(|i| i.sessions.len()).ok(),
            )
            .finish()
    }
}

/// Every session the appliance has run since it started, oldest first.
pub struct Sessions {
    settings: Option<McastSettings>,
    inner: Mutex<Inner>,
    /// Node events from the sender threads, written by a task of the HTTP runtime.
    events: mpsc::UnboundedSender<Event>,
    /// Held while deciding on and opening an automatic session, so that nodes asking at the
    /// same moment open one session, not several.
    pub auto: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    sessions: Vec<Session>,
    groups_used: u32,
}

struct Session {
    status: McastSessionStatus,
    manifest: Arc<Manifest>,
    manifest_id: Digest,
    blocks: Arc<BlockList>,
    stop: Arc<AtomicBool>,
    started: bool,
}

impl Sessions {
    /// Sessions whose node events go into `store`, written by a task on the current runtime.
    pub fn start(settings: Option<McastSettings>, store: crate::store::Store) -> Arc<Sessions> {
        let (events, mut rx) = mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Err(e) = store.add_event(&event).await {
                    tracing::warn!(error = %e, mac = %event.mac, "a multicast event was not stored");
                }
            }
        });
        Arc::new(Sessions {
            settings,
            inner: Mutex::new(Inner::default()),
            events,
            auto: tokio::sync::Mutex::new(()),
        })
    }

    pub fn settings(&self) -> Option<&McastSettings> {
        self.settings.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking sender thread must not take the API down with it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session of `signed` for `members`. Reads and hashes the whole stored stream:
    /// call it off the async threads.
    pub fn create(
        &self,
        store: &Store,
        signed: &SignedManifest,
        members: &[MacAddr],
        rate_ceiling: Option<u64>,
    ) -> Result<McastSessionStatus, McastError> {
        let settings = self.settings.as_ref().ok_or(McastError::NotConfigured)?;
        if members.is_empty() {
            return Err(McastError::NoMembers);
        }
        let manifest = &signed.manifest;
        let image = format!("{}@{}", manifest.name, manifest.version);
        if manifest.chunks.is_empty() {
            return Err(McastError::Empty(image));
        }
        let stream = StoredStream::new(store, manifest).map_err(|source| McastError::Read {
            image: image.clone(),
            source,
        })?;
        let blocks =
            BlockList::from_reader(stream, BLOCK_SIZE).map_err(|e| McastError::Blocks {
                image: image.clone(),
                reason: e.to_string(),
            })?;
        let id = SessionId(new_session_id());
        let mut inner = self.lock();
        inner.groups_used = inner.groups_used % 0xfffe + 1;
        let group = SocketAddrV4::new(
            group_address(settings.group_base, inner.groups_used),
            settings.port,
        );
        let total = blocks.geometry().block_count();
        let mut unique = members.to_vec();
        unique.sort();
        unique.dedup();
        let status = McastSessionStatus {
            session: McastSession {
                id,
                group,
                manifest_hash: ManifestHash(*blocks.manifest_hash()),
                length: blocks.geometry().length(),
                block_size: BLOCK_SIZE,
                block_list: format!("{}/mcast/sessions/{id}/blocks", metalcast_proto::API_PREFIX),
            },
            image,
            state: McastState::Sending,
            started_ms: now_ms(),
            rate_bps: 0,
            ceiling_bps: rate_ceiling.unwrap_or(settings.rate_ceiling),
            passes: 0,
            members: unique.iter().map(|&mac| waiting(mac, total)).collect(),
        };
        tracing::info!(session = %id, %group, image = %status.image, members = unique.len(),
            blocks = total, "multicast session opened");
        inner.sessions.push(Session {
            status: status.clone(),
            manifest: Arc::new(manifest.clone()),
            manifest_id: signed.id,
            blocks: Arc::new(blocks),
            stop: Arc::new(AtomicBool::new(false)),
            started: false,
        });
        Ok(status)
    }

    pub fn list(&self) -> Vec<McastSessionStatus> {
        self.lock()
            .sessions
            .iter()
            .map(|s| s.status.clone())
            .collect()
    }

    pub fn get(&self, id: SessionId) -> Option<McastSessionStatus> {
        self.lock()
            .sessions
            .iter()
            .find(|s| s.status.session.id == id)
            .map(|s| s.status.clone())
    }

    /// Stops a sending session (its incomplete members go unicast); false if there is none.
    pub fn stop(&self, id: SessionId) -> bool {
        let mut inner = self.lock();
        let Some(s) = inner
            .sessions
            .iter_mut()
            .find(|s| s.status.session.id == id && s.status.state == McastState::Sending)
        else {
            return false;
        };
        s.stop.store(true, Ordering::Relaxed);
        if !s.started {
            // No sender thread to notice: nobody ever joined.
            s.status.state = McastState::Stopped;
        }
        true
    }

    /// The block list of session `id` in its text form, and its members.
    pub fn block_list(&self, id: SessionId) -> Option<(String, Vec<MacAddr>)> {
        let inner = self.lock();
        let s = inner.sessions.iter().find(|s| s.status.session.id == id)?;
        let members = s.status.members.iter().map(|m| m.mac).collect();
        Some((s.blocks.to_text(), members))
    }

    /// The sending session that `mac` is a member of for `manifest_id`, starting its sender
    /// if it has not started yet.
    pub fn join(
        self: &Arc<Self>,
        mac: MacAddr,
        manifest_id: &Digest,
        store: &Arc<Store>,
    ) -> Option<McastSession> {
        let settings = self.settings.clone()?;
        let mut inner = self.lock();
        let s = inner.sessions.iter_mut().rev().find(|s| {
            s.status.state == McastState::Sending
                && &s.manifest_id == manifest_id
                && s.status.members.iter().any(|m| m.mac == mac)
        })?;
        if !s.started {
            s.started = true;
            let run = SenderRun {
                sessions: Arc::clone(self),
                id: s.status.session.id,
                group: s.status.session.group,
                interface: settings.interface.clone(),
                config: sender_config(&settings, &s.status),
                manifest: Arc::clone(&s.manifest),
                blocks: Arc::clone(&s.blocks),
                store: Arc::clone(store),
                stop: Arc::clone(&s.stop),
            };
            let spawned = std::thread::Builder::new()
                .name("mcast-sender".into())
                .spawn(move || run.run());
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a multicast sender thread");
                s.status.state = McastState::Stopped;
                return None;
            }
        }
        Some(s.status.session.clone())
    }

    /// Whether an automatic session should be opened for `wanting` (the nodes in state
    /// `provisioning` that want this version): configured, enough of them, and none of them
    /// already in a sending session for it.
    pub fn wants_auto_session(&self, manifest_id: &Digest, wanting: &[MacAddr]) -> bool {
        let Some(settings) = &self.settings else {
            return false;
        };
        if settings.auto_min_nodes == 0 || wanting.len() < settings.auto_min_nodes {
            return false;
        }
        let inner = self.lock();
        !inner.sessions.iter().any(|s| {
            s.status.state == McastState::Sending
                && &s.manifest_id == manifest_id
                && s.status.members.iter().any(|m| wanting.contains(&m.mac))
        })
    }

    fn update(&self, id: SessionId, f: impl FnOnce(&mut McastSessionStatus)) {
        let mut inner = self.lock();
        if let Some(s) = inner
            .sessions
            .iter_mut()
            .find(|s| s.status.session.id == id)
        {
            f(&mut s.status);
        }
    }

    fn event(&self, mac: MacAddr, level: Level, message: String) {
        let event = Event {
            mac,
            phase: Phase::Image,
            level,
            message,
            at_ms: now_ms(),
        };
        // Closed only while the appliance shuts down.
        let _ = self.events.send(event);
    }
}

fn waiting(mac: MacAddr, total: u32) -> McastMember {
    McastMember {
        mac,
        state: MemberState::Waiting,
        blocks_done: 0,
        blocks_total: total,
        loss_ppm: 0,
        rate_kbps: 0,
        reason: None,
    }
}

/// The `n`th group after `base`, inside `base`'s /16.
fn group_address(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    let base = u32::from(base);
    Ipv4Addr::from((base & 0xffff_0000) | (base.wrapping_add(n) & 0xffff))
}

fn new_session_id() -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        // getrandom failing leaves zeros, which the loop refuses: try the clock then.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos());
            bytes = (nanos as u64).to_be_bytes();
        }
        let id = u64::from_be_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

fn sender_config(settings: &McastSettings, status: &McastSessionStatus) -> SenderConfig {
    let mut config = SenderConfig::new(status.session.id.0, status.ceiling_bps);
    config.expected_receivers = status.members.len();
    config.max_duration = Some(settings.max_duration);
    config.deadline = settings.member_deadline;
    config
}

/// One session's sender, on its own thread.
struct SenderRun {
    sessions: Arc<Sessions>,
    id: SessionId,
    group: SocketAddrV4,
    interface: String,
    config: SenderConfig,
    manifest: Arc<Manifest>,
    blocks: Arc<BlockList>,
    store: Arc<Store>,
    stop: Arc<AtomicBool>,
}

impl SenderRun {
    fn run(self) {
        let id = self.id;
        let outcome = self.send();
        let stopped = self.stop.load(Ordering::Relaxed);
        self.sessions.update(id, |status| {
            status.state = if outcome.is_ok() && !stopped {
                McastState::Done
            } else {
                McastState::Stopped
            };
            status.rate_bps = 0;
            for m in &mut status.members {
                if matches!(m.state, MemberState::Waiting | MemberState::Receiving) {
                    m.state = MemberState::Unicast;
                    m.reason = Some("session ended".into());
                }
            }
        });
        match outcome {
            Ok(()) => tracing::info!(session = %id, "multicast session ended"),
            Err(e) => tracing::error!(session = %id, error = %e, "multicast session failed"),
        }
    }

    fn send(&self) -> io::Result<()> {
        let iface = Interface::by_name(&self.interface).map_err(io::Error::other)?;
        let socket = McastSocket::sender(&iface, self.group, 0).map_err(io::Error::other)?;
        let layout = Layout::with_defaults(*self.blocks.geometry())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let source = StoredStream::new(&self.store, &self.manifest)?;
        let mut sender = Sender::new(
            self.config.clone(),
            layout,
            *self.blocks.manifest_hash(),
            source,
            Instant::now(),
        );
        let mut next_event = Instant::now() + PROGRESS_EVERY;
        drive::run_sender(
            &mut sender,
            &socket,
            SendLoop::default(),
            &self.stop,
            |sender, event| self.on_event(sender, event),
            |sender| {
                let record = Instant::now() >= next_event;
                if record {
                    next_event = Instant::now() + PROGRESS_EVERY;
                }
                self.progress(sender, record);
            },
        )?;
        self.progress(&sender, false);
        Ok(())
    }

    fn on_event(&self, sender: &Sender<StoredStream>, event: sender::Event) {
        let sessions = &self.sessions;
        let node = |id: u64| MacAddr::from_u64(id);
        let total = self.blocks.geometry().block_count();
        match event {
            sender::Event::ReceiverJoined { id, addr } => {
                if let Some(mac) = node(id) {
                    sessions.event(
                        mac,
                        Level::Info,
                        format!("multicast: joined session {} from {addr}", self.id),
                    );
                }
            }
            sender::Event::ReceiverDone { id } => {
                if let Some(mac) = node(id) {
                    sessions.event(
                        mac,
                        Level::Info,
                        format!(
                            "multicast: all {total} blocks of session {} received",
                            self.id
                        ),
                    );
                }
            }
            sender::Event::GoUnicast { id, reason, .. } => {
                if let Some(mac) = node(id) {
                    sessions.event(
                        mac,
                        Level::Warn,
                        format!(
                            "multicast: sent to unicast by session {}: {}",
                            self.id,
                            reason_text(reason)
                        ),
                    );
                    sessions.update(self.id, |s| {
                        if let Some(m) = s.members.iter_mut().find(|m| m.mac == mac) {
                            m.state = MemberState::Unicast;
                            m.reason = Some(reason_text(reason).to_string());
                        }
                    });
                }
            }
            sender::Event::Slowed { rate, receiver } => {
                tracing::info!(session = %self.id, rate, receiver = ?node(receiver),
                    "multicast: slowed for an overloaded receiver");
            }
            sender::Event::SourceFailed(e) => {
                tracing::error!(session = %self.id, error = %e, "multicast: reading the stored stream failed");
            }
            sender::Event::ReceiverLeft { .. } | sender::Event::Finished => {}
        }
        self.progress(sender, false);
    }

    /// Copies the sender's view of every member into the session status; with `record`, also
    /// a progress event per member still receiving.
    fn progress(&self, sender: &Sender<StoredStream>, record: bool) {
        let infos: HashMap<MacAddr, sender::ReceiverInfo> = sender
            .receivers()
            .filter_map(|r| MacAddr::from_u64(r.id).map(|mac| (mac, *r)))
            .collect();
        let stats = *sender.stats();
        let rate = sender.rate();
        let mut receiving = Vec::new();
        self.sessions.update(self.id, |status| {
            status.rate_bps = rate;
            status.passes = u64::from(stats.passes);
            for m in &mut status.members {
                let Some(info) = infos.get(&m.mac) else {
                    continue;
                };
                m.blocks_done = info.blocks_done;
                m.loss_ppm = (info.loss * 1e6) as u32;
                m.rate_kbps = u32::try_from(info.rx_rate / 1000).unwrap_or(u32::MAX);
                m.state = match (info.state, m.state) {
                    (_, MemberState::Unicast) | (PeerState::Unicast, _) => MemberState::Unicast,
                    (PeerState::Done, _) => MemberState::Done,
                    (PeerState::Active | PeerState::Left, _) => MemberState::Receiving,
                };
                if record && m.state == MemberState::Receiving {
                    receiving.push(m.clone());
                }
            }
        });
        for m in receiving {
            self.sessions.event(m.mac, Level::Info, member_line(&m));
        }
    }
}

fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::TooSlow => "too slow for the session",
        Reason::Deadline => "not done by its deadline",
        Reason::SessionEnded => "the session ended",
        Reason::SenderFailed => "the sender failed",
        Reason::None => "no reason given",
    }
}

/// `multicast: 412 of 700 blocks (58%), loss 4.9%, 180.2 Mbit/s`
pub fn member_line(m: &McastMember) -> String {
    let percent = if m.blocks_total == 0 {
        100.0
    } else {
        f64::from(m.blocks_done) * 100.0 / f64::from(m.blocks_total)
    };
    format!(
        "multicast: {} of {} blocks ({percent:.0}%), loss {:.1}%, {:.1} Mbit/s",
        m.blocks_done,
        m.blocks_total,
        f64::from(m.loss_ppm) / 1e4,
        f64::from(m.rate_kbps) / 1e3
    )
}

/// A version's stored stream: its chunk files as stored, concatenated in manifest order.
/// Read front to back to hash it, or at any offset to send it. Chunk files are opened as
/// reads reach them, one at a time: an image has thousands, more than a service's default
/// limit of open files.
pub struct StoredStream {
    paths: Vec<PathBuf>,
    /// Start of each chunk in the stream, and the stream's length at the end.
    starts: Vec<u64>,
    /// The chunk file last read, kept open: reads mostly continue where the last one ended.
    open: Option<(usize, File)>,
    /// Sequential reading position.
    at: u64,
}

impl StoredStream {
    /// Checks that every chunk file of `manifest` is there with its stored length (a chunk
    /// used twice appears once per use, which keeps the offsets trivial).
    pub fn new(store: &Store, manifest: &Manifest) -> io::Result<StoredStream> {
        let mut paths = Vec::with_capacity(manifest.chunks.len());
        for chunk in &manifest.chunks {
            let path = store.chunk_path(&chunk.hash);
            let len = std::fs::metadata(&path)?.len();
            if len != chunk.stored_len {
                return Err(io::Error::other(format!(
                    "chunk {} is {len} bytes on disk, the manifest says {}",
                    chunk.hash, chunk.stored_len
                )));
            }
            paths.push(path);
        }
        let mut starts = manifest.stored_offsets();
        starts.push(manifest.stored_size());
        Ok(StoredStream {
            paths,
            starts,
            open: None,
            at: 0,
        })
    }

    fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// The file of chunk `index`, opening it (and closing the previous one) if need be.
    fn file(&mut self, index: usize) -> io::Result<&File> {
        if self.open.as_ref().is_none_or(|(i, _)| *i != index) {
            let path = self.paths.get(index).ok_or(io::ErrorKind::UnexpectedEof)?;
            self.open = Some((index, File::open(path)?));
        }
        match &self.open {
            Some((_, file)) => Ok(file),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Fills `buf` from `offset`, across as many chunk files as it spans.
    fn fill(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // The chunk holding `offset`: the last start at or before it.
        let mut index = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (Some(&start), Some(&next)) = (self.starts.get(index), self.starts.get(index + 1))
            else {
                return Err(io::ErrorKind::UnexpectedEof.into());
            };
            let take = usize::try_from((next - pos).min((buf.len() - done) as u64))
                .map_err(io::Error::other)?;
            self.file(index)?
                .read_exact_at(&mut buf[done..done + take], pos - start)?;
            done += take;
            index += 1;
        }
        Ok(())
    }
}

impl Source for StoredStream {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.fill(offset, buf)
    }
}

impl Read for StoredStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from((self.len() - self.at).min(buf.len() as u64))
            .map_err(io::Error::other)?;
        self.fill(self.at, &mut buf[..n])?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_stream_reads_across_chunk_files_in_order_and_at_any_offset() {
        use metalcast_proto::image::{ChunkRef, Digest, FORMAT_VERSION, OsFamily};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let parts: Vec<Vec<u8>> = (1..=3u32)
            .map(|n| (0..5000 * n).map(|i| (i * n % 251) as u8).collect())
            .collect();
        let mut chunks = Vec::new();
        let mut expected = Vec::new();
        // The second part twice: a repeated chunk appears once per use.
        for p in [&parts[0], &parts[1], &parts[2], &parts[1]] {
            let hash = Digest(*blake3::hash(p).as_bytes());
            let stored = zstd::bulk::compress(p, 3).unwrap();
            store.put(&hash, &stored).unwrap();
            chunks.push(ChunkRef {
                hash,
                offset: 0,
                len: p.len() as u64,
                stored_len: stored.len() as u64,
                entry_start: 0,
            });
            expected.extend_from_slice(&stored);
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            name: "t".into(),
            version: "1".into(),
            parent: None,
            created_ms: 0,
            os_family: OsFamily::Debian,
            kernel: None,
            initrd: None,
            size: 0,
            chunking: metalcast_image::DEFAULT_CHUNKING,
            chunks,
        };
        let mut stream = StoredStream::new(&store, &manifest).unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        assert_eq!(all, expected);
        for (offset, len) in [(0, expected.len()), (7, 100), (expected.len() - 33, 33)] {
            let mut buf = vec![0; len];
            stream.read_at(offset as u64, &mut buf).unwrap();
            assert_eq!(buf, expected[offset..offset + len], "{offset}+{len}");
        }
        let mut past = [0; 2];
        assert!(
            stream
                .read_at(expected.len() as u64 - 1, &mut past)
                .is_err()
        );
    }

    #[test]
    fn groups_stay_inside_the_base_slash_16() {
        let base = Ipv4Addr::new(239, 77, 0, 0);
        assert_eq!(group_address(base, 1), Ipv4Addr::new(239, 77, 0, 1));
        assert_eq!(group_address(base, 0x1ff), Ipv4Addr::new(239, 77, 1, 255));
        assert_eq!(
            group_address(Ipv4Addr::new(239, 77, 255, 255), 2),
            Ipv4Addr::new(239, 77, 0, 1)
        );
    }

    #[test]
    fn member_lines_read_as_progress() {
        let mut m = waiting("52:54:00:00:00:01".parse().unwrap(), 700);
        m.blocks_done = 412;
        m.loss_ppm = 49_000;
        m.rate_kbps = 180_200;
        assert_eq!(
            member_line(&m),
            "multicast: 412 of 700 blocks (59%), loss 4.9%, 180.2 Mbit/s"
        );
    }
}
