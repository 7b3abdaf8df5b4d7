//! ICMPv6 router advertisements (RFC 4861) that announce no router.
//!
//! iPXE waits about 13 seconds for IPv6 autoconfiguration on every boot unless it sees a
//! router advertisement. These advertisements carry router lifetime 0, so no host makes us
//! its default router; they only end that wait (and hand out a prefix when one is set).
//!
//! [`advertisement`] builds the packet and [`Schedule`] decides when to send; both are pure.
//! [`run`] is the socket edge for one interface.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::str::FromStr;
use std::time::Duration;

use metalcast_proto::MacAddr;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const OPT_SOURCE_LINK_LAYER: u8 = 1;
const OPT_PREFIX_INFORMATION: u8 = 3;
/// Cur Hop Limit we suggest to hosts (the common default).
const CUR_HOP_LIMIT: u8 = 64;
const PREFIX_FLAG_ON_LINK: u8 = 0x80;
const PREFIX_FLAG_AUTONOMOUS: u8 = 0x40;
/// Prefix lifetimes, radvd's defaults (AdvValidLifetime, AdvPreferredLifetime).
const PREFIX_VALID_SECS: u32 = 86_400;
const PREFIX_PREFERRED_SECS: u32 = 14_400;
/// Interface identifiers on Ethernet are 64 bits, so only a /64 can be autoconfigured.
const SLAAC_PREFIX_LEN: u8 = 64;
/// RFC 4861 §10: MIN_DELAY_BETWEEN_RAS.
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);
/// RFC 4861 §6.2.1: bounds of MaxRtrAdvInterval.
pub const MIN_INTERVAL_SECS: u64 = 4;
pub const MAX_INTERVAL_SECS: u64 = 1800;
/// Neighbor Discovery packets must arrive with hop limit 255 (RFC 4861 §6.1).
const ND_HOP_LIMIT: u32 = 255;
/// How soon a failed advertisement is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Consecutive "no address" send failures tolerated quietly at start (about 5 s, more than
/// duplicate address detection of the link-local address takes).
const WARN_AFTER_FAILURES: u32 = 5;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// An IPv6 prefix such as `2001:db8:1::/64`; host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: Ipv6Addr,
    pub len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid IPv6 prefix {0:?}: expected address/length with zero host bits, e.g. 2001:db8:1::/64"
)]
pub struct PrefixError(String);

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PrefixError(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| err())?;
        let len: u8 = len.parse().map_err(|_| err())?;
        if len == 0 || len > 128 {
            return Err(err());
        }
        let host_mask = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        if u128::from(addr) & host_mask != 0 {
            return Err(err());
        }
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A router advertisement from `source`, the MAC of the sending interface.
///
/// Router lifetime 0 (not a default router), M and O flags clear (no DHCPv6), reachable time
/// and retransmit timer unspecified. The checksum is left 0: the kernel fills it in for raw
/// ICMPv6 sockets (RFC 3542 §3.1). The prefix, when given, is on-link, and autonomous
/// (SLAAC) when it is a /64.
pub fn advertisement(source: MacAddr, prefix: Option<Prefix>) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + 8 + 32);
    p.extend_from_slice(&[ICMPV6_ROUTER_ADVERTISEMENT, 0, 0, 0]);
    p.push(CUR_HOP_LIMIT);
    p.push(0); // M, O and reserved flags
    p.extend_from_slice(&0u16.to_be_bytes()); // router lifetime
    p.extend_from_slice(&0u32.to_be_bytes()); // reachable time
    p.extend_from_slice(&0u32.to_be_bytes()); // retrans timer
    // Option lengths count units of 8 octets.
    p.extend_from_slice(&[OPT_SOURCE_LINK_LAYER, 1]);
    p.extend_from_slice(&source.octets());
    if let Some(prefix) = prefix {
        let mut flags = PREFIX_FLAG_ON_LINK;
        if prefix.len == SLAAC_PREFIX_LEN {
            flags |= PREFIX_FLAG_AUTONOMOUS;
        }
        p.extend_from_slice(&[OPT_PREFIX_INFORMATION, 4, prefix.len, flags]);
        p.extend_from_slice(&PREFIX_VALID_SECS.to_be_bytes());
        p.extend_from_slice(&PREFIX_PREFERRED_SECS.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes()); // reserved
        p.extend_from_slice(&prefix.addr.octets());
    }
    p
}

