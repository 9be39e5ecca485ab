//! Namespace and key management on Shaken Fist's v0.8 paths.
//!
//! Contract (errors are Shaken Fist's `{"error", "status"}`; keys travel in clear only
//! in request bodies and are hashed here with [`crate::auth::hash_key`] before they
//! reach sf-database; no answer ever carries a key or its hash):
//! - `POST /auth/namespaces {namespace, key_name?, key?}` (system only) creates the
//!   namespace and, when given, its first key → 200 the namespace record.
//! - `GET /auth/namespaces`: system sees every namespace, a tenant its own.
//!   `GET /auth/namespaces/{ns}`: the record `{"name", "key_names", "state"}`.
//! - `DELETE /auth/namespaces/{ns}` (system only): `system` is 403; a namespace that
//!   still holds objects is 409.
//! - `POST /auth/namespaces/{ns}/keys {key_name, key}` and
//!   `PUT /auth/namespaces/{ns}/keys/{key_name} {key}` store (or replace: the old
//!   tokens of that key stop working) a key; `GET .../keys` lists key names;
//!   `DELETE .../keys/{key_name}` removes one. The namespace's own callers and system
//!   may manage its keys.
//! - A tenant calling a system-only endpoint gets 401 (as Shaken Fist); a tenant naming
//!   another namespace gets 404.

// Helpers here fail with the finished error response, which handlers return as is.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, put};
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::{Caller, SYSTEM, hash_key, sf_error};
use crate::error::{ApiError, json_response};
use crate::gateway::{GatewayError, Selection};
use crate::server::App;

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/auth/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/auth/namespaces/{ns}",
            get(get_namespace).delete(delete_namespace),
        )
        .route("/auth/namespaces/{ns}/keys", get(list_keys).post(post_key))
        .route(
            "/auth/namespaces/{ns}/keys/{key_name}",
            put(put_key).delete(delete_key),
        )
}

fn not_system() -> Response {
    sf_error(
        StatusCode::UNAUTHORIZED,
        "only the system namespace may do this",
    )
}

fn no_namespace(ns: &str) -> Response {
    sf_error(StatusCode::NOT_FOUND, format!("namespace {ns} not found"))
}

/// Whether `caller` may see namespace `ns`.
fn visible(caller: &Caller, ns: &str) -> bool {
    caller.is_system() || caller.namespace == ns
}

fn gateway_error(e: &GatewayError, what: &str) -> Response {
    match e.code() {
        Some(tonic::Code::NotFound) => sf_error(StatusCode::NOT_FOUND, format!("{what} not found")),
        Some(tonic::Code::AlreadyExists) => {
            sf_error(StatusCode::CONFLICT, format!("{what} already exists"))
        }
        Some(tonic::Code::InvalidArgument) => sf_error(StatusCode::BAD_REQUEST, e.to_string()),
        Some(tonic::Code::Aborted | tonic::Code::FailedPrecondition) => {
            sf_error(StatusCode::CONFLICT, e.to_string())
        }
        _ => {
            let err = ApiError::from_gateway(e, &Default::default());
            sf_error(
                StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                err.to_string(),
            )
        }
    }
}

fn parse<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        sf_error(
            StatusCode::BAD_REQUEST,
            format!("the body must be {shape}: {e}"),
        )
    })
}

async fn record(app: &App, ns: &str) -> Result<Value, Response> {
    let keys = app
        .gateway
        .list_keys(ns)
        .await
        .map_err(|e| gateway_error(&e, &format!("namespace {ns}")))?;
    Ok(json!({
        "name": ns,
        "key_names": keys.iter().map(|k| k.key_name.as_str()).collect::<Vec<_>>(),
        "state": "created",
    }))
}

