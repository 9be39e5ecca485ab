//! Shared set-up of the sf-api daemon tests: a fresh database on the run's private
//! MariaDB, an in-process sf-database gateway and an in-process sf-api, both on
//! 127.0.0.1 with ephemeral ports, and a kube client pointed at sf-api.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{Value, json};
use sf_daemon::Shutdown;
use sf_database::daemon as gateway_daemon;
use sf_database::{MariaDbArgs, connect, ensure_schema};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_harness::TestDatabase;

pub const SECRET: &str = "api-test-secret-0123456789";
/// The token signing seed of the test sf-api.
pub const SEED: &str = "api-test-auth-seed-0123456789";
/// The clear key of the `system` namespace's key `test`.
pub const SYSTEM_KEY: &str = "system-test-key-0123456789";

/// One test's system.
pub struct Env {
    /// The database.
    pub db: TestDatabase,
    /// sf-api's base URL.
    pub url: String,
    /// A kube client on sf-api (default namespace `demo`) with a `system` token.
    pub client: kube::Client,
    /// A kube client without a token.
    pub anonymous: kube::Client,
    /// The `system` token `client` uses.
    pub system_token: String,
    /// A gateway client (for compaction and direct reads).
    pub gateway: GatewayClient,
    /// The gateways' `host:port` list.
    pub gateway_hosts: String,
    /// Stop the gateways (one per instance).
    pub gateway_shutdowns: Vec<Shutdown>,
    /// Stops sf-api.
    pub api_shutdown: Shutdown,
    /// The certificate clients trust (DER) when sf-api serves HTTPS.
    pub ca: Option<Vec<u8>>,
    /// The served certificates when sf-api serves HTTPS.
    pub certs: Option<std::sync::Arc<sf_api::tls::CertStore>>,
    api_task: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.api_shutdown.trigger();
        for shutdown in &self.gateway_shutdowns {
            shutdown.trigger();
        }
    }
}

async fn start_gateway(db: &TestDatabase) -> (SocketAddr, Shutdown) {
    gateway_daemon::spawn_local(db.port, &db.name, 6, SECRET)
        .await
        .expect("in-process sf-database")
}

/// Starts everything with default sf-api settings.
pub async fn start() -> Env {
    start_with(&[]).await
}

/// Starts everything; `api_args` are extra sf-api flags.
pub async fn start_with(api_args: &[&str]) -> Env {
    start_full(api_args, 1).await
}

/// Starts everything with `gateways` sf-database instances on the same database.
pub async fn start_full(api_args: &[&str], gateways: usize) -> Env {
    let db = TestDatabase::new().expect("test database");
    let args = MariaDbArgs::local_root(db.port, &db.name);
    let conn = connect(&args).await.expect("connect");
    ensure_schema(&conn).await.expect("schema");
    conn.close().await.expect("close");

    let mut addrs = Vec::new();
    let mut gateway_shutdowns = Vec::new();
    for _ in 0..gateways {
        let (addr, shutdown) = start_gateway(&db).await;
        addrs.push(addr.to_string());
        gateway_shutdowns.push(shutdown);
    }
    let gateway_hosts = addrs.join(",");
    let extra: Vec<String> = api_args.iter().map(ToString::to_string).collect();
    let config =
        sf_api::Config::on_loopback(&gateway_hosts, SECRET, SEED, &extra).expect("sf-api config");
    let listener = sf_api::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind sf-api");
    let api_shutdown = Shutdown::new();
    let app = sf_api::App::new(&config, api_shutdown.clone()).expect("app");
    // HTTPS when the flags name a certificate (the test trusts the served one).
    let certs = config
        .tls()
        .map(|settings| sf_api::tls::CertStore::load(&settings).expect("TLS certificate"));
    let ca = certs.as_ref().map(|c| {
        c.current_certificate()
            .expect("served certificate")
            .to_vec()
    });
    let scheme = if certs.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().expect("addr"));
    let api_task = {
        let certs = certs.clone();
        tokio::spawn(async move {
            let served = match certs {
                Some(certs) => sf_api::serve_app_tls(app, listener, certs).await,
                None => sf_api::serve_app(app, listener).await,
            };
            if let Err(e) = served {
                eprintln!("sf-api: {e}");
            }
        })
    };

    let anonymous = kube_client_ca(&url, None, ca.as_deref());
    let gateway = GatewayClient::from_host_list(&gateway_hosts, SECRET, RetryPolicy::default())
        .expect("gateway client");
    let mut env = Env {
        db,
        client: anonymous.clone(),
        anonymous,
        system_token: String::new(),
        url,
        gateway,
        gateway_hosts: gateway_hosts.clone(),
        gateway_shutdowns,
        api_shutdown,
        ca,
        certs,
        api_task,
    };
    env.wait_ready().await;
    env.add_namespace("system").await;
    // The kube clients' default namespace: objects need their namespace to exist.
    env.add_namespace("demo").await;
    env.put_key("system", "test", SYSTEM_KEY).await;
    env.system_token = env.token("system", SYSTEM_KEY).await;
    env.client = env.client_with(&env.system_token);
    env
}

