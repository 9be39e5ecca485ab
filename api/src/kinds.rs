//! The kinds sf-api serves, read from the CRDs of `sf-schema`.
//!
//! Contract: [`Kinds::new`] builds one [`KindInfo`] per CRD of
//! [`sf_schema::all_crds`] (names, scope, short names, the OpenAPI v3 schema of the
//! served version) and pairs it with the kind's typed decoder and semantic validator
//! ([`KindInfo::check`]). Nothing here does I/O; a kind in the CRDs without a checker is
//! a programming error reported by [`KindsError`].

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sf_schema::validation as v;
use sf_schema::{
    Artifact, Blob, ClusterOperation, FieldError, IPAMLease, Instance, Namespace, Network,
    NetworkInterface, Node,
};

/// Building the kind table failed.
#[derive(Debug, thiserror::Error)]
pub enum KindsError {
    /// A CRD names a kind sf-api has no decoder for.
    #[error("CRD kind {0} has no decoder in sf-api")]
    NoChecker(String),
    /// A CRD does not serve `v1alpha1` with a schema.
    #[error("CRD {0} has no {version} schema", version = sf_schema::VERSION)]
    NoSchema(String),
}

/// A typed decode failed: the value does not fit the kind's Rust type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// JSON path of the offending value (`spec.cpus`), or empty for the root.
    pub path: String,
    /// serde's message.
    pub message: String,
}

/// A decoded object: its canonical JSON (defaults filled in, as the typed struct
/// serialises it) and every semantic problem.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The object re-serialised from its typed form.
    pub canonical: Value,
    /// Semantic validation problems (empty: valid).
    pub problems: Vec<FieldError>,
}

type Checker = fn(&Value) -> Result<Checked, DecodeError>;

/// One kind of the `shakenfist.io` group.
#[derive(Debug)]
pub struct KindInfo {
    /// `Instance`.
    pub kind: String,
    /// `instances`.
    pub plural: String,
    /// `instance`.
    pub singular: String,
    /// `inst`.
    pub short_names: Vec<String>,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// The `openAPIV3Schema` of the served version, as JSON.
    pub schema: Value,
    checker: Checker,
}

impl KindInfo {
    /// Decodes `object` as this kind's Rust type and runs its semantic validator.
    pub fn check(&self, object: &Value) -> Result<Checked, DecodeError> {
        (self.checker)(object)
    }

    /// `InstanceList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

fn typed<K: DeserializeOwned + Serialize>(
    object: &Value,
    validate: fn(&K) -> Vec<FieldError>,
) -> Result<Checked, DecodeError> {
    let parsed: K = serde_path_to_error::deserialize(object).map_err(|e| {
        let path = e.path().to_string();
        DecodeError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    let canonical = serde_json::to_value(&parsed).map_err(|e| DecodeError {
        path: String::new(),
        message: e.to_string(),
    })?;
    Ok(Checked {
        canonical,
        problems: validate(&parsed),
    })
}

fn checker_for(kind: &str) -> Option<Checker> {
    Some(match kind {
        "Namespace" => |o| typed::<Namespace>(o, v::validate_namespace),
        "Instance" => |o| typed::<Instance>(o, v::validate_instance),
        "Network" => |o| typed::<Network>(o, v::validate_network),
        "NetworkInterface" => |o| typed::<NetworkInterface>(o, v::validate_network_interface),
        "IPAMLease" => |o| typed::<IPAMLease>(o, v::validate_ipam_lease),
        "Artifact" => |o| typed::<Artifact>(o, v::validate_artifact),
        "Blob" => |o| typed::<Blob>(o, v::validate_blob),
        "Node" => |o| typed::<Node>(o, v::validate_node),
        "ClusterOperation" => |o| typed::<ClusterOperation>(o, v::validate_cluster_operation),
        _ => return None,
    })
}

/// Every served kind, by plural, in CRD order.
#[derive(Debug, Clone)]
pub struct Kinds {
    ordered: Vec<Arc<KindInfo>>,
    by_plural: HashMap<String, Arc<KindInfo>>,
}

impl Kinds {
    /// The table built from [`sf_schema::all_crds`].
    pub fn new() -> Result<Self, KindsError> {
        let mut ordered = Vec::new();
        for crd in sf_schema::all_crds() {
            let names = crd.spec.names;
            let checker = checker_for(&names.kind)
                .ok_or_else(|| KindsError::NoChecker(names.kind.clone()))?;
            let schema = crd
                .spec
                .versions
                .iter()
                .find(|version| version.name == sf_schema::VERSION)
                .and_then(|version| version.schema.as_ref())
                .and_then(|schema| schema.open_api_v3_schema.as_ref())
                .and_then(|schema| serde_json::to_value(schema).ok())
                .ok_or_else(|| KindsError::NoSchema(names.plural.clone()))?;
            ordered.push(Arc::new(KindInfo {
                singular: names
                    .singular
                    .clone()
                    .unwrap_or_else(|| names.kind.to_lowercase()),
                short_names: names.short_names.clone().unwrap_or_default(),
                namespaced: crd.spec.scope == "Namespaced",
                kind: names.kind,
                plural: names.plural,
                schema,
                checker,
            }));
        }
        let by_plural = ordered
            .iter()
            .map(|k| (k.plural.clone(), k.clone()))
            .collect();
        Ok(Self { ordered, by_plural })
    }

    /// The kind served under `plural`.
    pub fn by_plural(&self, plural: &str) -> Option<&Arc<KindInfo>> {
        self.by_plural.get(plural)
    }

    /// The kind named `kind` (e.g. `Instance`).
    pub fn by_kind(&self, kind: &str) -> Option<&Arc<KindInfo>> {
        self.ordered.iter().find(|k| k.kind == kind)
    }

    /// Every kind, in CRD order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<KindInfo>> {
        self.ordered.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_crd_kind_is_served() {
        let kinds = Kinds::new().unwrap();
        assert_eq!(kinds.iter().count(), sf_schema::crd::KINDS.len());
        let instances = kinds.by_plural("instances").unwrap();
        assert_eq!(instances.kind, "Instance");
        assert_eq!(instances.singular, "instance");
        assert!(instances.namespaced);
        assert_eq!(instances.short_names, vec!["inst".to_string()]);
        assert!(!kinds.by_plural("nodes").unwrap().namespaced);
        assert!(!kinds.by_plural("namespaces").unwrap().namespaced);
        assert!(kinds.by_plural("pods").is_none());
    }

    #[test]
    fn decode_errors_carry_the_json_path() {
        let kinds = Kinds::new().unwrap();
        let instances = kinds.by_plural("instances").unwrap();
        let err = instances
            .check(&json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
                "metadata": {"name": "a", "namespace": "demo"},
                "spec": {"cpus": "two", "memory": 512, "disks": [{"size": 8}]}
            }))
            .unwrap_err();
        assert_eq!(err.path, "spec.cpus");
    }

    #[test]
    fn check_fills_defaults_and_reports_semantic_problems() {
        let kinds = Kinds::new().unwrap();
        let instances = kinds.by_plural("instances").unwrap();
        let checked = instances
            .check(&json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
                "metadata": {"name": "a", "namespace": "demo"},
                "spec": {"cpus": 0, "memory": 512, "disks": [{"size": 8}]}
            }))
            .unwrap();
        assert_eq!(checked.canonical["spec"]["disks"][0]["bus"], "virtio");
        assert!(
            checked.problems.iter().any(|p| p.field == "spec.cpus"),
            "{:?}",
            checked.problems
        );
    }
}
