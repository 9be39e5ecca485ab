//! DESIGN.md's example (tests/fixtures) and every `shakenfist.io/v1alpha1` object in
//! the workspace's `examples/*.yaml` parse into the typed structs and validate clean.

mod common;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sf_schema::instance::{DesiredPowerState, DiskBus, InstanceState, ObservedPowerState};
use sf_schema::validation::{
    FieldError, validate_artifact, validate_blob, validate_cluster_operation, validate_instance,
    validate_ipam_lease, validate_namespace, validate_network, validate_network_interface,
    validate_node,
};
use sf_schema::{
    API_VERSION, Artifact, Blob, ClusterOperation, ConditionStatus, IPAMLease, Instance, Namespace,
    Network, NetworkInterface, Node,
};

/// Documentation writes `lastTransitionTime: ...`; a real object has a timestamp.
const PLACEHOLDER: &str = "...";
const PLACEHOLDER_TIME: &str = "2025-01-01T00:00:00Z";

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read YAML file");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Replaces the documentation placeholder in condition timestamps.
fn fill_placeholders(object: &mut Value) {
    if let Some(conditions) = object
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for condition in conditions {
            if condition.get("lastTransitionTime").and_then(Value::as_str) == Some(PLACEHOLDER) {
                condition["lastTransitionTime"] = PLACEHOLDER_TIME.into();
            }
        }
    }
}

fn check<K: DeserializeOwned>(origin: &str, object: Value, validate: fn(&K) -> Vec<FieldError>) {
    let typed: K =
        serde_json::from_value(object).unwrap_or_else(|e| panic!("{origin}: does not parse: {e}"));
    let errors = validate(&typed);
    assert!(
        errors.is_empty(),
        "{origin}: validation errors: {errors:#?}"
    );
}

/// Parses and validates one object by its kind; returns the kind.
fn parse_and_validate(origin: &str, mut object: Value) -> String {
    fill_placeholders(&mut object);
    let kind = object["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{origin}: no kind"))
        .to_owned();
    match kind.as_str() {
        "Instance" => check::<Instance>(origin, object, validate_instance),
        "Network" => check::<Network>(origin, object, validate_network),
        "NetworkInterface" => check::<NetworkInterface>(origin, object, validate_network_interface),
        "IPAMLease" => check::<IPAMLease>(origin, object, validate_ipam_lease),
        "Artifact" => check::<Artifact>(origin, object, validate_artifact),
        "Blob" => check::<Blob>(origin, object, validate_blob),
        "Namespace" => check::<Namespace>(origin, object, validate_namespace),
        "Node" => check::<Node>(origin, object, validate_node),
        "ClusterOperation" => check::<ClusterOperation>(origin, object, validate_cluster_operation),
        other => panic!("{origin}: kind {other} is not in {API_VERSION}"),
    }
    kind
}

#[test]
fn fixtures_parse_and_validate() {
    let files = yaml_files(&common::crate_dir().join("tests/fixtures"));
    assert!(!files.is_empty(), "no fixtures found");
    let mut kinds = Vec::new();
    for path in files {
        for (i, doc) in yaml_documents(&path).into_iter().enumerate() {
            assert_eq!(
                doc["apiVersion"],
                API_VERSION,
                "{} document {i}",
                path.display()
            );
            kinds.push(parse_and_validate(
                &format!("{} document {i}", path.display()),
                doc,
            ));
        }
    }
    assert!(kinds.contains(&"Network".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"Instance".to_owned()), "{kinds:?}");
}

#[test]
fn workspace_examples_parse_and_validate() {
    // Zero files is fine: the examples arrive with the features that need them.
    for path in yaml_files(&common::workspace_dir().join("examples")) {
        for (i, doc) in yaml_documents(&path).into_iter().enumerate() {
            if doc["apiVersion"] == API_VERSION {
                parse_and_validate(&format!("{} document {i}", path.display()), doc);
            }
        }
    }
}

#[test]
fn design_example_reads_as_documented() {
    let path = common::crate_dir().join("tests/fixtures/design-example.yaml");
    let mut docs = yaml_documents(&path);
    assert_eq!(docs.len(), 2);
    let network: Network = serde_json::from_value(docs.remove(0)).unwrap();
    assert_eq!(network.spec.netblock, "10.0.0.0/24");
    assert!(network.spec.provide_dhcp && network.spec.provide_nat && network.spec.provide_dns);
    assert_eq!(network.metadata.namespace.as_deref(), Some("demo"));

    let mut object = docs.remove(0);
    fill_placeholders(&mut object);
    let instance: Instance = serde_json::from_value(object).unwrap();
    let spec = &instance.spec;
    assert_eq!((spec.cpus, spec.memory), (2, 2048));
    assert_eq!(spec.disks[0].size, Some(20));
    assert_eq!(spec.disks[0].base.as_deref(), Some("debian-12"));
    assert_eq!(spec.disks[0].bus, DiskBus::Virtio);
    assert_eq!(spec.networks.len(), 2);
    assert_eq!(spec.networks[1].address.as_deref(), Some("10.0.0.50"));
    assert_eq!(spec.ssh_key.as_deref(), Some("ssh-ed25519 AAAA..."));
    assert_eq!(spec.power_state, DesiredPowerState::On);
    let status = instance.status.expect("the example has a status");
    assert_eq!(status.state, InstanceState::Created);
    assert_eq!(status.power_state, Some(ObservedPowerState::Running));
    assert_eq!(status.node.as_deref(), Some("hv-1"));
    assert_eq!(status.interfaces[0].ipv4.as_deref(), Some("10.0.0.7"));
    assert_eq!(
        status.interfaces[0].macaddr.as_deref(),
        Some("02:00:00:12:34:56")
    );
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.conditions[0].status, ConditionStatus::True);
    assert_eq!(status.conditions[0].reason, "Running");
}