/// A kube client on `url` (default namespace `demo`), with `token` when given.
pub fn kube_client(url: &str, token: Option<&str>) -> kube::Client {
    kube_client_ca(url, token, None)
}

/// [`kube_client`] trusting `ca` (a DER certificate) for an `https` URL.
pub fn kube_client_ca(url: &str, token: Option<&str>, ca: Option<&[u8]>) -> kube::Client {
    let mut kube_config = kube::Config::new(url.parse().expect("url"));
    kube_config.root_cert = ca.map(|der| vec![der.to_vec()]);
    kube_config.default_namespace = "demo".into();
    // Tests look at 503s themselves; kube would otherwise retry them with backoff.
    kube_config.default_retry = false;
    kube_config.auth_info.token = token.map(|t| secrecy::SecretString::from(t.to_string()));
    kube::Client::try_from(kube_config).expect("kube client")
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Env {
    /// Sends a raw request through the kube client's transport (as `system`).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        raw_on(&self.client, method, path, headers, body).await
    }

    /// A kube client with `token`.
    pub fn client_with(&self, token: &str) -> kube::Client {
        kube_client_ca(&self.url, Some(token), self.ca.as_deref())
    }

    /// Records `event` through the gateway (as a daemon's spool drains it).
    pub async fn record_event(&self, event: sf_proto::v1::Event) {
        self.gateway
            .call("record_event_batch", |mut g| {
                let request = sf_proto::v1::RecordEventBatchRequest {
                    events: vec![event.clone()],
                };
                async move { g.record_event_batch(request).await }
            })
            .await
            .expect("record");
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

    /// Stores key `key_name` of `ns` (hashed with `sf_api::auth::hash_key`) through
    /// the gateway.
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

    /// `POST /auth`: the raw answer.
    pub async fn auth(&self, ns: &str, key: &str) -> Answer {
        raw_on(
            &self.anonymous,
            "POST",
            "/auth",
            &[],
            Some(json!({"namespace": ns, "key": key})),
        )
        .await
    }

    /// A token for `ns` with `key`.
    pub async fn token(&self, ns: &str, key: &str) -> String {
        let answer = self.auth(ns, key).await;
        assert_eq!(answer.status, 200, "auth {ns}: {}", answer.text());
        let body = answer.json();
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// A namespace `ns` with key `k` = `key`, and a client with its token.
    pub async fn tenant(&self, ns: &str, key: &str) -> kube::Client {
        self.add_namespace(ns).await;
        self.put_key(ns, "k", key).await;
        let token = self.token(ns, key).await;
        self.client_with(&token)
    }
}

/// Sends a raw request through `client`'s transport.
pub async fn raw_on(
    client: &kube::Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    {
        let mut builder = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let bytes = body
            .map(|b| serde_json::to_vec(&b).expect("JSON"))
            .unwrap_or_default();
        if !bytes.is_empty()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(kube::client::Body::from(bytes))
            .expect("request");
        let response = client.send(request).await.expect("send");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }
}

impl Env {
    /// Waits until `/readyz` says ready.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = http::Request::get("/readyz")
                .body(kube::client::Body::empty())
                .expect("request");
            if let Ok(response) = self.client.send(request).await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "sf-api did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// Stops sf-api and waits for it to finish.
    pub async fn stop_api(self) -> Result<(), tokio::task::JoinError> {
        self.api_shutdown.trigger();
        let mut this = self;
        let task = std::mem::replace(&mut this.api_task, tokio::spawn(async {}));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("sf-api stops within 10 s")
    }
}

/// An Instance in `demo` (JSON), valid.
pub fn instance_json(name: &str) -> Value {
    json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": "demo", "labels": {"tier": "web"}},
        "spec": {
            "cpus": 1,
            "memory": 512,
            "disks": [{"size": 8}],
        }
    })
}

/// The same as a typed Instance.
pub fn instance(name: &str) -> sf_schema::Instance {
    serde_json::from_value(instance_json(name)).expect("instance")
}
