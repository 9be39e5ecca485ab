//! The routes the CLI needs beyond plain resources (contract C3).
//!
//! Contract (paths under `/apis/shakenfist.io/v1alpha1/`; every one is scoped like the
//! object it names, see [`crate::resources::authorize`]):
//! - `POST namespaces/{ns}/instances/{name}/{reboot|screenshot|snapshot}` (body
//!   `{"hard": bool}` for reboot, optional) creates a ClusterOperation through the
//!   gateway's `CreateOperation` and answers 201 with it. Its name follows the
//!   intent-sequence rule of `sf_plan::ops`: `instance-<name>-<seq>-<short>` with
//!   `seq` one past the larger of the instance's `status.intentSeq` and the sequence
//!   of any operation labelled `shakenfist.io/owner=<uid>`; a name taken by a racing
//!   request is retried with the next sequence. It targets the instance's node
//!   (`status.node`; 409 when the instance is not placed) and carries the owner labels
//!   the controllers use. Tenants may ask this of their own instances. A snapshot's
//!   body is `{"all", "device", "maxVersions", "thin"}` ([`sf_schema::snapshot`]; a
//!   bad field is 422 Invalid naming it, nothing created); the operation's result
//!   lists the Artifacts (`<instance uid>-<device>`) and blobs it took.
//! - `GET blobs/{name}/data`: the bytes (gateway `GetBlobData` by the Blob's uid), with
//!   `Content-Type` from `spec.mimeType` (else the stored type, else
//!   `application/octet-stream`).
//! - `GET [namespaces/{ns}/]{plural}/{name}/events?limit=N&type=T`: the object's events
//!   in the v0.8 row shape `{event_uuid, event_type, timestamp, fqdn, duration,
//!   message, extra, request_id}`, newest first (`limit` 100 by default, capped at 1000,
//!   ≤ 0 is 100). Events are keyed by object type = the kind in lower case and object
//!   uuid = `metadata.uid`.
//! - `POST namespaces/{ns}/plan`: see [`crate::plan`].
//! - `GET /admin/resources` (system only, else 401 as Shaken Fist):
//!   `sf_plan::scheduler::resource_summary` over every Node and the instances placed
//!   on them, with the default scheduler settings.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use sf_plan::ops::{ObservedOperation, current_seq, operation_name, short_name};
use sf_plan::scheduler::{NodeView, Resources, resource_summary};
use sf_schema::operation::OperationType;
use sf_schema::snapshot::SnapshotRequest;
use sf_schema::{API_VERSION, Instance, Node};

use crate::auth::{Caller, sf_error};
use crate::error::{ApiError, Cause, json_response};
use crate::gateway::Selection;
use crate::params::Params;
use crate::resources::{Target, authorize, parse_path};
use crate::server::App;

/// The label naming the uid of the object an operation acts for.
pub const OWNER_LABEL: &str = "shakenfist.io/owner";
/// The label naming its kind.
pub const OWNER_KIND_LABEL: &str = "shakenfist.io/owner-kind";
/// The label naming its name.
pub const OWNER_NAME_LABEL: &str = "shakenfist.io/owner-name";

/// Tries at naming an operation when racing requests take the same sequence.
const NAME_ATTEMPTS: usize = 5;

/// The largest action body read.
const MAX_ACTION_BODY: usize = 64 * 1024;

/// What an action path asks for.
pub enum Action {
    /// Create an instance operation.
    Operation(OperationType),
    /// A blob's bytes.
    BlobData,
    /// An object's events.
    Events,
    /// A dry-run plan of objects in a namespace ([`crate::plan`]).
    Plan,
}

/// The object and action `rest` (the path after the group version) names, when it
/// is an action path; `None` for a plain resource path.
pub fn recognise(app: &App, method: &Method, rest: &str) -> Option<(Target, Action)> {
    let trimmed = rest.trim_end_matches('/');
    let (object_path, last) = trimmed.rsplit_once('/')?;
    let action = match (last, method) {
        ("reboot", &Method::POST) => Action::Operation(OperationType::InstanceReboot),
        ("screenshot", &Method::POST) => Action::Operation(OperationType::InstanceScreenshot),
        ("snapshot", &Method::POST) => Action::Operation(OperationType::InstanceSnapshot),
        ("data", &Method::GET) => Action::BlobData,
        ("events", &Method::GET) => Action::Events,
        ("plan", &Method::POST) => Action::Plan,
        _ => return None,
    };
    let target = parse_path(&app.kinds, object_path).ok()?;
    target.name.as_ref()?;
    if target.status {
        return None;
    }
    let wanted_kind = match &action {
        Action::Operation(_) => Some("Instance"),
        Action::BlobData => Some("Blob"),
        Action::Events => None,
        // `namespaces/{ns}/plan`: the path before it names the Namespace.
        Action::Plan => Some("Namespace"),
    };
    if wanted_kind.is_some_and(|k| k != target.kind.kind) {
        return None;
    }
    Some((target, action))
}

