//! `sf apply` and `sf delete -f`: create-or-update with an idempotence check, and
//! waiting for Ready or gone.
//!
//! Contract (plan is pure, the rest does I/O):
//! - [`plan_apply`] compares a desired object with the stored one: `spec` (both
//!   normalised through the kind's typed form so server-side defaults compare equal),
//!   and the desired labels and annotations (each must be present with the same value;
//!   keys only on the server are left alone). Equal → `Unchanged` and NOTHING is sent;
//!   else a JSON merge patch carrying the stored `resourceVersion` (a concurrent write
//!   gets 409 and the apply re-reads and tries again, at most 3 times).
//! - Fields the user removed from `spec` are nulled in the patch.
//! - `--wait`: every object until its `Ready` condition is `True` (fails at once when
//!   `status.state` is `error`, with the Ready message), or, for delete, until GET is 404.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::kinds::KindInfo;
use crate::manifest::Document;
use crate::rest::{Rest, RestError};

/// What apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Created.
    Created,
    /// Updated.
    Configured,
    /// Already as desired; nothing sent.
    Unchanged,
}

impl Outcome {
    /// The word `sf` prints.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Errors of applying or deleting.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API refused or failed.
    #[error("{object}: {source}")]
    Api {
        /// `kind/name`.
        object: String,
        /// The error.
        #[source]
        source: RestError,
    },
    /// The object is being deleted.
    #[error("{0}: is being deleted; wait until it is gone")]
    BeingDeleted(String),
    /// Waiting timed out.
    #[error("{object}: not {goal} after {seconds}s: {detail}")]
    Timeout {
        /// `kind/name`.
        object: String,
        /// `Ready` or `deleted`.
        goal: &'static str,
        /// The timeout.
        seconds: u64,
        /// The last condition seen.
        detail: String,
    },
    /// The object went to error while waiting.
    #[error("{object}: failed: {message}")]
    Failed {
        /// `kind/name`.
        object: String,
        /// The Ready condition's message.
        message: String,
    },
    /// Too many conflicting writes.
    #[error("{0}: kept conflicting with other writers; try again")]
    Conflicts(String),
}

fn roundtrip<T: DeserializeOwned + Serialize>(value: &Value) -> Option<Value> {
    serde_json::from_value::<T>(value.clone())
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
}

/// The spec as the server stores it: decoded into the kind's typed form (filling
/// defaults) and encoded again; `None` for an unknown kind or a spec that does not
/// decode (e.g. fields a newer server added).
pub fn normalize_spec(kind: &str, spec: &Value) -> Option<Value> {
    use sf_schema::{
        ArtifactSpec, BlobSpec, ClusterOperationSpec, IPAMLeaseSpec, InstanceSpec, NamespaceSpec,
        NetworkInterfaceSpec, NetworkSpec, NodeSpec,
    };
    match kind {
        "Instance" => roundtrip::<InstanceSpec>(spec),
        "Network" => roundtrip::<NetworkSpec>(spec),
        "NetworkInterface" => roundtrip::<NetworkInterfaceSpec>(spec),
        "IPAMLease" => roundtrip::<IPAMLeaseSpec>(spec),
        "Artifact" => roundtrip::<ArtifactSpec>(spec),
        "Blob" => roundtrip::<BlobSpec>(spec),
        "Namespace" => roundtrip::<NamespaceSpec>(spec),
        "Node" => roundtrip::<NodeSpec>(spec),
        "ClusterOperation" => roundtrip::<ClusterOperationSpec>(spec),
        _ => None,
    }
}

/// Whether every field of `desired` is in `stored` with the same value.
pub fn is_subset(desired: &Value, stored: &Value) -> bool {
    match (desired, stored) {
        (Value::Object(d), Value::Object(s)) => d.iter().all(|(k, v)| {
            s.get(k).is_some_and(|sv| is_subset(v, sv)) || (v.is_null() && !s.contains_key(k))
        }),
        (Value::Array(d), Value::Array(s)) => {
            d.len() == s.len() && d.iter().zip(s).all(|(a, b)| is_subset(a, b))
        }
        (d, s) => d == s,
    }
}

/// The RFC 7386 merge patch turning `old` into `new`.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, ov) in o {
                match n.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(nv) => {
                        if let Some(p) = merge_diff(ov, nv) {
                            patch.insert(k.clone(), p);
                        }
                    }
                }
            }
            for (k, nv) in n {
                if !o.contains_key(k) {
                    patch.insert(k.clone(), nv.clone());
                }
            }
            Some(Value::Object(patch))
        }
        _ => Some(new.clone()),
    }
}

