//! The whole system as processes, for the end-to-end tests.
//!
//! Contract:
//! - [`System::start`] starts, from the workspace's built binaries (`target/debug`, or
//!   `SF_E2E_BIN_DIR`): a private MariaDB of its own (tests restart it), the schema,
//!   two sf-database instances, sf-api, sf-cluster and two sf-agents on the libvirt
//!   test driver. Each agent's host networking lives in a network namespace this
//!   module creates (`sf_harness::netns::node_fabric`, shared with the sf-cluster
//!   tests); the two are joined by a veth "mesh" with addresses from 192.0.2.0/24
//!   (TEST-NET-1) that exist only inside those namespaces, and each has a dead-end
//!   egress veth. Every daemon talks to the others on 127.0.0.1 only.
//! - Every process runs under `setpriv --pdeathsig KILL`, so none outlives the test;
//!   dropping the [`System`] stops them and deletes the namespaces (and the agents'
//!   per-network namespaces, through `sf_hostnet::purge_node_namespaces`).
//! - Tests drive the system only through the `sf` binary ([`System::sf`]) and HTTP.
//! - Needs root (network namespaces). [`require_root`] says whether to run: not root
//!   prints why the test is skipped, unless `SF_REQUIRE_PRIVILEGED=1`, which fails.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sf_harness::netns::{self, Netns};
use sf_harness::{HarnessError, MariaDb, ServerOptions};

/// The gateway secret every daemon of a test system shares.
pub const GATEWAY_SECRET: &str = "e2e-gateway-secret-0123456789";
/// The token-signing seed of sf-api.
pub const AUTH_SEED: &str = "e2e-auth-seed-0123456789abcdef";

/// Errors of starting or driving a system.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// A binary is not built.
    #[error("{0} is not built: run `cargo build --workspace` first (or set SF_E2E_BIN_DIR)")]
    MissingBinary(PathBuf),
    /// The private MariaDB failed.
    #[error("private MariaDB: {0}")]
    MariaDb(#[from] sf_harness::HarnessError),
    /// A process could not be spawned.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The process.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A set-up command failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
    /// Local file or socket I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether privileged tests may run here: `true` as root; otherwise prints why the
/// test is skipped and returns `false`, or panics under `SF_REQUIRE_PRIVILEGED=1`
/// (the shared [`sf_harness::netns::require_privileged`]).
pub fn require_root(test: &str) -> bool {
    sf_harness::netns::require_privileged(test)
}

/// Where the binaries are.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("SF_E2E_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug"),
    }
}

fn binary(name: &str) -> Result<PathBuf, E2eError> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(E2eError::MissingBinary(path))
    }
}

/// A free TCP port on 127.0.0.1 (closed again; the daemon binds it next).
pub fn free_port() -> Result<u16, E2eError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| E2eError::Io {
        what: "pick a free port".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| E2eError::Io {
            what: "pick a free port".into(),
            source,
        })
}

