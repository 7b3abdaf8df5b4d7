//! The JSON API under `/api/v1`; routes as documented in `metalcast_proto::api`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use metalcast_proto::credentials;
use metalcast_proto::image::ImageRef;
use metalcast_proto::layout::BlockTree;
use metalcast_proto::{
    AgentPlan, Event, EventReport, Hardware, ImagePlan, LayoutPlan, Level, MacAddr, Node,
    NodeDetail, NodeSettings, NodeState, Phase, RegisterRequest, SetState,
};

use crate::layouts::LayoutsError;

use super::{AdminOnly, ApiJson, Failure, NodeRoute, SharedState, now_ms};

/// Longest event message accepted; events are log lines, not log files.
pub const MAX_EVENT_MESSAGE: usize = 16 * 1024;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/agent/{mac}/register", post(register))
        .route("/agent/{mac}/events", post(report_event))
        .route("/nodes", get(list_nodes))
        .route("/agent/{mac}/plan", get(agent_plan))
        .route("/agent/{mac}/block-tree", post(report_block_tree))
        .route("/agent/{mac}/provisioned", post(provisioned))
        .route("/nodes/{mac}", get(show_node).put(update_node))
        .route("/nodes/{mac}/layout-plan", get(layout_plan))
        .route("/nodes/{mac}/state", put(set_state))
        .route("/nodes/{mac}/events", get(node_events))
}

