//! v0.8 nodes and blobs.
//!
//! Contract (`shared/research/shakenfist.md` §1), visibility as on the Kubernetes
//! paths (`crate::resources::authorize`): every caller sees every Node; a tenant sees
//! the Blobs whose `spec.ownerNamespace` is its namespace, `system` sees all (another
//! namespace's blob is 404, as a missing one).
//! - `GET /nodes`, `GET /nodes/{name}` (its name or uuid): `{name, uuid, fqdn, ip, lastseen, version,
//!   release, state, schedulable, roles, is_hypervisor, is_network_node,
//!   is_cluster_maintainer, is_database_node}`; `lastseen` in seconds since the epoch
//!   (0 before the first check-in), `ip` the node's address (empty when unknown).
//! - `GET /blobs` (`node`: only blobs with a replica there), `GET /blobs/{uuid}` (a
//!   Blob is named by its uuid): the flat fields plus v0.8's `uuid`, `locations`
//!   (the nodes holding a replica), `reference_count`, `mime type`, `instances`
//!   (always empty here), `depends_on` (null: blobs here are standalone) and
//!   `transcodes` (empty).
//! - `GET /nodes/{name}/events`, `GET /blobs/{uuid}/events`: v0.8 event rows as for
//!   instances.
//! - `GET /blobs/{uuid}/data` (`offset`: skip that many bytes, as v0.8 clients resume):
//!   the bytes of a blob kept in the database (screenshots), with its MIME type; an
//!   artifact's blob lives only on the hypervisors holding it and is 404 naming them;
//!   an offset past the end answers no bytes (v0.8 seeks there), one that is not a
//!   byte count is 400.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::{
    body_json, done, epoch, error_response, events_of, flatten, list_kind, not_found, param, text,
};
use crate::auth::{Caller, sf_error};
use crate::error::{ApiError, json_response};
use crate::server::App;

/// A Node in v0.8's shape.
pub fn node_view(object: &Value) -> Value {
    let mut view = flatten(object);
    let roles: Vec<String> = object
        .pointer("/spec/roles")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let has = |role: &str| roles.iter().any(|r| r == role);
    let agent = text(object, "/status/versions/agent");
    view["ip"] = json!(text(object, "/status/address").unwrap_or_default());
    view["fqdn"] = json!(text(object, "/status/fqdn"));
    view["lastseen"] = json!(epoch(object, "/status/lastSeen").unwrap_or(0.0));
    view["version"] = json!(agent);
    view["release"] = json!(agent);
    view["is_hypervisor"] = json!(has("hypervisor"));
    view["is_network_node"] = json!(has("network"));
    view["is_cluster_maintainer"] = json!(false);
    view["is_database_node"] = json!(false);
    view
}

/// A Blob in v0.8's shape.
pub fn blob_view(object: &Value) -> Value {
    let mut view = flatten(object);
    view["uuid"] = json!(text(object, "/metadata/name"));
    view["locations"] = object
        .pointer("/status/nodes")
        .cloned()
        .unwrap_or_else(|| json!([]));
    view["reference_count"] = object
        .pointer("/status/referenceCount")
        .cloned()
        .unwrap_or(json!(0));
    view["mime type"] = json!(text(object, "/spec/mimeType"));
    view["size"] = object
        .pointer("/status/size")
        .or_else(|| object.pointer("/spec/size"))
        .cloned()
        .unwrap_or(json!(0));
    view["instances"] = json!([]);
    view["depends_on"] = Value::Null;
    view["transcodes"] = json!({});
    view
}

async fn nodes(app: &App) -> Result<Vec<Value>, Response> {
    list_kind(app, "Node", None).await
}

pub(super) async fn node_named(app: &App, name: &str) -> Result<Value, Response> {
    nodes(app)
        .await?
        .into_iter()
        .find(|n| {
            text(n, "/metadata/name").as_deref() == Some(name)
                || text(n, "/metadata/uid").as_deref() == Some(name)
        })
        .ok_or_else(|| not_found("Node", name))
}

/// The Blobs `caller` may see.
async fn blobs(app: &App, caller: &Caller) -> Result<Vec<Value>, Response> {
    let mut items = list_kind(app, "Blob", None).await?;
    if !caller.is_system() {
        items.retain(|b| {
            text(b, "/spec/ownerNamespace").as_deref() == Some(caller.namespace.as_str())
        });
    }
    Ok(items)
}

pub(super) async fn blob_named(app: &App, caller: &Caller, uuid: &str) -> Result<Value, Response> {
    blobs(app, caller)
        .await?
        .into_iter()
        .find(|b| {
            text(b, "/metadata/name").as_deref() == Some(uuid)
                || text(b, "/metadata/uid").as_deref() == Some(uuid)
        })
        .ok_or_else(|| not_found("Blob", uuid))
}

