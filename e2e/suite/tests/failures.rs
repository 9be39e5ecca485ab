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
