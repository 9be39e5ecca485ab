//! The whole system as processes, driven through `sf` only: a network and three
//! instances reach running on two nodes, power changes reach the observed state, a
//! screenshot is a PNG, an interface hot-plugs, delete releases the addresses into the
//! halo, and a watch started first saw every change in order.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use sf_e2e::{System, SystemOptions, require_root, wait_for};

const NETWORK_AND_INSTANCES: &str = r#"
apiVersion: shakenfist.io/v1alpha1
kind: Namespace
metadata: {name: e2e}
spec: {}
---
apiVersion: shakenfist.io/v1alpha1
kind: Network
metadata: {name: web, namespace: e2e}
spec: {netblock: 10.77.0.0/24, provideDhcp: true, provideNat: false, provideDns: true}
---
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata: {name: web-1, namespace: e2e}
spec:
  cpus: 1
  memory: 256
  disks: [{size: 1, bus: virtio, type: disk}]
  networks: [{network: web}]
  powerState: "on"
---
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata: {name: web-2, namespace: e2e}
spec:
  cpus: 1
  memory: 256
  disks: [{size: 1, bus: virtio, type: disk}]
  networks: [{network: web}]
  powerState: "on"
---
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata: {name: web-3, namespace: e2e}
spec:
  cpus: 1
  memory: 256
  disks: [{size: 1, bus: virtio, type: disk}]
  networks: [{network: web, address: 10.77.0.50}]
  powerState: "on"
"#;

