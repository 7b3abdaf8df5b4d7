//! The agent's side of the appliance's JSON API (routes in [`metalcast_proto::api`]).
//!
//! [`Appliance`] makes single calls and turns every answer into `Ok` or an [`ApiError`] that
//! knows whether trying again can help; [`with_retry`] is the retry policy around a call.

use std::time::Duration;

use metalcast_proto::image::{ChunkList, Digest};
use metalcast_proto::layout::BlockTree;
use metalcast_proto::{API_PREFIX, AgentPlan, EventReport, MacAddr, Node, RegisterRequest};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::backoff::Backoff;
use crate::cmdline::BootParams;

/// Larger answers are refused rather than buffered: the largest, a plan with its layout's
/// text, stays far below this.
const MAX_ANSWER_BYTES: u64 = 8 << 20;
/// Most of an error body worth printing on a serial console.
const MAX_MESSAGE_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the appliance")]
    Unreachable(#[source] ureq::Error),
    #[error("cannot build the request")]
    Request(#[source] ureq::Error),
    #[error("the appliance answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the appliance's answer is not the expected JSON")]
    BadBody(#[source] serde_json::Error),
}

impl ApiError {
    /// Whether the same call may succeed later without anyone changing anything: the appliance
    /// is away, overloaded or failing (5xx, 408, 429). Other 4xx answers need a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Self::Request(_) | Self::BadBody(_) => false,
        }
    }

    /// What an operator reading the console should make of a refusal.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Status {
                status: 401 | 403, ..
            } => Some(
                "the node token was refused: the metalcast.token on the kernel command line is \
                 wrong, expired or belongs to another node; network-boot the node again for a fresh one",
            ),
            Self::Status { status: 404, .. } => Some(
                "the appliance does not know this route or this node: check metalcast.url and metalcast.mac",
            ),
            _ => None,
        }
    }
}

/// The error and all its sources on one line, as the console shows them.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A blocking client bound to one appliance and one node. Clones share the connection pool.
#[derive(Clone)]
pub struct Appliance {
    http: ureq::Agent,
    base: String,
    auth: String,
    mac: MacAddr,
}

impl Appliance {
    pub fn new(params: &BootParams) -> Self {
        let config = ureq::Agent::config_builder()
            // Statuses are answers to classify, not transport failures.
            .http_status_as_error(false)
            // The appliance is on the provisioning segment; no proxy, no redirects expected.
            .proxy(None)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .user_agent(concat!("metalcast-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            http: config.into(),
            base: params.url.clone(),
            auth: format!("Bearer {}", params.token),
            mac: params.mac,
        }
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// `POST /api/v1/agent/{mac}/events`.
    pub fn send_event(&self, report: &EventReport) -> Result<(), ApiError> {
        let url = self.url(&format!("/agent/{}/events", self.mac));
        let answer = self
            .http
            .post(&url)
            .header("Authorization", &self.auth)
            .send_json(report);
        self.finish(answer).map(drop)
    }

    /// `POST /api/v1/agent/{mac}/register`.
    pub fn register(&self, request: &RegisterRequest) -> Result<Node, ApiError> {
        let url = self.url(&format!("/agent/{}/register", self.mac));
        let answer = self
            .http
            .post(&url)
            .header("Authorization", &self.auth)
            .send_json(request);
        decode(&self.finish(answer)?)
    }

    /// `GET /api/v1/agent/{mac}/plan`: what this boot is for.
    pub fn plan(&self) -> Result<AgentPlan, ApiError> {
        let url = self.url(&format!("/agent/{}/plan", self.mac));
        decode(&self.get(&url, MAX_ANSWER_BYTES)?)
    }

    /// `POST /api/v1/agent/{mac}/block-tree`: the disks as they are after a layout.
    pub fn send_block_tree(&self, tree: &BlockTree) -> Result<(), ApiError> {
        let url = self.url(&format!("/agent/{}/block-tree", self.mac));
        let answer = self
            .http
            .post(&url)
            .header("Authorization", &self.auth)
            .send_json(tree);
        self.finish(answer).map(drop)
    }

    /// `GET /api/v1/images/{name}/{version}/manifest`: the signed manifest as sent, to be
    /// verified by the caller.
    pub fn manifest(&self, name: &str, version: &str) -> Result<Vec<u8>, ApiError> {
        let url = self.url(&format!("/images/{name}/{version}/manifest"));
        self.get(&url, MAX_ANSWER_BYTES)
    }

    /// `GET /api/v1/chunks/{hash}`: one stored (zstd-compressed) chunk, at most `limit` bytes.
    pub fn chunk(&self, hash: &Digest, limit: u64) -> Result<Vec<u8>, ApiError> {
        let url = self.url(&format!("/chunks/{hash}"));
        self.get(&url, limit)
    }

    /// `POST /api/v1/chunks/fetch`: the stored bytes of `hashes` back to back, at most `limit`
    /// bytes.
    pub fn chunks(&self, hashes: &[Digest], limit: u64) -> Result<Vec<u8>, ApiError> {
        let url = self.url("/chunks/fetch");
        let answer = self
            .http
            .post(&url)
            .header("Authorization", &self.auth)
            .send_json(ChunkList {
                chunks: hashes.to_vec(),
            });
        self.finish_limited(answer, limit)
    }

    /// `GET {path}`: a multicast session's block list (text), at most `limit` bytes. `path` is
    /// the absolute path on the appliance the plan's session names.
    pub fn block_list(&self, path: &str, limit: u64) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}{path}", self.base);
        self.get(&url, limit)
    }

