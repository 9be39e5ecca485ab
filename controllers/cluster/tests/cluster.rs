//! sf-cluster integration tests: private MariaDB, in-process sf-database, sf-api
//! (authenticated) and sf-cluster, and hypervisor nodes run by the REAL sf-agent
//! (in-process, libvirt test driver, host networking in network namespaces the test
//! makes; see `common`). Every test but the lease one needs root: not root, it says
//! it is skipped and passes, unless `SF_REQUIRE_PRIVILEGED=1`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{AgentOptions, NS, leases, request_operation, start_with_nodes};
use kube::Api;
use kube::ResourceExt;
use sf_agent::hypervisor::{DomainState, Hypervisor, domain_name};
use sf_schema::instance::{InstanceState, ObservedPowerState};
use sf_schema::operation::{ClusterOperation, OperationState};

const WAIT: Duration = Duration::from_secs(30);

fn created_and_running(i: &sf_schema::Instance) -> bool {
    i.status.as_ref().is_some_and(|s| {
        s.state == InstanceState::Created && s.power_state == Some(ObservedPowerState::Running)
    })
}

/// The state of operation `name`'s stored status.
fn state_of(op: &ClusterOperation) -> OperationState {
    op.status
        .as_ref()
        .map(|s| s.state.clone())
        .unwrap_or_default()
}

/// Asserts that `op` completed on `node`'s agent (its claimer is `<node>:<pid>`).
fn assert_completed_on(op: &ClusterOperation, node: &str) {
    let status = op.status.clone().unwrap_or_default();
    assert_eq!(
        status.state,
        OperationState::Complete,
        "{} did not complete: {:?}",
        op.name_any(),
        status.error_report
    );
    let by = status.claimed_by.unwrap_or_default();
    assert!(
        by.starts_with(&format!("{node}:")),
        "{} was run by {by:?}, not by the agent of {node}",
        op.name_any()
    );
}

