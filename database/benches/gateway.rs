//! The gateway benchmark: prints one JSON document of figures.
//!
//! `cargo bench -p sf-database --bench gateway` starts a private MariaDB with production
//! durability (`innodb_flush_log_at_trx_commit=1`), two in-process sf-database
//! gateways on 127.0.0.1, and drives them through the client library over gRPC, as the
//! other daemons do. Every loop is bounded in count and time. Figures:
//! - create+claim+complete throughput with 16 claimers, unbatched (one op per call) and
//!   batched (100 per call);
//! - enqueue→claim latency p50/p99 (one long-polling claimer), on the gateway that
//!   took the create and on another one;
//! - watch delivery latency p50/p99 (write acknowledged → event received), on the same
//!   instance and across instances;
//! - event batch insert rate;
//! - same-run comparisons (phase `baseline`): the naive SQL queue of
//!   research/queue-baselines.md, and the ceiling: the same rows as a job, written in
//!   hand-written SQL without a gateway.
//!
//! `SF_BENCH_PRODUCERS` (default 4) sets the concurrent creators of the throughput
//! phases, `SF_BENCH_BATCH` (default 100) the operations per call when batched. `SF_BENCH_SCALE` (default 1.0) scales the job counts; `SF_BENCH_PHASES` (comma-separated:
//! unbatched, batched, claim, watch, events, baseline; default all) picks phases.
//! `SF_BENCH_SOCKET=1` connects the gateways through MariaDB's Unix socket instead of
//! TCP. `SF_BENCH_MARIADB_ARGS` adds mariadbd options (whitespace-separated) for tuning
//! experiments. `SF_BENCH_LOCKMON=<ms>` prints InnoDB's lock-wait graph (every transaction, and who
//! waits for whom on which record) to stderr whenever a lock wait passes <ms> (2000 if
//! not a number): the tool
//! that found the full-scan locking behind multi-second completion stalls.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use sf_daemon::Shutdown;
use sf_database::daemon::{self, Config};
use sf_database::{MariaDbArgs, connect, ensure_schema};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_harness::{MariaDb, ServerOptions};
use sf_proto::v1 as pb;
use tokio::sync::Mutex;

const SECRET: &str = "bench-secret-0123456789";
const CLAIMERS: usize = 16;

/// Operations per create call, per claim and per completion call in the batched
/// phases (`SF_BENCH_BATCH`, default 100, at most 500: the gateway's claim limit).
fn batch() -> usize {
    std::env::var("SF_BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| (2..=500).contains(n))
        .unwrap_or(100)
}

/// Concurrent producers in the throughput phases (`SF_BENCH_PRODUCERS`, default 4).
fn producers() -> usize {
    std::env::var("SF_BENCH_PRODUCERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Where the CPU went during a phase: this process (client and both gateways) and
/// mariadbd.
struct CpuProbe {
    mariadbd: String,
    start: (f64, f64),
    at: Instant,
}

impl CpuProbe {
    fn start(mariadbd: &str) -> Self {
        Self {
            mariadbd: mariadbd.to_string(),
            start: (cpu_seconds("self"), cpu_seconds(mariadbd)),
            at: Instant::now(),
        }
    }

    fn finish(self) -> Value {
        let wall = self.at.elapsed().as_secs_f64();
        let own = cpu_seconds("self") - self.start.0;
        let db = cpu_seconds(&self.mariadbd) - self.start.1;
        json!({
            "wall_seconds": (wall * 100.0).round() / 100.0,
            "gateways_and_client_cpu_seconds": (own * 100.0).round() / 100.0,
            "mariadbd_cpu_seconds": (db * 100.0).round() / 100.0,
            "machine_busy_percent": ((own + db) / (wall * 2.0) * 100.0).round(),
        })
    }
}

/// MariaDB's statement counters (`SHOW GLOBAL STATUS`), to report statements per job.
async fn server_counters(pool: &sea_orm::sqlx::MySqlPool) -> HashMap<String, f64> {
    use sea_orm::sqlx::{self, Row};
    let rows = sqlx::query("SHOW GLOBAL STATUS")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            let name: String = r.try_get(0).ok()?;
            let value: String = r.try_get(1).ok()?;
            Some((name, value.parse().ok()?))
        })
        .collect()
}

/// Per-job deltas of the counters that tell where MariaDB's time goes.
fn counters_per_job(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    jobs: f64,
) -> Value {
    let keys = [
        "Questions",
        "Com_select",
        "Com_insert",
        "Com_update",
        "Com_delete",
        "Com_begin",
        "Com_commit",
        "Com_rollback",
        "Com_stmt_execute",
        "Handler_read_next",
        "Handler_read_key",
        "Innodb_row_lock_waits",
        "Innodb_row_lock_time",
        "Innodb_data_fsyncs",
        "Innodb_os_log_fsyncs",
    ];
    let mut out = serde_json::Map::new();
    for k in keys {
        let d = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        out.insert(
            k.to_string(),
            json!((d / jobs.max(1.0) * 100.0).round() / 100.0),
        );
    }
    Value::Object(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "samples": ms.len(),
        "p50_ms": (percentile(&ms, 0.50) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(&ms, 0.99) * 1000.0).round() / 1000.0,
        "max_ms": (ms.last().copied().unwrap_or(f64::NAN) * 1000.0).round() / 1000.0,
    })
}

