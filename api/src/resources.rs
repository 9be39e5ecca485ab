//! The Kubernetes-style resource endpoints of every kind.
//!
//! Contract (paths under `/apis/shakenfist.io/v1alpha1/`, see research/k8s-api.md):
//! - `namespaces/{ns}/{plural}[/{name}[/status]]` for namespaced kinds,
//!   `{plural}[/{name}[/status]]` for cluster-scoped kinds, and `{plural}` (GET only)
//!   to list or watch a namespaced kind across namespaces. Anything else is 404.
//! - Collection: GET lists (`{Kind}List`, `metadata.resourceVersion` always set, label
//!   and field selectors; paging is ignored, lists are complete) or watches
//!   (`watch=true`, see [`crate::watch`]); POST creates (201; the path's namespace wins,
//!   a different one in the body is 400; `generateName` honoured; status ignored).
//! - Object: GET; PUT replaces metadata and spec and needs `metadata.resourceVersion`
//!   (stale: 409 Conflict; status ignored); PATCH with `application/merge-patch+json`
//!   or `application/json-patch+json` (RFC 6902, `test` included) is a read-modify-write
//!   whose read resourceVersion is the compare-and-swap precondition, retried on
//!   conflict unless the patch itself names a resourceVersion; apply and strategic
//!   patches are 415; DELETE answers the object while finalizers hold it, else a
//!   `Status` Success.
//! - `/status`: GET, PUT and PATCH change `status` only and never bump generation.
//! - Namespaces: POST creates the namespace as `POST /auth/namespaces` does (its row,
//!   so keys can be added, and its object); DELETE removes it with its keys (a
//!   namespace with objects is 409), and `system` cannot be deleted (403).
//! - An object path's name may be the object's uid when no object has that name
//!   (GET, PUT, PATCH, DELETE, `/status`): it resolves only within the path's scope
//!   (its namespace; for a tenant also its visibility), so another namespace's uid is
//!   404 with no data.
//! - `dryRun=All` validates and answers without storing. Every written object passes
//!   [`crate::admission::admit`] first: invalid input stores nothing.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Value, json};
use sf_schema::addresses::{inet_aton, is_internal};
use sf_schema::{API_VERSION, GROUP};

use crate::admission::admit;
use crate::auth::Caller;
use crate::error::{ApiError, Cause, Subject, json_response, success_status};
use crate::gateway::{Part, Selection};
use crate::kinds::KindInfo;
use crate::params::Params;
use crate::server::App;

/// The path prefix of the group version.
pub const PREFIX: &str = "/apis/shakenfist.io/v1alpha1/";

/// The largest request body read (apiserver's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Attempts of a patch's read-modify-write when the client named no resourceVersion.
pub const PATCH_ATTEMPTS: usize = 5;

const JSON: &str = "application/json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// What a request path names.
#[derive(Debug, Clone)]
pub struct Target {
    /// The kind.
    pub kind: Arc<KindInfo>,
    /// The namespace in the path (`None`: cluster-scoped kind, or all namespaces).
    pub namespace: Option<String>,
    /// The object name, for object paths.
    pub name: Option<String>,
    /// The `/status` subresource.
    pub status: bool,
    /// The caller's namespace when it is a tenant (`None`: system, sees all).
    pub tenant: Option<String>,
    /// Only objects whose `spec.ownerNamespace` is this (a tenant's Blobs).
    pub owner_namespace: Option<String>,
}

impl Target {
    /// The namespace as stored ('' for cluster-scoped kinds and all-namespace paths).
    pub fn namespace_str(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }

    /// The error subject.
    pub fn subject(&self) -> Subject {
        Subject {
            group: GROUP.to_string(),
            plural: self.kind.plural.clone(),
            kind: self.kind.kind.clone(),
            name: self.name.clone().unwrap_or_default(),
        }
    }

    fn subject_named(&self, name: &str) -> Subject {
        Subject {
            name: name.to_string(),
            ..self.subject()
        }
    }
}

/// Parses the path after [`PREFIX`].
pub fn parse_path(kinds: &crate::kinds::Kinds, rest: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ApiError::UnknownPath);
    }
    let kind = |plural: &str, namespaced: bool| {
        kinds
            .by_plural(plural)
            .filter(|k| k.namespaced == namespaced)
            .cloned()
            .ok_or(ApiError::UnknownPath)
    };
    let owned = |s: &str| Some(s.to_string());
    match segments.as_slice() {
        [plural] => {
            let kind = kinds
                .by_plural(plural)
                .cloned()
                .ok_or(ApiError::UnknownPath)?;
            Ok(Target {
                kind,
                namespace: None,
                name: None,
                status: false,
                tenant: None,
                owner_namespace: None,
            })
        }
        [plural, name] => Ok(Target {
            kind: kind(plural, false)?,
            namespace: None,
            name: owned(name),
            status: false,
            tenant: None,
            owner_namespace: None,
        }),
        [plural, name, "status"] => Ok(Target {
            kind: kind(plural, false)?,
            namespace: None,
            name: owned(name),
            status: true,
            tenant: None,
            owner_namespace: None,
        }),
        ["namespaces", ns, plural] => Ok(Target {
            kind: kind(plural, true)?,
            namespace: owned(ns),
            name: None,
            status: false,
            tenant: None,
            owner_namespace: None,
        }),
        ["namespaces", ns, plural, name] => Ok(Target {
            kind: kind(plural, true)?,
            namespace: owned(ns),
            name: owned(name),
            status: false,
            tenant: None,
            owner_namespace: None,
        }),
        ["namespaces", ns, plural, name, "status"] => Ok(Target {
            kind: kind(plural, true)?,
            namespace: owned(ns),
            name: owned(name),
            status: true,
            tenant: None,
            owner_namespace: None,
        }),
        _ => Err(ApiError::UnknownPath),
    }
}