/// What to send for one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// POST this body.
    Create(Value),
    /// PATCH this merge patch.
    Patch(Value),
    /// Send nothing.
    Unchanged,
}

fn string_map(object: &Value, field: &str) -> Map<String, Value> {
    object
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The body to create `desired` with: apiVersion, kind, name, namespace, labels,
/// annotations, spec (no status, no server-owned metadata).
pub fn create_body(doc: &Document) -> Value {
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(doc.name));
    if doc.kind.namespaced {
        metadata.insert("namespace".into(), json!(doc.namespace));
    }
    for field in ["labels", "annotations"] {
        let m = string_map(&doc.object, field);
        if !m.is_empty() {
            metadata.insert(field.into(), Value::Object(m));
        }
    }
    let mut body = json!({
        "apiVersion": crate::kinds::API_VERSION,
        "kind": doc.kind.kind,
        "metadata": metadata,
    });
    if let Some(spec) = doc.object.get("spec") {
        body["spec"] = spec.clone();
    }
    body
}

/// Decides what to send for `doc` given the stored object (if any). Pure.
pub fn plan_apply(doc: &Document, stored: Option<&Value>) -> Plan {
    let Some(stored) = stored else {
        return Plan::Create(create_body(doc));
    };
    let kind = doc.kind.kind;
    let empty = json!({});
    let desired_raw = doc.object.get("spec").unwrap_or(&empty);
    let stored_raw = stored.get("spec").unwrap_or(&empty);
    let (desired_spec, stored_spec, spec_same) = match (
        normalize_spec(kind, desired_raw),
        normalize_spec(kind, stored_raw),
    ) {
        // Both typed: exact comparison (a field removed from the file is a change).
        (Some(d), Some(s)) => {
            let same = d == s;
            (d, s, same)
        }
        // A spec this sf cannot type: what the file says must be what is stored.
        _ => (
            desired_raw.clone(),
            stored_raw.clone(),
            is_subset(desired_raw, stored_raw),
        ),
    };
    let mut metadata = Map::new();
    for field in ["labels", "annotations"] {
        let want = string_map(&doc.object, field);
        let have = string_map(stored, field);
        let changes: Map<String, Value> = want
            .into_iter()
            .filter(|(k, v)| have.get(k) != Some(v))
            .collect();
        if !changes.is_empty() {
            metadata.insert(field.into(), Value::Object(changes));
        }
    }
    if spec_same && metadata.is_empty() {
        return Plan::Unchanged;
    }
    if let Some(rv) = stored.pointer("/metadata/resourceVersion") {
        metadata.insert("resourceVersion".into(), rv.clone());
    }
    let mut patch = json!({"metadata": metadata});
    if !spec_same && let Some(diff) = merge_diff(&stored_spec, &desired_spec) {
        patch["spec"] = diff;
    }
    Plan::Patch(patch)
}

/// Applies one document: GET, plan, then POST or PATCH (or nothing).
pub async fn apply_one(rest: &Rest, doc: &Document) -> Result<Outcome, ApplyError> {
    let path = doc.kind.path(&doc.namespace, &doc.name);
    let api = |source| ApplyError::Api {
        object: doc.display(),
        source,
    };
    for _ in 0..3 {
        let stored = rest.get_opt(&path).await.map_err(api)?;
        if stored
            .as_ref()
            .and_then(|s| s.pointer("/metadata/deletionTimestamp"))
            .is_some_and(|t| !t.is_null())
        {
            return Err(ApplyError::BeingDeleted(doc.display()));
        }
        let result = match plan_apply(doc, stored.as_ref()) {
            Plan::Unchanged => return Ok(Outcome::Unchanged),
            Plan::Create(body) => rest
                .post(&doc.kind.collection_path(Some(&doc.namespace)), &body)
                .await
                .map(|_| Outcome::Created),
            Plan::Patch(patch) => rest
                .merge_patch(&path, &patch)
                .await
                .map(|_| Outcome::Configured),
        };
        match result {
            Ok(outcome) => return Ok(outcome),
            // Someone else wrote in between (or created it): read again.
            Err(e) if e.code() == Some(409) => continue,
            Err(e) => return Err(api(e)),
        }
    }
    Err(ApplyError::Conflicts(doc.display()))
}

