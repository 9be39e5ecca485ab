//! Shared set-up of the agent daemon tests and the benchmark: a fresh database on
//! the run's private MariaDB, an in-process sf-database gateway, a private libvirt
//! test-driver file and a network namespace (with a veth "mesh" NIC) removed on drop.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sf_agent::agent::{Agent, AgentSettings};
use sf_agent::domain_xml::{DomainType, RenderSettings};
use sf_agent::gateway::Gateway;
use sf_agent::instance::{Lifecycle, LifecycleSettings};
use sf_agent::libvirt::LibvirtHypervisor;
use sf_agent::metrics::AgentMetrics;
use sf_daemon::Shutdown;
use sf_database::daemon as gateway_daemon;
use sf_database::{MariaDbArgs, connect, connect_pool, ensure_schema};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_harness::TestDatabase;
use sf_hostnet::{HostNetConfig, NetlinkHostNet};
use sf_proto::v1 as pb;

pub const SECRET: &str = "agent-test-secret-0123456789";
pub const NODE: &str = "hv-1";
pub const VXID: u32 = 0x00a1b2;

pub struct Netns(pub String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

pub fn privileged() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        if std::env::var("SF_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("SF_REQUIRE_PRIVILEGED=1 but not running as root");
        }
        println!("skipped: the agent daemon test needs root (network namespaces)");
    }
    root
}

pub async fn start_gateway(db: &TestDatabase) -> (SocketAddr, Shutdown) {
    gateway_daemon::spawn_local(db.port, &db.name, 6, SECRET)
        .await
        .expect("in-process sf-database")
}

pub struct Env {
    pub _db: TestDatabase,
    pub gateway: Gateway,
    pub gateway_hosts: String,
    pub gateway_shutdown: Shutdown,
    pub dir: tempfile::TempDir,
    pub uri: String,
    pub netns: Netns,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.gateway_shutdown.trigger();
    }
}

pub type TestAgent = Agent<LibvirtHypervisor, NetlinkHostNet>;

impl Env {
    pub fn settings(&self, uuid: &str) -> AgentSettings {
        AgentSettings {
            node_name: NODE.into(),
            node_uuid: uuid.into(),
            mesh_address: "10.250.0.1".parse().expect("ip"),
            storage_path: self.dir.path().join("storage"),
            heartbeat_interval: Duration::from_millis(500),
            poll_interval: Duration::from_millis(200),
            max_concurrency: 2,
            drain_timeout: Duration::from_secs(5),
            claim_wait_seconds: 1,
            operation_heartbeat_interval: Duration::from_millis(500),
            ..AgentSettings::default()
        }
    }

    pub fn agent(&self, hv: LibvirtHypervisor, uuid: &str) -> TestAgent {
        self.agent_with(hv, self.settings(uuid))
    }

    pub fn agent_with(&self, hv: LibvirtHypervisor, settings: AgentSettings) -> TestAgent {
        let mut life = LifecycleSettings::new(
            self.dir.path().join("storage"),
            RenderSettings::new(DomainType::Test),
        );
        life.power_on_delay = Duration::from_millis(50);
        life.state_change_delay = Duration::from_millis(50);
        let mut net = HostNetConfig::new(
            NODE,
            "mesh0",
            "10.250.0.1".parse().expect("ip"),
            self.dir.path().join("hostnet"),
        );
        net.netns = Some(self.netns.0.clone());
        Agent::new(
            settings,
            self.gateway.clone(),
            Lifecycle::new(hv, life),
            NetlinkHostNet::new(net).expect("hostnet"),
            AgentMetrics::default(),
        )
    }

