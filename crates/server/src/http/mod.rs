//! The HTTP service: boot scripts and files for iPXE, the JSON API, `/healthz`.

mod api;
mod boot;
mod images;
mod mcast;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metalcast_proto::{ApiError, MacAddr, Node};
use tokio::sync::mpsc;

use crate::auth::{Access, Principal, authorize, bearer_token};
use crate::images::Images;
use crate::layouts::Layouts;
use crate::store::{Store, StoreError};

/// Largest request body the API accepts; a hardware report is a few KiB.
pub const BODY_LIMIT: usize = 1 << 20;

/// The agent files served under `/boot/files/`.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Appended to the agent's kernel command line.
    pub kernel_args: String,
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub boot: BootFiles,
    /// Told about every node the appliance creates or registers (the DHCP service needs
    /// to know them when it ignores unknown MACs). `None` when nobody listens.
    pub known_nodes: Option<mpsc::Sender<Node>>,
    pub layouts: Layouts,
    pub images: Images,
    pub mcast: Arc<crate::mcast::Sessions>,
}

impl AppState {
    /// Tells DHCP about a node the appliance created or changed.
    async fn announce(&self, node: &Node) {
        if let Some(tx) = &self.known_nodes
            && tx.send(node.clone()).await.is_err()
        {
            tracing::warn!(mac = %node.mac, "the DHCP service is gone; it was not told about this node");
        }
    }
}

pub type SharedState = Arc<AppState>;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .nest("/boot", boot::routes())
        .nest(
            metalcast_proto::API_PREFIX,
            api::routes().merge(images::routes()).merge(mcast::routes()),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { Failure::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Arc::new(state))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An error answer: a status and an [`ApiError`] body.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        tracing::error!(error = %error_chain(&e), "database failure while answering a request");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the database failed; see the appliance log",
        )
    }
}

impl From<metalcast_image::StoreError> for Failure {
    fn from(e: metalcast_image::StoreError) -> Failure {
        use metalcast_image::StoreError as E;
        match e {
            E::MissingChunk(_) => Failure::not_found(e.to_string()),
            E::BadChunk { .. } | E::ChunksMissing { .. } | E::Name(_) => {
                Failure::bad_request(e.to_string())
            }
            E::VersionExists { .. } => Failure::new(StatusCode::CONFLICT, e.to_string()),
            E::Io { .. } | E::Manifest { .. } => {
                tracing::error!(error = %error_chain(&e), "chunk store failure while answering a request");
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: the chunk store failed; see the appliance log",
                )
            }
        }
    }
}

/// Runs a blocking chunk store call off the async threads.
async fn with_image_store<T, F>(images: &Images, f: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: FnOnce(&metalcast_image::Store) -> Result<T, metalcast_image::StoreError> + Send + 'static,
{
    let store = images.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a chunk store task failed");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: see the appliance log",
            )
        })?
        .map_err(Failure::from)
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(ApiError {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `error: cause: cause`, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn parse_mac(text: &str) -> Result<MacAddr, Failure> {
    text.parse()
        .map_err(|e: metalcast_proto::MacParseError| Failure::bad_request(e.to_string()))
}

/// The caller, from its bearer token: 401 when there is none or it is unknown.
async fn principal(parts: &Parts, state: &AppState) -> Result<Principal, Failure> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token> header",
        )
    })?;
    let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "the Authorization header is not \"Bearer <token>\"",
        )
    })?;
    state
        .store
        .principal(token)
        .await?
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "unknown or replaced token"))
}

/// Extractor for routes only admin tokens reach.
pub struct AdminOnly;

impl FromRequestParts<SharedState> for AdminOnly {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Failure> {
        let who = principal(parts, state).await?;
        authorize(&who, Access::Admin)
            .map_err(|e| Failure::new(StatusCode::FORBIDDEN, e.to_string()))?;
        Ok(AdminOnly)
    }
}

/// Extractor for routes of one node (`{mac}` in the path): its own token or an admin token.
/// Authorization happens before the body is read, so a wrong token never gets to learn
/// what is wrong with its body.
pub struct NodeRoute(pub MacAddr);

impl FromRequestParts<SharedState> for NodeRoute {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Failure> {
        let who = principal(parts, state).await?;
        let axum::extract::Path(text) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| Failure::bad_request(e.body_text()))?;
        let mac = parse_mac(&text)?;
        authorize(&who, Access::Node(mac))
            .map_err(|e| Failure::new(StatusCode::FORBIDDEN, e.to_string()))?;
        Ok(NodeRoute(mac))
    }
}

/// Extractor for image reads (manifests, chunks): an admin token or any node's token. Carries
/// the caller so that fetches by a node can be recorded as its events.
pub struct ImageReader(pub Principal);

impl FromRequestParts<SharedState> for ImageReader {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Failure> {
        let who = principal(parts, state).await?;
        authorize(&who, Access::ImageRead)
            .map_err(|e| Failure::new(StatusCode::FORBIDDEN, e.to_string()))?;
        Ok(ImageReader(who))
    }
}

/// A JSON body whose rejections are [`ApiError`]s: 400 with the parser's reason for
/// malformed or mistyped JSON, 415 without a JSON content type, 413 when too large.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a body with Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(Failure::new(e.status(), e.body_text())),
            Err(e) => Err(Failure::bad_request(e.body_text())),
        }
    }
}
