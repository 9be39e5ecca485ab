//! sf-api as a daemon: discovery documents, health and readiness, sf-database
//! unavailability (503), watches surviving a draining gateway, graceful shutdown.

mod common;

use std::time::Duration;

use common::{instance_json, start, start_full};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResourceList, APIVersions,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use serde_json::Value;

const INSTANCES: &str = "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances";

#[tokio::test]
async fn discovery_documents_parse_as_kubernetes_types() {
    let env = start().await;
    let version: Info =
        serde_json::from_slice(&env.raw("GET", "/version", &[], None).await.body).expect("Info");
    assert_eq!(version.major, "1");
    let api: APIVersions =
        serde_json::from_slice(&env.raw("GET", "/api", &[], None).await.body).expect("APIVersions");
    assert_eq!(api.versions, vec!["v1".to_string()]);
    let core: APIResourceList =
        serde_json::from_slice(&env.raw("GET", "/api/v1", &[], None).await.body).expect("core");
    assert!(core.resources.is_empty());
    let groups: APIGroupList =
        serde_json::from_slice(&env.raw("GET", "/apis", &[], None).await.body).expect("groups");
    assert_eq!(groups.groups.len(), 1);
    assert_eq!(groups.groups[0].name, "shakenfist.io");
    let group: APIGroup =
        serde_json::from_slice(&env.raw("GET", "/apis/shakenfist.io", &[], None).await.body)
            .expect("group");
    assert_eq!(
        group.preferred_version.unwrap().group_version,
        "shakenfist.io/v1alpha1"
    );
    let answer = env
        .raw("GET", "/apis/shakenfist.io/v1alpha1", &[], None)
        .await;
    let raw: Value = answer.json();
    assert_eq!(raw["kind"], "APIResourceList");
    let resources: APIResourceList = serde_json::from_slice(&answer.body).expect("resources");
    let by_name = |name: &str| {
        resources
            .resources
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    let instances = by_name("instances");
    assert_eq!(instances.kind, "Instance");
    assert_eq!(instances.singular_name, "instance");
    assert!(instances.namespaced);
    assert_eq!(instances.short_names, Some(vec!["inst".to_string()]));
    for verb in [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ] {
        assert!(instances.verbs.contains(&verb.to_string()), "{verb}");
    }
    assert!(!by_name("nodes").namespaced);
    assert_eq!(
        by_name("instances/status").verbs,
        vec!["get", "patch", "update"]
    );
    for crd in sf_schema::all_crds() {
        by_name(&crd.spec.names.plural);
        by_name(&format!("{}/status", crd.spec.names.plural));
    }

    // kube's own discovery finds every kind through these documents.
    let discovery = kube::discovery::Discovery::new(env.client.clone())
        .run()
        .await
        .expect("kube discovery");
    let group = discovery
        .groups()
        .find(|g| g.name() == "shakenfist.io")
        .expect("shakenfist.io");
    let kinds: Vec<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    assert!(kinds.contains(&"Instance".to_string()), "{kinds:?}");
    assert_eq!(kinds.len(), sf_schema::all_crds().len());
}

#[tokio::test]
async fn readiness_follows_the_database_and_requests_get_503() {
    let env = start().await;
    assert_eq!(env.raw("GET", "/healthz", &[], None).await.status, 200);
    assert_eq!(env.raw("GET", "/readyz", &[], None).await.status, 200);

    for shutdown in &env.gateway_shutdowns {
        shutdown.trigger();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = env.raw("GET", "/readyz", &[], None).await;
        if answer.status == 503 {
            assert!(answer.text().contains("sf-database"), "{}", answer.text());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.raw("GET", "/healthz", &[], None).await.status, 200);
    let answer = env
        .raw("POST", INSTANCES, &[], Some(instance_json("web-1")))
        .await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let status = answer.json();
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert_eq!(status["code"], 503);
    assert_eq!(answer.headers["retry-after"], "1");
}

async fn open(env: &common::Env, query: &str) -> kube::client::Body {
    let request = http::Request::get(format!("{INSTANCES}?{query}"))
        .body(kube::client::Body::empty())
        .expect("request");
    let response = env.client.send(request).await.expect("watch");
    assert_eq!(response.status(), 200);
    response.into_body()
}

/// The next non-bookmark event of a watch body.
async fn next_change(body: &mut kube::client::Body, buffer: &mut Vec<u8>) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(i) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=i).collect();
            let event: Value = serde_json::from_slice(&line).expect("event");
            if event["type"] != "BOOKMARK" {
                return Some(event);
            }
            continue;
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
            _ => return None,
        }
    }
}

#[tokio::test]
async fn watches_survive_a_draining_gateway() {
    let env = start_full(&[], 2).await;
    let rv = env.raw("GET", INSTANCES, &[], None).await.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Consecutive calls go round-robin: one watch on each gateway.
    let query = format!("watch=true&timeoutSeconds=60&resourceVersion={rv}");
    let mut first = open(&env, &query).await;
    let mut second = open(&env, &query).await;
    let (mut b1, mut b2) = (Vec::new(), Vec::new());

    // The first gateway drains: its watch ends UNAVAILABLE and sf-api re-opens it on
    // the other, from the last revision, without the HTTP client noticing.
    env.gateway_shutdowns[0].trigger();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = env
        .raw("POST", INSTANCES, &[], Some(instance_json("web-1")))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    for (body, buffer) in [(&mut first, &mut b1), (&mut second, &mut b2)] {
        let event = next_change(body, buffer).await.expect("the create");
        assert_eq!(event["type"], "ADDED");
        assert_eq!(event["object"]["metadata"]["name"], "web-1");
    }
}

#[tokio::test]
async fn shutdown_ends_watches_and_stops() {
    let env = start().await;
    let mut watch = open(
        &env,
        "watch=true&timeoutSeconds=300&resourceVersion=0&sendInitialEvents=false",
    )
    .await;
    env.api_shutdown.trigger();
    // The open watch ends promptly...
    let mut buffer = Vec::new();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        next_change(&mut watch, &mut buffer),
    )
    .await
    .expect("the watch ends at shutdown");
    assert!(ended.is_none());
    // ...and the server returns.
    env.stop_api().await.expect("sf-api task");
}
