//! `meta.k8s.io/v1` Table output, for `kubectl get`.
//!
//! Contract: when a GET (list or object, not watch) carries an `Accept` header asking
//! for `as=Table` (with `g=meta.k8s.io`), the answer is a `Table`: column definitions
//! per kind (Instance: NAME, STATE, POWER, NODE, IPV4, AGE; Network: NAME, NETBLOCK,
//! VXID, STATE, AGE; every other kind: NAME, AGE) and one row per object with its cells
//! and the object's metadata as a `PartialObjectMetadata` (`includeObject=Metadata`,
//! apiserver's default). AGE is kubectl's short human duration (`45s`, `12m`, `5h`,
//! `3d`, `2y`). Watches are always served as plain objects.

use chrono::{DateTime, Utc};
use http::{HeaderMap, header};
use serde_json::{Value, json};

/// The cells of a row before AGE.
type Cells = fn(&Value) -> Vec<Value>;

/// Whether the client asked for a Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&"as=Table")
                && params
                    .iter()
                    .all(|p| !p.starts_with("g=") || *p == "g=meta.k8s.io")
        })
}

/// kubectl's short human duration.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 2 * 365 * 86_400 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (365 * 86_400)),
    }
}

fn column(name: &str, kind: &str, description: &str) -> Value {
    let mut c = json!({"name": name, "type": kind, "format": "", "description": description, "priority": 0});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

fn text(object: &Value, pointer: &str) -> Value {
    match object.pointer(pointer) {
        Some(Value::Null) | None => json!(""),
        Some(Value::String(s)) => json!(s),
        Some(other) => json!(other.to_string()),
    }
}

fn age(object: &Value, now: DateTime<Utc>) -> Value {
    let created = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    match created {
        Some(t) => json!(human_age((now - t.with_timezone(&Utc)).num_seconds())),
        None => json!("<unknown>"),
    }
}

/// The Table of `kind` for `objects`, at list revision `resource_version`.
pub fn table(kind: &str, objects: &[Value], resource_version: Option<String>) -> Value {
    let now = Utc::now();
    let name = column("Name", "string", "Name of the object");
    let age_column = column("Age", "date", "Time since creation");
    let (columns, cells): (Vec<Value>, Cells) = match kind {
        "Instance" => (
            vec![
                name,
                column("State", "string", "Lifecycle state"),
                column("Power", "string", "Observed power state"),
                column("Node", "string", "Node the instance is placed on"),
                column("IPv4", "string", "Address of the first interface"),
                age_column,
            ],
            |o| {
                vec![
                    text(o, "/metadata/name"),
                    text(o, "/status/state"),
                    text(o, "/status/powerState"),
                    text(o, "/status/node"),
                    text(o, "/status/interfaces/0/ipv4"),
                ]
            },
        ),
        "Network" => (
            vec![
                name,
                column("Netblock", "string", "IPv4 CIDR"),
                column("VXID", "integer", "VXLAN id"),
                column("State", "string", "Lifecycle state"),
                age_column,
            ],
            |o| {
                vec![
                    text(o, "/metadata/name"),
                    text(o, "/spec/netblock"),
                    o.pointer("/status/vxid").cloned().unwrap_or(json!(null)),
                    text(o, "/status/state"),
                ]
            },
        ),
        _ => (vec![name, age_column], |o| vec![text(o, "/metadata/name")]),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = cells(o);
            row.push(age(o, now));
            json!({
                "cells": row,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn kubectl_accept_header_asks_for_a_table() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(wants_table(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_table(&headers));
    }

    #[test]
    fn instance_rows_have_the_columns() {
        let object = json!({"metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "status": {"state": "created", "powerState": "running", "node": "hv-1",
                       "interfaces": [{"ipv4": "10.0.0.7"}]}});
        let t = table("Instance", &[object], Some("7".into()));
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 6);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-1");
        assert_eq!(cells[3], "hv-1");
        assert_eq!(cells[4], "10.0.0.7");
        assert!(cells[5].as_str().unwrap().ends_with('y'));
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web-1");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(7200), "2h");
    }
}
