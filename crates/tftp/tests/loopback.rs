//! End-to-end over 127.0.0.1: `Server` on an ephemeral port, fetched by a minimal TFTP client
//! written here from the RFCs (independent of the crate's own packet code), and by curl if present.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use metalcast_tftp::{Counters, Server, TftpConfig, TftpError, TransferEvent, TransferOutcome};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
/// How long `Client::fetch` waits before sending its last packet again, and how often.
const RESEND_AFTER: Duration = Duration::from_secs(2);
const RESENDS: u32 = 5;

/// A temporary TFTP root, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "metalcast-tftp-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create root");
        Self(path)
    }

    fn write(&self, name: &str, data: &[u8]) {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, data).expect("write file");
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fixture {
    addr: SocketAddr,
    events: mpsc::Receiver<TransferEvent>,
    counters: Arc<Counters>,
    root: Root,
    server: JoinHandle<Result<(), TftpError>>,
}

impl Fixture {
    async fn start(tweak: impl FnOnce(&mut TftpConfig)) -> Self {
        let root = Root::new();
        let mut config = TftpConfig {
            root: root.path().to_path_buf(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..TftpConfig::default()
        };
        tweak(&mut config);
        let server = Server::bind(config).await.expect("bind server");
        let addr = server.local_addr();
        let counters = server.counters();
        let (tx, events) = mpsc::channel(1024);
        let server = tokio::spawn(server.run(tx));
        Self {
            addr,
            events,
            counters,
            root,
            server,
        }
    }

    async fn next_event(&mut self) -> TransferEvent {
        timeout(WAIT, self.events.recv())
            .await
            .expect("event in time")
            .expect("event channel open")
    }
}

/// Deterministic test content.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

// ---- a minimal client -------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Data(u16, Vec<u8>),
    Oack(HashMap<String, String>),
    Error(u16, String),
}

fn decode(d: &[u8]) -> Reply {
    assert!(d.len() >= 4, "short packet {d:?}");
    let op = u16::from_be_bytes([d[0], d[1]]);
    let num = u16::from_be_bytes([d[2], d[3]]);
    match op {
        3 => Reply::Data(num, d[4..].to_vec()),
        5 => Reply::Error(
            num,
            String::from_utf8_lossy(d[4..].split(|&b| b == 0).next().unwrap_or_default())
                .into_owned(),
        ),
        6 => {
            let fields: Vec<String> = d[2..]
                .split(|&b| b == 0)
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            let mut map = HashMap::new();
            for pair in fields.chunks_exact(2) {
                map.insert(pair[0].clone(), pair[1].clone());
            }
            Reply::Oack(map)
        }
        other => panic!("unexpected opcode {other}"),
    }
}

