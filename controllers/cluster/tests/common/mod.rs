//! Shared set-up of the sf-cluster integration tests and benchmark: a fresh database
//! on the run's private MariaDB, an in-process sf-database gateway and sf-api (with
//! authentication: a `system` key stored through the gateway's PutKey), sf-cluster
//! in-process (as many as a test wants, each with its own shutdown), and hypervisor
//! NODES each run by the REAL sf-agent.
//!
//! Contract:
//! - A node ([`Node`]) is what one hypervisor host would be: a network namespace made
//!   by the test (the shared `sf_harness::netns` fabric: two nodes joined by a veth
//!   mesh on 192.0.2.0/24, a dead-end egress veth each; `SHAKENFIST_NODE_NETNS`), a
//!   temporary `STORAGE_PATH`, a distinct node name (unique per test, since the
//!   agents' per-network namespaces are named after it) and a libvirt test driver
//!   with private state (`test://<storage>/node.xml`). Its libvirt connection belongs
//!   to the node, not to the agent: like libvirtd on a host, it keeps the domains
//!   when the agent stops or dies. Node 0 is the network node.
//! - The agent is the `sf-agent` library run in-process the way its binary runs it:
//!   `sf_agent::config::Config` parsed from real flags (heartbeat and polling every
//!   second, the hidden `SHAKENFIST_AGENT_TEST_OPERATION_DELAY_MS` when a test holds
//!   operations open), the node UUID from the storage path, the event spool and its
//!   drain, `Agent::run`. The only settings not taken from a config key are the
//!   per-operation heartbeat interval (0.5 s, so a 1 s stuck threshold reaps only
//!   dead claims) and [`host::Observed`] around the real backends, which records the
//!   order of host changes. Each agent has a Tokio runtime of its own:
//!   [`Env::stop_agent`] is a graceful shutdown (drain, release), [`Env::kill_agent`]
//!   drops the runtime with everything the agent was doing, like `kill -9`.
//! - Privileged: [`start_with_nodes`] returns `None` (the test prints that it is
//!   skipped and passes) when not root, and panics under `SF_REQUIRE_PRIVILEGED=1`.
//! - The agents report this machine's real capacity, so sf-cluster's scheduler gets
//!   settings that fit the tests: no reservations and roomy overcommit by default
//!   ([`ROOMY_SCHEDULER`]); a test that fills nodes computes its own from the Nodes'
//!   reported capacity.
//! - Dropping the [`Env`] stops every sf-cluster, kills every agent, removes the
//!   agents' per-network namespaces and the node namespaces (also when the test
//!   failed) and the storage directories.

#![allow(dead_code)]

pub mod host;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sf_agent::agent::Agent;
use sf_agent::gateway::Gateway as AgentGateway;
use sf_agent::hypervisor::Hypervisor;
use sf_agent::instance::Lifecycle;
use sf_agent::libvirt::LibvirtHypervisor;
use sf_agent::metrics::AgentMetrics;
use sf_cluster::context::Context;
use sf_daemon::Shutdown;
use sf_database::daemon as gateway_daemon;
use sf_database::{MariaDbArgs, connect, ensure_schema};
use sf_database_client::spool::{DrainConfig, EventSpool, SpoolMetrics};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_harness::TestDatabase;
use sf_harness::netns::{self, FabricNode};
use sf_hostnet::{HostNetConfig, NetlinkHostNet};
use sf_proto::v1 as pb;
use sf_schema::node::NodeCapacity;
use sf_schema::{ClusterOperation, Instance, Network, Node as NodeObject};
use tokio::sync::watch;

