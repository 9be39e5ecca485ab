//! v0.8 artifacts.
//!
//! Contract (`shared/research/shakenfist.md` §1):
//! - `GET /artifacts` lists the caller's namespace plus the shared artifacts of
//!   `system` (`spec.shared`); `GET /artifacts/{ref}`, `GET /artifacts/{ref}/versions`
//!   and `GET /artifacts/{ref}/events` resolve the caller's namespace first, then those
//!   shared ones (a `namespace` parameter scopes to it alone).
//! - Writes resolve in the caller's scope (a tenant's own namespace: a shared artifact
//!   of `system` is not a tenant's; `system`: every namespace, or the one named): `DELETE /artifacts/{ref}`; `POST /artifacts/{ref}/versions
//!   {max_versions}` sets `spec.maxVersions` (an integer ≥ 1, else 400; the artifact
//!   controller prunes the oldest versions at once); `POST
//!   /artifacts/{ref}/{share|unshare}` sets `spec.shared`, `system` only (403) and only
//!   on artifacts of the `system` namespace (a tenant's image never becomes every
//!   namespace's disk base). A tenant's `POST /artifacts` with a `file://` URL is 403
//!   (`crate::resources::tenant_rules`).
//!   Each is an update with the read resourceVersion as precondition, retried on a
//!   conflicting write; nothing is written when nothing changes.
//! - `DELETE /artifacts {confirm: true, namespace}` starts deleting every artifact of
//!   the namespace, as `DELETE /instances` does.
//! - `DELETE /artifacts/{ref}/versions/{index}` is 501: one version cannot be dropped
//!   here (the artifact controller owns the versions and their blobs' reference
//!   counts); lowering `max_versions` drops the oldest.
//! - `POST /artifacts {url, namespace, shared, name}` creates an image Artifact with
//!   `sourceUrl` (the artifact controller fetches it; the same URL in the same
//!   namespace answers the existing one; sharing is for `system` only, 403).
//!   Artifacts are answered with v0.8's `blobs` (version index → blob `uuid`, `size`),
//!   `index` and `blob_uuid` of the newest version.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::{Map, Value, json};
use sf_schema::API_VERSION;

use super::{
    body_json, create_object, done, error_response, events_of, find, flatten, list_kind,
    lookup_namespace, not_deleting, not_found, param, read_change_write, resolve, sf_error,
};
use crate::auth::Caller;
use crate::error::{ApiError, json_response};
use crate::server::App;

/// The namespace whose shared artifacts every namespace sees.
const SHARED_NAMESPACE: &str = crate::auth::SYSTEM;

fn is_shared(artifact: &Value) -> bool {
    artifact.pointer("/spec/shared").and_then(Value::as_bool) == Some(true)
}

/// The shared artifacts of the system namespace (none for the system caller, which
/// sees them in its own namespace anyway).
async fn shared_artifacts(app: &App, caller: &Caller) -> Result<Vec<Value>, Response> {
    if caller.is_system() {
        return Ok(Vec::new());
    }
    let mut items = list_kind(app, "Artifact", Some(SHARED_NAMESPACE.into())).await?;
    items.retain(is_shared);
    Ok(items)
}

