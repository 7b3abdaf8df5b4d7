//! The HTTP API client: one method per route the CLI uses.

use metalcast_proto::{
    API_PREFIX, ApiError, LayoutPlan, MacAddr, Node, NodeDetail, NodeSettings, NodeState, SetState,
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

fn decode<T: DeserializeOwned>(
    url: String,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, ClientError> {
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
    response
        .body_mut()
        .read_json()
        .map_err(|source| ClientError::BadBody { url, source })
}