use host::{HostLog, Observed};

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
    /// The hypervisor nodes (empty until [`Env::start_nodes`]).
    pub nodes: Vec<Node>,
    /// Their namespaces; dropped after the nodes.
    fabric: Vec<FabricNode>,
    /// The nodes' storage.
    storage: Option<tempfile::TempDir>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &self.clusters {
            c.shutdown.trigger();
        }
        let busy = self.nodes.iter().any(|n| n.in_flight() > 0);
        for node in &mut self.nodes {
            node.kill();
        }
        // What the agents plumbed per network (namespaces named after the node, with
        // their dnsmasq); the node namespaces go with `fabric`. Host networking runs on
        // threads of its own that outlive a killed agent for a moment: when work was
        // in flight, purge again once it has ended.
        for node in &self.nodes {
            sf_hostnet::purge_node_namespaces(&node.name);
        }
        if busy {
            std::thread::sleep(Duration::from_secs(1));
            for node in &self.nodes {
                sf_hostnet::purge_node_namespaces(&node.name);
            }
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

/// sf-api's configuration on `gateway_hosts` for these tests, plus `extra` flags.
fn api_config(gateway_hosts: &str, extra: &[String]) -> sf_api::Config {
    let mut flags = vec!["--log=warn".to_string()];
    flags.extend_from_slice(extra);
    sf_api::Config::on_loopback(gateway_hosts, SECRET, SEED, &flags).expect("sf-api config")
}

/// Serves sf-api with `config` on a free port of 127.0.0.1 (HTTPS when the config
/// names a certificate); returns its URL and its shutdown.
async fn serve_api(config: &sf_api::Config) -> (String, Shutdown) {
    let certs = config
        .tls()
        .map(|settings| sf_api::tls::CertStore::load(&settings).expect("TLS certificate"));
    let listener = sf_api::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind sf-api");
    let scheme = if certs.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    let app = sf_api::App::new(config, shutdown.clone()).expect("app");
    tokio::spawn(async move {
        let served = match certs {
            Some(certs) => sf_api::serve_app_tls(app, listener, certs).await,
            None => sf_api::serve_app(app, listener).await,
        };
        if let Err(e) = served {
            eprintln!("sf-api: {e}");
        }
    });
    (url, shutdown)
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

    let (url, api_shutdown) = serve_api(&api_config(&gateway_hosts, &[])).await;
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
        nodes: Vec::new(),
        fabric: Vec::new(),
        storage: None,
    }
}

impl Env {
    /// A second sf-api on the same gateway, serving HTTPS with a self-signed
    /// certificate written to `dir/cert.pem` (the CA to trust). Returns its URL and
    /// its shutdown.
    pub async fn start_https_api(&self, dir: &std::path::Path) -> (String, Shutdown) {
        let config = api_config(
            &self.gateway_hosts,
            &[
                format!("--api-tls-cert-path={}", dir.join("cert.pem").display()),
                format!("--api-tls-key-path={}", dir.join("key.pem").display()),
                "--api-tls-self-signed".to_string(),
            ],
        );
        serve_api(&config).await
    }

    /// sf-cluster's configuration for this system, plus `extra` flags; the
    /// [`ROOMY_SCHEDULER`] settings unless `extra` names them.
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
        for flag in ROOMY_SCHEDULER {
            let key = flag.split('=').next().unwrap_or(flag);
            if !extra.iter().any(|e| e.split('=').next() == Some(key)) {
                argv.push((*flag).to_string());
            }
        }
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

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The name of node `i`.
    pub fn node_name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
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