async fn hash(key: String) -> Result<String, Response> {
    tokio::task::spawn_blocking(move || hash_key(&key))
        .await
        .map_err(|e| sf_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| sf_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn store_key(app: &App, ns: &str, key_name: &str, key: String) -> Result<(), Response> {
    if key.is_empty() {
        return Err(sf_error(
            StatusCode::BAD_REQUEST,
            "the key must not be empty",
        ));
    }
    let hashed = hash(key).await?;
    let stored = app.gateway.put_key(ns, key_name, &hashed).await;
    app.auth.nonces.invalidate(ns);
    stored.map_err(|e| gateway_error(&e, &format!("namespace {ns}")))?;
    tracing::info!(namespace = ns, key_name, "key stored");
    Ok(())
}

#[derive(Deserialize)]
struct CreateNamespace {
    namespace: String,
    #[serde(default)]
    key_name: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

async fn create_namespace(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    if !caller.is_system() {
        return not_system();
    }
    let body: CreateNamespace = match parse(&body, "{\"namespace\", \"key_name\", \"key\"}") {
        Ok(body) => body,
        Err(response) => return response,
    };
    let ns = body.namespace;
    match app.gateway.create_namespace(&ns).await {
        Ok(_) => {}
        // Adding a key to an existing namespace is fine (Shaken Fist does the same).
        Err(e) if e.code() == Some(tonic::Code::AlreadyExists) && body.key.is_some() => {}
        Err(e) => return gateway_error(&e, &format!("namespace {ns}")),
    }
    if let (Some(key_name), Some(key)) = (body.key_name, body.key)
        && let Err(response) = store_key(&app, &ns, &key_name, key).await
    {
        return response;
    }
    match record(&app, &ns).await {
        Ok(record) => json_response(StatusCode::OK, &record),
        Err(response) => response,
    }
}

async fn list_namespaces(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let names: Vec<String> = if caller.is_system() {
        let selection = Selection {
            kind: "Namespace".into(),
            ..Selection::default()
        };
        match app.gateway.list(&selection).await {
            Ok((items, _)) => items
                .iter()
                .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
                .map(str::to_string)
                .collect(),
            Err(e) => return gateway_error(&e, "namespaces"),
        }
    } else {
        vec![caller.namespace.clone()]
    };
    let mut records = Vec::with_capacity(names.len());
    for name in names {
        match record(&app, &name).await {
            Ok(r) => records.push(r),
            // A Namespace object without a namespace row (made on the resource path).
            Err(_) => records.push(json!({"name": name, "key_names": [], "state": "created"})),
        }
    }
    json_response(StatusCode::OK, &records)
}

async fn get_namespace(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
) -> Response {
    if !visible(&caller, &ns) {
        return no_namespace(&ns);
    }
    match record(&app, &ns).await {
        Ok(record) => json_response(StatusCode::OK, &record),
        Err(response) => response,
    }
}

async fn delete_namespace(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
) -> Response {
    if !caller.is_system() {
        return not_system();
    }
    if ns == SYSTEM {
        return sf_error(
            StatusCode::FORBIDDEN,
            "the system namespace cannot be deleted",
        );
    }
    let result = app.gateway.delete_namespace(&ns).await;
    app.auth.nonces.invalidate(&ns);
    match result {
        Ok(()) => json_response(StatusCode::OK, &json!({"name": ns, "state": "deleted"})),
        Err(e) => gateway_error(&e, &format!("namespace {ns}")),
    }
}

async fn list_keys(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
) -> Response {
    if !visible(&caller, &ns) {
        return no_namespace(&ns);
    }
    match app.gateway.list_keys(&ns).await {
        Ok(keys) => json_response(
            StatusCode::OK,
            &keys.iter().map(|k| k.key_name.as_str()).collect::<Vec<_>>(),
        ),
        Err(e) => gateway_error(&e, &format!("namespace {ns}")),
    }
}

#[derive(Deserialize)]
struct PostKey {
    key_name: String,
    key: String,
}

async fn post_key(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    if !visible(&caller, &ns) {
        return no_namespace(&ns);
    }
    let body: PostKey = match parse(&body, "{\"key_name\", \"key\"}") {
        Ok(body) => body,
        Err(response) => return response,
    };
    match store_key(&app, &ns, &body.key_name, body.key).await {
        Ok(()) => json_response(
            StatusCode::OK,
            &json!({"namespace": ns, "key_name": body.key_name}),
        ),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct PutKey {
    key: String,
}

async fn put_key(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((ns, key_name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if !visible(&caller, &ns) {
        return no_namespace(&ns);
    }
    let body: PutKey = match parse(&body, "{\"key\"}") {
        Ok(body) => body,
        Err(response) => return response,
    };
    match store_key(&app, &ns, &key_name, body.key).await {
        Ok(()) => json_response(
            StatusCode::OK,
            &json!({"namespace": ns, "key_name": key_name}),
        ),
        Err(response) => response,
    }
}

async fn delete_key(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((ns, key_name)): Path<(String, String)>,
) -> Response {
    if !visible(&caller, &ns) {
        return no_namespace(&ns);
    }
    let result = app.gateway.delete_key(&ns, &key_name).await;
    app.auth.nonces.invalidate(&ns);
    match result {
        Ok(()) => json_response(
            StatusCode::OK,
            &json!({"namespace": ns, "key_name": key_name, "state": "deleted"}),
        ),
        Err(e) => gateway_error(&e, &format!("key {key_name} of namespace {ns}")),
    }
}