pub(super) async fn blob_data(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let offset = match param(query.as_deref(), &Value::Null, "offset") {
            None => 0,
            Some(o) => o.parse::<usize>().map_err(|_| {
                sf_error(
                    StatusCode::BAD_REQUEST,
                    format!("offset must be a byte count, got {o:?}"),
                )
            })?,
        };
        let blob = blob_named(&app, &caller, &uuid).await?;
        let uid = text(&blob, "/metadata/uid").unwrap_or_default();
        let reply = match app.gateway.get_blob_data(&uid).await {
            Ok(reply) => reply,
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                let holders = blob_view(&blob)["locations"].clone();
                return Err(sf_error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "blob {uuid} has no bytes in the database: an artifact's blob lives \
                         on the hypervisors holding it ({holders}); only small blobs such \
                         as screenshots are served here"
                    ),
                ));
            }
            Err(e) => {
                return Err(error_response(&ApiError::from_gateway(
                    &e,
                    &Default::default(),
                )));
            }
        };
        // As v0.8 seeks: past the end is an empty answer, not an error.
        let data = Bytes::from(reply.data);
        let data = data.slice(offset.min(data.len())..);
        Ok(crate::actions::blob_bytes_response(
            &blob,
            &reply.mime_type,
            data,
        ))
    };
    done(run.await)
}

pub(super) async fn list_nodes(State(app): State<Arc<App>>) -> Response {
    let run = async {
        let views: Vec<Value> = nodes(&app).await?.iter().map(node_view).collect();
        Ok(json_response(StatusCode::OK, &views))
    };
    done(run.await)
}

pub(super) async fn get_node(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    done(
        node_named(&app, &name)
            .await
            .map(|n| json_response(StatusCode::OK, &node_view(&n))),
    )
}

pub(super) async fn node_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = body_json(&body)?;
        let node = node_named(&app, &name).await?;
        events_of(&app, "Node", &node, query.as_deref(), &body).await
    };
    done(run.await)
}

pub(super) async fn list_blobs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = body_json(&body)?;
        let node = param(query.as_deref(), &body, "node").filter(|n| !n.is_empty());
        let views: Vec<Value> = blobs(&app, &caller)
            .await?
            .iter()
            .map(blob_view)
            .filter(|v| {
                node.as_ref().is_none_or(|node| {
                    v["locations"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|n| n.as_str() == Some(node)))
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &views))
    };
    done(run.await)
}

pub(super) async fn get_blob(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
) -> Response {
    done(
        blob_named(&app, &caller, &uuid)
            .await
            .map(|b| json_response(StatusCode::OK, &blob_view(&b))),
    )
}

pub(super) async fn blob_events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = body_json(&body)?;
        let blob = blob_named(&app, &caller, &uuid).await?;
        events_of(&app, "Blob", &blob, query.as_deref(), &body).await
    };
    done(run.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reads_as_v08_with_its_roles_and_last_check_in() {
        let node = json!({
            "kind": "Node",
            "metadata": {"name": "hv-1", "uid": "u1"},
            "spec": {"roles": ["hypervisor", "network"]},
            "status": {"state": "created", "address": "192.0.2.1",
                       "lastSeen": "2026-11-26T10:00:00Z", "versions": {"agent": "0.1.0"}},
        });
        let view = node_view(&node);
        assert_eq!(view["name"], "hv-1");
        assert_eq!(view["ip"], "192.0.2.1");
        assert_eq!(view["lastseen"], json!(1_795_687_200.0));
        assert_eq!(view["is_hypervisor"], true);
        assert_eq!(view["is_network_node"], true);
        assert_eq!(view["release"], "0.1.0");
        let unseen = node_view(&json!({"metadata": {"name": "hv-2"}}));
        assert_eq!(unseen["lastseen"], json!(0.0));
        assert_eq!(unseen["ip"], "");
        assert_eq!(unseen["is_hypervisor"], false);
    }

    #[test]
    fn a_blob_is_named_by_its_uuid_with_its_locations() {
        let blob = json!({
            "kind": "Blob",
            "metadata": {"name": "b-uuid", "uid": "meta-uid"},
            "spec": {"ownerNamespace": "ta", "mimeType": "application/x-qcow2"},
            "status": {"state": "created", "size": 42, "nodes": ["hv-1"], "referenceCount": 2},
        });
        let view = blob_view(&blob);
        assert_eq!(view["uuid"], "b-uuid");
        assert_eq!(view["locations"], json!(["hv-1"]));
        assert_eq!(view["reference_count"], 2);
        assert_eq!(view["size"], 42);
        assert_eq!(view["mime type"], "application/x-qcow2");
        assert_eq!(view["transcodes"], json!({}));
        assert_eq!(view["depends_on"], Value::Null);
    }
}