/// Answers an action [`recognise`] found.
pub async fn run(
    app: &Arc<App>,
    caller: &Caller,
    target: &mut Target,
    action: Action,
    query: Option<&str>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(query).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Reading the object is what every action needs: scope as a read.
    authorize(caller, target, &Method::GET, query, &mut params)?;
    let name = target.name.clone().unwrap_or_default();
    if let Action::Plan = action {
        let bytes = axum::body::to_bytes(body, crate::resources::MAX_BODY)
            .await
            .map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        return crate::plan::plan(app, caller, &name, &bytes).await;
    }
    let subject = target.subject();
    let object = app
        .gateway
        .get(&target.kind.kind, target.namespace_str(), &name)
        .await
        .map_err(|e| ApiError::from_gateway(&e, &subject))?;
    if let Some(owner) = &target.owner_namespace
        && object
            .pointer("/spec/ownerNamespace")
            .and_then(Value::as_str)
            != Some(owner)
    {
        return Err(ApiError::NotFound(subject));
    }
    match action {
        Action::Operation(operation_type) => {
            let bytes = axum::body::to_bytes(body, MAX_ACTION_BODY)
                .await
                .map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
            let payload: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?
            };
            instance_operation(app, target, &object, operation_type, payload).await
        }
        Action::BlobData => blob_data(app, &object).await,
        Action::Events => events(app, target, &object, query).await,
        Action::Plan => Err(ApiError::UnknownPath),
    }
}

async fn instance_operation(
    app: &App,
    target: &Target,
    object: &Value,
    operation_type: OperationType,
    payload: Value,
) -> Result<Response, ApiError> {
    let created = create_instance_operation(
        app,
        &target.subject(),
        target.namespace_str(),
        object,
        operation_type,
        payload,
    )
    .await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// Creates the ClusterOperation `operation_type` for the stored instance `object` in
/// `namespace` (see the module contract: payload checks, naming, 409 while unplaced)
/// and returns it.
pub(crate) async fn create_instance_operation(
    app: &App,
    subject: &crate::error::Subject,
    namespace: &str,
    object: &Value,
    operation_type: OperationType,
    payload: Value,
) -> Result<Value, ApiError> {
    let subject = subject.clone();
    let instance: Instance = serde_json::from_value(object.clone())
        .map_err(|e| ApiError::Internal(format!("stored instance does not decode: {e}")))?;
    let name = instance.metadata.name.clone().unwrap_or_default();
    let namespace = namespace.to_string();
    let uid = instance.metadata.uid.clone().unwrap_or_default();
    let status = instance.status.clone().unwrap_or_default();
    let payload = match operation_type {
        OperationType::InstanceReboot => json!({
            "hard": payload.get("hard").and_then(Value::as_bool).unwrap_or(false)
        }),
        OperationType::InstanceSnapshot => {
            let request = SnapshotRequest::parse(&payload).map_err(|errors| ApiError::Invalid {
                subject: subject.clone(),
                causes: errors.into_iter().map(Cause::from).collect(),
            })?;
            serde_json::to_value(&request).map_err(|e| ApiError::Internal(e.to_string()))?
        }
        _ if payload.is_object() => payload,
        _ => json!({}),
    };
    let Some(node) = status.node.clone() else {
        return Err(ApiError::Conflict {
            subject,
            message: "the instance is not placed on a node yet".into(),
        });
    };
    let selection = Selection {
        kind: "ClusterOperation".into(),
        namespace: Some(namespace.clone()),
        labels: format!("{OWNER_LABEL}={uid}"),
        ..Selection::default()
    };
    let (ops, _) = app
        .gateway
        .list(&selection)
        .await
        .map_err(|e| ApiError::from_gateway(&e, &subject))?;
    let observed: Vec<ObservedOperation> = ops
        .iter()
        .filter_map(|op| {
            let name = op.pointer("/metadata/name")?.as_str()?;
            Some(ObservedOperation::new(
                name,
                OperationType::Other(String::new()),
                Default::default(),
            ))
        })
        .collect();
    let mut seq = current_seq("Instance", &name, status.intent_seq, &observed) + 1;
    let short = short_name(&operation_type).to_string();
    for _ in 0..NAME_ATTEMPTS {
        let op_name = operation_name("Instance", &name, seq, &short);
        let operation = json!({
            "apiVersion": API_VERSION,
            "kind": "ClusterOperation",
            "metadata": {
                "name": op_name,
                "namespace": namespace,
                "labels": {
                    OWNER_LABEL: uid,
                    OWNER_KIND_LABEL: "Instance",
                    OWNER_NAME_LABEL: name,
                },
            },
            "spec": {
                "operationType": operation_type,
                "target": {"kind": "Instance", "name": name, "namespace": namespace, "uid": uid},
                "node": node,
                "payload": payload,
            },
        });
        match app.gateway.create_operation(&operation).await {
            Ok(created) => return Ok(created),
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => seq += 1,
            Err(e) => return Err(ApiError::from_gateway(&e, &subject)),
        }
    }
    Err(ApiError::Conflict {
        subject,
        message: "too many concurrent operations on this instance; retry".into(),
    })
}

async fn blob_data(app: &App, blob: &Value) -> Result<Response, ApiError> {
    let uid = blob
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let subject = crate::error::Subject {
        group: sf_schema::GROUP.into(),
        plural: "blobs".into(),
        kind: "Blob".into(),
        name: blob
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
    };
    let reply = app
        .gateway
        .get_blob_data(uid)
        .await
        .map_err(|e| ApiError::from_gateway(&e, &subject))?;
    Ok(blob_bytes_response(
        blob,
        &reply.mime_type,
        reply.data.into(),
    ))
}

/// 200 with a blob's bytes, typed by the Blob's `spec.mimeType`, else the type stored
/// with the bytes, else `application/octet-stream` (both faces answer blob data so).
pub fn blob_bytes_response(blob: &Value, stored_mime_type: &str, data: Bytes) -> Response {
    let mime = blob
        .pointer("/spec/mimeType")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .or((!stored_mime_type.is_empty()).then_some(stored_mime_type))
        .unwrap_or("application/octet-stream");
    let mut response = (StatusCode::OK, data).into_response();
    if let Ok(value) = HeaderValue::from_str(mime) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

async fn events(
    app: &App,
    target: &Target,
    object: &Value,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let mut limit = None;
    let mut event_type = String::new();
    if let Some(query) = query {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "limit" => {
                    limit = Some(v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("limit must be an integer, got {v:?}"))
                    })?);
                }
                "type" | "event_type" => event_type = v.into_owned(),
                _ => {}
            }
        }
    }
    let rows = event_rows(
        app,
        &target.kind.kind,
        &target.subject(),
        object,
        &event_type,
        limit,
    )
    .await?;
    Ok(json_response(StatusCode::OK, &rows))
}