fn run(cmd: &mut Command) -> Result<Output, E2eError> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| E2eError::Io {
        what: line.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(E2eError::Command {
            command: line,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// A fabric set-up failure as the command that failed (not as a MariaDB error).
fn fabric_error(e: HarnessError) -> E2eError {
    match e {
        HarnessError::Command { command, output } => E2eError::Command { command, output },
        other => E2eError::MariaDb(other),
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, E2eError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(E2eError::Timeout {
                what: what.into(),
                secs: timeout.as_secs(),
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// One daemon process.
#[derive(Debug)]
pub struct Proc {
    /// Its name in logs.
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(
        name: &str,
        program: PathBuf,
        args: &[String],
        env: Vec<(String, String)>,
        logs: &Path,
    ) -> Self {
        Self {
            name: name.into(),
            program,
            args: args.to_vec(),
            env,
            log: logs.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts (or starts again) the process, appending to its log.
    pub fn start(&mut self) -> Result<(), E2eError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| E2eError::Io {
                what: format!("open {}", self.log.display()),
                source,
            })?;
        let err = log.try_clone().map_err(|source| E2eError::Io {
            what: "clone log handle".into(),
            source,
        })?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SHAKENFIST_LOG", "info")
            .env("SHAKENFIST_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = cmd.spawn().map_err(|source| E2eError::Spawn {
            name: self.name.clone(),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Sets (or with `None` removes) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// One hypervisor node of the test system.
#[derive(Debug)]
pub struct Node {
    /// Node name (also the prefix of its per-network namespaces).
    pub name: String,
    /// Its mesh address (inside its namespace only).
    pub mesh_address: String,
    /// The namespace holding its host networking.
    pub netns: Netns,
    /// Its agent.
    pub agent: Proc,
    /// Its storage directory.
    pub storage: PathBuf,
}

/// Options of a test system.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// Number of agents (nodes), 1 or 2.
    pub agents: usize,
    /// Seconds after which the reaper re-queues a claimed operation.
    pub stuck_threshold_secs: u64,
    /// Fault injection: the agents pause this long between claiming and running an
    /// operation (0: none).
    pub agent_operation_delay_ms: u64,
}

impl Default for SystemOptions {
    fn default() -> Self {
        Self {
            agents: 2,
            stuck_threshold_secs: 20,
            agent_operation_delay_ms: 0,
        }
    }
}

/// A running system.
pub struct System {
    /// Scratch directory: logs, storage, sf config.
    pub dir: tempfile::TempDir,
    /// The private MariaDB.
    pub mariadb: MariaDb,
    /// The sf-database instances.
    pub gateways: Vec<Proc>,
    /// sf-api.
    pub api: Proc,
    /// sf-api's URL.
    pub api_url: String,
    /// sf-cluster.
    pub cluster: Proc,
    /// The nodes and their agents.
    pub nodes: Vec<Node>,
    /// The system namespace's key.
    pub system_key: String,
    _mesh: Option<Netns>,
}

impl Drop for System {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.agent.stop(Duration::from_secs(5));
        }
        // The per-network namespaces the agents made (sf-hostnet names them after
        // the node).
        for node in &self.nodes {
            sf_hostnet::purge_node_namespaces(&node.name);
        }
    }
}

impl System {
    /// Starts everything and waits until sf-api answers and every node is registered.
    pub fn start(opts: &SystemOptions) -> Result<Self, E2eError> {
        let dir = tempfile::Builder::new()
            .prefix("sf-e2e-")
            .tempdir()
            .map_err(|source| E2eError::Io {
                what: "create the scratch directory".into(),
                source,
            })?;
        let logs = dir.path().join("logs");
        fs::create_dir_all(&logs).map_err(|source| E2eError::Io {
            what: "create logs".into(),
            source,
        })?;
        let mariadb = MariaDb::start(&ServerOptions::default())?;
        mariadb.execute(
            "CREATE DATABASE shakenfist CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        )?;
        let db_env = vec![
            (
                "SHAKENFIST_MARIADB_HOST".to_string(),
                "127.0.0.1".to_string(),
            ),
            (
                "SHAKENFIST_MARIADB_PORT".to_string(),
                mariadb.port().to_string(),
            ),
            ("SHAKENFIST_MARIADB_USER".to_string(), "root".to_string()),
            (
                "SHAKENFIST_MARIADB_DATABASE".to_string(),
                "shakenfist".to_string(),
            ),
        ];
        run(Command::new(binary("sf-ctl")?)
            .arg("ensure-mariadb-schema")
            .envs(db_env.iter().cloned()))?;

        // Two gateways.
        let mut gateways = Vec::new();
        let mut hosts = Vec::new();
        for i in 1..=2 {
            let port = free_port()?;
            let metrics = free_port()?;
            let mut env = db_env.clone();
            env.extend([
                (
                    "SHAKENFIST_MARIADB_GATEWAY_SECRET".to_string(),
                    GATEWAY_SECRET.to_string(),
                ),
                (
                    "SHAKENFIST_MARIADB_GATEWAY_PORT".to_string(),
                    port.to_string(),
                ),
                (
                    "SHAKENFIST_MARIADB_GATEWAY_METRICS_PORT".to_string(),
                    metrics.to_string(),
                ),
            ]);
            let mut p = Proc::new(
                &format!("sf-database-{i}"),
                binary("sf-database")?,
                &["--listen=127.0.0.1".to_string()],
                env,
                &logs,
            );
            p.start()?;
            wait_port(&mut p, port)?;
            gateways.push(p);
            hosts.push(format!("127.0.0.1:{port}"));
        }
        let gateway_env = vec![
            (
                "SHAKENFIST_MARIADB_GATEWAY_HOSTS".to_string(),
                hosts.join(","),
            ),
            (
                "SHAKENFIST_MARIADB_GATEWAY_SECRET".to_string(),
                GATEWAY_SECRET.to_string(),
            ),
        ];

        // The system key.
        let out = run(Command::new(binary("sf-ctl")?)
            .args(["bootstrap-system-key", "--key-name", "e2e"])
            .envs(db_env.iter().cloned()))?;
        let system_key = String::from_utf8_lossy(&out.stdout).trim().to_string();

        // sf-api.
        let api_port = free_port()?;
        let mut env = gateway_env.clone();
        env.extend([
            ("SHAKENFIST_API_PORT".to_string(), api_port.to_string()),
            ("SHAKENFIST_API_LISTEN".to_string(), "127.0.0.1".to_string()),
            (
                "SHAKENFIST_AUTH_SECRET_SEED".to_string(),
                AUTH_SEED.to_string(),
            ),
        ]);
        env.extend(no_reservations());
        let mut api = Proc::new("sf-api", binary("sf-api")?, &[], env, &logs);
        api.start()?;
        wait_port(&mut api, api_port)?;
        let api_url = format!("http://127.0.0.1:{api_port}");

        // sf-cluster.
        let mut env = gateway_env.clone();
        env.extend([
            ("SHAKENFIST_API_URL".to_string(), api_url.clone()),
            (
                "SHAKENFIST_CLUSTER_NAMESPACE".to_string(),
                "system".to_string(),
            ),
            ("SHAKENFIST_CLUSTER_KEY".to_string(), system_key.clone()),
            (
                "SHAKENFIST_CLUSTER_METRICS_PORT".to_string(),
                free_port()?.to_string(),
            ),
            (
                "SHAKENFIST_CLUSTER_OP_STUCK_THRESHOLD".to_string(),
                opts.stuck_threshold_secs.to_string(),
            ),
            (
                "SHAKENFIST_CLUSTER_OP_REAPER_INTERVAL".to_string(),
                "2".to_string(),
            ),
            // Unused blob files go within seconds, not an hour, so tests can see it.
            ("SHAKENFIST_BLOB_GC_GRACE".to_string(), "2".to_string()),
            ("SHAKENFIST_BLOB_GC_RETRY".to_string(), "3".to_string()),
            ("SHAKENFIST_BLOB_GC_RECORD".to_string(), "3".to_string()),
        ]);
        env.extend(no_reservations());
        let mut cluster = Proc::new("sf-cluster", binary("sf-cluster")?, &[], env, &logs);
        cluster.start()?;

        // Nodes: namespaces, a veth mesh between them, a dead-end egress each (the
        // shared sf_harness fabric).
        let tag = format!("{:x}", std::process::id() % 0xfff);
        let names: Vec<String> = (1..=opts.agents.clamp(1, 2))
            .map(|i| format!("e{tag}n{i}"))
            .collect();
        let fabric = netns::node_fabric(&names.iter().map(String::as_str).collect::<Vec<_>>())
            .map_err(fabric_error)?;
        let mut nodes = Vec::new();
        for ((i, name), node_net) in (1..).zip(names).zip(fabric) {
            let netns = node_net.netns;
            let mesh_address = node_net.mesh_address.to_string();
            let storage = dir.path().join(&name);
            fs::create_dir_all(&storage).map_err(|source| E2eError::Io {
                what: "create node storage".into(),
                source,
            })?;
            let driver = storage.join("node.xml");
            fs::write(&driver, "<node/>\n").map_err(|source| E2eError::Io {
                what: "write the libvirt test driver file".into(),
                source,
            })?;
            let mut env = gateway_env.clone();
            env.extend([
                ("SHAKENFIST_NODE_NAME".to_string(), name.clone()),
                ("SHAKENFIST_NODE_NETNS".to_string(), name.clone()),
                (
                    "SHAKENFIST_STORAGE_PATH".to_string(),
                    storage.display().to_string(),
                ),
                // A private test-driver state per agent (`<node/>`), as on two hosts.
                (
                    "SHAKENFIST_LIBVIRT_URI".to_string(),
                    format!("test://{}", driver.display()),
                ),
                (
                    "SHAKENFIST_LIBVIRT_DOMAIN_TYPE".to_string(),
                    "test".to_string(),
                ),
                (
                    "SHAKENFIST_NODE_MESH_NIC".to_string(),
                    netns::MESH_NIC.to_string(),
                ),
                ("SHAKENFIST_NODE_MESH_IP".to_string(), mesh_address.clone()),
                (
                    "SHAKENFIST_NODE_EGRESS_NIC".to_string(),
                    netns::EGRESS_NIC.to_string(),
                ),
                (
                    "SHAKENFIST_MAX_HYPERVISOR_MTU".to_string(),
                    "1500".to_string(),
                ),
                (
                    "SHAKENFIST_NODE_IS_NETWORK_NODE".to_string(),
                    (i == 1).to_string(),
                ),
                (
                    "SHAKENFIST_AGENT_METRICS_PORT".to_string(),
                    free_port()?.to_string(),
                ),
                (
                    "SHAKENFIST_AGENT_HEARTBEAT_INTERVAL".to_string(),
                    "2".to_string(),
                ),
                // Tests serve images on 127.0.0.1, standing in for an operator's
                // mirror that tenants may fetch from; every other internal address
                // stays refused to tenants.
                (
                    "SHAKENFIST_ARTIFACT_TENANT_ALLOWED_CIDRS".to_string(),
                    "127.0.0.1/32".to_string(),
                ),
                (
                    "SHAKENFIST_AGENT_TEST_OPERATION_DELAY_MS".to_string(),
                    opts.agent_operation_delay_ms.to_string(),
                ),
            ]);
            let agent = Proc::new(
                &format!("sf-agent-{i}"),
                binary("sf-agent")?,
                &[],
                env,
                &logs,
            );
            nodes.push(Node {
                name,
                mesh_address,
                netns,
                agent,
                storage,
            });
        }
        for node in &mut nodes {
            node.agent.start()?;
        }

        let system = Self {
            dir,
            mariadb,
            gateways,
            api,
            api_url,
            cluster,
            nodes,
            system_key,
            _mesh: None,
        };
        system.login()?;
        let want = system.nodes.len();
        let registered = wait_for("every node to register", Duration::from_secs(60), || {
            let nodes = system.sf_json(&["get", "nodes", "-o", "json"]).ok()?;
            let n = nodes["items"].as_array()?.len();
            (n >= want).then_some(())
        });
        if let Err(e) = registered {
            return Err(E2eError::Command {
                command: e.to_string(),
                output: format!(
                    "sf get nodes: {:?}\n{}",
                    system.sf_json(&["get", "nodes", "-o", "json"]),
                    system.logs()
                ),
            });
        }
        Ok(system)
    }

    /// The `sf` config file of this system.
    pub fn sf_config(&self) -> PathBuf {
        self.dir.path().join("sf-config.yaml")
    }

    fn login(&self) -> Result<(), E2eError> {
        let out = self.sf(&[
            "login",
            "--url",
            &self.api_url,
            "--namespace",
            "system",
            "--key",
            &self.system_key,
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(E2eError::Command {
                command: "sf login".into(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// A `sf` command for this system (not yet run).
    pub fn sf_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("sf"));
        cmd.args(args)
            .env("SF_CONFIG", self.sf_config())
            .env_remove("SHAKENFIST_API_URL")
            .env_remove("SHAKENFIST_NAMESPACE")
            .env_remove("SHAKENFIST_KEY")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `sf ARGS` and returns its output (whatever the exit code).
    pub fn sf(&self, args: &[&str]) -> Output {
        match self.sf_command(args).output() {
            Ok(o) => o,
            Err(e) => panic!("cannot run sf {args:?}: {e}"),
        }
    }

    /// Runs `sf ARGS` (which must succeed and print JSON) and parses stdout.
    pub fn sf_json(&self, args: &[&str]) -> Result<Value, E2eError> {
        let out = self.sf(args);
        if !out.status.success() {
            return Err(E2eError::Command {
                command: format!("sf {}", args.join(" ")),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|e| E2eError::Command {
            command: format!("sf {}", args.join(" ")),
            output: format!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)),
        })
    }

    /// Applies `yaml` (written to a file in the scratch directory).
    pub fn apply(&self, name: &str, yaml: &str) -> Output {
        let path = self.dir.path().join(format!("{name}.yaml"));
        if let Err(e) = fs::write(&path, yaml) {
            panic!("cannot write {}: {e}", path.display());
        }
        self.sf(&["apply", "-f", &path.display().to_string()])
    }

    /// A plain HTTP GET on sf-api (no token): status code and body.
    pub fn http_get(&self, path: &str) -> Result<(u16, String), E2eError> {
        self.http("GET", path, None, None)
    }

    /// A GET on sf-api as the system namespace (a token from `POST /auth` with the
    /// system key): status code and body. For the v0.8 paths, which `sf` does not use.
    pub fn system_get(&self, path: &str) -> Result<(u16, String), E2eError> {
        let auth = serde_json::json!({"namespace": "system", "key": self.system_key}).to_string();
        let (code, body) = self.http("POST", "/auth", None, Some(&auth))?;
        let token = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["access_token"].as_str().map(str::to_owned))
            .ok_or_else(|| E2eError::Command {
                command: "POST /auth".into(),
                output: format!("{code}: {body}"),
            })?;
        self.http("GET", path, Some(&token), None)
    }

    /// One HTTP/1.1 request to sf-api (`Connection: close`): status code and body.
    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, String), E2eError> {
        let addr = self.api_url.trim_start_matches("http://");
        let io = |source| E2eError::Io {
            what: format!("{method} {path}"),
            source,
        };
        let mut s = TcpStream::connect(addr).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        write!(s, "{head}\r\n{body}").map_err(io)?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(io)?;
        let code = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
        Ok((code, body.to_string()))
    }

    /// Every log's tail, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self
            .gateways
            .iter()
            .chain([&self.api, &self.cluster])
            .chain(self.nodes.iter().map(|n| &n.agent))
        {
            out.push_str(&format!("--- {} ---\n{}\n", p.name, p.log_tail(30)));
        }
        out
    }
}

/// No per-node reservations (a 2-core machine could schedule nothing with Shaken
/// Fist's): sf-cluster schedules with them and sf-api's `/admin/resources` reports them,
/// so both get the same.
fn no_reservations() -> Vec<(String, String)> {
    [
        "SHAKENFIST_NODE_CPU_RESERVATION_THREADS",
        "SHAKENFIST_NODE_RAM_RESERVATION_GB",
        "SHAKENFIST_NODE_DISK_RESERVATION_GB",
    ]
    .into_iter()
    .map(|k| (k.to_string(), "0".to_string()))
    .collect()
}

fn wait_port(p: &mut Proc, port: u16) -> Result<(), E2eError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if !p.running() {
            return Err(E2eError::Command {
                command: p.name.clone(),
                output: format!("exited before listening:\n{}", p.log_tail(30)),
            });
        }
        if Instant::now() > deadline {
            return Err(E2eError::Timeout {
                what: format!("{} to listen on {port}", p.name),
                secs: 60,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}
