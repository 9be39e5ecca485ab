//! Admission of a written object: unknown-field pruning, typed decoding and semantic
//! validation, before anything reaches sf-database.
//!
//! Contract ([`admit`]):
//! - Unknown fields are found by walking the object against the kind's OpenAPI v3
//!   schema (the CRD's structural schema, as kube-apiserver prunes custom resources;
//!   `x-kubernetes-preserve-unknown-fields` subtrees are kept whole) and `metadata`
//!   against the ObjectMeta field names. They are removed; under
//!   `fieldValidation=Strict` their presence is [`AdmissionError::UnknownFields`]
//!   (400, `strict decoding error: unknown field "spec.cpu"`), under `Warn` each becomes
//!   a warning for the `Warning` header, under `Ignore` nothing.
//! - The pruned object is decoded into the kind's Rust type; a value that does not fit
//!   is [`AdmissionError::Decode`] (422 with the field path).
//! - For the main resource, `status` is dropped first (the main endpoint ignores it),
//!   the kind's semantic validator runs and any problem is [`AdmissionError::Invalid`]
//!   (422 listing every field); the stored spec is the typed form re-serialised, so
//!   defaults are filled in. For `/status`, only `status` is pruned and canonicalised,
//!   and the spec validators do not run (status is the controllers' and agents' to
//!   write).

use serde_json::{Map, Value};
use sf_schema::FieldError;

use crate::error::{ApiError, Cause, Subject};
use crate::gateway::Part;
use crate::kinds::{DecodeError, KindInfo};
use crate::params::FieldValidation;

/// The ObjectMeta fields (everything else under `metadata` is unknown).
const OBJECT_META_FIELDS: [&str; 15] = [
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// Why an object was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    /// Unknown fields under `fieldValidation=Strict`.
    #[error("strict decoding error: {}", unknown_list(.0))]
    UnknownFields(Vec<String>),
    /// The object does not decode into the kind's type.
    #[error("{}: {}", .0.path, .0.message)]
    Decode(DecodeError),
    /// Semantic validation failed.
    #[error("{} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
    /// The body is not a JSON object.
    #[error("the object must be a JSON object")]
    NotAnObject,
}

fn unknown_list(paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl AdmissionError {
    /// The API error for `subject`.
    pub fn into_api(self, subject: &Subject) -> ApiError {
        match self {
            Self::UnknownFields(_) | Self::NotAnObject => ApiError::BadRequest(self.to_string()),
            Self::Decode(e) => ApiError::Invalid {
                subject: subject.clone(),
                causes: vec![decode_cause(&e)],
            },
            Self::Invalid(problems) => ApiError::Invalid {
                subject: subject.clone(),
                causes: problems.into_iter().map(Cause::from).collect(),
            },
        }
    }
}

/// A decode error as a cause: `missing field` is FieldValueRequired on the missing
/// field; anything else FieldValueInvalid on the path serde reached.
fn decode_cause(e: &DecodeError) -> Cause {
    let missing = e
        .message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match missing {
        Some(field) => {
            let path = if e.path.is_empty() {
                field.to_string()
            } else {
                format!("{}.{field}", e.path)
            };
            Cause {
                reason: "FieldValueRequired".into(),
                message: format!("{path} is required"),
                field: path,
            }
        }
        None => Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("invalid value at {}: {}", e.path, e.message),
            field: e.path.clone(),
        },
    }
}

/// An admitted object.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// What to send to sf-database.
    pub object: Value,
    /// `Warning` header texts (unknown fields dropped under `Warn`).
    pub warnings: Vec<String>,
}

/// Admits `object` (a whole object of `kind`) for a write of `part`; see the module
/// contract.
pub fn admit(
    kind: &KindInfo,
    mut object: Value,
    part: Part,
    mode: FieldValidation,
) -> Result<Admitted, AdmissionError> {
    let map = object.as_object_mut().ok_or(AdmissionError::NotAnObject)?;
    let properties = kind.schema.get("properties").and_then(Value::as_object);
    let mut unknown = Vec::new();
    match part {
        Part::Main => {
            map.remove("status");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if matches!(key.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if key == "metadata" {
                    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                        prune_metadata(meta, &mut unknown);
                    }
                    continue;
                }
                match properties.and_then(|p| p.get(&key)) {
                    Some(schema) => {
                        if let Some(value) = map.get_mut(&key) {
                            prune(value, schema, &key, &mut unknown);
                        }
                    }
                    None => {
                        map.remove(&key);
                        unknown.push(key);
                    }
                }
            }
        }
        Part::Status => {
            if let (Some(value), Some(schema)) = (
                map.get_mut("status"),
                properties.and_then(|p| p.get("status")),
            ) {
                prune(value, schema, "status", &mut unknown);
            }
        }
    }
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        match mode {
            FieldValidation::Strict => return Err(AdmissionError::UnknownFields(unknown)),
            FieldValidation::Warn => {
                warnings = unknown
                    .iter()
                    .map(|p| format!("unknown field \"{p}\""))
                    .collect();
            }
            FieldValidation::Ignore => {}
        }
    }
    let checked = kind.check(&object).map_err(AdmissionError::Decode)?;
    let field = match part {
        Part::Main => {
            if !checked.problems.is_empty() {
                return Err(AdmissionError::Invalid(checked.problems));
            }
            "spec"
        }
        Part::Status => "status",
    };
    if let Some(map) = object.as_object_mut() {
        match checked.canonical.get(field) {
            Some(value) if !value.is_null() => {
                map.insert(field.to_string(), value.clone());
            }
            _ => {
                map.remove(field);
            }
        }
    }
    Ok(Admitted { object, warnings })
}

