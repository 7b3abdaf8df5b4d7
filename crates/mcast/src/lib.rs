//! Multicast transfer of byte blocks with erasure coding (docs/multicast.md).
//!
//! [`Sender`] and [`Receiver`] are deterministic state machines: no sockets, no clock, no
//! threads. Time is passed in, datagrams are passed in and handed back as [`Transmit`]s into a
//! caller's buffer. [`udp`] and [`drive`] are the thin edge that runs them on real sockets.

pub mod blocks;
pub mod drive;
pub mod fec;
pub mod packet;
pub mod receiver;
pub mod sender;
pub mod udp;

mod replay;

use std::net::SocketAddr;

pub use blocks::{BlockList, Geometry, Hash, Layout};
pub use packet::Reason;
pub use receiver::{Receiver, ReceiverConfig};
pub use sender::{Sender, SenderConfig, Source};

/// Where a datagram built by [`Sender::poll_transmit`] or [`Receiver::poll_transmit`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The session's multicast group.
    Group,
    /// One host (a receiver's status goes to the sender).
    Unicast(SocketAddr),
}

/// A datagram waiting in the caller's buffer: its first `len` bytes go to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit {
    pub to: Destination,
    pub len: usize,
}

/// Bytes a packet occupies on an Ethernet link besides its UDP payload (IPv4 20, UDP 8,
/// Ethernet header 14): what a rate ceiling counts.
pub const WIRE_OVERHEAD: usize = 42;

#[cfg(test)]
mod tests;
