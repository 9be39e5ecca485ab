//! Failures under load, the whole system as processes: a killed sf-database instance
//! and a restarted MariaDB lose no acknowledged write, and the daemons recover unaided.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sf_e2e::{System, SystemOptions, require_root, wait_for};

fn network_yaml(i: usize) -> String {
    format!(
        "apiVersion: shakenfist.io/v1alpha1\nkind: Network\nmetadata: {{name: load-{i}, namespace: load}}\n\
         spec: {{netblock: 10.{}.{}.0/24, provideDhcp: false, provideNat: false}}\n",
        100 + i / 250,
        i % 250
    )
}

/// Applies networks `range` one `sf apply` each; returns the names acknowledged.
fn load(system: &System, range: std::ops::Range<usize>) -> Vec<String> {
    let mut acked = Vec::new();
    for i in range {
        let out = system.apply(&format!("load-{i}"), &network_yaml(i));
        if out.status.success() {
            acked.push(format!("load-{i}"));
        } else {
            // Refused with a clear error is allowed (not acknowledged); silence is not.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.trim().is_empty(), "apply load-{i} failed silently");
        }
    }
    acked
}

fn stored(system: &System) -> BTreeSet<String> {
    let list = wait_for("a list of networks", Duration::from_secs(60), || {
        system
            .sf_json(&["get", "networks", "-n", "load", "-o", "json"])
            .ok()
    });
    let list = match list {
        Ok(l) => l,
        Err(e) => panic!("{e}\n{}", system.logs()),
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn killed_gateway_and_restarted_mariadb_lose_nothing_acknowledged() {
    if !require_root("killed_gateway_and_restarted_mariadb_lose_nothing_acknowledged") {
        return;
    }
    let mut system = match System::start(&SystemOptions {
        agents: 1,
        ..SystemOptions::default()
    }) {
        Ok(s) => s,
        Err(e) => panic!("system did not start: {e}"),
    };
    let out = system.sf(&["namespace", "create", "load"]);
    assert!(
        out.status.success(),
        "namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kill -9 one sf-database instance a third of the way through.
    let mut acked = load(&system, 0..10);
    system.gateways[0].kill9();
    let after_kill = load(&system, 10..30);
    assert!(
        after_kill.len() >= 18,
        "writes continue through the other instance: {} of 20 acknowledged\n{}",
        after_kill.len(),
        system.logs()
    );
    acked.extend(after_kill);
    let have = stored(&system);
    for name in &acked {
        assert!(have.contains(name), "acknowledged {name} lost");
    }

    // Restart MariaDB mid-load: daemons recover unaided within 60 s.
    let before = load(&system, 30..35);
    acked.extend(before);
    let started = Instant::now();
    if let Err(e) = system.mariadb.restart() {
        panic!("restart MariaDB: {e}");
    }
    let recovered = wait_for(
        "a write after the MariaDB restart",
        Duration::from_secs(60),
        || {
            let out = system.apply("load-probe", &network_yaml(999));
            out.status.success().then_some(())
        },
    );
    if let Err(e) = recovered {
        panic!("{e}\n{}", system.logs());
    }
    println!(
        "{{\"figure\":\"mariadb_restart_recovery_seconds\",\"value\":{:.2}}}",
        started.elapsed().as_secs_f64()
    );
    acked.push("load-999".into());
    acked.extend(load(&system, 35..45));
    let have = stored(&system);
    for name in &acked {
        assert!(
            have.contains(name),
            "acknowledged {name} lost after the restart"
        );
    }
}

#[test]
fn an_agent_killed_mid_operation_is_retried_and_the_instance_converges() {
    if !require_root("an_agent_killed_mid_operation_is_retried_and_the_instance_converges") {
        return;
    }
    let mut system = match System::start(&SystemOptions {
        agents: 1,
        stuck_threshold_secs: 6,
        agent_operation_delay_ms: 5000,
    }) {
        Ok(s) => s,
        Err(e) => panic!("system did not start: {e}"),
    };
    let out = system.apply(
        "victim",
        "apiVersion: shakenfist.io/v1alpha1\nkind: Namespace\nmetadata: {name: crash}\nspec: {}\n---\n\
         apiVersion: shakenfist.io/v1alpha1\nkind: Instance\nmetadata: {name: victim, namespace: crash}\n\
         spec: {cpus: 1, memory: 256, disks: [{size: 1, bus: virtio, type: disk}], powerState: 'on'}\n",
    );
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let create = |system: &System| -> Option<serde_json::Value> {
        system
            .sf_json(&["get", "clusteroperations", "-n", "crash", "-o", "json"])
            .ok()?["items"]
            .as_array()?
            .iter()
            .find(|o| o["spec"]["operationType"] == "instance_create")
            .cloned()
    };
    let queued = wait_for(
        "the instance_create operation",
        Duration::from_secs(60),
        || create(&system),
    );
    if let Err(e) = queued {
        panic!("{e}\n{}", system.logs());
    }
    // The agent claims at once and then holds the operation for 5 s: kill it inside
    // that window, and bring it back without the delay.
    std::thread::sleep(Duration::from_millis(1500));
    let agent = &mut system.nodes[0].agent;
    agent.kill9();
    agent.set_env("SHAKENFIST_AGENT_TEST_OPERATION_DELAY_MS", None);
    if let Err(e) = agent.start() {
        panic!("restart the agent: {e}");
    }
    let started = Instant::now();
    let running = wait_for(
        "the instance to run after the retry",
        Duration::from_secs(90),
        || {
            let list = system
                .sf_json(&["get", "instances", "-n", "crash", "-o", "json"])
                .ok()?;
            let item = list["items"].as_array()?.first()?.clone();
            (item["status"]["powerState"] == "running").then_some(item)
        },
    );
    if let Err(e) = running {
        panic!("{e}\nops: {:?}\n{}", create(&system), system.logs());
    }
    println!(
        "{{\"figure\":\"agent_kill_recovery_seconds\",\"value\":{:.2}}}",
        started.elapsed().as_secs_f64()
    );
    let op = create(&system).expect("the create operation");
    assert_eq!(op["status"]["state"], "complete", "{op}");
    assert!(
        op["status"]["attempts"].as_u64().unwrap_or(0) >= 2,
        "the operation was retried after the reaper re-queued it: {op}"
    );
}
