//! Every decision of the server, driven through `Server::handle` with packets built by
//! `dhcproto`, on a virtual clock.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use proptest::prelude::*;

use super::*;
use crate::pxe::tests::decode_suboptions;
use crate::testutil::{Pkt, boot_file, decode, mac};
use crate::{CLIENT_PORT, SERVER_PORT};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const RELAY: [u8; 4] = [10, 1, 0, 1];
const HTTP_PORT: u16 = 8080;
const RESERVED_MAC: u8 = 200;
const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);

fn config() -> DhcpConfig {
    toml::from_str(
        r#"
        interfaces = ["eth1"]
        [[pools]]
        subnet = "10.0.0.0/24"
        range = ["10.0.0.100", "10.0.0.199"]
        router = "10.0.0.254"
        dns = ["10.0.0.1"]
        domain = "lab.example"
        [[pools]]
        subnet = "10.1.0.0/24"
        range = ["10.1.0.100", "10.1.0.110"]
        router = "10.1.0.1"
        [[reservations]]
        mac = "52:54:00:00:00:c8"
        ip = "10.0.0.10"
        hostname = "node-r"
        "#,
    )
    .unwrap()
}

fn proxy_config() -> DhcpConfig {
    toml::from_str("mode = \"proxy\"\ninterfaces = [\"eth0\"]").unwrap()
}

/// A server on a virtual clock.
struct Harness {
    server: Server,
    now: SystemTime,
}

impl Harness {
    fn new(config: DhcpConfig) -> Self {
        Harness::with_leases(config, Vec::new())
    }

