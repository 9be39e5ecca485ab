//! `POST namespaces/{ns}/plan`: what applying (or deleting) objects would do, answered
//! with the controllers' own pure plan functions (`sf-plan`), storing nothing.
//!
//! Contract (C3): body `{"objects": [<k8s objects>], "delete": false}` → 200
//! `{"plans": [{"kind", "name", "namespace", "change", "actions"}]}` in body order.
//! - Each object is scoped like a write of it (a tenant naming another namespace: 404;
//!   a kind it may not write: 403) and admitted like a create (schema, semantic
//!   validation, defaults: 422 names the object and field; nothing is stored).
//! - `change`: `create` (no stored object of that name), `update` (its spec differs
//!   from the stored one), `unchanged` (no actions: the change causes nothing), or
//!   `delete` (with `"delete": true`; a missing object is `unchanged`).
//!   Immutable-field changes are 422 as on PUT.
//! - `actions`: `sf_plan::plan_instance` / `plan_network` on the desired object (the
//!   stored object with the new spec; with a deletionTimestamp for delete) and an
//!   observation made as well as sf-api can: the operations labelled with the
//!   object's uid (none for a new object), every Node (scheduling candidates and the
//!   network node), the state of the instance's node, the networks it names. Not
//!   observed (so plans may differ from what the controllers later do): artifact
//!   readiness (reported as not ready), reserved addresses and network members.
//!   Other kinds plan no actions.

use std::sync::Arc;

use axum::response::Response;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sf_plan::PlanContext;
use sf_plan::instance::{InstanceObservation, plan_instance};
use sf_plan::network::{NetworkObservation, NetworkView, plan_network};
use sf_plan::ops::ObservedOperation;
use sf_plan::scheduler::{NodeView, Resources};
use sf_schema::node::NodeRole;
use sf_schema::{Instance, Network, Node};

use crate::actions::OWNER_LABEL;
use crate::admission::admit;
use crate::auth::Caller;
use crate::error::{ApiError, json_response};
use crate::gateway::{Part, Selection};
use crate::params::{FieldValidation, Params};
use crate::resources::{authorize, parse_path};
use crate::server::App;

/// The most objects one plan request may name.
pub const MAX_PLAN_OBJECTS: usize = 500;

#[derive(Deserialize)]
struct PlanRequest {
    #[serde(default)]
    objects: Vec<Value>,
    #[serde(default)]
    delete: bool,
}

/// Answers a plan request for namespace `ns` with the JSON `body`.
pub async fn plan(
    app: &Arc<App>,
    caller: &Caller,
    ns: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let request: PlanRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be {{\"objects\": [...], \"delete\": bool}}: {e}"
        ))
    })?;
    if request.objects.len() > MAX_PLAN_OBJECTS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PLAN_OBJECTS} objects per plan"
        )));
    }
    let ctx = PlanContext::new(chrono::Utc::now());
    let mut plans = Vec::with_capacity(request.objects.len());
    let mut nodes: Option<Vec<Value>> = None;
    for object in request.objects {
        plans.push(plan_one(app, caller, ns, object, request.delete, &ctx, &mut nodes).await?);
    }
    Ok(json_response(StatusCode::OK, &json!({"plans": plans})))
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