/// The events of `object` (of `kind`) in the v0.8 row shape, newest first: events are
/// keyed by object type = the kind in lower case and object uuid = `metadata.uid`;
/// `limit` 100 when absent (sf-database caps it at 1000, ≤ 0 is 100).
pub(crate) async fn event_rows(
    app: &App,
    kind: &str,
    subject: &crate::error::Subject,
    object: &Value,
    event_type: &str,
    limit: Option<i32>,
) -> Result<Vec<Value>, ApiError> {
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let rows = app
        .gateway
        .query_events(
            &kind.to_ascii_lowercase(),
            uid,
            event_type,
            limit.unwrap_or(100),
        )
        .await
        .map_err(|e| ApiError::from_gateway(&e, subject))?;
    Ok(rows
        .into_iter()
        .map(|e| {
            let extra = if e.extra.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&e.extra).unwrap_or(Value::Null)
            };
            json!({
                "event_uuid": e.event_uuid,
                "event_type": e.event_type,
                "timestamp": e.timestamp,
                "fqdn": e.fqdn,
                "duration": e.duration,
                "message": e.message,
                "extra": extra,
                "request_id": e.request_id,
            })
        })
        .collect())
}

/// `GET /admin/resources` (system only).
pub async fn admin_resources(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
) -> Response {
    if !caller.is_some_and(|Extension(c)| c.is_system()) {
        return sf_error(
            StatusCode::UNAUTHORIZED,
            "only the system namespace may do this",
        );
    }
    let list = |kind: &str| Selection {
        kind: kind.into(),
        ..Selection::default()
    };
    let (nodes, instances) = match (
        app.gateway.list(&list("Node")).await,
        app.gateway.list(&list("Instance")).await,
    ) {
        (Ok((nodes, _)), Ok((instances, _))) => (nodes, instances),
        (Err(e), _) | (_, Err(e)) => {
            return ApiError::from_gateway(&e, &Default::default()).into_response();
        }
    };
    let instances: Vec<Instance> = instances
        .into_iter()
        .filter_map(|i| serde_json::from_value(i).ok())
        .collect();
    let views: Vec<NodeView> = nodes
        .into_iter()
        .filter_map(|n| serde_json::from_value::<Node>(n).ok())
        .map(|node| {
            let name = node.metadata.name.clone().unwrap_or_default();
            let placed: Vec<&Instance> = instances
                .iter()
                .filter(|i| {
                    i.status.as_ref().and_then(|s| s.node.as_deref()) == Some(name.as_str())
                })
                .collect();
            let committed = placed
                .iter()
                .map(|i| Resources::for_instance(&i.spec))
                .fold(Resources::default(), Resources::plus);
            NodeView::from_node(
                &node,
                committed,
                u32::try_from(placed.len()).unwrap_or(u32::MAX),
            )
        })
        .collect();
    json_response(
        StatusCode::OK,
        &resource_summary(&views, &app.settings.scheduler),
    )
}