/// The Ready condition of an object: (status, reason, message).
pub fn ready_condition(object: &Value) -> Option<(String, String, String)> {
    let conditions = object.pointer("/status/conditions")?.as_array()?;
    let ready = conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?;
    let field = |f: &str| {
        ready
            .get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some((field("status"), field("reason"), field("message")))
}

/// Where an object is on its way to Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready is True.
    Ready,
    /// Failed (state error); the message.
    Failed(String),
    /// Still waiting; a short description.
    Waiting(String),
}

/// Judges an object's readiness. Pure.
pub fn readiness(object: &Value) -> Readiness {
    let state = object
        .pointer("/status/state")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match ready_condition(object) {
        Some((status, _, _)) if status == "True" => Readiness::Ready,
        Some((_, reason, message)) if state == "error" => {
            Readiness::Failed(if message.is_empty() {
                reason
            } else {
                format!("{reason}: {message}")
            })
        }
        None if state == "error" => Readiness::Failed("state is error".into()),
        Some((status, reason, message)) => Readiness::Waiting(format!(
            "state={} Ready={status} {reason}{}{message}",
            if state.is_empty() { "<none>" } else { state },
            if message.is_empty() { "" } else { ": " },
        )),
        None => Readiness::Waiting(format!(
            "state={} (no Ready condition yet)",
            if state.is_empty() { "<none>" } else { state }
        )),
    }
}

/// An object to wait for.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its kind.
    pub kind: &'static KindInfo,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Target {
    fn display(&self) -> String {
        format!("{}/{}", self.kind.singular(), self.name)
    }
}