/// Kinds only the system (controllers, agents, sf-database) writes.
pub const SYSTEM_WRITTEN_KINDS: &[&str] =
    &["ClusterOperation", "Node", "IPAMLease", "Blob", "Namespace"];

/// Scopes `target` to what `caller` may see and refuses what it may not do
/// (DESIGN invariant 8, issue 4 items 6 and 9). System callers are unrestricted (a
/// namespace they name scopes them strictly to it). A tenant naming another namespace
/// in the path, in a `namespace` query parameter or in a `metadata.namespace` field
/// selector gets 404; its all-namespace lists and watches cover its own namespace;
/// of the cluster-scoped kinds it sees its own Namespace, every Node, and the Blobs
/// whose `spec.ownerNamespace` is its namespace; it may not write `/status` nor the
/// [`SYSTEM_WRITTEN_KINDS`] (403).
pub fn authorize(
    caller: &Caller,
    target: &mut Target,
    method: &Method,
    query: Option<&str>,
    params: &mut Params,
) -> Result<(), ApiError> {
    if caller.is_system() {
        return Ok(());
    }
    let own = caller.namespace.clone();
    let not_found = |target: &Target| ApiError::NotFound(target.subject());
    if let Some(query) = query {
        let foreign = form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "namespace" && !v.is_empty() && v != own.as_str());
        if foreign {
            return Err(not_found(target));
        }
    }
    for term in params.field_selector.split(',') {
        let term = term.trim();
        let named = term
            .strip_prefix("metadata.namespace==")
            .or_else(|| term.strip_prefix("metadata.namespace="));
        if named.is_some_and(|ns| ns.trim() != own) {
            return Err(not_found(target));
        }
    }
    if target.kind.namespaced {
        match &target.namespace {
            Some(ns) if *ns != own => return Err(not_found(target)),
            Some(_) => {}
            None => target.namespace = Some(own.clone()),
        }
    } else {
        match target.kind.kind.as_str() {
            "Namespace" => match &target.name {
                Some(name) if *name != own => return Err(not_found(target)),
                Some(_) => {}
                None => {
                    let only = format!("metadata.name={own}");
                    params.field_selector = if params.field_selector.trim().is_empty() {
                        only
                    } else {
                        format!("{},{only}", params.field_selector)
                    };
                }
            },
            "Blob" => target.owner_namespace = Some(own.clone()),
            _ => {}
        }
    }
    if *method != Method::GET {
        if target.status {
            return Err(ApiError::Forbidden(format!(
                "{} \"{}\" is forbidden: only the system namespace writes status",
                target.kind.plural,
                target.name.as_deref().unwrap_or_default()
            )));
        }
        if SYSTEM_WRITTEN_KINDS.contains(&target.kind.kind.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "{} is forbidden: only the system namespace writes {}",
                target.kind.plural, target.kind.plural
            )));
        }
    }
    target.tenant = Some(own);
    Ok(())
}

/// A tenant's body naming another namespace is 404 (as the path would be).
fn check_body_namespace(target: &Target, object: &Value) -> Result<(), ApiError> {
    if let Some(own) = &target.tenant
        && let Some(ns) = meta_str(object, "namespace")
        && !ns.is_empty()
        && ns != own
    {
        return Err(ApiError::NotFound(target.subject()));
    }
    Ok(())
}

/// What only the system namespace may ask of an Artifact (403 for a tenant):
/// `spec.shared` (every namespace would see it and may base disks on it), a
/// `file://` source (the agent would copy the hypervisor's own files into the
/// tenant's blob), and a source on an internal address ([`internal_host`]: the
/// hypervisor would fetch from the cloud's own networks for the tenant).
pub fn tenant_artifact_rules(object: &Value) -> Result<(), ApiError> {
    if object.pointer("/spec/shared").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::Forbidden(
            "artifacts.shakenfist.io is forbidden: spec.shared: only the system namespace \
             shares artifacts"
                .into(),
        ));
    }
    let source = object
        .pointer("/spec/sourceUrl")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim_start()
        .to_ascii_lowercase();
    if source.starts_with("file:") {
        return Err(ApiError::Forbidden(
            "artifacts.shakenfist.io is forbidden: spec.sourceUrl: file:// sources read the \
             hypervisor's own files; only the system namespace may use them"
                .into(),
        ));
    }
    if let Some(host) = internal_host(&source) {
        return Err(ApiError::Forbidden(format!(
            "artifacts.shakenfist.io is forbidden: spec.sourceUrl: {host} is a loopback, \
             link-local or private address, which the hypervisor would fetch from inside \
             the cloud; only the system namespace may use such sources"
        )));
    }
    Ok(())
}

