//! Instance snapshots: what `POST …/instances/{name}/snapshot` asks for
//! ([`SnapshotRequest`], the `instance_snapshot` operation's payload) and what the
//! agent reports when it has taken them ([`SnapshotResult`], the operation's
//! `status.result`).
//!
//! Contract (Shaken Fist's `{all, device, max_versions, thin}`):
//! - Without `device` or `all`, the instance's first disk is snapshotted; `device`
//!   (`vda`, `sdb`, `nvme0`) picks one disk by its guest device name; `all` takes every
//!   disk (cdroms and the config drive are never snapshotted): [`choose`], over the
//!   names of [`crate::devices`], which the agent's domain XML uses too.
//! - Each snapshotted device has its own Artifact in the instance's namespace, named
//!   [`artifact_name`] (`<instance uid>-<device>`, as Shaken Fist names it
//!   `<instance uuid>/<device>`), type `snapshot`, source [`source_url`]
//!   (`sf://instance/<uid>/<device>`); every snapshot is a new version of it.
//!   `maxVersions` sets the versions kept when the artifact is made (default 3).
//! - `thin` snapshots (a qcow2 overlay on the base image's blob) are refused: a blob
//!   backed by another blob would need blob-to-blob references that blob garbage
//!   collection does not track. Every snapshot is a full, flattened qcow2 image.
//! - [`SnapshotRequest::parse`] reports every problem with its field, nothing else.
//! - Nothing here does I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::devices::GuestDevice;
use crate::validation::{FieldError, FieldErrorReason};

/// The longest device name accepted.
pub const MAX_DEVICE_LEN: usize = 16;

/// What a snapshot request asks for (the operation's payload).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRequest {
    /// Every disk, not only the first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// One disk, by guest device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The versions a newly made artifact keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_versions: Option<u32>,
}

fn invalid(field: &str, reason: FieldErrorReason, message: String) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason,
        message: format!("{field}: {message}"),
    }
}

impl SnapshotRequest {
    /// Parses a request body (`{}` or empty is the first disk). Accepts Shaken Fist's
    /// `max_versions` spelling too; `maxVersions: 0` means the default, as there.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut request = Self::default();
        let Some(map) = body.as_object() else {
            return Err(vec![invalid(
                "body",
                FieldErrorReason::Invalid,
                "must be a JSON object".into(),
            )]);
        };
        for (key, value) in map {
            match key.as_str() {
                "all" => match value {
                    Value::Bool(b) => request.all = *b,
                    Value::Null => {}
                    _ => errors.push(invalid(
                        "all",
                        FieldErrorReason::Invalid,
                        "must be true or false".into(),
                    )),
                },
                "device" => match value {
                    Value::String(d) if valid_device(d) => request.device = Some(d.clone()),
                    Value::Null => {}
                    _ => errors.push(invalid(
                        "device",
                        FieldErrorReason::Invalid,
                        format!(
                            "must be a guest device name such as vda, sdb or nvme0 \
                             (lower-case letters and digits, at most {MAX_DEVICE_LEN})"
                        ),
                    )),
                },
                "maxVersions" | "max_versions" => match value.as_u64() {
                    Some(0) => {}
                    Some(n) => match u32::try_from(n) {
                        Ok(n) => request.max_versions = Some(n),
                        Err(_) => errors.push(invalid(
                            key,
                            FieldErrorReason::Invalid,
                            "is too large".into(),
                        )),
                    },
                    None if value.is_null() => {}
                    None => errors.push(invalid(
                        key,
                        FieldErrorReason::Invalid,
                        "must be a whole number of versions".into(),
                    )),
                },
                "thin" => match value {
                    Value::Bool(false) | Value::Null => {}
                    _ => errors.push(invalid(
                        "thin",
                        FieldErrorReason::NotSupported,
                        "thin snapshots are not supported; every snapshot is a full \
                         qcow2 image (omit thin or set it to false)"
                            .into(),
                    )),
                },
                other => errors.push(invalid(
                    other,
                    FieldErrorReason::NotSupported,
                    "unknown field; expected all, device, maxVersions or thin".into(),
                )),
            }
        }
        if request.all && request.device.is_some() {
            errors.push(invalid(
                "device",
                FieldErrorReason::Invalid,
                "give either device or all, not both".into(),
            ));
        }
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        if errors.is_empty() {
            Ok(request)
        } else {
            Err(errors)
        }
    }
}

/// Why a snapshot request takes no device of an instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    /// The asked device is not one of the instance's disks.
    #[error("instance has no disk {device}; its disks are {}", .disks.join(", "))]
    NoDevice {
        /// The asked device.
        device: String,
        /// The disks it has.
        disks: Vec<String>,
    },
    /// Nothing to take: the first device is not a disk and neither `device` nor
    /// `all` was given, or the instance has no disk at all.
    #[error(
        "the instance's first device {first} is not a disk; name a disk with device, or set all"
    )]
    NothingToSnapshot {
        /// The first device.
        first: String,
    },
}