/// The v0.8 shape of an Artifact: the flat fields plus `blobs` (version index → blob
/// uuid, size, created, instances), and `index` and `blob_uuid` of the newest version.
pub fn flatten_artifact(object: &Value) -> Value {
    let mut flat = flatten(object);
    let versions = object
        .pointer("/status/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut blobs = Map::new();
    let mut newest: Option<(u64, Value)> = None;
    for version in &versions {
        let Some(index) = version.get("index").and_then(Value::as_u64) else {
            continue;
        };
        let blob = version.get("blob").cloned().unwrap_or(Value::Null);
        blobs.insert(
            index.to_string(),
            json!({
                "uuid": blob,
                "size": version.get("size").cloned().unwrap_or(json!(0)),
                "created": version.get("created").cloned().unwrap_or(Value::Null),
                "instances": [],
            }),
        );
        if newest.as_ref().is_none_or(|(i, _)| index > *i) {
            newest = Some((index, blob));
        }
    }
    flat["blobs"] = Value::Object(blobs);
    let (index, blob) = newest.unwrap_or((0, Value::Null));
    flat["index"] = json!(index);
    flat["blob_uuid"] = blob;
    flat
}

/// Reads an artifact: the caller's namespace first (uuid or unique name), then the
/// shared artifacts of `system`; a namespace named in the query scopes the lookup to
/// it alone (as v0.8's `from_db_by_ref_visible_to`).
pub(super) async fn resolve_artifact_for_read(
    app: &App,
    caller: &Caller,
    reference: &str,
    query: Option<&str>,
) -> Result<Value, Response> {
    let named = param(query, &Value::Null, "namespace").filter(|n| !n.is_empty());
    let explicit = named.is_some();
    let ns = lookup_namespace(caller, named)?;
    let items = list_kind(app, "Artifact", ns).await?;
    if let Some(found) = find(&items, "Artifact", reference)? {
        return Ok(found);
    }
    if !explicit {
        let shared = shared_artifacts(app, caller).await?;
        if let Some(found) = find(&shared, "Artifact", reference)? {
            return Ok(found);
        }
    }
    Err(not_found("Artifact", reference))
}

/// A DNS label naming the artifact of `url`: its readable part and a hash of the
/// whole URL (two URLs never share a name).
pub fn artifact_name(url: &str) -> String {
    use sha2::Digest;
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut readable = String::with_capacity(without_scheme.len());
    for c in without_scheme.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            readable.push(c);
        } else if !readable.ends_with('-') {
            readable.push('-');
        }
    }
    let readable: String = readable.trim_matches('-').chars().take(50).collect();
    let readable = readable.trim_end_matches('-');
    let digest = sha2::Sha256::digest(url.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    if readable.is_empty() {
        format!("artifact-{hash}")
    } else {
        format!("{readable}-{hash}")
    }
}

pub(super) async fn list_artifacts(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let named = param(query.as_deref(), &Value::Null, "namespace").filter(|n| !n.is_empty());
        let explicit = named.is_some();
        let ns = lookup_namespace(&caller, named)?;
        let mut items = list_kind(&app, "Artifact", ns).await?;
        if !explicit {
            items.extend(shared_artifacts(&app, &caller).await?);
        }
        Ok(json_response(
            StatusCode::OK,
            &items.iter().map(flatten_artifact).collect::<Vec<_>>(),
        ))
    };
    done(run.await)
}

pub(super) async fn get_artifact(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    done(
        resolve_artifact_for_read(&app, &caller, &reference, query.as_deref())
            .await
            .map(|a| json_response(StatusCode::OK, &flatten_artifact(&a))),
    )
}

/// `GET /artifacts/{ref}/versions`: oldest first, each the version's blob (as v0.8's
/// blob view, when the Blob exists) with its `index`.
pub(super) async fn artifact_versions(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let artifact =
            resolve_artifact_for_read(&app, &caller, &reference, query.as_deref()).await?;
        let out = version_views(&app, &caller, &artifact).await?;
        Ok(json_response(StatusCode::OK, &out))
    };
    done(run.await)
}

/// The versions of `artifact`, oldest first, each its blob's v0.8 view (`uuid`; state
/// `missing` when the Blob is not stored) with the version's `index`, `size` and
/// `created`. A Blob `caller` may not see (a tenant reading a shared artifact of
/// `system`, whose Blobs `system` owns) shows only what the version itself records,
/// with the artifact's state.
pub(super) async fn version_views(
    app: &App,
    caller: &Caller,
    artifact: &Value,
) -> Result<Vec<Value>, Response> {
    {
        let versions = artifact
            .pointer("/status/versions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::with_capacity(versions.len());
        for version in versions {
            let blob = version
                .get("blob")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut view = match app.gateway.get("Blob", "", &blob).await {
                Ok(object)
                    if caller.is_system()
                        || object
                            .pointer("/spec/ownerNamespace")
                            .and_then(Value::as_str)
                            == Some(caller.namespace.as_str()) =>
                {
                    super::inventory::blob_view(&object)
                }
                // Not the caller's to see: no owner, checksums, holders or reference
                // count of another namespace's Blob.
                Ok(_) => json!({
                    "uuid": blob,
                    "state": artifact.pointer("/status/state").cloned().unwrap_or(Value::Null),
                }),
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    json!({"uuid": blob, "state": "missing"})
                }
                Err(e) => {
                    return Err(error_response(&ApiError::from_gateway(
                        &e,
                        &Default::default(),
                    )));
                }
            };
            view["index"] = version.get("index").cloned().unwrap_or(Value::Null);
            view["size"] = version.get("size").cloned().unwrap_or(json!(0));
            view["created"] = version.get("created").cloned().unwrap_or(Value::Null);
            out.push(view);
        }
        Ok(out)
    }
}

