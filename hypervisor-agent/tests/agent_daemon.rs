//! The agent against an in-process sf-database (private MariaDB from the harness),
//! libvirt's test driver (a private driver file per test) and netlink inside a
//! network namespace the test creates (root only; otherwise the test says it is
//! skipped, or fails when `SF_REQUIRE_PRIVILEGED=1`).
//!
//! Walks: register → network_create_on_node + instance_create queued with
//! CreateOperation → complete, Instance `status.powerState` running, bridge in the
//! namespace → pause → screenshot into a Blob → a guest's own power-off seen by
//! polling → a second agent with the same name refused → restart (a new connection:
//! the test driver forgets its domains) brings the domain and the network back,
//! removes the domain of a deleted instance but neither an unknown `sf:*` domain nor a
//! foreign one → delete.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sf_agent::agent::{Agent, AgentError};
use sf_agent::domain_xml::{DomainType, RenderSettings};
use sf_agent::hypervisor::{DomainState, Hypervisor, domain_name};
use sf_agent::instance::{Lifecycle, LifecycleSettings};
use sf_agent::libvirt::LibvirtHypervisor;
use sf_agent::metrics::AgentMetrics;
use sf_daemon::Shutdown;
use sf_hostnet::{HostNetConfig, NetlinkHostNet};
use sf_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_operations_and_comes_back_after_a_restart() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let g = &env.gateway;

    // The objects the controllers would have made.
    let network = g
        .create(&json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Network",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"netblock": "10.0.0.0/24", "provideDhcp": false},
        }))
        .await
        .expect("network");
    env.merge(
        "Network",
        Some("demo"),
        "web",
        json!({"vxid": VXID, "state": "created", "nodes": ["hv-2"]}),
    )
    .await;
    // Another node already carries the network: it is a mesh peer.
    g.create(&json!({
        "apiVersion": "shakenfist.io/v1alpha1", "kind": "Node",
        "metadata": {"name": "hv-2"}, "spec": {"roles": ["hypervisor"]},
    }))
    .await
    .expect("node hv-2");
    env.merge("Node", None, "hv-2", json!({"address": "10.250.0.2"}))
        .await;
    let instance = g
        .create(&json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "web-1", "namespace": "demo"},
            "spec": {"cpus": 1, "memory": 256, "disks": [{"size": 1}], "networks": [{"network": "web"}],
                     "sshKey": "ssh-ed25519 AAAAC3 test"},
        }))
        .await
        .expect("instance");
    let inst_uid = instance["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    env.merge(
        "Instance",
        Some("demo"),
        "web-1",
        json!({"state": "creating", "node": NODE}),
    )
    .await;
    g.create(&json!({
        "apiVersion": "shakenfist.io/v1alpha1", "kind": "NetworkInterface",
        "metadata": {"name": "web-1-0", "namespace": "demo"},
        "spec": {"instance": "web-1", "network": "web"},
    }))
    .await
    .expect("interface");
    env.merge(
        "NetworkInterface",
        Some("demo"),
        "web-1-0",
        json!({"ipv4": "10.0.0.5", "macaddr": "02:00:00:aa:bb:cc", "state": "created"}),
    )
    .await;
    let net_target = json!({"kind": "Network", "name": "web", "namespace": "demo",
                            "uid": network["metadata"]["uid"]});
    let inst_target =
        json!({"kind": "Instance", "name": "web-1", "namespace": "demo", "uid": inst_uid});

    // --- First agent.
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let uuid1 = "11111111-1111-4111-8111-111111111111";
    let agent = env.agent(hv.clone(), uuid1);
    let shutdown = Shutdown::new();
    let run = {
        let (a, s) = (agent.clone(), shutdown.clone());
        tokio::spawn(async move { a.run(s).await })
    };

    // Cluster-queue work: never claimed by an agent.
    env.enqueue_on(
        None,
        "artifact-debian-1-fetch",
        "artifact_fetch",
        json!({"kind": "Artifact", "name": "debian", "namespace": "demo", "uid": "a-1"}),
        json!({}),
        &[],
    )
    .await;
    env.enqueue(
        "network-web-1-netcreate-hv-1",
        "network_create_on_node",
        net_target.clone(),
        json!({"network": "web", "vxid": VXID, "netblock": "10.0.0.0/24", "networkNode": false,
               "provideDhcp": false, "provideNat": false, "provideDns": false}),
        &[],
    )
    .await;
    env.enqueue(
        "instance-web-1-1-create",
        "instance_create",
        inst_target.clone(),
        json!({"interfaces": ["web-1-0"], "powerState": "on"}),
        &["network-web-1-netcreate-hv-1"],
    )
    .await;
    env.wait_op("network-web-1-netcreate-hv-1").await;
    assert!(
        env.link_exists(&sf_hostnet::bridge_name(VXID)),
        "bridge plumbed in the node netns"
    );
    assert!(
        env.link_exists(&sf_hostnet::vxlan_name(VXID)),
        "vxlan plumbed"
    );
    let fdb = env.fdb();
    assert!(
        fdb.contains("dst 10.250.0.2"),
        "mesh peer hv-2 in the fdb: {fdb}"
    );
    let op = env.wait_op("instance-web-1-1-create").await;
    assert_eq!(op["status"]["result"]["powerState"], "running");
    let inst = env.wait_power("running").await;
    assert_eq!(
        inst["status"]["interfaces"][0]["macaddr"],
        "02:00:00:aa:bb:cc"
    );
    assert_eq!(inst["status"]["interfaces"][0]["ipv4"], "10.0.0.5");
    let nic0 = env.get("NetworkInterface", Some("demo"), "web-1-0").await;
    assert_eq!(nic0["status"]["node"], NODE, "{nic0}");
    assert_eq!(
        nic0["status"]["ipv4"], "10.0.0.5",
        "merge kept the IPAM fields"
    );
    assert_eq!(
        hv.state(&domain_name(&inst_uid)).await.expect("state"),
        Some(DomainState::Running)
    );
    let xml = hv.xml(&domain_name(&inst_uid), true).await.expect("xml");
    assert!(xml.contains(&sf_hostnet::bridge_name(VXID)), "{xml}");

    // The Node is registered with its facts.
    let node = env.get("Node", None, NODE).await;
    assert_eq!(
        node["metadata"]["annotations"]["shakenfist.io/node-uuid"],
        uuid1
    );
    assert_eq!(node["status"]["address"], "10.250.0.1");
    assert!(
        node["status"]["capacity"]["cpuThreads"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{node}"
    );
    assert_eq!(node["status"]["versions"]["libvirt"], "9.0.0");
    assert!(node["status"]["lastSeen"].is_string());

    // A second agent claiming the same name with another uuid is refused.
    let other = env.agent(
        LibvirtHypervisor::new(env.uri.clone()),
        "22222222-2222-4222-8222-222222222222",
    );
    let err = other.register().await.expect_err("name in use");
    assert!(matches!(err, AgentError::NodeNameInUse { .. }), "{err}");
    drop(other);

    // Hot plug a second interface.
    let nic = g
        .create(&json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "NetworkInterface",
            "metadata": {"name": "web-1-extra", "namespace": "demo"},
            "spec": {"instance": "web-1", "network": "web", "model": "e1000", "order": 1},
        }))
        .await
        .expect("hot-plugged interface");
    env.merge(
        "NetworkInterface",
        Some("demo"),
        "web-1-extra",
        json!({"ipv4": "10.0.0.6", "macaddr": "02:00:00:aa:bb:dd"}),
    )
    .await;
    env.enqueue(
        "networkinterface-web-1-extra-1-hotplug",
        "interface_hot_plug",
        json!({"kind": "NetworkInterface", "name": "web-1-extra", "namespace": "demo",
               "uid": nic["metadata"]["uid"]}),
        json!({"interface": "web-1-extra", "instance": "web-1", "network": "web", "model": "e1000"}),
        &[],
    )
    .await;
    let op = env.wait_op("networkinterface-web-1-extra-1-hotplug").await;
    assert_eq!(op["status"]["result"]["plugged"], true);
    let xml = hv.xml(&domain_name(&inst_uid), true).await.expect("xml");
    assert_eq!(
        sf_agent::domain_xml::interface_macs(&xml),
        vec!["02:00:00:aa:bb:cc", "02:00:00:aa:bb:dd"]
    );
    let inst = env.get("Instance", Some("demo"), "web-1").await;
    assert_eq!(inst["status"]["interfaces"][1]["name"], "web-1-extra");
    assert_eq!(inst["status"]["interfaces"][1]["model"], "e1000");

    // pause, then a screenshot stored as a Blob.
    env.enqueue(
        "instance-web-1-2-pause",
        "instance_pause",
        inst_target.clone(),
        json!({}),
        &[],
    )
    .await;
    env.wait_op("instance-web-1-2-pause").await;
    env.wait_power("paused").await;
    env.enqueue(
        "instance-web-1-3-screenshot",
        "instance_screenshot",
        inst_target.clone(),
        json!({}),
        &[],
    )
    .await;
    let op = env.wait_op("instance-web-1-3-screenshot").await;
    let blob_name = op["status"]["result"]["blob"]
        .as_str()
        .expect("blob name")
        .to_owned();
    let blob = env.get("Blob", None, &blob_name).await;
    assert_eq!(blob["spec"]["ownerNamespace"], "demo");
    assert_eq!(blob["spec"]["mimeType"], "image/png");
    let blob_uid = blob["metadata"]["uid"].as_str().expect("uid").to_owned();
    let data = g
        .client()
        .call("get_blob_data", |mut c| {
            let uid = blob_uid.clone();
            async move { c.get_blob_data(pb::GetBlobDataRequest { uid }).await }
        })
        .await
        .expect("blob data");
    assert_eq!(&data.data[..8], b"\x89PNG\r\n\x1a\n");

    // The guest powers itself off: polling reports it.
    hv.destroy(&domain_name(&inst_uid))
        .await
        .expect("destroy behind the agent's back");
    env.wait_power("off").await;

    // --- Restart: stop the agent, drop every reference to the connection.
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("agent stops")
        .expect("join")
        .expect("agent run");
    drop(agent);
    drop(hv);
    // The controllers marked it created and the network as on this node; the user wants it on.
    env.merge(
        "Instance",
        Some("demo"),
        "web-1",
        json!({"state": "created"}),
    )
    .await;
    env.merge("Network", Some("demo"), "web", json!({"nodes": [NODE]}))
        .await;
    ip(&[
        "-n",
        &env.netns.0,
        "link",
        "del",
        &sf_hostnet::bridge_name(VXID),
    ]);
    ip(&[
        "-n",
        &env.netns.0,
        "link",
        "del",
        &sf_hostnet::vxlan_name(VXID),
    ]);
    assert!(!env.link_exists(&sf_hostnet::bridge_name(VXID)));

    let hv2 = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt again");
    assert!(
        hv2.list().await.expect("list").is_empty(),
        "the test driver forgot everything"
    );
    // Before the agent starts: the domain of an instance deleted meanwhile (its
    // tombstone says so), one the database does not know (a wrong or restored
    // database must not cost a guest), and a foreign domain.
    let deleted = env
        .placed_instance(
            "gone-1",
            json!({"cpus": 1, "memory": 256, "powerState": "off", "disks": [{"size": 1}]}),
        )
        .await;
    env.gateway
        .client()
        .call("delete_resource", |mut g| async move {
            g.delete_resource(pb::DeleteResourceRequest {
                key: Some(pb::ObjectKey {
                    kind: "Instance".into(),
                    namespace: "demo".into(),
                    name: "gone-1".into(),
                }),
                ..Default::default()
            })
            .await
        })
        .await
        .expect("delete gone-1");
    let unknown = "99999999-9999-4999-8999-999999999999";
    let foreign = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/test_driver.xml"
    ))
    .expect("golden");
    for uid in [deleted.as_str(), unknown] {
        hv2.define(
            &foreign
                .replace("sf:8d3f5a52-6c0e-4f4e-9a55-2f3d1c0b7e11", &domain_name(uid))
                .replace("8d3f5a52-6c0e-4f4e-9a55-2f3d1c0b7e11", uid),
        )
        .await
        .expect("an sf domain");
    }
    hv2.define(
        &foreign
            .replace(
                "sf:8d3f5a52-6c0e-4f4e-9a55-2f3d1c0b7e11",
                "someone-elses-vm",
            )
            .replace("<uuid>8d3f5a52-6c0e-4f4e-9a55-2f3d1c0b7e11</uuid>\n", ""),
    )
    .await
    .expect("foreign");

    let agent2 = env.agent(hv2.clone(), uuid1);
    let shutdown2 = Shutdown::new();
    agent2.register().await.expect("same uuid registers again");
    let report = agent2.reconcile_startup().await.expect("reconcile");
    assert_eq!(report.orphans_removed, vec![deleted.clone()]);
    assert_eq!(report.orphans_kept, vec![unknown.to_string()]);
    assert_eq!(report.redefined, vec![inst_uid.clone()]);
    assert_eq!(report.started, vec![inst_uid.clone()]);
    assert_eq!(report.networks_ensured, vec![VXID]);
    let names: Vec<String> = hv2
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .collect();
    let mut want = vec![
        domain_name(&inst_uid),
        domain_name(unknown),
        "someone-elses-vm".to_string(),
    ];
    want.sort();
    let mut names = names;
    names.sort();
    assert_eq!(names, want);
    assert!(
        env.link_exists(&sf_hostnet::bridge_name(VXID)),
        "network re-ensured"
    );
    // hv-2 no longer carries it: no longer a peer.
    let fdb = env.fdb();
    assert!(!fdb.contains("dst 10.250.0.2"), "stale peer removed: {fdb}");
    env.wait_power("running").await;

    // Now run it and delete the instance through an operation.
    let run2 = {
        let (a, s) = (agent2.clone(), shutdown2.clone());
        tokio::spawn(async move { a.run(s).await })
    };
    env.enqueue(
        "instance-web-1-4-delete",
        "instance_delete",
        inst_target.clone(),
        json!({}),
        &[],
    )
    .await;
    env.wait_op("instance-web-1-4-delete").await;
    assert_eq!(
        hv2.state(&domain_name(&inst_uid)).await.expect("state"),
        None
    );
    assert!(
        !env.dir
            .path()
            .join("storage/instances")
            .join(&inst_uid)
            .exists()
    );
    shutdown2.trigger();
    tokio::time::timeout(Duration::from_secs(30), run2)
        .await
        .expect("agent stops")
        .expect("join")
        .expect("agent run");
    let fetch = env
        .get("ClusterOperation", Some("demo"), "artifact-debian-1-fetch")
        .await;
    assert_eq!(fetch["status"]["state"], "queued", "{fetch}");
    assert_eq!(fetch["status"]["attempts"], 0, "{fetch}");

    // Clean the host plumbing (the namespace goes with the guard).
    env.merge(
        "Instance",
        Some("demo"),
        "web-1",
        json!({"state": "deleted"}),
    )
    .await;
    env.enqueue(
        "network-web-2-netdelete-hv-1",
        "network_delete",
        net_target,
        json!({"vxid": VXID}),
        &[],
    )
    .await;
    let cleanup = env.agent(hv2.clone(), uuid1);
    let sd = Shutdown::new();
    let run3 = {
        let (a, s) = (cleanup.clone(), sd.clone());
        tokio::spawn(async move { a.run(s).await })
    };
    env.wait_op("network-web-2-netdelete-hv-1").await;
    assert!(
        !env.link_exists(&sf_hostnet::bridge_name(VXID)),
        "network removed"
    );
    sd.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(30), run3).await;
}

