//! The sf-database daemon as a process: start-up checks, authentication, the gRPC
//! surface through the client library, and surviving the death of one of two
//! instances.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sf_database::{MariaDbArgs, Store, connect, connect_pool, ensure_schema};
use sf_database_client::{ClientError, GatewayClient, RetryPolicy};
use sf_harness::{MariaDb, ServerOptions, TestDatabase};
use sf_proto::v1 as pb;
use tokio::sync::Mutex;

const SECRET: &str = "test-secret-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Gateway {
    child: Child,
    port: u16,
    metrics_port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_command(port: u16, db_port: u16, database: &str) -> Command {
    gateway_command_with_metrics(port, free_port(), db_port, database)
}

fn gateway_command_with_metrics(
    port: u16,
    metrics_port: u16,
    db_port: u16,
    database: &str,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sf-database"));
    cmd.env_clear()
        .env("SHAKENFIST_MARIADB_HOST", "127.0.0.1")
        .env("SHAKENFIST_MARIADB_PORT", db_port.to_string())
        .env("SHAKENFIST_MARIADB_USER", "root")
        .env("SHAKENFIST_MARIADB_DATABASE", database)
        .env("SHAKENFIST_MARIADB_GATEWAY_LISTEN", "127.0.0.1")
        .env("SHAKENFIST_MARIADB_GATEWAY_PORT", port.to_string())
        .env(
            "SHAKENFIST_MARIADB_GATEWAY_METRICS_PORT",
            metrics_port.to_string(),
        )
        .env("SHAKENFIST_MARIADB_GATEWAY_SECRET", SECRET)
        .env("SHAKENFIST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

async fn start_gateway(db: &TestDatabase) -> Gateway {
    let port = free_port();
    let metrics_port = free_port();
    let child = gateway_command_with_metrics(port, metrics_port, db.port, &db.name)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sf-database");
    let gw = Gateway {
        child,
        port,
        metrics_port,
    };
    // Ready when the health service answers SERVING.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("endpoint")
                .connect()
                .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "shakenfist.gateway.v1.Gateway".into(),
                })
                .await
                && r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return gw;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sf-database did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn schema_db() -> TestDatabase {
    let tdb = TestDatabase::new().expect("db");
    let db = connect(&MariaDbArgs::local_root(tdb.port, &tdb.name))
        .await
        .expect("connect");
    ensure_schema(&db).await.expect("schema");
    let store = Store::new(
        connect_pool(&MariaDbArgs::local_root(tdb.port, &tdb.name))
            .await
            .expect("pool"),
    );
    for ns in common::TEST_NAMESPACES {
        store.create_namespace(ns).await.expect("test namespace");
    }
    tdb
}

fn client(ports: &[u16]) -> GatewayClient {
    let hosts = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    GatewayClient::from_host_list(
        &hosts,
        SECRET,
        RetryPolicy {
            cool_down: Duration::from_millis(500),
            ..RetryPolicy::default()
        },
    )
    .expect("client")
}

fn instance(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"cpus": 1, "memory": 1024, "disks": [{"size": 8}]}
    }))
    .expect("json")
}

async fn create(c: &GatewayClient, name: &str) -> Result<pb::ResourceReply, ClientError> {
    let object = instance(name);
    c.call("create_resource", |mut g| {
        let object = object.clone();
        async move {
            g.create_resource(pb::CreateResourceRequest {
                object,
                dry_run: false,
            })
            .await
        }
    })
    .await
}

#[tokio::test]
async fn calls_without_the_secret_are_refused_and_with_it_work() {
    let db = schema_db().await;
    let gw = start_gateway(&db).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", gw.port))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut raw = pb::gateway_client::GatewayClient::new(channel);
    let err = raw
        .get_resource(pb::GetResourceRequest::default())
        .await
        .expect_err("no secret");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let c = client(&[gw.port]);
    let created = create(&c, "a").await.expect("create");
    assert!(created.resource_version > 0);
    let got = c
        .call("get_resource", |mut g| async move {
            g.get_resource(pb::GetResourceRequest {
                key: Some(pb::ObjectKey {
                    kind: "Instance".into(),
                    namespace: "demo".into(),
                    name: "a".into(),
                }),
                uid: String::new(),
                deleted: false,
            })
            .await
        })
        .await
        .expect("get");
    assert_eq!(got.object, created.object);
    let err = create(&c, "a").await.expect_err("duplicate");
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists));

    // A watch from before the create sees it.
    let mut stream = c
        .call("watch", |mut g| async move {
            g.watch(pb::WatchRequest {
                kind: "Instance".into(),
                from_revision: 0,
                progress_interval_ms: 100,
                ..Default::default()
            })
            .await
        })
        .await
        .expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("event");
    assert_eq!(first.r#type, pb::watch_event::Type::Added as i32);
    assert_eq!(first.revision, created.resource_version);
}

