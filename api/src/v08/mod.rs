//! A subset of Shaken Fist v0.8's REST paths, for `shakenfist-client`.
//!
//! Contract (`shared/research/shakenfist.md` §1): snake_case field names, errors as
//! `{"error", "status"}`, the same admission and storage as the Kubernetes paths.
//! - `GET /instances`, `GET /networks`: the caller's namespace; a `namespace`
//!   parameter (query or JSON body; the body wins) scopes the lookup; `system` without
//!   one sees every namespace; a tenant naming another namespace gets 404.
//! - `GET|DELETE /instances/{ref}`, `GET|DELETE /networks/{ref}`: `ref` is a uuid or
//!   a unique name in that scope (a name matching several objects is 400; no match
//!   404). GET by uuid of an object removed within the change log's retention answers
//!   its final state with `state: deleted` (sf-database's tombstones), as v0.8 keeps
//!   deleted objects and its clients poll for that state after a delete. DELETE starts the deletion (finalizers release resources) and answers the
//!   object as it then is (instances 200, networks 202 as in v0.8).
//! - `POST /instances {name, cpus, memory, disk: [{size, base, bus, type}], network:
//!   [{network_uuid, address, macaddress, model, float}], ssh_key, user_data, video,
//!   uefi, secure_boot, configdrive, namespace, placed_on, metadata}` (null members
//!   count as absent, as v0.8 clients send every field; `metadata` items are stored
//!   as [`metadata`] does; `side_channels` with a value is 400: not carried here)
//!   and `POST /networks
//!   {name, netblock, provide_dhcp, provide_nat, provide_dns, namespace}` create the
//!   objects (a `network_uuid` may be a network's uuid or name in the namespace).
//! - Objects are answered flat: `uuid`, `name`, `namespace`, the spec's and status's
//!   fields in snake_case (`state` from status), `created` (creation time); an
//!   instance's `power_state` is the observed one once reported, `running` said as
//!   v0.8's `on`.
//! - Artifacts: [`artifacts`].
//!
//! - `POST /networks/{ref}/route` asks for one more routed address (increments
//!   `spec.routedAddressCount`, admitted as an update with the read resourceVersion
//!   as precondition) and answers 202 with the network; the address appears in
//!   `routed_addresses` once the network controller reserved it. `DELETE
//!   /networks/{ref}/route/{addr}` decrements it when `addr` is the most recent routed
//!   address (the controller releases the last ones first); another held address, or
//!   a count the controller has not caught up with yet, is 409; an address not routed
//!   to the network 404.
//!
//! - `POST /instances/{ref}/{poweron|poweroff|pause|unpause}` set `spec.powerState`
//!   (admitted as an update with the read resourceVersion as precondition; nothing
//!   written when it already is so); `rebootsoft|reboothard` create an
//!   `instance_reboot` operation as the Kubernetes path does. Each answers the
//!   instance (200); 409 for a deleted instance, a pause of one powered off, an
//!   unpause of one not paused, a reboot of one not on; another action 404.
//!
//! - `POST /instances/{ref}/snapshot {all, device, max_versions, thin}` answers
//!   `{device: {source_url, artifact_uuid, blob_uuid}}` at once (the artifacts made,
//!   the `instance_snapshot` operation created, the blobs named as the agent will
//!   write them; `thin` is 400, not supported); `GET /instances/{ref}/snapshot` lists
//!   the recorded snapshots: each version of the instance's snapshot artifacts as the
//!   artifact's view updated with its blob's (`blob_uuid`, `state`).
//!
//! - `DELETE /instances` and `DELETE /networks` `{confirm: true, namespace}` start
//!   deleting every object of the kind in the namespace (the caller's; `system` must
//!   name one) and answer their uuids; without `confirm: true`, or a system caller
//!   without `namespace`, 400 and nothing deleted.
//! - `GET /{instances,networks}/{ref}/events` (a recently deleted one's too, by uuid):
//!   v0.8 event rows, newest first (`event_type`
//!   and `limit` from the query or the JSON body).
//! - Interfaces and network addresses: [`interfaces`]; nodes, blobs and blob data: [`inventory`];
//!   metadata items of every kind here: [`metadata`]; cluster operations:
//!   [`operations`].
//!
//! - A method a path does not serve is 405 in the `{"error", "status"}` shape, with
//!   `Allow`.
//!
//! Not served: the other v0.8 paths (artifact upload, namespace trust, consoles, agent operations, node delete, ...).

// Helpers fail with the finished v0.8 error response, which handlers return as is.
#![allow(clippy::result_large_err)]

mod artifacts;
mod interfaces;
mod inventory;
pub mod metadata;
mod operations;

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use http::StatusCode;
use serde_json::{Map, Value, json};
use sf_schema::API_VERSION;
use sf_schema::snapshot::SnapshotRequest;

