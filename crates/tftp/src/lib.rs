//! Read-only TFTP server: RFC 1350, option extension (RFC 2347) with blksize (RFC 2348), tsize and
//! timeout (RFC 2349) and windowsize (RFC 7440). Operator documentation: `docs/tftp.md`.
//!
//! Protocol logic is sans-I/O and unit-tested without sockets:
//! - [`request`]: what to do with a datagram on the listening port;
//! - [`options`]: [`negotiate`] from requested options, limits and file size;
//! - [`transfer`]: [`Sender`], the per-transfer state machine (windows, ACKs, timeouts);
//! - [`path`]: which file a requested name may open.
//!
//! The I/O edge is [`serve`] / [`Server`]: the async listening loop only classifies requests;
//! each transfer runs on its own thread with its own blocking UDP socket (its own port), see
//! `session.rs` for why.

pub mod config;
pub mod netascii;
pub mod options;
pub mod packet;
pub mod path;
pub mod request;
mod server;
mod session;
mod socket;
pub mod transfer;

#[cfg(test)]
mod testutil;

pub use config::{ConfigError, TftpConfig};
pub use options::{Limits, Negotiated, negotiate};
pub use server::{CounterSnapshot, Counters, Server, TftpError, TransferEvent, serve};
pub use transfer::{BlockSource, Sender, TransferOutcome};