/// The host of an `http(s)://` URL when it names the hypervisor itself or an
/// internal network: `localhost`, or an address `sf_schema::addresses::is_internal`
/// refuses (loopback, link-local, private, unique-local, CGNAT, reserved, multicast,
/// IPv6 forms carrying those, ...), written in any form the
/// fetcher's resolver accepts (`127.1`, `0x7f.1`, `2130706433`, `0177.0.0.1`, a
/// trailing dot, IPv4-mapped IPv6). A name that resolves to such an address, or a
/// redirect to one, cannot be seen here: the agent refuses those when it fetches
/// (sf-agent's `artifact` module), where an operator may also allow internal mirrors.
fn internal_host(url: &str) -> Option<String> {
    let uri = url.parse::<http::Uri>().ok()?;
    let raw = uri.host()?;
    let host = raw
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Some(raw.to_owned());
    }
    let internal = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => is_internal(ip),
        Err(_) => inet_aton(host).is_some_and(|v4| is_internal(v4.into())),
    };
    internal.then(|| raw.to_owned())
}

/// Whether an image reference names a file of the hypervisor itself (a path or a
/// `file://` URL), which the agent would open as it is.
fn names_host_file(reference: &str) -> bool {
    let reference = reference.trim_start();
    reference.starts_with('/') || reference.to_ascii_lowercase().starts_with("file:")
}

/// What only the system namespace may ask of an Instance (403 for a tenant): a disk
/// base or NVRAM template that names a hypervisor file (a path or `file://` URL) —
/// the guest would boot from, or read, the host's own files.
fn tenant_instance_rules(object: &Value) -> Result<(), ApiError> {
    let refused = |field: String| {
        ApiError::Forbidden(format!(
            "instances.shakenfist.io is forbidden: {field}: paths and file:// URLs name the \
             hypervisor's own files; only the system namespace may use them"
        ))
    };
    let disks = object
        .pointer("/spec/disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, disk) in disks.enumerate() {
        if disk
            .get("base")
            .and_then(Value::as_str)
            .is_some_and(names_host_file)
        {
            return Err(refused(format!("spec.disks[{i}].base")));
        }
    }
    if object
        .pointer("/spec/nvramTemplate")
        .and_then(Value::as_str)
        .is_some_and(names_host_file)
    {
        return Err(refused("spec.nvramTemplate".into()));
    }
    Ok(())
}

/// What a tenant may not write into an object of `kind` (403): see
/// [`tenant_artifact_rules`] and the Instance rules (no hypervisor files as disk
/// bases or NVRAM templates). The v0.8 paths apply the same rules.
pub fn tenant_rules(kind: &str, object: &Value) -> Result<(), ApiError> {
    match kind {
        "Artifact" => tenant_artifact_rules(object),
        "Instance" => tenant_instance_rules(object),
        _ => Ok(()),
    }
}

/// A tenant's write of `object` within what tenants may ask ([`tenant_rules`]).
fn check_tenant_rules(target: &Target, object: &Value) -> Result<(), ApiError> {
    if target.tenant.is_some() {
        tenant_rules(&target.kind.kind, object)?;
    }
    Ok(())
}

/// A new Network's netblock must not overlap the floating network's: its router would
/// answer for floating addresses on the network node's shared egress (the network
/// node refuses to plumb it; this says so at once, with the field). No floating
/// network yet: nothing to overlap.
pub async fn check_floating_overlap(
    app: &App,
    object: &Value,
    subject: &crate::error::Subject,
) -> Result<(), ApiError> {
    if object.get("kind").and_then(Value::as_str) != Some("Network") {
        return Ok(());
    }
    let Some(netblock) = object.pointer("/spec/netblock").and_then(Value::as_str) else {
        return Ok(());
    };
    let floating = match app
        .gateway
        .get_by_uid("Network", sf_schema::network::FLOATING_NETWORK_UID)
        .await
    {
        Ok(f) => f,
        Err(e) if e.code() == Some(tonic::Code::NotFound) => return Ok(()),
        Err(e) => return Err(ApiError::from_gateway(&e, subject)),
    };
    let parse = |text: &str| sf_schema::addresses::Cidr::parse(text).ok();
    let (Some(mine), Some(theirs)) = (
        parse(netblock),
        floating
            .pointer("/spec/netblock")
            .and_then(Value::as_str)
            .and_then(parse),
    ) else {
        return Ok(());
    };
    if mine.overlaps(&theirs) {
        return Err(ApiError::Invalid {
            subject: subject.clone(),
            causes: vec![crate::error::Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "spec.netblock: {netblock} overlaps the floating network {theirs}"
                ),
                field: "spec.netblock".into(),
            }],
        });
    }
    Ok(())
}

/// The finalizers the controllers own (`shakenfist.io/...`): their cleanup (the guest,
/// its addresses, its blobs) runs before the object goes.
const SYSTEM_FINALIZER_PREFIX: &str = "shakenfist.io/";

/// A tenant's update keeps the controllers' finalizers of the stored object: without
/// them a delete would remove the row at once and skip the cleanup (a guest left
/// running, addresses never released). Adding or removing its own finalizers is the
/// tenant's business.
fn keep_system_finalizers(target: &Target, stored: &Value, object: &mut Value) {
    if target.tenant.is_none() {
        return;
    }
    let held: Vec<Value> = stored
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|f| {
            f.as_str()
                .is_some_and(|f| f.starts_with(SYSTEM_FINALIZER_PREFIX))
        })
        .cloned()
        .collect();
    if held.is_empty() {
        return;
    }
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if !finalizers.is_array() {
        *finalizers = json!([]);
    }
    if let Some(list) = finalizers.as_array_mut() {
        for f in held {
            if !list.contains(&f) {
                list.push(f);
            }
        }
    }
}

