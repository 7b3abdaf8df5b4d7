//! DHCPv4 server for network boot (RFC 2131, RFC 2132, RFC 4578 and the PXE spec's
//! proxyDHCP), authoritative or proxy.
//!
//! [`Server`] is the whole protocol and holds no sockets and reads no clock: feed it each
//! received datagram with the time and the receiving interface's address
//! ([`Server::handle`]) and it returns what to send, which lease changed and a line for the
//! node's event log ([`Outcome`]). Lease state lives in memory; the caller persists every
//! [`LeaseChange`] and hands the stored leases back to [`Server::new`] at start.
//!
//! [`run`] is the thin tokio edge: one UDP socket per interface, datagrams in, replies out,
//! [`Notice`]s to the appliance, [`Control`] messages from it.
//!
//! Inside, a request passes a fixed chain of handlers over one context (admit → assign →
//! boot), each of which may answer, stay silent, or hand on. See `docs/dhcp.md`.

mod config;
mod io;
mod leases;
mod pxe;
mod reply;
mod server;
mod wire;

#[cfg(test)]
mod testutil;

use std::net::{Ipv4Addr, SocketAddrV4};

use metalcast_proto::MacAddr;
use serde::{Deserialize, Serialize};

pub use config::{
    BootFiles, Chainload, ConfigError, DhcpConfig, Mode, PoolConfig, Reservation, UnknownNodes,
};
pub use io::{Control, DhcpError, Notice, run};
pub use server::Server;

/// DHCP server port (RFC 2131).
pub const SERVER_PORT: u16 = 67;
/// DHCP client port (RFC 2131).
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server port, where proxyDHCP answers DHCPREQUESTs (PXE spec 2.1).
pub const PXE_PORT: u16 = 4011;

/// One datagram as received.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub data: &'a [u8],
    pub src: SocketAddrV4,
    /// The port it arrived on: [`SERVER_PORT`] or [`PXE_PORT`].
    pub local_port: u16,
    /// The appliance's address on the interface it arrived on: our server identifier, the
    /// next-server and the host of the script URL.
    pub iface_ip: Ipv4Addr,
}

/// What [`Server::handle`] decided. All parts are independent: a DHCPRELEASE changes a
/// lease without a reply; a DHCPOFFER replies without changing a lease.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reply: Option<Transmit>,
    pub lease: Option<LeaseChange>,
    pub seen: Option<Seen>,
}

/// A datagram to send from the socket the request came in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddrV4,
    pub data: Vec<u8>,
}

/// A change to persist. Leases are per MAC: on `Bound`, replace any stored lease with the
/// same MAC or the same IP; on `Released`, delete the MAC's lease of that IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    Bound(Lease),
    Released { mac: MacAddr, ip: Ipv4Addr },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Seconds since the Unix epoch.
    pub expires_unix: i64,
    /// From the reservation, else what the client sent in option 12.
    pub hostname: Option<String>,
}

/// One line for the node's "dhcp" event, e.g.
/// `DHCPACK 10.0.0.23 to iPXE (bios), boot http://10.0.0.1:8080/boot/52-54-00-12-34-56.ipxe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub mac: MacAddr,
    pub message: String,
}

/// Packet counts since start. Every received datagram is counted once in `received` and
/// once in exactly one of `replied`, `dropped_malformed`, `dropped_policy`, `not_for_us`,
/// `pool_exhausted`, `encode_errors` and `no_reply_needed`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub received: u64,
    pub replied: u64,
    /// Of `replied`, how many were DHCPNAK.
    pub naks: u64,
    /// Not a well-formed DHCP request.
    pub dropped_malformed: u64,
    /// Well-formed but not ours to answer by configuration: unknown MAC with
    /// `unknown_nodes = "ignore"`, non-PXE client in proxy mode, no pool for the link,
    /// unsupported message type.
    pub dropped_policy: u64,
    /// Meant for another server, or about an address that is not the client's lease.
    pub not_for_us: u64,
    /// DHCPDISCOVER with no free address in the link's pool.
    pub pool_exhausted: u64,
    /// A reply that could not be encoded (a bug: logged as an error).
    pub encode_errors: u64,
    /// DHCPRELEASE and DHCPDECLINE acted on: they take no reply.
    pub no_reply_needed: u64,
    /// Kept by [`run`]: notices not delivered because the consumer was too slow.
    pub notices_dropped: u64,
    /// Kept by [`run`]: replies the kernel refused to send.
    pub send_errors: u64,
}