    fn with_leases(config: DhcpConfig, leases: Vec<Lease>) -> Self {
        Harness {
            server: Server::new(config, HTTP_PORT, leases).unwrap(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn unix(&self) -> i64 {
        unix_secs(self.now)
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    fn raw(&mut self, data: &[u8], src: SocketAddrV4, local_port: u16) -> Outcome {
        let rx = Received {
            data,
            src,
            local_port,
            iface_ip: SERVER_IP,
        };
        let out = self.server.handle(self.now, &rx);
        self.server.leases.check_invariants();
        out
    }

    /// As a client without an address broadcasting to port 67.
    fn send(&mut self, pkt: Pkt) -> Outcome {
        self.raw(
            &pkt.build(),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
            SERVER_PORT,
        )
    }

    /// Sends and expects a reply; returns it decoded with where it went.
    fn reply(&mut self, pkt: Pkt) -> (Message, SocketAddrV4, Outcome) {
        let out = self.send(pkt);
        let tx = out.reply.clone().expect("a reply");
        (decode(&tx.data), tx.to, out)
    }

    /// DISCOVER then REQUEST; returns the address bound.
    fn dora(&mut self, pkt: impl Fn(Pkt) -> Pkt, m: MacAddr) -> Ipv4Addr {
        let (offer, _, _) = self.reply(pkt(Pkt::discover(m)));
        let ip = offer.yiaddr();
        let (ack, _, out) = self.reply(
            pkt(Pkt::request(m))
                .server_id(SERVER_IP.octets())
                .requested(ip.octets()),
        );
        assert_eq!(msg_type(&ack), MessageType::Ack);
        assert!(matches!(out.lease, Some(LeaseChange::Bound(ref l)) if l.ip == ip && l.mac == m));
        ip
    }

    fn assert_counted(&self) {
        let c = self.server.counters();
        assert_eq!(
            c.received,
            c.replied
                + c.dropped_malformed
                + c.dropped_policy
                + c.not_for_us
                + c.pool_exhausted
                + c.encode_errors
                + c.no_reply_needed,
            "{c:?}"
        );
    }
}

fn msg_type(m: &Message) -> MessageType {
    m.opts().msg_type().expect("message type")
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn option_bytes(m: &Message, code: OptionCode) -> Option<Vec<u8>> {
    match opt(m, code)? {
        DhcpOption::BootfileName(v)
        | DhcpOption::TFTPServerName(v)
        | DhcpOption::ClassIdentifier(v)
        | DhcpOption::VendorExtensions(v)
        | DhcpOption::ClientMachineIdentifier(v) => Some(v.clone()),
        other => panic!("not a byte option: {other:?}"),
    }
}

fn pxe(arch: u16) -> impl Fn(Pkt) -> Pkt {
    move |p| p.pxe().arch(arch)
}

fn ipxe(arch: u16) -> impl Fn(Pkt) -> Pkt {
    move |p| p.pxe().arch(arch).ipxe()
}

fn script_url(m: MacAddr) -> String {
    format!("http://10.0.0.1:8080/boot/{}.ipxe", m.to_hyphenated())
}

// ---- boot file decisions ----

#[test]
fn bios_client_gets_undionly_with_next_server_and_options_66_67() {
    let mut h = Harness::new(config());
    let (offer, to, out) = h.reply(pxe(0)(Pkt::discover(mac(1))));
    assert_eq!(msg_type(&offer), MessageType::Offer);
    assert_eq!(to, BROADCAST);
    assert_eq!(boot_file(&offer).as_deref(), Some("undionly.kpxe"));
    assert_eq!(offer.siaddr(), SERVER_IP);
    assert_eq!(
        offer
            .sname_str()
            .map(|s| s.unwrap().trim_end_matches('\0').to_string()),
        Some("10.0.0.1".into())
    );
    assert_eq!(
        option_bytes(&offer, OptionCode::BootfileName),
        Some(b"undionly.kpxe".to_vec())
    );
    assert_eq!(
        option_bytes(&offer, OptionCode::TFTPServerName),
        Some(b"10.0.0.1".to_vec())
    );
    assert_eq!(
        out.seen.unwrap().message,
        "DHCPOFFER 10.0.0.100 to PXE (bios), boot undionly.kpxe"
    );
}

#[test]
fn uefi_archs_get_the_uefi_file() {
    let mut cfg = config();
    cfg.boot.uefi = "snponly.efi".into();
    let mut h = Harness::new(cfg);
    for (n, arch) in [(1, 6), (2, 7), (3, 9)] {
        let (offer, _, _) = h.reply(pxe(arch)(Pkt::discover(mac(n))));
        assert_eq!(
            boot_file(&offer).as_deref(),
            Some("snponly.efi"),
            "arch {arch}"
        );
    }
    let mut h = Harness::new(config());
    let (offer, _, _) = h.reply(pxe(7)(Pkt::discover(mac(1))));
    assert_eq!(boot_file(&offer).as_deref(), Some("ipxe.efi"));
}

#[test]
fn unknown_arch_gets_an_address_but_no_boot_file() {
    let mut h = Harness::new(config());
    let (offer, _, out) = h.reply(pxe(16)(Pkt::discover(mac(1))));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(boot_file(&offer), None);
    assert_eq!(offer.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&offer, OptionCode::BootfileName).is_none());
    assert_eq!(
        out.seen.unwrap().message,
        "DHCPOFFER 10.0.0.100 to PXE (arch 16), no boot file"
    );
}

#[test]
fn plain_client_gets_network_options_but_no_pxe_options() {
    let mut h = Harness::new(config());
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    assert_eq!(boot_file(&offer), None);
    assert!(opt(&offer, OptionCode::VendorExtensions).is_none());
    assert!(opt(&offer, OptionCode::ClassIdentifier).is_none());
    assert_eq!(
        opt(&offer, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into()))
    );
    assert_eq!(
        opt(&offer, OptionCode::Router),
        Some(&DhcpOption::Router(vec![[10, 0, 0, 254].into()]))
    );
    assert_eq!(
        opt(&offer, OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![SERVER_IP]))
    );
    assert_eq!(
        opt(&offer, OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab.example".into()))
    );
}

#[test]
fn pxe_clients_get_class_discovery_control_and_their_uuid_back() {
    let mut h = Harness::new(config());
    let uuid = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let (offer, _, _) = h.reply(pxe(0)(Pkt::discover(mac(1))).machine_id(&uuid));
    assert_eq!(
        option_bytes(&offer, OptionCode::ClassIdentifier),
        Some(b"PXEClient".to_vec())
    );
    let vendor = option_bytes(&offer, OptionCode::VendorExtensions).unwrap();
    assert_eq!(decode_suboptions(&vendor), Some(vec![(6, vec![8])]));
    assert_eq!(
        option_bytes(&offer, OptionCode::ClientMachineIdentifier),
        Some(uuid.to_vec())
    );
}

#[test]
fn ipxe_gets_the_script_url_under_non_ipxe() {
    let mut cfg = config();
    cfg.chainload = Chainload::NonIpxe;
    let mut h = Harness::new(cfg);
    let (offer, _, out) = h.reply(ipxe(0)(Pkt::discover(mac(5))));
    assert_eq!(boot_file(&offer), Some(script_url(mac(5))));
    assert_eq!(
        option_bytes(&offer, OptionCode::BootfileName),
        Some(script_url(mac(5)).into_bytes())
    );
    assert_eq!(
        out.seen.unwrap().message,
        "DHCPOFFER 10.0.0.100 to iPXE (bios), boot http://10.0.0.1:8080/boot/52-54-00-00-00-05.ipxe"
    );
}

#[test]
fn chainload_always_sends_nic_ipxe_our_binary_until_tftp_done() {
    let mut h = Harness::new(config());
    let m = mac(5);
    let (offer, _, _) = h.reply(ipxe(7)(Pkt::discover(m)));
    assert_eq!(
        boot_file(&offer).as_deref(),
        Some("ipxe.efi"),
        "NIC ROM iPXE is chainloaded"
    );

    h.server.tftp_done(mac(6), h.now);
    let (offer, _, _) = h.reply(ipxe(7)(Pkt::discover(m)));
    assert_eq!(
        boot_file(&offer).as_deref(),
        Some("ipxe.efi"),
        "another MAC's transfer does not count"
    );

    h.server.tftp_done(m, h.now);
    h.advance(120);
    let (offer, _, _) = h.reply(ipxe(7)(Pkt::discover(m)));
    assert_eq!(
        boot_file(&offer),
        Some(script_url(m)),
        "our iPXE, inside the window"
    );
    let (ack, _, _) = h.reply(
        ipxe(7)(Pkt::request(m))
            .server_id(SERVER_IP.octets())
            .requested(offer.yiaddr().octets()),
    );
    assert_eq!(
        boot_file(&ack),
        Some(script_url(m)),
        "REQUEST in the window too"
    );

    h.advance(1);
    let (offer, _, _) = h.reply(ipxe(7)(Pkt::discover(m)));
    assert_eq!(
        boot_file(&offer).as_deref(),
        Some("ipxe.efi"),
        "window over: a new boot"
    );
}

#[test]
fn a_node_that_boots_its_disk_gets_the_script_without_a_chainload() {
    let mut h = Harness::new(config());
    let m = mac(5);
    h.server.set_local_boot(m, true);
    let (offer, _, _) = h.reply(ipxe(7)(Pkt::discover(m)));
    assert_eq!(boot_file(&offer), Some(script_url(m)));
    // A plain PXE ROM still needs an iPXE to fetch any script.
    let (offer, _, _) = h.reply(pxe(7)(Pkt::discover(m)));
    assert_eq!(boot_file(&offer).as_deref(), Some("ipxe.efi"));
    h.server.set_local_boot(m, false);
    let (offer, _, _) = h.reply(ipxe(7)(Pkt::discover(m)));
    assert_eq!(boot_file(&offer).as_deref(), Some("ipxe.efi"));
}

#[test]
fn chainload_window_is_configurable() {
    let mut cfg = config();
    cfg.chainload_window_secs = 10;
    let mut h = Harness::new(cfg);
    h.server.tftp_done(mac(5), h.now);
    h.advance(11);
    let (offer, _, _) = h.reply(ipxe(0)(Pkt::discover(mac(5))));
    assert_eq!(boot_file(&offer).as_deref(), Some("undionly.kpxe"));
}

// ---- who is answered ----

#[test]
fn unknown_nodes_policy() {
    let mut h = Harness::new(config());
    assert!(
        h.send(pxe(0)(Pkt::discover(mac(1)))).reply.is_some(),
        "discover answers anyone"
    );

    let mut cfg = config();
    cfg.unknown_nodes = UnknownNodes::Ignore;
    let mut h = Harness::new(cfg);
    let out = h.send(pxe(0)(Pkt::discover(mac(1))));
    assert_eq!(out, Outcome::default(), "ignored: no reply, no event");
    assert_eq!(h.server.counters().dropped_policy, 1);

    h.server.set_known(mac(1));
    assert!(
        h.send(pxe(0)(Pkt::discover(mac(1)))).reply.is_some(),
        "known via set_known"
    );
    assert!(
        h.send(pxe(0)(Pkt::discover(mac(RESERVED_MAC))))
            .reply
            .is_some(),
        "reservations are known"
    );
    assert!(h.send(Pkt::discover(mac(2))).reply.is_none());
    h.assert_counted();
}

// ---- addresses ----

#[test]
fn reservation_wins_over_the_pool_and_carries_the_hostname() {
    let mut h = Harness::new(config());
    let (offer, _, _) = h.reply(Pkt::discover(mac(RESERVED_MAC)).requested([10, 0, 0, 150]));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 10));
    assert_eq!(
        opt(&offer, OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node-r".into()))
    );
    let ip = h.dora(|p| p, mac(RESERVED_MAC));
    assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 10));
    assert_eq!(
        h.server.lease_for_ip(ip).unwrap().hostname.as_deref(),
        Some("node-r")
    );