async fn plan_one(
    app: &Arc<App>,
    caller: &Caller,
    ns: &str,
    mut object: Value,
    delete: bool,
    ctx: &PlanContext,
    nodes: &mut Option<Vec<Value>>,
) -> Result<Value, ApiError> {
    let kind_name = text(&object, "/kind").to_string();
    let kind = app
        .kinds
        .by_kind(&kind_name)
        .cloned()
        .ok_or_else(|| ApiError::BadRequest(format!("unknown kind {kind_name:?}")))?;
    let name = text(&object, "/metadata/name").to_string();
    if name.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "a {kind_name} without metadata.name"
        )));
    }
    let object_ns = match text(&object, "/metadata/namespace") {
        "" => ns.to_string(),
        other => other.to_string(),
    };
    let path = if kind.namespaced {
        format!("namespaces/{object_ns}/{}/{name}", kind.plural)
    } else {
        format!("{}/{name}", kind.plural)
    };
    let mut target = parse_path(&app.kinds, &path)?;
    let method = if delete { Method::DELETE } else { Method::PUT };
    authorize(caller, &mut target, &method, None, &mut Params::default())?;
    if kind.namespaced && object_ns != ns {
        // A system caller naming another namespace than the path's: as on create.
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if kind.namespaced {
            meta.insert("namespace".into(), json!(object_ns));
        }
        meta.remove("resourceVersion");
    }
    let subject = target.subject();
    let admitted = admit(&kind, object, Part::Main, FieldValidation::Ignore)
        .map_err(|e| e.into_api(&subject))?;
    let stored = match app
        .gateway
        .get(&kind.kind, target.namespace_str(), &name)
        .await
    {
        Ok(stored) => Some(stored),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => None,
        Err(e) => return Err(ApiError::from_gateway(&e, &subject)),
    };
    let (change, desired) = match (&stored, delete) {
        (None, true) => ("unchanged", None),
        (None, false) => ("create", Some(admitted.object.clone())),
        (Some(stored), true) => {
            let mut desired = stored.clone();
            desired["metadata"]["deletionTimestamp"] = json!(ctx.now.to_rfc3339());
            ("delete", Some(desired))
        }
        (Some(stored), false) => {
            if matches!(kind.kind.as_str(), "Instance" | "Network") {
                let changes = sf_schema::validation::immutable_changes(
                    &kind.kind,
                    stored.get("spec").unwrap_or(&Value::Null),
                    admitted.object.get("spec").unwrap_or(&Value::Null),
                );
                if !changes.is_empty() {
                    return Err(ApiError::Invalid {
                        subject,
                        causes: changes
                            .into_iter()
                            .map(|c| crate::error::Cause {
                                reason: c.reason.cause_type().to_string(),
                                message: c.message,
                                field: c.field,
                            })
                            .collect(),
                    });
                }
            }
            let mut desired = stored.clone();
            desired["spec"] = admitted.object.get("spec").cloned().unwrap_or(Value::Null);
            let same = stored.get("spec") == desired.get("spec")
                && stored.pointer("/metadata/labels")
                    == admitted.object.pointer("/metadata/labels");
            // An unchanged object causes nothing: whatever the controllers still
            // have to do for it is not this change's doing (and sf-api cannot observe
            // all of it), so no actions are shown.
            if same {
                ("unchanged", None)
            } else {
                ("update", Some(desired))
            }
        }
    };
    let actions = match desired {
        Some(desired) => actions(app, &kind.kind, &desired, ctx, nodes)
            .await
            .map_err(|e| ApiError::from_gateway(&e, &subject))?,
        None => Vec::new(),
    };
    Ok(json!({
        "kind": kind.kind,
        "name": name,
        "namespace": if kind.namespaced { json!(object_ns) } else { Value::Null },
        "change": change,
        "actions": actions,
    }))
}

/// The operations labelled with `uid`, as the plan functions observe them.
async fn observed_operations(
    app: &App,
    namespace: &str,
    uid: &str,
) -> Result<Vec<ObservedOperation>, crate::gateway::GatewayError> {
    if uid.is_empty() {
        return Ok(Vec::new());
    }
    let (ops, _) = app
        .gateway
        .list(&Selection {
            kind: "ClusterOperation".into(),
            namespace: Some(namespace.to_string()),
            labels: format!("{OWNER_LABEL}={uid}"),
            ..Selection::default()
        })
        .await?;
    Ok(ops.iter().filter_map(observed_operation).collect())
}