    pub async fn get(&self, kind: &str, ns: Option<&str>, name: &str) -> Value {
        self.gateway
            .get::<Value>(kind, ns, name)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("{kind} {name} exists"))
    }

    pub async fn merge(&self, kind: &str, ns: Option<&str>, name: &str, patch: Value) {
        self.gateway
            .merge_status(kind, ns, name, &patch)
            .await
            .expect("merge status");
    }

    /// An Artifact `name` in `ns` (an https source nobody fetches), `created` with
    /// `versions` as the artifact controller records them; returns its uid.
    pub async fn artifact(&self, ns: &str, name: &str, versions: Value) -> String {
        let artifact = self
            .gateway
            .create(&json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Artifact",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"sourceUrl": format!("https://images.example/{name}")},
            }))
            .await
            .expect("artifact");
        self.merge(
            "Artifact",
            Some(ns),
            name,
            json!({"state": "created", "versions": versions}),
        )
        .await;
        artifact["metadata"]["uid"]
            .as_str()
            .expect("uid")
            .to_owned()
    }

    /// An Instance `name` in `demo` with `spec`, placed on [`NODE`] and `creating`, as
    /// the instance controller leaves it for `instance_create`; returns its uid.
    pub async fn placed_instance(&self, name: &str, spec: Value) -> String {
        let instance = self
            .gateway
            .create(&json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
                "metadata": {"name": name, "namespace": "demo"},
                "spec": spec,
            }))
            .await
            .expect("instance");
        self.merge(
            "Instance",
            Some("demo"),
            name,
            json!({"state": "creating", "node": NODE}),
        )
        .await;
        instance["metadata"]["uid"]
            .as_str()
            .expect("uid")
            .to_owned()
    }

    pub async fn enqueue(
        &self,
        name: &str,
        op_type: &str,
        target: Value,
        payload: Value,
        depends: &[&str],
    ) {
        self.enqueue_on(Some(NODE), name, op_type, target, payload, depends)
            .await;
    }

    pub async fn enqueue_on(
        &self,
        node: Option<&str>,
        name: &str,
        op_type: &str,
        target: Value,
        payload: Value,
        depends: &[&str],
    ) {
        let object = json!({
            "apiVersion": "shakenfist.io/v1alpha1",
            "kind": "ClusterOperation",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {
                "operationType": op_type,
                "target": target,
                "node": node,
                "dependsOn": depends,
                "payload": payload,
            },
        });
        let bytes = serde_json::to_vec(&object).expect("json");
        self.gateway
            .client()
            .create_operation(pb::CreateOperationRequest {
                object: bytes,
                delay_ms: 0,
            })
            .await
            .expect("create operation");
    }

    /// Waits for operation `name` to end; returns it.
    pub async fn wait_op(&self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let op = self.get("ClusterOperation", Some("demo"), name).await;
            match op["status"]["state"].as_str() {
                Some("complete") => return op,
                Some("error") | Some("abort") => panic!("operation {name} failed: {op}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "operation {name} did not finish: {op}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_power(&self, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let inst = self.get("Instance", Some("demo"), "web-1").await;
            if inst["status"]["powerState"] == want {
                return inst;
            }
            assert!(
                Instant::now() < deadline,
                "powerState never became {want}: {inst}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `bridge fdb show` of the network's vxlan inside the namespace.
    pub fn fdb(&self) -> String {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns.0,
                "bridge",
                "fdb",
                "show",
                "dev",
            ])
            .arg(sf_hostnet::vxlan_name(VXID))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn link_exists(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.netns.0, "link", "show", name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

/// An operation `op_name` of `op_type` on Instance `instance` (uid `uid`) in `demo`,
/// on [`NODE`], for `Agent::execute` (not queued).
pub fn instance_op(
    op_name: &str,
    op_type: &str,
    instance: &str,
    uid: &str,
    payload: Value,
) -> sf_schema::ClusterOperation {
    let spec: sf_schema::operation::ClusterOperationSpec = serde_json::from_value(json!({
        "operationType": op_type,
        "target": {"kind": "Instance", "name": instance, "namespace": "demo", "uid": uid},
        "node": NODE,
        "payload": payload,
    }))
    .expect("spec");
    let mut op = sf_schema::ClusterOperation::new(op_name, spec);
    op.metadata.namespace = Some("demo".into());
    op.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    op
}

pub async fn setup() -> Env {
    let db = TestDatabase::new().expect("test database");
    let args = MariaDbArgs::local_root(db.port, &db.name);
    let conn = connect(&args).await.expect("connect");
    ensure_schema(&conn).await.expect("schema");
    conn.close().await.expect("close");
    // The tests' objects live in namespace demo, which must exist.
    sf_database::Store::new(connect_pool(&args).await.expect("pool"))
        .create_namespace("demo")
        .await
        .expect("namespace demo");
    let (addr, gateway_shutdown) = start_gateway(&db).await;
    let client = GatewayClient::from_host_list(&addr.to_string(), SECRET, RetryPolicy::default())
        .expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node/>\n").expect("node.xml");
    let uri = format!("test://{}", node.display());
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = format!("sft-{}-agent{n}", std::process::id());
    let _ = Command::new("ip")
        .args(["netns", "del", &ns])
        .stderr(std::process::Stdio::null())
        .status();
    ip(&["netns", "add", &ns]);
    let netns = Netns(ns.clone());
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    // No dummy module on every kernel: a veth pair with both ends inside.
    ip(&[
        "-n", &ns, "link", "add", "mesh0", "type", "veth", "peer", "name", "mesh0p",
    ]);
    ip(&["-n", &ns, "link", "set", "mesh0p", "mtu", "9000", "up"]);
    // VXLAN NICs get MAX_HYPERVISOR_MTU (8000) - 50: the mesh must carry that.
    ip(&["-n", &ns, "link", "set", "mesh0", "mtu", "9000"]);
    ip(&["-n", &ns, "addr", "add", "10.250.0.1/24", "dev", "mesh0"]);
    ip(&["-n", &ns, "link", "set", "mesh0", "up"]);
    Env {
        _db: db,
        gateway: Gateway::new(client),
        gateway_hosts: addr.to_string(),
        gateway_shutdown,
        dir,
        uri,
        netns,
    }
}