    // Nobody else gets the reserved address, even asking for it.
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)).requested([10, 0, 0, 10]));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
    let (nak, _, _) = h.reply(
        Pkt::request(mac(1))
            .server_id(SERVER_IP.octets())
            .requested([10, 0, 0, 10]),
    );
    assert_eq!(msg_type(&nak), MessageType::Nak);
}

#[test]
fn requested_address_is_honoured_when_free_and_in_the_pool() {
    let mut h = Harness::new(config());
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)).requested([10, 0, 0, 150]));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 150));
    let (offer, _, _) = h.reply(Pkt::discover(mac(2)).requested([10, 0, 0, 150]));
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::new(10, 0, 0, 100),
        "held for mac 1"
    );
    let (offer, _, _) = h.reply(Pkt::discover(mac(3)).requested([10, 0, 0, 50]));
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::new(10, 0, 0, 101),
        "outside the range"
    );
}

#[test]
fn a_client_keeps_its_address_across_discovers_and_reboots() {
    let mut h = Harness::new(config());
    let ip = h.dora(pxe(0), mac(1));
    h.advance(3600);
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    assert_eq!(offer.yiaddr(), ip);
    // Even after its lease ran out, while nobody else needed the address.
    h.advance(8 * 24 * 3600);
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    assert_eq!(offer.yiaddr(), ip);
}

#[test]
fn ack_carries_lease_time_t1_t2_and_server_id() {
    let mut cfg = config();
    cfg.lease_time_secs = 800;
    let mut h = Harness::new(cfg);
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    let (ack, to, out) = h.reply(
        Pkt::request(mac(1))
            .server_id(SERVER_IP.octets())
            .requested(offer.yiaddr().octets()),
    );
    assert_eq!(to, BROADCAST);
    assert_eq!(
        opt(&ack, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(800))
    );
    assert_eq!(
        opt(&ack, OptionCode::Renewal),
        Some(&DhcpOption::Renewal(400))
    );
    assert_eq!(
        opt(&ack, OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(700))
    );
    assert_eq!(
        opt(&ack, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER_IP))
    );
    let Some(LeaseChange::Bound(lease)) = out.lease else {
        panic!("bound")
    };
    assert_eq!(lease.expires_unix, h.unix() + 800);
}

#[test]
fn default_lease_is_seven_days() {
    let mut h = Harness::new(config());
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    assert_eq!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(604_800))
    );
}