/// The domain state of instance `i` on node `node` (the node's libvirt).
async fn domain_state(
    env: &common::Env,
    node: usize,
    i: &sf_schema::Instance,
) -> Option<DomainState> {
    env.node(node)
        .libvirt
        .state(&domain_name(&i.uid().expect("uid")))
        .await
        .expect("libvirt state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_and_instance_reach_created_with_ordered_operations() {
    let Some(mut env) = start_with_nodes(
        "network_and_instance_reach_created_with_ordered_operations",
        2,
    )
    .await
    else {
        return;
    };
    let (hv1, hv2) = (env.node_name(0), env.node_name(1));
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);

    env.create_network("web", "10.0.0.0/24").await;
    // web-2 is placed on hv2, which is not the network node: its plan plumbs the
    // network there first.
    env.create_instance_on("web-2", &["web"], Some(&hv2)).await;
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
    let ni = usize::from(node == hv2);
    assert!(
        instance
            .finalizers()
            .iter()
            .any(|f| f == sf_plan::FINALIZER)
    );
    // The real agent of its node made it: the domain runs in that node's libvirt.
    assert_eq!(
        domain_state(&env, ni, &instance).await,
        Some(DomainState::Running)
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
    assert_completed_on(create, &node);
    for dep in &create.spec.depends_on {
        let dep = env.operations().get(dep).await.expect("dependency");
        assert_completed_on(&dep, &node);
    }
    // On the host: the network was plumbed on the instance's node (its
    // ensure_network returned) before the instance's domain was defined there.
    let vxid = env
        .eventually("web has a vxid", WAIT, || async {
            env.networks().get("web").await.ok()?.status?.vxid
        })
        .await;
    let host = &env.node(ni).host;
    let plumbed = host
        .first("ensure_network", &vxid.to_string())
        .expect("web plumbed on the instance's node");
    let defined = host
        .first("define", &domain_name(&uid))
        .expect("web-1 defined on its node");
    assert!(
        plumbed.ended <= defined.began,
        "web-1 was defined before web was plumbed on {node}"
    );
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
            (nodes.contains(&node) && nodes.contains(&hv1)).then_some(n)
        })
        .await;
    let status = network.status.expect("status");
    assert_eq!(status.vxid, Some(vxid));
    assert_eq!(status.state.as_str(), "created");
    assert!(
        env.node(0).has_link(&sf_hostnet::bridge_name(vxid)),
        "web's bridge is not in the network node's namespace"
    );

    // web-2 on hv2: its create depends on the network's create on hv2.
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
        Some(hv2.as_str())
    );
    assert_eq!(
        domain_state(&env, 1, &web2).await,
        Some(DomainState::Running)
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
    let net_on_hv2: Vec<ClusterOperation> = env
        .all_operations()
        .await
        .into_iter()
        .filter(|o| {
            o.spec.operation_type.as_str() == "network_create_on_node"
                && o.spec.node.as_deref() == Some(hv2.as_str())
        })
        .collect();
    assert_eq!(
        net_on_hv2.len(),
        1,
        "one network create on hv2: {:?}",
        net_on_hv2.iter().map(|o| o.name_any()).collect::<Vec<_>>()
    );
    assert_eq!(create2.spec.depends_on, vec![net_on_hv2[0].name_any()]);
    assert_completed_on(&net_on_hv2[0], &hv2);
    assert_completed_on(create2, &hv2);
    let host2 = &env.node(1).host;
    let plumbed2 = host2
        .first("ensure_network", &vxid.to_string())
        .expect("web plumbed on hv2");
    let defined2 = host2
        .first("define", &domain_name(&web2.uid().expect("uid")))
        .expect("web-2 defined on hv2");
    assert!(
        plumbed2.ended <= defined2.began,
        "web-2 was defined before web was plumbed on hv2"
    );
    assert!(
        env.node(1).has_link(&sf_hostnet::bridge_name(vxid)),
        "web's bridge is not in hv2's namespace"
    );
    env.eventually("hv2 recorded in the network's nodes", WAIT, || async {
        let n = env.networks().get("web").await.ok()?;
        n.status?.nodes.contains(&hv2).then_some(())
    })
    .await;

    // Level-triggered: with nothing changing (but the agents heartbeating and
    // polling), no new operation appears.
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
    let Some(mut env) = start_with_nodes("a_power_change_emits_exactly_one_operation", 1).await
    else {
        return;
    };
    let hv1 = env.node_name(0);
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
    // Observed from the host: the agent destroyed the domain.
    assert_eq!(
        domain_state(&env, 0, &instance).await,
        Some(DomainState::Off)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ops = env.owned_operations(&instance.uid().expect("uid")).await;
    let offs: Vec<&ClusterOperation> = ops
        .iter()
        .filter(|o| o.spec.operation_type.as_str() == "instance_power_off")
        .collect();
    assert_eq!(
        offs.len(),
        1,
        "{:?}",
        offs.iter().map(|o| o.name_any()).collect::<Vec<_>>()
    );
    let off = offs[0].name_any();
    assert!(op_like(&off, "instance-vm-", "poweroff"), "{off}");
    assert_completed_on(offs[0], &hv1);
    assert_eq!(
        ops.len(),
        2,
        "{:?}",
        ops.iter().map(|o| o.name_any()).collect::<Vec<_>>()
    );
    let destroys = env
        .node(0)
        .host
        .actions()
        .iter()
        .filter(|a| {
            a.action == "destroy" && a.subject == domain_name(&instance.uid().expect("uid"))
        })
        .count();
    assert_eq!(destroys, 1, "the domain was destroyed {destroys} times");
    let i = env.instances().get("vm").await.expect("get");
    let status = i.status.expect("status");
    // The power-off is the latest intent, named at the sequence status records.
    assert_eq!(off, format!("instance-vm-{}-poweroff", status.intent_seq));
    assert_eq!(status.observed_generation, i.metadata.generation);
}

/// How long an agent holds each operation between claim and run while a test looks at
/// an operation in progress: longer than any test looks (the test ends the hold by
/// stopping or killing the agent).
const HOLD_MS: u64 = 120_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_aborts_all_but_a_snapshot_and_releases_addresses_into_the_halo() {
    let Some(mut env) = start_with_nodes(
        "delete_aborts_all_but_a_snapshot_and_releases_addresses_into_the_halo",
        1,
    )
    .await
    else {
        return;
    };
    let hv1 = env.node_name(0);
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

    // The agent restarts holding every operation open after its claim (its hidden
    // fault-injection delay), so a snapshot is in progress while the instance is
    // deleted; a reboot waits behind it (one claim per target).
    env.stop_agent(0).await;
    env.start_agent(
        0,
        AgentOptions {
            operation_delay_ms: HOLD_MS,
            ..AgentOptions::default()
        },
    );
    env.wait_nodes_ready().await;
    request_operation(
        &env,
        &instance,
        "instance-db-snapshot-1",
        "instance_snapshot",
    )
    .await;
    env.wait_claimed(0, 0, "the agent claimed the snapshot")
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
    assert!(
        matches!(
            state_of(&snapshot),
            OperationState::Queued | OperationState::Executing
        ),
        "the snapshot must still be outstanding: {:?}",
        snapshot.status
    );
    assert!(
        env.node(0).in_flight() >= 1,
        "the agent is no longer holding the snapshot"
    );
    assert!(
        !env.all_operations()
            .await
            .iter()
            .any(|o| o.spec.operation_type.as_str() == "instance_delete"),
        "instance_delete was emitted beside the outstanding snapshot"
    );
    assert_eq!(
        domain_state(&env, 0, &instance).await,
        Some(DomainState::Running),
        "the domain went before its snapshot finished"
    );

    // The snapshot finishes: the agent restarts without the hold (a stopping agent
    // releases what it holds, retryable) and runs it to completion, never aborted.
    // Then the delete runs and the address rests in the halo; the snapshot, recorded
    // as version 1 of the instance's snapshot artifact, outlives the instance.
    env.stop_agent(0).await;
    env.start_agent(0, AgentOptions::default());
    env.eventually("db gone", WAIT, || async {
        env.instances()
            .get_opt("db")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let snapshot = env
        .operations()
        .get("instance-db-snapshot-1")
        .await
        .expect("snapshot");
    let snap_status = snapshot.status.clone().expect("snapshot status");
    assert_eq!(
        snap_status.state,
        OperationState::Complete,
        "{snap_status:?}"
    );
    assert!(
        snap_status
            .claimed_by
            .as_deref()
            .is_some_and(|b| b.starts_with(&format!("{hv1}:"))),
        "{snap_status:?}"
    );
    let taken = sf_schema::snapshot::SnapshotResult::from_result(
        snap_status.result.as_ref().expect("snapshot result"),
    )
    .expect("a snapshot result");
    assert_eq!(taken.snapshots.len(), 1, "{taken:?}");
    let artifacts: Api<sf_schema::Artifact> = Api::namespaced(env.client.clone(), NS);
    let recorded = env
        .eventually("the snapshot recorded", WAIT, || async {
            let a = artifacts
                .get_opt(&taken.snapshots[0].artifact)
                .await
                .ok()??;
            let versions = a.status.clone()?.versions;
            (versions.len() == 1).then_some(versions)
        })
        .await;
    assert_eq!(recorded[0].blob, taken.snapshots[0].blob);
    let deletes: Vec<ClusterOperation> = env
        .all_operations()
        .await
        .into_iter()
        .filter(|o| o.spec.operation_type.as_str() == "instance_delete")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_completed_on(&deletes[0], &hv1);
    let delete_started = deletes[0]
        .status
        .as_ref()
        .and_then(|s| s.started_at)
        .expect("delete started");
    assert!(
        snap_status.completed_at.expect("snapshot ended") <= delete_started,
        "instance_delete ran before the snapshot ended"
    );
    assert_eq!(
        domain_state(&env, 0, &instance).await,
        None,
        "the domain is still defined"
    );
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
    let Some(mut env) = start_with_nodes(
        "a_restarted_or_replaced_sf_cluster_emits_no_duplicate_operations",
        1,
    )
    .await
    else {
        return;
    };
    // The agent registered and stops: the operations stay queued while sf-cluster
    // goes (its Node stays `created` well within the check-in maximum).
    env.stop_agent(0).await;
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

    // The agent comes back and work resumes: both instances get created, still
    // without duplicates.
    env.start_agent(0, AgentOptions::default());
    for name in ["a", "b"] {
        let i = env
            .instance_when(name, "created and running", WAIT, created_and_running)
            .await;
        assert_eq!(domain_state(&env, 0, &i).await, Some(DomainState::Running));
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

/// Instances of the scheduler test per node: 1 vCPU, 512 MiB and an 8 GiB disk each.
const PER_NODE: u64 = 10;

/// Scheduler settings under which exactly `per_node` of the test's instances fit on a
/// node of `capacity`, RAM being what runs out: no reservations; a RAM overcommit
/// that makes `(per_node + ½) × 512` MiB schedulable (so rounding cannot move the
/// limit); CPU and disk overcommits with room for four times as many.
fn fit_exactly(capacity: &sf_schema::node::NodeCapacity, per_node: u64) -> Vec<String> {
    assert!(
        capacity.cpu_threads > 0 && capacity.memory_mib > 0 && capacity.disk_gib > 0,
        "a node reported no capacity: {capacity:?}"
    );
    #[allow(clippy::cast_precision_loss)]
    let ratio = |want: u64, have: u64| want as f64 / have as f64;
    let ram = ratio(per_node * 512 + 256, capacity.memory_mib);
    let cpu = ratio(4 * per_node, u64::from(capacity.cpu_threads)) + 1.0;
    let disk = ratio(4 * per_node * 8, capacity.disk_gib) + 1.0;
    vec![
        "--node-cpu-reservation-threads=0".into(),
        "--node-ram-reservation-gb=0".into(),
        "--node-disk-reservation-gb=0".into(),
        format!("--ram-overcommit-ratio={ram}"),
        format!("--cpu-overcommit-ratio={cpu}"),
        format!("--scheduler-disk-overcommit={disk}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduler_spreads_twenty_instances_and_refuses_when_full() {
    let Some(mut env) = start_with_nodes(
        "the_scheduler_spreads_twenty_instances_and_refuses_when_full",
        2,
    )
    .await
    else {
        return;
    };
    let (hv1, hv2) = (env.node_name(0), env.node_name(1));
    // The agents report this machine's real capacity (both nodes share it); the
    // scheduler's settings make exactly PER_NODE instances fit on each.
    let capacity = env.capacity(0).await;
    assert_eq!(capacity, env.capacity(1).await, "one machine, one capacity");
    let flags = fit_exactly(&capacity, PER_NODE);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = env.start_cluster(&flags).await;
    cluster.wait_leader(WAIT).await;
    let total = usize::try_from(2 * PER_NODE).expect("count");
    let names: Vec<String> = (0..total).map(|i| format!("vm-{i}")).collect();
    futures::future::join_all(names.iter().map(|n| env.create_instance(n, &[]))).await;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for name in &names {
        let i = env
            .instance_when(
                name,
                "created and running",
                Duration::from_secs(60),
                created_and_running,
            )
            .await;
        let node = i.status.and_then(|s| s.node).expect("placed");
        *per_node.entry(node).or_default() += 1;
    }
    let each = usize::try_from(PER_NODE).expect("count");
    assert_eq!(
        per_node,
        [(hv1.clone(), each), (hv2.clone(), each)].into(),
        "not spread by capacity"
    );
    // Each node's agent runs its share on its own libvirt.
    for n in 0..2 {
        let domains = env.node(n).libvirt.list().await.expect("list domains");
        let running = domains
            .iter()
            .filter(|d| d.name.starts_with("sf:") && d.state == DomainState::Running)
            .count();
        assert_eq!(running, each, "domains running on {}", env.node_name(n));
    }
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
    let message = &condition.message;
    assert!(message.starts_with("cluster full:"), "{message}");
    // Both nodes are full of RAM, and of nothing else.
    for node in [&hv1, &hv2] {
        assert!(
            message.contains(&format!("{node}: not enough RAM (needs 512 MiB")),
            "{message}"
        );
    }
    assert!(!message.contains("not enough CPU"), "{message}");
    assert!(!message.contains("not enough disk"), "{message}");
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
        text.contains(&format!(
            "cluster_scheduler_decisions_total{{outcome=\"placed\"}} {total}"
        )),
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
    let Some(mut env) = start_with_nodes(
        "a_silent_node_goes_missing_then_error_with_its_instances",
        1,
    )
    .await
    else {
        return;
    };
    let hv1 = env.node_name(0);
    // The agent checks in every second (with seconds in lastSeen): 3 s is missed
    // check-ins, not jitter.
    let mut cluster = env
        .start_cluster(&["--node-checkin-maximum=3", "--node-error-multiplier=3"])
        .await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    env.create_instance("lost", &[]).await;
    env.instance_when("lost", "created and running", WAIT, created_and_running)
        .await;
    let nodes = env.nodes_api();
    let node_state = |state: &'static str| {
        let nodes = nodes.clone();
        let name = hv1.clone();
        move || {
            let nodes = nodes.clone();
            let name = name.clone();
            async move {
                let n = nodes.get(&name).await.ok()?;
                (n.status?.state.as_str() == state).then_some(())
            }
        }
    };
    // The agent dies (no drain, no goodbye): its heartbeats stop.
    env.kill_agent(0);
    env.eventually(
        "node missing",
        Duration::from_secs(15),
        node_state("missing"),
    )
    .await;
    env.eventually("node error", Duration::from_secs(20), node_state("error"))
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
    env.start_agent(0, AgentOptions::default());
    env.eventually("node back", Duration::from_secs(15), node_state("created"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reaper_requeues_stuck_claims_and_counts_them() {
    let Some(mut env) =
        start_with_nodes("the_reaper_requeues_stuck_claims_and_counts_them", 1).await
    else {
        return;
    };
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
    // A snapshot the agent claims and then dies with, before finishing it or
    // heartbeating it again: the agent restarts holding operations open after their
    // claim, and is killed once it holds the snapshot.
    env.stop_agent(0).await;
    env.start_agent(
        0,
        AgentOptions {
            operation_delay_ms: HOLD_MS,
            ..AgentOptions::default()
        },
    );
    env.wait_nodes_ready().await;
    request_operation(
        &env,
        &instance,
        "instance-stuck-snapshot-1",
        "instance_snapshot",
    )
    .await;
    env.wait_claimed(0, 0, "the agent claimed the snapshot")
        .await;
    env.kill_agent(0);
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
    let snapshot = env
        .operations()
        .get("instance-stuck-snapshot-1")
        .await
        .expect("snapshot");
    assert_eq!(
        state_of(&snapshot),
        OperationState::Queued,
        "{:?}",
        snapshot.status
    );
    let text = cluster.metrics().await;
    assert!(text.contains("cluster_maintenance_runs_total{service=\"reaper\",outcome=\"ok\"}"));
    assert!(text.contains("cluster_reconcile_total{controller=\"instance\"}"));
    env.keep(cluster);
}

/// The MACs of the NICs in `domain`'s persistent definition on the first node.
async fn defined_macs(env: &common::Env, domain: &str) -> Vec<String> {
    let xml = env
        .node(0)
        .libvirt
        .xml(domain, true)
        .await
        .expect("domain xml");
    sf_agent::domain_xml::interface_macs(&xml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_plug_unplug_then_teardown_of_instance_and_network() {
    let Some(mut env) =
        start_with_nodes("hot_plug_unplug_then_teardown_of_instance_and_network", 1).await
    else {
        return;
    };
    let hv1 = env.node_name(0);
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    env.create_network("lan", "10.3.0.0/24").await;
    let instance = env.create_instance("box", &["lan"]).await;
    env.instance_when("box", "created and running", WAIT, created_and_running)
        .await;
    let domain = domain_name(&instance.uid().expect("uid"));

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
    let hotplug = env
        .eventually("the hot plug completed", WAIT, || async {
            env.all_operations().await.into_iter().find(|o| {
                o.spec.operation_type.as_str() == "interface_hot_plug"
                    && state_of(o) == OperationState::Complete
            })
        })
        .await;
    // Named past the interface's pinned sequence (its resourceVersion at creation).
    let name = hotplug.name_any();
    assert!(
        name.starts_with("networkinterface-box-extra-") && name.ends_with("-hotplug"),
        "{name}"
    );
    assert_ne!(name, "networkinterface-box-extra-1-hotplug");
    assert_completed_on(&hotplug, &hv1);
    // On the host: the domain's definition has both NICs, the new one with its MAC.
    let mac = hotplug
        .status
        .as_ref()
        .and_then(|s| s.result.as_ref())
        .and_then(|r| r["macaddr"].as_str().map(str::to_owned))
        .expect("the hot plug reports its MAC");
    let macs = defined_macs(&env, &domain).await;
    assert_eq!(macs.len(), 2, "{macs:?}");
    assert!(macs.contains(&mac), "{mac} not in {macs:?}");
    let vxid = env
        .networks()
        .get("lan")
        .await
        .expect("lan")
        .status
        .and_then(|s| s.vxid)
        .expect("vxid");
    assert!(env.node(0).has_link(&sf_hostnet::bridge_name(vxid)));

    // Delete the hot-plugged interface: unplugged from the domain on its node first,
    // and only then its address goes to the halo.
    env.delete_and_wait_gone(&ifaces, "box-extra", WAIT).await;
    let unplugs = env.operations_of_type("interface_hot_unplug").await;
    assert_eq!(unplugs.len(), 1, "one unplug");
    assert_completed_on(&unplugs[0], &hv1);
    assert_eq!(unplugs[0].spec.payload["macaddr"], mac.as_str());
    let macs = defined_macs(&env, &domain).await;
    assert_eq!(macs.len(), 1, "{macs:?}");
    assert!(!macs.contains(&mac), "{mac} still plugged: {macs:?}");
    let ls = leases(&env).await;
    assert!(
        ls.iter().any(|(a, phase, _)| *a == ip && phase == "halo"),
        "{ip} not in the halo after the unplug: {ls:?}"
    );

    // Re-create it under the same name: a new incarnation, whose operation names never
    // collide with the old one's (still stored until purged), so it is plugged again.
    ifaces
        .create(&Default::default(), &extra)
        .await
        .expect("re-create interface");
    env.eventually("box-extra plugged again", WAIT, || async {
        let i = ifaces.get("box-extra").await.ok()?;
        (i.status?.state.as_str() == "created").then_some(())
    })
    .await;
    let plugs = env.operations_of_type("interface_hot_plug").await;
    assert_eq!(plugs.len(), 2, "one plug per incarnation");
    assert_eq!(defined_macs(&env, &domain).await.len(), 2);

    // Delete the instance: its interfaces go, their addresses rest in the halo.
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
    assert_eq!(
        env.node(0).libvirt.state(&domain).await.expect("state"),
        None,
        "the domain is still defined"
    );
    let ls = leases(&env).await;
    assert!(
        ls.iter().any(|(a, phase, _)| *a == ip && phase == "halo"),
        "{ip} not in the halo: {ls:?}"
    );

    // Delete the network: removed from every node it was plumbed on, then gone.
    env.delete_and_wait_gone(&env.networks(), "lan", WAIT).await;
    let deletes = env.operations_of_type("network_delete").await;
    assert_eq!(
        deletes.len(),
        1,
        "{:?}",
        deletes.iter().map(|o| o.name_any()).collect::<Vec<_>>()
    );
    assert_completed_on(&deletes[0], &hv1);
    assert!(
        !env.node(0).has_link(&sf_hostnet::bridge_name(vxid)),
        "lan's bridge is still in the node's namespace"
    );
    assert!(
        !env.node(0).has_link(&sf_hostnet::vxlan_name(vxid)),
        "lan's vxlan is still in the node's namespace"
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
    let Some(env) = start_with_nodes(
        "maintenance_passes_purge_terminal_operations_and_compact",
        1,
    )
    .await
    else {
        return;
    };
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

/// The NAT ruleset of network `vxid` on node `node` (empty when none is loaded).
fn nat_rules(node: &str, vxid: u32) -> String {
    let ns = sf_hostnet::network_namespace_name(node, vxid);
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "table", "ip", "sf_nat"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_floated_interface_gets_a_floating_address_and_dnat_on_the_network_node() {
    let Some(mut env) = start_with_nodes(
        "a_floated_interface_gets_a_floating_address_and_dnat_on_the_network_node",
        1,
    )
    .await
    else {
        return;
    };
    let nn = env.node_name(0); // Node 0 is the network node.
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    // The lease holder prepared the floating network: its gateway (.1) and the
    // network and broadcast addresses can never be handed out as floating addresses.
    let floating_reserved = env
        .eventually(
            "the floating network's own addresses reserved",
            WAIT,
            || async {
                let network = env
                    .gateway
                    .call("get_resource", |mut g| async move {
                        g.get_resource(sf_proto::v1::GetResourceRequest {
                            key: Some(sf_proto::v1::ObjectKey {
                                kind: "Network".into(),
                                namespace: String::new(),
                                name: "floating".into(),
                            }),
                            uid: String::new(),
                            deleted: false,
                        })
                        .await
                    })
                    .await
                    .ok()?;
                let network: serde_json::Value = serde_json::from_slice(&network.object).ok()?;
                let uid = network["metadata"]["uid"].as_str()?.to_owned();
                let reply = env
                    .gateway
                    .call("list_reservations", |mut g| {
                        let uid = uid.clone();
                        async move {
                            g.list_reservations(sf_proto::v1::ListReservationsRequest {
                                network_uid: uid,
                            })
                            .await
                        }
                    })
                    .await
                    .ok()?;
                let addresses: Vec<String> =
                    reply.reservations.into_iter().map(|r| r.address).collect();
                addresses
                    .iter()
                    .any(|a| a == "192.168.20.1")
                    .then_some(addresses)
            },
        )
        .await;
    for a in ["192.168.20.0", "192.168.20.1", "192.168.20.255"] {
        assert!(
            floating_reserved.iter().any(|r| r == a),
            "{a} reserved on the floating network: {floating_reserved:?}"
        );
    }
    env.create_network("lan", "10.5.0.0/24").await;
    let instance: sf_schema::Instance = serde_json::from_value(serde_json::json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": "web", "namespace": common::NS},
        "spec": {"cpus": 1, "memory": 512, "disks": [{"size": 8}],
                 "networks": [{"network": "lan", "float": true}], "powerState": "on"},
    }))
    .expect("instance");
    env.instances()
        .create(&Default::default(), &instance)
        .await
        .expect("create instance");
    env.instance_when("web", "created and running", WAIT, created_and_running)
        .await;

    // The boot interface floats: an address from the floating network's netblock
    // (sf-cluster's default FLOATING_NETWORK, 192.168.20.0/24).
    let ifaces: kube::Api<sf_schema::NetworkInterface> =
        kube::Api::namespaced(env.client.clone(), common::NS);
    let (inner, floating) = env
        .eventually("web-0 floated", WAIT, || async {
            let s = ifaces.get("web-0").await.ok()?.status?;
            Some((s.ipv4?, s.floating_address?))
        })
        .await;
    assert!(floating.starts_with("192.168.20."), "{floating}");
    assert!(inner.starts_with("10.5.0."), "{inner}");
    let vxid = env
        .networks()
        .get("lan")
        .await
        .expect("lan")
        .status
        .and_then(|s| s.vxid)
        .expect("vxid");

    // The network node applies the DNAT (a re-plumb of the network node).
    let dnat = format!("ip daddr {floating} dnat to {inner}");
    env.eventually("the DNAT on the network node", WAIT, || async {
        nat_rules(&nn, vxid).contains(&dnat).then_some(())
    })
    .await;
    // Every network-node create that carried the floats ends (the DNAT above is the
    // first one's; a later re-plumb may still be running on a loaded machine).
    let replumbs: Vec<ClusterOperation> = env
        .eventually(
            "the network-node creates carrying the floats",
            WAIT,
            || async {
                let ops: Vec<ClusterOperation> = env
                    .all_operations()
                    .await
                    .into_iter()
                    .filter(|o| {
                        o.spec.operation_type.as_str() == "network_create_on_node"
                            && o.spec.node.as_deref() == Some(nn.as_str())
                            && o.spec.payload["floating"].is_string()
                    })
                    .collect();
                let ended = ops.iter().all(|o| {
                    state_of(o) != OperationState::Queued
                        && state_of(o) != OperationState::Executing
                });
                (!ops.is_empty() && ended).then_some(ops)
            },
        )
        .await;
    for op in &replumbs {
        assert_completed_on(op, &nn);
    }

    // Nothing changed: nothing more is emitted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = env.all_operations().await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.all_operations().await.len(),
        before,
        "a steady float emitted operations"
    );

    // Unfloat: the address goes and so does the DNAT.
    ifaces
        .patch(
            "web-0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"float": false}})),
        )
        .await
        .expect("unfloat");
    env.eventually("web-0 unfloated", WAIT, || async {
        let s = ifaces.get("web-0").await.ok()?.status?;
        s.floating_address.is_none().then_some(())
    })
    .await;
    env.eventually("the DNAT gone from the network node", WAIT, || async {
        (!nat_rules(&nn, vxid).contains(&dnat)).then_some(())
    })
    .await;
    assert!(
        floating_phase(&env, &floating).await.as_deref() == Some("halo"),
        "{floating} not in the halo"
    );

    // NAT on: the network gets its gateway on the floating network, on the network
    // node's egress veth.
    env.networks()
        .patch(
            "lan",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"provideNat": true}})),
        )
        .await
        .expect("NAT on");
    let gateway = env
        .eventually("lan's floating gateway", WAIT, || async {
            env.networks()
                .get("lan")
                .await
                .ok()?
                .status?
                .floating_gateway
        })
        .await;
    assert!(gateway.starts_with("192.168.20."), "{gateway}");
    let ns = sf_hostnet::network_namespace_name(&nn, vxid);
    let egress = sf_hostnet::egress_inner_name(vxid);
    env.eventually("the gateway on the egress veth", WAIT, || async {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns, "-4", "addr", "show", "dev", &egress])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("inet {gateway}/"))
            .then_some(())
    })
    .await;

    // The network goes: its gateway rests in the halo.
    env.instances()
        .delete("web", &Default::default())
        .await
        .expect("delete instance");
    env.delete_and_wait_gone(&env.networks(), "lan", WAIT).await;
    assert_eq!(
        floating_phase(&env, &gateway).await.as_deref(),
        Some("halo"),
        "{gateway}"
    );
}

/// The phase of the lease of `address` on the floating network (cluster scoped).
/// The `/32` routes of the network namespace of `vxid` on node `nn`.
fn routes_in(nn: &str, vxid: u32) -> String {
    let ns = sf_hostnet::network_namespace_name(nn, vxid);
    std::process::Command::new("ip")
        .args(["-n", &ns, "-4", "route", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routed_address_is_reserved_and_routed_on_the_network_node() {
    let Some(mut env) = start_with_nodes(
        "a_routed_address_is_reserved_and_routed_on_the_network_node",
        1,
    )
    .await
    else {
        return;
    };
    let nn = env.node_name(0); // Node 0 is the network node.
    let mut cluster = env.start_cluster(&[]).await;
    cluster.wait_leader(WAIT).await;
    env.keep(cluster);
    env.create_network("lan", "10.6.0.0/24").await;
    let vxid = env
        .eventually("lan plumbed on the network node", WAIT, || async {
            let s = env.networks().get("lan").await.ok()?.status?;
            s.nodes.contains(&nn).then_some(s.vxid?)
        })
        .await;

    // One routed address: reserved on the floating network (type routed) and routed
    // (/32) in the network's namespace on the network node.
    env.networks()
        .patch(
            "lan",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"routedAddressCount": 1}})),
        )
        .await
        .expect("route one");
    let routed = env
        .eventually("lan's routed address", WAIT, || async {
            let s = env.networks().get("lan").await.ok()?.status?;
            s.routed_addresses.first().cloned()
        })
        .await;
    assert!(routed.starts_with("192.168.20."), "{routed}");
    let leases: kube::Api<sf_schema::IPAMLease> = kube::Api::all(env.client.clone());
    let lease = leases
        .list(&Default::default())
        .await
        .expect("list leases")
        .items
        .into_iter()
        .find(|l| l.spec.network == "floating" && l.spec.address == routed)
        .expect("the routed address's lease");
    assert_eq!(lease.spec.reservation_type.as_str(), "routed");
    let route = format!("{routed} dev ");
    env.eventually("the /32 route on the network node", WAIT, || async {
        routes_in(&nn, vxid).contains(&route).then_some(())
    })
    .await;

    // Back to none: released into the halo and the route goes.
    env.networks()
        .patch(
            "lan",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"routedAddressCount": 0}})),
        )
        .await
        .expect("route none");
    env.eventually("the /32 route gone", WAIT, || async {
        (!routes_in(&nn, vxid).contains(&route)).then_some(())
    })
    .await;
    env.eventually("lan's routed address released", WAIT, || async {
        let s = env.networks().get("lan").await.ok()?.status?;
        s.routed_addresses.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        floating_phase(&env, &routed).await.as_deref(),
        Some("halo"),
        "{routed}"
    );
}