/// Whether a tenant-scoped target may see `object` (a Blob it does not own: no).
fn visible(target: &Target, object: &Value) -> bool {
    match &target.owner_namespace {
        Some(owner) => {
            object
                .pointer("/spec/ownerNamespace")
                .and_then(Value::as_str)
                == Some(owner)
        }
        None => true,
    }
}

fn has_immutable_fields(kind: &str) -> bool {
    matches!(kind, "Instance" | "Network")
}

/// Changes to immutable fields (`spec` of Instance and Network) are 422.
fn check_immutable(target: &Target, stored: &Value, new: &Value) -> Result<(), ApiError> {
    let empty = json!({});
    let old_spec = stored.get("spec").unwrap_or(&empty);
    let new_spec = new.get("spec").unwrap_or(&empty);
    let changes = sf_schema::validation::immutable_changes(&target.kind.kind, old_spec, new_spec);
    if changes.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        subject: target.subject(),
        causes: changes
            .into_iter()
            .map(|c| Cause {
                reason: c.reason.cause_type().to_string(),
                message: c.message,
                field: c.field,
            })
            .collect(),
    })
}

/// The axum handler for everything under [`PREFIX`].
pub async fn handle(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(Extension(caller)) = caller else {
        return ApiError::Unauthorized("no caller".into()).into_response();
    };
    match dispatch(&app, &caller, &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    app: &Arc<App>,
    caller: &Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let rest = uri
        .path()
        .strip_prefix(PREFIX)
        .ok_or(ApiError::UnknownPath)?;
    if let Some((mut target, action)) = crate::actions::recognise(app, method, rest) {
        return crate::actions::run(app, caller, &mut target, action, uri.query(), body).await;
    }
    let mut target = parse_path(&app.kinds, rest)?;
    let mut params = Params::parse(uri.query()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // A namespaced kind's all-namespace path (a tenant's gets scoped to its namespace).
    let all_namespaces = target.kind.namespaced && target.namespace.is_none();
    authorize(caller, &mut target, method, uri.query(), &mut params)?;
    let target = target;
    let params = params;
    let part = if target.status {
        Part::Status
    } else {
        Part::Main
    };
    match (&target.name, *method == Method::GET) {
        (None, true) if params.watch => crate::watch::serve(app, &target, &params).await,
        (None, true) => list(app, &target, &params, crate::table::wants_table(headers)).await,
        (None, false) if *method == Method::POST => {
            if all_namespaces {
                return Err(ApiError::MethodNotAllowed);
            }
            create(app, &target, &params, headers, body).await
        }
        (Some(name), true) => get(app, &target, name, crate::table::wants_table(headers)).await,
        (Some(name), false) if *method == Method::PUT => {
            let name = resolve_name(app, &target, name).await?;
            replace(app, &target, &name, &params, headers, body, part).await
        }
        (Some(name), false) if *method == Method::PATCH => {
            let name = resolve_name(app, &target, name).await?;
            patch(app, &target, &name, &params, headers, body, part).await
        }
        (Some(name), false) if *method == Method::DELETE && !target.status => {
            let name = resolve_name(app, &target, name).await?;
            delete(app, &target, &name, &params, body).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The media type of a request body (`application/json` when absent).
fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| JSON.to_string())
}

async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map(|b| b.to_vec())
        .map_err(|e| {
            // http-body-util's LengthLimitError, possibly wrapped.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut too_large = false;
            while let Some(err) = source {
                too_large |= err.to_string().contains("length limit exceeded");
                source = err.source();
            }
            if too_large {
                ApiError::TooLarge(MAX_BODY)
            } else {
                ApiError::BadRequest(format!("reading the request body: {e}"))
            }
        })
}

/// Reads a JSON object body (create and replace).
async fn read_object(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let media = content_type(headers);
    if media != JSON && media != "*/*" {
        return Err(ApiError::UnsupportedMediaType(JSON.to_string()));
    }
    let bytes = read_body(body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn metadata_mut(object: &mut Value) -> Result<&mut serde_json::Map<String, Value>, ApiError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// Makes `object`'s apiVersion, kind, namespace (and name, when the URL has one) agree
/// with the request, filling in what is missing; a contradiction is 400.
fn fix_identity(object: &mut Value, target: &Target, name: Option<&str>) -> Result<(), ApiError> {
    let kind = &target.kind.kind;
    {
        let map = object
            .as_object_mut()
            .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
        match map.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("apiVersion".into(), json!(API_VERSION));
            }
            Some(v) if v == API_VERSION => {}
            Some(v) => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({v}) does not match the expected API version ({API_VERSION})"
                )));
            }
        }
        match map.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("kind".into(), json!(kind));
            }
            Some(k) if k == kind => {}
            Some(k) => {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({kind})"
                )));
            }
        }
    }
    let meta = metadata_mut(object)?;
    if target.kind.namespaced {
        let path_ns = target.namespace_str();
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), json!(path_ns));
            }
            Some(ns) if ns == path_ns => {}
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
        }
    } else {
        meta.remove("namespace");
    }
    if let Some(url_name) = name {
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("name".into(), json!(url_name));
            }
            Some(n) if n == url_name => {}
            Some(n) => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({url_name})"
                )));
            }
        }
    }
    Ok(())
}