#[test]
fn reply_echoes_the_request_and_meets_bootp_minimum() {
    let mut h = Harness::new(config());
    let req = Pkt::discover(mac(9)).xid(0xdead_beef).broadcast_flag();
    let out = h.send(req);
    let data = out.reply.unwrap().data;
    assert!(data.len() >= 300);
    let m = decode(&data);
    assert_eq!(m.opcode(), dhcproto::v4::Opcode::BootReply);
    assert_eq!(m.xid(), 0xdead_beef);
    assert_eq!(m.chaddr(), &mac(9).0);
    assert!(m.flags().broadcast());
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
}

#[test]
fn renewal_is_unicast_and_extends_the_lease() {
    let mut h = Harness::new(config());
    let ip = h.dora(pxe(0), mac(1));
    h.advance(3 * 24 * 3600);
    let (ack, to, out) = h.reply(Pkt::request(mac(1)).ciaddr(ip.octets()));
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(to, SocketAddrV4::new(ip, CLIENT_PORT));
    assert_eq!(ack.ciaddr(), ip);
    assert_eq!(ack.yiaddr(), ip);
    let Some(LeaseChange::Bound(lease)) = out.lease else {
        panic!("bound")
    };
    assert_eq!(lease.expires_unix, h.unix() + 604_800);
}

#[test]
fn init_reboot_with_our_lease_is_acked() {
    let mut h = Harness::new(config());
    let ip = h.dora(|p| p, mac(1));
    let (ack, _, _) = h.reply(Pkt::request(mac(1)).requested(ip.octets()));
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), ip);
}

#[test]
fn nak_for_wrong_network_and_for_what_is_not_the_clients_lease() {
    let mut h = Harness::new(config());
    let (nak, to, out) = h.reply(Pkt::request(mac(1)).requested([192, 168, 7, 7]));
    assert_eq!(msg_type(&nak), MessageType::Nak);
    assert_eq!(to, BROADCAST);
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&nak, OptionCode::AddressLeaseTime).is_none());
    assert_eq!(boot_file(&nak), None);
    assert!(out.lease.is_none());
    assert_eq!(
        out.seen.unwrap().message,
        "DHCPNAK to client: 192.168.7.7 is not on this network (10.0.0.0/24)"
    );

    let (nak, _, _) = h.reply(Pkt::request(mac(1)).requested([10, 0, 0, 150]));
    assert_eq!(
        msg_type(&nak),
        MessageType::Nak,
        "no lease on record (authoritative)"
    );

    let ip = h.dora(|p| p, mac(2));
    let (nak, _, _) = h.reply(Pkt::request(mac(1)).requested(ip.octets()));
    assert_eq!(msg_type(&nak), MessageType::Nak, "another client's lease");
    let (nak, to, _) = h.reply(Pkt::request(mac(1)).ciaddr(ip.octets()));
    assert_eq!(
        msg_type(&nak),
        MessageType::Nak,
        "renewing another client's lease"
    );
    assert_eq!(
        to, BROADCAST,
        "a NAK is broadcast even to a client with ciaddr"
    );

    // The other pool's subnet is ours but not this link's.
    let (nak, _, _) = h.reply(Pkt::request(mac(1)).requested([10, 1, 0, 100]));
    assert_eq!(msg_type(&nak), MessageType::Nak);
    assert_eq!(h.server.counters().naks, 5);
    h.assert_counted();
}

#[test]
fn renewal_of_a_foreign_address_is_left_alone() {
    let mut h = Harness::new(config());
    let out = h.send(Pkt::request(mac(1)).ciaddr([192, 168, 7, 7]));
    assert!(out.reply.is_none());
    assert_eq!(h.server.counters().not_for_us, 1);
}

#[test]
fn selecting_another_server_withdraws_our_offer() {
    let mut h = Harness::new(config());
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    let out = h.send(
        Pkt::request(mac(1))
            .server_id([10, 0, 0, 2])
            .requested([10, 0, 0, 50]),
    );
    assert!(out.reply.is_none());
    assert_eq!(h.server.counters().not_for_us, 1);
    let (offer2, _, _) = h.reply(Pkt::discover(mac(2)));
    assert_eq!(
        offer2.yiaddr(),
        offer.yiaddr(),
        "the withdrawn address is reused first"
    );
}

#[test]
fn selecting_after_a_lost_offer_is_acked_if_free() {
    let mut h = Harness::new(config());
    let (ack, _, _) = h.reply(
        Pkt::request(mac(1))
            .server_id(SERVER_IP.octets())
            .requested([10, 0, 0, 120]),
    );
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 0, 0, 120));
}

#[test]
fn release_frees_the_address_but_remembers_the_client() {
    let mut h = Harness::new(config());
    let ip = h.dora(|p| p, mac(1));
    let out = h.send(
        Pkt::new(MessageType::Release, mac(1))
            .ciaddr(ip.octets())
            .server_id(SERVER_IP.octets()),
    );
    assert!(out.reply.is_none());
    assert_eq!(out.lease, Some(LeaseChange::Released { mac: mac(1), ip }));
    assert_eq!(
        out.seen.unwrap().message,
        format!("DHCPRELEASE {ip} from client")
    );

    let out = h.send(Pkt::new(MessageType::Release, mac(2)).ciaddr(ip.octets()));
    assert_eq!(out, Outcome::default(), "not mac 2's lease");

    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    assert_eq!(offer.yiaddr(), ip, "the same address comes back");
    assert_eq!(h.server.counters().no_reply_needed, 1);
    h.assert_counted();
}