fn rrq(file: &[u8], mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(file);
    p.push(0);
    p.extend_from_slice(mode.as_bytes());
    p.push(0);
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = vec![0, 4];
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn error(code: u16, message: &str) -> Vec<u8> {
    let mut p = vec![0, 5];
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    tid: Option<SocketAddr>,
    /// Set once the client has resent a packet: a stray TID is then expected, not a server bug.
    resends_requests: bool,
}

#[derive(Debug)]
struct Fetched {
    data: Vec<u8>,
    oack: Option<HashMap<String, String>>,
}

impl Client {
    async fn new(server: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("client bind"),
            server,
            tid: None,
            resends_requests: false,
        }
    }

    async fn send_request(&self, packet: &[u8]) {
        self.socket
            .send_to(packet, self.server)
            .await
            .expect("send rrq");
    }

    async fn recv(&mut self) -> Reply {
        self.recv_within(WAIT).await.expect("reply in time")
    }

    /// The next packet, or None when nothing came within `wait`.
    async fn recv_within(&mut self, wait: Duration) -> Option<Reply> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0; 70_000];
        loop {
            let (len, from) = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.socket.recv_from(&mut buf),
            )
            .await
            .ok()?
            .expect("recv");
            // RFC 1350: the server answers from a new port (its TID) on the same address.
            assert_eq!(from.ip(), self.server.ip());
            assert_ne!(
                from.port(),
                self.server.port(),
                "reply from the listening port"
            );
            match self.tid {
                None => self.tid = Some(from),
                Some(tid) if tid == from => {}
                // A second transfer started by a resent request: turn it away (RFC 1350 §4).
                Some(_) if self.resends_requests => {
                    let refusal = error(5, "unknown transfer ID");
                    self.socket.send_to(&refusal, from).await.expect("send");
                    continue;
                }
                Some(tid) => panic!("reply from {from}, another TID than {tid}"),
            }
            return Some(decode(&buf[..len]));
        }
    }

    /// Sends `packet` (to the TID once known, else to the listening port) and waits for the
    /// answer, sending it again on silence as RFC 1350 clients do: a busy host may drop a
    /// datagram in either direction.
    async fn exchange(&mut self, packet: &[u8]) -> Reply {
        for attempt in 0..RESENDS {
            self.resends_requests |= attempt > 0;
            let to = self.tid.unwrap_or(self.server);
            self.socket.send_to(packet, to).await.expect("send");
            if let Some(reply) = self.recv_within(RESEND_AFTER).await {
                return reply;
            }
        }
        panic!("no reply after {RESENDS} sends");
    }

    async fn send(&self, packet: &[u8]) {
        let tid = self.tid.expect("tid known");
        self.socket.send_to(packet, tid).await.expect("send");
    }

    /// A whole RRQ: OACK handling, windowed receive with one ACK per window (RFC 7440).
    async fn fetch(
        &mut self,
        file: &str,
        mode: &str,
        options: &[(&str, &str)],
    ) -> Result<Fetched, (u16, String)> {
        let mut reply = self.exchange(&rrq(file.as_bytes(), mode, options)).await;
        let mut blksize = 512;
        let mut window = 1;
        let mut oack = None;
        // The last packet sent, sent again when the server falls silent.
        let mut last = Vec::new();
        if let Reply::Oack(map) = &reply {
            if let Some(b) = map.get("blksize") {
                blksize = b.parse().expect("blksize");
            }
            if let Some(w) = map.get("windowsize") {
                window = w.parse().expect("windowsize");
            }
            oack = Some(map.clone());
            last = ack(0);
            reply = self.exchange(&last).await;
        }
        let mut data = Vec::new();
        let mut expected: u16 = 1;
        let mut in_window = 0;
        loop {
            match reply {
                Reply::Data(block, bytes) if block == expected => {
                    data.extend_from_slice(&bytes);
                    in_window += 1;
                    let last_block = bytes.len() < blksize;
                    if last_block || in_window == window {
                        last = ack(block);
                        self.send(&last).await;
                        in_window = 0;
                    }
                    if last_block {
                        return Ok(Fetched { data, oack });
                    }
                    expected = expected.wrapping_add(1);
                }
                Reply::Data(..) => {
                    // Out of order: acknowledge what we have; the server resumes after it.
                    last = ack(expected.wrapping_sub(1));
                    self.send(&last).await;
                    in_window = 0;
                }
                Reply::Error(code, message) => return Err((code, message)),
                // Our ACK of the OACK was lost and the server sent the OACK again.
                Reply::Oack(_) if oack.is_some() && expected == 1 => self.send(&ack(0)).await,
                Reply::Oack(_) => panic!("unexpected OACK"),
            }
            reply = match self.recv_within(RESEND_AFTER).await {
                Some(reply) => reply,
                None => self.exchange(&last).await,
            };
        }
    }
}

async fn fetch(
    server: SocketAddr,
    file: &str,
    options: &[(&str, &str)],
) -> Result<Fetched, (u16, String)> {
    Client::new(server)
        .await
        .fetch(file, "octet", options)
        .await
}

fn completed(event: &TransferEvent) -> (u64, u16, u16) {
    match &event.outcome {
        TransferOutcome::Completed {
            bytes,
            blksize,
            windowsize,
            ..
        } => (*bytes, *blksize, *windowsize),
        other => panic!("expected completion, got {other:?}"),
    }
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test]
async fn default_options_lock_step_512() {
    let mut fx = Fixture::start(|_| {}).await;
    let data = content(5000, 1);
    fx.root.write("undionly.kpxe", &data);
    let got = fetch(fx.addr, "undionly.kpxe", &[]).await.expect("fetch");
    assert_eq!(got.oack, None);
    assert_eq!(got.data, data);
    let event = fx.next_event().await;
    assert_eq!(event.file, "undionly.kpxe");
    assert_eq!(completed(&event), (5000, 512, 1));
}