use crate::admission::admit;
use crate::auth::{Caller, sf_error};
use crate::error::{ApiError, json_response};
use crate::gateway::{Part, Selection};
use crate::params::FieldValidation;
use crate::server::App;

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/instances",
            get(list_instances)
                .post(create_instance)
                .delete(delete_instances),
        )
        .route(
            "/instances/{reference}",
            get(get_instance).delete(delete_instance),
        )
        .route("/instances/{reference}/events", get(instance_events))
        .route(
            "/instances/{reference}/interfaces",
            get(interfaces::instance_interfaces).post(interfaces::add_interface),
        )
        .route(
            "/instances/{reference}/snapshot",
            get(instance_snapshots).post(snapshot_instance),
        )
        .route(
            "/instances/{reference}/{action}",
            axum::routing::post(instance_action),
        )
        .route(
            "/networks",
            get(list_networks)
                .post(create_network)
                .delete(delete_networks),
        )
        .route(
            "/networks/{reference}",
            get(get_network).delete(delete_network),
        )
        .route("/networks/{reference}/events", get(network_events))
        .route(
            "/networks/{reference}/interfaces",
            get(interfaces::network_interfaces),
        )
        .route(
            "/networks/{reference}/addresses",
            get(interfaces::network_addresses),
        )
        .route(
            "/networks/{reference}/route",
            axum::routing::post(route_network),
        )
        .route(
            "/networks/{reference}/route/{address}",
            axum::routing::delete(unroute_network),
        )
        .route("/interfaces/{uuid}", get(interfaces::get_interface))
        .route(
            "/interfaces/{uuid}/{action}",
            axum::routing::post(interfaces::interface_action),
        )
        .route(
            "/artifacts",
            get(artifacts::list_artifacts)
                .post(artifacts::create_artifact)
                .delete(artifacts::delete_artifacts),
        )
        .route(
            "/artifacts/{reference}",
            get(artifacts::get_artifact).delete(artifacts::delete_artifact),
        )
        .route(
            "/artifacts/{reference}/events",
            get(artifacts::artifact_events),
        )
        .route(
            "/artifacts/{reference}/versions",
            get(artifacts::artifact_versions).post(artifacts::set_max_versions),
        )
        .route(
            "/artifacts/{reference}/versions/{index}",
            axum::routing::delete(artifacts::delete_version),
        )
        .route(
            "/artifacts/{reference}/{action}",
            axum::routing::post(artifacts::artifact_action),
        )
        .route("/nodes", get(inventory::list_nodes))
        .route("/nodes/{name}", get(inventory::get_node))
        .route("/nodes/{name}/events", get(inventory::node_events))
        .route("/blobs", get(inventory::list_blobs))
        .route("/blobs/{uuid}", get(inventory::get_blob))
        .route("/blobs/{uuid}/events", get(inventory::blob_events))
        .route("/blobs/{uuid}/data", get(inventory::blob_data))
        .route("/clusteroperations", get(operations::list_operations))
        .route(
            "/clusteroperations/{reference}/chain",
            get(operations::operation_chain),
        )
        .route(
            "/clusteroperations/{reference}/{uuid}",
            get(operations::get_operation),
        )
        .merge(metadata::routes())
        // A v0.8 client gets its own error shape (and the `Allow` header axum adds).
        .method_not_allowed_fallback(|| async {
            sf_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the method is not allowed for the requested URL",
            )
        })
}

/// camelCase → snake_case.
pub fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// snake_case → camelCase.
pub fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn rename_keys(value: &Value, f: fn(&str) -> String) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (f(k), rename_keys(v, f))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| rename_keys(v, f)).collect()),
        other => other.clone(),
    }
}

/// The v0.8 shape of a stored object.
pub fn flatten(object: &Value) -> Value {
    let mut out = Map::new();
    let meta = object.get("metadata").cloned().unwrap_or(json!({}));
    if let Some(Value::Object(spec)) = object.get("spec").map(|s| rename_keys(s, snake)) {
        out.extend(spec);
    }
    if let Some(Value::Object(status)) = object.get("status").map(|s| rename_keys(s, snake)) {
        out.extend(status);
    }
    out.insert(
        "uuid".into(),
        meta.get("uid").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "name".into(),
        meta.get("name").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "namespace".into(),
        meta.get("namespace").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "created".into(),
        meta.get("creationTimestamp")
            .cloned()
            .unwrap_or(Value::Null),
    );
    if !out.contains_key("state") {
        out.insert("state".into(), json!("initial"));
    }
    // An instance's power_state is what the hypervisor reports, in v0.8's words
    // (`on`, not `running`); the desired state until it has reported.
    if object.get("kind").and_then(Value::as_str) == Some("Instance")
        && out.get("power_state").and_then(Value::as_str) == Some("running")
    {
        out.insert("power_state".into(), json!("on"));
    }
    Value::Object(out)
}

/// The string at `pointer` of `v`.
fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Seconds since the epoch of the RFC 3339 time at `pointer` of `v` (v0.8 gives
/// times as numbers); `None` when absent or unreadable.
fn epoch(v: &Value, pointer: &str) -> Option<f64> {
    text(v, pointer)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.timestamp_micros() as f64 / 1e6)
}

pub(super) fn error_response(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    sf_error(code, e.to_string())
}

fn param(query: Option<&str>, body: &Value, name: &str) -> Option<String> {
    if let Some(v) = body.get(name).and_then(Value::as_str) {
        return Some(v.to_string());
    }
    query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    })
}