fn observed_operation(op: &Value) -> Option<ObservedOperation> {
    Some(ObservedOperation {
        name: op.pointer("/metadata/name")?.as_str()?.to_string(),
        operation_type: serde_json::from_value(op.pointer("/spec/operationType")?.clone()).ok()?,
        state: op
            .pointer("/status/state")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default(),
        node: op
            .pointer("/spec/node")
            .and_then(Value::as_str)
            .map(str::to_string),
        payload: op.pointer("/spec/payload").cloned().unwrap_or(Value::Null),
        completed_at: op
            .pointer("/status/completedAt")
            .and_then(|s| serde_json::from_value(s.clone()).ok()),
        error: op
            .pointer("/status/errorReport/message")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

async fn all_nodes(
    app: &App,
    cache: &mut Option<Vec<Value>>,
) -> Result<Vec<Node>, crate::gateway::GatewayError> {
    if cache.is_none() {
        let (nodes, _) = app
            .gateway
            .list(&Selection {
                kind: "Node".into(),
                ..Selection::default()
            })
            .await?;
        *cache = Some(nodes);
    }
    Ok(cache
        .iter()
        .flatten()
        .filter_map(|n| serde_json::from_value(n.clone()).ok())
        .collect())
}

async fn actions(
    app: &App,
    kind: &str,
    desired: &Value,
    ctx: &PlanContext,
    nodes_cache: &mut Option<Vec<Value>>,
) -> Result<Vec<Value>, crate::gateway::GatewayError> {
    let namespace = text(desired, "/metadata/namespace").to_string();
    let uid = text(desired, "/metadata/uid").to_string();
    let actions = match kind {
        "Instance" => {
            let Ok(instance) = serde_json::from_value::<Instance>(desired.clone()) else {
                return Ok(Vec::new());
            };
            let nodes = all_nodes(app, nodes_cache).await?;
            let (placed, _) = app
                .gateway
                .list(&Selection {
                    kind: "Instance".into(),
                    ..Selection::default()
                })
                .await?;
            let placed: Vec<Instance> = placed
                .into_iter()
                .filter_map(|i| serde_json::from_value(i).ok())
                .collect();
            let node_name = instance.status.as_ref().and_then(|s| s.node.clone());
            let mut networks = Vec::new();
            for wanted in &instance.spec.networks {
                if let Ok(network) = app
                    .gateway
                    .get("Network", &namespace, &wanted.network)
                    .await
                    && let Ok(network) = serde_json::from_value::<Network>(network)
                {
                    networks.push(NetworkView::from_network(&network, Vec::new()));
                }
            }
            let observation = InstanceObservation {
                operations: observed_operations(app, &namespace, &uid).await?,
                node_state: nodes
                    .iter()
                    .find(|n| n.metadata.name == node_name)
                    .and_then(|n| n.status.as_ref().map(|s| s.state.clone())),
                nodes: nodes
                    .iter()
                    .map(|node| {
                        let on: Vec<&Instance> = placed
                            .iter()
                            .filter(|i| {
                                i.status.as_ref().and_then(|s| s.node.as_ref())
                                    == node.metadata.name.as_ref()
                            })
                            .collect();
                        let committed = on
                            .iter()
                            .map(|i| Resources::for_instance(&i.spec))
                            .fold(Resources::default(), Resources::plus);
                        NodeView::from_node(
                            node,
                            committed,
                            u32::try_from(on.len()).unwrap_or(u32::MAX),
                        )
                    })
                    .collect(),
                networks,
                ..InstanceObservation::default()
            };
            plan_instance(&instance, &observation, ctx)
        }
        "Network" => {
            let Ok(network) = serde_json::from_value::<Network>(desired.clone()) else {
                return Ok(Vec::new());
            };
            let nodes = all_nodes(app, nodes_cache).await?;
            let observation = NetworkObservation {
                operations: observed_operations(app, &namespace, &uid).await?,
                members: Vec::new(),
                network_node: nodes
                    .iter()
                    .find(|n| n.spec.roles.contains(&NodeRole::Network))
                    .and_then(|n| n.metadata.name.clone()),
            };
            plan_network(&network, &observation, ctx)
        }
        _ => Vec::new(),
    };
    Ok(actions
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .collect())
}
