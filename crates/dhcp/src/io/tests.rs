//! `run` over real sockets: a server and a client in two network namespaces joined by a
//! veth pair, created for the test and deleted in `Drop`. Needs root; skipped otherwise.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dhcproto::v4::{Message, MessageType};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::testutil::{Pkt, boot_file, decode, mac};
use crate::{CLIENT_PORT, DhcpConfig, Lease};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);

/// Two namespaces, "server" and "client", with one veth between them.
struct Netns {
    server: String,
    client: String,
    server_if: String,
    client_if: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

impl Netns {
    fn new() -> Option<Netns> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: creating network namespaces needs root");
            return None;
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns {
            server: format!("mcdhcp-s-{tag}"),
            client: format!("mcdhcp-c-{tag}"),
            server_if: format!("md{tag}s"),
            client_if: format!("md{tag}c"),
        };
        ip(&["netns", "add", &ns.server]);
        ip(&["netns", "add", &ns.client]);
        ip(&[
            "link",
            "add",
            &ns.server_if,
            "netns",
            &ns.server,
            "type",
            "veth",
            "peer",
            "name",
            &ns.client_if,
            "netns",
            &ns.client,
        ]);
        let server_addr = format!("{SERVER_IP}/24");
        let client_addr = format!("{CLIENT_IP}/24");
        ip(&[
            "-n",
            &ns.server,
            "addr",
            "add",
            &server_addr,
            "dev",
            &ns.server_if,
        ]);
        ip(&[
            "-n",
            &ns.client,
            "addr",
            "add",
            &client_addr,
            "dev",
            &ns.client_if,
        ]);
        ip(&["-n", &ns.server, "link", "set", &ns.server_if, "up"]);
        ip(&["-n", &ns.client, "link", "set", &ns.client_if, "up"]);
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.server, &self.client] {
            // Deleting the namespace deletes the veth end inside it.
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Moves the calling thread into namespace `name`.
fn enter(name: &str) {
    let fd = File::open(format!("/var/run/netns/{name}")).expect("opening the namespace");
    setns(&fd, CloneFlags::CLONE_NEWNET).expect("entering the namespace");
}

struct Running {
    thread: JoinHandle<Result<(), DhcpError>>,
    notices: mpsc::Receiver<Notice>,
    control: mpsc::Sender<Control>,
}

fn start(ns: &Netns, toml: &str) -> Running {
    let mut config: DhcpConfig = toml::from_str(toml).unwrap();
    config.interfaces = vec![ns.server_if.clone()];
    let server = Server::new(config, 8080, Vec::new()).unwrap();
    let (notice_tx, notices) = mpsc::channel(64);
    let (control, control_rx) = mpsc::channel(4);
    let name = ns.server.clone();
    let thread = std::thread::spawn(move || {
        enter(&name);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(server, notice_tx, control_rx))
    });
    Running {
        thread,
        notices,
        control,
    }
}

impl Running {
    fn lease_for_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
        let (tx, rx) = oneshot::channel();
        self.control
            .blocking_send(Control::LeaseForIp(ip, tx))
            .unwrap();
        rx.blocking_recv().unwrap()
    }

    fn stop(self) -> (Counters, Vec<Notice>) {
        let (tx, rx) = oneshot::channel();
        self.control.blocking_send(Control::Counters(tx)).unwrap();
        let counters = rx.blocking_recv().unwrap();
        drop(self.control);
        self.thread.join().unwrap().unwrap();
        let mut notices = self.notices;
        let mut all = Vec::new();
        while let Ok(n) = notices.try_recv() {
            all.push(n);
        }
        (counters, all)
    }
}

/// A client socket in the client namespace, on `port`.
fn client_socket(ns: &Netns, port: u16) -> StdUdpSocket {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.set_broadcast(true).unwrap();
    sock.bind_device(Some(ns.client_if.as_bytes())).unwrap();
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock.into()
}

/// Sends `data` to `to` until a reply of type `want` arrives (the server may still be
/// binding), for at most five seconds.
fn exchange(
    sock: &StdUdpSocket,
    data: &[u8],
    to: SocketAddrV4,
    want: MessageType,
) -> (Message, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        sock.send_to(data, to).unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let m = decode(&buf[..n]);
            if m.opts().msg_type() == Some(want) {
                return (m, from);
            }
        }
    }
    panic!("no {want:?} within five seconds");
}