/// The namespace a lookup runs in (`None`: every namespace, system only).
fn lookup_namespace(caller: &Caller, named: Option<String>) -> Result<Option<String>, Response> {
    match named.filter(|n| !n.is_empty()) {
        Some(ns) if caller.is_system() || ns == caller.namespace => Ok(Some(ns)),
        Some(ns) => Err(sf_error(
            StatusCode::NOT_FOUND,
            format!("namespace {ns} not found"),
        )),
        None if caller.is_system() => Ok(None),
        None => Ok(Some(caller.namespace.clone())),
    }
}

async fn list_kind(app: &App, kind: &str, ns: Option<String>) -> Result<Vec<Value>, Response> {
    let selection = Selection {
        kind: kind.into(),
        namespace: ns,
        ..Selection::default()
    };
    app.gateway
        .list(&selection)
        .await
        .map(|(items, _)| items)
        .map_err(|e| error_response(&ApiError::from_gateway(&e, &Default::default())))
}

/// The one object of `items` that `reference` (uuid or unique name) names; `None`
/// when none does, 400 when a name matches several.
fn find(items: &[Value], kind: &str, reference: &str) -> Result<Option<Value>, Response> {
    if let Some(found) = items
        .iter()
        .find(|o| o.pointer("/metadata/uid").and_then(Value::as_str) == Some(reference))
    {
        return Ok(Some(found.clone()));
    }
    let named: Vec<&Value> = items
        .iter()
        .filter(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(reference))
        .collect();
    match named.as_slice() {
        [one] => Ok(Some((*one).clone())),
        [] => Ok(None),
        _ => Err(sf_error(
            StatusCode::BAD_REQUEST,
            format!(
                "{reference} matches more than one {}",
                kind.to_ascii_lowercase()
            ),
        )),
    }
}

fn not_found(kind: &str, reference: &str) -> Response {
    sf_error(
        StatusCode::NOT_FOUND,
        format!("{} {reference} not found", kind.to_ascii_lowercase()),
    )
}

/// The one object `reference` (uuid or unique name) names in the scope.
async fn resolve(
    app: &App,
    kind: &str,
    ns: Option<String>,
    reference: &str,
) -> Result<Value, Response> {
    let items = list_kind(app, kind, ns).await?;
    find(&items, kind, reference)?.ok_or_else(|| not_found(kind, reference))
}

fn body_json(body: &Bytes) -> Result<Value, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        sf_error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

async fn list(
    app: &App,
    caller: &Caller,
    kind: &str,
    query: Option<&str>,
) -> Result<Response, Response> {
    let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
    let items = list_kind(app, kind, ns).await?;
    Ok(json_response(
        StatusCode::OK,
        &items.iter().map(flatten).collect::<Vec<_>>(),
    ))
}

async fn show(
    app: &App,
    caller: &Caller,
    kind: &str,
    reference: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response, Response> {
    let body = body_json(body)?;
    let ns = lookup_namespace(caller, param(query, &body, "namespace"))?;
    match resolve(app, kind, ns.clone(), reference).await {
        Ok(object) => Ok(json_response(StatusCode::OK, &flatten(&object))),
        Err(missing) => match deleted(app, kind, ns.as_deref(), reference).await {
            Some(object) => {
                let mut flat = flatten(&object);
                flat["state"] = json!("deleted");
                Ok(json_response(StatusCode::OK, &flat))
            }
            None => Err(missing),
        },
    }
}

/// The final state of an object of `kind` removed recently, by uuid, when it was in
/// the lookup's scope (`namespace`; `None`: every namespace): v0.8 clients poll a
/// deleted object by uuid until they read `state: deleted`, as Shaken Fist keeps
/// deleted objects. sf-database keeps these tombstones as long as its change log.
async fn deleted(app: &App, kind: &str, namespace: Option<&str>, uid: &str) -> Option<Value> {
    if uuid::Uuid::parse_str(uid).is_err() {
        return None;
    }
    let object = app.gateway.get_deleted(kind, uid).await.ok()?;
    let in_scope = namespace.is_none_or(|ns| {
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            == Some(ns)
    });
    in_scope.then_some(object)
}

/// Starts deleting `object` (of `kind`, as read): by its namespace and name, with its
/// uid as precondition, so a namesake made since the lookup is not deleted.
async fn delete_found(
    app: &App,
    kind: &str,
    object: &Value,
) -> Result<crate::gateway::Deleted, crate::gateway::GatewayError> {
    let namespace = text(object, "/metadata/namespace").unwrap_or_default();
    let name = text(object, "/metadata/name").unwrap_or_default();
    let uid = text(object, "/metadata/uid");
    app.gateway
        .delete(kind, &namespace, &name, None, uid.as_deref(), false)
        .await
}

async fn remove(
    app: &App,
    caller: &Caller,
    kind: &str,
    reference: &str,
    query: Option<&str>,
    body: &Bytes,
    code: StatusCode,
) -> Result<Response, Response> {
    let body = body_json(body)?;
    let ns = lookup_namespace(caller, param(query, &body, "namespace"))?;
    let object = resolve(app, kind, ns, reference).await?;
    let deleted = delete_found(app, kind, &object)
        .await
        .map_err(|e| error_response(&ApiError::from_gateway(&e, &Default::default())))?;
    let mut flat = flatten(&deleted.object);
    if deleted.removed {
        flat["state"] = json!("deleted");
    }
    Ok(json_response(code, &flat))
}

async fn create(
    app: &App,
    caller: &Caller,
    kind: &str,
    body: &Value,
    query: Option<&str>,
    spec: Value,
) -> Result<Response, Response> {
    let ns = lookup_namespace(caller, param(query, body, "namespace"))?
        .unwrap_or_else(|| caller.namespace.clone());
    let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
    let mut object = json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    if !caller.is_system() {
        crate::resources::tenant_rules(kind, &object).map_err(|e| error_response(&e))?;
    }
    match body.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(items)) => {
            for key in items.keys() {
                metadata::check_key(key)?;
            }
            metadata::store_items(&mut object, items);
        }
        Some(_) => {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "metadata: must be an object of key → value items",
            ));
        }
    }
    let created = create_object(app, object, &ns).await?;
    Ok(json_response(StatusCode::OK, &flatten(&created)))
}

