//! Specs reject unknown fields, naming them, at every level; snake_case spellings of
//! camelCase fields count as unknown.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sf_schema::{
    Artifact, Blob, ClusterOperation, IPAMLease, Instance, Namespace, Network, NetworkInterface,
    Node,
};

fn object(kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "demo"},
        "spec": spec,
    })
}

fn parse_error<T: DeserializeOwned + std::fmt::Debug>(kind: &str, spec: Value) -> String {
    match serde_json::from_value::<T>(object(kind, spec)) {
        Ok(parsed) => panic!("{kind}: parsed although it should not: {parsed:?}"),
        Err(err) => err.to_string(),
    }
}

fn parses<T: DeserializeOwned>(kind: &str, spec: Value) {
    if let Err(err) = serde_json::from_value::<T>(object(kind, spec)) {
        panic!("{kind}: the base spec must parse: {err}");
    }
}

#[test]
fn instance_rejects_cpu_typo() {
    let err = parse_error::<Instance>("Instance", json!({"cpus": 1, "cpu": 2}));
    assert!(err.contains("unknown field `cpu`"), "{err}");
}

#[test]
fn instance_rejects_unknown_fields_in_yaml_too() {
    let yaml = "apiVersion: shakenfist.io/v1alpha1\nkind: Instance\nmetadata: {name: x}\nspec: {cpus: 1, cpu: 2}\n";
    let err = serde_norway::from_str::<Instance>(yaml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cpu"), "{err}");
}

#[test]
fn nested_spec_structs_reject_unknown_fields() {
    let base = || json!({"cpus": 1, "memory": 512, "disks": [{"size": 8}], "networks": [{"network": "web"}], "video": {}});
    parses::<Instance>("Instance", base());

    let mut spec = base();
    spec["disks"][0]["sizeGb"] = json!(8);
    let err = parse_error::<Instance>("Instance", spec);
    assert!(err.contains("unknown field `sizeGb`"), "{err}");

    let mut spec = base();
    spec["networks"][0]["ip"] = json!("10.0.0.5");
    let err = parse_error::<Instance>("Instance", spec);
    assert!(err.contains("unknown field `ip`"), "{err}");

    let mut spec = base();
    spec["video"]["colour"] = json!("blue");
    let err = parse_error::<Instance>("Instance", spec);
    assert!(err.contains("unknown field `colour`"), "{err}");

    // The Rust name of `type` is not a JSON name.
    let mut spec = base();
    spec["disks"][0]["disk_type"] = json!("disk");
    let err = parse_error::<Instance>("Instance", spec);
    assert!(err.contains("unknown field `disk_type`"), "{err}");
}

#[test]
fn snake_case_names_are_unknown() {
    let err = parse_error::<Instance>(
        "Instance",
        json!({"cpus": 1, "memory": 512, "ssh_key": "x"}),
    );
    assert!(err.contains("unknown field `ssh_key`"), "{err}");
    let err = parse_error::<Network>(
        "Network",
        json!({"netblock": "10.0.0.0/24", "provide_dhcp": true}),
    );
    assert!(err.contains("unknown field `provide_dhcp`"), "{err}");
}

#[test]
fn every_kind_rejects_an_unknown_spec_field() {
    fn check<T: DeserializeOwned + std::fmt::Debug>(kind: &str, mut spec: Value) {
        parses::<T>(kind, spec.clone());
        spec["bogusField"] = json!(1);
        let err = parse_error::<T>(kind, spec);
        assert!(err.contains("unknown field `bogusField`"), "{kind}: {err}");
    }
    let target = json!({"kind": "Instance", "name": "web-1", "uid": "u"});
    check::<Instance>("Instance", json!({"cpus": 1, "memory": 512}));
    check::<Network>("Network", json!({"netblock": "10.0.0.0/24"}));
    check::<NetworkInterface>("NetworkInterface", json!({"instance": "a", "network": "b"}));
    check::<IPAMLease>(
        "IPAMLease",
        json!({"network": "a", "networkUid": "u", "address": "10.0.0.1"}),
    );
    check::<Artifact>("Artifact", json!({"sourceUrl": "https://x/y"}));
    check::<Blob>("Blob", json!({"ownerNamespace": "demo"}));
    check::<Namespace>("Namespace", json!({}));
    check::<Node>("Node", json!({}));
    check::<ClusterOperation>(
        "ClusterOperation",
        json!({"operationType": "instance_create", "target": target}),
    );

    let mut bad_target = target.clone();
    bad_target["namespcae"] = json!("demo");
    let err = parse_error::<ClusterOperation>(
        "ClusterOperation",
        json!({"operationType": "instance_create", "target": bad_target}),
    );
    assert!(err.contains("unknown field `namespcae`"), "{err}");
}

#[test]
fn unknown_enum_values_parse_for_validation_to_report() {
    let instance: Instance = serde_json::from_value(object(
        "Instance",
        json!({"cpus": 1, "memory": 512, "disks": [{"size": 8, "bus": "ide"}], "powerState": "hibernating"}),
    ))
    .unwrap();
    assert_eq!(instance.spec.disks[0].bus.as_str(), "ide");
    assert!(!instance.spec.disks[0].bus.is_known());
    assert!(!instance.spec.power_state.is_known());
}