struct SlowPause {
    agent: TestAgent,
    metrics: AgentMetrics,
    shutdown: Shutdown,
    run: tokio::task::JoinHandle<Result<(), AgentError>>,
    uid: String,
}

/// An agent executing a slow `instance_pause` (a stopped domain: 3 attempts 2 s apart).
async fn slow_pause(env: &Env) -> SlowPause {
    let g = &env.gateway;
    let instance = g
        .create(&json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "web-1", "namespace": "demo"},
            "spec": {"cpus": 1, "memory": 256, "disks": [{"size": 1}], "powerState": "off"},
        }))
        .await
        .expect("instance");
    let uid = instance["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    env.merge(
        "Instance",
        Some("demo"),
        "web-1",
        json!({"state": "creating", "node": NODE}),
    )
    .await;
    let target = json!({"kind": "Instance", "name": "web-1", "namespace": "demo", "uid": uid});
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    // Pausing a stopped domain is retried 3 times 2 s apart: slow enough to be caught
    // by the shutdown below, whose drain gives it only 1 s.
    let mut settings = LifecycleSettings::new(
        env.dir.path().join("storage"),
        RenderSettings::new(DomainType::Test),
    );
    settings.state_change_delay = Duration::from_secs(2);
    let mut net = HostNetConfig::new(
        NODE,
        "mesh0",
        "10.250.0.1".parse().expect("ip"),
        env.dir.path().join("hostnet"),
    );
    net.netns = Some(env.netns.0.clone());
    let mut agent_settings = env.settings("33333333-3333-4333-8333-333333333333");
    agent_settings.drain_timeout = Duration::from_secs(1);
    let metrics = AgentMetrics::default();
    let agent = Agent::new(
        agent_settings,
        g.clone(),
        Lifecycle::new(hv.clone(), settings),
        NetlinkHostNet::new(net).expect("hostnet"),
        metrics.clone(),
    );
    let shutdown = Shutdown::new();
    let run = {
        let (a, s) = (agent.clone(), shutdown.clone());
        tokio::spawn(async move { a.run(s).await })
    };
    env.enqueue(
        "instance-web-1-1-create",
        "instance_create",
        target.clone(),
        json!({"interfaces": [], "powerState": "off"}),
        &[],
    )
    .await;
    env.wait_op("instance-web-1-1-create").await;
    env.enqueue(
        "instance-web-1-2-pause",
        "instance_pause",
        target,
        json!({}),
        &[],
    )
    .await;
    // The stored operation stays `queued` while claimed: watch the in-flight gauge.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics.in_flight.get() < 1 {
        assert!(Instant::now() < deadline, "pause never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    SlowPause {
        agent,
        metrics,
        shutdown,
        run,
        uid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_unfinished_work_instead_of_dropping_it() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let SlowPause { shutdown, run, .. } = slow_pause(&env).await;
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("agent stops")
        .expect("join")
        .expect("agent run");
    let op = env
        .get("ClusterOperation", Some("demo"), "instance-web-1-2-pause")
        .await;
    assert_eq!(
        op["status"]["state"], "queued",
        "released, not dropped: {op}"
    );
    assert_eq!(
        op["status"]["errorReport"]["code"], "AgentShuttingDown",
        "{op}"
    );
    assert_eq!(op["status"]["errorReport"]["retryable"], true, "{op}");
    assert_eq!(op["status"]["attempts"], 1, "{op}");
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_sf-agent"))
        .env_clear()
        .env("SHAKENFIST_MARIADB_GATEWAY_SECRET", SECRET)
        .output()
        .expect("run sf-agent");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SHAKENFIST_NODE_MESH_IP"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_sf-agent"))
        .env_clear()
        .env("SHAKENFIST_MARIADB_GATEWAY_SECRET", SECRET)
        .env("SHAKENFIST_NODE_MESH_IP", "10.0.0.1")
        .env("SHAKENFIST_LIBVIRT_DOMAIN_TYPE", "xen")
        .output()
        .expect("run sf-agent");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHAKENFIST_LIBVIRT_DOMAIN_TYPE (--libvirt-domain-type)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_registers_serves_metrics_and_stops_on_sigterm() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr")
    };
    let storage = env.dir.path().join("bin-storage");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sf-agent"))
        .env("SHAKENFIST_NODE_NAME", "hv-bin")
        .env("SHAKENFIST_NODE_NETNS", &env.netns.0)
        .env("SHAKENFIST_NODE_MESH_NIC", "mesh0")
        .env("SHAKENFIST_NODE_MESH_IP", "10.250.0.1")
        .env("SHAKENFIST_STORAGE_PATH", &storage)
        .env("SHAKENFIST_LIBVIRT_URI", &env.uri)
        .env("SHAKENFIST_LIBVIRT_DOMAIN_TYPE", "test")
        .env("SHAKENFIST_AGENT_METRICS_PORT", addr.port().to_string())
        .env("SHAKENFIST_MARIADB_GATEWAY_HOSTS", &env.gateway_hosts)
        .env("SHAKENFIST_MARIADB_GATEWAY_SECRET", SECRET)
        .env("SHAKENFIST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sf-agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        if let Some(n) = env
            .gateway
            .get::<Value>("Node", None, "hv-bin")
            .await
            .expect("get node")
            .filter(|n| n["status"]["lastSeen"].is_string())
        {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "the binary never registered its Node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let uuid = std::fs::read_to_string(storage.join("node_uuid")).expect("node_uuid stored");
    assert_eq!(
        node["metadata"]["annotations"]["shakenfist.io/node-uuid"],
        uuid.trim()
    );
    assert!(
        storage.join("exceptions").is_dir(),
        "panic reports directory"
    );
    let metrics = loop {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut body = String::new();
            s.read_to_string(&mut body).await.expect("read");
            break body;
        }
        assert!(Instant::now() < deadline, "no metrics endpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("agent_claims_total"), "{metrics}");
    assert!(
        metrics.contains(r#"sf_build_info{service="sf-agent""#),
        "{metrics}"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("sf-agent stops after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_operation_is_stopped() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let slow = slow_pause(&env).await;
    let started = Instant::now();
    let uid = slow.uid.clone();
    let reply = env
        .gateway
        .client()
        .call("abort", |mut c| {
            let target_uid = uid.clone();
            async move {
                c.abort(pb::AbortRequest {
                    target_uid,
                    reason: "test".into(),
                })
                .await
            }
        })
        .await
        .expect("abort");
    assert_eq!(reply.aborted.len(), 1, "{reply:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.metrics.in_flight.get() > 0 {
        assert!(
            Instant::now() < deadline,
            "the aborted operation kept running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped at its next heartbeat (500 ms), well before the 4 s of retries ended.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let op = env
        .get("ClusterOperation", Some("demo"), "instance-web-1-2-pause")
        .await;
    assert_eq!(op["status"]["state"], "abort", "{op}");
    drop(slow.agent);
    slow.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), slow.run)
        .await
        .expect("agent stops")
        .expect("join")
        .expect("agent run");
}

#[tokio::test]
async fn run_waits_for_sf_database_and_stops_on_shutdown() {
    // Nothing listens on port 1: start-up keeps retrying until shutdown.
    let policy = sf_database_client::RetryPolicy {
        attempts: 1,
        ..sf_database_client::RetryPolicy::default()
    };
    let client = sf_database_client::GatewayClient::from_host_list("127.0.0.1:1", SECRET, policy)
        .expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let net = HostNetConfig::new(
        NODE,
        "mesh0",
        "10.250.0.1".parse().expect("ip"),
        dir.path().join("hostnet"),
    );
    let agent = Agent::new(
        sf_agent::agent::AgentSettings {
            node_name: NODE.into(),
            node_uuid: "55555555-5555-4555-8555-555555555555".into(),
            storage_path: dir.path().to_owned(),
            ..Default::default()
        },
        sf_agent::gateway::Gateway::new(client),
        Lifecycle::new(
            LibvirtHypervisor::new("test:///default"),
            LifecycleSettings::new(dir.path().to_owned(), RenderSettings::new(DomainType::Test)),
        ),
        NetlinkHostNet::new(net).expect("hostnet"),
        AgentMetrics::default(),
    );
    let shutdown = Shutdown::new();
    let run = {
        let (a, s) = (agent.clone(), shutdown.clone());
        tokio::spawn(async move { a.run(s).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !run.is_finished(),
        "start-up gave up while sf-database was away"
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops on shutdown")
        .expect("join")
        .expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_node_name_is_taken_over() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    env.gateway
        .create(&json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Node",
            "metadata": {"name": NODE, "annotations": {"shakenfist.io/node-uuid": "66666666-6666-4666-8666-666666666666"}},
            "spec": {"roles": ["hypervisor"]},
        }))
        .await
        .expect("old node");
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    env.merge(
        "Node",
        None,
        NODE,
        json!({"lastSeen": an_hour_ago, "state": "missing"}),
    )
    .await;
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let agent = env.agent(hv, "77777777-7777-4777-8777-777777777777");
    agent.register().await.expect("a stale name is taken over");
    let node = env.get("Node", None, NODE).await;
    assert_eq!(
        node["metadata"]["annotations"]["shakenfist.io/node-uuid"],
        "77777777-7777-4777-8777-777777777777"
    );
    let seen = node["status"]["lastSeen"].as_str().expect("lastSeen");
    assert_ne!(seen, an_hour_ago, "heartbeat written");

    // The displaced agent, should it still run, stops at its next heartbeat instead
    // of running the node a second time.
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let displaced = env.agent(hv, "66666666-6666-4666-8666-666666666666");
    let err = displaced.heartbeat().await.expect_err("no longer ours");
    assert!(
        matches!(err, sf_agent::agent::AgentError::NodeTakenOver { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("77777777-7777-4777-8777-777777777777"),
        "{err}"
    );
    agent.heartbeat().await.expect("the new owner heartbeats");
}

/// With `SHAKENFIST_AGENT_TLS` on, the binary serves /metrics over HTTPS with its own
/// certificate; one it finds within the renewal window is replaced at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_metrics_over_tls_and_renews_its_certificate() {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !privileged() {
        return;
    }
    let env = setup().await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr")
    };
    let storage = env.dir.path().join("tls-storage");
    let cert_path = storage.join("tls").join("agent.crt");
    let key_path = storage.join("tls").join("agent.key");
    // A self-signed certificate 5 days from expiry, as a year-old agent would have.
    std::fs::create_dir_all(storage.join("tls")).expect("tls dir");
    let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (old_cert, old_key) =
        sf_daemon::tls::self_signed(&sans, "sf-agent hv-tls", 5).expect("old certificate");
    std::fs::write(&cert_path, &old_cert).expect("write cert");
    std::fs::write(&key_path, &old_key).expect("write key");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sf-agent"))
        .env("SHAKENFIST_NODE_NAME", "hv-tls")
        .env("SHAKENFIST_NODE_NETNS", &env.netns.0)
        .env("SHAKENFIST_NODE_MESH_NIC", "mesh0")
        .env("SHAKENFIST_NODE_MESH_IP", "10.250.0.1")
        .env("SHAKENFIST_STORAGE_PATH", &storage)
        .env("SHAKENFIST_LIBVIRT_URI", &env.uri)
        .env("SHAKENFIST_LIBVIRT_DOMAIN_TYPE", "test")
        .env("SHAKENFIST_AGENT_METRICS_PORT", addr.port().to_string())
        .env("SHAKENFIST_AGENT_TLS", "true")
        .env("SHAKENFIST_MARIADB_GATEWAY_HOSTS", &env.gateway_hosts)
        .env("SHAKENFIST_MARIADB_GATEWAY_SECRET", SECRET)
        .env("SHAKENFIST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sf-agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The renewed pair is on disk, the key private.
    let pem = loop {
        let pem = std::fs::read(&cert_path).unwrap_or_default();
        if !pem.is_empty() && pem != old_cert.as_bytes() {
            break pem;
        }
        assert!(Instant::now() < deadline, "the certificate was not renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leaf = CertificateDer::from_pem_slice(&pem).expect("renewed certificate");
    let facts = sf_daemon::tls::certificate_facts(&leaf).expect("facts");
    let days = (facts.not_after - chrono::Utc::now()).num_days();
    assert!(days > 300, "renewed for a year, got {days} days");
    let mode = std::fs::metadata(&key_path)
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A client trusting only the renewed certificate reads /metrics over TLS.
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(leaf.clone())
        .expect("trust the agent's certificate");
    let client = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let metrics = loop {
        if let Ok(tcp) = tokio::net::TcpStream::connect(addr).await {
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
            tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut body = Vec::new();
            // The server may close without close_notify; what was read is enough.
            let _ = tls.read_to_end(&mut body).await;
            break String::from_utf8_lossy(&body).into_owned();
        }
        assert!(Instant::now() < deadline, "no metrics endpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("agent_claims_total"), "{metrics}");
    // Plain HTTP gets no metrics.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("agent_claims_total"),
        "metrics leaked over plain HTTP"
    );
    let _ = child.kill().await;
}

fn blob_delete(blob: &str) -> sf_schema::ClusterOperation {
    let spec: sf_schema::operation::ClusterOperationSpec = serde_json::from_value(json!({
        "operationType": "blob_delete",
        "target": {"kind": "Blob", "name": blob, "uid": "blob-uid"},
        "node": NODE,
        "payload": {"blob": blob},
    }))
    .expect("spec");
    let mut op = sf_schema::ClusterOperation::new(&format!("blob-{blob}-1-rm-{NODE}"), spec);
    op.metadata.namespace = Some("system".into());
    op
}

fn qemu_img(args: &[&str], paths: &[&std::path::Path], size: Option<&str>) {
    let status = Command::new("qemu-img")
        .args(args)
        .args(paths)
        .args(size)
        .status()
        .expect("qemu-img");
    assert!(status.success(), "qemu-img {args:?}");
}

/// `blob_delete` through the agent's handler: an unused file goes (again: success),
/// one an instance disk is backed by or a domain names stays, and the payload can
/// never name a file outside the blobs directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_delete_removes_only_files_nothing_uses() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let agent = env.agent(hv.clone(), "44444444-4444-4444-8444-444444444444");
    let storage = env.dir.path().join("storage");
    let blobs = storage.join("blobs");
    std::fs::create_dir_all(&blobs).expect("blobs dir");

    let free = "0b0b0b0b-0000-4000-8000-000000000001";
    std::fs::write(blobs.join(free), b"unused bytes").expect("free blob");
    let done = agent.execute(&blob_delete(free)).await.expect("removed");
    assert_eq!(done["removed"], true, "{done}");
    assert!(!blobs.join(free).exists());
    let again = agent.execute(&blob_delete(free)).await.expect("again");
    assert_eq!(again["removed"], false, "already gone is success: {again}");

    // Backing file of an instance disk.
    let base = "0b0b0b0b-0000-4000-8000-000000000002";
    qemu_img(
        &["create", "-q", "-f", "qcow2"],
        &[&blobs.join(base)],
        Some("1M"),
    );
    let disk_dir = storage.join("instances").join("i-1");
    std::fs::create_dir_all(&disk_dir).expect("instance dir");
    let overlay = disk_dir.join("vda.qcow2");
    qemu_img(
        &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"],
        &[&blobs.join(base), &overlay],
        None,
    );
    let err = agent.execute(&blob_delete(base)).await.expect_err("in use");
    assert_eq!(err.code(), "BlobInUse", "{err}");
    assert!(!err.retryable());
    assert!(
        err.to_string().contains("in use on this node by 1"),
        "{err}"
    );
    match &err {
        sf_agent::agent::HandlerError::BlobRemove(sf_agent::blobs::RemoveError::InUse {
            users,
            ..
        }) => assert_eq!(users, &vec![overlay.display().to_string()]),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(blobs.join(base).exists(), "a backing file stays");

    // A CD-ROM of a defined domain.
    let iso = "0b0b0b0b-0000-4000-8000-000000000003";
    std::fs::write(blobs.join(iso), b"iso bytes").expect("iso blob");
    let xml = format!(
        "<domain type='test'><name>cdrom-user</name><memory>65536</memory>\
         <os><type>hvm</type></os><devices><disk type='file' device='cdrom'>\
         <source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk></devices></domain>",
        blobs.join(iso).display()
    );
    hv.define(&xml).await.expect("define");
    let err = agent
        .execute(&blob_delete(iso))
        .await
        .expect_err("named by a domain");
    match &err {
        sf_agent::agent::HandlerError::BlobRemove(sf_agent::blobs::RemoveError::InUse {
            users,
            ..
        }) => assert_eq!(users, &vec!["domain cdrom-user".to_string()]),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(blobs.join(iso).exists());
    hv.undefine("cdrom-user").await.expect("undefine");
    agent.execute(&blob_delete(iso)).await.expect("now free");
    assert!(!blobs.join(iso).exists());

    // Nothing outside the blobs directory.
    std::fs::write(storage.join("node_secret"), b"x").expect("file");
    let err = agent
        .execute(&blob_delete("../node_secret"))
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), "BadBlobName");
    assert!(storage.join("node_secret").exists());
}

/// `instance_snapshot` through the agent's handler: each chosen disk becomes a
/// standalone qcow2 blob, the device's snapshot Artifact is made once, a re-run names
/// the same blobs, and a device that is not a disk fails for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_snapshot_captures_disks_into_artifacts() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let g = &env.gateway;
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let agent = env.agent(hv, "55555555-5555-4555-8555-555555555555");
    let instance = g
        .create(&json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "snap-1", "namespace": "demo"},
            "spec": {"cpus": 1, "memory": 256, "disks": [{"size": 1}, {"size": 1}]},
        }))
        .await
        .expect("instance");
    let uid = instance["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    // The disks instance_create would have made: vda, the config drive vdb, vdc.
    let storage = env.dir.path().join("storage");
    let dir = storage.join("instances").join(&uid);
    std::fs::create_dir_all(&dir).expect("instance dir");
    for i in 0..2 {
        qemu_img(
            &["create", "-q", "-f", "qcow2"],
            &[&dir.join(format!("disk-{i}.qcow2"))],
            Some("1M"),
        );
    }
    let snapshot = |payload: serde_json::Value| {
        let spec: sf_schema::operation::ClusterOperationSpec = serde_json::from_value(json!({
            "operationType": "instance_snapshot",
            "target": {"kind": "Instance", "name": "snap-1", "namespace": "demo", "uid": uid},
            "node": NODE,
            "payload": payload,
        }))
        .expect("spec");
        let mut op = sf_schema::ClusterOperation::new("instance-snap-1-1-snapshot", spec);
        op.metadata.namespace = Some("demo".into());
        op.metadata.uid = Some("0a0a0a0a-0000-4000-8000-000000000001".into());
        op
    };

    let done = agent
        .execute(&snapshot(json!({"all": true, "maxVersions": 2})))
        .await
        .expect("snapshot");
    let result = sf_schema::snapshot::SnapshotResult::from_result(&done).expect("result");
    assert_eq!(result.node, NODE);
    let devices: Vec<&str> = result.snapshots.iter().map(|t| t.device.as_str()).collect();
    assert_eq!(devices, ["vda", "vdc"], "{done}");
    for taken in &result.snapshots {
        assert_eq!(
            taken.blob,
            sf_schema::common::derived_uuid(&format!(
                "0a0a0a0a-0000-4000-8000-000000000001/{}",
                taken.device
            ))
        );
        let file = storage.join("blobs").join(&taken.blob);
        assert_eq!(std::fs::metadata(&file).expect("blob").len(), taken.size);
        assert_eq!(taken.artifact, format!("{uid}-{}", taken.device));
        let artifact: sf_schema::Artifact = g
            .get("Artifact", Some("demo"), &taken.artifact)
            .await
            .expect("get")
            .expect("artifact made");
        assert_eq!(
            artifact.spec.source_url,
            format!("sf://instance/{uid}/{}", taken.device)
        );
        assert_eq!(
            artifact.spec.artifact_type,
            sf_schema::artifact::ArtifactType::Snapshot
        );
        assert_eq!(artifact.spec.max_versions, 2);
        assert_eq!(
            artifact
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("shakenfist.io/snapshot-of")),
            Some(&"snap-1".to_owned())
        );
        assert_eq!(
            artifact.metadata.uid.as_deref(),
            Some(taken.artifact_uid.as_str())
        );
        // The file has its Blob at once (so garbage collection sees it even if no
        // version ever uses it), on this node, not yet referenced.
        let blob: sf_schema::Blob = g
            .get("Blob", None, &taken.blob)
            .await
            .expect("get")
            .expect("blob recorded");
        let status = blob.status.expect("blob status");
        assert_eq!(status.nodes, vec![NODE.to_owned()]);
        assert_eq!(status.size, Some(taken.size));
        assert_eq!(status.checksums.get("sha512"), Some(&taken.sha512));
        assert_eq!(status.reference_count, 0);
        assert_eq!(blob.spec.owner_namespace, "demo");
        assert_eq!(blob.spec.mime_type.as_deref(), Some("application/x-qcow2"));
    }

    // A re-run (a lost completion) reports the same snapshots into the same artifacts.
    let again = agent
        .execute(&snapshot(json!({"all": true})))
        .await
        .expect("again");
    assert_eq!(
        sf_schema::snapshot::SnapshotResult::from_result(&again).expect("result"),
        result
    );

    // The config drive is not a disk to snapshot: a permanent failure naming the disks.
    let err = agent
        .execute(&snapshot(json!({"device": "vdb"})))
        .await
        .expect_err("config drive");
    assert_eq!(err.code(), "NoSuchDevice", "{err}");
    assert!(!err.retryable());
    assert!(err.to_string().contains("its disks are vda, vdc"), "{err}");
    let err = agent
        .execute(&snapshot(json!({"thin": true})))
        .await
        .expect_err("thin");
    assert_eq!(err.code(), "BadOperation", "{err}");
}

/// The backing file of a qcow2 disk, from `qemu-img info`.
fn backing_of(disk: &std::path::Path) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .expect("qemu-img info");
    assert!(out.status.success(), "qemu-img info {}", disk.display());
    let info: Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    info["backing-filename"].as_str().map(str::to_owned)
}

/// A disk base given as an artifact uid resolves within the instance's own
/// namespace only (or to a shared artifact): another namespace's image never backs
/// an instance's disk, however its uid became known, and a base that resolves to
/// nothing fails the create instead of leaving the guest a blank disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_base_by_uid_never_reaches_another_namespace() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let g = &env.gateway;
    g.client()
        .call("create_namespace", |mut c| async move {
            c.create_namespace(pb::NamespaceRequest {
                namespace: "other".into(),
            })
            .await
        })
        .await
        .expect("namespace other");
    let storage = env.dir.path().join("storage");
    std::fs::create_dir_all(storage.join("blobs")).expect("blobs dir");
    let mut uids = Vec::new();
    for (ns, blob) in [
        ("other", "0c0c0c0c-0000-4000-8000-000000000001"),
        ("demo", "0c0c0c0c-0000-4000-8000-000000000002"),
    ] {
        qemu_img(
            &["create", "-q", "-f", "qcow2"],
            &[&storage.join("blobs").join(blob)],
            Some("1M"),
        );
        uids.push(
            env.artifact(
                ns,
                "img",
                json!([{"index": 1, "blob": blob, "size": 1_048_576,
                        "created": "2026-11-26T00:00:00Z"}]),
            )
            .await,
        );
    }
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let agent = env.agent(hv, "66666666-6666-4666-8666-666666666666");
    let create = |name: &str, base: &str| {
        let name = name.to_owned();
        let base = base.to_owned();
        let env = &env;
        let agent = &agent;
        async move {
            let uid = env
                .placed_instance(
                    &name,
                    json!({"cpus": 1, "memory": 256, "powerState": "off",
                           "disks": [{"size": 1, "base": base}]}),
                )
                .await;
            let op = instance_op(
                &format!("instance-{name}-1-create"),
                "instance_create",
                &name,
                &uid,
                json!({"interfaces": [], "powerState": "off"}),
            );
            (uid, agent.execute(&op).await)
        }
    };
    // Another namespace's artifact by uid: the create fails, no disk is made.
    let (uid, refused) = create("web-1", &uids[0]).await;
    let err = refused.expect_err("another namespace's image");
    assert_eq!(err.code(), "ImageNotFound", "{err}");
    assert!(!err.retryable());
    assert!(err.to_string().contains("spec.disks[0].base"), "{err}");
    let disks = storage.join("instances").join(&uid);
    assert!(
        !disks.join("disk-0.qcow2").exists(),
        "no blank disk instead"
    );
    // Its own namespace's artifact by uid backs the disk.
    let (uid, made) = create("web-2", &uids[1]).await;
    made.expect("instance_create");
    let own =
        backing_of(&storage.join("instances").join(&uid).join("disk-0.qcow2")).unwrap_or_default();
    assert!(
        own.ends_with("0c0c0c0c-0000-4000-8000-000000000002"),
        "the instance's own namespace's artifact backs its disk: {own}"
    );
}

/// A cdrom keeps its image through operations after the create (power on redefines
/// the domain from a context whose disk bases need not resolve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdrom_keeps_its_image_after_the_create() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let storage = env.dir.path().join("storage");
    std::fs::create_dir_all(storage.join("blobs")).expect("blobs dir");
    let blob = "0d0d0d0d-0000-4000-8000-000000000001";
    std::fs::write(storage.join("blobs").join(blob), vec![0u8; 4096]).expect("iso");
    env.artifact(
        "demo",
        "iso",
        json!([{"index": 1, "blob": blob, "size": 4096, "created": "2026-11-26T00:00:00Z"}]),
    )
    .await;
    let uid = env
        .placed_instance(
            "cd-1",
            json!({"cpus": 1, "memory": 256, "powerState": "off",
                   "disks": [{"size": 1}, {"base": "iso", "type": "cdrom"}]}),
        )
        .await;
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let agent = env.agent(hv.clone(), "77777777-7777-4777-8777-777777777777");
    let op = |n: u32, operation_type: &str, payload: Value| {
        instance_op(
            &format!("instance-cd-1-{n}"),
            operation_type,
            "cd-1",
            &uid,
            payload,
        )
    };
    agent
        .execute(&op(
            1,
            "instance_create",
            json!({"interfaces": [], "powerState": "off"}),
        ))
        .await
        .expect("instance_create");
    let record = storage.join("instances").join(&uid).join("images.json");
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(&record).expect("images.json")).expect("JSON");
    assert_eq!(recorded["disks"][0], Value::Null, "{recorded}");
    assert_eq!(recorded["disks"][1]["reference"], "iso", "{recorded}");
    assert!(
        recorded["disks"][1]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with(blob)),
        "{recorded}"
    );
    // The record alone keeps the blob from removal (no qcow2 backs onto a cdrom).
    let kept = sf_agent::blobs::remove(
        &storage.join("blobs"),
        &storage.join("instances"),
        blob,
        Vec::new(),
    )
    .await
    .expect_err("a recorded image is in use");
    assert_eq!(kept.code(), "BlobInUse", "{kept}");
    assert!(storage.join("blobs").join(blob).exists());
    // A new version lands, its blob here too; version 1 is pruned from the artifact.
    let newer = "0d0d0d0d-0000-4000-8000-000000000002";
    std::fs::write(storage.join("blobs").join(newer), vec![1u8; 4096]).expect("iso 2");
    env.merge(
        "Artifact",
        Some("demo"),
        "iso",
        json!({"versions": [
            {"index": 2, "blob": newer, "size": 4096, "created": "2026-11-26T01:00:00Z"}
        ]}),
    )
    .await;
    agent
        .execute(&op(2, "instance_power_on", json!({})))
        .await
        .expect("instance_power_on");
    let xml = hv.xml(&domain_name(&uid), false).await.expect("domain XML");
    assert!(
        xml.contains(&format!("blobs/{blob}")) && !xml.contains(newer),
        "the cdrom keeps the media it was created with, whatever the artifact's latest:\n{xml}"
    );
}