/// A 200/201 object response, with `Warning` headers.
fn object_response(code: StatusCode, object: &Value, warnings: &[String]) -> Response {
    let mut response = json_response(code, object);
    for warning in warnings {
        let text = format!(
            "299 - \"{}\"",
            warning.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// The resourceVersion a write names, as a number.
fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion \"{rv}\"")))
}

fn require_rv(object: &Value, subject: &Subject) -> Result<u64, ApiError> {
    match meta_str(object, "resourceVersion") {
        Some(rv) if !rv.is_empty() => parse_rv(rv),
        _ => Err(ApiError::Invalid {
            subject: subject.clone(),
            causes: vec![Cause {
                reason: "FieldValueInvalid".into(),
                message:
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                        .into(),
                field: "metadata.resourceVersion".into(),
            }],
        }),
    }
}

/// A name from `generateName`: the prefix and five random characters.
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let random = uuid::Uuid::new_v4();
    let suffix: String = random
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!("{prefix}{suffix}")
}

async fn list(
    app: &App,
    target: &Target,
    params: &Params,
    as_table: bool,
) -> Result<Response, ApiError> {
    let selection = selection(target, params)?;
    if !as_table
        && let Some((raw, revision)) = app
            .gateway
            .list_raw(&selection)
            .await
            .map_err(|e| ApiError::from_gateway(&e, &target.subject()))?
    {
        let body = raw_list(&target.kind.list_kind(), &raw, revision);
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
            body,
        )
            .into_response());
    }
    let (items, revision) = app
        .gateway
        .list(&selection)
        .await
        .map_err(|e| ApiError::from_gateway(&e, &target.subject()))?;
    if as_table {
        let table = crate::table::table(&target.kind.kind, &items, Some(revision.to_string()));
        return Ok(json_response(StatusCode::OK, &table));
    }
    let list = json!({
        "apiVersion": API_VERSION,
        "kind": target.kind.list_kind(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// A `{Kind}List` made of the gateway's object bytes without re-parsing them (they are
/// JSON objects: sf-database serialises them).
fn raw_list(list_kind: &str, items: &[Vec<u8>], revision: u64) -> Vec<u8> {
    let size: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 160);
    body.extend_from_slice(
        format!(
            "{{\"apiVersion\":\"{API_VERSION}\",\"kind\":\"{list_kind}\",\"metadata\":{{\"resourceVersion\":\"{revision}\"}},\"items\":["
        )
        .as_bytes(),
    );
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    body
}

/// The gateway selection of a list or watch; selectors are checked here (400).
pub fn selection(target: &Target, params: &Params) -> Result<Selection, ApiError> {
    sf_schema::selector::LabelSelector::parse(&params.label_selector)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    sf_schema::selector::FieldSelector::parse(&params.field_selector)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Selection {
        kind: target.kind.kind.clone(),
        namespace: target.namespace.clone(),
        labels: params.label_selector.clone(),
        fields: params.field_selector.clone(),
        owner_namespace: target.owner_namespace.clone(),
    })
}

/// Whether `name` has the shape of a uid (a hyphenated UUID).
fn uid_shaped(name: &str) -> bool {
    name.len() == 36 && uuid::Uuid::try_parse(name).is_ok()
}

/// The object whose uid `uid` is, when it is of the target's kind, in the target's
/// namespace (none for cluster-scoped kinds) and visible to the caller; `None`
/// otherwise, so that another namespace's uid is a plain 404 (DESIGN invariant 8).
async fn by_uid(app: &App, target: &Target, uid: &str) -> Result<Option<Value>, ApiError> {
    if !uid_shaped(uid) {
        return Ok(None);
    }
    match app.gateway.get_by_uid(&target.kind.kind, uid).await {
        Ok(object)
            if meta_str(&object, "namespace").unwrap_or_default() == target.namespace_str()
                && visible(target, &object) =>
        {
            Ok(Some(object))
        }
        Ok(_) => Ok(None),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(None),
        Err(e) => Err(ApiError::from_gateway(&e, &target.subject())),
    }
}

/// The stored name an object path's `name` stands for: itself when an object has that
/// name, else (for a uid) the name of the object with that uid in the target's scope;
/// otherwise itself, and the operation answers 404.
async fn resolve_name(app: &App, target: &Target, name: &str) -> Result<String, ApiError> {
    if !uid_shaped(name) {
        return Ok(name.to_string());
    }
    match app
        .gateway
        .get(&target.kind.kind, target.namespace_str(), name)
        .await
    {
        Ok(_) => Ok(name.to_string()),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(by_uid(app, target, name)
            .await?
            .and_then(|o| meta_str(&o, "name").map(str::to_string))
            .unwrap_or_else(|| name.to_string())),
        Err(e) => Err(ApiError::from_gateway(&e, &target.subject())),
    }
}

async fn get(app: &App, target: &Target, name: &str, as_table: bool) -> Result<Response, ApiError> {
    // The common case passes sf-database's bytes through (no parse, no re-encode);
    // Tables and tenants' Blobs (visibility by owner) need the parsed object.
    if !as_table && target.owner_namespace.is_none() {
        match app
            .gateway
            .get_raw(&target.kind.kind, target.namespace_str(), name)
            .await
        {
            Ok(bytes) => {
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
                    bytes,
                )
                    .into_response());
            }
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                let object = by_uid(app, target, name)
                    .await?
                    .ok_or_else(|| ApiError::from_gateway(&e, &target.subject()))?;
                return Ok(json_response(StatusCode::OK, &object));
            }
            Err(e) => return Err(ApiError::from_gateway(&e, &target.subject())),
        }
    }
    let object = match app
        .gateway
        .get(&target.kind.kind, target.namespace_str(), name)
        .await
    {
        Ok(object) => object,
        Err(e) if e.code() == Some(tonic::Code::NotFound) => by_uid(app, target, name)
            .await?
            .ok_or_else(|| ApiError::from_gateway(&e, &target.subject()))?,
        Err(e) => return Err(ApiError::from_gateway(&e, &target.subject())),
    };
    if !visible(target, &object) {
        return Err(ApiError::NotFound(target.subject()));
    }
    if as_table {
        let table = crate::table::table(&target.kind.kind, std::slice::from_ref(&object), None);
        return Ok(json_response(StatusCode::OK, &table));
    }
    Ok(json_response(StatusCode::OK, &object))
}

