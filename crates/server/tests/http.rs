//! The HTTP application end to end over a real socket: boot script → node token → agent
//! registration → admin API → provisioned → local-disk script; auth, Range and bad bodies.

use metalcast_proto::image::{
    ChunkList, ChunkRef, Digest, FORMAT_VERSION, ImageSummary, Manifest, OsFamily, SignedManifest,
};
use metalcast_proto::layout::{BlockDevice, BlockTree};
use metalcast_proto::{
    AgentPlan, ApiError, Cpu, Disk, Dmi, Event, EventReport, Firmware, Hardware, LayoutPlan, Level,
    MacAddr, Nic, Node, NodeDetail, NodeState, Phase, RegisterRequest, SetState,
};
use metalcast_proto::{
    GcSummary, ImageVersions, McastSessionStatus, McastState, MemberState, SetLatest,
};
use metalcast_server::http::{self, AppState, BootFiles};
use metalcast_server::images::Images;
use metalcast_server::layouts::Layouts;
use metalcast_server::mcast::{McastSettings, Sessions};
use metalcast_server::store::Store;
use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HOST, RANGE, WWW_AUTHENTICATE,
};
use tokio::sync::mpsc;

const MAC_A: &str = "52:54:00:12:34:56";
const MAC_B: &str = "52:54:00:ab:cd:ef";

struct Harness {
    _dir: tempfile::TempDir,
    base: String,
    host: String,
    store: Store,
    images: Images,
    admin: String,
    kernel: Vec<u8>,
    known: mpsc::Receiver<Node>,
    client: reqwest::Client,
}

async fn start() -> Harness {
    start_with(None).await
}