const AUTHORITATIVE: &str = r#"
    [[pools]]
    subnet = "10.231.0.0/24"
    range = ["10.231.0.100", "10.231.0.110"]
"#;

#[test]
fn dora_over_a_veth_between_namespaces() {
    let Some(ns) = Netns::new() else { return };
    let running = start(&ns, AUTHORITATIVE);
    let client_ns = ns.client.clone();
    let client = std::thread::scope(|s| {
        s.spawn(|| {
            enter(&client_ns);
            let sock = client_socket(&ns, CLIENT_PORT);
            let everyone = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
            let discover = Pkt::discover(mac(1)).pxe().arch(0).build();
            let (offer, from) = exchange(&sock, &discover, everyone, MessageType::Offer);
            let request = Pkt::request(mac(1))
                .pxe()
                .arch(0)
                .server_id(SERVER_IP.octets())
                .requested(offer.yiaddr().octets())
                .build();
            let (ack, _) = exchange(&sock, &request, everyone, MessageType::Ack);
            (offer, from, ack)
        })
        .join()
        .unwrap()
    });
    let (offer, from, ack) = client;
    assert_eq!(
        from,
        SocketAddr::V4(SocketAddrV4::new(SERVER_IP, SERVER_PORT))
    );
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 231, 0, 100));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    assert_eq!(boot_file(&ack).as_deref(), Some("undionly.kpxe"));

    assert_eq!(
        running.lease_for_ip(offer.yiaddr()).map(|l| l.mac),
        Some(mac(1))
    );
    assert_eq!(running.lease_for_ip(CLIENT_IP), None);
    let (counters, notices) = running.stop();
    assert!(counters.replied >= 2, "{counters:?}");
    assert_eq!(counters.notices_dropped, 0);
    assert!(notices.iter().any(|n| matches!(n,
        Notice::Lease(LeaseChange::Bound(l)) if l.mac == mac(1) && l.ip == offer.yiaddr())));
    assert!(notices.iter().any(|n| matches!(n,
        Notice::Seen(s) if s.message.starts_with("DHCPACK 10.231.0.100 to PXE (bios)"))));
}

#[test]
fn proxy_answers_on_port_4011_over_a_veth() {
    let Some(ns) = Netns::new() else { return };
    let running = start(&ns, "mode = \"proxy\"");
    let client_ns = ns.client.clone();
    let (offer, ack, from) = std::thread::scope(|s| {
        s.spawn(|| {
            enter(&client_ns);
            let sock = client_socket(&ns, CLIENT_PORT);
            let everyone = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
            let (offer, _) = exchange(
                &sock,
                &Pkt::discover(mac(2)).pxe().arch(7).build(),
                everyone,
                MessageType::Offer,
            );
            let sock = client_socket(&ns, 4011);
            let request = Pkt::request(mac(2))
                .pxe()
                .arch(7)
                .ciaddr(CLIENT_IP.octets())
                .build();
            let (ack, from) = exchange(
                &sock,
                &request,
                SocketAddrV4::new(SERVER_IP, PXE_PORT),
                MessageType::Ack,
            );
            (offer, ack, from)
        })
        .join()
        .unwrap()
    });
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PXE_PORT)));
    assert_eq!(boot_file(&ack).as_deref(), Some("ipxe.efi"));
    assert_eq!(running.lease_for_ip(CLIENT_IP).map(|l| l.mac), Some(mac(2)));
    let (counters, _) = running.stop();
    assert!(counters.replied >= 2, "{counters:?}");
}

#[test]
fn missing_interface_address_is_an_error() {
    let Some(ns) = Netns::new() else { return };
    ip(&["-n", &ns.server, "addr", "flush", "dev", &ns.server_if]);
    let running = start(&ns, AUTHORITATIVE);
    let err = running.thread.join().unwrap().unwrap_err();
    assert!(
        matches!(err, DhcpError::NoAddress(ref i) if *i == ns.server_if),
        "{err}"
    );
}