async fn create(
    app: &App,
    target: &Target,
    params: &Params,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut object = read_object(headers, body).await?;
    check_body_namespace(target, &object)?;
    check_tenant_rules(target, &object)?;
    fix_identity(&mut object, target, None)?;
    let meta = metadata_mut(&mut object)?;
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        && let Some(prefix) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
    {
        let name = generate_name(prefix);
        meta.insert("name".into(), json!(name));
    }
    meta.remove("resourceVersion");
    let name = meta_str(&object, "name").unwrap_or_default().to_string();
    let subject = target.subject_named(&name);
    let admitted = admit(&target.kind, object, Part::Main, params.field_validation)
        .map_err(|e| e.into_api(&subject))?;
    check_floating_overlap(app, &admitted.object, &subject).await?;
    let mut created = if target.kind.kind == "Namespace" && !params.dry_run {
        create_namespace(app, &admitted.object, &subject).await?
    } else {
        app.gateway
            .create(&admitted.object, params.dry_run)
            .await
            .map_err(|e| ApiError::from_create(&e, &subject, target.namespace.as_deref()))?
    };
    if params.dry_run
        && let Some(meta) = created.get_mut("metadata").and_then(Value::as_object_mut)
        && meta.get("resourceVersion").and_then(Value::as_str) == Some("0")
    {
        meta.remove("resourceVersion");
    }
    Ok(object_response(
        StatusCode::CREATED,
        &created,
        &admitted.warnings,
    ))
}

/// Creates a Namespace the way `POST /auth/namespaces` does (its row, so that keys can
/// be added, and its object), then writes the labels, annotations and spec asked for.
async fn create_namespace(app: &App, wanted: &Value, subject: &Subject) -> Result<Value, ApiError> {
    let name = meta_str(wanted, "name").unwrap_or_default();
    let created = app
        .gateway
        .create_namespace(name)
        .await
        .map_err(|e| ApiError::from_gateway(&e, subject))?;
    let mut desired = created.clone();
    for field in ["labels", "annotations", "finalizers"] {
        if let Some(value) = wanted.pointer(&format!("/metadata/{field}")) {
            desired["metadata"][field] = value.clone();
        }
    }
    if let Some(spec) = wanted.get("spec") {
        desired["spec"] = spec.clone();
    }
    if desired == created {
        return Ok(created);
    }
    let rv = meta_str(&created, "resourceVersion")
        .map(parse_rv)
        .transpose()?;
    app.gateway
        .update(&desired, rv, Part::Main, false)
        .await
        .map_err(|e| ApiError::from_gateway(&e, subject))
}

async fn replace(
    app: &App,
    target: &Target,
    name: &str,
    params: &Params,
    headers: &HeaderMap,
    body: Body,
    part: Part,
) -> Result<Response, ApiError> {
    let subject = target.subject();
    let mut object = read_object(headers, body).await?;
    check_body_namespace(target, &object)?;
    check_tenant_rules(target, &object)?;
    fix_identity(&mut object, target, Some(name))?;
    let rv = require_rv(&object, &subject)?;
    let candidate = match part {
        Part::Main => {
            if has_immutable_fields(&target.kind.kind) || target.tenant.is_some() {
                let stored = app
                    .gateway
                    .get(&target.kind.kind, target.namespace_str(), name)
                    .await
                    .map_err(|e| ApiError::from_gateway(&e, &subject))?;
                check_immutable(target, &stored, &object)?;
                keep_system_finalizers(target, &stored, &mut object);
            }
            object
        }
        Part::Status => {
            // Validate the status against the stored object; the gateway takes only
            // status from it, under the caller's resourceVersion.
            let mut stored = app
                .gateway
                .get(&target.kind.kind, target.namespace_str(), name)
                .await
                .map_err(|e| ApiError::from_gateway(&e, &subject))?;
            if let Some(uid) = meta_str(&object, "uid").filter(|u| !u.is_empty())
                && meta_str(&stored, "uid") != Some(uid)
            {
                return Err(ApiError::Conflict {
                    subject,
                    message: format!("Precondition failed: UID in precondition: {uid}"),
                });
            }
            if let Some(map) = stored.as_object_mut() {
                match object.get("status") {
                    Some(status) if !status.is_null() => {
                        map.insert("status".into(), status.clone());
                    }
                    _ => {
                        map.remove("status");
                    }
                }
            }
            stored
        }
    };
    let admitted = admit(&target.kind, candidate, part, params.field_validation)
        .map_err(|e| e.into_api(&subject))?;
    let updated = app
        .gateway
        .update(&admitted.object, Some(rv), part, params.dry_run)
        .await
        .map_err(|e| ApiError::from_gateway(&e, &subject))?;
    Ok(object_response(
        StatusCode::OK,
        &updated,
        &admitted.warnings,
    ))
}