/// The gateway's combining counters, scraped from its metrics endpoint: per `kind`,
/// (batches, calls).
async fn combining(metrics: SocketAddr) -> BTreeMap<String, (f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = BTreeMap::new();
    let Ok(mut s) = tokio::net::TcpStream::connect(metrics).await else {
        return out;
    };
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return out;
    }
    let mut text = String::new();
    if s.read_to_string(&mut text).await.is_err() {
        return out;
    }
    for line in text.lines() {
        for (name, second) in [
            ("database_combined_batches_total{kind=\"", false),
            ("database_combined_calls_total{kind=\"", true),
        ] {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let Some((kind, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            let e = out.entry(kind.to_string()).or_insert((0.0, 0.0));
            if second { e.1 += value } else { e.0 += value }
        }
    }
    out
}

/// Calls per combined transaction between two scrapes of every gateway, by kind.
fn calls_per_batch(
    before: &[BTreeMap<String, (f64, f64)>],
    after: &[BTreeMap<String, (f64, f64)>],
) -> Value {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (b, a) in before.iter().zip(after) {
        for (kind, (batches, calls)) in a {
            let (b0, c0) = b.get(kind).copied().unwrap_or((0.0, 0.0));
            let e = sums.entry(kind.clone()).or_insert((0.0, 0.0));
            e.0 += batches - b0;
            e.1 += calls - c0;
        }
    }
    let mut v = serde_json::Map::new();
    for (kind, (batches, calls)) in sums {
        v.insert(
            kind,
            json!({
                "batches": batches,
                "calls_per_batch": if batches > 0.0 { (calls / batches * 100.0).round() / 100.0 } else { 0.0 },
            }),
        );
    }
    Value::Object(v)
}

async fn scrape_all(metrics: &[SocketAddr]) -> Vec<BTreeMap<String, (f64, f64)>> {
    let mut out = Vec::new();
    for m in metrics {
        out.push(combining(*m).await);
    }
    out
}

/// A gateway on 127.0.0.1 over TCP to `port`, or through `socket` when given.
async fn start_gateway(
    port: u16,
    database: &str,
    socket: Option<&std::path::Path>,
) -> (SocketAddr, SocketAddr, Shutdown) {
    let mut args = vec![
        "sf-database".to_string(),
        "--mariadb-host=127.0.0.1".into(),
        format!("--mariadb-port={port}"),
        "--mariadb-user=root".into(),
        format!("--mariadb-database={database}"),
        "--mariadb-pool-size=24".into(),
        "--listen=127.0.0.1".into(),
        format!("--mariadb-gateway-secret={SECRET}"),
    ];
    if let Some(socket) = socket {
        args.push(format!("--mariadb-socket={}", socket.display()));
    }
    let config = Config::parse_from(args);
    let grpc = daemon::bind("gRPC", "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let metrics = daemon::bind("metrics", "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let metrics_addr = metrics.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = daemon::serve(config, grpc, metrics, s).await {
            eprintln!("gateway: {e}");
        }
    });
    (addr, metrics_addr, shutdown)
}

fn client(addrs: &[SocketAddr]) -> GatewayClient {
    let list = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    GatewayClient::from_host_list(&list, SECRET, RetryPolicy::default()).expect("client")
}

async fn wait_ready(c: &GatewayClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ok = c
            .call("list_resources", |mut g| async move {
                g.list_resources(pb::ListResourcesRequest {
                    kind: "Node".into(),
                    ..Default::default()
                })
                .await
            })
            .await
            .is_ok();
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateways did not come up");
}

fn operation(run: &str, i: usize, node: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "shakenfist.io/v1alpha1", "kind": "ClusterOperation",
        "metadata": {"name": format!("{run}-{i}"), "namespace": "bench"},
        "spec": {
            "operationType": "instance_power_on",
            // One target per op: per-target serialisation never blocks the bench.
            "target": {"kind": "Instance", "name": format!("i-{i}"), "namespace": "bench", "uid": uuid::Uuid::new_v4().to_string()},
            "node": node,
            "priority": "normal",
            "payload": {}
        }
    }))
    .expect("json")
}

