//! Shared set-up of the `sf` tests: a fresh database on the run's private MariaDB, an
//! in-process sf-database gateway and sf-api on 127.0.0.1 (ephemeral ports), a
//! `system` key stored through the gateway (`PutKey` with `sf_api::auth::hash_key`),
//! namespace `demo`, and a private `sf` configuration file; [`Env::sf`] runs the real
//! `sf` binary against it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sf_daemon::Shutdown;
use sf_database::daemon as gateway_daemon;
use sf_database::{MariaDbArgs, connect, ensure_schema};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_harness::TestDatabase;

pub const SECRET: &str = "sf-cli-test-secret-0123456789";
pub const SEED: &str = "sf-cli-test-auth-seed-0123456789";
/// The clear key of the `system` namespace's key `test`.
pub const SYSTEM_KEY: &str = "system-test-key-0123456789";

/// One test's system.
pub struct Env {
    /// The database.
    pub db: TestDatabase,
    /// sf-api's base URL.
    pub url: String,
    /// A gateway client.
    pub gateway: GatewayClient,
    /// Its `MARIADB_GATEWAY_HOSTS`.
    pub gateway_hosts: String,
    /// Holds the `sf` config file (and HOME) of this test.
    pub dir: tempfile::TempDir,
    /// The certificate file of an HTTPS sf-api (the CA `sf` trusts).
    pub ca_file: Option<PathBuf>,
    shutdowns: Vec<Shutdown>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for s in &self.shutdowns {
            s.trigger();
        }
    }
}

/// The result of one `sf` run.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Run {
    /// Panics unless the exit code is 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "sf failed: {self:?}");
        self
    }
}

async fn start_gateway(db: &TestDatabase) -> (SocketAddr, Shutdown) {
    gateway_daemon::spawn_local(db.port, &db.name, 4, SECRET)
        .await
        .expect("in-process sf-database")
}

/// Starts everything; `api_args` are extra sf-api flags.
pub async fn start_with(api_args: &[&str]) -> Env {
    let db = TestDatabase::new().expect("test database");
    let args = MariaDbArgs::local_root(db.port, &db.name);
    let conn = connect(&args).await.expect("connect");
    ensure_schema(&conn).await.expect("schema");
    conn.close().await.expect("close");

    let (gateway_addr, gateway_shutdown) = start_gateway(&db).await;
    let gateway_hosts = gateway_addr.to_string();
    let extra: Vec<String> = api_args.iter().map(ToString::to_string).collect();
    let config =
        sf_api::Config::on_loopback(&gateway_hosts, SECRET, SEED, &extra).expect("sf-api config");
    let listener = sf_api::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind sf-api");
    // HTTPS when the flags name a certificate (its file is the CA `sf` trusts).
    let certs = config
        .tls()
        .map(|settings| sf_api::tls::CertStore::load(&settings).expect("TLS certificate"));
    let ca_file = config.api_tls_cert_path.clone().filter(|_| certs.is_some());
    let scheme = if certs.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().expect("addr"));
    let api_shutdown = Shutdown::new();
    let app = sf_api::App::new(&config, api_shutdown.clone()).expect("app");
    tokio::spawn(async move {
        let served = match certs {
            Some(certs) => sf_api::serve_app_tls(app, listener, certs).await,
            None => sf_api::serve_app(app, listener).await,
        };
        if let Err(e) = served {
            eprintln!("sf-api: {e}");
        }
    });
    let gateway = GatewayClient::from_host_list(&gateway_hosts, SECRET, RetryPolicy::default())
        .expect("gateway client");
    let env = Env {
        db,
        url,
        gateway,
        gateway_hosts: gateway_hosts.clone(),
        dir: tempfile::tempdir().expect("tempdir"),
        ca_file,
        shutdowns: vec![api_shutdown, gateway_shutdown],
    };
    env.wait_ready().await;
    env.add_namespace("system").await;
    env.add_namespace("demo").await;
    env.put_key("system", "test", SYSTEM_KEY).await;
    let mut config = format!(
        "apiUrl: {}\nnamespace: system\nkey: {SYSTEM_KEY}\n",
        env.url
    );
    if let Some(ca) = &env.ca_file {
        config.push_str(&format!("caFile: {}\n", ca.display()));
    }
    std::fs::write(env.config_path(), config).expect("write sf config");
    env
}