/// `object` (of the kind it names) admitted like any write of the Kubernetes paths
/// (strict decoding, validation), with its subject for errors.
fn admitted(app: &App, object: Value) -> Result<(Value, crate::error::Subject), Response> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let subject = subject_of(app, &kind, &object)?;
    let info = app
        .kinds
        .by_kind(&kind)
        .cloned()
        .ok_or_else(|| sf_error(StatusCode::INTERNAL_SERVER_ERROR, "unknown kind"))?;
    let admitted = admit(&info, object, Part::Main, FieldValidation::Strict)
        .map_err(|e| error_response(&e.into_api(&subject)))?;
    Ok((admitted.object, subject))
}

/// Creates `object` in `namespace` once [`admitted`]; a missing namespace is 404.
async fn create_object(app: &App, object: Value, namespace: &str) -> Result<Value, Response> {
    let (object, subject) = admitted(app, object)?;
    crate::resources::check_floating_overlap(app, &object, &subject)
        .await
        .map_err(|e| error_response(&e))?;
    app.gateway
        .create(&object, false)
        .await
        .map_err(|e| error_response(&ApiError::from_create(&e, &subject, Some(namespace))))
}

fn done(result: Result<Response, Response>) -> Response {
    result.unwrap_or_else(|response| response)
}

async fn list_instances(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    done(list(&app, &caller, "Instance", query.as_deref()).await)
}

async fn list_networks(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    done(list(&app, &caller, "Network", query.as_deref()).await)
}

async fn get_instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        show(
            &app,
            &caller,
            "Instance",
            &reference,
            query.as_deref(),
            &body,
        )
        .await,
    )
}

async fn get_network(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        show(
            &app,
            &caller,
            "Network",
            &reference,
            query.as_deref(),
            &body,
        )
        .await,
    )
}

async fn delete_instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        remove(
            &app,
            &caller,
            "Instance",
            &reference,
            query.as_deref(),
            &body,
            StatusCode::OK,
        )
        .await,
    )
}

async fn delete_network(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        remove(
            &app,
            &caller,
            "Network",
            &reference,
            query.as_deref(),
            &body,
            StatusCode::ACCEPTED,
        )
        .await,
    )
}

/// `DELETE /instances` and `DELETE /networks` `{confirm: true, namespace}`: starts the
/// deletion of every object of `kind` in the namespace (the caller's own; `system`
/// must name one) and answers their uuids. Without `confirm: true` it is 400 and
/// nothing is deleted.
async fn remove_all(
    app: &App,
    caller: &Caller,
    kind: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response, Response> {
    let body = body_json(body)?;
    // The body wins over the query, as for every v0.8 parameter.
    let confirmed = match body.get("confirm") {
        Some(given) => given.as_bool() == Some(true),
        None => param(query, &body, "confirm").as_deref() == Some("true"),
    };
    let plural = format!("{}s", kind.to_ascii_lowercase());
    if !confirmed {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            format!("confirm: must be true to delete every {plural} of a namespace"),
        ));
    }
    let named = param(query, &body, "namespace").filter(|n| !n.is_empty());
    if caller.is_system() && named.is_none() {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            format!(
                "namespace: the system namespace must name the namespace whose {plural} to delete"
            ),
        ));
    }
    let ns = lookup_namespace(caller, named)?.unwrap_or_else(|| caller.namespace.clone());
    let mut uuids = Vec::new();
    for object in list_kind(app, kind, Some(ns.clone())).await? {
        if object.pointer("/metadata/deletionTimestamp").is_none() {
            match delete_found(app, kind, &object).await {
                Ok(_) => {}
                // Gone in the meantime (or replaced by a namesake, which the uid
                // precondition spares): what was asked for.
                Err(e)
                    if matches!(e.code(), Some(tonic::Code::NotFound | tonic::Code::Aborted)) => {}
                Err(e) => {
                    return Err(error_response(&ApiError::from_gateway(
                        &e,
                        &Default::default(),
                    )));
                }
            }
        }
        uuids.push(
            object
                .pointer("/metadata/uid")
                .cloned()
                .unwrap_or(Value::Null),
        );
    }
    Ok(json_response(StatusCode::OK, &uuids))
}