    /// `POST /api/v1/agent/{mac}/provisioned`: the node is installed.
    pub fn provisioned(&self) -> Result<(), ApiError> {
        let url = self.url(&format!("/agent/{}/provisioned", self.mac));
        let answer = self
            .http
            .post(&url)
            .header("Authorization", &self.auth)
            .send_empty();
        self.finish(answer).map(drop)
    }

    /// An authenticated `GET` of `url`; the body, at most `limit` bytes.
    fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, ApiError> {
        let answer = self
            .http
            .get(url)
            .header("Authorization", &self.auth)
            .call();
        self.finish_limited(answer, limit)
    }

    fn url(&self, route: &str) -> String {
        format!("{}{API_PREFIX}{route}", self.base)
    }

    /// Reads the body and classifies the status.
    fn finish(
        &self,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, ApiError> {
        self.finish_limited(answer, MAX_ANSWER_BYTES)
    }

    fn finish_limited(
        &self,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<Vec<u8>, ApiError> {
        let mut response = answer.map_err(transport)?;
        let status = response.status().as_u16();
        // A body cut short is a transport failure: the same call may well succeed next time.
        let body = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(transport)?;
        check(status, body)
    }
}

fn transport(err: ureq::Error) -> ApiError {
    match err {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl => {
            ApiError::Request(err)
        }
        other => ApiError::Unreachable(other),
    }
}

/// 2xx passes the body on; anything else becomes [`ApiError::Status`] with the appliance's
/// own message when it sent an [`metalcast_proto::ApiError`], else the start of the body.
fn check(status: u16, body: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = match serde_json::from_slice::<metalcast_proto::ApiError>(&body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() {
                "(no message)".to_string()
            } else {
                text.chars().take(MAX_MESSAGE_CHARS).collect()
            }
        }
    };
    Err(ApiError::Status { status, message })
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::BadBody)
}