fn prune_metadata(meta: &mut Map<String, Value>, unknown: &mut Vec<String>) {
    let extra: Vec<String> = meta
        .keys()
        .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in extra {
        meta.remove(&key);
        unknown.push(format!("metadata.{key}"));
    }
}

/// Removes what `schema` does not describe from `value`, recording each removed path.
fn prune(value: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if properties.is_none() && additional.is_none() {
                // An object the schema does not describe further: keep it whole.
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = format!("{path}.{key}");
                let child_schema = properties
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(child_schema) => {
                        if let Some(child) = map.get_mut(&key) {
                            prune(child, child_schema, &child_path, unknown);
                        }
                    }
                    None if additional.and_then(Value::as_bool) == Some(true) => {}
                    None => {
                        map.remove(&key);
                        unknown.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, item_schema, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Kinds;
    use serde_json::json;

    fn instance(spec: Value) -> Value {
        json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "web-1", "namespace": "demo"},
            "spec": spec,
        })
    }

    fn good_spec() -> Value {
        json!({"cpus": 1, "memory": 512, "disks": [{"size": 8}]})
    }

    #[test]
    fn strict_names_every_unknown_field() {
        let kinds = Kinds::new().unwrap();
        let kind = kinds.by_plural("instances").unwrap();
        let mut object = instance(good_spec());
        object["spec"]["cpu"] = json!(2);
        object["spec"]["disks"][0]["sizeGb"] = json!(8);
        object["metadata"]["colour"] = json!("red");
        object["extra"] = json!(1);
        let err = admit(kind, object, Part::Main, FieldValidation::Strict).unwrap_err();
        let AdmissionError::UnknownFields(paths) = &err else {
            panic!("{err:?}")
        };
        let mut paths = paths.clone();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                "extra",
                "metadata.colour",
                "spec.cpu",
                "spec.disks[0].sizeGb"
            ]
        );
        assert!(
            err.to_string().contains("unknown field \"spec.cpu\""),
            "{err}"
        );
    }

    #[test]
    fn warn_prunes_and_warns() {
        let kinds = Kinds::new().unwrap();
        let kind = kinds.by_plural("instances").unwrap();
        let mut object = instance(good_spec());
        object["spec"]["cpu"] = json!(2);
        let admitted = admit(kind, object, Part::Main, FieldValidation::Warn).unwrap();
        assert!(admitted.object["spec"].get("cpu").is_none());
        assert_eq!(admitted.warnings, vec!["unknown field \"spec.cpu\""]);
        // Defaults filled in from the typed form.
        assert_eq!(admitted.object["spec"]["disks"][0]["bus"], "virtio");
    }

    #[test]
    fn main_writes_drop_status_and_validate_spec() {
        let kinds = Kinds::new().unwrap();
        let kind = kinds.by_plural("instances").unwrap();
        let mut object =
            instance(json!({"cpus": 0, "memory": 1, "disks": [{"size": 8, "bus": "ide"}]}));
        object["status"] = json!({"state": "created"});
        let err = admit(kind, object.clone(), Part::Main, FieldValidation::Strict).unwrap_err();
        let AdmissionError::Invalid(problems) = &err else {
            panic!("{err:?}")
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"spec.cpus"), "{fields:?}");
        assert!(fields.contains(&"spec.memory"), "{fields:?}");
        assert!(fields.contains(&"spec.disks[0].bus"), "{fields:?}");

        object["spec"] = good_spec();
        let admitted = admit(kind, object, Part::Main, FieldValidation::Strict).unwrap();
        assert!(admitted.object.get("status").is_none());
    }

    #[test]
    fn status_writes_prune_status_only() {
        let kinds = Kinds::new().unwrap();
        let kind = kinds.by_plural("instances").unwrap();
        let mut object = instance(good_spec());
        object["status"] = json!({"state": "created", "bogus": 1});
        let err = admit(kind, object.clone(), Part::Status, FieldValidation::Strict).unwrap_err();
        assert!(err.to_string().contains("status.bogus"), "{err}");
        let admitted = admit(kind, object, Part::Status, FieldValidation::Ignore).unwrap();
        assert_eq!(admitted.object["status"]["state"], "created");
        assert!(admitted.object["status"].get("bogus").is_none());
    }

    #[test]
    fn decode_errors_become_field_causes() {
        let missing = decode_cause(&DecodeError {
            path: "spec".into(),
            message: "missing field `cpus`".into(),
        });
        assert_eq!(missing.field, "spec.cpus");
        assert_eq!(missing.reason, "FieldValueRequired");
        let wrong = decode_cause(&DecodeError {
            path: "spec.cpus".into(),
            message: "invalid type: string \"x\", expected u32".into(),
        });
        assert_eq!(wrong.field, "spec.cpus");
        assert_eq!(wrong.reason, "FieldValueInvalid");
    }
}
