//! The JSON API under `/api/v1`; routes as documented in `metalcast_proto::api`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use metalcast_proto::{
    Event, EventReport, Hardware, Level, Node, NodeDetail, Phase, RegisterRequest, SetState,
};

use super::{AdminOnly, ApiJson, Failure, NodeRoute, SharedState, now_ms};

/// Longest event message accepted; events are log lines, not log files.
pub const MAX_EVENT_MESSAGE: usize = 16 * 1024;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/agent/{mac}/register", post(register))
        .route("/agent/{mac}/events", post(report_event))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{mac}", get(show_node))
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
    state.announce(mac).await;
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
    Ok(Json(NodeDetail { node, events }))
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
    Ok(Json(node))
}

fn no_node(mac: metalcast_proto::MacAddr) -> Failure {
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
