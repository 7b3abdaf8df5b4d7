//! Every type that crosses the wire between `metalcastd`, the agent and the CLI.
//!
//! Appliance and agent both depend on this crate and on nothing else shared, so the
//! two sides cannot drift apart.

pub mod api;
pub mod credentials;
pub mod hardware;
pub mod image;
pub mod layout;
pub mod mac;
pub mod mcast;

pub use api::*;
pub use credentials::Credentials;
pub use hardware::*;
pub use mac::{MacAddr, MacParseError};

/// Kernel command-line keys the iPXE script passes to the agent.
pub mod cmdline {
    /// Base URL of the appliance's HTTP service, e.g. `http://10.0.0.1:8080`.
    pub const URL: &str = "metalcast.url";
    /// The node's per-boot bearer token.
    pub const TOKEN: &str = "metalcast.token";
    /// MAC of the NIC the node booted from (`52:54:00:12:34:56`).
    pub const MAC: &str = "metalcast.mac";
    /// The appliance's ed25519 public key (64 hex digits): image manifests must carry its
    /// signature.
    pub const KEY: &str = "metalcast.key";
}

/// Path prefix of the versioned JSON API.
pub const API_PREFIX: &str = "/api/v1";