/// A parsed patch body.
enum PatchBody {
    Merge(Value),
    Json(json_patch::Patch),
}

impl PatchBody {
    fn apply(&self, object: &mut Value) -> Result<(), ApiError> {
        match self {
            Self::Merge(patch) => {
                json_patch::merge(object, patch);
                Ok(())
            }
            Self::Json(patch) => json_patch::patch_unsafe(object, patch)
                .map_err(|e| ApiError::PatchFailed(e.to_string())),
        }
    }
}

async fn patch(
    app: &App,
    target: &Target,
    name: &str,
    params: &Params,
    headers: &HeaderMap,
    body: Body,
    part: Part,
) -> Result<Response, ApiError> {
    let subject = target.subject();
    let media = content_type(headers);
    let accepted = format!("{JSON_PATCH}, {MERGE_PATCH}");
    if media != MERGE_PATCH && media != JSON_PATCH {
        return Err(ApiError::UnsupportedMediaType(accepted));
    }
    let bytes = read_body(body).await?;
    let patch = if media == MERGE_PATCH {
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the merge patch is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "a merge patch of an object must be a JSON object".into(),
            ));
        }
        PatchBody::Merge(value)
    } else {
        PatchBody::Json(serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::BadRequest(format!("the JSON patch is not a valid RFC 6902 patch: {e}"))
        })?)
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = app
            .gateway
            .get(&target.kind.kind, target.namespace_str(), name)
            .await
            .map_err(|e| ApiError::from_gateway(&e, &subject))?;
        let current_rv = meta_str(&current, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        let mut patched = current.clone();
        patch.apply(&mut patched)?;
        if !patched.is_object() {
            return Err(ApiError::BadRequest(
                "the patch replaced the whole object".into(),
            ));
        }
        check_body_namespace(target, &patched)?;
        check_tenant_rules(target, &patched)?;
        if part == Part::Main {
            check_immutable(target, &current, &patched)?;
            keep_system_finalizers(target, &current, &mut patched);
        }
        for (field, pointer) in [
            ("apiVersion", "/apiVersion"),
            ("kind", "/kind"),
            ("metadata.name", "/metadata/name"),
            ("metadata.namespace", "/metadata/namespace"),
        ] {
            if patched.pointer(pointer) != current.pointer(pointer) {
                return Err(ApiError::BadRequest(format!(
                    "a patch cannot change {field}"
                )));
            }
        }
        let (rv, explicit) = match meta_str(&patched, "resourceVersion") {
            Some(requested) if !requested.is_empty() && requested != current_rv => {
                (parse_rv(requested)?, true)
            }
            _ => (parse_rv(&current_rv)?, false),
        };
        let admitted = admit(&target.kind, patched, part, params.field_validation)
            .map_err(|e| e.into_api(&subject))?;
        match app
            .gateway
            .update(&admitted.object, Some(rv), part, params.dry_run)
            .await
        {
            Ok(updated) => {
                return Ok(object_response(
                    StatusCode::OK,
                    &updated,
                    &admitted.warnings,
                ));
            }
            Err(e)
                if e.code() == Some(tonic::Code::Aborted)
                    && !explicit
                    && attempt < PATCH_ATTEMPTS =>
            {
                tracing::debug!(attempt, "patch lost its compare-and-swap; retrying");
            }
            Err(e) => return Err(ApiError::from_gateway(&e, &subject)),
        }
    }
}

