//! The JSON key paths of a fully populated object of every kind match the committed
//! `tests/golden/keys.txt` (proving camelCase output and catching renames), every
//! schema property is populated, and the full objects are valid.

mod common;

use std::collections::BTreeSet;

use serde_json::Value;
use sf_schema::crd::crd_for_kind;
use sf_schema::validation::{
    validate_artifact, validate_blob, validate_cluster_operation, validate_instance,
    validate_ipam_lease, validate_namespace, validate_network, validate_network_interface,
    validate_node,
};

use common::full;

fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                key_paths(child, &path, out);
            }
        }
        Value::Array(items) => {
            let path = format!("{prefix}[]");
            for item in items {
                key_paths(item, &path, out);
            }
        }
        _ => {}
    }
}

/// Property paths of a schema, and the paths under which any key is allowed (maps
/// and preserve-unknown-fields objects).
fn schema_paths(
    schema: &Value,
    prefix: &str,
    paths: &mut BTreeSet<String>,
    open: &mut BTreeSet<String>,
) {
    if schema.get("additionalProperties").is_some()
        || schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
    {
        open.insert(prefix.to_owned());
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            paths.insert(path.clone());
            schema_paths(child, &path, paths, open);
        }
    }
    if let Some(items) = schema.get("items") {
        schema_paths(items, &format!("{prefix}[]"), paths, open);
    }
}

#[test]
fn key_paths_match_golden() {
    let mut lines = String::new();
    for (kind, object) in full::all() {
        let mut paths = BTreeSet::new();
        key_paths(&object, "", &mut paths);
        for path in paths {
            lines.push_str(&format!("{kind} {path}\n"));
        }
    }
    // Spot checks that hold whatever the golden file says.
    for expected in [
        "Instance spec.disks[].bus",
        "Instance spec.disks[].type",
        "Instance spec.secureBoot",
        "Instance status.interfaces[].floatingAddress",
        "Network spec.provideDhcp",
        "IPAMLease status.haloUntil",
        "Artifact spec.artifactType",
        "ClusterOperation spec.dependsOn",
        "Instance status.conditions[].lastTransitionTime",
        "Instance status.conditions[].type",
    ] {
        assert!(lines.lines().any(|l| l == expected), "missing {expected}");
    }
    let snake: Vec<&str> = lines
        .lines()
        .filter(|line| {
            line.split_once(' ')
                .is_some_and(|(_, path)| path.contains('_'))
        })
        .collect();
    assert!(
        snake.is_empty(),
        "snake_case keys leaked into JSON: {snake:?}"
    );
    let path = common::crate_dir().join("tests/golden/keys.txt");
    if let Some(drift) = common::check_golden(&path, &lines) {
        panic!("{drift}");
    }
}

#[test]
fn full_objects_cover_every_schema_property() {
    for (kind, object) in full::all() {
        let crd = crd_for_kind(kind).expect("kind has a CRD");
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
        let mut schema_keys = BTreeSet::new();
        let mut open = BTreeSet::new();
        schema_paths(&schema["openAPIV3Schema"], "", &mut schema_keys, &mut open);
        let mut json_keys = BTreeSet::new();
        key_paths(&object, "", &mut json_keys);
        for path in &schema_keys {
            assert!(
                json_keys.contains(path),
                "{kind}: the full object lacks {path}"
            );
        }
        for path in json_keys
            .iter()
            .filter(|p| p.starts_with("spec") || p.starts_with("status"))
        {
            let allowed = schema_keys.contains(path)
                || open.iter().any(|o| path.starts_with(&format!("{o}.")));
            assert!(
                allowed,
                "{kind}: {path} is serialized but not in the schema"
            );
        }
    }
}

#[test]
fn full_objects_round_trip_and_validate() {
    fn round_trip<
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    >(
        object: T,
    ) -> T {
        let json = serde_json::to_value(&object).unwrap();
        let back: T = serde_json::from_value(json).unwrap();
        assert_eq!(back, object);
        back
    }
    assert_eq!(validate_instance(&round_trip(full::instance())), vec![]);
    assert_eq!(validate_network(&round_trip(full::network())), vec![]);
    assert_eq!(
        validate_network_interface(&round_trip(full::network_interface())),
        vec![]
    );
    assert_eq!(validate_ipam_lease(&round_trip(full::ipam_lease())), vec![]);
    assert_eq!(validate_artifact(&round_trip(full::artifact())), vec![]);
    assert_eq!(validate_blob(&round_trip(full::blob())), vec![]);
    assert_eq!(validate_namespace(&round_trip(full::namespace())), vec![]);
    assert_eq!(validate_node(&round_trip(full::node())), vec![]);
    assert_eq!(
        validate_cluster_operation(&round_trip(full::cluster_operation())),
        vec![]
    );
}
