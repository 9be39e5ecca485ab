//! A subset of Shaken Fist v0.8's REST paths, for `shakenfist-client`.
//!
//! Contract (`shared/research/shakenfist.md` §1): snake_case field names, errors as
//! `{"error", "status"}`, the same admission and storage as the Kubernetes paths.
//! - `GET /instances`, `GET /networks`: the caller's namespace; a `namespace`
//!   parameter (query or JSON body; the body wins) scopes the lookup; `system` without
//!   one sees every namespace; a tenant naming another namespace gets 404.
//! - `GET|DELETE /instances/{ref}`, `GET|DELETE /networks/{ref}`: `ref` is a uuid or
//!   a unique name in that scope (a name matching several objects is 400; no match
//!   404). DELETE starts the deletion (finalizers release resources) and answers the
//!   object as it then is (instances 200, networks 202 as in v0.8).
//! - `POST /instances {name, cpus, memory, disk: [{size, base, bus, type}], network:
//!   [{network_uuid, address, macaddress, model, float}], ssh_key, user_data, video,
//!   uefi, secure_boot, configdrive, namespace, placed_on}` and `POST /networks
//!   {name, netblock, provide_dhcp, provide_nat, provide_dns, namespace}` create the
//!   objects (a `network_uuid` may be a network's uuid or name in the namespace).
//! - Objects are answered flat: `uuid`, `name`, `namespace`, the spec's and status's
//!   fields in snake_case (`state` from status), `created` (creation time).
//!
//! Not served: the other v0.8 paths (sub-resources, artifacts, blobs, nodes, ...).

// Helpers fail with the finished v0.8 error response, which handlers return as is.
#![allow(clippy::result_large_err)]

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

use crate::admission::admit;
use crate::auth::{Caller, sf_error};
use crate::error::{ApiError, json_response};
use crate::gateway::{Part, Selection};
use crate::params::FieldValidation;
use crate::server::App;

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/instances", get(list_instances).post(create_instance))
        .route(
            "/instances/{reference}",
            get(get_instance).delete(delete_instance),
        )
        .route("/networks", get(list_networks).post(create_network))
        .route(
            "/networks/{reference}",
            get(get_network).delete(delete_network),
        )
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
    Value::Object(out)
}

fn error_response(e: &ApiError) -> Response {
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

/// The one object `reference` (uuid or unique name) names in the scope.
async fn resolve(
    app: &App,
    kind: &str,
    ns: Option<String>,
    reference: &str,
) -> Result<Value, Response> {
    let items = list_kind(app, kind, ns).await?;
    if let Some(found) = items
        .iter()
        .find(|o| o.pointer("/metadata/uid").and_then(Value::as_str) == Some(reference))
    {
        return Ok(found.clone());
    }
    let named: Vec<&Value> = items
        .iter()
        .filter(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(reference))
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(sf_error(
            StatusCode::NOT_FOUND,
            format!("{} {reference} not found", kind.to_ascii_lowercase()),
        )),
        _ => Err(sf_error(
            StatusCode::BAD_REQUEST,
            format!(
                "{reference} matches more than one {}",
                kind.to_ascii_lowercase()
            ),
        )),
    }
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
) -> Result<Response, Response> {
    let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
    let object = resolve(app, kind, ns, reference).await?;
    Ok(json_response(StatusCode::OK, &flatten(&object)))
}

async fn remove(
    app: &App,
    caller: &Caller,
    kind: &str,
    reference: &str,
    query: Option<&str>,
    code: StatusCode,
) -> Result<Response, Response> {
    let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
    let object = resolve(app, kind, ns, reference).await?;
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let deleted = app
        .gateway
        .delete(kind, namespace, name, None, None, false)
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
    let info = app
        .kinds
        .by_kind(kind)
        .cloned()
        .ok_or_else(|| sf_error(StatusCode::INTERNAL_SERVER_ERROR, "unknown kind"))?;
    let object = json!({
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    let subject = crate::error::Subject {
        group: sf_schema::GROUP.into(),
        plural: info.plural.clone(),
        kind: kind.into(),
        name: name.into(),
    };
    let admitted = admit(&info, object, Part::Main, FieldValidation::Strict)
        .map_err(|e| error_response(&e.into_api(&subject)))?;
    let created = app
        .gateway
        .create(&admitted.object, false)
        .await
        .map_err(|e| error_response(&ApiError::from_gateway(&e, &subject)))?;
    Ok(json_response(StatusCode::OK, &flatten(&created)))
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
) -> Response {
    done(show(&app, &caller, "Instance", &reference, query.as_deref()).await)
}

async fn get_network(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    done(show(&app, &caller, "Network", &reference, query.as_deref()).await)
}

async fn delete_instance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    done(
        remove(
            &app,
            &caller,
            "Instance",
            &reference,
            query.as_deref(),
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
) -> Response {
    done(
        remove(
            &app,
            &caller,
            "Network",
            &reference,
            query.as_deref(),
            StatusCode::ACCEPTED,
        )
        .await,
    )
}

/// Keys of a v0.8 create body that are not spec fields.
const NOT_SPEC: &[&str] = &["name", "namespace", "disk", "network", "configdrive"];

async fn create_instance(
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
        networks.push(entry);
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
