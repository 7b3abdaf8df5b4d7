//! Request and response bodies of the JSON API under [`crate::API_PREFIX`].
//!
//! Routes (all need `Authorization: Bearer <token>`):
//! - `POST /api/v1/agent/{mac}/register` — body [`RegisterRequest`], answer [`Node`]; node token.
//! - `POST /api/v1/agent/{mac}/events` — body [`EventReport`], answer 204; node token.
//! - `GET /api/v1/nodes` — answer `Vec<Node>`; admin token.
//! - `GET /api/v1/nodes/{mac}` — answer [`NodeDetail`]; admin token (or that node's token).
//! - `PUT /api/v1/nodes/{mac}/state` — body [`SetState`], answer [`Node`]; admin token.
//! - `PUT /api/v1/nodes/{mac}` — body [`NodeSettings`], answer [`Node`]; admin token. Creates
//!   the node when its MAC is new, so nodes can be enrolled before they first boot.
//! - `GET /api/v1/nodes/{mac}/layout-plan` — answer [`LayoutPlan`] (dry run of the node's
//!   layout against its registered disks), 422 with the planner's message; admin token.
//! - `GET /api/v1/agent/{mac}/plan` — answer [`AgentPlan`]; node token.
//! - `POST /api/v1/agent/{mac}/block-tree` — body [`crate::layout::BlockTree`], answer 204;
//!   node token.
//! - `POST /api/v1/agent/{mac}/provisioned` — no body, answer 204: the agent has installed
//!   and verified the node, which is now `provisioned`; node token.
//!
//! Images (types in [`crate::image`]):
//! - `GET /api/v1/images` — answer `Vec<ImageSummary>`, every version; admin.
//! - `GET /api/v1/images/{name}` — answer [`ImageVersions`]; admin.
//! - `GET /api/v1/images/{name}/{version}/manifest` — answer `SignedManifest`; `version` may be
//!   `latest`; admin or any node token.
//! - `POST /api/v1/images` — body `Manifest` (unsigned; every chunk must already be stored and
//!   `stored_len` must match), answer `SignedManifest` (201); 409 if that name and version exist
//!   with other content; admin.
//! - `PUT /api/v1/images/{name}/latest` — body [`SetLatest`], answer [`ImageVersions`]
//!   (rollback is pointing `latest` back); admin.
//! - `POST /api/v1/images/gc` — answer [`GcSummary`]; admin.
//! - `POST /api/v1/chunks/missing` — body `ChunkList`, answer `ChunkList` of those the store
//!   lacks; admin.
//! - `PUT /api/v1/chunks/{hash}` — body the zstd-compressed chunk, answer 201 (new) or 200
//!   (already there); the appliance decompresses and checks the BLAKE3 hash; admin.
//! - `GET|HEAD /api/v1/chunks/{hash}` — the compressed chunk, with Range; admin or node token.
//! - `POST /api/v1/chunks/fetch` — body `ChunkList` of 1 to
//!   [`MAX_CHUNKS_PER_FETCH`](crate::image::MAX_CHUNKS_PER_FETCH) chunks, answer their
//!   compressed bytes back to back in the order listed (each chunk's `stored_len` from the
//!   manifest splits them); 404 naming the first one not stored; admin or node token.
//!
//! Errors come back as [`ApiError`] with a 4xx/5xx status.

use serde::{Deserialize, Serialize};

use crate::image::{Digest, ImageSummary};
use crate::layout::BlockTree;
use crate::{Hardware, MacAddr};

/// Where a node stands in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Seen on the network and registered by the agent; nothing decided yet.
    Discovered,
    /// Will be (re)installed on its next boot; its disks may be wiped.
    Provisioning,
    /// Installed; its next network boot is told to boot the local disk.
    Provisioned,
}

impl NodeState {
    pub const ALL: [NodeState; 3] = [Self::Discovered, Self::Provisioning, Self::Provisioned];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::Provisioning => "provisioning",
            Self::Provisioned => "provisioned",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown node state {s:?}: expected discovered, provisioning or provisioned"
                )
            })
    }
}