/// Whether an ICMPv6 message (without IPv6 header) is a well-formed router solicitation
/// (RFC 4861 §6.1.1: type 133, code 0, at least 8 octets).
pub fn is_router_solicitation(msg: &[u8]) -> bool {
    msg.len() >= 8 && msg[0] == ICMPV6_ROUTER_SOLICITATION && msg[1] == 0
}

/// When to send the next advertisement: every `interval`, and soon after a solicitation,
/// but never two within [`MIN_DELAY_BETWEEN_RAS`] (RFC 4861 §6.2.6).
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    last_sent: Option<Instant>,
    next: Instant,
}

impl Schedule {
    /// The first advertisement goes out at `now`.
    pub fn new(now: Instant, interval: Duration) -> Schedule {
        Schedule {
            interval,
            last_sent: None,
            next: now,
        }
    }

    /// When the next advertisement is due.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// A router solicitation arrived at `now`.
    pub fn on_solicitation(&mut self, now: Instant) {
        let earliest = match self.last_sent {
            Some(last) => (last + MIN_DELAY_BETWEEN_RAS).max(now),
            None => now,
        };
        self.next = self.next.min(earliest);
    }

    /// An advertisement was sent at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.next = now + self.interval;
    }

    /// Sending failed at `now` (typically: no link-local address yet). Try again soon rather
    /// than a whole interval later, so nodes booting right after start are not kept waiting.
    pub fn on_send_failed(&mut self, now: Instant) {
        self.next = now + RETRY_AFTER_FAILURE.min(self.interval);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error("reading the MAC address of {interface}")]
    Mac {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0} has no Ethernet MAC address")]
    NotEthernet(String),
    #[error("setting up the ICMPv6 socket on {interface}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Send advertisements on `interface` until the task is dropped. Fails only while setting up.
pub async fn run(
    interface: String,
    interval: Duration,
    prefix: Option<Prefix>,
) -> Result<(), RaError> {
    let ifindex = nix::net::if_::if_nametoindex(interface.as_str())
        .map_err(|_| RaError::NoInterface(interface.clone()))?;
    let mac = interface_mac(&interface)?;
    let socket = open_socket(&interface, ifindex).map_err(|source| RaError::Socket {
        interface: interface.clone(),
        source,
    })?;
    let packet = advertisement(mac, prefix);
    let dest = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
    let mut schedule = Schedule::new(Instant::now(), interval);
    let mut buf = [0u8; 1500];
    let mut failures = 0u32;
    let mut warned = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(schedule.deadline()) => {
                match socket.get_ref().send_to(&packet, &dest) {
                    Ok(_) => {
                        if warned {
                            tracing::info!(%interface, "router advertisements are going out again");
                        }
                        failures = 0;
                        warned = false;
                        schedule.on_sent(Instant::now());
                    }
                    Err(error) => {
                        failures += 1;
                        // Right after start the interface may still be acquiring its
                        // link-local address (duplicate address detection): only a
                        // persistent failure is worth a warning.
                        let starting = error.kind() == std::io::ErrorKind::AddrNotAvailable
                            && failures < WARN_AFTER_FAILURES;
                        if !warned && !starting {
                            tracing::warn!(%interface, %error, "sending router advertisements fails");
                            warned = true;
                        } else {
                            tracing::debug!(%interface, %error, "sending a router advertisement failed");
                        }
                        schedule.on_send_failed(Instant::now());
                    }
                }
            }
            ready = socket.readable() => {
                match ready {
                    Ok(mut guard) => match guard.try_io(|s| std::io::Read::read(&mut s.get_ref(), &mut buf)) {
                        Ok(Ok(n)) => {
                            if is_router_solicitation(&buf[..n]) {
                                tracing::debug!(%interface, "router solicitation");
                                schedule.on_solicitation(Instant::now());
                            }
                        }
                        Ok(Err(e)) => receive_failed(&interface, &e).await,
                        Err(_would_block) => {}
                    },
                    Err(e) => receive_failed(&interface, &e).await,
                }
            }
        }
    }
}

