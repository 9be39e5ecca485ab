//! Shared set-up of the sf-cluster integration tests: a fresh database on the run's
//! private MariaDB, an in-process sf-database gateway and sf-api (with
//! authentication: a `system` key stored through the gateway's PutKey), sf-cluster
//! in-process (as many as a test wants, each with its own shutdown), and a TEST
//! AGENT that registers Nodes, heartbeats them and claims operations through the same
//! gRPC calls as the real agent (Claim, Heartbeat, Complete, MergeStatus).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sf_cluster::context::Context;
use sf_daemon::Shutdown;
use sf_database::daemon as gateway_daemon;
use sf_database::{MariaDbArgs, connect, ensure_schema};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_harness::TestDatabase;
use sf_proto::v1 as pb;
use sf_schema::{ClusterOperation, Instance, Network, Node};
use tokio::sync::watch;

pub const SECRET: &str = "cluster-test-secret-0123456789";
pub const SEED: &str = "cluster-test-auth-seed-0123456789";
pub const CLUSTER_KEY: &str = "cluster-test-service-key-0123456789";
pub const NS: &str = "demo";

/// One test's system.
pub struct Env {
    pub db: TestDatabase,
    pub url: String,
    pub gateway_hosts: String,
    pub gateway: GatewayClient,
    /// A kube client as `system` (default namespace `demo`).
    pub client: kube::Client,
    gateway_shutdown: Shutdown,
    api_shutdown: Shutdown,
    clusters: Vec<Cluster>,
    agents: Vec<Agent>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &self.clusters {
            c.shutdown.trigger();
        }
        for a in &self.agents {
            a.stop.trigger();
        }
        self.api_shutdown.trigger();
        self.gateway_shutdown.trigger();
    }
}

/// One in-process sf-cluster.
pub struct Cluster {
    pub shutdown: Shutdown,
    pub metrics_addr: SocketAddr,
    pub context: watch::Receiver<Option<Arc<Context>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Whether this sf-cluster holds the lease (its context is published).
    pub fn is_leader(&self) -> bool {
        self.context.borrow().is_some()
    }

    /// Waits until it holds the lease.
    pub async fn wait_leader(&mut self, within: Duration) {
        let r = tokio::time::timeout(within, self.context.wait_for(Option::is_some)).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "sf-cluster did not take the lease within {within:?}"
        );
    }

    /// Its /metrics text.
    pub async fn metrics(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("connect metrics");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    /// Stops it and waits for it to finish (the lease is released).
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("sf-cluster stops within 15 s")
            .expect("sf-cluster task");
    }
}

async fn start_gateway(db: &TestDatabase) -> (SocketAddr, Shutdown) {
    gateway_daemon::spawn_local(db.port, &db.name, 8, SECRET)
        .await
        .expect("in-process sf-database")
}

/// Logs to stdout when `SF_TEST_LOG` is set (an EnvFilter, e.g. `sf_cluster=debug`).
fn init_logging() {
    static GUARD: std::sync::OnceLock<Option<sf_daemon::TelemetryGuard>> =
        std::sync::OnceLock::new();
    GUARD.get_or_init(|| {
        let filter = std::env::var("SF_TEST_LOG").ok()?;
        let args = sf_daemon::TelemetryArgs {
            log_format: sf_daemon::LogFormat::Text,
            log_filter: filter,
        };
        sf_daemon::telemetry::init("sf-cluster-test", &args).ok()
    });
}