async fn delete_instances(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(remove_all(&app, &caller, "Instance", query.as_deref(), &body).await)
}

async fn delete_networks(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(remove_all(&app, &caller, "Network", query.as_deref(), &body).await)
}

/// Keys of a v0.8 create body that are not spec fields.
const NOT_SPEC: &[&str] = &[
    "name",
    "namespace",
    "disk",
    "network",
    "configdrive",
    "metadata",
    "side_channels",
];

/// `value` without the object members whose value is null, at every depth: v0.8
/// clients send `None` for what they leave unset (`shakenfist-client` sends every
/// create field).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// A 400 for a v0.8 create field this API does not carry, when it is given a value.
fn unsupported_field(body: &Value, field: &str, what: &str) -> Result<(), Response> {
    let given = match body.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if given {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            format!("{field}: {what} are not supported by this API; omit {field}"),
        ));
    }
    Ok(())
}

/// The interface fields of a v0.8 networkspec (`address`, `macaddress`, `model`,
/// `float`) with `network` (already resolved) named: a `spec.networks` entry of an
/// Instance, or the spec of a hot-plugged NetworkInterface.
fn nic_fields(net: &Value, network: &Value) -> Value {
    let mut entry =
        json!({"network": network.pointer("/metadata/name").cloned().unwrap_or(Value::Null)});
    for (from, to) in [
        ("address", "address"),
        ("macaddress", "macaddr"),
        ("macaddr", "macaddr"),
        ("model", "model"),
        ("float", "float"),
    ] {
        if let Some(v) = net.get(from).filter(|v| !v.is_null()) {
            entry[to] = v.clone();
        }
    }
    entry
}

async fn create_instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let body = match body_json(&body) {
        Ok(body) => without_nulls(&body),
        Err(response) => return response,
    };
    if let Err(response) = unsupported_field(&body, "side_channels", "side channels") {
        return response;
    }
    let mut spec = Map::new();
    if let Some(map) = body.as_object() {
        for (k, v) in map {
            if !NOT_SPEC.contains(&k.as_str()) {
                spec.insert(camel(k), rename_keys(v, camel));
            }
        }
    }
    if let Some(config_drive) = body.get("configdrive") {
        spec.insert("configDrive".into(), config_drive.clone());
    }
    spec.insert(
        "disks".into(),
        rename_keys(body.get("disk").unwrap_or(&json!([])), camel),
    );
    let scope = match lookup_namespace(&caller, param(query.as_deref(), &body, "namespace")) {
        Ok(ns) => ns.or_else(|| Some(caller.namespace.clone())),
        Err(response) => return response,
    };
    let mut networks = Vec::new();
    for net in body
        .get("network")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let reference = net
            .get("network_uuid")
            .or_else(|| net.get("network"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let network = match resolve(&app, "Network", scope.clone(), reference).await {
            Ok(network) => network,
            Err(response) => return response,
        };
        networks.push(nic_fields(net, &network));
    }
    if !networks.is_empty() {
        spec.insert("networks".into(), Value::Array(networks));
    }
    done(
        create(
            &app,
            &caller,
            "Instance",
            &body,
            query.as_deref(),
            Value::Object(spec),
        )
        .await,
    )
}

async fn route_network(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    done(set_routes(&app, &caller, &reference, query.as_deref(), None).await)
}

async fn unroute_network(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((reference, address)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    done(set_routes(&app, &caller, &reference, query.as_deref(), Some(&address)).await)
}

/// One more routed address (`release` None), or one fewer when `release` is the
/// most recent one (see the module contract).
async fn set_routes(
    app: &App,
    caller: &Caller,
    reference: &str,
    query: Option<&str>,
    release: Option<&str>,
) -> Result<Response, Response> {
    let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
    let mut object = resolve(app, "Network", ns, reference).await?;
    let count = object
        .pointer("/spec/routedAddressCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let count = match release {
        None => count + 1,
        Some(address) => {
            let held: Vec<&str> = object
                .pointer("/status/routedAddresses")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let Some(position) = held.iter().position(|a| *a == address) else {
                return Err(sf_error(
                    StatusCode::NOT_FOUND,
                    format!("{address} is not routed to network {reference}"),
                ));
            };
            let wanted = usize::try_from(count).unwrap_or(usize::MAX);
            if wanted != held.len() {
                return Err(sf_error(
                    StatusCode::CONFLICT,
                    format!(
                        "network {reference} is still reserving or releasing routed \
                         addresses; retry"
                    ),
                ));
            }
            if position + 1 != held.len() {
                return Err(sf_error(
                    StatusCode::CONFLICT,
                    format!(
                        "only the most recent routed address of network {reference} can be \
                         released; {address} is not it"
                    ),
                ));
            }
            count - 1
        }
    };
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("routedAddressCount".into(), json!(count));
    }
    let updated = update_object(app, caller, object).await?;
    Ok(json_response(StatusCode::ACCEPTED, &flatten(&updated)))
}