/// `DELETE /artifacts/{ref}`: names resolve in the caller's own namespace only (a
/// shared artifact of `system` is not the tenant's to delete: 404).
pub(super) async fn delete_artifact(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let ns = lookup_namespace(&caller, param(query.as_deref(), &Value::Null, "namespace"))?;
        let object = resolve(&app, "Artifact", ns, &reference).await?;
        let deleted = super::delete_found(&app, "Artifact", &object)
            .await
            .map_err(|e| error_response(&ApiError::from_gateway(&e, &Default::default())))?;
        let mut flat = flatten_artifact(&deleted.object);
        if deleted.removed {
            flat["state"] = json!("deleted");
        }
        Ok(json_response(StatusCode::OK, &flat))
    };
    done(run.await)
}

/// `POST /artifacts {url, namespace, shared, name}`: an image Artifact with `sourceUrl`
/// (the artifact controller fetches it). The same URL again in the same namespace
/// answers the existing artifact. Only `system` shares (403 otherwise); `name` is
/// optional (default: derived from the URL, see [`artifact_name`]).
pub(super) async fn create_artifact(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = body_json(&body)?;
        let url = param(query.as_deref(), &body, "url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| sf_error(StatusCode::BAD_REQUEST, "missing url"))?;
        let shared = match body.get("shared") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Null) | None => param(query.as_deref(), &Value::Null, "shared")
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")),
            Some(other) => {
                return Err(sf_error(
                    StatusCode::BAD_REQUEST,
                    format!("shared must be true or false, not {other}"),
                ));
            }
        };
        if shared && !caller.is_system() {
            return Err(sf_error(
                StatusCode::FORBIDDEN,
                "only the system namespace may share artifacts",
            ));
        }
        if !caller.is_system() {
            crate::resources::tenant_rules("Artifact", &json!({"spec": {"sourceUrl": url}}))
                .map_err(|e| error_response(&e))?;
        }
        let ns = lookup_namespace(&caller, param(query.as_deref(), &body, "namespace"))?
            .unwrap_or_else(|| caller.namespace.clone());
        let existing = list_kind(&app, "Artifact", Some(ns.clone())).await?;
        if let Some(found) = existing.iter().find(|a| {
            a.pointer("/spec/sourceUrl").and_then(Value::as_str) == Some(url.as_str())
                && a.pointer("/spec/artifactType")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "image")
        }) {
            return Ok(json_response(StatusCode::OK, &flatten_artifact(found)));
        }
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map_or_else(|| artifact_name(&url), str::to_string);
        let object = json!({
            "apiVersion": API_VERSION,
            "kind": "Artifact",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"sourceUrl": url, "artifactType": "image", "shared": shared},
        });
        let created = create_object(&app, object, &ns).await?;
        Ok(json_response(StatusCode::OK, &flatten_artifact(&created)))
    };
    done(run.await)
}

/// `GET /artifacts/{ref}/events`: the artifact as `GET /artifacts/{ref}` finds it.
pub(super) async fn artifact_events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = body_json(&body)?;
        let artifact =
            resolve_artifact_for_read(&app, &caller, &reference, query.as_deref()).await?;
        events_of(&app, "Artifact", &artifact, query.as_deref(), &body).await
    };
    done(run.await)
}

/// Sets `field` of the spec of the artifact `reference` names in `ns` (`None`: every
/// namespace) to `value`, retried on a conflicting write; answers the artifact.
async fn set_spec_field(
    app: &App,
    caller: &Caller,
    ns: Option<String>,
    reference: &str,
    field: &str,
    value: Value,
) -> Result<Response, Response> {
    let what = format!("artifact {reference}");
    let object = read_change_write(
        app,
        caller,
        &what,
        || resolve(app, "Artifact", ns.clone(), reference),
        |object| {
            not_deleting(object, &what)?;
            if object.pointer(&format!("/spec/{field}")) == Some(&value) {
                return Ok(false);
            }
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert(field.into(), value.clone());
            }
            Ok(true)
        },
    )
    .await?;
    Ok(json_response(StatusCode::OK, &flatten_artifact(&object)))
}