async fn floating_phase(env: &common::Env, address: &str) -> Option<String> {
    let api: kube::Api<sf_schema::IPAMLease> = kube::Api::all(env.client.clone());
    api.list(&Default::default())
        .await
        .expect("list leases")
        .items
        .into_iter()
        .find(|l| l.spec.network == "floating" && l.spec.address == address)
        .and_then(|l| l.status.map(|s| s.phase.as_str().to_string()))
}

/// sf-cluster reaches an `https://` sf-api whose certificate is self-signed when
/// SHAKENFIST_API_CA_FILE names that certificate, and refuses it without (the system's
/// trust store does not know it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_api_is_trusted_through_the_ca_file() {
    let env = common::start().await;
    let tls = tempfile::tempdir().expect("tempdir");
    let (url, api) = env.start_https_api(tls.path()).await;
    let cert = tls.path().join("cert.pem");
    let config = |ca: Option<&std::path::Path>| {
        let mut config = env.cluster_config(&[]);
        config.api_url = url.clone();
        config.api_ca_file = ca.map(std::path::Path::to_path_buf);
        config
    };
    // The listener is up before serving starts: wait until the trusted login works.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let client = loop {
        match sf_cluster::daemon::connect_api(&config(Some(&cert))).await {
            Ok(client) => break client,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "https sf-api with its CA: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let nodes: kube::Api<sf_schema::Node> = kube::Api::all(client);
    nodes
        .list(&kube::api::ListParams::default())
        .await
        .expect("list nodes over https");
    let refused = sf_cluster::daemon::connect_api(&config(None)).await;
    assert!(
        refused.is_err(),
        "a self-signed sf-api was trusted without its CA"
    );
    api.trigger();
}