#[test]
fn decline_quarantines_the_address() {
    let mut cfg = config();
    cfg.decline_secs = 600;
    let mut h = Harness::new(cfg);
    let ip = h.dora(|p| p, mac(1));
    let out = h.send(
        Pkt::new(MessageType::Decline, mac(1))
            .requested(ip.octets())
            .server_id(SERVER_IP.octets()),
    );
    assert!(out.reply.is_none());
    assert_eq!(out.lease, Some(LeaseChange::Released { mac: mac(1), ip }));
    assert!(
        out.seen
            .unwrap()
            .message
            .starts_with(&format!("DHCPDECLINE {ip}: in use"))
    );
    assert!(h.server.lease_for_ip(ip).is_none());

    let (offer, _, _) = h.reply(Pkt::discover(mac(1)));
    assert_ne!(offer.yiaddr(), ip, "the decliner gets another address");
    let (offer, _, _) = h.reply(Pkt::discover(mac(2)).requested(ip.octets()));
    assert_ne!(offer.yiaddr(), ip, "and so does everyone else");
    let (nak, _, _) = h.reply(
        Pkt::request(mac(2))
            .server_id(SERVER_IP.octets())
            .requested(ip.octets()),
    );
    assert_eq!(msg_type(&nak), MessageType::Nak);

    h.advance(600);
    let (offer, _, _) = h.reply(Pkt::discover(mac(3)).requested(ip.octets()));
    assert_eq!(offer.yiaddr(), ip, "quarantine over");
}

#[test]
fn decline_of_someone_elses_address_is_ignored() {
    let mut h = Harness::new(config());
    let ip = h.dora(|p| p, mac(1));
    let out = h.send(Pkt::new(MessageType::Decline, mac(2)).requested(ip.octets()));
    assert_eq!(out, Outcome::default());
    assert!(h.server.lease_for_ip(ip).is_some());
}

#[test]
fn inform_gets_configuration_without_an_address() {
    let mut h = Harness::new(config());
    let (ack, to, out) = h.reply(Pkt::new(MessageType::Inform, mac(1)).ciaddr([10, 0, 0, 50]));
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(to, SocketAddrV4::new([10, 0, 0, 50].into(), CLIENT_PORT));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&ack, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&ack, OptionCode::Router).is_some());
    assert!(out.lease.is_none());
}

#[test]
fn pool_exhaustion_is_counted_and_reported() {
    let mut cfg = config();
    cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)];
    let mut h = Harness::new(cfg);
    h.dora(|p| p, mac(1));
    h.dora(|p| p, mac(2));
    let out = h.send(Pkt::discover(mac(3)));
    assert!(out.reply.is_none());
    assert_eq!(h.server.counters().pool_exhausted, 1);
    assert_eq!(
        out.seen.unwrap().message,
        "DHCPDISCOVER from client: no free address in 10.0.0.0/24"
    );
    h.assert_counted();
}

#[test]
fn expired_offers_and_leases_are_reclaimed() {
    let mut cfg = config();
    cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 100)];
    cfg.lease_time_secs = 300;
    let mut h = Harness::new(cfg);
    h.reply(Pkt::discover(mac(1)));
    assert!(
        h.send(Pkt::discover(mac(2))).reply.is_none(),
        "held for mac 1"
    );
    h.advance(OFFER_HOLD_SECS as u64);
    let ip = h.dora(|p| p, mac(2));
    assert!(h.send(Pkt::discover(mac(3))).reply.is_none());
    h.advance(300);
    let (offer, _, _) = h.reply(Pkt::discover(mac(3)));
    assert_eq!(
        offer.yiaddr(),
        ip,
        "expired lease reclaimed when nothing else is free"
    );
}

#[test]
fn never_offers_the_servers_own_address() {
    let mut cfg = config();
    cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)];
    cfg.pools[0].router = None;
    let mut h = Harness::new(cfg);
    let (offer, _, _) = h.reply(Pkt::discover(mac(1)).requested([10, 0, 0, 1]));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 2));
}

// ---- relays ----

#[test]
fn relayed_request_uses_the_relays_pool_and_goes_back_to_it() {
    let mut h = Harness::new(config());
    let (offer, to, _) = h.reply(pxe(0)(Pkt::discover(mac(1))).giaddr(RELAY));
    assert_eq!(to, SocketAddrV4::new(RELAY.into(), SERVER_PORT));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 1, 0, 100));
    assert_eq!(offer.giaddr(), Ipv4Addr::from(RELAY));
    assert_eq!(
        opt(&offer, OptionCode::Router),
        Some(&DhcpOption::Router(vec![RELAY.into()]))
    );
    assert_eq!(
        opt(&offer, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER_IP))
    );

    let ip = offer.yiaddr();
    let (ack, to, _) = h.reply(
        Pkt::request(mac(1))
            .giaddr(RELAY)
            .server_id(SERVER_IP.octets())
            .requested(ip.octets()),
    );
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(to, SocketAddrV4::new(RELAY.into(), SERVER_PORT));

    // Its renewal arrives unicast on our own link, without the relay: ciaddr names the pool.
    let (ack, to, _) = h.reply(Pkt::request(mac(1)).ciaddr(ip.octets()));
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(to, SocketAddrV4::new(ip, CLIENT_PORT));
}