#[tokio::test]
async fn blksize_windowsize_and_tsize() {
    let mut fx = Fixture::start(|_| {}).await;
    let data = content(1_000_003, 2);
    fx.root.write("boot/ipxe.efi", &data);
    let got = fetch(
        fx.addr,
        "/boot/ipxe.efi",
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "8")],
    )
    .await
    .expect("fetch");
    let oack = got.oack.expect("oack");
    assert_eq!(oack.get("tsize").map(String::as_str), Some("1000003"));
    assert_eq!(oack.get("blksize").map(String::as_str), Some("1468"));
    assert_eq!(oack.get("windowsize").map(String::as_str), Some("8"));
    assert!(got.data == data, "content differs");
    assert_eq!(completed(&fx.next_event().await), (1_000_003, 1468, 8));
}

#[tokio::test]
async fn options_above_the_caps_get_the_caps() {
    let mut fx = Fixture::start(|c| {
        c.max_blksize = 1024;
        c.max_windowsize = 4;
    })
    .await;
    let data = content(10_000, 3);
    fx.root.write("f", &data);
    let got = fetch(fx.addr, "f", &[("blksize", "9000"), ("windowsize", "100")])
        .await
        .expect("fetch");
    let oack = got.oack.expect("oack");
    assert_eq!(oack.get("blksize").map(String::as_str), Some("1024"));
    assert_eq!(oack.get("windowsize").map(String::as_str), Some("4"));
    assert_eq!(got.data, data);
    assert_eq!(completed(&fx.next_event().await), (10_000, 1024, 4));
}

#[tokio::test]
async fn empty_file() {
    let mut fx = Fixture::start(|_| {}).await;
    fx.root.write("empty", b"");
    let got = fetch(fx.addr, "empty", &[("tsize", "0")])
        .await
        .expect("fetch");
    assert_eq!(
        got.oack.expect("oack").get("tsize").map(String::as_str),
        Some("0")
    );
    assert!(got.data.is_empty());
    assert_eq!(completed(&fx.next_event().await).0, 0);
}

#[tokio::test]
async fn exact_multiple_of_the_block_size() {
    let mut fx = Fixture::start(|_| {}).await;
    let data = content(512 * 9, 4);
    fx.root.write("exact", &data);
    let got = fetch(fx.addr, "exact", &[]).await.expect("fetch");
    assert_eq!(got.data, data);
    assert_eq!(completed(&fx.next_event().await).0, 512 * 9);
    // Same with a window, where the empty block is the tenth of its window.
    let got = fetch(fx.addr, "exact", &[("windowsize", "3")])
        .await
        .expect("fetch");
    assert_eq!(got.data, data);
    assert_eq!(completed(&fx.next_event().await), (512 * 9, 512, 3));
}

#[tokio::test]
async fn block_numbers_roll_over_past_65535() {
    let mut fx = Fixture::start(|_| {}).await;
    // blksize 8 makes 65536 blocks out of half a megabyte.
    let data = content(8 * 65_536 + 100, 5);
    fx.root.write("big", &data);
    let got = fetch(fx.addr, "big", &[("blksize", "8"), ("windowsize", "64")])
        .await
        .expect("fetch");
    assert!(got.data == data, "content differs");
    assert_eq!(
        completed(&fx.next_event().await),
        (data.len() as u64, 8, 64)
    );
}