async fn register(
    State(state): State<SharedState>,
    NodeRoute(mac): NodeRoute,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<Json<Node>, Failure> {
    let now = now_ms();
    let node = state.store.register(mac, &body.hardware, now).await?;
    let message = registration_summary(&body.hardware);
    tracing::info!(%mac, "{message}");
    state
        .store
        .add_event(&Event {
            mac,
            phase: Phase::AgentRegistered,
            level: Level::Info,
            message,
            at_ms: now,
        })
        .await?;
    state.announce(&node).await;
    Ok(Json(node))
}

async fn report_event(
    State(state): State<SharedState>,
    NodeRoute(mac): NodeRoute,
    ApiJson(report): ApiJson<EventReport>,
) -> Result<StatusCode, Failure> {
    if report.message.len() > MAX_EVENT_MESSAGE {
        return Err(Failure::bad_request(format!(
            "event message is {} bytes; the limit is {MAX_EVENT_MESSAGE}",
            report.message.len()
        )));
    }
    let now = now_ms();
    state
        .store
        .add_event(&Event {
            mac,
            phase: report.phase,
            level: report.level,
            message: report.message,
            at_ms: now,
        })
        .await?;
    state.store.mark_seen(mac, now).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_nodes(
    State(state): State<SharedState>,
    _: AdminOnly,
) -> Result<Json<Vec<Node>>, Failure> {
    Ok(Json(state.store.nodes().await?))
}

async fn show_node(
    State(state): State<SharedState>,
    NodeRoute(mac): NodeRoute,
) -> Result<Json<NodeDetail>, Failure> {
    let node = state.store.node(mac).await?.ok_or_else(|| no_node(mac))?;
    let events = state.store.events(mac).await?;
    let block_tree = state.store.block_tree(mac).await?;
    Ok(Json(NodeDetail {
        node,
        block_tree,
        events,
    }))
}

async fn node_events(
    State(state): State<SharedState>,
    NodeRoute(mac): NodeRoute,
) -> Result<Json<Vec<Event>>, Failure> {
    state.store.node(mac).await?.ok_or_else(|| no_node(mac))?;
    Ok(Json(state.store.events(mac).await?))
}

async fn set_state(
    State(state): State<SharedState>,
    _: AdminOnly,
    axum::extract::Path(mac): axum::extract::Path<String>,
    ApiJson(body): ApiJson<SetState>,
) -> Result<Json<Node>, Failure> {
    let mac = super::parse_mac(&mac)?;
    let node = state
        .store
        .set_state(mac, body.state)
        .await?
        .ok_or_else(|| no_node(mac))?;
    tracing::info!(%mac, state = %node.state, "node state set");
    state.announce(&node).await;
    Ok(Json(node))
}

async fn update_node(
    State(state): State<SharedState>,
    _: AdminOnly,
    axum::extract::Path(mac): axum::extract::Path<String>,
    ApiJson(mut body): ApiJson<NodeSettings>,
) -> Result<Json<Node>, Failure> {
    let mac = super::parse_mac(&mac)?;
    if let Some(hostname) = &body.hostname {
        check_hostname(hostname).map_err(Failure::bad_request)?;
    }
    if let Some(hash) = body.root_password_hash.as_deref().filter(|h| !h.is_empty()) {
        credentials::validate_password_hash(hash)
            .map_err(|e| Failure::bad_request(e.to_string()))?;
    }
    for key in body.ssh_authorized_keys.iter().flatten() {
        credentials::validate_authorized_key(key)
            .map_err(|e| Failure::bad_request(e.to_string()))?;
    }
    if let Some(name) = &body.layout {
        // Refuse now what the agent could not use later.
        state.layouts.load(name).map_err(layout_failure)?;
    }
    if let Some(text) = &body.image {
        let wanted: ImageRef = text
            .parse()
            .map_err(|e| Failure::bad_request(format!("image: {e}")))?;
        if super::images::resolve(&state, &wanted).await?.is_none() {
            return Err(Failure::bad_request(format!(
                "image: {}",
                super::images::unresolved(&wanted)
            )));
        }
        body.image = Some(wanted.to_string());
    }
    let node = state.store.update_node(mac, &body, now_ms()).await?;
    state.announce(&node).await;
    tracing::info!(%mac, hostname = ?body.hostname, layout = ?body.layout, image = ?body.image,
        state = ?body.state, root_password = body.root_password_hash.is_some(),
        ssh_keys = ?body.ssh_authorized_keys.as_ref().map(Vec::len), "node settings changed");
    Ok(Json(node))
}

/// The node's layout planned against its registered disks, as the agent will plan it.
async fn layout_plan(
    State(state): State<SharedState>,
    _: AdminOnly,
    axum::extract::Path(mac): axum::extract::Path<String>,
) -> Result<Json<LayoutPlan>, Failure> {
    let mac = super::parse_mac(&mac)?;
    let node = state.store.node(mac).await?.ok_or_else(|| no_node(mac))?;
    let name = node
        .layout
        .ok_or_else(|| Failure::new(StatusCode::CONFLICT, format!("node {mac} has no layout")))?;
    let hardware = node.hardware.ok_or_else(|| {
        Failure::new(
            StatusCode::CONFLICT,
            format!("node {mac} has not registered its disks yet; boot it once"),
        )
    })?;
    let (_, layout) = state.layouts.load(&name).map_err(layout_failure)?;
    let plan = metalcast_layout::plan(
        &layout,
        &hardware.disks,
        hardware.firmware,
        &mac.to_string(),
    )
    .map_err(|e| {
        Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("layout {name:?} does not fit node {mac}: {e}"),
        )
    })?;
    Ok(Json(LayoutPlan {
        layout: name,
        plan: plan.to_string(),
    }))
}

async fn agent_plan(
    State(state): State<SharedState>,
    NodeRoute(mac): NodeRoute,
) -> Result<Json<AgentPlan>, Failure> {
    let node = state.store.node(mac).await?.ok_or_else(|| no_node(mac))?;
    let layout = match &node.layout {
        Some(name) => Some(state.layouts.load(name).map_err(layout_failure)?.0),
        None => None,
    };
    let image = match &node.image {
        Some(text) => Some(image_plan(&state, mac, text).await?),
        None => None,
    };
    Ok(Json(AgentPlan {
        state: node.state,
        hostname: node.hostname,
        layout,
        may_wipe: node.state == NodeState::Provisioning,
        image,
        credentials: state.store.credentials(mac).await?,
    }))
}

/// The node's image resolved to one version now; 409 when it names none (the agent must
/// not guess, and the operator must repoint the node).
async fn image_plan(state: &SharedState, mac: MacAddr, text: &str) -> Result<ImagePlan, Failure> {
    let conflict = |why: String| {
        Failure::new(
            StatusCode::CONFLICT,
            format!("node {mac}'s image {text:?}: {why}"),
        )
    };
    let wanted: ImageRef = text.parse().map_err(|e| conflict(format!("{e}")))?;
    let signed = super::images::resolve(state, &wanted)
        .await?
        .ok_or_else(|| conflict(super::images::unresolved(&wanted)))?;
    let mcast = super::mcast::session_for(state, mac, &signed).await?;
    Ok(ImagePlan {
        name: signed.manifest.name,
        version: signed.manifest.version,
        manifest_id: signed.id,
        mcast,
    })
}

/// The agent installed and verified the node: from now on it boots its local disk.
async fn provisioned(
    State(state): State<SharedState>,
    NodeRoute(mac): NodeRoute,
) -> Result<StatusCode, Failure> {
    let node = state
        .store
        .set_state(mac, NodeState::Provisioned)
        .await?
        .ok_or_else(|| no_node(mac))?;
    state.announce(&node).await;
    let message = "installed; next network boot boots the local disk".to_string();
    tracing::info!(%mac, "{message}");
    state
        .store
        .add_event(&Event {
            mac,
            phase: Phase::Reboot,
            level: Level::Info,
            message,
            at_ms: now_ms(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn report_block_tree(
    State(state): State<SharedState>,
    NodeRoute(mac): NodeRoute,
    ApiJson(tree): ApiJson<BlockTree>,
) -> Result<StatusCode, Failure> {
    if !state.store.set_block_tree(mac, &tree).await? {
        return Err(no_node(mac));
    }
    Ok(StatusCode::NO_CONTENT)
}

fn layout_failure(e: LayoutsError) -> Failure {
    match e {
        LayoutsError::Read { .. } => {
            tracing::error!(error = %super::error_chain(&e), "reading a layout");
            Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        LayoutsError::Invalid { .. } => {
            Failure::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        LayoutsError::BadName(_) | LayoutsError::Missing { .. } => {
            Failure::bad_request(e.to_string())
        }
    }
}

/// A host name as RFC 1123 allows: dot-separated labels of letters, digits and hyphens.
fn check_hostname(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "hostname {name:?} is not valid: dot-separated labels of letters, digits and '-', \
             each at most 63 characters"
        ))
    }
}

fn no_node(mac: MacAddr) -> Failure {
    Failure::not_found(format!("no node {mac}"))
}

/// One line for the `agent_registered` event: "registered: bios, 2 disks, 1 nic, 1024 MiB".
pub fn registration_summary(hw: &Hardware) -> String {
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("1 {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    format!(
        "registered: {}, {}, {}, {} MiB",
        hw.firmware,
        plural(hw.disks.len(), "disk"),
        plural(hw.nics.len(), "nic"),
        hw.memory_bytes >> 20
    )
}

#[cfg(test)]
mod tests {
    use metalcast_proto::{Cpu, Disk, Dmi, Firmware, Nic};

    use super::*;

    #[test]
    fn summary_counts_and_pluralizes() {
        let disk = Disk {
            path: "/dev/vda".into(),
            size_bytes: 1 << 30,
            model: None,
            serial: None,
            rotational: false,
            by_path: None,
        };
        let nic = Nic {
            name: "eth0".into(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            driver: None,
            speed_mbps: None,
        };
        let mut hw = Hardware {
            firmware: Firmware::Bios,
            cpu: Cpu {
                count: 1,
                model: None,
            },
            memory_bytes: 1024 << 20,
            disks: vec![disk.clone(), disk],
            nics: vec![nic],
            dmi: Dmi::default(),
        };
        assert_eq!(
            registration_summary(&hw),
            "registered: bios, 2 disks, 1 nic, 1024 MiB"
        );
        hw.firmware = Firmware::Uefi;
        hw.disks.truncate(1);
        hw.nics.clear();
        hw.memory_bytes = (512 << 20) + 5;
        assert_eq!(
            registration_summary(&hw),
            "registered: uefi, 1 disk, 0 nics, 512 MiB"
        );
    }
}
