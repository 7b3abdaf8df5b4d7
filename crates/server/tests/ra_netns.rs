//! Router advertisements on a real link: a veth pair between two network namespaces this test
//! creates and deletes. The receiving kernel itself judges the advertisements: it configures
//! an address from the announced prefix only from a valid RA (hop limit 255, checksum,
//! link-local source), and must not install a default route (router lifetime 0).
//!
//! Needs root (network namespaces, raw sockets); without it the test says so and passes.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use metalcast_server::ra;
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const APPLIANCE_IF: &str = "mcra0";
const NODE_IF: &str = "mcra1";

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        Netns(name)
    }
}

/// Move the calling thread into the named namespace.
fn enter(netns: &str) {
    let file = File::open(format!("/run/netns/{netns}")).expect("opening the netns");
    setns(file, CloneFlags::CLONE_NEWNET).expect("entering the netns");
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn advertisements_configure_the_prefix_and_solicitations_are_answered() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: creating network namespaces needs root");
        return;
    }
    let pid = std::process::id();
    let appliance = Netns::create(format!("mcra-appl-{pid}"));
    let node = Netns::create(format!("mcra-node-{pid}"));
    ip(&[
        "link",
        "add",
        APPLIANCE_IF,
        "netns",
        &appliance.0,
        "type",
        "veth",
        "peer",
        "name",
        NODE_IF,
        "netns",
        &node.0,
    ]);
    ip(&["-n", &appliance.0, "link", "set", APPLIANCE_IF, "up"]);
    ip(&["-n", &node.0, "link", "set", NODE_IF, "up"]);

    // The sender: its own thread inside the appliance namespace. A long interval, so the
    // answer to our solicitation below cannot be mistaken for a periodic advertisement.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let appliance_name = appliance.0.clone();
    let sender = thread::spawn(move || {
        enter(&appliance_name);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::select! {
                result = ra::run(
                    APPLIANCE_IF.to_string(),
                    Duration::from_secs(600),
                    Some("fd00:99::/64".parse().expect("prefix")),
                ) => panic!("router advertisements ended: {result:?}"),
                _ = stop_rx => {}
            }
        });
    });

    // The first advertisement goes out as soon as the appliance side has its link-local
    // address; the node's kernel then configures an address in the prefix.
    wait_until(
        "a SLAAC address from the announced prefix",
        Duration::from_secs(15),
        || ip(&["-n", &node.0, "-6", "addr", "show", "dev", NODE_IF]).contains("inet6 fd00:99::"),
    );
    let routes = ip(&["-n", &node.0, "-6", "route", "show", "default"]);
    assert!(
        routes.trim().is_empty(),
        "router lifetime 0 must not make a default route: {routes}"
    );

    // A router solicitation is answered long before the next periodic advertisement (after
    // the 3 s minimum gap since the last one).
    thread::sleep(ra::MIN_DELAY_BETWEEN_RAS);
    let node_name = node.0.clone();
    let answer = thread::spawn(move || {
        enter(&node_name);
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).expect("socket");
        socket
            .bind_device(Some(NODE_IF.as_bytes()))
            .expect("bind to device");
        socket.set_multicast_hops_v6(255).expect("hops");
        let ifindex = nix::net::if_::if_nametoindex(NODE_IF).expect("ifindex");
        socket.set_multicast_if_v6(ifindex).expect("multicast if");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        let sent = Instant::now();
        socket
            .send_to(
                &[133, 0, 0, 0, 0, 0, 0, 0],
                &SockAddr::from(SocketAddrV6::new(all_routers, 0, 0, ifindex)),
            )
            .expect("sending a router solicitation");
        let mut buf = [0u8; 1500];
        while sent.elapsed() < Duration::from_secs(5) {
            if let Ok(n) = (&socket).read(&mut buf)
                && buf[..n].first() == Some(&134)
            {
                return Some((sent.elapsed(), buf[..n].to_vec()));
            }
        }
        None
    });
    let (after, data) = answer
        .join()
        .expect("receiver thread")
        .expect("no advertisement answered the solicitation");
    assert!(after < Duration::from_secs(2), "answered after {after:?}");
    assert_eq!(
        &data[4..8],
        &[64, 0, 0, 0],
        "hop limit 64, no flags, router lifetime 0"
    );
    let _ = stop_tx.send(());
    sender.join().expect("sender thread");
}
