//! `/boot/{mac}.ipxe` and `/boot/files/…`: what iPXE fetches. No authentication: iPXE has
//! no token yet; the script hands it one.

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metalcast_proto::{Event, Level, MacAddr, Phase};
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::{Failure, SharedState, now_ms, parse_mac};
use crate::script::{HttpHost, agent_script, local_disk_script};

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/{script}", get(script))
        .route("/files/vmlinuz", get(kernel))
        .route("/files/initramfs", get(initramfs))
}

async fn script(
    State(state): State<SharedState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let mac = name
        .strip_suffix(".ipxe")
        .ok_or_else(|| Failure::not_found("no such boot script: expected /boot/{mac}.ipxe"))?;
    let mac = parse_mac(mac)?;
    let host: HttpHost = headers
        .get(HOST)
        .ok_or_else(|| Failure::bad_request("missing Host header"))?
        .to_str()
        .map_err(|_| Failure::bad_request("the Host header is not text"))?
        .parse()
        .map_err(|e: crate::script::HostError| Failure::bad_request(e.to_string()))?;
    let now = now_ms();
    let (node, created) = state.store.touch_node(mac, now).await?;
    if created {
        tracing::info!(%mac, "new node discovered");
        state.announce(&node).await;
    }
    let (body, message) = if node.state == metalcast_proto::NodeState::Provisioned {
        // A node that boots its disk needs no token; the old one must not stay valid.
        state.store.revoke_node_token(mac).await?;
        (
            local_disk_script(mac),
            "local disk script served (node is provisioned)".to_string(),
        )
    } else {
        let token = state.store.issue_node_token(mac, now).await?;
        (
            agent_script(
                &host,
                mac,
                &token,
                &state.images.public_key(),
                &state.boot.kernel_args,
            ),
            format!(
                "agent script served via {host} (node is {}, new node token)",
                node.state
            ),
        )
    };
    tracing::info!(%mac, "{message}");
    record(&state, mac, Phase::IpxeScript, message, now).await;
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            // The agent script carries a token: no cache may keep it.
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
struct FileQuery {
    mac: Option<String>,
}

async fn kernel(
    State(state): State<SharedState>,
    query: Result<Query<FileQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let path = state.boot.kernel.clone();
    serve(state, query, request, &path, Phase::Kernel, "vmlinuz").await
}

async fn initramfs(
    State(state): State<SharedState>,
    query: Result<Query<FileQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let path = state.boot.initramfs.clone();
    serve(state, query, request, &path, Phase::Initramfs, "initramfs").await
}

/// Serve a boot file (GET, HEAD, Range) and record the fetch for the node named by `?mac=`,
/// when there is a valid one. The event marks the start of the download.
async fn serve(
    state: SharedState,
    query: Result<Query<FileQuery>, QueryRejection>,
    request: Request,
    path: &Path,
    phase: Phase,
    name: &str,
) -> Response {
    let mac: Option<MacAddr> = query
        .ok()
        .and_then(|Query(q)| q.mac)
        .and_then(|m| m.parse().ok());
    let is_get = request.method() == Method::GET;
    let response = match ServeFile::new(path).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    };
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        tracing::warn!(path = %path.display(), "boot file {name} is missing");
    }
    if let (Some(mac), true, true) = (mac, is_get, status.is_success()) {
        let headers = response.headers();
        let text = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
        let message = match (status, text(CONTENT_RANGE), text(CONTENT_LENGTH)) {
            (StatusCode::PARTIAL_CONTENT, Some(range), _) => format!("{name} served, {range}"),
            (_, _, Some(len)) => format!("{name} served, {len} bytes"),
            _ => format!("{name} served"),
        };
        record(&state, mac, phase, message, now_ms()).await;
    }
    response
}

/// Store an event; a failure is logged, never turned into a failed boot.
async fn record(state: &SharedState, mac: MacAddr, phase: Phase, message: String, at_ms: i64) {
    let event = Event {
        mac,
        phase,
        level: Level::Info,
        message,
        at_ms,
    };
    if let Err(e) = state.store.add_event(&event).await {
        tracing::error!(%mac, error = %super::error_chain(&e), "storing a {phase} event failed");
    }
}
