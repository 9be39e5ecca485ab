//! v0.8 metadata: free-form `key → JSON value` items on instances, networks,
//! artifacts, interfaces, nodes, blobs and namespaces (`/auth/namespaces/{ns}/metadata`).
//!
//! Contract (`shared/research/shakenfist.md` §1):
//! - Stored in the object's annotation [`METADATA_ANNOTATION`] as one JSON object, so
//!   the Kubernetes paths, watches and `sf` see and keep it like any annotation, and a
//!   write is an ordinary update (compare-and-swap on the read resourceVersion, read
//!   again and retried on a conflict a few times; 409 if the object keeps changing).
//! - `GET /{plural}/{ref}/metadata`: the items (`{}` when none); the object is found
//!   as the kind's own v0.8 GET finds it.
//! - `PUT|POST /{plural}/{ref}/metadata/{key} {value}`: sets one item and answers all
//!   of them; `DELETE /{plural}/{ref}/metadata/{key}`: removes it (404 when absent).
//!   A body without `value` is 400. Artifacts are written in the caller's own namespace
//!   only (a shared artifact of `system` is not the tenant's); nodes, blobs and
//!   namespaces only by `system` (401, as v0.8 answers callers outside `system`), as on
//!   the Kubernetes paths. A tenant reads its own namespace's items; another namespace
//!   is 404.
//! - The key `affinity` is refused (400): Shaken Fist's scheduler reads it, this one
//!   does not, and storing it would promise a placement rule nobody applies. `POST
//!   /instances {metadata}` stores the items the same way.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::artifacts::resolve_artifact_for_read;
use super::inventory::{blob_named, node_named};
use super::{body_json, done, lookup_namespace, param, read_change_write, resolve, sf_error};
use crate::auth::Caller;
use crate::error::json_response;
use crate::server::App;

/// The annotation holding an object's v0.8 metadata items (a JSON object).
pub const METADATA_ANNOTATION: &str = "shakenfist.io/metadata";

/// Keys longer than this are 400.
const MAX_KEY: usize = 255;

/// The kinds with metadata, by v0.8 plural.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Owner {
    Instance,
    Network,
    Artifact,
    Interface,
    Node,
    Blob,
    Namespace,
}

impl Owner {
    fn kind(self) -> &'static str {
        match self {
            Self::Instance => "Instance",
            Self::Network => "Network",
            Self::Artifact => "Artifact",
            Self::Interface => "NetworkInterface",
            Self::Node => "Node",
            Self::Blob => "Blob",
            Self::Namespace => "Namespace",
        }
    }

    /// Whether only `system` writes this kind (as on the Kubernetes paths).
    fn system_written(self) -> bool {
        matches!(self, Self::Node | Self::Blob | Self::Namespace)
    }
}

/// The routes of this module.
pub(super) fn routes() -> Router<Arc<App>> {
    let mut router = Router::new();
    // The path parameter keeps the name the kind's other routes give it (the router
    // refuses two names at one position).
    for (plural, param, owner) in [
        ("instances", "reference", Owner::Instance),
        ("networks", "reference", Owner::Network),
        ("artifacts", "reference", Owner::Artifact),
        ("interfaces", "uuid", Owner::Interface),
        ("nodes", "name", Owner::Node),
        ("blobs", "uuid", Owner::Blob),
        ("auth/namespaces", "ns", Owner::Namespace),
    ] {
        let set_item = move |State(app): State<Arc<App>>,
                             Extension(caller): Extension<Caller>,
                             Path((reference, key)): Path<(String, String)>,
                             RawQuery(query): RawQuery,
                             body: Bytes| async move {
            done(
                set(
                    &app,
                    &caller,
                    owner,
                    &reference,
                    &key,
                    query.as_deref(),
                    &body,
                )
                .await,
            )
        };
        router = router
            .route(
                &format!("/{plural}/{{{param}}}/metadata"),
                get(
                    move |State(app): State<Arc<App>>,
                          Extension(caller): Extension<Caller>,
                          Path(reference): Path<String>,
                          RawQuery(query): RawQuery| async move {
                        done(read(&app, &caller, owner, &reference, query.as_deref()).await)
                    },
                ),
            )
            .route(
                &format!("/{plural}/{{{param}}}/metadata/{{key}}"),
                axum::routing::put(set_item).post(set_item).delete(
                    move |State(app): State<Arc<App>>,
                          Extension(caller): Extension<Caller>,
                          Path((reference, key)): Path<(String, String)>,
                          RawQuery(query): RawQuery| async move {
                        done(remove(&app, &caller, owner, &reference, &key, query.as_deref()).await)
                    },
                ),
            );
    }
    router
}

/// The metadata items of `object` (`{}` when none or unreadable).
pub fn items(object: &Value) -> Map<String, Value> {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(METADATA_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<Map<String, Value>>(text).ok())
        .unwrap_or_default()
}

/// Stores `items` into `object`'s annotation (removing it when empty).
pub fn store_items(object: &mut Value, items: &Map<String, Value>) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    if let Some(annotations) = annotations.as_object_mut() {
        if items.is_empty() {
            annotations.remove(METADATA_ANNOTATION);
        } else {
            annotations.insert(
                METADATA_ANNOTATION.into(),
                json!(Value::Object(items.clone()).to_string()),
            );
        }
    }
}