/// Runs `call` until it succeeds or fails in a way waiting cannot fix, sleeping the backoff's
/// delays in between. `what` names the call in the console lines.
pub fn with_retry<T>(
    what: &str,
    backoff: &mut Backoff,
    sleep: &mut dyn FnMut(Duration),
    mut call: impl FnMut() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    loop {
        match call() {
            Ok(v) => {
                backoff.reset();
                return Ok(v);
            }
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                warn!(
                    "{what}: {}; retrying in {:.1}s",
                    chain(&e),
                    delay.as_secs_f64()
                );
                sleep(delay);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn status_of(r: Result<Vec<u8>, ApiError>) -> (u16, String) {
        match r {
            Err(ApiError::Status { status, message }) => (status, message),
            other => panic!("expected a status error, got {other:?}"),
        }
    }

    #[test]
    fn success_passes_the_body() {
        assert_eq!(check(200, b"{}".to_vec()).unwrap(), b"{}");
        assert_eq!(check(204, Vec::new()).unwrap(), b"");
    }

    #[test]
    fn error_bodies_become_messages() {
        assert_eq!(
            status_of(check(
                403,
                br#"{"error":"token belongs to another node"}"#.to_vec()
            )),
            (403, "token belongs to another node".to_string())
        );
        assert_eq!(
            status_of(check(502, b"  Bad Gateway\n".to_vec())),
            (502, "Bad Gateway".to_string())
        );
        assert_eq!(status_of(check(500, Vec::new())).1, "(no message)");
        let long = vec![b'x'; 10_000];
        assert_eq!(status_of(check(500, long)).1.len(), MAX_MESSAGE_CHARS);
        // Not UTF-8 at all must not panic either.
        assert_eq!(status_of(check(500, vec![0xff, 0xfe])).0, 500);
        // Redirects are not followed, so they are refusals too.
        assert_eq!(status_of(check(302, Vec::new())).0, 302);
    }

    #[test]
    fn only_waiting_kinds_of_failure_are_retried() {
        let s = |status| ApiError::Status {
            status,
            message: String::new(),
        };
        assert!(s(500).is_retryable());
        assert!(s(503).is_retryable());
        assert!(s(429).is_retryable());
        assert!(s(408).is_retryable());
        assert!(!s(400).is_retryable());
        assert!(!s(401).is_retryable());
        assert!(!s(403).is_retryable());
        assert!(!s(404).is_retryable());
        assert!(ApiError::Unreachable(ureq::Error::ConnectionFailed).is_retryable());
        assert!(!transport(ureq::Error::BadUri("x".into())).is_retryable());
        let bad = decode::<Node>(b"{\"mac\":").unwrap_err();
        assert!(!bad.is_retryable());
    }

    #[test]
    fn token_refusals_say_so() {
        for status in [401, 403] {
            let hint = ApiError::Status {
                status,
                message: String::new(),
            }
            .hint()
            .unwrap();
            assert!(hint.contains("token"), "{hint}");
        }
        assert!(
            ApiError::Status {
                status: 500,
                message: String::new()
            }
            .hint()
            .is_none()
        );
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"null",
            b"{\"mac\":\"52:54:00:12:34:56\"",
            b"\xff",
            b"{\"mac\":\"nope\"}",
        ] {
            assert!(matches!(
                decode::<AgentPlan>(body),
                Err(ApiError::BadBody(_))
            ));
        }
    }

    #[test]
    fn retry_waits_through_outages_and_stops_at_refusals() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 3);
        let mut slept = Vec::new();
        let mut answers = vec![
            Err(ApiError::Unreachable(ureq::Error::ConnectionFailed)),
            Err(ApiError::Status {
                status: 503,
                message: String::new(),
            }),
            Ok(7),
        ]
        .into_iter();
        let got = with_retry("test", &mut backoff, &mut |d| slept.push(d), || {
            answers.next().unwrap()
        });
        assert_eq!(got.unwrap(), 7);
        assert_eq!(slept.len(), 2);
        assert!(slept[1] > slept[0], "{slept:?}");

        let mut calls = 0;
        let got: Result<(), _> = with_retry(
            "test",
            &mut backoff,
            &mut |_| panic!("must not wait"),
            || {
                calls += 1;
                Err(ApiError::Status {
                    status: 401,
                    message: String::new(),
                })
            },
        );
        assert!(matches!(got, Err(ApiError::Status { status: 401, .. })));
        assert_eq!(calls, 1);
    }

    pub(crate) const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";

    /// A fake appliance on loopback: answers each connection with the next scripted raw
    /// response and records the requests it got.
    pub(crate) struct FakeAppliance {
        url: String,
        addr: std::net::SocketAddr,
        pub(crate) requests: std::sync::mpsc::Receiver<String>,
    }

    impl FakeAppliance {
        pub(crate) fn start(responses: Vec<&'static str>) -> Self {
            Self::start_after(|| {}, responses)
        }

        /// Accepts connections only once `gate` has returned (clients connect and wait).
        pub(crate) fn start_after(
            gate: impl FnOnce() + Send + 'static,
            responses: Vec<&'static str>,
        ) -> Self {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            Self::serve(
                listener,
                gate,
                responses.into_iter().map(Vec::from).collect(),
            )
        }

        /// Listens on `addr` (the port of an earlier fake that has finished: the appliance
        /// coming back where it was).
        pub(crate) fn start_on(addr: std::net::SocketAddr, responses: Vec<&'static str>) -> Self {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            Self::serve(
                listener,
                || {},
                responses.into_iter().map(Vec::from).collect(),
            )
        }

        pub(crate) fn addr(&self) -> std::net::SocketAddr {
            self.addr
        }

        fn serve(
            listener: std::net::TcpListener,
            gate: impl FnOnce() + Send + 'static,
            responses: Vec<Vec<u8>>,
        ) -> Self {
            use std::io::{BufRead, BufReader, Read, Write};
            let addr = listener.local_addr().unwrap();
            let url = format!("http://{addr}");
            let (tx, requests) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                gate();
                for response in responses {
                    let (mut stream, _) = listener.accept().unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        head.push_str(&line);
                        if line == "\r\n" || line.is_empty() {
                            break;
                        }
                    }
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .map_or(0, |v| v.parse().unwrap());
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    // The test may have stopped listening for requests.
                    let _ = tx.send(head + &String::from_utf8(body).unwrap());
                    // A client that gave up on this connection is no failure of the fake.
                    let _ = stream.write_all(&response);
                }
            });
            Self {
                url,
                addr,
                requests,
            }
        }

        pub(crate) fn client(&self) -> Appliance {
            Appliance::new(&BootParams {
                url: self.url.clone(),
                token: "tok".to_string(),
                mac: "52:54:00:12:34:56".parse().unwrap(),
                key: None,
                consoles: Vec::new(),
            })
        }
    }

    const NODE: &str = r#"{"mac":"52:54:00:12:34:56","state":"discovered","hostname":null,"ip":null,"hardware":null,"first_seen_ms":1,"last_seen_ms":2}"#;

    fn ok_json(body: &str) -> &'static str {
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            .leak()
    }

    fn hardware() -> metalcast_proto::Hardware {
        metalcast_proto::Hardware {
            firmware: metalcast_proto::Firmware::Bios,
            cpu: metalcast_proto::Cpu {
                count: 1,
                model: None,
            },
            memory_bytes: 1 << 30,
            disks: Vec::new(),
            nics: Vec::new(),
            dmi: metalcast_proto::Dmi::default(),
        }
    }

    #[test]
    fn registers_through_a_503_with_the_bearer_token() {
        let fake = FakeAppliance::start(vec![
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ok_json(NODE),
        ]);
        let api = fake.client();
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2), 1);
        let request = RegisterRequest {
            hardware: hardware(),
        };
        let node = with_retry("registering", &mut backoff, &mut |_| {}, || {
            api.register(&request)
        })
        .unwrap();
        assert_eq!(node.state, metalcast_proto::NodeState::Discovered);
        for _ in 0..2 {
            let seen = fake.requests.recv().unwrap();
            assert!(
                seen.starts_with("POST /api/v1/agent/52:54:00:12:34:56/register HTTP/1.1\r\n"),
                "{seen}"
            );
            assert!(
                seen.to_ascii_lowercase()
                    .contains("authorization: bearer tok\r\n"),
                "{seen}"
            );
            let body = seen.split("\r\n\r\n").nth(1).unwrap();
            assert_eq!(
                serde_json::from_str::<RegisterRequest>(body).unwrap(),
                request
            );
        }
    }

    #[test]
    fn refusals_bad_json_and_cut_bodies_over_http() {
        let fake = FakeAppliance::start(vec![
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{\"error\":\"invalid token\"}",
            ok_json("{\"state\": 12"),
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"state\"",
            NO_CONTENT,
        ]);
        let api = fake.client();
        match api.plan() {
            Err(e @ ApiError::Status { status: 401, .. }) => {
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("invalid token"), "{e}");
            }
            other => panic!("expected 401, got {other:?}"),
        }
        assert!(
            fake.requests
                .recv()
                .unwrap()
                .starts_with("GET /api/v1/agent/52:54:00:12:34:56/plan HTTP/1.1\r\n")
        );
        assert!(matches!(api.plan(), Err(ApiError::BadBody(_))));
        let cut = api.plan().unwrap_err();
        assert!(
            cut.is_retryable(),
            "a body cut short is worth another try: {cut:?}"
        );
        let event = EventReport {
            phase: metalcast_proto::Phase::Agent,
            level: metalcast_proto::Level::Info,
            message: "agent started".to_string(),
            uptime_secs: Some(4.5),
        };
        api.send_event(&event).unwrap();
        let seen: Vec<String> = fake.requests.iter().take(3).collect();
        assert!(
            seen[2].starts_with("POST /api/v1/agent/52:54:00:12:34:56/events HTTP/1.1\r\n"),
            "{}",
            seen[2]
        );
    }

    #[test]
    fn fetches_the_plan_with_its_layout() {
        let plan = AgentPlan {
            state: metalcast_proto::NodeState::Provisioning,
            hostname: Some("node1".into()),
            layout: Some(metalcast_proto::NamedLayout {
                name: "single-bios".into(),
                toml: "[[disk]]\nname = \"sys\"\n".into(),
            }),
            may_wipe: true,
            image: None,
            credentials: Default::default(),
        };
        let body = serde_json::to_string(&plan).unwrap();
        let fake = FakeAppliance::start(vec![ok_json(&body), ok_json(r#"{"state":"discovered"}"#)]);
        let api = fake.client();
        assert_eq!(api.plan().unwrap(), plan);
        // Every field is part of the contract: a plan without them is not a plan.
        assert!(matches!(api.plan(), Err(ApiError::BadBody(_))));
    }

    #[test]
    fn fetches_a_block_list_by_its_path_within_a_limit() {
        let fake = FakeAppliance::start(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 29\r\nConnection: close\r\n\r\nmetalcast-mcast block-list 1\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 29\r\nConnection: close\r\n\r\nmetalcast-mcast block-list 1\n",
        ]);
        let api = fake.client();
        let path = "/api/v1/mcast/sessions/00abcdef01234567/blocks";
        assert_eq!(
            api.block_list(path, 100).unwrap(),
            b"metalcast-mcast block-list 1\n"
        );
        let seen = fake.requests.recv().unwrap();
        assert!(
            seen.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "{seen}"
        );
        assert!(
            seen.to_ascii_lowercase()
                .contains("authorization: bearer tok\r\n"),
            "{seen}"
        );
        // Longer than the caller allows: cut off, like a chunk.
        assert!(matches!(
            api.block_list(path, 10),
            Err(ApiError::Unreachable(_))
        ));
    }

    #[test]
    fn posts_the_block_tree() {
        let fake = FakeAppliance::start(vec![NO_CONTENT]);
        let api = fake.client();
        let tree = BlockTree {
            devices: vec![metalcast_proto::layout::BlockDevice {
                name: "vda".into(),
                path: "/dev/vda".into(),
                size_bytes: 1 << 30,
                kind: "disk".into(),
                fstype: None,
                pttype: Some("gpt".into()),
                label: None,
                uuid: None,
                partlabel: None,
                mountpoint: None,
                children: Vec::new(),
            }],
            ..BlockTree::default()
        };
        api.send_block_tree(&tree).unwrap();
        let seen = fake.requests.recv().unwrap();
        assert!(
            seen.starts_with("POST /api/v1/agent/52:54:00:12:34:56/block-tree HTTP/1.1\r\n"),
            "{seen}"
        );
        let body = seen.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(serde_json::from_str::<BlockTree>(body).unwrap(), tree);
    }

    #[test]
    fn nobody_listening_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let api = Appliance::new(&BootParams {
            url,
            token: "t".into(),
            mac: "52:54:00:12:34:56".parse().unwrap(),
            key: None,
            consoles: Vec::new(),
        });
        let err = api.plan().unwrap_err();
        assert!(matches!(err, ApiError::Unreachable(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    #[test]
    fn chain_shows_the_source() {
        let e = ApiError::Unreachable(ureq::Error::ConnectionFailed);
        let text = chain(&e);
        assert!(text.starts_with("cannot reach the appliance: "), "{text}");
        assert!(text.len() > "cannot reach the appliance: ".len());
    }
}
