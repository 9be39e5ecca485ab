//! sf-api benchmark (issue 4): GET latency at a paced 2,000 req/s, LIST of 10,000
//! objects, watch fan-out to 100 watchers, and the idle RSS of the sf-api binary.
//!
//! Runs an in-process sf-database and sf-api over a private MariaDB (the tests' set-up,
//! with a system token) and prints one JSON document. Everything shares the machine's
//! cores: client, sf-api, sf-database and mariadbd.
//!
//! `cargo bench -p sf-api --bench api`; `SF_BENCH_PHASES=get,list,watch,rss` picks
//! phases; `SF_BENCH_GET_PATH` GETs another path in the get phase.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

const V1: &str = "/apis/shakenfist.io/v1alpha1";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn phase(name: &str) -> bool {
    std::env::var("SF_BENCH_PHASES").map_or(true, |p| p.split(',').any(|x| x == name))
}

async fn send(client: &kube::Client, method: &str, path: &str, body: Option<Value>) -> u16 {
    common::raw_on(client, method, path, &[], body).await.status
}

/// GETs of one object at `rate` requests/s for `seconds`, from `workers` tasks.
async fn get_phase(env: &common::Env, rate: u32, seconds: u64, workers: u32) -> Value {
    let path = format!("{V1}/namespaces/demo/instances/bench-get");
    send(
        &env.client,
        "POST",
        &format!("{V1}/namespaces/demo/instances"),
        Some(common::instance_json("bench-get")),
    )
    .await;
    // SF_BENCH_GET_PATH: another path to GET (e.g. `/version`, to see sf-api without
    // sf-database).
    let path = std::env::var("SF_BENCH_GET_PATH").unwrap_or(path);
    let mut through_api = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        send(&env.client, "GET", &path, None).await;
        through_api.push(ms(t.elapsed()));
    }
    through_api.sort_by(f64::total_cmp);
    // The same read straight from sf-database, unpaced (gRPC, no sf-api, no HTTP).
    let mut direct = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        env.gateway
            .call("get_resource", |mut g| async move {
                g.get_resource(sf_proto::v1::GetResourceRequest {
                    key: Some(sf_proto::v1::ObjectKey {
                        kind: "Instance".into(),
                        namespace: "demo".into(),
                        name: "bench-get".into(),
                    }),
                    uid: String::new(),
                    deleted: false,
                })
                .await
            })
            .await
            .expect("gateway get");
        direct.push(ms(t.elapsed()));
    }
    direct.sort_by(f64::total_cmp);
    let sequential = json!({
        "api_p50_ms": percentile(&through_api, 0.5),
        "api_p99_ms": percentile(&through_api, 0.99),
        "gateway_p50_ms": percentile(&direct, 0.5),
        "gateway_p99_ms": percentile(&direct, 0.99),
    });
    let interval = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = env.client.clone();
        let path = path.clone();
        // Each worker starts its ticker `w/workers` of an interval later, so the
        // requests arrive evenly spaced at `rate` (all tickers in phase would send
        // bursts of `workers` requests at once and measure the burst's queueing).
        let phase = interval.mul_f64(f64::from(w) / f64::from(workers));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut samples = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                ticker.tick().await;
                let t = Instant::now();
                if send(&client, "GET", &path, None).await != 200 {
                    errors += 1;
                }
                samples.push(ms(t.elapsed()));
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (s, e) = task.await.expect("worker");
        samples.extend(s);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    json!({
        "sequential": sequential,
        "target_rate": rate,
        "achieved_rate": (samples.len() as f64 / elapsed).round(),
        "requests": samples.len(),
        "errors": errors,
        "p50_ms": percentile(&samples, 0.50),
        "p99_ms": percentile(&samples, 0.99),
        "max_ms": percentile(&samples, 1.0),
    })
}

/// Creates `count` instances, then times LISTs of them.
async fn list_phase(env: &common::Env, count: usize) -> Value {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = env.client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let mut object = common::instance_json(&format!("list-{i:05}"));
                object["metadata"]["namespace"] = json!("bench");
                let status = send(
                    &client,
                    "POST",
                    &format!("{V1}/namespaces/bench/instances"),
                    Some(object),
                )
                .await;
                assert_eq!(status, 201, "create list-{i}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("creator");
    }
    let create_s = started.elapsed().as_secs_f64();
    let path = format!("{V1}/namespaces/bench/instances");
    let mut samples = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let answer = common::raw_on(&env.client, "GET", &path, &[], None).await;
        samples.push(ms(t.elapsed()));
        assert_eq!(answer.status, 200);
        bytes = answer.body.len();
        let items = answer.json()["items"].as_array().map_or(0, Vec::len);
        assert_eq!(items, count);
    }
    samples.sort_by(f64::total_cmp);
    // The same list straight from sf-database (gRPC, no sf-api, no HTTP): the split.
    let mut direct = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let reply = env
            .gateway
            .call("list_resources", |mut g| async move {
                g.list_resources(sf_proto::v1::ListResourcesRequest {
                    kind: "Instance".into(),
                    namespace: "bench".into(),
                    label_selector: String::new(),
                    field_selector: String::new(),
                })
                .await
            })
            .await
            .expect("gateway list");
        direct.push(ms(t.elapsed()));
        assert_eq!(reply.objects.len(), count);
    }
    direct.sort_by(f64::total_cmp);
    json!({
        "gateway_list_p50_ms": percentile(&direct, 0.5),
        "objects": count,
        "create_seconds": create_s,
        "create_rate": (count as f64 / create_s).round(),
        "list_p50_ms": percentile(&samples, 0.5),
        "list_max_ms": percentile(&samples, 1.0),
        "list_bytes": bytes,
    })
}

