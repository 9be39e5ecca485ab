//! v0.8 cluster operations (read only).
//!
//! Contract (`shared/research/shakenfist.md` §1), visibility as on the Kubernetes
//! paths: a tenant sees the ClusterOperations of its namespace, `system` all of them.
//! - An operation reads as `{uuid, name, namespace, operation_type, state,
//!   target_object_type, target_uuid, target_name, node, priority, depends_on,
//!   attempts, claimed_by, error_report, result, created_at, started_at, completed_at,
//!   tasks}`: `target_object_type` is the target's kind in lower case, `depends_on`
//!   the uuids of the operations it waits for (names, for ones no longer stored), the
//!   times in seconds since the epoch (null until they happen), `tasks` always empty
//!   (an operation here is one unit of work).
//! - `GET /clusteroperations` (`target_object_type`, `target_uuid` in the query or the
//!   JSON body, each optional): the operations on that target, newest first.
//! - `GET /clusteroperations/{type}/{uuid}`: one operation by uuid (or name) whose
//!   type is `type`; 404 otherwise.
//! - `GET /clusteroperations/{uuid}/chain`: the operation and, transitively, every
//!   operation it depends on, newest first (dependencies are always in the
//!   operation's own namespace).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::{body_json, done, epoch, list_kind, lookup_namespace, param, sf_error, text};
use crate::auth::Caller;
use crate::error::json_response;
use crate::server::App;

/// The operations the caller may see, in the scope a `namespace` parameter asks for.
async fn visible(
    app: &App,
    caller: &Caller,
    query: Option<&str>,
    body: &Value,
) -> Result<Vec<Value>, Response> {
    let ns = lookup_namespace(caller, param(query, body, "namespace"))?;
    list_kind(app, "ClusterOperation", ns).await
}

/// `uid` of each operation by (namespace, name), to name dependencies by uuid.
fn uids_by_name(ops: &[Value]) -> HashMap<(String, String), String> {
    ops.iter()
        .filter_map(|o| {
            Some((
                (text(o, "/metadata/namespace")?, text(o, "/metadata/name")?),
                text(o, "/metadata/uid")?,
            ))
        })
        .collect()
}

/// One operation in v0.8's shape (see the module contract).
fn view(op: &Value, uids: &HashMap<(String, String), String>) -> Value {
    let namespace = text(op, "/metadata/namespace").unwrap_or_default();
    let depends_on: Vec<String> = op
        .pointer("/spec/dependsOn")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|name| {
            uids.get(&(namespace.clone(), name.to_owned()))
                .cloned()
                .unwrap_or_else(|| name.to_owned())
        })
        .collect();
    let status = |field: &str| {
        op.pointer(&format!("/status/{field}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({
        "uuid": text(op, "/metadata/uid"),
        "name": text(op, "/metadata/name"),
        "namespace": namespace,
        "operation_type": text(op, "/spec/operationType"),
        "state": text(op, "/status/state").unwrap_or_else(|| "queued".into()),
        "target_object_type": text(op, "/spec/target/kind").map(|k| k.to_ascii_lowercase()),
        "target_uuid": text(op, "/spec/target/uid"),
        "target_name": text(op, "/spec/target/name"),
        "node": text(op, "/spec/node"),
        "priority": text(op, "/spec/priority").unwrap_or_else(|| "normal".into()),
        "depends_on": depends_on,
        "attempts": op.pointer("/status/attempts").cloned().unwrap_or(json!(0)),
        "claimed_by": status("claimedBy"),
        "error_report": status("errorReport"),
        "result": status("result"),
        "created_at": epoch(op, "/metadata/creationTimestamp"),
        "started_at": epoch(op, "/status/startedAt"),
        "completed_at": epoch(op, "/status/completedAt"),
        "tasks": [],
    })
}

/// Newest first (creation time, then name, both descending).
fn newest_first(ops: &mut [&Value]) {
    ops.sort_by(|a, b| {
        let key = |o: &Value| {
            (
                text(o, "/metadata/creationTimestamp").unwrap_or_default(),
                text(o, "/metadata/name").unwrap_or_default(),
            )
        };
        key(b).cmp(&key(a))
    });
}

