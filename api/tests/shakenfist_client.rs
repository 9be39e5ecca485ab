//! The real `shakenfist-client` from PyPI (pinned: 0.8.3) against sf-api's v0.8 paths:
//! authentication, networks, instances, power actions, a snapshot request and the
//! snapshot list, events (of instances, networks and artifacts), interfaces (by
//! instance, by network, by uuid; hot plug; float and defloat), network addresses, nodes,
//! blobs, metadata items (set, delete, read), artifacts (max versions, delete all), errors, and deletes (one instance, and every instance of a
//! namespace, each polled by uuid until it reads `deleted`), each through the
//! client's own Python API.
//!
//! The client lives in a virtualenv under Cargo's target directory, made on the first
//! run with `python3 -m venv` and `pip install` (PyPI is one of the registries these
//! machines reach). Where python3, venv or PyPI is missing the test says so and is
//! skipped; with `SF_REQUIRE_PRIVILEGED=1` (set by `.ci/run`) it fails instead.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::start;
use serde_json::{Value, json};

const CLIENT: &str = "shakenfist-client==0.8.3";

/// The client's steps; prints one JSON object of what each returned.
const SCRIPT: &str = r#"
import json, os
import requests
from shakenfist_client import apiclient

c = apiclient.Client(base_url=os.environ['SF_URL'], namespace='ta', key='key-a',
                     suppress_configuration_lookup=True,
                     async_strategy=apiclient.ASYNC_CONTINUE)
out = {}
net = c.allocate_network('10.0.0.0/24', True, False, 'web')
out['network'] = net
inst = c.create_instance(
    'web-1', 1, 512, [{'network_uuid': net['uuid']}],
    [{'size': 8, 'base': None, 'bus': None, 'type': 'disk'}], None, None)
out['instance'] = inst
out['instances'] = c.get_instances()
out['by_name'] = c.get_instance('web-1')
out['networks'] = c.get_networks()
out['poweroff'] = c.power_off_instance('web-1')
try:
    c.pause_instance('web-1')
    out['pause_when_off'] = 'accepted'
except apiclient.APIException as e:
    out['pause_when_off'] = type(e).__name__
out['poweron'] = c.power_on_instance(inst['uuid'])
out['pause'] = c.pause_instance('web-1')
out['unpause'] = c.unpause_instance('web-1')
# Placed (what the scheduler would write), then snapshotted through the client.
placed = requests.patch(
    os.environ['SF_URL'] + '/apis/shakenfist.io/v1alpha1/namespaces/ta/instances/web-1/status',
    headers={'Authorization': 'Bearer ' + os.environ['SF_SYSTEM_TOKEN'],
             'Content-Type': 'application/merge-patch+json'},
    data=json.dumps({'status': {'node': 'hv-1'}}), timeout=30)
placed.raise_for_status()
out['snapshot'] = c.snapshot_instance('web-1')
out['snapshots'] = c.get_instance_snapshots('web-1')
out['events'] = c.get_instance_events('web-1', limit=5)
out['interfaces'] = c.get_instance_interfaces('web-1')
out['artifacts'] = c.get_artifacts()
out['artifact_events'] = c.get_artifact_events(out['artifacts'][0]['uuid'])
out['max_versions'] = c.set_artifact_max_versions(out['artifacts'][0]['uuid'], 2)
# An interface (what the instance controller would make), through the client.
made = requests.post(
    os.environ['SF_URL'] + '/apis/shakenfist.io/v1alpha1/namespaces/ta/networkinterfaces',
    headers={'Authorization': 'Bearer ' + os.environ['SF_SYSTEM_TOKEN']},
    json={'apiVersion': 'shakenfist.io/v1alpha1', 'kind': 'NetworkInterface',
          'metadata': {'name': 'web-1-0', 'namespace': 'ta'},
          'spec': {'instance': 'web-1', 'network': 'web'}}, timeout=30)
made.raise_for_status()
iface = made.json()['metadata']['uid']
out['interface'] = c.get_interface(iface)
out['float'] = c.float_interface(iface)
out['defloat'] = c.defloat_interface(iface)
out['plugged'] = c.add_instance_interface('web-1', {'network_uuid': net['uuid']})
out['network_interfaces'] = c.get_network_interfaces('web')
out['network_addresses'] = c.get_network_addresses('web')
out['network_events'] = c.get_network_events('web', limit=5)
out['nodes'] = c.get_nodes()
c.set_instance_metadata_item('web-1', 'owner', 'ops')
c.set_instance_metadata_item('web-1', 'tags', ['front'])
c.delete_instance_metadata_item('web-1', 'owner')
out['instance_metadata'] = c.get_instance_metadata('web-1')
c.set_network_metadata_item('web', 'tier', 'front')
out['network_metadata'] = c.get_network_metadata('web')
c.set_interface_metadata_item(iface, 'role', 'public')
out['interface_metadata'] = c.get_interface_metadata(iface)
out['blobs'] = c.get_blobs()
try:
    c.get_instance('nothing-here')
    out['missing'] = 'found'
except apiclient.ResourceNotFoundException:
    out['missing'] = 'ResourceNotFoundException'
# A synchronous delete polls the instance by uuid until it reads state deleted.
out['deleted'] = c.delete_instance(inst['uuid'])
out['after_delete'] = c.get_instances()
# Deleting every instance of the namespace waits until each reads deleted.
second = c.create_instance(
    'web-2', 1, 512, [], [{'size': 8, 'base': None, 'bus': None, 'type': 'disk'}], None, None)