#[tokio::test]
async fn client_error_after_oack_ends_the_transfer_at_once() {
    // With a 5 s timeout and 5 retries, a server that ignored the ERROR would report after 30 s.
    let mut fx = Fixture::start(|c| c.timeout_ms = 5000).await;
    fx.root.write("ipxe.efi", &content(100_000, 6));
    let mut client = Client::new(fx.addr).await;
    client
        .send_request(&rrq(
            b"ipxe.efi",
            "octet",
            &[("tsize", "0"), ("blksize", "1468")],
        ))
        .await;
    let Reply::Oack(oack) = client.recv().await else {
        panic!("expected OACK");
    };
    assert_eq!(oack.get("tsize").map(String::as_str), Some("100000"));
    let sent = Instant::now();
    client.send(&error(8, "tsize probe only")).await;
    let event = fx.next_event().await;
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(
        event.outcome,
        TransferOutcome::AbortedByClient {
            message: "error 8: tsize probe only".into(),
            after_bytes: 0
        }
    );
    // And it really stopped: no OACK retransmission.
    let mut buf = [0; 100];
    assert!(
        timeout(
            Duration::from_millis(300),
            client.socket.recv_from(&mut buf)
        )
        .await
        .is_err()
    );
    assert_eq!(fx.counters.snapshot().aborted_by_client, 1);
}

#[tokio::test]
async fn missing_file_is_error_1() {
    let mut fx = Fixture::start(|_| {}).await;
    let err = fetch(fx.addr, "no/such/file", &[("tsize", "0")])
        .await
        .expect_err("missing");
    assert_eq!(err.0, 1);
    let event = fx.next_event().await;
    assert!(
        matches!(event.outcome, TransferOutcome::Refused { .. }),
        "{event:?}"
    );
}

#[tokio::test]
async fn escapes_and_writes_are_access_violations() {
    let mut fx = Fixture::start(|_| {}).await;
    let outside = Root::new();
    outside.write("secret", b"top secret");
    std::os::unix::fs::symlink(outside.path().join("secret"), fx.root.path().join("link"))
        .expect("symlink");
    for name in [
        "../etc/passwd",
        "/../x",
        "a/../../x",
        "..\\..\\etc\\passwd",
        "link",
    ] {
        let err = fetch(fx.addr, name, &[]).await.expect_err(name);
        assert_eq!(err.0, 2, "{name}: {err:?}");
        let event = fx.next_event().await;
        assert_eq!(event.file, name);
        assert!(
            matches!(event.outcome, TransferOutcome::Refused { .. }),
            "{event:?}"
        );
    }
    let mut client = Client::new(fx.addr).await;
    let mut wrq = rrq(b"upload", "octet", &[]);
    wrq[1] = 2;
    client.send_request(&wrq).await;
    assert_eq!(
        client.recv().await,
        Reply::Error(2, "access violation: read-only server".into())
    );
    assert!(matches!(
        fx.next_event().await.outcome,
        TransferOutcome::Refused { .. }
    ));
}

#[tokio::test]
async fn malformed_and_stray_packets_are_counted() {
    let fx = Fixture::start(|_| {}).await;
    let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for junk in [
        &b"\x00"[..],
        b"\x00\x01no-nul",
        b"\x00\x2a\x00\x00",
        b"\x00\x05\x00\x00bye\0",
    ] {
        probe.send_to(junk, fx.addr).await.expect("send");
    }
    // An ACK on the listening port is an illegal operation (error 4), answered.
    probe.send_to(&ack(1), fx.addr).await.expect("send");
    let mut buf = [0; 100];
    let (len, _) = timeout(WAIT, probe.recv_from(&mut buf))
        .await
        .expect("reply")
        .expect("recv");
    assert!(matches!(decode(&buf[..len]), Reply::Error(4, _)));
    let snapshot = fx.counters.snapshot();
    assert_eq!(snapshot.malformed, 3);
    assert_eq!(snapshot.ignored, 1);
    assert_eq!(snapshot.refused, 1);
}