/// `GET /clusteroperations`.
pub(super) async fn list_operations(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = body_json(&body)?;
        let query = query.as_deref();
        let kind = param(query, &body, "target_object_type").filter(|k| !k.is_empty());
        let target = param(query, &body, "target_uuid").filter(|t| !t.is_empty());
        let ops = visible(&app, &caller, query, &body).await?;
        let uids = uids_by_name(&ops);
        let mut chosen: Vec<&Value> = ops
            .iter()
            .filter(|o| {
                kind.as_ref().is_none_or(|k| {
                    text(o, "/spec/target/kind").is_some_and(|t| t.eq_ignore_ascii_case(k))
                }) && target
                    .as_ref()
                    .is_none_or(|t| text(o, "/spec/target/uid").as_deref() == Some(t.as_str()))
            })
            .collect();
        newest_first(&mut chosen);
        let views: Vec<Value> = chosen.into_iter().map(|o| view(o, &uids)).collect();
        Ok(json_response(StatusCode::OK, &views))
    };
    done(run.await)
}

/// The operation `reference` (uid or name) names among `ops`.
fn find<'a>(ops: &'a [Value], reference: &str) -> Option<&'a Value> {
    ops.iter()
        .find(|o| text(o, "/metadata/uid").as_deref() == Some(reference))
        .or_else(|| {
            ops.iter()
                .find(|o| text(o, "/metadata/name").as_deref() == Some(reference))
        })
}

fn missing(what: &str) -> Response {
    sf_error(
        StatusCode::NOT_FOUND,
        format!("cluster operation {what} not found"),
    )
}

/// `GET /clusteroperations/{type}/{uuid}`.
pub(super) async fn get_operation(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((operation_type, reference)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let ops = visible(&app, &caller, query.as_deref(), &Value::Null).await?;
        let op = find(&ops, &reference)
            .filter(|o| text(o, "/spec/operationType").as_deref() == Some(operation_type.as_str()))
            .ok_or_else(|| missing(&format!("{operation_type} {reference}")))?;
        Ok(json_response(
            StatusCode::OK,
            &view(op, &uids_by_name(&ops)),
        ))
    };
    done(run.await)
}

/// `GET /clusteroperations/{uuid}/chain`.
pub(super) async fn operation_chain(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let ops = visible(&app, &caller, query.as_deref(), &Value::Null).await?;
        let root = find(&ops, &reference).ok_or_else(|| missing(&reference))?;
        let chain = chain_of(&ops, root);
        let uids = uids_by_name(&ops);
        let views: Vec<Value> = chain.into_iter().map(|o| view(o, &uids)).collect();
        Ok(json_response(StatusCode::OK, &views))
    };
    done(run.await)
}

/// `root` and every operation it depends on, transitively, newest first.
fn chain_of<'a>(ops: &'a [Value], root: &'a Value) -> Vec<&'a Value> {
    let namespace = text(root, "/metadata/namespace");
    let by_name: HashMap<String, &Value> = ops
        .iter()
        .filter(|o| text(o, "/metadata/namespace") == namespace)
        .filter_map(|o| Some((text(o, "/metadata/name")?, o)))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    let mut pending = vec![root];
    while let Some(op) = pending.pop() {
        let Some(name) = text(op, "/metadata/name") else {
            continue;
        };
        if !seen.insert(name) {
            continue;
        }
        out.push(op);
        for dep in op
            .pointer("/spec/dependsOn")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some(found) = by_name.get(dep) {
                pending.push(found);
            }
        }
    }
    newest_first(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, created: &str, deps: &[&str]) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ta", "uid": format!("u-{name}"),
                         "creationTimestamp": created},
            "spec": {"operationType": "instance_create", "dependsOn": deps,
                     "target": {"kind": "Instance", "name": "web", "uid": "i-1"}},
            "status": {"state": "complete", "completedAt": "2026-11-26T10:00:00Z"},
        })
    }

    #[test]
    fn a_chain_follows_dependencies_transitively_newest_first() {
        let ops = vec![
            op("a", "2026-11-26T09:00:00Z", &[]),
            op("b", "2026-11-26T09:01:00Z", &["a"]),
            op("c", "2026-11-26T09:02:00Z", &["b", "a"]),
            op("other", "2026-11-26T09:03:00Z", &[]),
        ];
        let chain: Vec<String> = chain_of(&ops, &ops[2])
            .iter()
            .filter_map(|o| text(o, "/metadata/name"))
            .collect();
        assert_eq!(chain, ["c", "b", "a"]);
        let v = view(&ops[2], &uids_by_name(&ops));
        assert_eq!(v["depends_on"], json!(["u-b", "u-a"]));
        assert_eq!(v["target_object_type"], "instance");
        assert_eq!(v["target_uuid"], "i-1");
        assert_eq!(v["completed_at"], json!(1_795_687_200.0));
        assert_eq!(v["started_at"], Value::Null);
        assert_eq!(v["tasks"], json!([]));
    }
}