async fn start_with(mcast: Option<McastSettings>) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let kernel: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("vmlinuz"), &kernel).expect("writing vmlinuz");
    std::fs::write(dir.path().join("initramfs"), b"initramfs bytes").expect("writing initramfs");
    let store = Store::open(&dir.path().join("data"))
        .await
        .expect("opening the store");
    let admin = store
        .create_admin_token("test", 1)
        .await
        .expect("admin token");
    let images = Images::open(&dir.path().join("data")).expect("opening the image store");
    // Roomy: most tests never read what DHCP would be told.
    let (known_tx, known) = mpsc::channel(1024);
    let app = http::app(AppState {
        store: store.clone(),
        boot: BootFiles {
            kernel: dir.path().join("vmlinuz"),
            initramfs: dir.path().join("initramfs"),
            kernel_args: "console=ttyS0,115200".into(),
        },
        known_nodes: Some(known_tx),
        layouts: Layouts {
            dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../../layouts").into(),
        },
        images: images.clone(),
        mcast: Sessions::start(mcast, store.clone()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Harness {
        _dir: dir,
        base: format!("http://{addr}"),
        host: addr.to_string(),
        store,
        images,
        admin: admin.as_str().to_string(),
        kernel,
        known,
        client: reqwest::Client::new(),
    }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let rb = self.client.get(self.url(path));
        match token {
            Some(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
            None => rb,
        }
    }

    /// Fetch the boot script of `mac` and return it with the node token it carries, if any.
    async fn script(&self, mac: &str) -> (String, Option<String>) {
        let resp = self
            .get(&format!("/boot/{}.ipxe", mac.replace(':', "-")), None)
            .send()
            .await
            .expect("GET boot script");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.text().await.expect("script body");
        let token = body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("metalcast.token="))
            .map(str::to_string);
        (body, token)
    }
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: ApiError = resp.json().await.expect("an ApiError body");
    (status, body.error)
}

fn hardware() -> Hardware {
    let disk = |path: &str, gib: u64| Disk {
        path: path.into(),
        size_bytes: gib << 30,
        model: Some("QEMU HARDDISK".into()),
        serial: None,
        rotational: true,
        by_path: None,
    };
    Hardware {
        firmware: Firmware::Bios,
        cpu: Cpu {
            count: 1,
            model: None,
        },
        memory_bytes: 1024 << 20,
        disks: vec![disk("/dev/vda", 8), disk("/dev/vdb", 4)],
        nics: vec![Nic {
            name: "eth0".into(),
            mac: MAC_A.parse().expect("MAC"),
            driver: Some("virtio_net".into()),
            speed_mbps: None,
        }],
        dmi: Dmi::default(),
    }
}

fn phases(events: &[Event]) -> Vec<Phase> {
    events.iter().map(|e| e.phase).collect()
}

#[tokio::test]
async fn boot_register_provision_cycle() {
    let mut h = start().await;
    let mac_a: MacAddr = MAC_A.parse().unwrap();

    let resp = h.get("/healthz", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");

    // The first script fetch creates the node and hands it a token.
    let (script, token_a) = h.script(MAC_A).await;
    let token_a = token_a.expect("the agent script carries a token");
    let host = &h.host;
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains(&format!(
            "kernel http://{host}/boot/files/vmlinuz?mac=52-54-00-12-34-56 initrd=initrd \
             metalcast.url=http://{host} metalcast.token={token_a} metalcast.mac={MAC_A} metalcast.key={key} console=ttyS0,115200\n",
            key = h.images.public_key()
        )),
        "{script}"
    );
    assert!(script.contains(&format!(
        "initrd --name initrd http://{host}/boot/files/initramfs?mac=52-54-00-12-34-56\n"
    )));
    assert!(script.ends_with("boot\n"));
    assert_eq!(
        h.known.recv().await.map(|n| n.mac),
        Some(mac_a),
        "DHCP is told about the new node"
    );
    let node = h.store.node(mac_a).await.unwrap().expect("node created");
    assert_eq!(node.state, NodeState::Discovered);

    // The agent registers with its node token.
    let resp = h
        .client
        .post(h.url(&format!("/api/v1/agent/{MAC_A}/register")))
        .bearer_auth(&token_a)
        .json(&RegisterRequest {
            hardware: hardware(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let node: Node = resp.json().await.unwrap();
    assert_eq!((node.mac, node.hardware), (mac_a, Some(hardware())));
    assert_eq!(
        h.known.recv().await.map(|n| n.mac),
        Some(mac_a),
        "DHCP is told about the registered node"
    );

    let resp = h
        .client
        .post(h.url(&format!("/api/v1/agent/{MAC_A}/events")))
        .bearer_auth(&token_a)
        .json(&EventReport {
            phase: Phase::Agent,
            level: Level::Info,
            message: "network up".into(),
            uptime_secs: Some(3.5),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // The node sees itself; the admin sees everything.
    let resp = h
        .get(&format!("/api/v1/nodes/{MAC_A}"), Some(&token_a))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let detail: NodeDetail = resp.json().await.unwrap();
    assert_eq!(
        phases(&detail.events),
        vec![Phase::IpxeScript, Phase::AgentRegistered, Phase::Agent]
    );
    assert_eq!(
        detail.events[1].message,
        "registered: bios, 2 disks, 1 nic, 1024 MiB"
    );

    let (_, token_b) = h.script(MAC_B).await;
    let token_b = token_b.unwrap();
    let resp = h.get("/api/v1/nodes", Some(&h.admin)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let nodes: Vec<Node> = resp.json().await.unwrap();
    let macs: Vec<String> = nodes.iter().map(|n| n.mac.to_string()).collect();
    assert_eq!(macs, vec![MAC_A, MAC_B]);
    let resp = h
        .get(&format!("/api/v1/nodes/{MAC_A}/events"), Some(&h.admin))
        .send()
        .await
        .unwrap();
    let events: Vec<Event> = resp.json().await.unwrap();
    assert_eq!(
        phases(&events),
        vec![Phase::IpxeScript, Phase::AgentRegistered, Phase::Agent]
    );

    // Node A's token reaches nothing of node B and no admin route.
    for path in [
        format!("/api/v1/nodes/{MAC_B}"),
        format!("/api/v1/nodes/{MAC_B}/events"),
        "/api/v1/nodes".into(),
    ] {
        let (status, error) = error_of(h.get(&path, Some(&token_a)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {error}");
    }
    let resp = h
        .client
        .post(h.url(&format!("/api/v1/agent/{MAC_B}/register")))
        .bearer_auth(&token_a)
        .json(&RegisterRequest {
            hardware: hardware(),
        })
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error.contains(MAC_A) && error.contains(MAC_B), "{error}");
    let resp = h
        .client
        .put(h.url(&format!("/api/v1/nodes/{MAC_A}/state")))
        .bearer_auth(&token_a)
        .json(&SetState {
            state: NodeState::Provisioned,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // No token, a malformed header, an unknown token: 401.
    let resp = h.get("/api/v1/nodes", None).send().await.unwrap();
    assert_eq!(
        resp.headers().get(WWW_AUTHENTICATE).map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(error_of(resp).await.0, StatusCode::UNAUTHORIZED);
    let resp = h
        .client
        .get(h.url("/api/v1/nodes"))
        .header(AUTHORIZATION, "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::UNAUTHORIZED);
    let resp = h
        .get(&format!("/api/v1/nodes/{MAC_A}"), Some(&"0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::UNAUTHORIZED);

    // The admin marks node A provisioned: its next boot is the local disk, and the
    // per-boot token it had is void.
    let resp = h
        .client
        .put(h.url(&format!("/api/v1/nodes/{MAC_A}/state")))
        .bearer_auth(&h.admin)
        .json(&SetState {
            state: NodeState::Provisioned,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Node>().await.unwrap().state,
        NodeState::Provisioned
    );
    let mut told = None;
    while let Ok(node) = h.known.try_recv() {
        told = Some((node.mac, node.state));
    }
    assert_eq!(
        told,
        Some((mac_a, NodeState::Provisioned)),
        "DHCP is told the node now boots its disk"
    );
    let (script, token) = h.script(MAC_A).await;
    assert_eq!(token, None);
    assert!(
        script.contains("iseq ${platform} efi && exit 1 ||\nsanboot --no-describe --drive 0x80\n"),
        "{script}"
    );
    let events = h.store.events(mac_a).await.unwrap();
    assert!(
        events.last().unwrap().message.contains("local disk"),
        "{events:?}"
    );
    let resp = h
        .get(&format!("/api/v1/nodes/{MAC_A}"), Some(&token_a))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Node B is untouched and its token still works.
    let resp = h
        .get(&format!("/api/v1/nodes/{MAC_B}"), Some(&token_b))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn boot_files_support_range_and_record_events() {
    let h = start().await;
    let resp = h
        .get("/boot/files/vmlinuz?mac=52-54-00-12-34-56", None)
        .header(RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()[CONTENT_RANGE], "bytes 100-199/4096");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &h.kernel[100..200]);

    let resp = h
        .get("/boot/files/vmlinuz?mac=52:54:00:12:34:56", None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &h.kernel[..]);

    let resp = h
        .client
        .head(h.url("/boot/files/initramfs"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_LENGTH], "15");
    let resp = h
        .get("/boot/files/initramfs?mac=52-54-00-12-34-56", None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"initramfs bytes");
    // No event without a valid mac, but the file is still served.
    let resp = h
        .get("/boot/files/initramfs?mac=nonsense", None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let events = h.store.events(MAC_A.parse().unwrap()).await.unwrap();
    let summary: Vec<(Phase, &str)> = events
        .iter()
        .map(|e| (e.phase, e.message.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Phase::Kernel, "vmlinuz served, bytes 100-199/4096"),
            (Phase::Kernel, "vmlinuz served, 4096 bytes"),
            (Phase::Initramfs, "initramfs served, 15 bytes"),
        ]
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let h = start().await;
    let (_, token) = h.script(MAC_A).await;
    let token = token.unwrap();
    let register = format!("/api/v1/agent/{MAC_A}/register");

    let post = |body: &'static str, content_type: Option<&'static str>| {
        let rb = h
            .client
            .post(h.url(&register))
            .bearer_auth(&token)
            .body(body);
        match content_type {
            Some(ct) => rb.header(CONTENT_TYPE, ct),
            None => rb,
        }
    };
    let (status, error) = error_of(
        post("{\"hardware\": ", Some("application/json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(error.contains("EOF"), "{error}");
    let (status, error) = error_of(
        post("{\"hardware\": 5}", Some("application/json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.contains("hardware"), "{error}");
    let (status, _) = error_of(post("{}", None).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = vec![b' '; http::BODY_LIMIT + 1];
    let resp = h
        .client
        .post(h.url(&register))
        .bearer_auth(&token)
        .header(CONTENT_TYPE, "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Bad or unknown MACs, bad scripts names and Host headers.
    let resp = h
        .get("/api/v1/nodes/not-a-mac", Some(&h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST);
    let resp = h
        .get("/api/v1/nodes/00:00:00:00:00:09", Some(&h.admin))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(resp).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::NOT_FOUND, "no node 00:00:00:00:00:09")
    );
    let resp = h
        .get("/boot/zz-54-00-12-34-56.ipxe", None)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST);
    let resp = h
        .get("/boot/52-54-00-12-34-56.efi", None)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::NOT_FOUND);
    let resp = h
        .get("/boot/52-54-00-12-34-56.ipxe", None)
        .header(HOST, "evil host\tkernel")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::BAD_REQUEST);
    let resp = h
        .get("/api/v1/nothing", Some(&h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, StatusCode::NOT_FOUND);

    // Nothing above touched the database beyond the one script fetch.
    let events = h.store.events(MAC_A.parse().unwrap()).await.unwrap();
    assert_eq!(phases(&events), vec![Phase::IpxeScript]);
}

#[tokio::test]
async fn layouts_are_assigned_dry_run_and_handed_to_the_agent() {
    let h = start().await;
    let put = |mac: &str, body: serde_json::Value| {
        h.client
            .put(h.url(&format!("/api/v1/nodes/{mac}")))
            .header(AUTHORIZATION, format!("Bearer {}", h.admin))
            .json(&body)
            .send()
    };
    // Enrolled before it ever booted.
    let resp = put(
        MAC_A,
        serde_json::json!({"layout": "single-bios", "hostname": "node-a"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let node: Node = resp.json().await.unwrap();
    assert_eq!(node.layout.as_deref(), Some("single-bios"));
    assert_eq!(node.hostname.as_deref(), Some("node-a"));
    assert_eq!(node.state, NodeState::Discovered);

    for (body, status, needle) in [
        (
            serde_json::json!({"layout": "../x"}),
            StatusCode::BAD_REQUEST,
            "not valid",
        ),
        (
            serde_json::json!({"layout": "nope"}),
            StatusCode::BAD_REQUEST,
            "no layout \"nope\"",
        ),
        (
            serde_json::json!({"hostname": "bad_name"}),
            StatusCode::BAD_REQUEST,
            "hostname",
        ),
    ] {
        let (got, message) = error_of(put(MAC_A, body).await.unwrap()).await;
        assert_eq!(got, status, "{message}");
        assert!(message.contains(needle), "{message}");
    }

    let dry = |mac: &str| {
        h.get(&format!("/api/v1/nodes/{mac}/layout-plan"), Some(&h.admin))
            .send()
    };
    let (status, message) = error_of(dry(MAC_A).await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("has not registered"), "{message}");

    let (_, token) = h.script(MAC_A).await;
    let token = token.expect("agent script carries a token");
    let resp = h
        .client
        .post(h.url(&format!("/api/v1/agent/{MAC_A}/register")))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .json(&RegisterRequest {
            hardware: hardware(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let plan: LayoutPlan = dry(MAC_A).await.unwrap().json().await.unwrap();
    assert_eq!(plan.layout, "single-bios");
    assert!(plan.plan.contains("/dev/vda"), "{}", plan.plan);

    let agent_plan = || {
        h.get(&format!("/api/v1/agent/{MAC_A}/plan"), Some(&token))
            .send()
    };
    let p: AgentPlan = agent_plan().await.unwrap().json().await.unwrap();
    assert_eq!(
        p.layout.as_ref().map(|l| l.name.as_str()),
        Some("single-bios")
    );
    assert!(!p.may_wipe, "a discovered node must not be wiped");
    put(MAC_A, serde_json::json!({"state": "provisioning"}))
        .await
        .unwrap();
    let p: AgentPlan = agent_plan().await.unwrap().json().await.unwrap();
    assert!(p.may_wipe);
    // Another node's token cannot read this plan.
    let (_, token_b) = h.script(MAC_B).await;
    let resp = h
        .get(&format!("/api/v1/agent/{MAC_A}/plan"), token_b.as_deref())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // A layout that cannot fit this node's disks is refused with the planner's message.
    put(MAC_A, serde_json::json!({"layout": "raid10-xfs"}))
        .await
        .unwrap();
    let (status, message) = error_of(dry(MAC_A).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("does not fit"), "{message}");

    let tree = BlockTree {
        devices: vec![BlockDevice {
            name: "vda".into(),
            path: "/dev/vda".into(),
            size_bytes: 8 << 30,
            kind: "disk".into(),
            fstype: None,
            pttype: Some("gpt".into()),
            label: None,
            uuid: None,
            partlabel: None,
            mountpoint: None,
            children: vec![],
        }],
        ..BlockTree::default()
    };
    let resp = h
        .client
        .post(h.url(&format!("/api/v1/agent/{MAC_A}/block-tree")))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .json(&tree)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let detail: NodeDetail = h
        .get(&format!("/api/v1/nodes/{MAC_A}"), Some(&h.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail.block_tree, Some(tree));
}

#[tokio::test]
async fn credentials_are_checked_hidden_and_handed_to_the_agent() {
    let h = start().await;
    let put = |body: serde_json::Value| {
        h.client
            .put(h.url(&format!("/api/v1/nodes/{MAC_A}")))
            .bearer_auth(&h.admin)
            .json(&body)
            .send()
    };
    const HASH: &str = "$y$j9T$Qq3s1Yd3cJxHhWmrnTXqY.$0bh5u3yUCn2.QA8ZB6mSb1WmX6WQeYwZIyQpc5FV.qD";
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbN5Lf0Sw8dBmz3ajM5J1rJ2Ka7iKx3CqQy9m5F6PZq ops@bastion";
    for (body, needle) in [
        (
            serde_json::json!({"root_password_hash": "hunter2"}),
            "not a crypt(3) hash",
        ),
        (
            serde_json::json!({"ssh_authorized_keys": [KEY, "-----BEGIN OPENSSH PRIVATE KEY-----"]}),
            "not an authorized_keys line",
        ),
    ] {
        let (status, message) = error_of(put(body).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        assert!(message.contains(needle), "{message}");
    }
    let node: Node =
        put(serde_json::json!({"root_password_hash": HASH, "ssh_authorized_keys": [KEY]}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(node.root_password_set);
    assert_eq!(node.ssh_authorized_keys, [KEY]);
    // The hash never leaves the appliance except to the node itself.
    let shown = h
        .get(&format!("/api/v1/nodes/{MAC_A}"), Some(&h.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!shown.contains(HASH), "{shown}");

    let (_, token) = h.script(MAC_A).await;
    let token = token.expect("agent script carries a token");
    let plan = || async {
        h.get(&format!("/api/v1/agent/{MAC_A}/plan"), Some(&token))
            .send()
            .await
            .unwrap()
            .json::<AgentPlan>()
            .await
            .unwrap()
            .credentials
    };
    let c = plan().await;
    assert_eq!(c.root_password_hash.as_deref(), Some(HASH));
    assert_eq!(c.ssh_authorized_keys, [KEY]);

    // Other settings leave them alone; empty values remove them.
    put(serde_json::json!({"hostname": "node-a"}))
        .await
        .unwrap();
    assert_eq!(plan().await.root_password_hash.as_deref(), Some(HASH));
    let node: Node = put(serde_json::json!({"root_password_hash": "", "ssh_authorized_keys": []}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!node.root_password_set && node.ssh_authorized_keys.is_empty());
    assert!(plan().await.is_empty());
}

/// A chunk as an importer makes it: BLAKE3 of the bytes, zstd frame of the bytes.
fn chunk(data: &[u8]) -> (Digest, Vec<u8>) {
    (
        Digest(*blake3::hash(data).as_bytes()),
        zstd::bulk::compress(data, 3).expect("zstd"),
    )
}

/// An unsigned manifest over `parts` (each a chunk), in order.
fn manifest_of(version: &str, parts: &[&[u8]]) -> Manifest {
    let mut chunks = Vec::new();
    let mut offset = 0;
    for p in parts {
        let (hash, stored) = chunk(p);
        chunks.push(ChunkRef {
            hash,
            offset,
            len: p.len() as u64,
            stored_len: stored.len() as u64,
            entry_start: 0,
        });
        offset += p.len() as u64;
    }
    Manifest {
        format: FORMAT_VERSION,
        name: "deb".into(),
        version: version.into(),
        parent: None,
        created_ms: 1_777_000_000_000,
        os_family: OsFamily::Debian,
        kernel: Some("boot/vmlinuz".into()),
        initrd: Some("boot/initrd.img".into()),
        size: offset,
        chunking: metalcast_image::DEFAULT_CHUNKING,
        chunks,
    }
}

#[tokio::test]
async fn images_upload_sign_pin_and_serve() {
    let h = start().await;
    let admin = h.admin.clone();
    let parts: Vec<Vec<u8>> = vec![
        (0..3000u32).map(|i| (i % 13) as u8).collect(),
        (0..5000u32).map(|i| (i * 31 % 251) as u8).collect(),
        b"the last, short chunk".to_vec(),
    ];
    let chunks: Vec<(Digest, Vec<u8>)> = parts.iter().map(|p| chunk(p)).collect();
    let missing = |list: Vec<Digest>| {
        h.client
            .post(h.url("/api/v1/chunks/missing"))
            .bearer_auth(&admin)
            .json(&ChunkList { chunks: list })
            .send()
    };
    let upload = |hash: Digest, body: Vec<u8>, token: &str| {
        h.client
            .put(h.url(&format!("/api/v1/chunks/{hash}")))
            .bearer_auth(token)
            .body(body)
            .send()
    };
    let all: Vec<Digest> = chunks.iter().map(|c| c.0).collect();
    let lacking = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<ChunkList>().await.unwrap().chunks
    };
    let mut asked = all.clone();
    asked.push(all[0]);
    assert_eq!(lacking(missing(asked).await.unwrap()).await, all);

    let resp = upload(chunks[0].0, chunks[0].1.clone(), &admin)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = upload(chunks[0].0, chunks[0].1.clone(), &admin)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a present chunk is accepted again"
    );
    assert_eq!(lacking(missing(all.clone()).await.unwrap()).await, all[1..]);

    // A flipped bit in the compressed bytes, or bytes under another chunk's name: refused.
    let mut flipped = chunks[1].1.clone();
    let last = flipped.len() - 1;
    flipped[last / 2] ^= 0x10;
    let (status, message) = error_of(upload(chunks[1].0, flipped, &admin).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    let (status, message) = error_of(
        upload(chunks[1].0, chunks[2].1.clone(), &admin)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("not what its name says"), "{message}");
    let (status, _) = error_of(
        h.client
            .put(h.url("/api/v1/chunks/NOTHEX"))
            .bearer_auth(&admin)
            .body(chunks[1].1.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(lacking(missing(all.clone()).await.unwrap()).await, all[1..]);

    // A manifest can only be stored once its chunks are.
    let post = |m: &Manifest, token: &str| {
        h.client
            .post(h.url("/api/v1/images"))
            .bearer_auth(token)
            .json(m)
            .send()
    };
    let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let v1 = manifest_of("1", &slices);
    let (status, message) = error_of(post(&v1, &admin).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("chunks[1]"), "{message}");
    for (hash, stored) in &chunks[1..] {
        let resp = upload(*hash, stored.clone(), &admin).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    assert!(
        lacking(missing(all.clone()).await.unwrap())
            .await
            .is_empty()
    );

    let mut wrong_len = v1.clone();
    wrong_len.chunks[2].stored_len += 1;
    let (status, message) = error_of(post(&wrong_len, &admin).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("chunks[2].stored_len"), "{message}");
    let mut bad_size = v1.clone();
    bad_size.size += 1;
    let (status, message) = error_of(post(&bad_size, &admin).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("manifest: "), "{message}");
    let mut reserved = v1.clone();
    reserved.version = "latest".into();
    let (status, _) = error_of(post(&reserved, &admin).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Stored, signed with the appliance key.
    let resp = post(&v1, &admin).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let signed_v1: SignedManifest = resp.json().await.unwrap();
    assert_eq!(signed_v1.manifest, v1);
    assert_eq!(signed_v1.key, h.images.public_key());
    let trusted = metalcast_image::verifying_key(&h.images.public_key()).unwrap();
    metalcast_image::verify_manifest(signed_v1.clone(), &trusted).expect("signature verifies");
    let resp = post(&v1, &admin).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the same version again is a no-op"
    );
    let mut other = v1.clone();
    other.created_ms += 1;
    let (status, message) = error_of(post(&other, &admin).await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{message}");

    // A second version becomes latest; rollback points latest back.
    let v2 = manifest_of("2", &[&parts[2], &parts[0]]);
    let resp = post(&v2, &admin).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let signed_v2: SignedManifest = resp.json().await.unwrap();
    let versions = |name: &str| {
        h.get(&format!("/api/v1/images/{name}"), Some(&admin))
            .send()
    };
    let got: ImageVersions = versions("deb").await.unwrap().json().await.unwrap();
    assert_eq!(got.latest.as_deref(), Some("2"));
    let listed: Vec<&str> = got.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(listed, ["1", "2"]);
    assert_eq!(got.versions[0].id, signed_v1.id);
    let (status, _) = error_of(versions("nope").await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let listing: Vec<ImageSummary> = h
        .get("/api/v1/images", Some(&admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing.len(), 2);
    let set_latest = |version: &str| {
        h.client
            .put(h.url("/api/v1/images/deb/latest"))
            .bearer_auth(&admin)
            .json(&SetLatest {
                version: version.into(),
            })
            .send()
    };
    let got: ImageVersions = set_latest("1").await.unwrap().json().await.unwrap();
    assert_eq!(got.latest.as_deref(), Some("1"));
    let (status, _) = error_of(set_latest("7").await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A node token reads manifests and chunks, and nothing it may not.
    let (_, token) = h.script(MAC_A).await;
    let token = token.expect("agent script carries a token");
    let fetched: SignedManifest = h
        .get("/api/v1/images/deb/latest/manifest", Some(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, signed_v1, "latest was rolled back to 1");
    let resp = h
        .get("/api/v1/images/deb/2/manifest", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<SignedManifest>().await.unwrap(), signed_v2);
    let (status, _) = error_of(
        h.get("/api/v1/images/deb/9/manifest", Some(&token))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let chunk_url = format!("/api/v1/chunks/{}", chunks[1].0);
    let resp = h
        .get(&chunk_url, Some(&token))
        .header(RANGE, "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        &chunks[1].1[..10],
        "the stored (compressed) bytes"
    );
    let resp = h.get(&chunk_url, Some(&token)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), chunks[1].1.as_slice());
    let resp = h
        .client
        .head(h.url(&chunk_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[CONTENT_LENGTH].to_str().unwrap(),
        chunks[1].1.len().to_string()
    );
    let absent = chunk(b"never uploaded").0;
    let (status, _) = error_of(
        h.get(&format!("/api/v1/chunks/{absent}"), Some(&token))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = post(&v2, &token).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = upload(absent, b"x".to_vec(), &token).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = h.get("/api/v1/images", Some(&token)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = h.get(&chunk_url, None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Several chunks in one answer, back to back in the order asked, repeats included.
    let fetch = |list: Vec<Digest>, token: Option<&str>| {
        let req = h
            .client
            .post(h.url("/api/v1/chunks/fetch"))
            .json(&ChunkList { chunks: list });
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
        .send()
    };
    let resp = fetch(vec![all[2], all[0], all[2]], Some(&token))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[CONTENT_LENGTH].to_str().unwrap(),
        (2 * chunks[2].1.len() + chunks[0].1.len()).to_string()
    );
    let expected = [&chunks[2].1[..], &chunks[0].1[..], &chunks[2].1[..]].concat();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), expected.as_slice());
    let (status, message) =
        error_of(fetch(vec![all[1], absent], Some(&token)).await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains(&absent.to_string()), "{message}");
    let too_many = vec![all[0]; metalcast_proto::image::MAX_CHUNKS_PER_FETCH + 1];
    for list in [Vec::new(), too_many] {
        let (status, message) = error_of(fetch(list, Some(&token)).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        assert!(message.starts_with("chunks: "), "{message}");
    }
    let resp = fetch(vec![all[0]], None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // The fetch is on the node's record.
    let mac_a: MacAddr = MAC_A.parse().unwrap();
    let events = h.store.events(mac_a).await.unwrap();
    let fetch = events
        .iter()
        .find(|e| e.phase == Phase::Image)
        .expect("an image event");
    assert!(
        fetch
            .message
            .starts_with("fetching image deb@1 (3 chunks, 0.0 MiB"),
        "{}",
        fetch.message
    );

    // Nodes follow latest or pin a version; the plan names the resolved version.
    let set_node = |body: serde_json::Value| {
        h.client
            .put(h.url(&format!("/api/v1/nodes/{MAC_A}")))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    for (image, needle) in [
        ("deb@9", "has no version 9"),
        ("nope", "nope has no latest"),
        ("a/b", "invalid image name"),
    ] {
        let (status, message) = error_of(
            set_node(serde_json::json!({ "image": image }))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{image}");
        assert!(message.contains(needle), "{message}");
    }
    let node: Node = set_node(serde_json::json!({"image": "deb"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node.image.as_deref(), Some("deb"));
    let plan = || async {
        h.get(&format!("/api/v1/agent/{MAC_A}/plan"), Some(&token))
            .send()
            .await
            .unwrap()
            .json::<AgentPlan>()
            .await
            .unwrap()
            .image
            .expect("the plan carries the image")
    };
    let p = plan().await;
    assert_eq!(
        (p.name.as_str(), p.version.as_str(), p.manifest_id),
        ("deb", "1", signed_v1.id)
    );
    set_node(serde_json::json!({"image": "deb@2"}))
        .await
        .unwrap();
    assert_eq!(plan().await.manifest_id, signed_v2.id);

    // Installed: the node is provisioned and says so.
    let resp = h
        .client
        .post(h.url(&format!("/api/v1/agent/{MAC_A}/provisioned")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let node = h.store.node(mac_a).await.unwrap().unwrap();
    assert_eq!(node.state, NodeState::Provisioned);
    let events = h.store.events(mac_a).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.phase, Phase::Reboot);
    assert_eq!(
        last.message,
        "installed; next network boot boots the local disk"
    );

    // gc keeps referenced chunks and, within the grace period, fresh unreferenced ones. This
    // one is incompressible and above the JSON routes' 1 MiB body limit.
    let mut big = vec![0u8; 3 << 20];
    blake3::Hasher::new()
        .update(b"incompressible")
        .finalize_xof()
        .fill(&mut big);
    let (loose, stored) = chunk(&big);
    assert!(stored.len() > 3 << 20);
    let resp = upload(loose, stored, &admin).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = h
        .client
        .post(h.url("/api/v1/images/gc"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let summary: GcSummary = resp.json().await.unwrap();
    assert_eq!(summary.chunks_removed, 0);
    assert!(
        lacking(missing(vec![loose]).await.unwrap())
            .await
            .is_empty()
    );
}

/// Puts `parts` into the store as image `deb` version `version`.
async fn upload_image(h: &Harness, version: &str, parts: &[&[u8]]) -> SignedManifest {
    for p in parts {
        let (hash, stored) = chunk(p);
        let resp = h
            .client
            .put(h.url(&format!("/api/v1/chunks/{hash}")))
            .bearer_auth(&h.admin)
            .body(stored)
            .send()
            .await
            .expect("uploading a chunk");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let resp = h
        .client
        .post(h.url("/api/v1/images"))
        .bearer_auth(&h.admin)
        .json(&manifest_of(version, parts))
        .send()
        .await
        .expect("posting the manifest");
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.expect("a signed manifest")
}

#[tokio::test]
async fn mcast_sessions_open_serve_their_block_list_and_stop() {
    // Without an [mcast] section there are no sessions.
    let plain = start().await;
    let resp = plain
        .client
        .post(plain.url("/api/v1/mcast/sessions"))
        .bearer_auth(&plain.admin)
        .json(&serde_json::json!({"image": "deb@1", "nodes": [MAC_A]}))
        .send()
        .await
        .unwrap();
    let (status, message) = error_of(resp).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("[mcast]"), "{message}");

    let h = start_with(Some(McastSettings {
        interface: "lo".into(),
        group_base: "239.77.0.0".parse().unwrap(),
        port: 5000,
        rate_ceiling: 100_000_000,
        max_duration: std::time::Duration::from_secs(60),
        member_deadline: std::time::Duration::from_secs(60),
        auto_min_nodes: 0,
    }))
    .await;
    let parts: Vec<Vec<u8>> = (0..3u32)
        .map(|n| (0..40_000u32).map(|i| (i * (n + 7) % 253) as u8).collect())
        .collect();
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let signed = upload_image(&h, "1", &parts).await;
    let set = |mac: &str, body: serde_json::Value| {
        h.client
            .put(h.url(&format!("/api/v1/nodes/{mac}")))
            .bearer_auth(&h.admin)
            .json(&body)
            .send()
    };
    set(
        MAC_A,
        serde_json::json!({"image": "deb@1", "state": "provisioning"}),
    )
    .await
    .unwrap();
    set(MAC_B, serde_json::json!({"hostname": "b"}))
        .await
        .unwrap();
    let open = |nodes: &[&str]| {
        h.client
            .post(h.url("/api/v1/mcast/sessions"))
            .bearer_auth(&h.admin)
            .json(&serde_json::json!({"image": "deb@1", "nodes": nodes, "rate_mbit": 50}))
            .send()
    };
    // A member that would never join is refused, naming what it installs.
    let (status, message) = error_of(open(&[MAC_A, MAC_B]).await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        message.contains("installs no image, not deb@1"),
        "{message}"
    );

    let resp = open(&[MAC_A]).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let first: McastSessionStatus = resp.json().await.unwrap();
    assert_eq!(first.image, "deb@1");
    assert_eq!(first.state, McastState::Sending);
    assert_eq!(first.ceiling_bps, 50_000_000);
    assert_eq!(first.session.length, signed.manifest.stored_size());
    assert_eq!(first.members.len(), 1);
    assert_eq!(first.members[0].state, MemberState::Waiting);
    assert_eq!(first.members[0].blocks_total, 1);

    // The block list: its hash is the one the session announces.
    let id = first.session.id;
    let blocks = |token: &str| {
        h.get(&format!("/api/v1/mcast/sessions/{id}/blocks"), Some(token))
            .send()
    };
    let text = blocks(&h.admin).await.unwrap().text().await.unwrap();
    let list = metalcast_mcast::BlockList::parse_text(&text).expect("a block list");
    assert_eq!(*list.manifest_hash(), first.session.manifest_hash.0);
    let (_, token_a) = h.script(MAC_A).await;
    let (_, token_b) = h.script(MAC_B).await;
    let resp = blocks(token_a.as_deref().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, message) = error_of(blocks(token_b.as_deref().unwrap()).await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message.contains("not a member"), "{message}");

    // Stopped before anyone joined: the member's plan is unicast.
    let resp = h
        .client
        .delete(h.url(&format!("/api/v1/mcast/sessions/{id}")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    let stopped: McastSessionStatus = resp.json().await.unwrap();
    assert_eq!(stopped.state, McastState::Stopped);
    let plan = || async {
        h.get(&format!("/api/v1/agent/{MAC_A}/plan"), token_a.as_deref())
            .send()
            .await
            .unwrap()
            .json::<AgentPlan>()
            .await
            .unwrap()
            .image
            .expect("an image plan")
    };
    assert_eq!(plan().await.mcast, None);

    // A new session: the member's plan names it.
    let second: McastSessionStatus = open(&[MAC_A]).await.unwrap().json().await.unwrap();
    assert_ne!(second.session.id, id);
    assert_ne!(second.session.group, first.session.group);
    assert_eq!(plan().await.mcast, Some(second.session.clone()));
    let listed: Vec<McastSessionStatus> = h
        .get("/api/v1/mcast/sessions", Some(&h.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let resp = h
        .get("/api/v1/mcast/sessions/00000000000000ff", Some(&h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