/// Waits until every target is Ready (`gone == false`) or gone (`gone == true`),
/// polling every half second, with a progress display on a terminal.
pub async fn wait_all(
    rest: &Rest,
    targets: &[Target],
    gone: bool,
    timeout: Duration,
) -> Result<(), ApplyError> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bars: Vec<ProgressBar> = targets
        .iter()
        .map(|t| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(t.display());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
        .collect();
    let deadline = Instant::now() + timeout;
    let mut done = vec![false; targets.len()];
    let mut last = vec![String::from("waiting"); targets.len()];
    let result = loop {
        for (i, target) in targets.iter().enumerate() {
            if done[i] {
                continue;
            }
            let path = target.kind.path(&target.namespace, &target.name);
            let api = |source| ApplyError::Api {
                object: target.display(),
                source,
            };
            let current = match rest.get_opt(&path).await {
                Ok(c) => c,
                // sf-api restarting or a gateway failing over: keep waiting.
                Err(RestError::Transport { .. }) => continue,
                Err(e) if e.code() == Some(503) => continue,
                Err(e) => break_with(&bars, api(e))?,
            };
            match (gone, current) {
                (true, None) => {
                    done[i] = true;
                    bars[i].finish_with_message("deleted");
                }
                (true, Some(_)) => {
                    last[i] = "deleting".into();
                    bars[i].set_message("deleting");
                }
                (false, None) => {
                    last[i] = "not found".into();
                    bars[i].set_message("not found");
                }
                (false, Some(object)) => match readiness(&object) {
                    Readiness::Ready => {
                        done[i] = true;
                        bars[i].finish_with_message("Ready");
                    }
                    Readiness::Failed(message) => {
                        break_with(
                            &bars,
                            ApplyError::Failed {
                                object: target.display(),
                                message,
                            },
                        )?;
                    }
                    Readiness::Waiting(detail) => {
                        bars[i].set_message(detail.clone());
                        last[i] = detail;
                    }
                },
            }
        }
        if done.iter().all(|d| *d) {
            break Ok(());
        }
        if Instant::now() >= deadline {
            let i = done.iter().position(|d| !*d).unwrap_or(0);
            break Err(ApplyError::Timeout {
                object: targets[i].display(),
                goal: if gone { "deleted" } else { "Ready" },
                seconds: timeout.as_secs(),
                detail: last[i].clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for bar in &bars {
        if !bar.is_finished() {
            bar.abandon();
        }
    }
    result
}

fn break_with<T>(bars: &[indicatif::ProgressBar], e: ApplyError) -> Result<T, ApplyError> {
    for bar in bars {
        if !bar.is_finished() {
            bar.abandon();
        }
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::lookup;

    fn doc(object: Value) -> Document {
        Document {
            origin: "t".into(),
            kind: lookup(object["kind"].as_str().expect("kind")).expect("known"),
            name: object["metadata"]["name"].as_str().expect("name").into(),
            namespace: "demo".into(),
            object,
        }
    }

    fn instance() -> Value {
        json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "i", "namespace": "demo", "labels": {"tier": "web"}},
            "spec": {"cpus": 1, "memory": 512, "disks": [{"size": 8}]}
        })
    }

    fn stored() -> Value {
        json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
            "metadata": {"name": "i", "namespace": "demo", "uid": "u", "resourceVersion": "41",
                         "labels": {"tier": "web", "extra": "x"}, "finalizers": ["f"]},
            "spec": serde_json::to_value(
                serde_json::from_value::<sf_schema::InstanceSpec>(instance()["spec"].clone()).expect("spec")
            ).expect("json"),
            "status": {"state": "created"}
        })
    }

    #[test]
    fn missing_objects_are_created_without_server_fields() {
        let mut object = instance();
        object["status"] = json!({"state": "x"});
        object["metadata"]["uid"] = json!("u");
        match plan_apply(&doc(object), None) {
            Plan::Create(body) => {
                assert!(body.get("status").is_none());
                assert!(body["metadata"].get("uid").is_none());
                assert_eq!(body["metadata"]["labels"]["tier"], "web");
                assert_eq!(body["spec"]["cpus"], 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_filled_by_the_server_compare_unchanged() {
        assert_eq!(
            plan_apply(&doc(instance()), Some(&stored())),
            Plan::Unchanged
        );
        // The stored object as `get -o yaml` prints it applies unchanged too.
        let printed = stored();
        assert_eq!(
            plan_apply(&doc(printed.clone()), Some(&printed)),
            Plan::Unchanged
        );
    }

    #[test]
    fn spec_changes_patch_with_the_resource_version() {
        let mut changed = instance();
        changed["spec"]["powerState"] = json!("off");
        match plan_apply(&doc(changed), Some(&stored())) {
            Plan::Patch(p) => {
                assert_eq!(p["metadata"]["resourceVersion"], "41");
                assert_eq!(p["spec"], json!({"powerState": "off"}));
                assert!(p["metadata"].get("labels").is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn removing_a_field_is_a_change_that_nulls_it() {
        let mut with_key = instance();
        with_key["spec"]["sshKey"] = json!("ssh-ed25519 AAAA x");
        let mut stored_with_key = stored();
        stored_with_key["spec"]["sshKey"] = json!("ssh-ed25519 AAAA x");
        assert_eq!(
            plan_apply(&doc(with_key), Some(&stored_with_key)),
            Plan::Unchanged
        );
        match plan_apply(&doc(instance()), Some(&stored_with_key)) {
            Plan::Patch(p) => assert_eq!(p["spec"], json!({"sshKey": null})),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn untyped_specs_compare_as_subsets() {
        let mut s = stored();
        s["spec"]["fieldFromTheFuture"] = json!(1);
        assert_eq!(plan_apply(&doc(instance()), Some(&s)), Plan::Unchanged);
    }

    #[test]
    fn label_changes_patch_only_labels() {
        let mut changed = instance();
        changed["metadata"]["labels"]["tier"] = json!("db");
        match plan_apply(&doc(changed), Some(&stored())) {
            Plan::Patch(p) => {
                assert_eq!(p["metadata"]["labels"], json!({"tier": "db"}));
                assert!(p.get("spec").is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn merge_diff_nulls_removed_fields() {
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let new = json!({"a": 1, "b": {"c": 5}, "e": [1]});
        assert_eq!(
            merge_diff(&old, &new),
            Some(json!({"b": {"c": 5, "d": null}, "e": [1]}))
        );
        assert_eq!(merge_diff(&old, &old), None);
    }

    #[test]
    fn readiness_judges_conditions_and_state() {
        let ready = json!({"status": {"state": "created", "conditions": [{"type": "Ready", "status": "True", "reason": "Running"}]}});
        assert_eq!(readiness(&ready), Readiness::Ready);
        let failed = json!({"status": {"state": "error", "conditions": [{"type": "Ready", "status": "False", "reason": "NoCapacity", "message": "no node fits"}]}});
        assert_eq!(
            readiness(&failed),
            Readiness::Failed("NoCapacity: no node fits".into())
        );
        let waiting = json!({"status": {"state": "creating"}});
        assert!(matches!(readiness(&waiting), Readiness::Waiting(_)));
    }
}