/// The `Subject` of a stored object of `kind` (for error messages).
fn subject_of(app: &App, kind: &str, object: &Value) -> Result<crate::error::Subject, Response> {
    let info = app
        .kinds
        .by_kind(kind)
        .ok_or_else(|| sf_error(StatusCode::INTERNAL_SERVER_ERROR, "unknown kind"))?;
    Ok(crate::error::Subject {
        group: sf_schema::GROUP.into(),
        plural: info.plural.clone(),
        kind: kind.into(),
        name: object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// Stores the main part (metadata and spec) of `object` (read from the store, then
/// changed by the caller), admitted as an update with the read resourceVersion as precondition: a write
/// made in between is a 409, never overwritten.
async fn update_object(app: &App, caller: &Caller, mut object: Value) -> Result<Value, Response> {
    let resource_version = object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    let (object, subject) = admitted(app, object)?;
    // The same tenant rules as the Kubernetes paths' updates, whatever field changed.
    if !caller.is_system() {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        crate::resources::tenant_rules(kind, &object).map_err(|e| error_response(&e))?;
    }
    app.gateway
        .update(&object, resource_version, Part::Main, false)
        .await
        .map_err(|e| error_response(&ApiError::from_gateway(&e, &subject)))
}

/// The instance a v0.8 instance sub-path names, in the caller's scope.
async fn instance_for(
    app: &App,
    caller: &Caller,
    reference: &str,
    query: Option<&str>,
    body: &Value,
) -> Result<Value, Response> {
    let ns = lookup_namespace(caller, param(query, body, "namespace"))?;
    resolve(app, "Instance", ns, reference).await
}

/// `event_type` and `limit` of a v0.8 events request, from the query or the JSON body
/// (as `shakenfist-client` sends them); a `limit` that is not an integer is 400.
fn event_filters(query: Option<&str>, body: &Value) -> Result<(String, Option<i32>), Response> {
    let event_type = param(query, body, "event_type").unwrap_or_default();
    let limit = match body.get("limit").and_then(Value::as_i64) {
        Some(n) => Some(n.to_string()),
        None => param(query, body, "limit"),
    };
    let limit = match limit {
        Some(v) => Some(v.parse::<i32>().map_err(|_| {
            sf_error(
                StatusCode::BAD_REQUEST,
                format!("limit must be an integer, got {v:?}"),
            )
        })?),
        None => None,
    };
    Ok((event_type, limit))
}

/// The v0.8 event rows of `object` (of `kind`), newest first, filtered as the request
/// asks ([`event_filters`]).
async fn events_of(
    app: &App,
    kind: &str,
    object: &Value,
    query: Option<&str>,
    body: &Value,
) -> Result<Response, Response> {
    let (event_type, limit) = event_filters(query, body)?;
    let subject = subject_of(app, kind, object)?;
    let rows = crate::actions::event_rows(app, kind, &subject, object, &event_type, limit)
        .await
        .map_err(|e| error_response(&e))?;
    Ok(json_response(StatusCode::OK, &rows))
}

/// `GET /{instances,networks}/{ref}/events`: the object in the caller's scope, or one
/// deleted recently, by uuid (its tombstone), as v0.8 keeps deleted objects' events
/// readable.
async fn scoped_events(
    app: &App,
    caller: &Caller,
    kind: &str,
    reference: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response, Response> {
    let body = body_json(body)?;
    let ns = lookup_namespace(caller, param(query, &body, "namespace"))?;
    let object = match resolve(app, kind, ns.clone(), reference).await {
        Ok(object) => object,
        Err(missing) => deleted(app, kind, ns.as_deref(), reference)
            .await
            .ok_or(missing)?,
    };
    events_of(app, kind, &object, query, &body).await
}

async fn instance_events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        scoped_events(
            &app,
            &caller,
            "Instance",
            &reference,
            query.as_deref(),
            &body,
        )
        .await,
    )
}

async fn network_events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        scoped_events(
            &app,
            &caller,
            "Network",
            &reference,
            query.as_deref(),
            &body,
        )
        .await,
    )
}