/// Receive errors (an interface going down, say) are not fatal: solicitations are only a
/// shortcut, the periodic advertisements go on. The pause keeps a persistent error from
/// spinning.
async fn receive_failed(interface: &str, error: &std::io::Error) {
    tracing::warn!(%interface, %error, "receiving router solicitations failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The interface's Ethernet address, from the kernel of the calling thread's network
/// namespace (sysfs may show another namespace).
fn interface_mac(interface: &str) -> Result<MacAddr, RaError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| RaError::Mac {
        interface: interface.to_string(),
        source: e.into(),
    })?;
    addrs
        .filter(|a| a.interface_name == interface)
        .filter_map(|a| a.address?.as_link_addr().copied())
        .find(|link| link.halen() == 6)
        .and_then(|link| link.addr())
        .map(MacAddr)
        .ok_or_else(|| RaError::NotEthernet(interface.to_string()))
}

fn open_socket(interface: &str, ifindex: u32) -> std::io::Result<AsyncFd<Socket>> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_multicast_hops_v6(ND_HOP_LIMIT)?;
    socket.set_multicast_if_v6(ifindex)?;
    socket.set_multicast_loop_v6(false)?;
    socket.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
    socket.set_nonblocking(true)?;
    // SAFETY: the socket owns its descriptor and keeps it, unchanged, until it is dropped
    // together with the AsyncFd.
    unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn advertisement_without_prefix() {
        assert_eq!(
            advertisement(MAC, None),
            vec![
                134, 0, 0, 0, // type, code, checksum (kernel)
                64, 0, 0, 0, // hop limit, flags, router lifetime 0
                0, 0, 0, 0, // reachable time
                0, 0, 0, 0, // retrans timer
                1, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source link-layer address
            ]
        );
    }

    #[test]
    fn advertisement_with_a_slaac_prefix() {
        let prefix: Prefix = "2001:db8:1::/64".parse().unwrap();
        let p = advertisement(MAC, Some(prefix));
        assert_eq!(p.len(), 16 + 8 + 32);
        assert_eq!(
            p[24..],
            [
                3, 4, 64, 0xc0, // prefix information, 32 octets, /64, L+A
                0, 1, 0x51, 0x80, // valid 86400 s
                0, 0, 0x38, 0x40, // preferred 14400 s
                0, 0, 0, 0, // reserved
                0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
        );
        let on_link_only = advertisement(MAC, Some("2001:db8:1::/48".parse().unwrap()));
        assert_eq!(on_link_only[26..28], [48, 0x80]);
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            "fd00:1::/64".parse::<Prefix>(),
            Ok(Prefix {
                addr: "fd00:1::".parse().unwrap(),
                len: 64
            })
        );
        assert!("fd00::/128".parse::<Prefix>().is_ok());
        for bad in [
            "fd00::1/64",
            "fd00::/0",
            "fd00::/129",
            "fd00::",
            "10.0.0.0/8",
            "fd00::/x",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn solicitations() {
        assert!(is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(is_router_solicitation(&[
            133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 3, 4, 5, 6
        ]));
        assert!(!is_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 0, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn schedule_answers_solicitations_but_not_too_often() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        let mut s = Schedule::new(t0, interval);
        assert_eq!(s.deadline(), t0);
        s.on_sent(t0);
        assert_eq!(s.deadline(), t0 + interval);
        // Within 3 s of the last one: wait until 3 s have passed.
        s.on_solicitation(t0 + Duration::from_secs(1));
        assert_eq!(s.deadline(), t0 + MIN_DELAY_BETWEEN_RAS);
        s.on_sent(t0 + MIN_DELAY_BETWEEN_RAS);
        // Later: answer at once.
        let t1 = t0 + Duration::from_secs(8);
        s.on_solicitation(t1);
        assert_eq!(s.deadline(), t1);
        s.on_sent(t1);
        // A solicitation never delays an advertisement already due sooner.
        let mut s = Schedule::new(t0, interval);
        s.on_sent(t0);
        let mut due_soon = s.clone();
        due_soon.next = t0 + Duration::from_secs(2);
        due_soon.on_solicitation(t0 + Duration::from_secs(1));
        assert_eq!(due_soon.deadline(), t0 + Duration::from_secs(2));
    }

    #[test]
    fn schedule_retries_a_failed_send_soon() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_secs(10));
        s.on_send_failed(t0);
        assert_eq!(s.deadline(), t0 + RETRY_AFTER_FAILURE);
        // A solicitation after a failure is not held back by the 3 s rule: nothing went out.
        s.on_solicitation(t0 + Duration::from_millis(500));
        assert_eq!(s.deadline(), t0 + Duration::from_millis(500));
        s.on_sent(t0 + Duration::from_millis(500));
        assert_eq!(s.deadline(), t0 + Duration::from_millis(10_500));
    }
}