/// Producers and 16 claimers run at once; returns jobs/s over the whole drain.
async fn throughput(c: &GatewayClient, run: &str, jobs: usize, batch: usize) -> Value {
    let nodes = ["hv-1", "hv-2", "hv-3", "hv-4"];
    let done = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let slowest = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut tasks = Vec::new();
    let producers = producers();
    let create_ms: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let claim_ms: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let complete_ms: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let empty_claims = Arc::new(AtomicU64::new(0));
    let claim_wait_ms = Arc::new(AtomicU64::new(0));
    for p in 0..producers {
        let c = c.clone();
        let run = run.to_string();
        let create_ms = create_ms.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < jobs {
                let call = Instant::now();
                let mut ops = Vec::new();
                while ops.len() < batch && i < jobs {
                    ops.push(pb::CreateOperationRequest {
                        object: operation(&run, i, nodes[i % nodes.len()]),
                        delay_ms: 0,
                    });
                    i += producers;
                }
                if batch == 1 {
                    let op = ops.pop().expect("one");
                    c.create_operation(op).await.expect("create");
                } else {
                    c.call("create_operations", |mut g| {
                        let operations = ops.clone();
                        async move {
                            g.create_operations(pb::CreateOperationsRequest { operations })
                                .await
                        }
                    })
                    .await
                    .expect("create batch");
                }
                create_ms
                    .lock()
                    .await
                    .push(call.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for w in 0..CLAIMERS {
        let c = c.clone();
        let done = done.clone();
        let errors = errors.clone();
        let slowest = slowest.clone();
        let claim_ms = claim_ms.clone();
        let complete_ms = complete_ms.clone();
        let empty_claims = empty_claims.clone();
        let claim_wait_ms = claim_wait_ms.clone();
        let node = nodes[w % nodes.len()].to_string();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while done.load(Ordering::Relaxed) < jobs as u64 && Instant::now() < deadline {
                n += 1;
                let claim_id = format!("{node}-{w}-{n}");
                let node = node.clone();
                let call = Instant::now();
                let claimed = c
                    .call("claim", |mut g| {
                        let (node, claim_id) = (node.clone(), claim_id.clone());
                        async move {
                            g.claim(pb::ClaimRequest {
                                node,
                                max: batch as u32,
                                claim_id,
                                wait_seconds: 1,
                                claimer: format!("bench-{w}"),
                                node_only: false,
                            })
                            .await
                        }
                    })
                    .await;
                let claimed = match claimed {
                    Ok(reply) => reply.operations,
                    Err(e) => {
                        errors.lock().await.push(format!("claim: {e}"));
                        continue;
                    }
                };
                if claimed.is_empty() {
                    empty_claims.fetch_add(1, Ordering::Relaxed);
                    claim_wait_ms.fetch_add(call.elapsed().as_millis() as u64, Ordering::Relaxed);
                    continue;
                }
                claim_ms.lock().await.push(call.elapsed().as_secs_f64() * 1000.0);
                let k = claimed.len() as u64;
                let call = Instant::now();
                if batch == 1 {
                    for op in claimed {
                        let reply = c
                            .call("complete", |mut g| {
                                let lease = op.lease;
                                async move { g.complete(pb::CompleteRequest { lease, result: b"{}".to_vec() }).await }
                            })
                            .await;
                        if let Err(e) = reply {
                            errors.lock().await.push(format!("complete: {e}"));
                        }
                    }
                } else {
                    let items: Vec<pb::CompleteRequest> = claimed
                        .iter()
                        .map(|op| pb::CompleteRequest {
                            lease: op.lease,
                            result: b"{}".to_vec(),
                        })
                        .collect();
                    let reply = c
                        .call("complete_batch", |mut g| {
                            let items = items.clone();
                            async move { g.complete_batch(pb::CompleteBatchRequest { items }).await }
                        })
                        .await;
                    match reply {
                        Ok(reply) => {
                            for r in reply.results.iter().filter(|r| !r.error_code.is_empty()) {
                                errors.lock().await.push(format!("complete_batch item: {} {}", r.error_code, r.error_message));
                            }
                        }
                        // A call that timed out may still commit: the stall is what is
                        // reported, the jobs are counted as done.
                        Err(e) => errors.lock().await.push(format!("complete_batch: {e}")),
                    }
                }
                complete_ms.lock().await.push(call.elapsed().as_secs_f64() * 1000.0);
                let took = call.elapsed().as_millis() as u64;
                slowest.fetch_max(took, Ordering::Relaxed);
                done.fetch_add(k, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let completed = done.load(Ordering::Relaxed);
    let errors = errors.lock().await.clone();
    json!({
        "jobs": jobs,
        "completed": completed,
        "errors": errors.len(),
        "first_errors": errors.iter().take(3).collect::<Vec<_>>(),
        "slowest_completion_call_ms": slowest.load(Ordering::Relaxed),
        "create_call_ms": summary(create_ms.lock().await.clone()),
        "successful_claim_call_ms": summary(claim_ms.lock().await.clone()),
        "completion_calls_ms": summary(complete_ms.lock().await.clone()),
        "empty_claim_calls": empty_claims.load(Ordering::Relaxed),
        "empty_claim_calls_total_ms": claim_wait_ms.load(Ordering::Relaxed),
        "batch": batch,
        "claimers": CLAIMERS,
        "producers": producers,
        "seconds": (secs * 100.0).round() / 100.0,
        "jobs_per_second": (completed as f64 / secs).round(),
    })
}

/// One claimer long-polls; ops are enqueued one at a time; latency from the create
/// call to the claim's return.
/// One claimer long-polls through `claims`; operations are created through `creates`
/// (the same gateway, or another one: then the claimer learns of the work through its
/// gateway's change feed, so the feed's poll interval bounds the latency).
async fn claim_latency(
    creates: &GatewayClient,
    claims: &GatewayClient,
    run: &str,
    samples: usize,
) -> Value {
    let c = claims;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut lat = Vec::new();
    let claimer = {
        let c = c.clone();
        let sent = sent.clone();
        let node = run.to_string();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0;
            while lat.len() < samples && Instant::now() < deadline {
                n += 1;
                let claimed = c
                    .call("claim", |mut g| {
                        let node = node.clone();
                        async move {
                            g.claim(pb::ClaimRequest {
                                node: node.clone(),
                                max: 1,
                                claim_id: format!("{node}-{n}"),
                                wait_seconds: 2,
                                claimer: "lat".into(),
                                node_only: false,
                            })
                            .await
                        }
                    })
                    .await
                    .expect("claim")
                    .operations;
                let now = Instant::now();
                for op in claimed {
                    let v: Value = serde_json::from_slice(&op.object).expect("json");
                    let name = v["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if let Some(t) = sent.lock().await.get(&name) {
                        lat.push(now.duration_since(*t).as_secs_f64() * 1000.0);
                    }
                    let lease = op.lease;
                    c.call("complete", |mut g| async move {
                        g.complete(pb::CompleteRequest {
                            lease,
                            result: Vec::new(),
                        })
                        .await
                    })
                    .await
                    .expect("complete");
                }
            }
            lat
        })
    };
    for i in 0..samples {
        let name = format!("{run}-{i}");
        let object = operation(run, i, run);
        sent.lock().await.insert(name, Instant::now());
        creates
            .create_operation(pb::CreateOperationRequest {
                object,
                delay_ms: 0,
            })
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lat.extend(claimer.await.expect("claimer"));
    summary(lat)
}

/// Writes through `writer`; watchers on `same` and `other` time each event from the
/// write's send and from its acknowledgement (negative when the event arrived before
/// the acknowledgement, as etcd's often do).
async fn watch_latency(
    writer: &GatewayClient,
    same: &GatewayClient,
    other: &GatewayClient,
    samples: usize,
) -> (Value, Value) {
    let sent: Arc<Mutex<HashMap<u64, (Instant, Instant)>>> = Arc::new(Mutex::new(HashMap::new()));
    let start_rev = writer
        .call("list_resources", |mut g| async move {
            g.list_resources(pb::ListResourcesRequest {
                kind: "WatchBench".into(),
                ..Default::default()
            })
            .await
        })
        .await
        .expect("list")
        .revision;
    let watch = |c: GatewayClient| {
        tokio::spawn(async move {
            let mut stream = c
                .call("watch", |mut g| async move {
                    g.watch(pb::WatchRequest {
                        kind: "WatchBench".into(),
                        from_revision: start_rev,
                        progress_interval_ms: 1000,
                        ..Default::default()
                    })
                    .await
                })
                .await
                .expect("watch");
            let mut received: Vec<(u64, Instant)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while received.len() < samples && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                    Ok(Ok(Some(ev))) if ev.r#type != pb::watch_event::Type::Progress as i32 => {
                        received.push((ev.revision, Instant::now()));
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
            received
        })
    };
    let w_same = watch(same.clone());
    let w_other = watch(other.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..samples {
        let object = serde_json::to_vec(&json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "WatchBench",
            "metadata": {"name": format!("w-{i}"), "namespace": "bench"}, "spec": {"i": i}
        }))
        .expect("json");
        let send = Instant::now();
        let reply = writer
            .call("create_resource", |mut g| {
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
            .expect("create");
        sent.lock()
            .await
            .insert(reply.resource_version, (send, Instant::now()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let times = sent.lock().await.clone();
    let figures = |received: Vec<(u64, Instant)>| {
        let mut from_send = Vec::new();
        let mut after_ack = Vec::new();
        for (rev, at) in received {
            if let Some((send, ack)) = times.get(&rev) {
                from_send.push(at.saturating_duration_since(*send).as_secs_f64() * 1000.0);
                let signed = if at >= *ack {
                    at.duration_since(*ack).as_secs_f64()
                } else {
                    -ack.duration_since(at).as_secs_f64()
                };
                after_ack.push(signed * 1000.0);
            }
        }
        json!({"from_send": summary(from_send), "after_ack": summary(after_ack)})
    };
    let same = figures(w_same.await.expect("watch same"));
    let other = figures(w_other.await.expect("watch other"));
    (same, other)
}

/// Same-run baseline: the naive SQL queue of research/queue-baselines.md (claim n with
/// SKIP LOCKED, then DELETE to complete) straight on MariaDB with 16 connections, no
/// gateway, no resources, no revisions. What our queue is compared against.
async fn naive_sql_queue(port: u16, database: &str, jobs: usize, batch: usize) -> Value {
    use sea_orm::sqlx::{self, Row, mysql::MySqlPoolOptions};
    let url = format!("mysql://root@127.0.0.1:{port}/{database}?ssl-mode=DISABLED");
    let pool = MySqlPoolOptions::new()
        .max_connections(CLAIMERS as u32 + 2)
        .connect(&url)
        .await
        .expect("pool");
    sqlx::query("DROP TABLE IF EXISTS naive_queue")
        .execute(&pool)
        .await
        .expect("drop");
    sqlx::query(
        "CREATE TABLE naive_queue (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, queue_name VARCHAR(64) NOT NULL, \
         priority TINYINT NOT NULL, scheduled_at DOUBLE NOT NULL, claimed_at DOUBLE NULL, claimed_by VARCHAR(64) NULL, \
         attempts INT NOT NULL DEFAULT 0, payload JSON, KEY ix_ready (queue_name, claimed_at, scheduled_at)) ENGINE=InnoDB",
    )
    .execute(&pool)
    .await
    .expect("create");
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(500) {
        let values = chunk
            .iter()
            .map(|i| format!("('q', {}, UNIX_TIMESTAMP(NOW(6)), '{{\"i\":{i}}}')", i % 10))
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO naive_queue (queue_name, priority, scheduled_at, payload) VALUES {values}"
        )))
        .execute(&pool)
        .await
        .expect("fill");
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for w in 0..CLAIMERS {
        let pool = pool.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < jobs as u64 && Instant::now() < deadline {
                // Deadlocks (REPEATABLE READ's gap locks) are retried, as a real client
                // would; anything else ends the bench.
                let claimed = retry_deadlocks(|| async {
                    let mut tx = pool.begin().await?;
                    let rows = sqlx::query(
                        "SELECT id FROM naive_queue WHERE queue_name = 'q' AND claimed_at IS NULL \
                         AND scheduled_at <= UNIX_TIMESTAMP(NOW(6)) ORDER BY scheduled_at LIMIT ? FOR UPDATE SKIP LOCKED",
                    )
                    .bind(batch as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                    if rows.is_empty() {
                        tx.commit().await?;
                        return Ok(None);
                    }
                    let ids: Vec<u64> = rows.iter().map(|r| r.get::<u64, _>(0)).collect();
                    let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                    // Text protocol (raw_sql), as sysbench sends it: each id list is a new
                    // statement text, and preparing it would churn sqlx's statement cache
                    // into the COM_STMT_CLOSE + Nagle stall (docs/mariadb.md), which is not
                    // the queue's cost.
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "UPDATE naive_queue SET claimed_at = UNIX_TIMESTAMP(NOW(6)), claimed_by = 'w{w}', attempts = attempts + 1 WHERE id IN ({list})"
                    )))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(Some((ids, list)))
                })
                .await;
                let Some((ids, list)) = claimed else { break };
                retry_deadlocks(|| async {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM naive_queue WHERE id IN ({list})")))
                        .execute(&pool)
                        .await
                        .map(|_| ())
                })
                .await;
                done.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    json!({"jobs": n, "batch": batch, "claimers": CLAIMERS, "seconds": (secs * 100.0).round() / 100.0, "jobs_per_second": (n as f64 / secs).round()})
}

/// Runs `attempt` (one transaction) until it does not end in a deadlock (1213) or a
/// lock wait timeout (1205); any other error ends the bench.
async fn retry_deadlocks<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sea_orm::sqlx::Error>>,
{
    loop {
        match attempt().await {
            Ok(v) => return v,
            // Deadlock (40001) or lock wait timeout (1205, HY000).
            Err(sea_orm::sqlx::Error::Database(e))
                if e.code().as_deref() == Some("40001")
                    || e.message().contains("Lock wait timeout") => {}
            Err(e) => panic!("naive pipeline: {e}"),
        }
    }
}

/// Same-run ceiling: the rows every create+claim+complete must write under DESIGN's
/// invariants (the queue row; the resource, its revision and its change-log entry at
/// create and again at complete; the claim's update; the claimed objects read back),
/// in hand-written SQL straight on MariaDB: `producers()` producers creating `batch`
/// per transaction and 16 claimers claiming and completing up to `batch` at once. No
/// gateway, gRPC, projection table, dependencies, change feed or wake-ups. What this
/// reaches bounds what any gateway over this MariaDB can reach on this machine.
async fn naive_full_pipeline(port: u16, database: &str, jobs: usize, batch: usize) -> Value {
    use sea_orm::sqlx::{self, Row, mysql::MySqlPoolOptions};
    let url = format!("mysql://root@127.0.0.1:{port}/{database}?ssl-mode=DISABLED");
    let producers = producers();
    // READ COMMITTED, like the gateway's sessions (REPEATABLE READ's gap locks make
    // concurrent inserts and SKIP LOCKED scans deadlock).
    let pool = MySqlPoolOptions::new()
        .max_connections((CLAIMERS + producers + 2) as u32)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&url)
        .await
        .expect("pool");
    for ddl in [
        "DROP TABLE IF EXISTS naive_q, naive_res, naive_log, naive_rev",
        "CREATE TABLE naive_rev (id TINYINT PRIMARY KEY, revision BIGINT UNSIGNED NOT NULL)",
        "INSERT INTO naive_rev VALUES (1, 0)",
        "CREATE TABLE naive_q (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, queue_name VARCHAR(64) NOT NULL, \
         priority TINYINT NOT NULL, scheduled_at DATETIME(6) NOT NULL, claimed_at DATETIME(6) NULL, \
         claimed_by VARCHAR(64) NULL, attempts INT NOT NULL DEFAULT 0, uid CHAR(36) NOT NULL, \
         KEY ix_ready (queue_name, claimed_at, priority, scheduled_at))",
        "CREATE TABLE naive_res (kind VARCHAR(63) NOT NULL, namespace VARCHAR(63) NOT NULL, name VARCHAR(253) NOT NULL, \
         uid CHAR(36) NOT NULL, resource_version BIGINT UNSIGNED NOT NULL, object JSON NOT NULL, \
         PRIMARY KEY (kind, namespace, name), UNIQUE KEY ux_uid (uid), KEY ix_rv (resource_version))",
        "CREATE TABLE naive_log (revision BIGINT UNSIGNED PRIMARY KEY, kind VARCHAR(63) NOT NULL, uid CHAR(36) NOT NULL, \
         object JSON NOT NULL, created_at DATETIME(6) NOT NULL, KEY ix_kind (kind, revision), KEY ix_created (created_at))",
    ] {
        sqlx::raw_sql(ddl).execute(&pool).await.expect("naive ddl");
    }
    // Values are the bench's own (names, uuids, JSON without quotes to escape).
    let lit = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"));
    let nodes = ["hv-1", "hv-2", "hv-3", "hv-4"];
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for p in 0..producers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < jobs && Instant::now() < deadline {
                let mut items = Vec::new();
                while items.len() < batch && i < jobs {
                    let uid = uuid::Uuid::new_v4().to_string();
                    let object = String::from_utf8(operation("n", i, nodes[i % nodes.len()])).expect("utf8");
                    items.push((format!("n-{i}"), uid, object, nodes[i % nodes.len()]));
                    i += producers;
                }
                retry_deadlocks(|| async {
                let mut tx = pool.begin().await?;
                let first: u64 = sqlx::query("UPDATE naive_rev SET revision = LAST_INSERT_ID(revision + ?) WHERE id = 1")
                    .bind(items.len() as u64)
                    .execute(&mut *tx)
                    .await?
                    .last_insert_id()
                    - items.len() as u64
                    + 1;
                let q = items.iter().map(|(_, uid, _, node)| format!("('node:{node}', 1, NOW(6), {})", lit(uid))).collect::<Vec<_>>().join(",");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("INSERT INTO naive_q (queue_name, priority, scheduled_at, uid) VALUES {q}")))
                    .execute(&mut *tx).await?;
                let r = items.iter().enumerate().map(|(k, (name, uid, obj, _))| format!("('ClusterOperation', 'bench', {}, {}, {}, {})", lit(name), lit(uid), first + k as u64, lit(obj))).collect::<Vec<_>>().join(",");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("INSERT INTO naive_res (kind, namespace, name, uid, resource_version, object) VALUES {r}")))
                    .execute(&mut *tx).await?;
                let l = items.iter().enumerate().map(|(k, (_, uid, obj, _))| format!("({}, 'ClusterOperation', {}, {}, NOW(6))", first + k as u64, lit(uid), lit(obj))).collect::<Vec<_>>().join(",");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("INSERT INTO naive_log (revision, kind, uid, object, created_at) VALUES {l}")))
                    .execute(&mut *tx).await?;
                tx.commit().await
                }).await;
            }
        }));
    }
    for w in 0..CLAIMERS {
        let pool = pool.clone();
        let done = done.clone();
        let node = nodes[w % nodes.len()];
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < jobs as u64 && Instant::now() < deadline {
                // Claim: lock ready rows, mark them, read their objects.
                let claimed = retry_deadlocks(|| async {
                let mut tx = pool.begin().await?;
                let rows = sqlx::query(
                    "SELECT id, uid FROM naive_q WHERE queue_name = ? AND claimed_at IS NULL \
                     AND scheduled_at <= NOW(6) ORDER BY priority, scheduled_at LIMIT ? FOR UPDATE SKIP LOCKED",
                )
                .bind(format!("node:{node}"))
                .bind(batch as i64)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    tx.commit().await?;
                    return Ok(None);
                }
                let ids: Vec<u64> = rows.iter().map(|r| r.get::<u64, _>(0)).collect();
                let uids: Vec<String> = rows.iter().map(|r| r.get::<String, _>(1)).collect();
                let idl = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                let uidl = uids.iter().map(|u| lit(u)).collect::<Vec<_>>().join(",");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "UPDATE naive_q SET claimed_at = NOW(6), claimed_by = 'w{w}', attempts = attempts + 1 WHERE id IN ({idl})"
                )))
                .execute(&mut *tx).await?;
                let objects = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT name, uid, object FROM naive_res WHERE uid IN ({uidl})")))
                    .fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(Some((ids, objects)))
                }).await;
                let Some((ids, objects)) = claimed else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                let idl = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                // Complete: check the leases under lock, one revision per job, the
                // queue rows go, the resources and the log get the new status.
                retry_deadlocks(|| async {
                let mut tx = pool.begin().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT id, attempts FROM naive_q WHERE id IN ({idl}) FOR UPDATE")))
                    .fetch_all(&mut *tx).await?;
                let first: u64 = sqlx::query("UPDATE naive_rev SET revision = LAST_INSERT_ID(revision + ?) WHERE id = 1")
                    .bind(ids.len() as u64)
                    .execute(&mut *tx)
                    .await?
                    .last_insert_id()
                    - ids.len() as u64
                    + 1;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM naive_q WHERE id IN ({idl})")))
                    .execute(&mut *tx).await?;
                let mut res = Vec::new();
                let mut log = Vec::new();
                for (k, row) in objects.iter().enumerate() {
                    let name: String = row.get(0);
                    let uid: String = row.get(1);
                    let object: String = row.get(2);
                    let mut v: Value = serde_json::from_str(&object).expect("object");
                    v["status"] = json!({"state": "complete", "attempts": 1, "result": {}});
                    let text = v.to_string();
                    let rev = first + k as u64;
                    res.push(format!("('ClusterOperation', 'bench', {}, {}, {rev}, {})", lit(&name), lit(&uid), lit(&text)));
                    log.push(format!("({rev}, 'ClusterOperation', {}, {}, NOW(6))", lit(&uid), lit(&text)));
                }
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO naive_res (kind, namespace, name, uid, resource_version, object) VALUES {} \
                     ON DUPLICATE KEY UPDATE resource_version = VALUES(resource_version), object = VALUES(object)",
                    res.join(",")
                )))
                .execute(&mut *tx).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("INSERT INTO naive_log (revision, kind, uid, object, created_at) VALUES {}", log.join(","))))
                    .execute(&mut *tx).await?;
                tx.commit().await
                }).await;
                done.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    json!({"jobs": n, "batch": batch, "claimers": CLAIMERS, "producers": producers, "seconds": (secs * 100.0).round() / 100.0, "jobs_per_second": (n as f64 / secs).round()})
}

