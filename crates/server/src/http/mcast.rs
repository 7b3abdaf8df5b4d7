//! The multicast routes under `/api/v1/mcast`: open, list, show and stop sessions, and the
//! block list a member checks every block against.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metalcast_proto::image::{Digest, ImageRef, SignedManifest};
use metalcast_proto::mcast::{McastSession, SessionId};
use metalcast_proto::{CreateMcastSession, MacAddr, McastSessionStatus, NodeState};

use super::{AdminOnly, ApiJson, Failure, ImageReader, SharedState, now_ms};
use crate::auth::Principal;
use crate::mcast::McastError;

/// Nodes seen this recently count as booted and waiting when an automatic session is opened.
const AUTO_WINDOW_MS: i64 = 60_000;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/mcast/sessions", get(list).post(create))
        .route("/mcast/sessions/{id}", get(show).delete(stop))
        .route("/mcast/sessions/{id}/blocks", get(blocks))
}

fn session_id(text: &str) -> Result<SessionId, Failure> {
    text.parse()
        .map_err(|e| Failure::bad_request(format!("session id {text:?}: {e}")))
}

fn no_session(id: SessionId) -> Failure {
    Failure::not_found(format!("no multicast session {id}"))
}

fn mcast_failure(e: McastError) -> Failure {
    match e {
        McastError::NotConfigured => Failure::new(StatusCode::CONFLICT, e.to_string()),
        McastError::NoMembers | McastError::Empty(_) => Failure::bad_request(e.to_string()),
        McastError::Read { .. } | McastError::Blocks { .. } => {
            tracing::error!(error = %super::error_chain(&e), "opening a multicast session");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}; see the appliance log"),
            )
        }
    }
}

/// Opens a session off the async threads (it reads the whole stored stream).
async fn open(
    state: &SharedState,
    signed: SignedManifest,
    members: Vec<MacAddr>,
    rate: Option<u64>,
) -> Result<McastSessionStatus, Failure> {
    let sessions = state.mcast.clone();
    let store = state.images.store.clone();
    tokio::task::spawn_blocking(move || sessions.create(&store, &signed, &members, rate))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a multicast session task failed");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: see the appliance log",
            )
        })?
        .map_err(mcast_failure)
}

async fn create(
    State(state): State<SharedState>,
    _: AdminOnly,
    ApiJson(body): ApiJson<CreateMcastSession>,
) -> Result<(StatusCode, Json<McastSessionStatus>), Failure> {
    if state.mcast.settings().is_none() {
        return Err(mcast_failure(McastError::NotConfigured));
    }
    let wanted: ImageRef = body
        .image
        .parse()
        .map_err(|e| Failure::bad_request(format!("image: {e}")))?;
    let signed = super::images::resolve(&state, &wanted)
        .await?
        .ok_or_else(|| Failure::bad_request(super::images::unresolved(&wanted)))?;
    // Every member must install exactly this version, or it would never join.
    for &mac in &body.nodes {
        let node = state.store.node(mac).await?.ok_or_else(|| {
            Failure::bad_request(format!("no node {mac}: enrol it with `metalcast node set`"))
        })?;
        let installs = match &node.image {
            Some(text) => resolved_id(&state, text).await?,
            None => None,
        };
        if installs != Some(signed.id) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                format!(
                    "node {mac} installs {}, not {}@{}",
                    node.image.as_deref().unwrap_or("no image"),
                    signed.manifest.name,
                    signed.manifest.version
                ),
            ));
        }
    }
    let rate = match body.rate_mbit {
        Some(0) | Some(100_001..) => {
            return Err(Failure::bad_request("rate_mbit: must be within 1..=100000"));
        }
        r => r.map(|m| u64::from(m) * 1_000_000),
    };
    let status = open(&state, signed, body.nodes, rate).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

/// The manifest id a node's image setting resolves to now, if any.
async fn resolved_id(state: &SharedState, text: &str) -> Result<Option<Digest>, Failure> {
    let Ok(wanted) = text.parse::<ImageRef>() else {
        return Ok(None);
    };
    Ok(super::images::resolve(state, &wanted).await?.map(|s| s.id))
}

async fn list(State(state): State<SharedState>, _: AdminOnly) -> Json<Vec<McastSessionStatus>> {
    Json(state.mcast.list())
}

async fn show(
    State(state): State<SharedState>,
    _: AdminOnly,
    Path(id): Path<String>,
) -> Result<Json<McastSessionStatus>, Failure> {
    let id = session_id(&id)?;
    state.mcast.get(id).map(Json).ok_or_else(|| no_session(id))
}

async fn stop(
    State(state): State<SharedState>,
    _: AdminOnly,
    Path(id): Path<String>,
) -> Result<Json<McastSessionStatus>, Failure> {
    let id = session_id(&id)?;
    if !state.mcast.stop(id) {
        return match state.mcast.get(id) {
            Some(s) => Err(Failure::new(
                StatusCode::CONFLICT,
                format!("session {id} is already {:?}", s.state).to_lowercase(),
            )),
            None => Err(no_session(id)),
        };
    }
    tracing::info!(session = %id, "multicast session stopped by an admin");
    state.mcast.get(id).map(Json).ok_or_else(|| no_session(id))
}

/// The block list in its text form: admins and the session's members may read it.
async fn blocks(
    State(state): State<SharedState>,
    ImageReader(who): ImageReader,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Failure> {
    let id = session_id(&id)?;
    let (text, members) = state.mcast.block_list(id).ok_or_else(|| no_session(id))?;
    if let Principal::Node(mac) = who
        && !members.contains(&mac)
    {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            format!("node {mac} is not a member of session {id}"),
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// The session `mac` receives `signed` from, if any: one it is a member of, or an automatic
/// one opened now for every node in `provisioning` that wants the same version.
pub(super) async fn session_for(
    state: &SharedState,
    mac: MacAddr,
    signed: &SignedManifest,
) -> Result<Option<McastSession>, Failure> {
    let store = &state.images.store;
    if let Some(s) = state.mcast.join(mac, &signed.id, store) {
        return Ok(Some(s));
    }
    let Some(settings) = state.mcast.settings() else {
        return Ok(None);
    };
    if settings.auto_min_nodes == 0 {
        return Ok(None);
    }
    let _deciding = state.mcast.auto.lock().await;
    // Another node may have opened it while this one waited.
    if let Some(s) = state.mcast.join(mac, &signed.id, store) {
        return Ok(Some(s));
    }
    let now = now_ms();
    let mut wanting = Vec::new();
    for node in state.store.nodes().await? {
        let fresh = now - node.last_seen_ms <= AUTO_WINDOW_MS;
        if node.state != NodeState::Provisioning || !fresh {
            continue;
        }
        if let Some(text) = &node.image
            && resolved_id(state, text).await? == Some(signed.id)
        {
            wanting.push(node.mac);
        }
    }
    if !wanting.contains(&mac) || !state.mcast.wants_auto_session(&signed.id, &wanting) {
        return Ok(None);
    }
    let status = open(state, signed.clone(), wanting, None).await?;
    tracing::info!(session = %status.session.id, members = status.members.len(),
        "automatic multicast session: {} nodes want {}", status.members.len(), status.image);
    Ok(state.mcast.join(mac, &signed.id, store))
}
