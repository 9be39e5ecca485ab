//! OpenAPI v3 for `kubectl apply` validation.
//!
//! Contract (research/k8s-api.md §2): `GET /openapi/v3` lists the one group version,
//! `{"paths": {"apis/shakenfist.io/v1alpha1": {"serverRelativeURL":
//! "/openapi/v3/apis/shakenfist.io/v1alpha1?hash=<H>"}}}`, H being a hash of the group
//! document. `GET /openapi/v3/apis/shakenfist.io/v1alpha1` is that document (OpenAPI
//! 3.0): per kind a component schema `io.shakenfist.v1alpha1.<Kind>` (the CRD's
//! `openAPIV3Schema` with `apiVersion`, `kind` and `metadata` added, and
//! `x-kubernetes-group-version-kind`), and the collection and object paths with their
//! verbs; every write carries the `fieldValidation` and `dryRun` query parameters and
//! `x-kubernetes-group-version-kind`, which kubectl checks before sending
//! `fieldValidation=Strict`. `/openapi/v2` stays 404.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde_json::{Map, Value, json};
use sf_schema::{GROUP, VERSION};

use crate::error::json_response;
use crate::kinds::Kinds;
use crate::server::App;

fn schema_name(kind: &str) -> String {
    format!("io.shakenfist.{VERSION}.{kind}")
}

fn gvk(kind: &str) -> Value {
    json!({"group": GROUP, "version": VERSION, "kind": kind})
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}, "uniqueItems": true})
}

fn operation(kind: &str, action: &str, id: &str, body: bool, list: bool) -> Value {
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(kind))});
    let ok = if list {
        json!({"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}})
    } else {
        json!({"description": "OK", "content": {"application/json": {"schema": reference}}})
    };
    let mut op = json!({
        "operationId": id,
        "responses": {"200": ok},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(kind),
    });
    if body {
        let media = if action == "patch" {
            json!({
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}},
            })
        } else {
            json!({"application/json": {"schema": reference}})
        };
        op["requestBody"] = json!({"content": media, "required": true});
        op["parameters"] = json!([
            query("dryRun", "All: validate without storing"),
            query(
                "fieldValidation",
                "Ignore, Warn or Strict: how unknown fields are treated"
            ),
            query("fieldManager", "accepted and ignored"),
        ]);
    }
    op
}

/// The group version document.
pub fn group_document(kinds: &Kinds) -> Value {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for k in kinds.iter() {
        let mut schema = k.schema.clone();
        if let Some(properties) = schema
            .as_object_mut()
            .map(|o| o.entry("properties").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            properties.insert("apiVersion".into(), json!({"type": "string"}));
            properties.insert("kind".into(), json!({"type": "string"}));
            properties.insert(
                "metadata".into(),
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        }
        schema["x-kubernetes-group-version-kind"] = json!([gvk(&k.kind)]);
        schemas.insert(schema_name(&k.kind), schema);

        let base = format!("/apis/{GROUP}/{VERSION}");
        let (collection, params) = if k.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", k.plural),
                vec![
                    json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}),
                ],
            )
        } else {
            (format!("{base}/{}", k.plural), Vec::new())
        };
        let mut object_params = params.clone();
        object_params.push(
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}),
        );
        let kind = &k.kind;
        paths.insert(
            collection.clone(),
            json!({
                "parameters": params,
                "get": operation(kind, "list", &format!("list{kind}"), false, true),
                "post": operation(kind, "post", &format!("create{kind}"), true, false),
            }),
        );
        let object = format!("{collection}/{{name}}");
        paths.insert(
            object.clone(),
            json!({
                "parameters": object_params,
                "get": operation(kind, "get", &format!("read{kind}"), false, false),
                "put": operation(kind, "put", &format!("replace{kind}"), true, false),
                "patch": operation(kind, "patch", &format!("patch{kind}"), true, false),
                "delete": operation(kind, "delete", &format!("delete{kind}"), false, false),
            }),
        );
        paths.insert(
            format!("{object}/status"),
            json!({
                "parameters": object_params,
                "get": operation(kind, "get", &format!("read{kind}Status"), false, false),
                "put": operation(kind, "put", &format!("replace{kind}Status"), true, false),
                "patch": operation(kind, "patch", &format!("patch{kind}Status"), true, false),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Shaken Fist", "version": VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// FNV-1a of the document's JSON, hex: changes whenever the document does.
fn hash(document: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serde_json::to_vec(document).unwrap_or_default() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// `GET /openapi/v3`.
pub async fn get_root(State(app): State<Arc<App>>) -> Response {
    let document = group_document(&app.kinds);
    let key = format!("apis/{GROUP}/{VERSION}");
    let url = format!("/openapi/v3/{key}?hash={}", hash(&document));
    json_response(
        StatusCode::OK,
        &json!({"paths": {key: {"serverRelativeURL": url}}}),
    )
}

/// `GET /openapi/v3/apis/shakenfist.io/v1alpha1`.
pub async fn get_group(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, &group_document(&app.kinds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_schema_and_patch_with_field_validation() {
        let kinds = Kinds::new().expect("kinds");
        let doc = group_document(&kinds);
        let instance = &doc["components"]["schemas"]["io.shakenfist.v1alpha1.Instance"];
        assert_eq!(
            instance["x-kubernetes-group-version-kind"][0]["kind"],
            "Instance"
        );
        assert!(instance["properties"]["spec"].is_object());
        assert!(instance["properties"]["metadata"].is_object());
        let patch = &doc["paths"]["/apis/shakenfist.io/v1alpha1/namespaces/{namespace}/instances/{name}"]
            ["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Instance");
        assert!(
            patch["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(doc["paths"]["/apis/shakenfist.io/v1alpha1/nodes/{name}"].is_object());
        assert_eq!(hash(&doc), hash(&group_document(&kinds)));
    }
}