/// The phase of a boot or install an event belongs to, in the order a node goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Dhcp,
    Tftp,
    IpxeScript,
    Kernel,
    Initramfs,
    Agent,
    AgentRegistered,
    Layout,
    Image,
    Config,
    Bootloader,
    Hooks,
    Reboot,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Tftp => "tftp",
            Self::IpxeScript => "ipxe_script",
            Self::Kernel => "kernel",
            Self::Initramfs => "initramfs",
            Self::Agent => "agent",
            Self::AgentRegistered => "agent_registered",
            Self::Layout => "layout",
            Self::Image => "image",
            Self::Config => "config",
            Self::Bootloader => "bootloader",
            Self::Hooks => "hooks",
            Self::Reboot => "reboot",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// An event as the agent reports it; the appliance stamps the time it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventReport {
    pub phase: Phase,
    pub level: Level,
    pub message: String,
    /// Seconds since the node's kernel started (`/proc/uptime`), when known.
    pub uptime_secs: Option<f64>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub mac: MacAddr,
    pub phase: Phase,
    pub level: Level,
    pub message: String,
    /// Milliseconds since the Unix epoch, appliance clock.
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub hardware: Hardware,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub mac: MacAddr,
    pub state: NodeState,
    pub hostname: Option<String>,
    /// Address from the appliance's lease table, if it leased one.
    pub ip: Option<String>,
    pub hardware: Option<Hardware>,
    /// Name of the disk layout assigned to the node (a file in the appliance's layouts dir).
    pub layout: Option<String>,
    /// The image the node installs: `NAME` (follows `latest`) or `NAME@VERSION` (pinned).
    #[serde(default)]
    pub image: Option<String>,
    /// Whether a root password hash is set for the installed system (the hash is not shown).
    #[serde(default)]
    pub root_password_set: bool,
    /// Public keys installed for root.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub node: Node,
    /// The disks as the agent last reported them after applying a layout.
    pub block_tree: Option<BlockTree>,
    pub events: Vec<Event>,
}

/// Changes to a node; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// `NAME` or `NAME@VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NodeState>,
    /// A crypt(3) hash for root in the installed system; an empty string removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_hash: Option<String>,
    /// Replaces root's authorized keys; an empty list removes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_keys: Option<Vec<String>>,
}

/// A layout by name with its TOML text, as stored on the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedLayout {
    pub name: String,
    pub toml: String,
}

/// What the agent is to do on this boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPlan {
    pub state: NodeState,
    pub hostname: Option<String>,
    /// The layout to apply; `None` leaves the disks alone. The agent plans it against the
    /// disks it sees (the planner is pure, so the appliance's dry run gives the same plan for
    /// the same disks) with the node's MAC as the seed for generated identifiers.
    pub layout: Option<NamedLayout>,
    /// Whether the disks may be wiped: only a node marked `provisioning` may lose data.
    pub may_wipe: bool,
    /// The image to install into the layout's filesystems, resolved to one version.
    #[serde(default)]
    pub image: Option<ImagePlan>,
    /// Root's password hash and SSH keys for the installed system.
    #[serde(default)]
    pub credentials: crate::Credentials,
}

/// One resolved image version: fetch its manifest, check that its id is `manifest_id` and its
/// signature is the appliance's, then its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlan {
    pub name: String,
    pub version: String,
    pub manifest_id: Digest,
    /// The multicast session to receive the version's stored stream from; `None` means
    /// unicast. Chunks the session does not deliver are fetched over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcast: Option<crate::mcast::McastSession>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVersions {
    pub name: String,
    /// The version nodes following `NAME` get.
    pub latest: Option<String>,
    /// Oldest first.
    pub versions: Vec<ImageSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLatest {
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcSummary {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
}

/// A dry run of a node's layout against its registered disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutPlan {
    pub layout: String,
    /// The plan as the planner renders it for people.
    pub plan: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    pub state: NodeState,
}

/// `POST /api/v1/mcast/sessions`: send one image version to these nodes at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateMcastSession {
    /// `NAME` (its latest) or `NAME@VERSION`.
    pub image: String,
    pub nodes: Vec<MacAddr>,
    /// Rate ceiling on the wire, Mbit/s; the appliance's configured one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McastState {
    /// Sending; members join whenever they boot.
    Sending,
    /// Every member finished or was sent to unicast.
    Done,
    /// Stopped by an admin or by the sender failing.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Not heard from yet.
    Waiting,
    Receiving,
    /// Every block verified.
    Done,
    /// Told (or chose) to fetch the rest over HTTP.
    Unicast,
}

/// One node's view in a session, from its latest status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McastMember {
    pub mac: MacAddr,
    pub state: MemberState,
    pub blocks_done: u32,
    pub blocks_total: u32,
    /// Loss it reports, parts per million.
    pub loss_ppm: u32,
    pub rate_kbps: u32,
    /// Why it went to unicast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McastSessionStatus {
    #[serde(flatten)]
    pub session: crate::mcast::McastSession,
    /// `NAME@VERSION`.
    pub image: String,
    pub state: McastState,
    pub started_ms: i64,
    /// Current sending rate, bit/s, and the ceiling.
    pub rate_bps: u64,
    pub ceiling_bps: u64,
    /// Carousel passes begun.
    pub passes: u64,
    pub members: Vec<McastMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_parses_its_own_names() {
        for s in NodeState::ALL {
            assert_eq!(s.as_str().parse::<NodeState>().unwrap(), s);
        }
        assert!("wiped".parse::<NodeState>().is_err());
    }

    #[test]
    fn phase_serializes_as_snake_case() {
        assert_eq!(
            serde_json::to_string(&Phase::IpxeScript).unwrap(),
            "\"ipxe_script\""
        );
        assert_eq!(
            serde_json::to_string(&Phase::AgentRegistered).unwrap(),
            "\"agent_registered\""
        );
    }
}