/// `POST /instances/{ref}/snapshot {all, device, max_versions, thin}`: v0.8's answer
/// at once, `{device: {source_url, artifact_uuid, blob_uuid}}`, for the devices the
/// agent will take ([`sf_schema::snapshot::choose`]): each device's snapshot Artifact
/// is made here when missing, the `instance_snapshot` operation created, and the
/// blob each device will be written to named from the operation's uid as the agent
/// names it. A bad body or a device that is not a disk is 400, an instance not placed
/// or being deleted 409.
async fn snapshot_instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        async {
            let body = without_nulls(&body_json(&body)?);
            let object = instance_for(&app, &caller, &reference, query.as_deref(), &body).await?;
            let mut asked = body.clone();
            if let Some(map) = asked.as_object_mut() {
                map.remove("namespace");
            }
            let request = SnapshotRequest::parse(&asked).map_err(|errors| {
                let messages: Vec<String> = errors.into_iter().map(|e| e.message).collect();
                sf_error(StatusCode::BAD_REQUEST, messages.join("; "))
            })?;
            if object.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(sf_error(
                    StatusCode::CONFLICT,
                    format!("instance {reference} is being deleted"),
                ));
            }
            let instance: sf_schema::Instance = serde_json::from_value(object.clone())
                .map_err(|e| sf_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let devices = sf_schema::devices::guest_devices(&instance.spec).unwrap_or_default();
            let names = sf_schema::snapshot::choose(&devices, &request)
                .map_err(|e| sf_error(StatusCode::BAD_REQUEST, e.to_string()))?;
            let uid = instance.metadata.uid.clone().unwrap_or_default();
            let name = instance.metadata.name.clone().unwrap_or_default();
            let namespace = instance.metadata.namespace.clone().unwrap_or_default();
            let mut artifacts = Vec::with_capacity(names.len());
            for device in &names {
                let artifact = snapshot_artifact(
                    &app,
                    &uid,
                    &name,
                    &namespace,
                    device,
                    request.max_versions,
                )
                .await?;
                artifacts.push(artifact);
            }
            let subject = subject_of(&app, "Instance", &object)?;
            let payload = serde_json::to_value(&request)
                .map_err(|e| sf_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let op = crate::actions::create_instance_operation(
                &app,
                &subject,
                &namespace,
                &object,
                sf_schema::operation::OperationType::InstanceSnapshot,
                payload,
            )
            .await
            .map_err(|e| error_response(&e))?;
            let op_uid = op
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut out = Map::new();
            for (device, artifact) in names.iter().zip(&artifacts) {
                out.insert(
                    device.clone(),
                    json!({
                        "source_url": sf_schema::snapshot::source_url(&uid, device),
                        "artifact_uuid": artifact.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                        "blob_uuid": sf_schema::common::derived_uuid(&format!("{op_uid}/{device}")),
                    }),
                );
            }
            Ok(json_response(StatusCode::OK, &Value::Object(out)))
        }
        .await,
    )
}

/// The snapshot Artifact of `device` of an instance, made (admitted like any create)
/// when missing; 409 when another artifact holds its name or it is being deleted.
async fn snapshot_artifact(
    app: &App,
    uid: &str,
    instance: &str,
    namespace: &str,
    device: &str,
    max_versions: Option<u32>,
) -> Result<Value, Response> {
    let name = sf_schema::snapshot::artifact_name(uid, device);
    let gateway_error = |e: &crate::gateway::GatewayError| {
        error_response(&ApiError::from_gateway(e, &Default::default()))
    };
    let artifact = match app.gateway.get("Artifact", namespace, &name).await {
        Ok(artifact) => artifact,
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            let object = sf_schema::snapshot::artifact_object(
                uid,
                instance,
                namespace,
                device,
                max_versions,
            );
            let (object, _) = admitted(app, object)?;
            match app.gateway.create(&object, false).await {
                Ok(created) => created,
                Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => app
                    .gateway
                    .get("Artifact", namespace, &name)
                    .await
                    .map_err(|e| gateway_error(&e))?,
                Err(e) => return Err(gateway_error(&e)),
            }
        }
        Err(e) => return Err(gateway_error(&e)),
    };
    if !sf_schema::snapshot::is_snapshot_artifact_of(&artifact, uid, device)
        || artifact.pointer("/metadata/deletionTimestamp").is_some()
    {
        return Err(sf_error(
            StatusCode::CONFLICT,
            format!(
                "artifact {name} is being deleted or is not this instance's snapshot artifact \
                 for {device}"
            ),
        ));
    }
    Ok(artifact)
}

/// `GET /instances/{ref}/snapshot`: every version of the instance's snapshot
/// artifacts (source `sf://instance/<uid>/...`), each the artifact's v0.8 view
/// updated with its blob's (`blob_uuid`, the blob's `state`, `size`, ...), as v0.8
/// answers it; a snapshot appears once its version is recorded.
async fn instance_snapshots(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(
        async {
            let body = body_json(&body)?;
            let object = instance_for(&app, &caller, &reference, query.as_deref(), &body).await?;
            let uid = object
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let namespace = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let prefix = format!("sf://instance/{uid}/");
            let mut out = Vec::new();
            for artifact in list_kind(&app, "Artifact", namespace).await? {
                let source = artifact
                    .pointer("/spec/sourceUrl")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !source.starts_with(&prefix) {
                    continue;
                }
                let base = flatten(&artifact);
                for mut blob in artifacts::version_views(&app, &caller, &artifact).await? {
                    let mut row = base.clone();
                    if let (Some(row), Some(view)) = (row.as_object_mut(), blob.as_object_mut()) {
                        let blob_uuid = view.remove("uuid").unwrap_or(Value::Null);
                        row.extend(std::mem::take(view));
                        row.insert("blob_uuid".into(), blob_uuid);
                    }
                    out.push(row);
                }
            }
            Ok(json_response(StatusCode::OK, &out))
        }
        .await,
    )
}