#[tokio::test]
async fn packets_from_a_wrong_tid_get_error_5_and_do_not_disturb() {
    let mut fx = Fixture::start(|_| {}).await;
    let data = content(3000, 7);
    fx.root.write("f", &data);
    let mut client = Client::new(fx.addr).await;
    client.send_request(&rrq(b"f", "octet", &[])).await;
    let first = client.recv().await;
    assert_eq!(first, Reply::Data(1, data[..512].to_vec()));
    let intruder = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    intruder
        .send_to(&ack(1), client.tid.expect("tid"))
        .await
        .expect("send");
    let mut buf = [0; 100];
    let (len, _) = timeout(WAIT, intruder.recv_from(&mut buf))
        .await
        .expect("reply")
        .expect("recv");
    assert!(matches!(decode(&buf[..len]), Reply::Error(5, _)));
    // The intruder's ACK did not advance the transfer: the client still gets block 2 only after
    // its own ACK, and the file arrives whole.
    let mut got = data[..512].to_vec();
    let mut block = 1;
    loop {
        client.send(&ack(block)).await;
        let Reply::Data(n, bytes) = client.recv().await else {
            panic!("expected data");
        };
        assert_eq!(n, block + 1);
        got.extend_from_slice(&bytes);
        block = n;
        if bytes.len() < 512 {
            client.send(&ack(block)).await;
            break;
        }
    }
    assert_eq!(got, data);
    assert_eq!(completed(&fx.next_event().await).0, 3000);
    assert_eq!(fx.counters.snapshot().wrong_tid, 1);
}

#[tokio::test]
async fn client_timeout_option_drives_retransmission() {
    // Server default is 10 s; the client asks for 1 s and ignores the first DATA.
    let mut fx = Fixture::start(|c| c.timeout_ms = 10_000).await;
    fx.root.write("f", &content(100, 8));
    let mut client = Client::new(fx.addr).await;
    client
        .send_request(&rrq(b"f", "octet", &[("timeout", "1")]))
        .await;
    assert!(matches!(client.recv().await, Reply::Oack(_)));
    client.send(&ack(0)).await;
    let start = Instant::now();
    assert!(matches!(client.recv().await, Reply::Data(1, _)));
    assert!(matches!(client.recv().await, Reply::Data(1, _)));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    client.send(&ack(1)).await;
    assert_eq!(completed(&fx.next_event().await).0, 100);
}

#[tokio::test]
async fn silent_client_is_abandoned_after_the_retries() {
    let mut fx = Fixture::start(|c| {
        c.timeout_ms = 100;
        c.retries = 2;
    })
    .await;
    fx.root.write("f", &content(2000, 9));
    let mut client = Client::new(fx.addr).await;
    client.send_request(&rrq(b"f", "octet", &[])).await;
    for _ in 0..3 {
        assert!(matches!(client.recv().await, Reply::Data(1, _)));
    }
    assert!(matches!(client.recv().await, Reply::Error(0, _)));
    let event = fx.next_event().await;
    assert!(
        matches!(&event.outcome, TransferOutcome::Failed { reason } if reason.contains("timed out")),
        "{event:?}"
    );
    assert_eq!(fx.counters.snapshot().failed, 1);
}

#[tokio::test]
async fn requests_beyond_max_transfers_are_told_busy_until_a_slot_frees() {
    // A 10 s timeout: the held transfers stay open until their clients end them.
    let mut fx = Fixture::start(|c| {
        c.timeout_ms = 10_000;
        c.max_transfers = 2;
    })
    .await;
    fx.root.write("f", &content(5000, 11));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = Client::new(fx.addr).await;
        client.send_request(&rrq(b"f", "octet", &[])).await;
        assert!(matches!(client.recv().await, Reply::Data(1, _)));
        held.push(client);
    }
    let mut third = Client::new(fx.addr).await;
    third.send_request(&rrq(b"f", "octet", &[])).await;
    assert_eq!(third.recv().await, Reply::Error(0, "server busy".into()));
    let event = fx.next_event().await;
    assert!(
        matches!(&event.outcome, TransferOutcome::Refused { reason }
            if reason.contains("all 2 transfer slots in use")),
        "{event:?}"
    );
    assert_eq!(fx.counters.snapshot().refused, 1);

    // One held client gives up: its slot is free again and the next request is served.
    held[0].send(&error(0, "done")).await;
    assert!(matches!(
        fx.next_event().await.outcome,
        TransferOutcome::AbortedByClient { .. }
    ));
    let got = fetch(fx.addr, "f", &[])
        .await
        .expect("served after a slot freed");
    assert_eq!(got.data, content(5000, 11));
}