/// The device names `request` takes from `devices` ([`crate::devices::guest_devices`]):
/// `device` → that disk; `all` → every disk in device order; neither → the first
/// `spec.disks` entry. Cdroms and the config drive are never taken.
pub fn choose(
    devices: &[GuestDevice],
    request: &SnapshotRequest,
) -> Result<Vec<String>, ChoiceError> {
    let disks: Vec<&GuestDevice> = devices
        .iter()
        .filter(|d| d.index.is_some() && !d.cdrom)
        .collect();
    if let Some(device) = &request.device {
        return disks
            .iter()
            .find(|d| &d.name == device)
            .map(|d| vec![d.name.clone()])
            .ok_or_else(|| ChoiceError::NoDevice {
                device: device.clone(),
                disks: disks.iter().map(|d| d.name.clone()).collect(),
            });
    }
    let taken: Vec<String> = if request.all {
        disks.iter().map(|d| d.name.clone()).collect()
    } else {
        match devices.iter().find(|d| d.index == Some(0)) {
            Some(first) if !first.cdrom => vec![first.name.clone()],
            Some(first) => {
                return Err(ChoiceError::NothingToSnapshot {
                    first: first.name.clone(),
                });
            }
            None => Vec::new(),
        }
    };
    if taken.is_empty() {
        return Err(ChoiceError::NothingToSnapshot {
            first: "(none)".into(),
        });
    }
    Ok(taken)
}

/// Whether `name` can be a guest device name.
pub fn valid_device(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DEVICE_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The name of the Artifact holding snapshots of `device` of the instance `uid`.
pub fn artifact_name(instance_uid: &str, device: &str) -> String {
    format!("{instance_uid}-{device}")
}

/// The `sourceUrl` of that Artifact (Shaken Fist's internal form).
pub fn source_url(instance_uid: &str, device: &str) -> String {
    format!("sf://instance/{instance_uid}/{device}")
}

/// The label on a snapshot Artifact naming the instance it was taken of.
pub const SNAPSHOT_OF_LABEL: &str = "shakenfist.io/snapshot-of";

/// The snapshot Artifact of `device` of the instance `instance_uid` (named
/// `instance_name`) in `namespace`, as whoever makes it first (sf-api answering a v0.8
/// request, or the agent) creates it; `max_versions` applies at creation only.
pub fn artifact_object(
    instance_uid: &str,
    instance_name: &str,
    namespace: &str,
    device: &str,
    max_versions: Option<u32>,
) -> Value {
    serde_json::json!({
        "apiVersion": crate::API_VERSION,
        "kind": "Artifact",
        "metadata": {
            "name": artifact_name(instance_uid, device),
            "namespace": namespace,
            "labels": {SNAPSHOT_OF_LABEL: instance_name},
        },
        "spec": {
            "sourceUrl": source_url(instance_uid, device),
            "artifactType": "snapshot",
            "maxVersions": max_versions.unwrap_or(crate::artifact::DEFAULT_MAX_VERSIONS),
        },
    })
}

/// Whether the stored Artifact `artifact` (JSON) is the snapshot artifact of `device`
/// of the instance `instance_uid` (and not another artifact that took its name).
pub fn is_snapshot_artifact_of(artifact: &Value, instance_uid: &str, device: &str) -> bool {
    artifact.pointer("/spec/sourceUrl").and_then(Value::as_str)
        == Some(source_url(instance_uid, device).as_str())
        && artifact
            .pointer("/spec/artifactType")
            .and_then(Value::as_str)
            == Some("snapshot")
}

/// One snapshot taken: a device's disk captured into a blob on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotTaken {
    /// The guest device name.
    pub device: String,
    /// The Artifact's name (in the instance's namespace).
    pub artifact: String,
    /// The Artifact's uid.
    pub artifact_uid: String,
    /// The blob written.
    pub blob: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its lower-case hex SHA-512.
    pub sha512: String,
}

/// What a completed `instance_snapshot` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotResult {
    /// The node holding the blobs.
    #[serde(default)]
    pub node: String,
    /// One entry per snapshotted device, in device order.
    #[serde(default)]
    pub snapshots: Vec<SnapshotTaken>,
}

impl SnapshotResult {
    /// The result in an operation's `status.result`, when it is a well-formed one
    /// (a node named), with only its well-formed entries: a plain blob file name, a
    /// SHA-512 of 128 lower-case hex digits, an artifact named.
    pub fn from_result(value: &Value) -> Option<Self> {
        let mut result: Self = serde_json::from_value(value.clone()).ok()?;
        if result.node.is_empty() {
            return None;
        }
        result.snapshots.retain(|t| {
            let plain = !t.blob.is_empty()
                && t.blob != "."
                && t.blob != ".."
                && !t.blob.contains(['/', '\0']);
            let sum = t.sha512.len() == 128
                && t.sha512
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            plain && sum && !t.artifact.is_empty() && !t.artifact_uid.is_empty()
        });
        Some(result)
    }
}