/// `POST /instances/{ref}/{poweron|poweroff|pause|unpause|rebootsoft|reboothard}`:
/// power changes set `spec.powerState` (the instance controller makes it so);
/// reboots create an `instance_reboot` operation. Answers the instance (200), or 409
/// when its state does not allow the action (a deleted instance, a pause of an
/// instance powered off, an unpause of one not paused, a reboot of one not on).
async fn instance_action(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((reference, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(power_action(&app, &caller, &reference, &action, query.as_deref(), &body).await)
}

/// Reads of an object a v0.8 write makes before giving up on a moving
/// resourceVersion.
const UPDATE_ATTEMPTS: usize = 5;

/// Read, change, write with the read resourceVersion as precondition: `read` fetches
/// the object, `change` checks and alters it and says whether there is anything to
/// write. A write made in between (a controller's or agent's status write moves the
/// resourceVersion) is a conflict: read again and re-check, up to
/// [`UPDATE_ATTEMPTS`] times, then 409 naming `what`. Answers the object as stored,
/// or as read when there was nothing to write.
async fn read_change_write<R, F, C>(
    app: &App,
    caller: &Caller,
    what: &str,
    mut read: R,
    mut change: C,
) -> Result<Value, Response>
where
    R: FnMut() -> F,
    F: std::future::Future<Output = Result<Value, Response>>,
    C: FnMut(&mut Value) -> Result<bool, Response>,
{
    for _ in 0..UPDATE_ATTEMPTS {
        let mut object = read().await?;
        if !change(&mut object)? {
            return Ok(object);
        }
        match update_object(app, caller, object).await {
            Ok(updated) => return Ok(updated),
            Err(response) if response.status() == StatusCode::CONFLICT => continue,
            Err(response) => return Err(response),
        }
    }
    Err(sf_error(
        StatusCode::CONFLICT,
        format!("{what} kept changing; retry"),
    ))
}

/// 409 for `object` (named `what` in the message) when it is being deleted.
fn not_deleting(object: &Value, what: &str) -> Result<(), Response> {
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(sf_error(
            StatusCode::CONFLICT,
            format!("{what} is being deleted"),
        ));
    }
    Ok(())
}

async fn power_action(
    app: &App,
    caller: &Caller,
    reference: &str,
    action: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response, Response> {
    use sf_schema::instance::DesiredPowerState as P;
    let wanted = match action {
        "poweron" | "unpause" => P::On,
        "poweroff" => P::Off,
        "pause" => P::Paused,
        "rebootsoft" | "reboothard" => P::On,
        other => {
            return Err(sf_error(
                StatusCode::NOT_FOUND,
                format!("instances have no action {other}"),
            ));
        }
    };
    let body = body_json(body)?;
    let reboot = action.starts_with("reboot");
    let what = format!("instance {reference}");
    let object = read_change_write(
        app,
        caller,
        &what,
        || instance_for(app, caller, reference, query, &body),
        |object| {
            not_deleting(object, &what)?;
            let conflict = |message: String| sf_error(StatusCode::CONFLICT, message);
            let desired = P::parse(
                object
                    .pointer("/spec/powerState")
                    .and_then(Value::as_str)
                    .unwrap_or("on"),
            );
            match (action, &desired) {
                ("pause", P::Off) => {
                    return Err(conflict(format!(
                        "instance {reference} is powered off; power it on before pausing it"
                    )));
                }
                ("unpause", d) if *d != P::Paused => {
                    return Err(conflict(format!("instance {reference} is not paused")));
                }
                ("rebootsoft" | "reboothard", d) if *d != P::On => {
                    return Err(conflict(format!(
                        "instance {reference} is {d}; only an instance that is on can be rebooted"
                    )));
                }
                _ => {}
            }
            if reboot || desired == wanted {
                return Ok(false);
            }
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("powerState".into(), json!(wanted.as_str()));
            }
            Ok(true)
        },
    )
    .await?;
    if reboot {
        let namespace = text(&object, "/metadata/namespace").unwrap_or_default();
        let subject = subject_of(app, "Instance", &object)?;
        crate::actions::create_instance_operation(
            app,
            &subject,
            &namespace,
            &object,
            sf_schema::operation::OperationType::InstanceReboot,
            json!({"hard": action == "reboothard"}),
        )
        .await
        .map_err(|e| error_response(&e))?;
    }
    Ok(json_response(StatusCode::OK, &flatten(&object)))
}

async fn create_network(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let body = match body_json(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut spec = Map::new();
    if let Some(map) = body.as_object() {
        for (k, v) in map {
            if !NOT_SPEC.contains(&k.as_str()) {
                spec.insert(camel(k), v.clone());
            }
        }
    }
    done(
        create(
            &app,
            &caller,
            "Network",
            &body,
            query.as_deref(),
            Value::Object(spec),
        )
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_translate_both_ways() {
        assert_eq!(snake("provideDhcp"), "provide_dhcp");
        assert_eq!(camel("provide_dhcp"), "provideDhcp");
        assert_eq!(camel(&snake("powerState")), "powerState");
        let flat = flatten(&json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "u-1"},
            "spec": {"provideDhcp": true, "netblock": "10.0.0.0/24"},
            "status": {"state": "created", "vxid": 7},
        }));
        assert_eq!(flat["uuid"], "u-1");
        assert_eq!(flat["provide_dhcp"], true);
        assert_eq!(flat["state"], "created");
        assert_eq!(flat["vxid"], 7);
    }
}