#[tokio::test]
async fn stopping_the_server_ends_transfers_in_flight() {
    // A 10 s timeout: an ERROR sooner than that comes from the stop, not from retries.
    let mut fx = Fixture::start(|c| c.timeout_ms = 10_000).await;
    fx.root.write("f", &content(5000, 10));
    let mut client = Client::new(fx.addr).await;
    client.send_request(&rrq(b"f", "octet", &[])).await;
    assert!(matches!(client.recv().await, Reply::Data(1, _)));
    let stopped = Instant::now();
    fx.server.abort();
    assert_eq!(
        client.recv().await,
        Reply::Error(0, "server shutting down".into())
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    let event = fx.next_event().await;
    assert!(
        matches!(&event.outcome, TransferOutcome::Failed { reason } if reason.contains("stopped")),
        "{event:?}"
    );
    // Nothing listens any more.
    let late = Client::new(fx.addr).await;
    late.send_request(&rrq(b"f", "octet", &[])).await;
    let mut buf = [0; 100];
    assert!(
        timeout(Duration::from_millis(300), late.socket.recv_from(&mut buf))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn netascii_mode_translates_line_ends() {
    let mut fx = Fixture::start(|_| {}).await;
    fx.root.write("motd", b"line one\nline two\r\nbare\rend");
    let got = Client::new(fx.addr)
        .await
        .fetch("motd", "netascii", &[("tsize", "0")])
        .await
        .expect("fetch");
    let expected = b"line one\r\nline two\r\0\r\nbare\r\0end";
    assert_eq!(got.data, expected);
    assert_eq!(
        got.oack.expect("oack").get("tsize"),
        Some(&expected.len().to_string())
    );
    assert_eq!(completed(&fx.next_event().await).0, expected.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_transfers() {
    let mut fx = Fixture::start(|_| {}).await;
    let data = Arc::new(content(64 * 1024 + 7, 10));
    fx.root.write("shared.bin", &data);
    let clients: Vec<_> = (0..300)
        .map(|i| {
            let addr = fx.addr;
            let data = Arc::clone(&data);
            tokio::spawn(async move {
                let options: &[(&str, &str)] = if i % 2 == 0 {
                    &[("blksize", "1468"), ("windowsize", "4")]
                } else {
                    &[("blksize", "1468")]
                };
                let got = fetch(addr, "shared.bin", options).await.expect("fetch");
                assert!(got.data == *data, "client {i}: content differs");
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client task");
    }
    // A client that resent its request turns the second transfer away with ERROR 5; every
    // client's own transfer completes.
    let mut done = 0;
    while done < 300 {
        match fx.next_event().await.outcome {
            TransferOutcome::AbortedByClient { message, .. }
                if message == "unknown transfer ID" => {}
            other => {
                assert!(
                    matches!(other, TransferOutcome::Completed { bytes, .. } if bytes == data.len() as u64),
                    "{other:?}"
                );
                done += 1;
            }
        }
    }
    assert_eq!(fx.counters.snapshot().completed, 300);
}

#[tokio::test]
async fn curl_fetches_the_same_bytes() {
    let Ok(version) = tokio::process::Command::new("curl")
        .arg("--version")
        .output()
        .await
    else {
        eprintln!("note: curl is not installed; skipping the curl interoperability test");
        return;
    };
    if !String::from_utf8_lossy(&version.stdout).contains("tftp") {
        eprintln!("note: this curl has no tftp support; skipping the curl interoperability test");
        return;
    }
    let mut fx = Fixture::start(|_| {}).await;
    let data = content(3 * 1024 * 1024 + 123, 11);
    fx.root.write("ipxe.efi", &data);
    let out = fx.root.path().join("curl-out");
    let status = tokio::process::Command::new("curl")
        .arg("-s")
        .arg(format!("tftp://127.0.0.1:{}/ipxe.efi", fx.addr.port()))
        .args(["--tftp-blksize", "1468", "-o"])
        .arg(&out)
        .status()
        .await
        .expect("run curl");
    assert!(status.success(), "curl failed: {status}");
    assert!(
        std::fs::read(&out).expect("read curl output") == data,
        "content differs"
    );
    assert_eq!(
        completed(&fx.next_event().await),
        (data.len() as u64, 1468, 1)
    );
}