/// The MIME type of a snapshot blob.
pub const SNAPSHOT_MIME_TYPE: &str = "application/x-qcow2";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_empty_body_is_the_first_disk() {
        assert_eq!(
            SnapshotRequest::parse(&json!({})),
            Ok(SnapshotRequest::default())
        );
    }

    #[test]
    fn requests_parse_both_spellings() {
        let r = SnapshotRequest::parse(&json!({"device": "vdb", "max_versions": 5, "thin": false}))
            .expect("parse");
        assert_eq!(r.device.as_deref(), Some("vdb"));
        assert_eq!(r.max_versions, Some(5));
        let r = SnapshotRequest::parse(&json!({"all": true, "maxVersions": 0})).expect("parse");
        assert!(r.all);
        assert_eq!(r.max_versions, None, "0 is the default, as in Shaken Fist");
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = SnapshotRequest::parse(&json!({
            "all": "yes",
            "device": "../etc",
            "maxVersions": -1,
            "thin": true,
            "colour": 1,
        }))
        .expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["all", "colour", "device", "maxVersions", "thin"]);
        assert!(errors.iter().all(|e| e.message.starts_with(&e.field)));
        let both = SnapshotRequest::parse(&json!({"all": true, "device": "vda"}));
        assert_eq!(both.expect_err("both")[0].field, "device");
        assert!(SnapshotRequest::parse(&json!([1])).is_err());
    }

    fn devices() -> Vec<GuestDevice> {
        let spec: crate::InstanceSpec = serde_json::from_value(json!({
            "cpus": 1, "memory": 512,
            "disks": [{"size": 1}, {"base": "iso", "type": "cdrom"}, {"size": 1}],
        }))
        .expect("spec");
        crate::devices::guest_devices(&spec).expect("devices")
    }

    #[test]
    fn the_first_disk_one_device_or_all_disks() {
        // vda, the config drive vdb, the cdrom sda, vdc.
        let first = choose(&devices(), &SnapshotRequest::default()).expect("first");
        assert_eq!(first, ["vda"]);
        let all = SnapshotRequest {
            all: true,
            ..SnapshotRequest::default()
        };
        assert_eq!(choose(&devices(), &all).expect("all"), ["vda", "vdc"]);
        let one = SnapshotRequest {
            device: Some("vdc".into()),
            ..SnapshotRequest::default()
        };
        assert_eq!(choose(&devices(), &one).expect("one"), ["vdc"]);
    }

    #[test]
    fn cdroms_and_the_config_drive_are_never_taken() {
        for device in ["vdb", "sda", "vdz"] {
            let request = SnapshotRequest {
                device: Some(device.into()),
                ..SnapshotRequest::default()
            };
            let e = choose(&devices(), &request).expect_err(device);
            assert_eq!(
                e.to_string(),
                format!("instance has no disk {device}; its disks are vda, vdc")
            );
        }
        let mut cdrom_first = devices();
        cdrom_first.retain(|d| d.cdrom);
        cdrom_first[0].index = Some(0);
        let e = choose(&cdrom_first, &SnapshotRequest::default()).expect_err("cdrom");
        assert!(matches!(e, ChoiceError::NothingToSnapshot { .. }));
        let all = SnapshotRequest {
            all: true,
            ..SnapshotRequest::default()
        };
        let e = choose(&cdrom_first, &all).expect_err("no disk at all");
        assert!(matches!(e, ChoiceError::NothingToSnapshot { .. }));
    }

    #[test]
    fn names_follow_shaken_fist() {
        assert_eq!(artifact_name("u-1", "vda"), "u-1-vda");
        assert_eq!(source_url("u-1", "vda"), "sf://instance/u-1/vda");
        assert!(valid_device("nvme0"));
        assert!(!valid_device("0vda"));
        assert!(!valid_device("Vda"));
        assert!(!valid_device(""));
    }

    #[test]
    fn results_round_trip() {
        let r = SnapshotResult {
            node: "hv1".into(),
            snapshots: vec![SnapshotTaken {
                device: "vda".into(),
                artifact: "u-1-vda".into(),
                artifact_uid: "a-1".into(),
                blob: "b-1".into(),
                size: 7,
                sha512: "0".repeat(128),
            }],
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["snapshots"][0]["artifactUid"], "a-1");
        assert_eq!(SnapshotResult::from_result(&v), Some(r.clone()));
        assert_eq!(SnapshotResult::from_result(&json!("x")), None);
        let mut bad = v.clone();
        bad["snapshots"][0]["blob"] = json!("../x");
        assert_eq!(
            SnapshotResult::from_result(&bad).map(|r| r.snapshots.len()),
            Some(0)
        );
        let mut bad = v.clone();
        bad["snapshots"][0]["sha512"] = json!("ABC");
        assert_eq!(
            SnapshotResult::from_result(&bad).map(|r| r.snapshots.len()),
            Some(0)
        );
        let mut nodeless = v;
        nodeless["node"] = json!("");
        assert_eq!(SnapshotResult::from_result(&nodeless), None);
    }
}