/// A 400 for a key this API does not take (see the module contract).
pub fn check_key(key: &str) -> Result<(), Response> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            format!("metadata key must be 1 to {MAX_KEY} characters"),
        ));
    }
    if key == "affinity" {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            "metadata key affinity: affinity rules are not applied by this scheduler; omit it",
        ));
    }
    Ok(())
}

/// The object `reference` names, found as the kind's v0.8 GET finds it; with
/// `write`, as its writers may: an artifact in the caller's own namespace, a node or
/// blob by `system` only.
async fn find(
    app: &App,
    caller: &Caller,
    owner: Owner,
    reference: &str,
    query: Option<&str>,
    write: bool,
) -> Result<Value, Response> {
    if write && owner.system_written() && !caller.is_system() {
        return Err(sf_error(
            StatusCode::UNAUTHORIZED,
            format!(
                "only the system namespace may change the metadata of {}s",
                owner.kind().to_ascii_lowercase()
            ),
        ));
    }
    match owner {
        Owner::Instance | Owner::Network => {
            let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
            resolve(app, owner.kind(), ns, reference).await
        }
        Owner::Artifact if write => {
            let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
            resolve(app, "Artifact", ns, reference).await
        }
        Owner::Artifact => resolve_artifact_for_read(app, caller, reference, query).await,
        Owner::Interface => super::interfaces::find_interface(app, caller, reference, query).await,
        Owner::Node => node_named(app, reference).await,
        Owner::Blob => blob_named(app, caller, reference).await,
        Owner::Namespace => {
            let hidden = || {
                sf_error(
                    StatusCode::NOT_FOUND,
                    format!("namespace {reference} not found"),
                )
            };
            if !caller.is_system() && caller.namespace != reference {
                return Err(hidden());
            }
            match app.gateway.get("Namespace", "", reference).await {
                Ok(object) => Ok(object),
                Err(e) if e.code() == Some(tonic::Code::NotFound) => Err(hidden()),
                Err(e) => Err(super::error_response(
                    &crate::error::ApiError::from_gateway(&e, &Default::default()),
                )),
            }
        }
    }
}

async fn read(
    app: &App,
    caller: &Caller,
    owner: Owner,
    reference: &str,
    query: Option<&str>,
) -> Result<Response, Response> {
    let object = find(app, caller, owner, reference, query, false).await?;
    Ok(json_response(
        StatusCode::OK,
        &Value::Object(items(&object)),
    ))
}

/// Applies `change` to the items of the object and stores them, retrying on a
/// conflicting write; answers the items as stored.
async fn change(
    app: &App,
    caller: &Caller,
    owner: Owner,
    reference: &str,
    query: Option<&str>,
    change: impl Fn(&mut Map<String, Value>) -> Result<(), Response>,
) -> Result<Response, Response> {
    let object = read_change_write(
        app,
        caller,
        reference,
        || find(app, caller, owner, reference, query, true),
        |object| {
            let mut current = items(object);
            let before = current.clone();
            change(&mut current)?;
            if current == before {
                return Ok(false);
            }
            store_items(object, &current);
            Ok(true)
        },
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &Value::Object(items(&object)),
    ))
}

async fn set(
    app: &App,
    caller: &Caller,
    owner: Owner,
    reference: &str,
    key: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response, Response> {
    check_key(key)?;
    let body = body_json(body)?;
    let Some(value) = body.get("value").filter(|v| !v.is_null()).cloned() else {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            "value: required and not null (the body is {\"value\": ...})",
        ));
    };
    change(app, caller, owner, reference, query, |items| {
        items.insert(key.to_owned(), value.clone());
        Ok(())
    })
    .await
}

async fn remove(
    app: &App,
    caller: &Caller,
    owner: Owner,
    reference: &str,
    key: &str,
    query: Option<&str>,
) -> Result<Response, Response> {
    change(app, caller, owner, reference, query, |items| {
        items.remove(key).map(|_| ()).ok_or_else(|| {
            sf_error(
                StatusCode::NOT_FOUND,
                format!("metadata key {key} not found"),
            )
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_through_the_annotation() {
        let mut object = json!({"metadata": {"name": "x", "annotations": {"other": "kept"}}});
        assert!(items(&object).is_empty());
        let mut wanted = Map::new();
        wanted.insert("tags".into(), json!(["a", "b"]));
        wanted.insert("owner".into(), json!("ops"));
        store_items(&mut object, &wanted);
        assert_eq!(items(&object), wanted);
        assert_eq!(object["metadata"]["annotations"]["other"], "kept");
        store_items(&mut object, &Map::new());
        assert!(
            object["metadata"]["annotations"]
                .get(METADATA_ANNOTATION)
                .is_none()
        );
        assert_eq!(object["metadata"]["annotations"]["other"], "kept");
    }

    #[test]
    fn affinity_and_empty_keys_are_refused() {
        assert!(check_key("tags").is_ok());
        assert_eq!(
            check_key("affinity").err().map(|r| r.status()),
            Some(StatusCode::BAD_REQUEST)
        );
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY + 1)).is_err());
    }
}