out['second'] = second
out['deleted_all'] = c.delete_all_instances('ta')
out['after_delete_all'] = c.get_instances()
out['artifacts_deleted'] = c.delete_all_artifacts('ta')
out['network_deleted'] = c.delete_network(net['uuid'])
print(json.dumps(out))
"#;

/// Whether a missing prerequisite fails the test instead of skipping it.
fn required() -> bool {
    std::env::var("SF_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The virtualenv's python with the client installed (made when missing).
fn client_python() -> Result<PathBuf, String> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shakenfist-client-0.8.3");
    let python = venv.join("bin").join("python");
    let installed = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import shakenfist_client.apiclient"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if installed(&python) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        CLIENT,
    ]))?;
    if installed(&python) {
        Ok(python)
    } else {
        Err(format!("{CLIENT} did not import after installing it"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shakenfist_client_drives_the_v08_paths() {
    let python = match client_python() {
        Ok(p) => p,
        Err(e) if required() => panic!("the real shakenfist-client is required here: {e}"),
        Err(e) => {
            eprintln!("skipped: the real shakenfist-client could not be installed: {e}");
            return;
        }
    };
    let env = start().await;
    let _ = env.tenant("ta", "key-a").await;
    let url = env.url.clone();
    let token = env.system_token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args(["-c", SCRIPT])
            .env("SF_URL", url)
            .env("SF_SYSTEM_TOKEN", token)
            .output()
            .expect("run the client")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON");

    let uuid = got["instance"]["uuid"].as_str().expect("instance uuid");
    assert_eq!(got["instance"]["name"], "web-1", "{got}");
    assert_eq!(got["instance"]["namespace"], "ta");
    assert_eq!(got["network"]["netblock"], "10.0.0.0/24");
    assert_eq!(got["instances"].as_array().map(Vec::len), Some(1), "{got}");
    assert_eq!(got["by_name"]["uuid"], uuid);
    assert_eq!(got["networks"][0]["name"], "web");
    assert_eq!(got["poweroff"]["power_state"], "off", "{got}");
    assert_eq!(
        got["pause_when_off"], "ResourceStateConflictException",
        "{got}"
    );
    assert_eq!(got["poweron"]["power_state"], "on");
    assert_eq!(got["pause"]["power_state"], "paused");
    assert_eq!(got["unpause"]["power_state"], "on");
    // The snapshot answer names what the agent will write; nothing recorded yet.
    let vda = &got["snapshot"]["vda"];
    assert_eq!(
        vda["source_url"],
        format!("sf://instance/{uuid}/vda"),
        "{got}"
    );
    assert!(vda["artifact_uuid"].is_string(), "{got}");
    assert_eq!(vda["blob_uuid"].as_str().map(str::len), Some(36), "{got}");
    assert_eq!(got["snapshot"].as_object().map(|o| o.len()), Some(1));
    assert_eq!(got["snapshots"], json!([]));
    assert_eq!(env.count_rows("ClusterOperation"), 1);
    assert_eq!(got["events"], json!([]));
    assert_eq!(got["interfaces"], json!([]));
    // The snapshot artifact, made with the request.
    let artifacts = got["artifacts"].as_array().cloned().unwrap_or_default();
    assert_eq!(artifacts.len(), 1, "{got}");
    assert_eq!(artifacts[0]["artifact_type"], "snapshot");
    assert_eq!(artifacts[0]["uuid"], vda["artifact_uuid"]);
    assert_eq!(got["missing"], "ResourceNotFoundException");
    assert_eq!(got["deleted"]["uuid"], uuid, "{got}");
    assert_eq!(got["deleted"]["state"], "deleted", "{got}");
    assert_eq!(got["after_delete"], json!([]), "{got}");
    assert_eq!(got["network_deleted"]["name"], "web", "{got}");
    assert_eq!(got["artifact_events"], json!([]), "{got}");
    assert_eq!(got["interface"]["instance_uuid"], uuid, "{got}");
    assert_eq!(got["interface"]["network_uuid"], got["network"]["uuid"]);
    assert_eq!(got["float"]["uuid"], got["interface"]["uuid"]);
    assert_eq!(got["defloat"]["uuid"], got["interface"]["uuid"]);
    assert_eq!(
        got["network_interfaces"][0]["uuid"], got["interface"]["uuid"],
        "{got}"
    );
    assert_eq!(got["plugged"]["order"], 1, "{got}");
    assert_eq!(got["network_interfaces"][1]["uuid"], got["plugged"]["uuid"]);
    // No controller runs here: nothing reserved, no node, no blob.
    assert_eq!(got["network_addresses"], json!([]), "{got}");
    assert_eq!(got["network_events"], json!([]), "{got}");
    assert_eq!(got["nodes"], json!([]), "{got}");
    assert_eq!(got["blobs"], json!([]), "{got}");
    assert_eq!(
        got["instance_metadata"],
        json!({"tags": ["front"]}),
        "{got}"
    );
    assert_eq!(got["network_metadata"], json!({"tier": "front"}), "{got}");
    assert_eq!(
        got["interface_metadata"],
        json!({"role": "public"}),
        "{got}"
    );
    assert_eq!(got["deleted_all"], json!([got["second"]["uuid"]]), "{got}");
    assert_eq!(got["after_delete_all"], json!([]), "{got}");
    assert_eq!(got["max_versions"]["max_versions"], 2, "{got}");
    assert_eq!(
        got["artifacts_deleted"],
        json!([artifacts[0]["uuid"]]),
        "{got}"
    );
}