#[test]
fn relayed_nak_goes_to_the_relay_with_the_broadcast_bit() {
    let mut h = Harness::new(config());
    let (nak, to, _) = h.reply(
        Pkt::request(mac(1))
            .giaddr(RELAY)
            .requested([10, 0, 0, 150]),
    );
    assert_eq!(msg_type(&nak), MessageType::Nak);
    assert_eq!(to, SocketAddrV4::new(RELAY.into(), SERVER_PORT));
    assert!(nak.flags().broadcast());
}

#[test]
fn relay_from_an_unknown_subnet_is_not_answered() {
    let mut h = Harness::new(config());
    assert!(
        h.send(Pkt::discover(mac(1)).giaddr([172, 16, 0, 1]))
            .reply
            .is_none()
    );
    assert_eq!(h.server.counters().dropped_policy, 1);
}

#[test]
fn option_82_is_echoed_verbatim_and_last() {
    let mut h = Harness::new(config());
    let mut bytes = Pkt::discover(mac(1)).giaddr(RELAY).build();
    // Hand-made option 82 with an unusual sub-option order dhcproto would re-sort.
    let end = bytes.iter().rposition(|&b| b == 255).unwrap();
    let info = [2u8, 3, b'r', b'i', b'd', 1, 2, b'c', 0x01];
    bytes.truncate(end);
    bytes.push(82);
    bytes.push(info.len() as u8);
    bytes.extend_from_slice(&info);
    bytes.push(255);
    let out = h.raw(
        &bytes,
        SocketAddrV4::new(RELAY.into(), SERVER_PORT),
        SERVER_PORT,
    );
    let data = out.reply.unwrap().data;
    let mut expect = vec![82u8, info.len() as u8];
    expect.extend_from_slice(&info);
    expect.push(255);
    let at = data
        .windows(expect.len())
        .position(|w| w == expect)
        .expect("option 82 then END");
    assert!(
        data[at + expect.len()..].iter().all(|&b| b == 0),
        "only padding after END"
    );
}

// ---- proxy mode ----

fn proxy_src() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)
}

#[test]
fn proxy_offer_has_no_address_but_boot_information() {
    let mut h = Harness::new(proxy_config());
    let (offer, to, out) = h.reply(pxe(0)(Pkt::discover(mac(1))));
    assert_eq!(msg_type(&offer), MessageType::Offer);
    assert_eq!(to, BROADCAST);
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.siaddr(), SERVER_IP);
    assert_eq!(boot_file(&offer).as_deref(), Some("undionly.kpxe"));
    assert_eq!(
        option_bytes(&offer, OptionCode::ClassIdentifier),
        Some(b"PXEClient".to_vec())
    );
    assert!(opt(&offer, OptionCode::VendorExtensions).is_some());
    assert_eq!(
        opt(&offer, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER_IP))
    );
    for code in [
        OptionCode::AddressLeaseTime,
        OptionCode::SubnetMask,
        OptionCode::Router,
    ] {
        assert!(opt(&offer, code).is_none(), "{code:?}");
    }
    assert!(out.lease.is_none());
    assert_eq!(
        out.seen.unwrap().message,
        "DHCPOFFER (proxy) to PXE (bios), boot undionly.kpxe"
    );
}

#[test]
fn proxy_acks_pxe_requests_on_port_4011_to_their_source() {
    let mut h = Harness::new(proxy_config());
    let src = SocketAddrV4::new([192, 168, 1, 50].into(), 4011);
    let req = pxe(7)(Pkt::request(mac(1)))
        .ciaddr([192, 168, 1, 50])
        .build();
    let out = h.raw(&req, src, PXE_PORT);
    let tx = out.reply.unwrap();
    assert_eq!(tx.to, src);
    let ack = decode(&tx.data);
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(boot_file(&ack).as_deref(), Some("ipxe.efi"));
    assert_eq!(
        h.server
            .lease_for_ip([192, 168, 1, 50].into())
            .map(|l| l.mac),
        Some(mac(1))
    );
}

#[test]
fn proxy_ignores_non_pxe_clients_and_other_servers_traffic() {
    let mut h = Harness::new(proxy_config());
    assert!(
        h.send(Pkt::discover(mac(1)).arch(0)).reply.is_none(),
        "no PXEClient class"
    );
    assert_eq!(h.server.counters().dropped_policy, 1);

    // The REQUEST to the real server is not ours, but tells us the client's address.
    let out = h.send(
        pxe(0)(Pkt::request(mac(2)))
            .server_id([192, 168, 1, 1])
            .requested([192, 168, 1, 77]),
    );
    assert!(out.reply.is_none());
    assert_eq!(h.server.counters().not_for_us, 1);
    assert_eq!(
        h.server
            .lease_for_ip([192, 168, 1, 77].into())
            .map(|l| l.mac),
        Some(mac(2))
    );

    let (ack, _, _) = h.reply(pxe(0)(Pkt::request(mac(2))).server_id(SERVER_IP.octets()));
    assert_eq!(
        msg_type(&ack),
        MessageType::Ack,
        "a REQUEST naming us on port 67"
    );

    assert!(
        h.send(pxe(16)(Pkt::discover(mac(3)))).reply.is_none(),
        "nothing to boot"
    );
    h.assert_counted();
}