/// `instance_create` makes disks from the blob its plan replicated to the node
/// (payload `blobs`), not from a version that landed since: without the pin, the
/// latest version's blob, absent here, makes the create wait (`NotReady`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_uses_the_blob_its_plan_replicated() {
    if !privileged() {
        return;
    }
    let env = setup().await;
    let storage = env.dir.path().join("storage");
    std::fs::create_dir_all(storage.join("blobs")).expect("blobs dir");
    let (held, newer) = (
        "0e0e0e0e-0000-4000-8000-000000000001",
        "0e0e0e0e-0000-4000-8000-000000000002",
    );
    qemu_img(
        &["create", "-q", "-f", "qcow2"],
        &[&storage.join("blobs").join(held)],
        Some("1M"),
    );
    // Version 2 landed after the plan replicated version 1 here.
    env.artifact(
        "demo",
        "img",
        json!([
            {"index": 1, "blob": held, "size": 1_048_576, "created": "2026-11-26T00:00:00Z"},
            {"index": 2, "blob": newer, "size": 1_048_576, "created": "2026-11-26T00:05:00Z"}
        ]),
    )
    .await;
    let uid = env
        .placed_instance(
            "pin-1",
            json!({"cpus": 1, "memory": 256, "powerState": "off",
                   "disks": [{"size": 1, "base": "img"}]}),
        )
        .await;
    let hv = LibvirtHypervisor::connect(env.uri.clone())
        .await
        .expect("libvirt");
    let agent = env.agent(hv, "88888888-8888-4888-8888-888888888888");
    let create = |payload: Value| {
        instance_op(
            "instance-pin-1-1-create",
            "instance_create",
            "pin-1",
            &uid,
            payload,
        )
    };
    let unpinned = agent
        .execute(&create(json!({"interfaces": [], "powerState": "off"})))
        .await
        .expect_err("the latest version is not on this node");
    assert_eq!(unpinned.code(), "NotReady", "{unpinned}");
    assert!(unpinned.to_string().contains(newer), "{unpinned}");
    agent
        .execute(&create(
            json!({"interfaces": [], "powerState": "off", "blobs": {"img": held}}),
        ))
        .await
        .expect("instance_create pinned to the replicated blob");
    let backing =
        backing_of(&storage.join("instances").join(&uid).join("disk-0.qcow2")).unwrap_or_default();
    assert!(backing.ends_with(held), "{backing}");

    // Version 1 pruned before a second instance's create ran: its pinned file, still
    // here, is used, not the latest version the plan did not choose.
    env.merge(
        "Artifact",
        Some("demo"),
        "img",
        json!({"versions": [
            {"index": 2, "blob": newer, "size": 1_048_576, "created": "2026-11-26T00:05:00Z"}
        ]}),
    )
    .await;
    let uid2 = env
        .placed_instance(
            "pin-2",
            json!({"cpus": 1, "memory": 256, "powerState": "off",
                   "disks": [{"size": 1, "base": "img"}]}),
        )
        .await;
    agent
        .execute(&instance_op(
            "instance-pin-2-1-create",
            "instance_create",
            "pin-2",
            &uid2,
            json!({"interfaces": [], "powerState": "off", "blobs": {"img": held}}),
        ))
        .await
        .expect("instance_create pinned to a pruned version's file");
    let backing =
        backing_of(&storage.join("instances").join(&uid2).join("disk-0.qcow2")).unwrap_or_default();
    assert!(backing.ends_with(held), "{backing}");
}