/// Starts everything with default settings.
pub async fn start() -> Env {
    start_with(&[]).await
}

impl Env {
    /// The `sf` configuration file of this test.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// A file in the test's directory with `text`.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// A `std::process::Command` for `sf` with this test's configuration and a clean
    /// environment (no SHAKENFIST_* from the caller).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sf"));
        command
            .args(args)
            .env("SF_CONFIG", self.config_path())
            .env("HOME", self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("SHAKENFIST_API_URL")
            .env_remove("SHAKENFIST_NAMESPACE")
            .env_remove("SHAKENFIST_KEY")
            .env_remove("SHAKENFIST_TOKEN")
            .env_remove("SF_CA_FILE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `sf args...` to completion (60 s at most).
    pub async fn sf(&self, args: &[&str]) -> Run {
        self.sf_with(args, |_| {}).await
    }

    /// Runs `sf args...` after `adjust` changes its command.
    pub async fn sf_with(
        &self,
        args: &[&str],
        adjust: impl FnOnce(&mut tokio::process::Command),
    ) -> Run {
        let mut command = self.command(args);
        adjust(&mut command);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("sf {args:?} did not finish within 60 s"))
            .expect("run sf");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Waits until `/readyz` says ready.
    pub async fn wait_ready(&self) {
        let mut config = kube::Config::new(self.url.parse().expect("url"));
        config.root_cert = self
            .ca_file
            .as_deref()
            .map(|ca| sf_client::load_ca_file(ca).expect("CA file"));
        let client = kube::Client::try_from(config).expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = http::Request::get("/readyz")
                .body(kube::client::Body::empty())
                .expect("request");
            if let Ok(response) = client.send(request).await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "sf-api did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates namespace `ns` through the gateway (fine if it exists).
    pub async fn add_namespace(&self, ns: &str) {
        if let Err(e) = self.api_gateway().create_namespace(ns).await {
            assert_eq!(
                e.code(),
                Some(tonic::Code::AlreadyExists),
                "create namespace {ns}: {e}"
            );
        }
    }

    /// Stores key `key_name` of `ns` through the gateway.
    pub async fn put_key(&self, ns: &str, key_name: &str, key: &str) {
        let key_hash = sf_api::auth::hash_key(key).expect("hash key");
        self.api_gateway()
            .put_key(ns, key_name, &key_hash)
            .await
            .expect("put key");
    }

    /// sf-database as sf-api calls it (namespaces and keys).
    pub fn api_gateway(&self) -> sf_api::gateway::Gateway {
        sf_api::gateway::Gateway::new(&self.gateway_hosts, SECRET).expect("gateway")
    }

    /// Rows of `kind` in the resources table.
    pub fn count_rows(&self, kind: &str) -> u64 {
        let out = self
            .db
            .query(&format!(
                "SELECT COUNT(*) FROM resources WHERE kind = '{kind}'"
            ))
            .expect("query");
        out.lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no count in {out:?}"))
    }

    /// `sf get KIND NAME -o json` parsed.
    pub async fn get_json(&self, kind: &str, name: &str) -> serde_json::Value {
        let run = self
            .sf(&["-n", "demo", "get", kind, name, "-o", "json"])
            .await
            .ok();
        serde_json::from_str(&run.stdout).expect("get -o json is JSON")
    }
}

/// A Network and an Instance in `demo`.
pub const WEB: &str = "\
apiVersion: shakenfist.io/v1alpha1
kind: Network
metadata:
  name: web
  namespace: demo
spec:
  netblock: 10.0.0.0/24
  provideDhcp: true
---
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata:
  name: web-1
  namespace: demo
  labels: {tier: web}
spec:
  cpus: 1
  memory: 512
  disks:
    - size: 8
  networks:
    - network: web
  powerState: \"on\"
";

/// Whether a path exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}