#[test]
fn proxy_chainload_loop_is_broken_through_observed_addresses() {
    let mut h = Harness::new(proxy_config());
    let m = mac(4);
    // NIC iPXE: gets our binary, then fetches it over TFTP from its new address.
    let (offer, _, _) = h.reply(ipxe(0)(Pkt::discover(m)));
    assert_eq!(boot_file(&offer).as_deref(), Some("undionly.kpxe"));
    h.send(
        ipxe(0)(Pkt::request(m))
            .server_id([192, 168, 1, 1])
            .requested([192, 168, 1, 80]),
    );
    let lease = h
        .server
        .lease_for_ip([192, 168, 1, 80].into())
        .cloned()
        .unwrap();
    h.server.tftp_done(lease.mac, h.now);
    let (offer, _, _) = h.reply(ipxe(0)(Pkt::discover(m)));
    assert_eq!(boot_file(&offer), Some(script_url(m)));
}

#[test]
fn port_4011_is_not_served_in_authoritative_mode() {
    let mut h = Harness::new(config());
    let src = SocketAddrV4::new([10, 0, 0, 100].into(), 4011);
    let out = h.raw(
        &pxe(0)(Pkt::request(mac(1))).ciaddr([10, 0, 0, 100]).build(),
        src,
        PXE_PORT,
    );
    assert!(out.reply.is_none());
    assert_eq!(h.server.counters().dropped_policy, 1);
}

// ---- restart ----

#[test]
fn stored_leases_come_back_and_misfits_are_dropped() {
    let t = 1_700_000_000 + 1000;
    let leases = vec![
        Lease {
            mac: mac(1),
            ip: [10, 0, 0, 150].into(),
            expires_unix: t,
            hostname: Some("a".into()),
        },
        Lease {
            mac: mac(2),
            ip: [192, 168, 0, 5].into(),
            expires_unix: t,
            hostname: None,
        },
        Lease {
            mac: mac(3),
            ip: [10, 0, 0, 10].into(),
            expires_unix: t,
            hostname: None,
        },
    ];
    let mut h = Harness::with_leases(config(), leases);
    assert_eq!(
        h.server.lease_for_ip([10, 0, 0, 150].into()).map(|l| l.mac),
        Some(mac(1))
    );
    assert!(
        h.server.lease_for_ip([192, 168, 0, 5].into()).is_none(),
        "outside every pool"
    );
    assert!(
        h.server.lease_for_ip([10, 0, 0, 10].into()).is_none(),
        "reserved for another MAC"
    );
    let (ack, _, _) = h.reply(Pkt::request(mac(1)).ciaddr([10, 0, 0, 150]));
    assert_eq!(msg_type(&ack), MessageType::Ack, "renewal after restart");
}

#[test]
fn client_hostname_is_kept_on_the_lease() {
    let mut h = Harness::new(config());
    let ip = h.dora(|p| p.hostname("worker-7"), mac(1));
    assert_eq!(
        h.server.lease_for_ip(ip).unwrap().hostname.as_deref(),
        Some("worker-7")
    );
    assert_eq!(client_hostname(b"bad name"), None);
    assert_eq!(client_hostname(b"ok\0"), Some("ok".into()));
}

// ---- garbage ----

#[test]
fn malformed_and_non_request_datagrams_are_counted() {
    let mut h = Harness::new(config());
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    let mut reply_op = Pkt::discover(mac(1)).build();
    reply_op[0] = 2;
    for data in [&b""[..], &[1u8; 10][..], &[0xff; 600][..], &reply_op[..]] {
        assert_eq!(h.raw(data, src, SERVER_PORT), Outcome::default());
    }
    assert_eq!(h.server.counters().dropped_malformed, 4);
    let unsupported = Pkt::new(MessageType::LeaseQuery, mac(1)).build();
    assert!(h.raw(&unsupported, src, SERVER_PORT).reply.is_none());
    assert_eq!(h.server.counters().dropped_policy, 1);
    h.assert_counted();
}

#[test]
fn interface_without_address_is_not_served() {
    let mut h = Harness::new(config());
    let data = Pkt::discover(mac(1)).build();
    let rx = Received {
        data: &data,
        src: proxy_src(),
        local_port: SERVER_PORT,
        iface_ip: Ipv4Addr::UNSPECIFIED,
    };
    assert!(h.server.handle(h.now, &rx).reply.is_none());
}

#[test]
fn chainload_memory_is_swept() {
    let mut h = Harness::new(config());
    for i in 0..SWEEP_MIN as u32 {
        let b = i.to_be_bytes();
        h.server
            .tftp_done(MacAddr([2, 0, b[0], b[1], b[2], b[3]]), h.now);
    }
    h.advance(1000);
    h.server.tftp_done(mac(1), h.now);
    assert_eq!(
        h.server.chainloaded.len(),
        1,
        "stale entries swept on reaching the threshold"
    );
}

/// A valid request of every kind the server handles, for mutation.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        pxe(0)(Pkt::discover(mac(1))).machine_id(&[0; 17]).build(),
        ipxe(7)(Pkt::request(mac(2)))
            .server_id([10, 0, 0, 1])
            .requested([10, 0, 0, 100])
            .build(),
        Pkt::request(mac(3))
            .ciaddr([10, 0, 0, 101])
            .circuit_id(b"eth0/1")
            .giaddr(RELAY)
            .build(),
        Pkt::new(MessageType::Release, mac(2))
            .ciaddr([10, 0, 0, 100])
            .build(),
        Pkt::new(MessageType::Decline, mac(1))
            .requested([10, 0, 0, 100])
            .build(),
        Pkt::new(MessageType::Inform, mac(4))
            .ciaddr([10, 0, 0, 5])
            .build(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
    ]
}

