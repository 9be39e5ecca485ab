//! The committed `schema/crds/<plural>.yaml` files match the code; every CRD has the
//! right names, scope, short names, printer columns and status subresource, and a
//! structural schema.

mod common;

use serde_json::Value;
use sf_schema::crd::{KINDS, all_crds, crd_for_kind, crd_yaml};

#[test]
fn committed_crd_yaml_matches_the_code() {
    let dir = common::crate_dir().join("crds");
    let mut drift = Vec::new();
    let mut expected_files = Vec::new();
    for crd in all_crds() {
        let file = format!("{}.yaml", crd.spec.names.plural);
        let yaml = crd_yaml(&crd).expect("CRD renders as YAML");
        if let Some(problem) = common::check_golden(&dir.join(&file), &yaml) {
            drift.push(problem);
        }
        expected_files.push(file);
    }
    // A kind that was removed must not leave its CRD behind.
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("schema/crds exists")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    if present != expected_files {
        drift.push(format!(
            "schema/crds holds {present:?} but the code generates {expected_files:?}; remove stale files and run `{}=1 cargo test -p sf-schema`",
            common::UPDATE_ENV
        ));
    }
    assert!(drift.is_empty(), "{}", drift.join("\n\n"));
}

#[test]
fn names_scope_short_names_and_status_subresource() {
    let expected = [
        ("Namespace", "namespaces", "Cluster", "sfns"),
        ("Instance", "instances", "Namespaced", "inst"),
        ("Network", "networks", "Namespaced", "net"),
        (
            "NetworkInterface",
            "networkinterfaces",
            "Namespaced",
            "netif",
        ),
        ("IPAMLease", "ipamleases", "Namespaced", "lease"),
        ("Artifact", "artifacts", "Namespaced", "art"),
        ("Blob", "blobs", "Cluster", "blob"),
        ("Node", "nodes", "Cluster", "sfnode"),
        ("ClusterOperation", "clusteroperations", "Namespaced", "op"),
    ];
    assert_eq!(expected.map(|e| e.0), KINDS);
    for (kind, plural, scope, short) in expected {
        let crd = crd_for_kind(kind).expect("CRD exists");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.shakenfist.io").as_str())
        );
        assert_eq!(crd.spec.group, "shakenfist.io");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(crd.spec.scope, scope, "{kind}");
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec![short.to_owned()]),
            "{kind}"
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(
            subresources.status.is_some(),
            "{kind} has the status subresource"
        );
        let columns = version
            .additional_printer_columns
            .as_ref()
            .expect("printer columns");
        assert_eq!(
            columns.last().map(|c| c.name.as_str()),
            Some("Age"),
            "{kind}"
        );
    }
}

#[test]
fn instance_printer_columns() {
    let crd = crd_for_kind("Instance").expect("CRD exists");
    let columns: Vec<(String, String)> = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .expect("columns")
        .into_iter()
        .map(|c| (c.name.to_uppercase(), c.json_path))
        .collect();
    let expected = [
        ("STATE", ".status.state"),
        ("POWER", ".status.powerState"),
        ("NODE", ".status.node"),
        ("IPV4", ".status.interfaces[0].ipv4"),
        ("AGE", ".metadata.creationTimestamp"),
    ];
    assert_eq!(columns, expected.map(|(n, p)| (n.to_owned(), p.to_owned())));
}

/// Structural-schema rules (apiextensions): every node has a type or preserves
/// unknown fields, no logical junctions carry types, no `$ref`, enums list strings.
fn check_structural(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    let preserves = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !object.contains_key("type")
        && !preserves
        && !object.contains_key("x-kubernetes-int-or-string")
    {
        problems.push(format!("{path}: no type"));
    }
    for junction in ["anyOf", "oneOf", "allOf", "not", "$ref"] {
        if object.contains_key(junction) {
            problems.push(format!("{path}: has {junction}"));
        }
    }
    if let Some(values) = object.get("enum").and_then(Value::as_array)
        && !values.iter().all(Value::is_string)
    {
        problems.push(format!("{path}: enum with a non-string value: {values:?}"));
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            check_structural(child, &format!("{path}.{key}"), problems);
        }
    }
    if let Some(items) = object.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(additional) = object.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(additional, &format!("{path}{{}}"), problems);
    }
}

#[test]
fn schemas_are_structural() {
    let mut problems = Vec::new();
    for crd in all_crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
        let root = &schema["openAPIV3Schema"];
        assert!(root.is_object(), "{} has a schema", crd.spec.names.kind);
        check_structural(root, &crd.spec.names.kind, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn free_form_json_preserves_unknown_fields() {
    let crd = crd_for_kind("ClusterOperation").expect("CRD exists");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
    let root = &schema["openAPIV3Schema"]["properties"];
    for field in [
        &root["spec"]["properties"]["payload"],
        &root["status"]["properties"]["result"],
    ] {
        assert_eq!(field["type"], "object", "{field}");
        assert_eq!(
            field["x-kubernetes-preserve-unknown-fields"], true,
            "{field}"
        );
    }
}

#[test]
fn string_enums_list_known_values_and_defaults() {
    let crd = crd_for_kind("Instance").expect("CRD exists");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let bus = &spec["disks"]["items"]["properties"]["bus"];
    assert_eq!(
        bus["enum"],
        serde_json::json!(["virtio", "sata", "scsi", "usb", "nvme"])
    );
    assert_eq!(bus["default"], "virtio");
    assert_eq!(spec["powerState"]["default"], "on");
    assert_eq!(spec["configDrive"]["default"], "openstack-disk");
    let required: Vec<&str> = spec
        .as_object()
        .map(|_| ())
        .and(schema["openAPIV3Schema"]["properties"]["spec"]["required"].as_array())
        .expect("required list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["cpus", "memory"]);
    let status = &schema["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert_eq!(status["powerState"]["nullable"], true);
    assert_eq!(
        status["powerState"]["enum"],
        serde_json::json!(["running", "paused", "off", "crashed"])
    );
}