async fn delete(
    app: &App,
    target: &Target,
    name: &str,
    params: &Params,
    body: Body,
) -> Result<Response, ApiError> {
    let subject = target.subject();
    let bytes = read_body(body).await?;
    let options: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::BadRequest(format!("the DeleteOptions are not valid JSON: {e}"))
        })?
    };
    let rv = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(parse_rv)
        .transpose()?;
    let uid = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let dry_run = params.dry_run
        || options
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    if target.kind.kind == "Namespace" {
        if name == crate::auth::SYSTEM {
            return Err(ApiError::Forbidden(
                "the system namespace cannot be deleted".into(),
            ));
        }
        if !dry_run && rv.is_none() && uid.is_none() {
            // The namespace row, its keys and its Namespace object go together.
            let uid = app
                .gateway
                .get(&target.kind.kind, "", name)
                .await
                .ok()
                .and_then(|o| meta_str(&o, "uid").map(str::to_string));
            let result = app.gateway.delete_namespace(name).await;
            app.auth.nonces.invalidate(name);
            result.map_err(|e| ApiError::from_gateway(&e, &subject))?;
            return Ok(json_response(
                StatusCode::OK,
                &success_status(&subject, uid),
            ));
        }
    }
    let deleted = app
        .gateway
        .delete(
            &target.kind.kind,
            target.namespace_str(),
            name,
            rv,
            uid,
            dry_run,
        )
        .await
        .map_err(|e| ApiError::from_gateway(&e, &subject))?;
    if deleted.removed {
        let uid = meta_str(&deleted.object, "uid").map(str::to_string);
        Ok(json_response(
            StatusCode::OK,
            &success_status(&subject, uid),
        ))
    } else {
        Ok(json_response(StatusCode::OK, &deleted.object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_sources_are_named() {
        for url in [
            "http://127.0.0.1:8080/x.qcow2",
            "https://LOCALHOST/x",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://100.64.0.1/x",
            "http://0.0.0.0/x",
            "http://2130706433/x",
            "http://0x7f.1/x",
            "http://127.1/x",
            "http://0177.0.0.1/x",
            "http://127.000.000.001/x",
            "http://0/x",
            "http://localhost./x",
            "http://[::ffff:0.0.0.0]/x",
            "http://[::ffff:100.64.0.1]/x",
            "http://user@127.0.0.1/x",
            "HTTPS://[::ffff:7f00:1]/x",
        ] {
            assert!(internal_host(url).is_some(), "{url}");
        }
        for url in [
            "https://images.example/x.qcow2",
            "http://203.0.113.7/x",
            "sf://instance/u/vda",
        ] {
            assert_eq!(internal_host(url), None, "{url}");
        }
    }
    use crate::kinds::Kinds;

    #[test]
    fn paths_resolve_by_scope() {
        let kinds = Kinds::new().unwrap();
        let t = parse_path(&kinds, "namespaces/demo/instances/web-1/status").unwrap();
        assert_eq!(t.kind.kind, "Instance");
        assert_eq!(t.namespace.as_deref(), Some("demo"));
        assert_eq!(t.name.as_deref(), Some("web-1"));
        assert!(t.status);
        let t = parse_path(&kinds, "instances").unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = parse_path(&kinds, "namespaces/demo").unwrap();
        assert_eq!(t.kind.kind, "Namespace");
        assert_eq!(t.name.as_deref(), Some("demo"));
        let t = parse_path(&kinds, "namespaces/demo/status").unwrap();
        assert_eq!(t.kind.kind, "Namespace");
        assert!(t.status);
        let t = parse_path(&kinds, "nodes/hv-1").unwrap();
        assert_eq!(t.kind.kind, "Node");
        // A namespaced kind has no cluster object path, and vice versa.
        assert!(parse_path(&kinds, "instances/web-1").is_err());
        assert!(parse_path(&kinds, "namespaces/demo/nodes").is_err());
        assert!(parse_path(&kinds, "pods").is_err());
        assert!(parse_path(&kinds, "namespaces//instances").is_err());
        assert!(parse_path(&kinds, "namespaces/demo/instances/a/b").is_err());
    }

    #[test]
    fn identity_is_filled_and_contradictions_refused() {
        let kinds = Kinds::new().unwrap();
        let target = parse_path(&kinds, "namespaces/demo/instances").unwrap();
        let mut object = json!({"metadata": {"name": "a"}, "spec": {}});
        fix_identity(&mut object, &target, None).unwrap();
        assert_eq!(object["apiVersion"], API_VERSION);
        assert_eq!(object["kind"], "Instance");
        assert_eq!(object["metadata"]["namespace"], "demo");
        let mut other_ns = json!({"metadata": {"name": "a", "namespace": "other"}});
        assert!(matches!(
            fix_identity(&mut other_ns, &target, None),
            Err(ApiError::BadRequest(_))
        ));
        let mut other_kind = json!({"kind": "Network", "metadata": {"name": "a"}});
        assert!(fix_identity(&mut other_kind, &target, None).is_err());
        let mut other_name = json!({"metadata": {"name": "b"}});
        assert!(fix_identity(&mut other_name, &target, Some("a")).is_err());
        let cluster = parse_path(&kinds, "nodes").unwrap();
        let mut node = json!({"metadata": {"name": "hv-1", "namespace": "x"}});
        fix_identity(&mut node, &cluster, None).unwrap();
        assert!(node["metadata"].get("namespace").is_none());
    }

    #[test]
    fn raw_lists_are_json() {
        let body = raw_list(
            "InstanceList",
            &[br#"{"a":1}"#.to_vec(), br#"{"b":2}"#.to_vec()],
            7,
        );
        let list: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(list["kind"], "InstanceList");
        assert_eq!(list["apiVersion"], API_VERSION);
        assert_eq!(list["metadata"]["resourceVersion"], "7");
        assert_eq!(list["items"], json!([{"a": 1}, {"b": 2}]));
        let empty: Value = serde_json::from_slice(&raw_list("InstanceList", &[], 3)).expect("JSON");
        assert_eq!(empty["items"], json!([]));
    }

    #[test]
    fn generated_names_keep_the_prefix() {
        let name = generate_name("web-");
        assert!(name.starts_with("web-"));
        assert_eq!(name.len(), 9);
        assert!(sf_schema::validation::is_dns_label(&name));
    }
}