fn feed_all(h: &mut Harness, packets: &[Vec<u8>]) {
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    for (i, data) in packets.iter().enumerate() {
        let port = if i % 5 == 4 { PXE_PORT } else { SERVER_PORT };
        let out = h.raw(data, src, port);
        if let Some(tx) = out.reply {
            // Whatever we send must be a well-formed reply.
            assert!(
                crate::wire::parse(&tx.data)
                    .is_err_and(|e| e == crate::wire::ParseError::NotRequest(2))
            );
            assert!(tx.data.len() >= 300);
        }
        h.advance(7);
    }
    h.assert_counted();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..8)) {
        for cfg in [config(), proxy_config()] {
            feed_all(&mut Harness::new(cfg), &packets);
        }
    }

    #[test]
    fn mutated_requests_never_panic(muts in proptest::collection::vec((0usize..6, proptest::collection::vec(mutation(), 1..6)), 1..12)) {
        let seeds = seeds();
        let packets: Vec<Vec<u8>> = muts
            .into_iter()
            .map(|(seed, ms)| {
                let mut p = seeds[seed].clone();
                for m in ms {
                    match m {
                        Mutation::Set(i, b) => {
                            if !p.is_empty() {
                                let at = i % p.len();
                                p[at] = b;
                            }
                        }
                        Mutation::Truncate(n) => p.truncate(n % (p.len() + 1)),
                        Mutation::Insert(i, v) => {
                            let at = i % (p.len() + 1);
                            p.splice(at..at, v);
                        }
                    }
                }
                p
            })
            .collect();
        for cfg in [config(), proxy_config()] {
            let mut h = Harness::new(cfg);
            h.server.set_known(mac(1));
            feed_all(&mut h, &seeds);
            feed_all(&mut h, &packets);
        }
    }
}

/// One client action in a random conversation.
#[derive(Debug, Clone)]
enum Act {
    Discover { requested: Option<u8> },
    Select { ip: u8, ours: bool },
    InitReboot { ip: u8 },
    Renew { ip: u8 },
    Release { ip: u8 },
    Decline { ip: u8 },
}

fn act() -> impl Strategy<Value = Act> {
    // Addresses 98..=105 straddle the pool below (100..=103) on both sides.
    let ip = 98u8..106;
    prop_oneof![
        proptest::option::of(ip.clone()).prop_map(|requested| Act::Discover { requested }),
        (ip.clone(), proptest::bool::weighted(0.8)).prop_map(|(ip, ours)| Act::Select { ip, ours }),
        ip.clone().prop_map(|ip| Act::InitReboot { ip }),
        ip.clone().prop_map(|ip| Act::Renew { ip }),
        ip.clone().prop_map(|ip| Act::Release { ip }),
        ip.prop_map(|ip| Act::Decline { ip }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever clients do, no address is ever bound to two clients at once, and every
    /// bound address is in the pool or the client's reservation.
    #[test]
    fn no_address_is_bound_twice(steps in proptest::collection::vec((1u8..7, act(), 0u64..200), 1..80)) {
        let mut cfg = config();
        cfg.pools[0].range = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 103)];
        cfg.lease_time_secs = 600;
        cfg.decline_secs = 300;
        cfg.reservations[0].mac = mac(6);
        cfg.reservations[0].ip = Ipv4Addr::new(10, 0, 0, 102);
        let mut h = Harness::new(cfg);
        let mut bound: HashMap<Ipv4Addr, (MacAddr, i64)> = HashMap::new();
        for (n, act, wait) in steps {
            let m = mac(n);
            let a = |last: u8| [10, 0, 0, last];
            let pkt = match act {
                Act::Discover { requested } => {
                    let p = Pkt::discover(m);
                    match requested { Some(ip) => p.requested(a(ip)), None => p }
                }
                Act::Select { ip, ours } => Pkt::request(m)
                    .server_id(if ours { SERVER_IP.octets() } else { [10, 0, 0, 2] })
                    .requested(a(ip)),
                Act::InitReboot { ip } => Pkt::request(m).requested(a(ip)),
                Act::Renew { ip } => Pkt::request(m).ciaddr(a(ip)),
                Act::Release { ip } => Pkt::new(MessageType::Release, m).ciaddr(a(ip)),
                Act::Decline { ip } => Pkt::new(MessageType::Decline, m).requested(a(ip)),
            };
            let out = h.send(pkt);
            let now = h.unix();
            match out.lease {
                Some(LeaseChange::Bound(l)) => {
                    if let Some((other, until)) = bound.get(&l.ip) {
                        prop_assert!(*other == l.mac || *until <= now, "{} bound to {} and {}", l.ip, other, l.mac);
                    }
                    let in_pool = (100..=103).contains(&l.ip.octets()[3]);
                    let reserved = l.mac == mac(6) && l.ip == Ipv4Addr::new(10, 0, 0, 102);
                    prop_assert!(reserved || (in_pool && l.ip != Ipv4Addr::new(10, 0, 0, 102)), "{l:?}");
                    bound.retain(|_, (mac, _)| *mac != l.mac);
                    bound.insert(l.ip, (l.mac, l.expires_unix));
                }
                Some(LeaseChange::Released { mac, ip }) => {
                    prop_assert_eq!(bound.get(&ip).map(|b| b.0), Some(mac));
                    bound.remove(&ip);
                }
                None => {}
            }
            h.advance(wait);
        }
        h.assert_counted();
    }
}
