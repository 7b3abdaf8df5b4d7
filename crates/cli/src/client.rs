//! The HTTP API client: one method per route the CLI uses.

use metalcast_proto::image::{ChunkList, Digest, ImageSummary, Manifest, SignedManifest};
use metalcast_proto::mcast::SessionId;
use metalcast_proto::{
    API_PREFIX, ApiError, CreateMcastSession, GcSummary, ImageVersions, LayoutPlan, MacAddr,
    McastSessionStatus, Node, NodeDetail, NodeSettings, NodeState, SetLatest, SetState,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the appliance at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{status} from {url}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from {url}")]
    BadBody {
        url: String,
        #[source]
        source: ureq::Error,
    },
}

pub struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            // Non-2xx answers carry an ApiError body that we want to show.
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_string(),
            auth: format!("Bearer {token}"),
            agent,
        }
    }

    pub fn nodes(&self) -> Result<Vec<Node>, ClientError> {
        self.get("/nodes")
    }

    pub fn node(&self, mac: MacAddr) -> Result<NodeDetail, ClientError> {
        self.get(&format!("/nodes/{mac}"))
    }

    pub fn set_state(&self, mac: MacAddr, state: NodeState) -> Result<Node, ClientError> {
        self.put(&format!("/nodes/{mac}/state"), &SetState { state })
    }

    pub fn update_node(&self, mac: MacAddr, settings: &NodeSettings) -> Result<Node, ClientError> {
        self.put(&format!("/nodes/{mac}"), settings)
    }

    pub fn layout_plan(&self, mac: MacAddr) -> Result<LayoutPlan, ClientError> {
        self.get(&format!("/nodes/{mac}/layout-plan"))
    }

    pub fn images(&self) -> Result<Vec<ImageSummary>, ClientError> {
        self.get("/images")
    }

    pub fn image(&self, name: &str) -> Result<ImageVersions, ClientError> {
        self.get(&format!("/images/{name}"))
    }

    pub fn set_latest(&self, name: &str, version: &str) -> Result<ImageVersions, ClientError> {
        let body = SetLatest {
            version: version.to_owned(),
        };
        self.put(&format!("/images/{name}/latest"), &body)
    }

    pub fn image_gc(&self) -> Result<GcSummary, ClientError> {
        let url = self.url("/images/gc");
        let result = self
            .agent
            .post(&url)
            .header("Authorization", &self.auth)
            .send_empty();
        decode(url, result)
    }

    pub fn create_session(
        &self,
        body: &CreateMcastSession,
    ) -> Result<McastSessionStatus, ClientError> {
        self.post("/mcast/sessions", body)
    }

    pub fn sessions(&self) -> Result<Vec<McastSessionStatus>, ClientError> {
        self.get("/mcast/sessions")
    }

    pub fn session(&self, id: SessionId) -> Result<McastSessionStatus, ClientError> {
        self.get(&format!("/mcast/sessions/{id}"))
    }

    pub fn stop_session(&self, id: SessionId) -> Result<McastSessionStatus, ClientError> {
        let url = self.url(&format!("/mcast/sessions/{id}"));
        let result = self
            .agent
            .delete(&url)
            .header("Authorization", &self.auth)
            .call();
        decode(url, result)
    }

    /// Asks the store to sign and keep a manifest whose chunks it already has.
    pub fn create_image(&self, manifest: &Manifest) -> Result<SignedManifest, ClientError> {
        self.post("/images", manifest)
    }

    /// Those of `chunks` the appliance's store lacks.
    pub fn missing_chunks(&self, chunks: Vec<Digest>) -> Result<Vec<Digest>, ClientError> {
        let answer: ChunkList = self.post("/chunks/missing", &ChunkList { chunks })?;
        Ok(answer.chunks)
    }

    /// Uploads one zstd-compressed chunk; true when the appliance did not have it yet.
    pub fn put_chunk(&self, hash: &Digest, compressed: &[u8]) -> Result<bool, ClientError> {
        let url = self.url(&format!("/chunks/{hash}"));
        let result = self
            .agent
            .put(&url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/zstd")
            .send(compressed);
        let response = checked(url, result)?;
        Ok(response.status().as_u16() == 201)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let result = self
            .agent
            .post(&url)
            .header("Authorization", &self.auth)
            .send_json(body);
        decode(url, result)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{API_PREFIX}{path}", self.base);
        let result = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth)
            .call();
        decode(url, result)
    }

    fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{API_PREFIX}{path}", self.base);
        let result = self
            .agent
            .put(&url)
            .header("Authorization", &self.auth)
            .send_json(body);
        decode(url, result)
    }
}

impl ClientError {
    /// The HTTP status the appliance answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type Answer = Result<ureq::http::Response<ureq::Body>, ureq::Error>;

fn decode<T: DeserializeOwned>(url: String, result: Answer) -> Result<T, ClientError> {
    let mut response = checked(url.clone(), result)?;
    response
        .body_mut()
        .read_json()
        .map_err(|source| ClientError::BadBody { url, source })
}

/// The response if its status is 2xx; else the appliance's error message.
fn checked(url: String, result: Answer) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
    let mut response = match result {
        Ok(r) => r,
        Err(source) => return Err(ClientError::Unreachable { url, source }),
    };
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        return Err(ClientError::Status {
            url,
            status,
            message,
        });
    }
    Ok(response)
}