async fn event_rate(c: &GatewayClient, total: usize) -> Value {
    let per_call = 1000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < total / 4 {
                let events: Vec<pb::Event> = (0..per_call)
                    .map(|_| pb::Event {
                        event_uuid: uuid::Uuid::new_v4().to_string(),
                        event_type: "audit".into(),
                        timestamp: 1.7e9,
                        fqdn: format!("bench-{w}"),
                        duration: None,
                        message: "benchmark event".into(),
                        extra: b"{\"k\":1}".to_vec(),
                        request_id: None,
                        objects: vec![pb::EventObject {
                            object_type: "instance".into(),
                            object_uuid: uuid::Uuid::new_v4().to_string(),
                        }],
                    })
                    .collect();
                c.call("record_event_batch", |mut g| {
                    let events = events.clone();
                    async move {
                        g.record_event_batch(pb::RecordEventBatchRequest { events })
                            .await
                    }
                })
                .await
                .expect("events");
                sent += per_call;
            }
            sent
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    json!({"events": n, "per_call": per_call, "writers": 4, "seconds": (secs * 100.0).round() / 100.0, "events_per_second": (n as f64 / secs).round()})
}

#[tokio::main]
async fn main() {
    let scale: f64 = std::env::var("SF_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |x: usize| ((x as f64 * scale) as usize).max(100);
    let mut options = ServerOptions::durable();
    // Extra mariadbd options for tuning experiments (whitespace-separated).
    if let Ok(extra) = std::env::var("SF_BENCH_MARIADB_ARGS") {
        options
            .extra_args
            .extend(extra.split_whitespace().map(str::to_string));
    }
    let server = MariaDb::start(&options).expect("private MariaDB");
    let tdb = server.create_database().expect("database");
    let db = connect(&MariaDbArgs::local_root(tdb.port, &tdb.name))
        .await
        .expect("connect");
    ensure_schema(&db).await.expect("schema");
    // Every object of the benchmark lives in namespace `bench`, which must exist.
    sf_database::Store::new(
        sf_database::connect_pool(&MariaDbArgs::local_root(tdb.port, &tdb.name))
            .await
            .expect("pool"),
    )
    .create_namespace("bench")
    .await
    .expect("namespace bench");
    // SF_BENCH_SOCKET=1: the gateways reach MariaDB through its Unix socket.
    let socket = std::env::var_os("SF_BENCH_SOCKET").map(|_| server.socket());
    let (a, ma, _sa) = start_gateway(tdb.port, &tdb.name, socket.as_deref()).await;
    let (b, mb, _sb) = start_gateway(tdb.port, &tdb.name, socket.as_deref()).await;
    let gateway_metrics = [ma, mb];
    let both = client(&[a, b]);
    let only_a = client(&[a]);
    let only_b = client(&[b]);
    wait_ready(&both).await;

    let phases = std::env::var("SF_BENCH_PHASES").unwrap_or_else(|_| "all".into());
    let run = |p: &str| phases == "all" || phases.split(',').any(|x| x == p);
    let mariadbd = std::fs::read_to_string(server.dir().join("mariadbd.pid"))
        .map(|p| p.trim().to_string())
        .unwrap_or_default();
    let mut report = serde_json::Map::new();
    let status_pool = sea_orm::sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&format!(
            "mysql://root@127.0.0.1:{}/{}?ssl-mode=DISABLED",
            tdb.port, tdb.name
        ))
        .await
        .expect("status pool");
    if let Some(threshold_ms) = std::env::var("SF_BENCH_LOCKMON")
        .ok()
        .map(|v| v.parse::<i64>().unwrap_or(2000))
    {
        let url = format!(
            "mysql://root@127.0.0.1:{}/{}?ssl-mode=DISABLED",
            tdb.port, tdb.name
        );
        tokio::spawn(async move {
            use sqlx::Row;
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("mon");
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let long: Option<i64> = sqlx::query_scalar("SELECT MAX(TIMESTAMPDIFF(MICROSECOND, trx_wait_started, NOW(6))) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'").fetch_one(&pool).await.ok().flatten();
                if long.unwrap_or(0) < threshold_ms * 1000 {
                    continue;
                }
                eprintln!("=== GRAPH max wait {long:?}us");
                let trx = sqlx::query("SELECT CAST(trx_id AS CHAR) AS trx_id, trx_state, trx_mysql_thread_id AS th, TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6)) AS age, IFNULL(TIMESTAMPDIFF(MICROSECOND, trx_wait_started, NOW(6)),0) AS waited, trx_rows_locked AS rl, trx_rows_modified AS rm, IFNULL(CONCAT(LEFT(trx_query, 40), ' ... ', RIGHT(trx_query, 140)),'') AS q FROM information_schema.INNODB_TRX ORDER BY trx_started").fetch_all(&pool).await.unwrap_or_default();
                for r in trx {
                    let id: String = r.try_get::<String, _>("trx_id").unwrap_or_default();
                    let st: String = r.try_get("trx_state").unwrap_or_default();
                    let th: u64 = r.try_get("th").unwrap_or(0);
                    let age: i64 = r.try_get("age").unwrap_or(0);
                    let waited: i64 = r.try_get("waited").unwrap_or(0);
                    let rl: u64 = r.try_get("rl").unwrap_or(0);
                    let rm: u64 = r.try_get("rm").unwrap_or(0);
                    let q: String = r.try_get("q").unwrap_or_default();
                    eprintln!(
                        "TRX {id} th={th} {st} age={}ms waited={}ms locked={rl} modified={rm} q=[{q}]",
                        age / 1000,
                        waited / 1000
                    );
                }
                let procs = sqlx::query("SELECT ID, COMMAND, IFNULL(STATE,'') AS st, TIME_MS, IFNULL(LEFT(INFO, 60),'') AS q FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Sleep' OR TIME_MS > 100").fetch_all(&pool).await.unwrap_or_default();
                for r in procs {
                    let id: u64 = r.try_get("ID").unwrap_or(0);
                    let cmd: String = r.try_get("COMMAND").unwrap_or_default();
                    let st: String = r.try_get("st").unwrap_or_default();
                    let t: f64 = r.try_get::<f64, _>("TIME_MS").unwrap_or(0.0);
                    let q: String = r.try_get("q").unwrap_or_default();
                    eprintln!("PROC th={id} {cmd} state=[{st}] {t:.0}ms q=[{q}]");
                }
                let waits = sqlx::query("SELECT CAST(w.requesting_trx_id AS CHAR) AS rq, CAST(w.blocking_trx_id AS CHAR) AS bl, CONCAT(l.lock_mode,' ',l.lock_table,' ',IFNULL(l.lock_index,''),' ',IFNULL(l.lock_data,'')) AS lk FROM information_schema.INNODB_LOCK_WAITS w JOIN information_schema.INNODB_LOCKS l ON l.lock_id = w.requested_lock_id").fetch_all(&pool).await.unwrap_or_default();
                for r in waits {
                    let rq: String = r.try_get("rq").unwrap_or_default();
                    let bl: String = r.try_get("bl").unwrap_or_default();
                    let lk: String = r.try_get("lk").unwrap_or_default();
                    eprintln!("WAIT {rq} -> {bl} on {lk}");
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        });
    }
    if run("unbatched") {
        let probe = CpuProbe::start(&mariadbd);
        let before = server_counters(&status_pool).await;
        let combined = scrape_all(&gateway_metrics).await;
        let mut v = throughput(&both, "u", n(4_000), 1).await;
        v["cpu"] = probe.finish();
        v["combining"] = calls_per_batch(&combined, &scrape_all(&gateway_metrics).await);
        let jobs = v["completed"].as_f64().unwrap_or(0.0);
        v["mariadb_per_job"] =
            counters_per_job(&before, &server_counters(&status_pool).await, jobs);
        report.insert("create_claim_complete_unbatched".into(), v);
    }
    if run("batched") {
        let probe = CpuProbe::start(&mariadbd);
        let before = server_counters(&status_pool).await;
        let combined = scrape_all(&gateway_metrics).await;
        let mut v = throughput(&both, "b", n(40_000), batch()).await;
        v["cpu"] = probe.finish();
        v["combining"] = calls_per_batch(&combined, &scrape_all(&gateway_metrics).await);
        let jobs = v["completed"].as_f64().unwrap_or(0.0);
        v["mariadb_per_job"] =
            counters_per_job(&before, &server_counters(&status_pool).await, jobs);
        report.insert("create_claim_complete_batched".into(), v);
    }
    if run("claim") {
        report.insert(
            "enqueue_to_claim_latency".into(),
            claim_latency(&only_a, &only_a, "lat-same", n(500)).await,
        );
        report.insert(
            "enqueue_to_claim_latency_across_instances".into(),
            claim_latency(&only_a, &only_b, "lat-across", n(500)).await,
        );
    }
    if run("watch") {
        let (same, across) = watch_latency(&only_a, &only_a, &only_b, n(1_000)).await;
        report.insert("watch_latency_same_instance".into(), same);
        report.insert("watch_latency_across_instances".into(), across);
    }
    if run("events") {
        report.insert(
            "event_batch_insert".into(),
            event_rate(&both, n(200_000)).await,
        );
    }
    if run("baseline") {
        let probe = CpuProbe::start(&mariadbd);
        let mut v = naive_sql_queue(tdb.port, &tdb.name, n(20_000), 1).await;
        v["cpu"] = probe.finish();
        report.insert("baseline_naive_sql_queue_claim1".into(), v);
        let probe = CpuProbe::start(&mariadbd);
        let mut v = naive_full_pipeline(tdb.port, &tdb.name, n(4_000), 1).await;
        v["cpu"] = probe.finish();
        report.insert("ceiling_naive_full_pipeline_unbatched".into(), v);
        let probe = CpuProbe::start(&mariadbd);
        let mut v = naive_full_pipeline(tdb.port, &tdb.name, n(40_000), batch()).await;
        v["cpu"] = probe.finish();
        report.insert("ceiling_naive_full_pipeline_batched".into(), v);
        let probe = CpuProbe::start(&mariadbd);
        let mut v = naive_sql_queue(tdb.port, &tdb.name, n(100_000), 50).await;
        v["cpu"] = probe.finish();
        report.insert("baseline_naive_sql_queue_claim50".into(), v);
    }
    report.insert("benchmark".into(), json!("sf-database gateway"));
    report.insert(
        "setup".into(),
        json!("private MariaDB 10.11 (innodb_flush_log_at_trx_commit=1, buffer pool 1G), 2 in-process gateways, gRPC client over 127.0.0.1, same 2-core machine"),
    );
    report.insert(
        "targets".into(),
        json!({
            "batched_jobs_per_second": 10000, "unbatched_jobs_per_second": 2000,
            "claim_p99_ms": 10, "watch_same_p99_ms": 5, "watch_across_p99_ms": 100,
            "events_per_second": 50000
        }),
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(report)).expect("json")
    );
}
