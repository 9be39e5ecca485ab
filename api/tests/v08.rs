//! The Shaken Fist v0.8 paths `/instances` and `/networks`.

mod common;

use common::{raw_on, start};
use serde_json::json;

#[tokio::test]
async fn instances_and_networks_on_v08_paths() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let b = env.tenant("tb", "key-b").await;

    let net = raw_on(
        &a,
        "POST",
        "/networks",
        &[],
        Some(json!({"name": "web", "netblock": "10.0.0.0/24", "provide_dhcp": true, "provide_nat": false})),
    )
    .await;
    assert_eq!(net.status, 200, "{}", net.text());
    let net = net.json();
    assert_eq!(net["namespace"], "ta");
    assert_eq!(net["provide_dhcp"], true);
    let net_uuid = net["uuid"].as_str().expect("uuid").to_string();

    let inst = raw_on(
        &a,
        "POST",
        "/instances",
        &[],
        Some(json!({
            "name": "web-1", "cpus": 1, "memory": 512,
            "disk": [{"size": 8, "bus": "virtio", "type": "disk"}],
            "network": [{"network_uuid": net_uuid, "model": "virtio"}],
            "ssh_key": null,
        })),
    )
    .await;
    assert_eq!(inst.status, 200, "{}", inst.text());
    let inst = inst.json();
    assert_eq!(inst["cpus"], 1);
    assert_eq!(inst["networks"][0]["network"], "web");
    let uuid = inst["uuid"].as_str().expect("uuid").to_string();

    // By name and by uuid; a bad spec is a v0.8 error.
    let by_name = raw_on(&a, "GET", "/instances/web-1", &[], None).await;
    assert_eq!(by_name.json()["uuid"], uuid.as_str());
    let by_uuid = raw_on(&a, "GET", &format!("/instances/{uuid}"), &[], None).await;
    assert_eq!(by_uuid.json()["name"], "web-1");
    let bad = raw_on(
        &a,
        "POST",
        "/instances",
        &[],
        Some(json!({"name": "x", "cpus": 0, "memory": 512, "disk": [{"size": 8}]})),
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.text());
    assert_eq!(bad.json()["status"], 422);
    assert!(bad.json()["error"].is_string());
    let list = raw_on(&a, "GET", "/instances", &[], None).await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    // Another tenant: nothing by name or uuid, foreign namespace 404.
    for path in [
        format!("/instances/{uuid}"),
        "/instances/web-1".to_string(),
        format!("/networks/{net_uuid}"),
    ] {
        let hidden = raw_on(&b, "GET", &path, &[], None).await;
        assert_eq!(hidden.status, 404, "{path}: {}", hidden.text());
        // Only {"error", "status"}: the reference sent, nothing of the object.
        assert_eq!(
            hidden.json().as_object().map(|o| o.len()),
            Some(2),
            "{}",
            hidden.text()
        );
        assert!(!hidden.text().contains("10.0.0.0"));
    }
    let foreign = raw_on(&b, "GET", "/instances?namespace=ta", &[], None).await;
    assert_eq!(foreign.status, 404);
    assert_eq!(
        raw_on(&b, "GET", "/instances", &[], None).await.json(),
        json!([])
    );
    let delete = raw_on(&b, "DELETE", &format!("/instances/{uuid}"), &[], None).await;
    assert_eq!(delete.status, 404);

    // System sees all without a namespace, and is scoped by one.
    let all = env.raw("GET", "/instances", &[], None).await.json();
    assert_eq!(all.as_array().map(Vec::len), Some(1));
    let in_b = env
        .raw("GET", "/instances?namespace=tb", &[], None)
        .await
        .json();
    assert_eq!(in_b, json!([]));

    let deleted = raw_on(&a, "DELETE", "/instances/web-1", &[], None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let gone = raw_on(&a, "DELETE", "/networks/web", &[], None).await;
    assert_eq!(gone.status, 202, "{}", gone.text());
}