    pub fn nodes_api(&self) -> Api<NodeObject> {
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

    /// Deletes `name` through `api` and waits until it is gone (its finalizers done),
    /// or panics after `within`.
    pub async fn delete_and_wait_gone<K>(&self, api: &Api<K>, name: &str, within: Duration)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.delete(name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
        self.eventually(&format!("{name} gone"), within, || async {
            api.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }

    /// Every ClusterOperation of `operation_type` (e.g. `interface_hot_plug`).
    pub async fn operations_of_type(&self, operation_type: &str) -> Vec<ClusterOperation> {
        self.all_operations()
            .await
            .into_iter()
            .filter(|o| o.spec.operation_type.as_str() == operation_type)
            .collect()
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
        .create_operation(request)
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

/// The scheduler settings every sf-cluster of these tests gets unless the test names
/// its own: no per-node reservations (a small machine could schedule nothing with
/// Shaken Fist's) and room for far more small instances than any test makes.
pub const ROOMY_SCHEDULER: &[&str] = &[
    "--node-cpu-reservation-threads=0",
    "--node-ram-reservation-gb=0",
    "--node-disk-reservation-gb=0",
    "--cpu-overcommit-ratio=64",
    "--ram-overcommit-ratio=16",
    "--scheduler-disk-overcommit=16",
];

/// The per-operation heartbeat of the test agents (the agent's default is 10 s).
pub const OPERATION_HEARTBEAT: Duration = Duration::from_millis(500);

/// Starts [`start`] and `count` nodes (1 or 2) with their agents, once each Node is
/// `created` with its capacity; `None` (after saying why) when the test cannot run
/// here because it is not root.
pub async fn start_with_nodes(test: &str, count: usize) -> Option<Env> {
    start_with_agents(test, count, &AgentOptions::default()).await
}

/// [`start_with_nodes`] with agents running with `opts`.
pub async fn start_with_agents(test: &str, count: usize, opts: &AgentOptions) -> Option<Env> {
    if !netns::require_privileged(test) {
        return None;
    }
    let mut env = start().await;
    env.start_nodes(count, opts).await;
    Some(env)
}

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `SHAKENFIST_AGENT_TEST_OPERATION_DELAY_MS`: the pause between claiming and
    /// running each operation.
    pub operation_delay_ms: u64,
    /// `SHAKENFIST_AGENT_MAX_CONCURRENCY`.
    pub max_concurrency: u32,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            operation_delay_ms: 0,
            max_concurrency: 4,
        }
    }
}

/// One hypervisor node of the test (see the module contract).
pub struct Node {
    /// Node name (also its namespace's name and its Node object's).
    pub name: String,
    /// Registered with the `network` role.
    pub network_node: bool,
    /// Its mesh address (inside its namespace only).
    pub mesh_address: Ipv4Addr,
    /// `STORAGE_PATH`.
    pub storage: PathBuf,
    /// The host's libvirt (test driver): outlives agent restarts.
    pub libvirt: LibvirtHypervisor,
    /// The host changes its agents made, in order.
    pub host: HostLog,
    agent: Option<RunningAgent>,
}

/// An agent running in its own runtime.
struct RunningAgent {
    runtime: tokio::runtime::Runtime,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), String>>,
    metrics: AgentMetrics,
}

impl Node {
    /// The metrics of its current (or last) agent: `claims` counts operations it
    /// claimed, `in_flight` those executing now.
    pub fn metrics(&self) -> Option<AgentMetrics> {
        self.agent.as_ref().map(|a| a.metrics.clone())
    }

    /// Operations its running agent executes now (0 without an agent).
    pub fn in_flight(&self) -> i64 {
        self.agent.as_ref().map_or(0, |a| a.metrics.in_flight.get())
    }

    /// Operations its running agent has claimed (0 without an agent).
    pub fn claims(&self) -> u64 {
        self.agent.as_ref().map_or(0, |a| a.metrics.claims.get())
    }

    /// Whether an agent runs for it.
    pub fn agent_running(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| !a.task.is_finished())
    }