fn instances(system: &System) -> Vec<Value> {
    system
        .sf_json(&["get", "instances", "-n", "e2e", "-o", "json"])
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

fn instance(system: &System, name: &str) -> Option<Value> {
    instances(system)
        .into_iter()
        .find(|i| i["metadata"]["name"] == name)
}

fn wait_power(system: &System, name: &str, power: &str) {
    let got = wait_for(
        &format!("{name} to be {power}"),
        Duration::from_secs(90),
        || {
            let i = instance(system, name)?;
            (i["status"]["powerState"] == power).then_some(i)
        },
    );
    if let Err(e) = got {
        let ops = system.sf(&["get", "clusteroperations", "-n", "e2e", "-o", "wide"]);
        panic!(
            "{e}\nlast: {:?}\noperations:\n{}\n{}",
            instance(system, name),
            String::from_utf8_lossy(&ops.stdout),
            system.logs()
        );
    }
}

#[test]
fn network_and_instances_through_their_whole_life() {
    if !require_root("network_and_instances_through_their_whole_life") {
        return;
    }
    let system = match System::start(&SystemOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("system did not start: {e}"),
    };

    // A watch from before anything is applied: one JSON event per line.
    let mut watch = system
        .sf_command(&["get", "instances", "-A", "-w", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watch");
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = watch.stdout.take().expect("watch stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });

    let out = system.apply("web", NETWORK_AND_INSTANCES);
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for name in ["web-1", "web-2", "web-3"] {
        wait_power(&system, name, "running");
    }
    let all = instances(&system);
    let nodes: std::collections::BTreeSet<String> = all
        .iter()
        .filter_map(|i| i["status"]["node"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(all.len(), 3);
    assert!(
        nodes
            .iter()
            .all(|n| system.nodes.iter().any(|x| &x.name == n)),
        "placed on known nodes: {nodes:?}"
    );
    let web3 = instance(&system, "web-3").expect("web-3");
    assert_eq!(web3["status"]["state"], "created", "{web3}");

    // Addresses: every instance holds one, web-3 the one it asked for.
    let out = system.sf(&["network", "addresses", "web", "-n", "e2e"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("10.77.0.50"), "{table}");
    // The same, as shakenfist-client reads it on the v0.8 paths, from the objects the
    // live controllers wrote.
    let v08 = |path: &str| -> Value {
        let (code, body) = system.system_get(path).expect("v0.8 GET");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    };
    let rows = v08("/instances/web-3/interfaces?namespace=e2e");
    assert_eq!(rows[0]["ipv4"], "10.77.0.50", "{rows}");
    assert_eq!(rows[0]["state"], "created", "{rows}");
    let addresses = v08("/networks/web/addresses?namespace=e2e");
    let held = addresses
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["address"] == "10.77.0.50")
        .cloned()
        .unwrap_or_default();
    assert_eq!(held["type"], "instance", "{addresses}");
    assert_eq!(
        held["user"],
        json!(["networkinterface", rows[0]["uuid"]]),
        "{addresses}"
    );
    let nodes = v08("/nodes");
    assert_eq!(
        nodes.as_array().map(Vec::len),
        Some(system.nodes.len()),
        "{nodes}"
    );
    assert!(
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .all(|n| n["lastseen"].as_f64().is_some_and(|t| t > 0.0)),
        "every node has checked in: {nodes}"
    );

    // Power changes reach the observed state.
    for (verb, power) in [
        ("pause", "paused"),
        ("unpause", "running"),
        ("poweroff", "off"),
        ("poweron", "running"),
    ] {
        let out = system.sf(&["instance", verb, "web-1", "-n", "e2e"]);
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_power(&system, "web-1", power);
    }

    // The agent's events (spooled, then drained to sf-database) describe each step.
    let events = wait_for(
        "the agent's events for web-1",
        Duration::from_secs(30),
        || {
            let out = system.sf(&["events", "instance", "web-1", "-n", "e2e"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.contains("instance_pause") && text.contains("complete"))
                .then_some(text)
        },
    );
    assert!(events.is_ok(), "{events:?}\n{}", system.logs());

    // A screenshot is a PNG.
    let png = system.dir.path().join("shot.png");
    let out = system.sf(&[
        "instance",
        "screenshot",
        "web-2",
        "-n",
        "e2e",
        "-o",
        &png.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot file");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    // Hot plug an interface onto a running instance.
    let out = system.sf(&[
        "instance",
        "add-interface",
        "web-2",
        "--network",
        "web",
        "-n",
        "e2e",
    ]);
    assert!(
        out.status.success(),
        "add-interface: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hot = wait_for("the hot-plugged interface", Duration::from_secs(90), || {
        let i = instance(&system, "web-2")?;
        (i["status"]["interfaces"].as_array()?.len() >= 2).then_some(i)
    });
    assert!(hot.is_ok(), "{hot:?}\n{}", system.logs());

    // Delete web-3: gone, its address in the halo; re-create it with the same address.
    let out = system.sf(&["delete", "instance", "web-3", "-n", "e2e", "--wait"]);
    assert!(
        out.status.success(),
        "delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(instance(&system, "web-3").is_none());
    let leases = system
        .sf_json(&["get", "ipamleases", "-n", "e2e", "-o", "json"])
        .expect("leases");
    let halo = leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["spec"]["address"] == "10.77.0.50" && l["status"]["phase"] == "halo");
    assert!(halo, "10.77.0.50 rests in the halo: {leases}");
    // Explicitly asking for a halo address takes it again.
    let out = system.apply("web", NETWORK_AND_INSTANCES);
    assert!(
        out.status.success(),
        "re-apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_power(&system, "web-3", "running");

    // The watch saw every change, with strictly increasing resourceVersions.
    let _ = watch.kill();
    let _ = watch.wait();
    let events: Vec<Value> = rx.try_iter().collect();
    assert!(!events.is_empty(), "the watch saw nothing");
    let mut last = 0u64;
    for e in &events {
        let rv: u64 = e["object"]["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(rv > last, "resourceVersion {rv} after {last}: {e}");
        last = rv;
    }
    let deleted = events
        .iter()
        .any(|e| e["type"] == "DELETED" && e["object"]["metadata"]["name"] == "web-3");
    assert!(deleted, "the watch saw web-3 deleted");
}
