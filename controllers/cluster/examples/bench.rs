//! sf-cluster benchmark (prints JSON): the same in-process system as the integration
//! tests (private MariaDB, sf-database, sf-api, sf-cluster) with nodes run by the REAL
//! sf-agent in-process (libvirt test driver, host networking in network namespaces
//! the benchmark makes; needs root, otherwise it says so and exits).
//!
//! - `latency`: 20 running instances on one node; their `spec.powerState` is flipped
//!   at `BENCH_RATE` changes/s (default 20) for `BENCH_SECONDS` (default 10); for each
//!   change, the time until the agent began changing the host for it (its first
//!   libvirt call that changes the domain: `destroy` for off, `define` for on), which
//!   bounds the time to the claim from above (p50/p99/max).
//! - `create`: `BENCH_INSTANCES` instances (default 200) created at once with two
//!   agents; the time from the first create to all `created` and running.
//!
//! Agents run `BENCH_AGENT_CONCURRENCY` operations at once (default 16,
//! `SHAKENFIST_AGENT_MAX_CONCURRENCY`). The scheduler gets settings with room for
//! every instance on either node, computed from the capacity the agents report.
//!
//! Run: `cargo run -p sf-cluster --example bench` (add `--release` for figures that
//! mean something).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::AgentOptions;
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

/// Waits until every instance of `names` is created and running; returns their uids.
async fn wait_created(
    env: &common::Env,
    names: &[String],
    within: Duration,
) -> Option<HashMap<String, String>> {
    let deadline = Instant::now() + within;
    loop {
        let list = env
            .instances()
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let created: HashMap<String, String> = list
            .iter()
            .filter(|i| {
                i.status.as_ref().is_some_and(|s| {
                    s.state == InstanceState::Created
                        && s.power_state == Some(sf_schema::instance::ObservedPowerState::Running)
                })
            })
            .filter_map(|i| Some((i.metadata.name.clone()?, i.metadata.uid.clone()?)))
            .filter(|(n, _)| names.contains(n))
            .collect();
        if created.len() == names.len() {
            return Some(created);
        }
        if Instant::now() > deadline {
            eprintln!("only {} of {} created", created.len(), names.len());
            return None;
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

/// Scheduler settings with room for `count` of the benchmark's instances (1 vCPU,
/// 512 MiB, 8 GiB) on a node of `capacity`, and no reservations.
fn room_for(capacity: &sf_schema::node::NodeCapacity, count: u64) -> Vec<String> {
    #[allow(clippy::cast_precision_loss)]
    let ratio = |want: u64, have: u64| want as f64 / have.max(1) as f64 + 1.0;
    vec![
        "--node-cpu-reservation-threads=0".into(),
        "--node-ram-reservation-gb=0".into(),
        "--node-disk-reservation-gb=0".into(),
        format!(
            "--cpu-overcommit-ratio={}",
            ratio(count, u64::from(capacity.cpu_threads))
        ),
        format!(
            "--ram-overcommit-ratio={}",
            ratio(count * 512, capacity.memory_mib)
        ),
        format!(
            "--scheduler-disk-overcommit={}",
            ratio(count * 8, capacity.disk_gib)
        ),
    ]
}

/// Starts one sf-cluster with room for `count` instances per node.
async fn start_cluster(env: &mut common::Env, count: u64) -> common::Cluster {
    let flags = room_for(&env.capacity(0).await, count);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = env.start_cluster(&flags).await;
    cluster.wait_leader(Duration::from_secs(30)).await;
    cluster
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rate = env_u64("BENCH_RATE", 20).max(1);
    let seconds = env_u64("BENCH_SECONDS", 10).max(1);
    let count = env_u64("BENCH_INSTANCES", 200).max(1);
    let concurrency = u32::try_from(env_u64("BENCH_AGENT_CONCURRENCY", 16))
        .unwrap_or(16)
        .clamp(1, 256);

    // --- latency ------------------------------------------------------------------
    let agents = AgentOptions {
        max_concurrency: concurrency,
        ..AgentOptions::default()
    };
    let Some(mut env) = common::start_with_agents("the sf-cluster benchmark", 1, &agents).await
    else {
        return;
    };
    let cluster = start_cluster(&mut env, 64).await;
    let names: Vec<String> = (0..20).map(|i| format!("lat-{i}")).collect();
    create_all(&env, &names).await;
    let uids = wait_created(&env, &names, Duration::from_secs(120))
        .await
        .expect("the latency instances are created");
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
    let actions = env.node(0).host.actions();
    let mut latencies: Vec<f64> = Vec::new();
    let mut missed = 0;
    for (name, at) in &changes {
        let domain = sf_agent::hypervisor::domain_name(&uids[name]);
        let first = actions
            .iter()
            .filter(|a| a.subject == domain && a.began >= *at)
            .filter(|a| matches!(a.action, "destroy" | "define" | "start"))
            .map(|a| a.began)
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
        "measured_to": "the agent's first host change for the operation (an upper bound of its claim)",
        "acted": latencies.len(),
        "missed": missed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
    });
    cluster.shutdown.trigger();
    drop(env);

    // --- create -------------------------------------------------------------------
    let Some(mut env) = common::start_with_agents("the sf-cluster benchmark", 2, &agents).await
    else {
        return;
    };
    let cluster = start_cluster(&mut env, count).await;
    let names: Vec<String> = (0..count).map(|i| format!("vm-{i}")).collect();
    let start = Instant::now();
    create_all(&env, &names).await;
    let submitted = start.elapsed().as_secs_f64();
    let ok = wait_created(&env, &names, Duration::from_secs(600))
        .await
        .is_some();
    let elapsed = start.elapsed().as_secs_f64();
    let mut per_node = serde_json::Map::new();
    for i in env.list_instances_per_node().await {
        per_node.insert(i.0, json!(i.1));
    }
    #[allow(clippy::cast_precision_loss)]
    let create = json!({
        "instances": count,
        "agents": 2,
        "agent_concurrency": concurrency,
        "all_created": ok,
        "per_node": per_node,
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
        json!({"benchmark": "sf-cluster", "agents": "sf-agent in-process, libvirt test driver", "latency": latency, "create": create})
    );
    drop(env);
}

impl common::Env {
    /// How many instances each node holds.
    async fn list_instances_per_node(&self) -> Vec<(String, usize)> {
        let list = self
            .instances()
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut out: std::collections::BTreeMap<String, usize> = Default::default();
        for i in &list {
            let node = i
                .status
                .as_ref()
                .and_then(|s| s.node.clone())
                .unwrap_or_else(|| "unplaced".to_string());
            *out.entry(node).or_default() += 1;
        }
        out.into_iter().collect()
    }
}