#[tokio::test]
async fn a_missing_secret_is_a_usage_error() {
    let db = schema_db().await;
    let out = gateway_command(free_port(), db.port, &db.name)
        .env_remove("SHAKENFIST_MARIADB_GATEWAY_SECRET")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHAKENFIST_MARIADB_GATEWAY_SECRET"));
}

#[tokio::test]
async fn it_refuses_to_start_without_the_schema() {
    let db = TestDatabase::new().expect("db");
    let out = gateway_command(free_port(), db.port, &db.name)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refuses to start"), "{err}");
    assert!(err.contains("sf-ctl ensure-mariadb-schema"), "{err}");
    assert!(err.lines().count() >= 3, "multi-line: {err}");
}

#[tokio::test]
async fn it_refuses_to_start_on_a_schema_version_mismatch() {
    let db = schema_db().await;
    db.query("UPDATE schema_versions SET version = 7 WHERE table_name = 'work_queue'")
        .expect("update");
    let out = gateway_command(free_port(), db.port, &db.name)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("table work_queue: version 7 is NEWER"),
        "{err}"
    );
}

#[tokio::test]
async fn it_refuses_to_start_on_a_latin1_server() {
    let server = MariaDb::start(&ServerOptions::latin1()).expect("server");
    let db = server.create_database().expect("db");
    let out = gateway_command(free_port(), db.port, &db.name)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("found latin1; expected utf8mb4"), "{err}");
}

/// Killing one of two instances during a write load: the client keeps working through
/// the other, and every acknowledged write is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_two_gateways_loses_no_acknowledged_write() {
    let db = schema_db().await;
    let mut a = start_gateway(&db).await;
    let b = start_gateway(&db).await;
    let c = client(&[a.port, b.port]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, acked, stop, errors) = (c.clone(), acked.clone(), stop.clone(), errors.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                let name = format!("w{w}-{i}");
                match create(&c, &name).await {
                    Ok(r) => acked.lock().await.push((name, r.resource_version)),
                    // A create whose first attempt reached the killed instance may have
                    // committed; its retry then says AlreadyExists. Not acknowledged
                    // to us, so not counted either way.
                    Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = acked.lock().await.len();
    assert!(before_kill > 0, "no writes before the kill");
    a.child.kill().expect("kill -9");
    let _ = a.child.wait();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > before_kill,
        "writes continued through the survivor ({before_kill} -> {})",
        acked.len()
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "the client surfaced errors instead of retrying"
    );
    // Every acknowledged write is stored, at its revision or later.
    let names = db
        .query("SELECT name FROM resources WHERE kind = 'Instance'")
        .expect("names");
    let stored: std::collections::HashSet<&str> = names.lines().collect();
    for (name, _) in &acked {
        assert!(
            stored.contains(name.as_str()),
            "acknowledged {name} is missing"
        );
    }
    drop(b);
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn metrics_count_requests_by_operation() {
    let db = schema_db().await;
    let gw = start_gateway(&db).await;
    let c = client(&[gw.port]);
    create(&c, "m").await.expect("create");
    // One queue write: one combined round carrying one call.
    let object = serde_json::to_vec(&json!({
        "apiVersion": "shakenfist.io/v1alpha1", "kind": "ClusterOperation",
        "metadata": {"name": "m-op", "namespace": "default"},
        "spec": {
            "operationType": "instance_power_on",
            "target": {"kind": "Instance", "name": "i", "namespace": "default",
                       "uid": "00000000-0000-0000-0000-0000000000aa"},
            "priority": "normal",
        }
    }))
    .expect("json");
    c.create_operation(pb::CreateOperationRequest {
        object,
        delay_ms: 0,
    })
    .await
    .expect("create operation");
    let text = http_get(gw.metrics_port, "/metrics").await;
    assert!(
        text.contains("database_combined_batches_total{kind=\"writes\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("database_combined_calls_total{kind=\"writes\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("database_requests_total{operation=\"create_resource\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("database_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("database_queue_depth"), "{text}");
    assert!(text.contains("database_events_rows"), "{text}");
}

/// SIGTERM: health turns NOT_SERVING, open watches end UNAVAILABLE (so clients re-watch
/// elsewhere), and the process exits cleanly.
#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let db = schema_db().await;
    let mut gw = start_gateway(&db).await;
    let c = client(&[gw.port]);
    let mut stream = c
        .call("watch", |mut g| async move {
            g.watch(pb::WatchRequest {
                kind: "Instance".into(),
                from_revision: 0,
                progress_interval_ms: 100,
                ..Default::default()
            })
            .await
        })
        .await
        .expect("watch");
    let status = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the watch ends when draining");
    assert_eq!(ended, Some(tonic::Code::Unavailable));
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = gw.child.try_wait().expect("wait") {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "sf-database did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
}