/// Starts MariaDB, sf-database and sf-api; namespaces `system` and `demo`; the
/// service key. No sf-cluster and no agent yet.
pub async fn start() -> Env {
    init_logging();
    let db = TestDatabase::new().expect("test database");
    let args = MariaDbArgs::local_root(db.port, &db.name);
    let conn = connect(&args).await.expect("connect");
    ensure_schema(&conn).await.expect("schema");
    conn.close().await.expect("close");
    let (addr, gateway_shutdown) = start_gateway(&db).await;
    let gateway_hosts = addr.to_string();
    let gateway = GatewayClient::from_host_list(&gateway_hosts, SECRET, RetryPolicy::default())
        .expect("gateway client");
    let api_gateway = sf_api::gateway::Gateway::new(&gateway_hosts, SECRET).expect("gateway");
    for ns in ["system", NS] {
        if let Err(e) = api_gateway.create_namespace(ns).await {
            assert_eq!(e.code(), Some(tonic::Code::AlreadyExists), "{e}");
        }
    }
    let key_hash = sf_api::auth::hash_key(CLUSTER_KEY).expect("hash key");
    api_gateway
        .put_key("system", "sf-cluster", &key_hash)
        .await
        .expect("put key");

    let argv = vec![
        "sf-api".to_string(),
        "--api-listen=127.0.0.1".to_string(),
        "--api-port=0".to_string(),
        format!("--mariadb-gateway-hosts={gateway_hosts}"),
        format!("--mariadb-gateway-secret={SECRET}"),
        format!("--auth-secret-seed={SEED}"),
        "--log=warn".to_string(),
    ];
    let config: sf_api::Config = sf_daemon::config::try_parse_from(argv).expect("sf-api config");
    let listener = sf_api::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind sf-api");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let api_shutdown = Shutdown::new();
    let app = sf_api::App::new(&config, api_shutdown.clone()).expect("app");
    tokio::spawn(async move {
        if let Err(e) = sf_api::serve_app(app, listener).await {
            eprintln!("sf-api: {e}");
        }
    });
    let client = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let creds = sf_client::Credentials {
                url: url.clone(),
                namespace: "system".into(),
                key: Some(CLUSTER_KEY.into()),
                token: None,
            };
            match sf_client::connect(creds).await {
                Ok(c) => break c.kube(),
                Err(e) => {
                    assert!(Instant::now() < deadline, "sf-api not ready: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    Env {
        db,
        url,
        gateway_hosts,
        gateway,
        client,
        gateway_shutdown,
        api_shutdown,
        clusters: Vec::new(),
        agents: Vec::new(),
    }
}

impl Env {
    /// sf-cluster's configuration for this system, plus `extra` flags.
    pub fn cluster_config(&self, extra: &[&str]) -> sf_cluster::Config {
        let mut argv = vec![
            "sf-cluster".to_string(),
            format!("--api-url={}", self.url),
            "--cluster-namespace=system".to_string(),
            format!("--cluster-key={CLUSTER_KEY}"),
            format!("--mariadb-gateway-hosts={}", self.gateway_hosts),
            format!("--mariadb-gateway-secret={SECRET}"),
            "--cluster-metrics-port=0".to_string(),
            "--cluster-lease-ttl=3".to_string(),
            "--log=warn".to_string(),
        ];
        argv.extend(extra.iter().map(ToString::to_string));
        sf_daemon::config::try_parse_from(argv).expect("sf-cluster config")
    }

    /// Starts an sf-cluster in-process with `extra` flags.
    pub async fn start_cluster(&self, extra: &[&str]) -> Cluster {
        let config = self.cluster_config(extra);
        let listener = sf_daemon::metrics::bind(config.metrics_address())
            .await
            .expect("bind metrics");
        let metrics_addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let (tx, rx) = watch::channel(None);
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = sf_cluster::serve(config, s, listener, Some(tx)).await {
                eprintln!("sf-cluster: {e}");
            }
        });
        Cluster {
            shutdown,
            metrics_addr,
            context: rx,
            task,
        }
    }

    /// Keeps `cluster` so it is stopped with the environment.
    pub fn keep(&mut self, cluster: Cluster) {
        self.clusters.push(cluster);
    }

    /// Starts a test agent for node `name` and keeps it.
    pub async fn start_agent(&mut self, name: &str, spec: NodeSpecForTest) -> Agent {
        let agent = Agent::start(self.gateway.clone(), name, spec).await;
        self.agents.push(agent.clone());
        agent
    }

    pub fn instances(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn networks(&self) -> Api<Network> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn operations(&self) -> Api<ClusterOperation> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Creates a network `name` in `demo`.
    pub async fn create_network(&self, name: &str, netblock: &str) -> Network {
        let n: Network = serde_json::from_value(json!({
            "apiVersion": "shakenfist.io/v1alpha1",
            "kind": "Network",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"netblock": netblock, "provideDhcp": true, "provideNat": false, "provideDns": false},
        }))
        .expect("network");
        self.networks()
            .create(&PostParams::default(), &n)
            .await
            .expect("create network")
    }

    /// Creates an instance `name` (1 vCPU, 512 MiB, an 8 GiB disk) on `networks`.
    pub async fn create_instance(&self, name: &str, networks: &[&str]) -> Instance {
        self.create_instance_on(name, networks, None).await
    }

    /// Creates an instance `name` on `networks`, asking for node `node` when given.
    pub async fn create_instance_on(
        &self,
        name: &str,
        networks: &[&str],
        node: Option<&str>,
    ) -> Instance {
        let nets: Vec<Value> = networks.iter().map(|n| json!({"network": n})).collect();
        let mut spec = json!({"cpus": 1, "memory": 512, "disks": [{"size": 8}], "networks": nets, "powerState": "on"});
        if let Some(node) = node {
            spec["placedOn"] = json!(node);
        }
        let i: Instance = serde_json::from_value(json!({
            "apiVersion": "shakenfist.io/v1alpha1",
            "kind": "Instance",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        }))
        .expect("instance");
        self.instances()
            .create(&PostParams::default(), &i)
            .await
            .expect("create instance")
    }

    /// Sets `spec.powerState` of instance `name`.
    pub async fn set_power(&self, name: &str, power: &str) {
        self.instances()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"powerState": power}})),
            )
            .await
            .expect("patch power");
    }

    /// The operations labelled as owned by `uid`.
    pub async fn owned_operations(&self, uid: &str) -> Vec<ClusterOperation> {
        self.operations()
            .list(&ListParams::default().labels(&format!("shakenfist.io/owner={uid}")))
            .await
            .expect("list operations")
            .items
    }

    /// Every operation in `demo`.
    pub async fn all_operations(&self) -> Vec<ClusterOperation> {
        self.operations()
            .list(&ListParams::default())
            .await
            .expect("list operations")
            .items
    }

    /// Polls `check` every 100 ms until it returns Some, or panics after `within`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, within: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Instance `name` once `pred` holds.
    pub async fn instance_when(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&Instance) -> bool,
    ) -> Instance {
        let api = self.instances();
        let deadline = Instant::now() + within;
        loop {
            let i = api.get_opt(name).await.ok().flatten();
            if let Some(i) = &i
                && pred(i)
            {
                return i.clone();
            }
            if Instant::now() >= deadline {
                let ops: Vec<String> = self
                    .all_operations()
                    .await
                    .iter()
                    .map(|o| {
                        format!(
                            "{} {:?} deps={:?}",
                            o.metadata.name.clone().unwrap_or_default(),
                            o.status.as_ref().map(|s| s.state.as_str().to_string()),
                            o.spec.depends_on
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for: {what}\ninstance: {}\noperations: {ops:#?}",
                    serde_json::to_string_pretty(&i).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a test node reports.
#[derive(Debug, Clone)]
pub struct NodeSpecForTest {
    pub roles: Vec<&'static str>,
    pub cpu_threads: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Default for NodeSpecForTest {
    fn default() -> Self {
        Self {
            roles: vec!["hypervisor"],
            cpu_threads: 16,
            memory_mib: 64 * 1024,
            disk_gib: 1000,
        }
    }
}

/// One claimed operation, as the agent saw it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub name: String,
    pub operation_type: String,
    pub target: String,
    pub node: String,
    pub at: Instant,
    pub depends_on: Vec<String>,
}

/// A test agent: registers its Node, heartbeats it and runs operations by reporting
/// the observed facts a real agent would.
#[derive(Clone)]
pub struct Agent {
    pub name: String,
    gateway: GatewayClient,
    pub stop: Shutdown,
    /// Heartbeats run while set.
    pub heartbeat: Arc<AtomicBool>,
    /// Claims run while set.
    pub claiming: Arc<AtomicBool>,
    /// Snapshots are claimed but not completed while set.
    pub hold_snapshots: Arc<AtomicBool>,
    /// Every claim, in order.
    pub claimed: Arc<Mutex<Vec<Claimed>>>,
    /// Claim timestamps by operation name (latency benchmarks).
    pub claim_count: Arc<AtomicU64>,
    /// When each operation was claimed, by name.
    pub claim_times: Arc<Mutex<HashMap<String, Instant>>>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Agent {
    async fn start(gateway: GatewayClient, name: &str, spec: NodeSpecForTest) -> Self {
        let node = json!({
            "apiVersion": "shakenfist.io/v1alpha1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {"schedulable": true, "roles": spec.roles},
        });
        let request = pb::CreateResourceRequest {
            object: serde_json::to_vec(&node).expect("node JSON"),
            dry_run: false,
        };
        gateway
            .call("create_resource", |mut g| {
                let r = request.clone();
                async move { g.create_resource(r).await }
            })
            .await
            .expect("register node");
        let agent = Self {
            name: name.to_string(),
            gateway,
            stop: Shutdown::new(),
            heartbeat: Arc::new(AtomicBool::new(true)),
            claiming: Arc::new(AtomicBool::new(true)),
            hold_snapshots: Arc::new(AtomicBool::new(false)),
            claimed: Arc::new(Mutex::new(Vec::new())),
            claim_count: Arc::new(AtomicU64::new(0)),
            claim_times: Arc::new(Mutex::new(HashMap::new())),
        };
        let capacity = json!({
            "cpuThreads": spec.cpu_threads,
            "memoryMib": spec.memory_mib,
            "diskGib": spec.disk_gib,
        });
        agent
            .merge_status(
                "Node",
                "",
                name,
                json!({"capacity": capacity, "lastSeen": now_rfc3339()}),
            )
            .await;
        let hb = agent.clone();
        tokio::spawn(async move {
            while !hb.stop.is_triggered() {
                if hb.heartbeat.load(Ordering::SeqCst) {
                    hb.merge_status("Node", "", &hb.name, json!({"lastSeen": now_rfc3339()}))
                        .await;
                }
                tokio::select! {
                    () = hb.stop.wait() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        let worker = agent.clone();
        tokio::spawn(async move { worker.work().await });
        agent
    }

    /// MergeStatus on an object (the agent's path for observed facts).
    pub async fn merge_status(&self, kind: &str, namespace: &str, name: &str, patch: Value) {
        let request = pb::MergeStatusRequest {
            key: Some(pb::ObjectKey {
                kind: kind.into(),
                namespace: namespace.into(),
                name: name.into(),
            }),
            status_patch: serde_json::to_vec(&patch).expect("patch JSON"),
        };
        let r = self
            .gateway
            .call("merge_status", |mut g| {
                let r = request.clone();
                async move { g.merge_status(r).await }
            })
            .await;
        if let Err(e) = r {
            eprintln!("agent {}: merge status of {kind} {name}: {e}", self.name);
        }
    }

    async fn work(&self) {
        let mut claim_seq = 0u64;
        while !self.stop.is_triggered() {
            if !self.claiming.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            claim_seq += 1;
            let request = pb::ClaimRequest {
                node: self.name.clone(),
                max: 16,
                claim_id: format!("{}-{}-{claim_seq}", self.name, std::process::id()),
                wait_seconds: 1,
                claimer: self.name.clone(),
                node_only: false,
            };
            let reply = self
                .gateway
                .call("claim", |mut g| {
                    let r = request.clone();
                    async move { g.claim(r).await }
                })
                .await;
            let Ok(reply) = reply else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for claimed in reply.operations {
                let agent = self.clone();
                tokio::spawn(async move { agent.execute(claimed).await });
            }
        }
    }

    async fn execute(&self, claimed: pb::ClaimedOperation) {
        let Ok(op) = serde_json::from_slice::<ClusterOperation>(&claimed.object) else {
            return;
        };
        let lease = claimed.lease;
        let name = op.metadata.name.clone().unwrap_or_default();
        let kind = op.spec.operation_type.as_str().to_string();
        self.claim_count.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut t) = self.claim_times.lock() {
            t.insert(name.clone(), Instant::now());
        }
        if let Ok(mut c) = self.claimed.lock() {
            c.push(Claimed {
                name: name.clone(),
                operation_type: kind.clone(),
                target: op.spec.target.name.clone(),
                node: self.name.clone(),
                at: Instant::now(),
                depends_on: op.spec.depends_on.clone(),
            });
        }
        let ns = op.metadata.namespace.clone().unwrap_or_default();
        let target = op.spec.target.name.clone();
        let power = match kind.as_str() {
            "instance_create" => Some(if op.spec.payload["powerState"] == "off" {
                "off"
            } else {
                "running"
            }),
            "instance_power_on" | "instance_unpause" | "instance_reboot" => Some("running"),
            "instance_power_off" => Some("off"),
            "instance_pause" => Some("paused"),
            _ => None,
        };
        if kind == "instance_snapshot" {
            while self.hold_snapshots.load(Ordering::SeqCst) && !self.stop.is_triggered() {
                let hb = pb::LeaseRequest { lease };
                let _ = self
                    .gateway
                    .call("heartbeat", |mut g| async move { g.heartbeat(hb).await })
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if self.stop.is_triggered() {
            return; // A stopped agent finishes nothing (its claims go stale).
        }
        if let Some(power) = power {
            self.merge_status("Instance", &ns, &target, json!({"powerState": power}))
                .await;
        }
        let request = pb::CompleteRequest {
            lease,
            result: b"{}".to_vec(),
        };
        let r = self
            .gateway
            .call("complete", |mut g| {
                let r = request.clone();
                async move { g.complete(r).await }
            })
            .await;
        if let Err(e) = r
            && e.code() != Some(tonic::Code::FailedPrecondition)
        {
            eprintln!("agent {}: complete {name}: {e}", self.name);
        }
    }

    /// The claims so far.
    pub fn claims(&self) -> Vec<Claimed> {
        self.claimed.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Creates a ClusterOperation directly through the gateway, labelled as sf-api labels
/// a user's one-shot request (owner = the instance).
pub async fn request_operation(env: &Env, instance: &Instance, name: &str, operation_type: &str) {
    let uid = instance.metadata.uid.clone().expect("uid");
    let iname = instance.metadata.name.clone().expect("name");
    let node = instance
        .status
        .as_ref()
        .and_then(|s| s.node.clone())
        .expect("placed");
    let object = json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": "ClusterOperation",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "shakenfist.io/owner": uid,
            "shakenfist.io/owner-kind": "Instance",
            "shakenfist.io/owner-name": iname,
            "shakenfist.io/target": uid,
        }},
        "spec": {
            "operationType": operation_type,
            "target": {"kind": "Instance", "name": iname, "namespace": NS, "uid": uid},
            "node": node,
            "payload": {},
        },
    });
    let request = pb::CreateOperationRequest {
        object: serde_json::to_vec(&object).expect("JSON"),
        delay_ms: 0,
    };
    env.gateway
        .call("create_operation", |mut g| {
            let r = request.clone();
            async move { g.create_operation(r).await }
        })
        .await
        .expect("create operation");
}

/// The IPAMLeases in `demo` as (address, phase, owner name).
pub async fn leases(env: &Env) -> Vec<(String, String, String)> {
    let api: Api<sf_schema::IPAMLease> = Api::namespaced(env.client.clone(), NS);
    api.list(&ListParams::default())
        .await
        .expect("list leases")
        .items
        .into_iter()
        .map(|l| {
            (
                l.spec.address.clone(),
                l.status
                    .map(|s| s.phase.as_str().to_string())
                    .unwrap_or_default(),
                l.spec.owner.map(|o| o.name).unwrap_or_default(),
            )
        })
        .collect()
}