    /// Whether link `name` exists in its namespace.
    pub fn has_link(&self, name: &str) -> bool {
        std::process::Command::new("ip")
            .args(["-n", &self.name, "link", "show", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills the agent: its runtime goes with every task (no drain, no release).
    fn kill(&mut self) {
        if let Some(a) = self.agent.take() {
            a.runtime.shutdown_background();
        }
    }

    /// The agent configuration for this node, as the binary would parse it.
    fn agent_config(&self, gateway_hosts: &str, opts: &AgentOptions) -> sf_agent::config::Config {
        let driver = self.storage.join("node.xml");
        let mut argv = vec![
            "sf-agent".to_string(),
            format!("--node-name={}", self.name),
            format!("--node-netns={}", self.name),
            format!("--node-mesh-nic={}", netns::MESH_NIC),
            format!("--node-mesh-ip={}", self.mesh_address),
            format!("--node-egress-nic={}", netns::EGRESS_NIC),
            format!("--storage-path={}", self.storage.display()),
            format!("--libvirt-uri=test://{}", driver.display()),
            "--libvirt-domain-type=test".to_string(),
            format!("--mariadb-gateway-hosts={gateway_hosts}"),
            format!("--mariadb-gateway-secret={SECRET}"),
            "--agent-heartbeat-interval=1".to_string(),
            "--agent-poll-interval=1".to_string(),
            "--agent-drain-timeout=1".to_string(),
            format!("--agent-max-concurrency={}", opts.max_concurrency),
            format!(
                "--agent-test-operation-delay-ms={}",
                opts.operation_delay_ms
            ),
            // The veth mesh carries 1500.
            "--max-hypervisor-mtu=1500".to_string(),
            "--log=warn".to_string(),
        ];
        if self.network_node {
            argv.push("--node-is-network-node".to_string());
        }
        sf_daemon::config::try_parse_from(argv).expect("sf-agent config")
    }
}

/// Runs the agent as `sf-agent`'s main does, on `libvirt` (the node's) and netlink in
/// the node's namespace, both observed into `host`.
async fn run_agent(
    config: sf_agent::config::Config,
    libvirt: LibvirtHypervisor,
    host: HostLog,
    metrics: AgentMetrics,
    shutdown: Shutdown,
) -> Result<(), String> {
    let node_uuid =
        sf_agent::identity::node_uuid(config.node_uuid.as_deref(), &config.storage_path)
            .map_err(|e| format!("node uuid: {e}"))?;
    let mut settings = config.agent_settings(node_uuid);
    settings.operation_heartbeat_interval = OPERATION_HEARTBEAT;
    let spool = Arc::new(
        EventSpool::open(
            config.spool.config(config.storage_path.join("spool")),
            SpoolMetrics::default(),
        )
        .map_err(|e| format!("event spool: {e}"))?,
    );
    let versions = libvirt
        .versions()
        .await
        .map_err(|e| format!("libvirt: {e}"))?;
    let mut lifecycle = config.lifecycle_settings();
    lifecycle.render.qemu_version = if versions.driver.eq_ignore_ascii_case("qemu") {
        versions.hypervisor_major_minor()
    } else {
        sf_agent::installed_qemu_version().await.and_then(|v| {
            let mut p = v.split('.');
            Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
        })
    };
    let mut net_config = HostNetConfig::new(
        settings.node_name.clone(),
        config.node_mesh_nic.clone(),
        config.node_mesh_ip,
        config.storage_path.join("hostnet"),
    );
    net_config.netns = config.node_netns.clone();
    net_config.egress_interface = config.node_egress_nic.clone();
    net_config.floating_netblock = Some(config.floating_network.clone());
    let net = NetlinkHostNet::new(net_config).map_err(|e| format!("hostnet: {e}"))?;
    let client = GatewayClient::from_host_list(
        &config.mariadb_gateway_hosts,
        &config.mariadb_gateway_secret,
        RetryPolicy::default(),
    )
    .map_err(|e| format!("gateway client: {e}"))?;
    let drain = spool
        .spawn_drain(client.clone(), DrainConfig::default(), shutdown.clone())
        .map_err(|e| format!("spool drain: {e}"))?;
    let agent = Agent::new(
        settings,
        AgentGateway::new(client),
        Lifecycle::new(Observed::new(libvirt, host.clone()), lifecycle),
        Observed::new(net, host),
        metrics,
    );
    agent.set_event_spool(spool);
    let ran = agent.run(shutdown.clone()).await;
    shutdown.trigger();
    let _ = drain.await;
    ran.map_err(|e| e.to_string())
}

impl Env {
    /// Makes `count` nodes (1 or 2; see the module contract), starts their agents with
    /// `opts` and waits until every Node is `created` with its capacity.
    pub async fn start_nodes(&mut self, count: usize, opts: &AgentOptions) {
        assert!(self.nodes.is_empty(), "nodes already started");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:x}x{n}", std::process::id());
        let names: Vec<String> = (1..=count).map(|i| format!("hv{i}-{tag}")).collect();
        let fabric = netns::node_fabric(&names.iter().map(String::as_str).collect::<Vec<_>>())
            .expect("node namespaces and their veth mesh");
        let storage = tempfile::Builder::new()
            .prefix("sf-cluster-nodes-")
            .tempdir()
            .expect("node storage");
        for (i, (name, net)) in names.iter().zip(&fabric).enumerate() {
            let dir = storage.path().join(name);
            std::fs::create_dir_all(&dir).expect("node storage directory");
            // A private test-driver state per node, as on two hosts.
            std::fs::write(dir.join("node.xml"), "<node/>\n").expect("test driver file");
            let libvirt =
                LibvirtHypervisor::connect(format!("test://{}", dir.join("node.xml").display()))
                    .await
                    .expect("libvirt test driver");
            self.nodes.push(Node {
                name: name.clone(),
                network_node: i == 0,
                mesh_address: net.mesh_address,
                storage: dir,
                libvirt,
                host: HostLog::default(),
                agent: None,
            });
        }
        self.fabric = fabric;
        self.storage = Some(storage);
        for i in 0..count {
            self.start_agent(i, opts.clone());
        }
        self.wait_nodes_ready().await;
    }

    /// Starts the agent of node `i` (it must not be running).
    pub fn start_agent(&mut self, i: usize, opts: AgentOptions) {
        let gateway_hosts = self.gateway_hosts.clone();
        let node = &mut self.nodes[i];
        assert!(node.agent.is_none(), "the agent of {} runs", node.name);
        let config = node.agent_config(&gateway_hosts, &opts);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("agent-{}", node.name))
            .enable_all()
            .build()
            .expect("agent runtime");
        let shutdown = Shutdown::new();
        let metrics = AgentMetrics::default();
        let task = runtime.spawn(run_agent(
            config,
            node.libvirt.clone(),
            node.host.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        node.agent = Some(RunningAgent {
            runtime,
            shutdown,
            task,
            metrics,
        });
    }

    /// Stops the agent of node `i` as SIGTERM would: no new claims, in-flight work
    /// drained or released; waits for it.
    pub async fn stop_agent(&mut self, i: usize) {
        let Some(a) = self.nodes[i].agent.take() else {
            return;
        };
        a.shutdown.trigger();
        let r = tokio::time::timeout(Duration::from_secs(30), a.task)
            .await
            .expect("the agent stops within 30 s")
            .expect("agent task");
        a.runtime.shutdown_background();
        if let Err(e) = r {
            panic!("the agent of {} failed: {e}", self.nodes[i].name);
        }
    }

    /// Kills the agent of node `i` as SIGKILL would.
    pub fn kill_agent(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Waits until every node's Node is `created`, with a capacity and a check-in.
    pub async fn wait_nodes_ready(&self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        self.eventually(
            "every node registered and created",
            Duration::from_secs(60),
            || {
                let names = names.clone();
                async move {
                    let nodes = self.nodes_api().list(&ListParams::default()).await.ok()?;
                    let ready = names.iter().all(|name| {
                        nodes.items.iter().any(|n| {
                            n.metadata.name.as_deref() == Some(name.as_str())
                                && n.status.as_ref().is_some_and(|s| {
                                    s.state.as_str() == "created"
                                        && s.capacity.is_some()
                                        && s.last_seen.is_some()
                                })
                        })
                    });
                    ready.then_some(())
                }
            },
        )
        .await;
    }

    /// The capacity node `i` reported.
    pub async fn capacity(&self, i: usize) -> NodeCapacity {
        self.nodes_api()
            .get(&self.nodes[i].name)
            .await
            .expect("get node")
            .status
            .and_then(|s| s.capacity)
            .expect("capacity reported")
    }

    /// Waits until node `i`'s agent is executing an operation it claimed after
    /// `claims_before` claims.
    pub async fn wait_claimed(&self, i: usize, claims_before: u64, what: &str) {
        let node = &self.nodes[i];
        self.eventually(what, Duration::from_secs(30), || async {
            (node.claims() > claims_before && node.in_flight() >= 1).then_some(())
        })
        .await;
    }
}
