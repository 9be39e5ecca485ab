//! Benchmark: operations per second one agent sustains on the libvirt test driver
//! (instance_create with power on, then instance_delete, through sf-database claims)
//! and the `sf-agent` binary's idle RSS. Prints one JSON object.
//!
//! Idle RSS is measured for the bench's own build (`release`) and, when
//! `target/agent/sf-agent` exists (`cargo build --profile agent -p sf-agent`), for the
//! shipped build: the 25 MiB target applies to the latter.
//!
//! `cargo bench -p sf-agent --bench agent` (root: it makes a network namespace);
//! `SF_BENCH_INSTANCES` (default 100), `SF_BENCH_CONCURRENCY` (default 4).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sf_agent::libvirt::LibvirtHypervisor;
use sf_daemon::Shutdown;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn wait_all(env: &Env, names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(600);
    for name in names {
        loop {
            let op = env.get("ClusterOperation", Some("demo"), name).await;
            match op["status"]["state"].as_str() {
                Some("complete") => break,
                Some("error") | Some("abort") => panic!("{name} failed: {op}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "{name} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(13999)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn bench() -> Value {
    let n = env_usize("SF_BENCH_INSTANCES", 100);
    let concurrency = env_usize("SF_BENCH_CONCURRENCY", 4);
    let env = setup().await;
    let g = &env.gateway;
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let mut agent_settings = env.settings("44444444-4444-4444-8444-444444444444");
    agent_settings.max_concurrency = u32::try_from(concurrency).unwrap_or(4);
    agent_settings.poll_interval = Duration::from_secs(5);
    let agent = env.agent_with(hv, agent_settings);
    let shutdown = Shutdown::new();
    let run = {
        let (a, s) = (agent.clone(), shutdown.clone());
        tokio::spawn(async move { a.run(s).await })
    };
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-{i}");
        let inst = g
            .create(&json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
                "metadata": {"name": name, "namespace": "demo"},
                "spec": {"cpus": 1, "memory": 256, "disks": [{"size": 1}], "configDrive": "none"},
            }))
            .await
            .expect("instance");
        env.merge(
            "Instance",
            Some("demo"),
            &name,
            json!({"state": "creating", "node": NODE}),
        )
        .await;
        targets.push((
            name.clone(),
            json!({"kind": "Instance", "name": name, "namespace": "demo", "uid": inst["metadata"]["uid"]}),
        ));
    }
    let started = Instant::now();
    let mut creates = Vec::new();
    for (name, target) in &targets {
        let op = format!("instance-{name}-1-create");
        env.enqueue(
            &op,
            "instance_create",
            target.clone(),
            json!({"interfaces": [], "powerState": "on"}),
            &[],
        )
        .await;
        creates.push(op);
    }
    wait_all(&env, &creates).await;
    let create_seconds = started.elapsed().as_secs_f64();
    let deleting = Instant::now();
    let mut deletes = Vec::new();
    for (name, target) in &targets {
        let op = format!("instance-{name}-2-delete");
        env.enqueue(&op, "instance_delete", target.clone(), json!({}), &[])
            .await;
        deletes.push(op);
    }
    wait_all(&env, &deletes).await;
    let delete_seconds = deleting.elapsed().as_secs_f64();
    let total = started.elapsed().as_secs_f64();
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(60), run).await;

    // Idle RSS of the real binary as this bench built it (`release`), and of the
    // shipped build (`--profile agent`) when it has been built.
    let release_rss = idle_rss(
        &env,
        "hv-rss",
        std::path::Path::new(env!("CARGO_BIN_EXE_sf-agent")),
    )
    .await;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let agent_profile = target_dir.join("agent/sf-agent");
    let agent_profile_rss = if agent_profile.exists() {
        idle_rss(&env, "hv-rss-agent", &agent_profile).await
    } else {
        None
    };
    json!({
        "benchmark": "sf-agent test driver",
        "instances": n,
        "concurrency": concurrency,
        "create_seconds": create_seconds,
        "delete_seconds": delete_seconds,
        "creates_per_second": n as f64 / create_seconds,
        "deletes_per_second": n as f64 / delete_seconds,
        "create_power_on_delete_cycles_per_second": n as f64 / total,
        "operations_per_second": (2 * n) as f64 / total,
        "idle_rss_kib": release_rss,
        "idle_rss_kib_profile_agent": agent_profile_rss,
    })
}

/// VmRSS of `binary` started as an agent 5 s earlier (registered, heartbeating, idle).
/// A live node's name cannot be reused, so each run gets its own `name`.
async fn idle_rss(env: &Env, name: &str, binary: &std::path::Path) -> Option<u64> {
    let storage = env.dir.path().join(name);
    let mut child = tokio::process::Command::new(binary)
        .env("SHAKENFIST_NODE_NAME", name)
        .env("SHAKENFIST_NODE_NETNS", &env.netns.0)
        .env("SHAKENFIST_NODE_MESH_NIC", "mesh0")
        .env("SHAKENFIST_NODE_MESH_IP", "10.250.0.1")
        .env("SHAKENFIST_STORAGE_PATH", &storage)
        .env("SHAKENFIST_LIBVIRT_URI", &env.uri)
        .env("SHAKENFIST_LIBVIRT_DOMAIN_TYPE", "test")
        .env("SHAKENFIST_AGENT_METRICS_PORT", free_port().to_string())
        .env("SHAKENFIST_AGENT_METRICS_LISTEN", "127.0.0.1")
        .env("SHAKENFIST_MARIADB_GATEWAY_HOSTS", &env.gateway_hosts)
        .env("SHAKENFIST_MARIADB_GATEWAY_SECRET", SECRET)
        .env("SHAKENFIST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sf-agent");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = child.id().and_then(rss_kib);
    let _ = child.kill().await;
    let _ = child.wait().await;
    rss
}

fn main() {
    if !privileged() {
        println!("{}", json!({"skipped": "needs root"}));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(bench());
    println!("{out}");
}