/// `watchers` watches of one namespace; one change; time until each sees it.
async fn watch_phase(env: &common::Env, watchers: usize) -> Value {
    let path = format!("{V1}/namespaces/fan/instances");
    let mut object = common::instance_json("fan-1");
    object["metadata"]["namespace"] = json!("fan");
    send(&env.client, "POST", &path, Some(object)).await;
    let list = common::raw_on(&env.client, "GET", &path, &[], None)
        .await
        .json();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(watchers);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for _ in 0..watchers {
        let client = env.client.clone();
        let path = format!("{path}?watch=true&resourceVersion={rv}&timeoutSeconds=60");
        let tx = tx.clone();
        let ready_tx = ready_tx.clone();
        tokio::spawn(async move {
            let request = http::Request::get(&path)
                .body(kube::client::Body::empty())
                .expect("request");
            let response = client.send(request).await.expect("watch");
            ready_tx.send(()).await.ok();
            let mut body = http_body_util::BodyStream::new(response.into_body());
            let mut seen = Vec::new();
            while let Some(Ok(frame)) = body.next().await {
                if let Ok(data) = frame.into_data() {
                    seen.extend_from_slice(&data);
                    if seen.windows(8).any(|w| w == b"MODIFIED") {
                        tx.send(Instant::now()).await.ok();
                        return;
                    }
                }
            }
        });
    }
    for _ in 0..watchers {
        ready_rx.recv().await.expect("watch started");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let status = common::raw_on(
        &env.client,
        "PATCH",
        &format!("{path}/fan-1"),
        &[("content-type", "application/merge-patch+json")],
        Some(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .status;
    assert_eq!(status, 200);
    let acked = Instant::now();
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while samples.len() < watchers && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(at)) => samples.push(ms(at.saturating_duration_since(acked))),
            _ => continue,
        }
    }
    samples.sort_by(f64::total_cmp);
    json!({
        "watchers": watchers,
        "delivered": samples.len(),
        "write_ms": ms(acked - sent),
        "after_ack_p50_ms": percentile(&samples, 0.5),
        "after_ack_p99_ms": percentile(&samples, 0.99),
        "after_ack_max_ms": percentile(&samples, 1.0),
    })
}

/// The sf-api binary's RSS once ready and after a few requests.
async fn rss_phase(env: &common::Env) -> Value {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let hosts = env.gateway_hosts.clone();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sf-api"))
        .env_clear()
        .env("SHAKENFIST_API_LISTEN", "127.0.0.1")
        .env("SHAKENFIST_API_PORT", port.to_string())
        .env("SHAKENFIST_MARIADB_GATEWAY_HOSTS", hosts)
        .env("SHAKENFIST_MARIADB_GATEWAY_SECRET", common::SECRET)
        .env("SHAKENFIST_AUTH_SECRET_SEED", common::SEED)
        .env("SHAKENFIST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("sf-api binary");
    let pid = child.id().expect("pid");
    let client = common::kube_client(&format!("http://127.0.0.1:{port}"), Some(&env.system_token));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "sf-api binary not listening");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while send(&client, "GET", "/readyz", None).await != 200 {
        assert!(Instant::now() < deadline, "sf-api binary not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        send(
            &client,
            "GET",
            &format!("{V1}/namespaces/demo/instances"),
            None,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    child.kill().await.ok();
    json!({"idle_rss_mib": (rss_kib as f64 / 1024.0 * 10.0).round() / 10.0})
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let env = common::start().await;
        let mut report = json!({"benchmark": "sf-api", "profile": if cfg!(debug_assertions) { "debug" } else { "release" }});
        if phase("get") {
            report["get"] = get_phase(&env, 2000, 10, 32).await;
            eprintln!("get: {}", report["get"]);
        }
        if phase("list") {
            env.add_namespace("bench").await;
            report["list"] = list_phase(&env, 10_000).await;
            eprintln!("list: {}", report["list"]);
        }
        if phase("watch") {
            report["watch"] = watch_phase(&env, 100).await;
            eprintln!("watch: {}", report["watch"]);
        }
        if phase("rss") {
            report["rss"] = rss_phase(&env).await;
        }
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    });
}