/// `POST /artifacts/{ref}/versions {max_versions}`.
pub(super) async fn set_max_versions(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = body_json(&body)?;
        let given = body
            .get("max_versions")
            .cloned()
            .or_else(|| param(query.as_deref(), &Value::Null, "max_versions").map(Value::String));
        let max = match &given {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
        .ok_or_else(|| {
            sf_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "max_versions: must be an integer of at least 1, got {}",
                    given.map_or_else(|| "nothing".to_owned(), |v| v.to_string())
                ),
            )
        })?;
        let ns = lookup_namespace(&caller, param(query.as_deref(), &Value::Null, "namespace"))?;
        set_spec_field(&app, &caller, ns, &reference, "maxVersions", json!(max)).await
    };
    done(run.await)
}

/// `POST /artifacts/{ref}/{share|unshare}` (system only); another action is 404.
pub(super) async fn artifact_action(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((reference, action)): Path<(String, String)>,
) -> Response {
    let run = async {
        let shared = match action.as_str() {
            "share" => true,
            "unshare" => false,
            other => {
                return Err(sf_error(
                    StatusCode::NOT_FOUND,
                    format!("artifacts have no action {other}"),
                ));
            }
        };
        if !caller.is_system() {
            return Err(sf_error(
                StatusCode::FORBIDDEN,
                "only the system namespace may share or unshare artifacts",
            ));
        }
        // Only system's own artifacts are shared: a tenant's image never becomes
        // every namespace's disk base.
        set_spec_field(
            &app,
            &caller,
            Some(SHARED_NAMESPACE.to_owned()),
            &reference,
            "shared",
            json!(shared),
        )
        .await
    };
    done(run.await)
}

/// `DELETE /artifacts/{ref}/versions/{index}`: not supported (see the module contract);
/// an artifact the caller cannot see is 404 first.
pub(super) async fn delete_version(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((reference, index)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let ns = match lookup_namespace(&caller, param(query.as_deref(), &Value::Null, "namespace")) {
        Ok(ns) => ns,
        Err(response) => return response,
    };
    if let Err(missing) = resolve(&app, "Artifact", ns, &reference).await {
        return missing;
    }
    sf_error(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "deleting version {index} of artifact {reference} is not supported: the artifact \
             controller keeps the versions; lower max_versions (POST \
             /artifacts/{reference}/versions) to drop the oldest"
        ),
    )
}

/// `DELETE /artifacts {confirm: true, namespace}`.
pub(super) async fn delete_artifacts(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    done(super::remove_all(&app, &caller, "Artifact", query.as_deref(), &body).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_flatten_with_their_versions() {
        let flat = flatten_artifact(&json!({
            "metadata": {"name": "deb", "namespace": "demo", "uid": "u-2"},
            "spec": {"sourceUrl": "https://x/deb.qcow2", "artifactType": "image", "shared": false, "maxVersions": 3},
            "status": {"state": "created", "versions": [
                {"index": 1, "blob": "b-1", "size": 10, "created": "2026-01-01T00:00:00Z"},
                {"index": 2, "blob": "b-2", "size": 20, "created": "2026-01-02T00:00:00Z"},
            ]},
        }));
        assert_eq!(flat["source_url"], "https://x/deb.qcow2");
        assert_eq!(flat["artifact_type"], "image");
        assert_eq!(flat["max_versions"], 3);
        assert_eq!(flat["index"], 2);
        assert_eq!(flat["blob_uuid"], "b-2");
        assert_eq!(flat["blobs"]["1"]["uuid"], "b-1");
        assert_eq!(flat["blobs"]["2"]["size"], 20);
    }

    #[test]
    fn artifact_names_are_dns_labels_unique_per_url() {
        let a = artifact_name("https://images.example.com/Debian-12_generic.qcow2");
        assert!(
            a.starts_with("images-example-com-debian-12-generic-qcow2-"),
            "{a}"
        );
        assert!(sf_schema::validation::is_dns_label(&a), "{a}");
        let long = artifact_name(&format!("https://x/{}", "a".repeat(300)));
        assert!(sf_schema::validation::is_dns_label(&long), "{long}");
        assert_ne!(
            artifact_name("https://x/a.img"),
            artifact_name("https://x/a-img")
        );
        assert!(sf_schema::validation::is_dns_label(&artifact_name("://")));
    }
}
