//! sf-cluster benchmark (prints JSON): the same in-process system as the integration
//! tests (private MariaDB, sf-database, sf-api, sf-cluster, test agents).
//!
//! - `latency`: 20 running instances; their `spec.powerState` is flipped at
//!   `BENCH_RATE` changes/s (default 20) for `BENCH_SECONDS` (default 10); for each
//!   change, the time until the agent claimed the operation it caused (p50/p99/max).
//! - `create`: `BENCH_INSTANCES` instances (default 200) created at once with two
//!   test agents; the time from the first create to all `created`.
//!
//! Run: `cargo run -p sf-cluster --example bench` (add `--release` for figures that
//! mean something).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::NodeSpecForTest;
use futures::StreamExt;
use serde_json::json;
use sf_schema::instance::InstanceState;

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn wait_created(env: &common::Env, names: &[String], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let list = env
            .instances()
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let created = list
            .iter()
            .filter(|i| names.iter().any(|n| Some(n) == i.metadata.name.as_ref()))
            .filter(|i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| s.state == InstanceState::Created && s.power_state.is_some())
            })
            .count();
        if created == names.len() {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("only {created} of {} created", names.len());
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_all(env: &common::Env, names: &[String]) {
    futures::stream::iter(names.iter())
        .for_each_concurrent(32, |n| async move {
            env.create_instance(n, &[]).await;
        })
        .await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rate = env_u64("BENCH_RATE", 20).max(1);
    let seconds = env_u64("BENCH_SECONDS", 10).max(1);
    let count = env_u64("BENCH_INSTANCES", 200).max(1);
    let big = NodeSpecForTest {
        roles: vec!["hypervisor", "network"],
        cpu_threads: 4096,
        memory_mib: 4 * 1024 * 1024,
        disk_gib: 1_000_000,
    };

    // --- latency ------------------------------------------------------------------
    let mut env = common::start().await;
    let agent = env.start_agent("hv-1", big.clone()).await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(Duration::from_secs(30)).await;
    let names: Vec<String> = (0..20).map(|i| format!("lat-{i}")).collect();
    create_all(&env, &names).await;
    assert!(wait_created(&env, &names, Duration::from_secs(120)).await);
    let mut changes: Vec<(String, Instant)> = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / f64::from(u32::try_from(rate).unwrap_or(20)));
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(interval);
    let mut powered_on = vec![true; names.len()];
    for k in 0..total {
        ticker.tick().await;
        let idx = usize::try_from(k).unwrap_or(0) % names.len();
        powered_on[idx] = !powered_on[idx];
        let power = if powered_on[idx] { "on" } else { "off" };
        let at = Instant::now();
        env.instances()
            .patch(
                &names[idx],
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"powerState": power}})),
            )
            .await
            .expect("patch");
        changes.push((names[idx].clone(), at));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let claims = agent.claims();
    let mut latencies: Vec<f64> = Vec::new();
    let mut missed = 0;
    for (name, at) in &changes {
        let first = claims
            .iter()
            .filter(|c| &c.target == name && c.at >= *at)
            .map(|c| c.at)
            .min();
        match first {
            Some(t) => latencies.push((t - *at).as_secs_f64() * 1000.0),
            None => missed += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    let latency = json!({
        "changes": changes.len(),
        "rate_per_second": rate,
        "claimed": latencies.len(),
        "missed": missed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
    });
    cluster.shutdown.trigger();
    drop(env);

    // --- create -------------------------------------------------------------------
    let mut env = common::start().await;
    env.start_agent("hv-1", big.clone()).await;
    env.start_agent(
        "hv-2",
        NodeSpecForTest {
            roles: vec!["hypervisor"],
            ..big
        },
    )
    .await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(Duration::from_secs(30)).await;
    let names: Vec<String> = (0..count).map(|i| format!("vm-{i}")).collect();
    let start = Instant::now();
    create_all(&env, &names).await;
    let submitted = start.elapsed().as_secs_f64();
    let ok = wait_created(&env, &names, Duration::from_secs(600)).await;
    let elapsed = start.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let create = json!({
        "instances": count,
        "agents": 2,
        "all_created": ok,
        "submit_seconds": submitted,
        "seconds": elapsed,
        "per_second": count as f64 / elapsed,
    });
    let text = cluster.metrics().await;
    let mut reconciles = serde_json::Map::new();
    for controller in ["instance", "network", "interface", "node"] {
        let find = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{prefix}{{controller=\"{controller}\"}}")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let count = find("cluster_reconcile_total");
        let seconds = find("cluster_reconcile_duration_seconds_sum");
        reconciles.insert(
            controller.to_string(),
            json!({"count": count, "mean_ms": if count > 0.0 { seconds * 1000.0 / count } else { 0.0 }}),
        );
    }
    let create = {
        let mut c = create;
        c["reconciles"] = serde_json::Value::Object(reconciles);
        c
    };
    cluster.shutdown.trigger();
    println!(
        "{}",
        json!({"benchmark": "sf-cluster", "latency": latency, "create": create})
    );
    drop(env);
}
