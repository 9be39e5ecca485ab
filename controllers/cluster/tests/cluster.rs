//! sf-cluster integration tests: private MariaDB, in-process sf-database, sf-api
//! (authenticated) and sf-cluster, and a test agent speaking the agent's gRPC calls.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{NodeSpecForTest, leases, request_operation};
use kube::ResourceExt;
use sf_schema::instance::{InstanceState, ObservedPowerState};
use sf_schema::operation::OperationState;

const WAIT: Duration = Duration::from_secs(30);

fn network_node() -> NodeSpecForTest {
    NodeSpecForTest {
        roles: vec!["hypervisor", "network"],
        ..NodeSpecForTest::default()
    }
}

fn created_and_running(i: &sf_schema::Instance) -> bool {
    i.status.as_ref().is_some_and(|s| {
        s.state == InstanceState::Created && s.power_state == Some(ObservedPowerState::Running)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_and_instance_reach_created_with_ordered_operations() {
    let mut env = common::start().await;
    let hv1 = env.start_agent("hv-1", network_node()).await;
    let hv2 = env.start_agent("hv-2", NodeSpecForTest::default()).await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);

    env.create_network("web", "10.0.0.0/24").await;
    // web-2 is placed on hv-2, which is not the network node: its plan plumbs the
    // network there first.
    env.create_instance_on("web-2", &["web"], Some("hv-2"))
        .await;
    env.create_instance("web-1", &["web"]).await;
    let instance = env
        .instance_when(
            "web-1",
            "web-1 created and running",
            WAIT,
            created_and_running,
        )
        .await;
    let node = instance
        .status
        .as_ref()
        .and_then(|s| s.node.clone())
        .expect("placed");
    assert!(
        instance
            .finalizers()
            .iter()
            .any(|f| f == sf_plan::FINALIZER)
    );

    // Its operations: one instance_create, depending on the network's create on its
    // node when that was not plumbed yet; the queue ran them in dependency order.
    let uid = instance.uid().expect("uid");
    let ops = env.owned_operations(&uid).await;
    let creates: Vec<_> = ops
        .iter()
        .filter(|o| o.spec.operation_type.as_str() == "instance_create")
        .collect();
    assert_eq!(
        creates.len(),
        1,
        "{:?}",
        ops.iter().map(|o| o.name_any()).collect::<Vec<_>>()
    );
    let create = creates[0];
    assert!(
        op_like(&create.name_any(), "instance-web-1-", "create"),
        "{}",
        create.name_any()
    );
    assert_eq!(create.spec.node.as_deref(), Some(node.as_str()));
    let claims: Vec<_> = hv1.claims().into_iter().chain(hv2.claims()).collect();
    let claimed_at = |name: &str| {
        claims
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.at)
            .unwrap_or_else(|| panic!("{name} was never claimed"))
    };
    for dep in &create.spec.depends_on {
        assert!(
            claimed_at(dep) < claimed_at(&create.name_any()),
            "{dep} ran after {}",
            create.name_any()
        );
    }
    // Every netcreate on the instance's node happened before the create.
    for c in claims
        .iter()
        .filter(|c| c.operation_type == "network_create_on_node" && c.node == node)
    {
        assert!(c.at < claimed_at(&create.name_any()));
    }
    // The boot interface holds an address from the network.
    let ls = leases(&env).await;
    assert!(
        ls.iter().any(|(a, phase, owner)| owner == "web-1-0"
            && phase == "held"
            && a.starts_with("10.0.0.")),
        "{ls:?}"
    );
    // The network records the nodes it is plumbed on: the network node and the
    // instance's node.
    let network = env
        .eventually("network nodes recorded", WAIT, || async {
            let n = env.networks().get("web").await.ok()?;
            let nodes = n.status.clone()?.nodes;
            (nodes.contains(&node) && nodes.contains(&"hv-1".to_string())).then_some(n)
        })
        .await;
    let status = network.status.expect("status");
    assert!(status.vxid.is_some());
    assert_eq!(status.state.as_str(), "created");

    // web-2 on hv-2: its create depends on the network's create on hv-2.
    let web2 = env
        .instance_when(
            "web-2",
            "web-2 created and running",
            WAIT,
            created_and_running,
        )
        .await;
    assert_eq!(
        web2.status.as_ref().and_then(|s| s.node.as_deref()),
        Some("hv-2")
    );
    let ops2 = env.owned_operations(&web2.uid().expect("uid")).await;
    let names2: Vec<String> = ops2.iter().map(|o| o.name_any()).collect();
    assert!(
        names2
            .iter()
            .all(|n| op_like(n, "instance-web-2-", "create")
                || op_like(n, "instance-web-2-", "netcreate-web")),
        "{names2:?}"
    );
    let create2 = ops2
        .iter()
        .find(|o| op_like(&o.name_any(), "instance-web-2-", "create"))
        .expect("web-2 create");
    let create2_name = create2.name_any();
    let claims: Vec<_> = hv1.claims().into_iter().chain(hv2.claims()).collect();
    let net_on_hv2: Vec<_> = claims
        .iter()
        .filter(|c| c.operation_type == "network_create_on_node" && c.node == "hv-2")
        .collect();
    assert_eq!(
        net_on_hv2.len(),
        1,
        "one network create on hv-2: {net_on_hv2:?}"
    );
    assert_eq!(create2.spec.depends_on, vec![net_on_hv2[0].name.clone()]);
    let create2_at = claims
        .iter()
        .find(|c| c.name == create2_name)
        .map(|c| c.at)
        .expect("web-2 create claimed");
    assert!(net_on_hv2[0].at < create2_at);
    env.eventually("hv-2 recorded in the network's nodes", WAIT, || async {
        let n = env.networks().get("web").await.ok()?;
        n.status?.nodes.contains(&"hv-2".to_string()).then_some(())
    })
    .await;

    // Level-triggered: with nothing changing, no new operation appears.
    let before: BTreeSet<String> = env
        .all_operations()
        .await
        .iter()
        .map(|o| o.name_any())
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: BTreeSet<String> = env
        .all_operations()
        .await
        .iter()
        .map(|o| o.name_any())
        .collect();
    assert_eq!(before, after);
    let rv1 = env
        .instances()
        .get("web-1")
        .await
        .expect("get")
        .resource_version();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rv2 = env
        .instances()
        .get("web-1")
        .await
        .expect("get")
        .resource_version();
    assert_eq!(
        rv1, rv2,
        "a reconcile with nothing changed wrote the instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_change_emits_exactly_one_operation() {
    let mut env = common::start().await;
    env.start_agent("hv-1", network_node()).await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    env.create_instance("vm", &[]).await;
    let instance = env
        .instance_when("vm", "vm created and running", WAIT, created_and_running)
        .await;
    env.set_power("vm", "off").await;
    env.instance_when("vm", "vm off", WAIT, |i| {
        i.status.as_ref().and_then(|s| s.power_state.clone()) == Some(ObservedPowerState::Off)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ops = env.owned_operations(&instance.uid().expect("uid")).await;
    let offs: Vec<String> = ops
        .iter()
        .filter(|o| o.spec.operation_type.as_str() == "instance_power_off")
        .map(|o| o.name_any())
        .collect();
    assert_eq!(offs.len(), 1, "{offs:?}");
    assert!(op_like(&offs[0], "instance-vm-", "poweroff"), "{offs:?}");
    assert_eq!(
        ops.len(),
        2,
        "{:?}",
        ops.iter().map(|o| o.name_any()).collect::<Vec<_>>()
    );
    let i = env.instances().get("vm").await.expect("get");
    let status = i.status.expect("status");
    // The power-off is the latest intent, named at the sequence status records.
    assert_eq!(
        offs[0],
        format!("instance-vm-{}-poweroff", status.intent_seq)
    );
    assert_eq!(status.observed_generation, i.metadata.generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_aborts_all_but_a_snapshot_and_releases_addresses_into_the_halo() {
    let mut env = common::start().await;
    let hv1 = env.start_agent("hv-1", network_node()).await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    env.create_network("web", "10.1.0.0/24").await;
    env.create_instance("db", &["web"]).await;
    let instance = env
        .instance_when("db", "db created and running", WAIT, created_and_running)
        .await;
    let address = leases(&env)
        .await
        .into_iter()
        .find(|(_, _, owner)| owner == "db-0")
        .map(|(a, _, _)| a)
        .expect("db-0 holds an address");

    // A snapshot is running (held by the agent) and a reboot waits behind it.
    hv1.hold_snapshots.store(true, Ordering::SeqCst);
    request_operation(
        &env,
        &instance,
        "instance-db-snapshot-1",
        "instance_snapshot",
    )
    .await;
    env.eventually("snapshot claimed", WAIT, || async {
        hv1.claims()
            .iter()
            .any(|c| c.name == "instance-db-snapshot-1")
            .then_some(())
    })
    .await;
    request_operation(&env, &instance, "instance-db-reboot-1", "instance_reboot").await;

    env.instances()
        .delete("db", &Default::default())
        .await
        .expect("delete");
    // The reboot is aborted, the snapshot kept; the instance waits for it.
    env.eventually("reboot aborted", WAIT, || async {
        let op = env.operations().get("instance-db-reboot-1").await.ok()?;
        (op.status?.state == OperationState::Abort).then_some(())
    })
    .await;
    let waiting = env
        .instance_when("db", "db waits for its snapshot", WAIT, |i| {
            i.status.as_ref().is_some_and(|s| {
                s.state == InstanceState::DeleteWait
                    && s.conditions
                        .iter()
                        .any(|c| c.reason == "WaitingForSnapshots")
            })
        })
        .await;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    let snapshot = env
        .operations()
        .get("instance-db-snapshot-1")
        .await
        .expect("snapshot");
    assert_ne!(
        snapshot.status.map(|s| s.state),
        Some(OperationState::Abort),
        "the snapshot must not be aborted"
    );
    assert!(
        !hv1.claims()
            .iter()
            .any(|c| c.operation_type == "instance_delete"),
        "instance_delete ran beside the snapshot"
    );

    // The snapshot finishes; the delete runs; the address rests in the halo.
    hv1.hold_snapshots.store(false, Ordering::SeqCst);
    env.eventually("db gone", WAIT, || async {
        env.instances()
            .get_opt("db")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let claims = hv1.claims();
    let snap_at = claims
        .iter()
        .find(|c| c.name == "instance-db-snapshot-1")
        .map(|c| c.at);
    let delete_at = claims
        .iter()
        .find(|c| c.operation_type == "instance_delete")
        .map(|c| c.at)
        .expect("instance_delete claimed");
    assert!(snap_at.expect("snapshot claimed") < delete_at);
    let ls = leases(&env).await;
    assert!(
        ls.iter()
            .any(|(a, phase, _)| *a == address && phase == "halo"),
        "{address} not in the halo: {ls:?}"
    );
    // Its interface went with it.
    let ifaces: kube::Api<sf_schema::NetworkInterface> =
        kube::Api::namespaced(env.client.clone(), common::NS);
    env.eventually("interface gone", WAIT, || async {
        ifaces.get_opt("db-0").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_or_replaced_sf_cluster_emits_no_duplicate_operations() {
    let mut env = common::start().await;
    let hv1 = env.start_agent("hv-1", network_node()).await;
    // The agent does not claim yet: the operations stay queued while sf-cluster goes.
    hv1.claiming.store(false, Ordering::SeqCst);
    let mut first = env.start_cluster(&[]).await;
    first.wait_leader(WAIT).await;
    // A second sf-cluster stands by while the first holds the lease.
    let mut second = env.start_cluster(&[]).await;
    env.create_network("net", "10.2.0.0/24").await;
    env.create_instance("a", &["net"]).await;
    env.create_instance("b", &["net"]).await;
    let names = |ops: &[sf_schema::ClusterOperation]| -> BTreeSet<String> {
        ops.iter().map(|o| o.name_any()).collect()
    };
    let before = env
        .eventually("operations for a and b", WAIT, || async {
            let ops = env.all_operations().await;
            let n = names(&ops);
            let has = |prefix: &str| n.iter().any(|x| op_like(x, prefix, "create"));
            (has("instance-a-") && has("instance-b-")).then_some(n)
        })
        .await;
    assert!(!second.is_leader(), "two sf-clusters lead at once");
    let text = second.metrics().await;
    assert!(text.contains("cluster_lease_held 0"), "{text}");

    // The first goes away (its lease is released); the standby takes over and
    // re-plans everything from scratch.
    first.stop().await;
    second.wait_leader(WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = names(&env.all_operations().await);
    assert_eq!(before, after, "the new leader emitted operations again");

    // A third, restarted in place of the second, changes nothing either.
    second.stop().await;
    let mut third = env.start_cluster(&[]).await;
    third.wait_leader(WAIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(before, names(&env.all_operations().await));

    // Work resumes: both instances get created, still without duplicates.
    hv1.claiming.store(true, Ordering::SeqCst);
    for name in ["a", "b"] {
        env.instance_when(name, "created and running", WAIT, created_and_running)
            .await;
    }
    let ops = env.all_operations().await;
    let creates = ops
        .iter()
        .filter(|o| o.spec.operation_type.as_str() == "instance_create")
        .count();
    assert_eq!(creates, 2);
    let net_creates: Vec<_> = ops
        .iter()
        .filter(|o| o.spec.operation_type.as_str() == "network_create_on_node")
        .map(|o| o.name_any())
        .collect();
    assert_eq!(net_creates.len(), 1, "{net_creates:?}");
    env.keep(third);
}

fn small_node(roles: Vec<&'static str>) -> NodeSpecForTest {
    // (6 − 2) × 3 = 12 vCPUs; (3848 − 2048) × 3 = 5400 MiB: ten 512 MiB instances;
    // (40 − 20) × 5 = 100 GiB disk.
    NodeSpecForTest {
        roles,
        cpu_threads: 6,
        memory_mib: 3848,
        disk_gib: 40,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduler_spreads_twenty_instances_and_refuses_when_full() {
    let mut env = common::start().await;
    env.start_agent("hv-1", small_node(vec!["hypervisor", "network"]))
        .await;
    env.start_agent("hv-2", small_node(vec!["hypervisor"]))
        .await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.eventually("both nodes created", WAIT, || async {
        let nodes = env.nodes().list(&Default::default()).await.ok()?;
        (nodes
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .is_some_and(|s| s.state.as_str() == "created")
            })
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let names: Vec<String> = (0..20).map(|i| format!("vm-{i}")).collect();
    futures::future::join_all(names.iter().map(|n| env.create_instance(n, &[]))).await;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for name in &names {
        let i = env
            .instance_when(name, "created", Duration::from_secs(60), |i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| s.state == InstanceState::Created)
            })
            .await;
        let node = i.status.and_then(|s| s.node).expect("placed");
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(
        per_node,
        [("hv-1".to_string(), 10), ("hv-2".to_string(), 10)].into(),
        "not spread by capacity"
    );
    env.create_instance("vm-full", &[]).await;
    let refused = env
        .instance_when("vm-full", "a Scheduled=False condition", WAIT, |i| {
            i.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Scheduled" && c.reason == "Unschedulable")
            })
        })
        .await;
    let status = refused.status.expect("status");
    assert_eq!(status.node, None);
    assert_eq!(status.state, InstanceState::Preflight);
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .expect("Scheduled");
    assert!(
        condition.message.starts_with("cluster full:"),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains("not enough RAM"),
        "{}",
        condition.message
    );
    // The refusal is also an event on the instance.
    let uid = refused.metadata.uid.clone().expect("uid");
    let events = env
        .gateway
        .call("query_events", |mut g| {
            let uid = uid.clone();
            async move {
                g.query_events(sf_proto::v1::QueryEventsRequest {
                    object_type: "instance".into(),
                    object_uuid: uid,
                    event_type: String::new(),
                    limit: 10,
                })
                .await
            }
        })
        .await
        .expect("query events");
    assert!(
        events
            .events
            .iter()
            .any(|e| e.message.starts_with("unschedulable: cluster full")),
        "{:?}",
        events.events
    );
    let text = cluster.metrics().await;
    assert!(
        text.contains("cluster_scheduler_decisions_total{outcome=\"placed\"} 20"),
        "{text}"
    );
    assert!(text.contains("cluster_scheduler_decisions_total{outcome=\"unschedulable\"}"));
    // Capacity comes back when an instance goes: the refused one is placed at once
    // (well before the 60 s unschedulable retry).
    env.instances()
        .delete("vm-0", &Default::default())
        .await
        .expect("delete vm-0");
    env.instance_when("vm-full", "vm-full placed", Duration::from_secs(20), |i| {
        i.status.as_ref().is_some_and(|s| s.node.is_some())
    })
    .await;
    env.keep(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_node_goes_missing_then_error_with_its_instances() {
    let mut env = common::start().await;
    let hv1 = env.start_agent("hv-1", network_node()).await;
    let mut cluster = env
        .start_cluster(&["--node-checkin-maximum=2", "--node-error-multiplier=3"])
        .await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    env.create_instance("lost", &[]).await;
    env.instance_when("lost", "created and running", WAIT, created_and_running)
        .await;
    let node_state = |state: &'static str| {
        let nodes = env.nodes();
        move || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get("hv-1").await.ok()?;
                (n.status?.state.as_str() == state).then_some(())
            }
        }
    };
    hv1.heartbeat.store(false, Ordering::SeqCst);
    env.eventually(
        "hv-1 missing",
        Duration::from_secs(10),
        node_state("missing"),
    )
    .await;
    env.eventually("hv-1 error", Duration::from_secs(15), node_state("error"))
        .await;
    let i = env
        .instance_when("lost", "instance in error", WAIT, |i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.state == InstanceState::Error)
        })
        .await;
    let message = i.status.and_then(|s| s.error_message).unwrap_or_default();
    assert!(message.contains("has not checked in"), "{message}");
    // It comes back: created again (the error was the lost check-in).
    hv1.heartbeat.store(true, Ordering::SeqCst);
    env.eventually("hv-1 back", Duration::from_secs(10), node_state("created"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reaper_requeues_stuck_claims_and_counts_them() {
    let mut env = common::start().await;
    let hv1 = env.start_agent("hv-1", network_node()).await;
    let mut cluster = env
        .start_cluster(&[
            "--cluster-op-reaper-interval=1",
            "--cluster-op-stuck-threshold=1",
            "--cluster-op-max-attempts=2",
        ])
        .await;
    cluster.wait_leader(WAIT).await;
    env.create_instance("stuck", &[]).await;
    let instance = env
        .instance_when("stuck", "created and running", WAIT, created_and_running)
        .await;
    // A snapshot the agent claims and never finishes nor heartbeats: stop the agent
    // right after its claim.
    hv1.hold_snapshots.store(true, Ordering::SeqCst);
    request_operation(
        &env,
        &instance,
        "instance-stuck-snapshot-1",
        "instance_snapshot",
    )
    .await;
    env.eventually("snapshot claimed", WAIT, || async {
        hv1.claims()
            .iter()
            .any(|c| c.name == "instance-stuck-snapshot-1")
            .then_some(())
    })
    .await;
    hv1.claiming.store(false, Ordering::SeqCst);
    hv1.stop.trigger();
    // Re-queued once, then rejected after max attempts... with no claimer the second
    // attempt never comes, so the requeue counter is what moves.
    env.eventually("the reaper re-queued it", WAIT, || async {
        let text = cluster.metrics().await;
        text.lines()
            .find(|l| l.starts_with("cluster_op_reaper_requeued_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .filter(|n| *n >= 1)
    })
    .await;
    let text = cluster.metrics().await;
    assert!(text.contains("cluster_maintenance_runs_total{service=\"reaper\",outcome=\"ok\"}"));
    assert!(text.contains("cluster_reconcile_total{controller=\"instance\"}"));
    env.keep(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_plug_then_teardown_of_instance_and_network() {
    let mut env = common::start().await;
    let hv1 = env.start_agent("hv-1", network_node()).await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    env.create_network("lan", "10.3.0.0/24").await;
    env.create_instance("box", &["lan"]).await;
    env.instance_when("box", "created and running", WAIT, created_and_running)
        .await;

    // Hot plug a second interface.
    let ifaces: kube::Api<sf_schema::NetworkInterface> =
        kube::Api::namespaced(env.client.clone(), common::NS);
    let extra: sf_schema::NetworkInterface = serde_json::from_value(serde_json::json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": "NetworkInterface",
        "metadata": {"name": "box-extra", "namespace": common::NS},
        "spec": {"instance": "box", "network": "lan"},
    }))
    .expect("interface");
    ifaces
        .create(&Default::default(), &extra)
        .await
        .expect("create interface");
    let plugged = env
        .eventually("box-extra hot-plugged", WAIT, || async {
            let i = ifaces.get("box-extra").await.ok()?;
            let s = i.status.clone()?;
            (s.state.as_str() == "created" && s.ipv4.is_some()).then_some(i)
        })
        .await;
    let ip = plugged.status.and_then(|s| s.ipv4).expect("ipv4");
    assert!(ip.starts_with("10.3.0."), "{ip}");
    assert!(
        hv1.claims()
            .iter()
            .any(|c| c.name == "networkinterface-box-extra-1-hotplug"),
        "{:?}",
        hv1.claims()
    );

    // Delete the instance: both interfaces go, both addresses rest in the halo.
    env.instances()
        .delete("box", &Default::default())
        .await
        .expect("delete instance");
    env.eventually("box and its interfaces gone", WAIT, || async {
        let gone = env.instances().get_opt("box").await.ok()?.is_none()
            && ifaces.get_opt("box-0").await.ok()?.is_none()
            && ifaces.get_opt("box-extra").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    let ls = leases(&env).await;
    assert!(
        ls.iter().any(|(a, phase, _)| *a == ip && phase == "halo"),
        "{ip} not in the halo: {ls:?}"
    );

    // Delete the network: removed from every node it was plumbed on, then gone.
    env.networks()
        .delete("lan", &Default::default())
        .await
        .expect("delete network");
    env.eventually("lan gone", WAIT, || async {
        env.networks()
            .get_opt("lan")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        hv1.claims()
            .iter()
            .any(|c| c.operation_type == "network_delete"),
        "no network_delete ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_when_the_leaders_lease_lapses() {
    let env = common::start().await;
    let ttl = Duration::from_secs(3);
    let a = sf_cluster::lease::Lease::new(env.gateway.clone(), "sf-cluster", "a", ttl);
    let b = sf_cluster::lease::Lease::new(env.gateway.clone(), "sf-cluster", "b", ttl);
    let (a_tx, mut a_held) = tokio::sync::watch::channel(false);
    let a_stop = sf_daemon::Shutdown::new();
    let a_task = tokio::spawn(a.run(a_tx, a_stop.wait_owned()));
    tokio::time::timeout(WAIT, a_held.wait_for(|h| *h))
        .await
        .expect("a leads")
        .expect("a");
    let (b_tx, mut b_held) = tokio::sync::watch::channel(false);
    let b_stop = sf_daemon::Shutdown::new();
    let b_task = tokio::spawn(b.run(b_tx, b_stop.wait_owned()));
    // While a refreshes, b stands by.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!*b_held.borrow(), "b took a lease that a still refreshes");
    // a dies without releasing (its task is aborted): b takes over once it lapses.
    a_task.abort();
    let started = std::time::Instant::now();
    tokio::time::timeout(WAIT, b_held.wait_for(|h| *h))
        .await
        .expect("b takes over")
        .expect("b");
    assert!(
        started.elapsed() <= ttl + Duration::from_secs(3),
        "takeover took {:?}",
        started.elapsed()
    );
    b_stop.trigger();
    b_task.await.expect("b stops");
    drop(a_stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_passes_purge_terminal_operations_and_compact() {
    use sf_cluster::maintenance::{
        Compactor, EventRetention, Maintenance, OperationPurge, PurgeConfig, RetentionConfig,
    };
    let mut env = common::start().await;
    env.start_agent("hv-1", network_node()).await;
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.create_instance("old", &[]).await;
    env.instance_when("old", "created and running", WAIT, created_and_running)
        .await;
    cluster.stop().await;
    let complete = env.all_operations().await.len();
    assert!(complete >= 1);
    let m = Maintenance::new(
        env.gateway.clone(),
        sf_cluster::metrics::ClusterMetrics::default(),
    );
    // Nothing is older than an hour: the default purge keeps everything.
    let purge = OperationPurge::new(m.clone(), PurgeConfig::default());
    assert_eq!(purge.run_once().await.expect("purge"), 0);
    assert_eq!(env.all_operations().await.len(), complete);
    // With no delay every terminal operation goes.
    let purge = OperationPurge::new(
        m.clone(),
        PurgeConfig {
            cleaner_delay: Duration::ZERO,
            ..PurgeConfig::default()
        },
    );
    let purged = purge.run_once().await.expect("purge");
    assert_eq!(usize::try_from(purged).expect("count"), complete);
    assert!(env.all_operations().await.is_empty());
    Compactor::new(m.clone(), Default::default())
        .run_once()
        .await
        .expect("compaction");
    EventRetention::new(m, RetentionConfig::default())
        .run_once()
        .await
        .expect("retention");
}

/// Whether `name` is `<prefix><intent seq>-<short>`: the sequence of a new object is
/// pinned to its resourceVersion (sf_plan::ops::pin_intent_seq), so tests match it
/// by shape.
fn op_like(name: &str, prefix: &str, short: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(seq, rest)| {
            !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) && rest == short
        })
}
