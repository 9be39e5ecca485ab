//! The Shaken Fist v0.8 paths `/instances` and `/networks`.

mod common;

use common::{raw_on, start};
use serde_json::json;

/// A Blob `blob` owned by `ns`, recorded as version 1 (`size` bytes) of artifact
/// `artifact` in `ns`, as the artifact controller records a fetch.
async fn recorded_version(env: &common::Env, ns: &str, artifact: &str, blob: &str, size: u64) {
    let made = env
        .raw(
            "POST",
            "/apis/shakenfist.io/v1alpha1/blobs",
            &[],
            Some(json!({"metadata": {"name": blob}, "spec": {"ownerNamespace": ns}})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let status = env
        .raw(
            "PATCH",
            &format!("/apis/shakenfist.io/v1alpha1/namespaces/{ns}/artifacts/{artifact}/status"),
            &[("content-type", "application/merge-patch+json")],
            Some(json!({"status": {"state": "created", "versions": [
                {"index": 1, "blob": blob, "size": size, "created": "2026-01-01T00:00:00Z"},
            ]}})),
        )
        .await;
    assert_eq!(status.status, 200, "{}", status.text());
}

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
    // Creating in a namespace that does not exist: 404 naming it, nothing stored.
    let nowhere = env
        .raw(
            "POST",
            "/networks",
            &[],
            Some(json!({"name": "x", "netblock": "10.1.0.0/24", "namespace": "nowhere"})),
        )
        .await;
    assert_eq!(nowhere.status, 404, "{}", nowhere.text());
    assert_eq!(nowhere.json()["status"], 404);
    assert!(
        nowhere.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"nowhere\" not found")),
        "{}",
        nowhere.text()
    );
    assert_eq!(
        env.raw("GET", "/networks?namespace=nowhere", &[], None)
            .await
            .json(),
        json!([])
    );

    // Routed addresses: each POST asks for one more; nothing routed yet is 404.
    for want in [1, 2] {
        let routed = raw_on(&a, "POST", "/networks/web/route", &[], None).await;
        assert_eq!(routed.status, 202, "{}", routed.text());
        assert_eq!(routed.json()["routed_address_count"], want);
    }
    let hidden = raw_on(&b, "POST", "/networks/web/route", &[], None).await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());
    let unrouted = raw_on(&a, "DELETE", "/networks/web/route/192.0.2.9", &[], None).await;
    assert_eq!(unrouted.status, 404, "{}", unrouted.text());

    let deleted = raw_on(&a, "DELETE", "/instances/web-1", &[], None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    // Gone, but a poll by uuid reads its final state as deleted (v0.8 keeps deleted
    // objects); not by name, and not for another tenant.
    let tomb = raw_on(&a, "GET", &format!("/instances/{uuid}"), &[], None).await;
    assert_eq!(tomb.status, 200, "{}", tomb.text());
    assert_eq!(tomb.json()["state"], "deleted");
    assert_eq!(tomb.json()["name"], "web-1");
    // Its events stay readable by uuid (none were recorded here); not for others.
    let events = raw_on(&a, "GET", &format!("/instances/{uuid}/events"), &[], None).await;
    assert_eq!(events.status, 200, "{}", events.text());
    assert_eq!(events.json(), json!([]));
    let hidden = raw_on(&b, "GET", &format!("/instances/{uuid}/events"), &[], None).await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());
    let by_name = raw_on(&a, "GET", "/instances/web-1", &[], None).await;
    assert_eq!(by_name.status, 404, "{}", by_name.text());
    let foreign = raw_on(&b, "GET", &format!("/instances/{uuid}"), &[], None).await;
    assert_eq!(foreign.status, 404, "{}", foreign.text());
    let never = raw_on(
        &a,
        "GET",
        "/instances/00000000-0000-4000-8000-000000000000",
        &[],
        None,
    )
    .await;
    assert_eq!(never.status, 404, "{}", never.text());
    let gone = raw_on(&a, "DELETE", "/networks/web", &[], None).await;
    assert_eq!(gone.status, 202, "{}", gone.text());

    // A method the path does not serve: 405 in v0.8's shape, with Allow; the
    // Kubernetes paths keep their Status.
    let wrong = raw_on(&a, "PUT", "/instances", &[], Some(json!({}))).await;
    assert_eq!(wrong.status, 405, "{}", wrong.text());
    assert_eq!(wrong.json()["status"], 405, "{}", wrong.text());
    assert!(wrong.json()["error"].is_string(), "{}", wrong.text());
    let allow = wrong
        .headers
        .get(http::header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let wrong = raw_on(
        &a,
        "PATCH",
        &format!("/networks/{net_uuid}/events"),
        &[],
        None,
    )
    .await;
    assert_eq!(wrong.status, 405, "{}", wrong.text());
    assert_eq!(wrong.json()["status"], 405, "{}", wrong.text());
    let k8s = raw_on(&a, "POST", "/version", &[], None).await;
    assert_eq!(k8s.status, 405, "{}", k8s.text());
    assert_eq!(k8s.json()["kind"], "Status", "{}", k8s.text());
}

#[tokio::test]
async fn artifacts_on_v08_paths() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let b = env.tenant("tb", "key-b").await;
    let post = |url: &str, extra: serde_json::Value| {
        let mut body = json!({"url": url});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };

    // System: one shared artifact and one private one in `system`.
    let shared = env
        .raw(
            "POST",
            "/artifacts",
            &[],
            Some(post(
                "https://images.example/debian-12.qcow2",
                json!({"shared": true}),
            )),
        )
        .await;
    assert_eq!(shared.status, 200, "{}", shared.text());
    let shared = shared.json();
    assert_eq!(shared["namespace"], "system");
    assert_eq!(shared["shared"], true);
    assert_eq!(
        shared["source_url"],
        "https://images.example/debian-12.qcow2"
    );
    let shared_uuid = shared["uuid"].as_str().expect("uuid").to_string();
    let shared_name = shared["name"].as_str().expect("name").to_string();
    let private = env
        .raw(
            "POST",
            "/artifacts",
            &[],
            Some(post("https://images.example/secret.qcow2", json!({}))),
        )
        .await;
    assert_eq!(private.status, 200, "{}", private.text());
    let private_uuid = private.json()["uuid"].as_str().expect("uuid").to_string();

    // Tenant A caches an image; the same URL again is the same artifact.
    let mine = raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(post("https://images.example/alpine.qcow2", json!({}))),
    )
    .await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    let mine = mine.json();
    assert_eq!(mine["namespace"], "ta");
    assert_eq!(mine["artifact_type"], "image");
    assert_eq!(mine["state"], "initial");
    assert_eq!(mine["blobs"], json!({}));
    let mine_uuid = mine["uuid"].as_str().expect("uuid").to_string();
    let mine_name = mine["name"].as_str().expect("name").to_string();
    let again = raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(post("https://images.example/alpine.qcow2", json!({}))),
    )
    .await;
    assert_eq!(again.json()["uuid"], mine_uuid.as_str());
    // Only system shares; a bad URL is a v0.8 validation error.
    let share = raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(post(
            "https://images.example/x.qcow2",
            json!({"shared": true}),
        )),
    )
    .await;
    assert_eq!(share.status, 403, "{}", share.text());
    let bad = raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(post("ftp://x/y", json!({}))),
    )
    .await;
    assert_eq!(bad.status, 422, "{}", bad.text());
    assert_eq!(bad.json()["status"], 422);
    let missing = raw_on(&a, "POST", "/artifacts", &[], Some(json!({}))).await;
    assert_eq!(missing.status, 400, "{}", missing.text());

    // Lists: own plus shared; never another tenant's nor system's private ones.
    let uuids = |list: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = list
            .as_array()
            .expect("list")
            .iter()
            .map(|a| a["uuid"].as_str().expect("uuid").to_string())
            .collect();
        v.sort();
        v
    };
    let mut want_a = vec![mine_uuid.clone(), shared_uuid.clone()];
    want_a.sort();
    assert_eq!(
        uuids(&raw_on(&a, "GET", "/artifacts", &[], None).await.json()),
        want_a
    );
    assert_eq!(
        uuids(&raw_on(&b, "GET", "/artifacts", &[], None).await.json()),
        vec![shared_uuid.clone()]
    );
    assert_eq!(
        uuids(&env.raw("GET", "/artifacts", &[], None).await.json()).len(),
        3
    );
    // Naming a namespace scopes to it alone (no shared ones), a foreign one is 404.
    assert_eq!(
        raw_on(&b, "GET", "/artifacts?namespace=tb", &[], None)
            .await
            .json(),
        json!([])
    );
    assert_eq!(
        raw_on(&b, "GET", "/artifacts?namespace=ta", &[], None)
            .await
            .status,
        404
    );

    // Show: own first, then shared; another namespace's artifact is 404 with no data.
    for reference in [&shared_uuid, &shared_name] {
        let got = raw_on(&b, "GET", &format!("/artifacts/{reference}"), &[], None).await;
        assert_eq!(got.status, 200, "{reference}: {}", got.text());
        assert_eq!(got.json()["uuid"], shared_uuid.as_str());
    }
    for path in [
        format!("/artifacts/{mine_uuid}"),
        format!("/artifacts/{mine_name}"),
        format!("/artifacts/{private_uuid}"),
        format!("/artifacts/{mine_uuid}/versions"),
        format!("/artifacts/{shared_uuid}?namespace=tb"),
    ] {
        let hidden = raw_on(&b, "GET", &path, &[], None).await;
        assert_eq!(hidden.status, 404, "{path}: {}", hidden.text());
        assert_eq!(
            hidden.json().as_object().map(|o| o.len()),
            Some(2),
            "{}",
            hidden.text()
        );
        assert!(
            !hidden.text().contains("images.example"),
            "{}",
            hidden.text()
        );
    }
    // A tenant's own artifact of the same name as a shared one wins.
    let own_named = raw_on(
        &b,
        "POST",
        "/artifacts",
        &[],
        Some(post(
            "https://images.example/b-debian.qcow2",
            json!({"name": shared_name}),
        )),
    )
    .await;
    assert_eq!(own_named.status, 200, "{}", own_named.text());
    let own_uuid = own_named.json()["uuid"].as_str().expect("uuid").to_string();
    let got = raw_on(&b, "GET", &format!("/artifacts/{shared_name}"), &[], None).await;
    assert_eq!(got.json()["uuid"], own_uuid.as_str());

    // Versions: what the artifact controller records, with the blob's view.
    recorded_version(&env, "ta", &mine_name, "blob-1", 5).await;
    let versions = raw_on(
        &a,
        "GET",
        &format!("/artifacts/{mine_name}/versions"),
        &[],
        None,
    )
    .await;
    assert_eq!(versions.status, 200, "{}", versions.text());
    let versions = versions.json();
    assert_eq!(versions[0]["index"], 1);
    assert_eq!(versions[0]["uuid"], "blob-1");
    assert_eq!(versions[0]["size"], 5);
    let shown = raw_on(&a, "GET", &format!("/artifacts/{mine_uuid}"), &[], None)
        .await
        .json();
    assert_eq!(shown["state"], "created");
    assert_eq!(shown["blob_uuid"], "blob-1");
    assert_eq!(shown["index"], 1);
    let shared_versions = raw_on(
        &b,
        "GET",
        &format!("/artifacts/{shared_uuid}/versions"),
        &[],
        None,
    )
    .await;
    assert_eq!(shared_versions.status, 200);
    assert_eq!(shared_versions.json(), json!([]));
    // A shared artifact's Blob belongs to system: a tenant sees the version, not the
    // Blob's owner, checksums, holders or reference count.
    recorded_version(&env, "system", &shared_name, "blob-sys", 9).await;
    let seen = raw_on(
        &b,
        "GET",
        &format!("/artifacts/{shared_uuid}/versions"),
        &[],
        None,
    )
    .await
    .json();
    assert_eq!(seen[0]["uuid"], "blob-sys", "{seen}");
    assert_eq!(
        (seen[0]["index"].clone(), seen[0]["size"].clone()),
        (json!(1), json!(9))
    );
    assert_eq!(seen[0]["state"], "created", "{seen}");
    for hidden in [
        "owner_namespace",
        "checksums",
        "locations",
        "reference_count",
    ] {
        assert!(seen[0].get(hidden).is_none(), "{hidden}: {seen}");
    }
    let admin = env
        .raw(
            "GET",
            &format!("/artifacts/{shared_uuid}/versions"),
            &[],
            None,
        )
        .await
        .json();
    assert_eq!(admin[0]["owner_namespace"], "system", "{admin}");

    // Delete: the caller's namespace only; shared ones are not a tenant's to delete.
    for path in [
        format!("/artifacts/{shared_uuid}"),
        format!("/artifacts/{mine_uuid}"),
    ] {
        let refused = raw_on(&b, "DELETE", &path, &[], None).await;
        assert_eq!(refused.status, 404, "{path}: {}", refused.text());
    }
    let deleted = raw_on(&a, "DELETE", &format!("/artifacts/{mine_uuid}"), &[], None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["state"], "deleted");
    assert_eq!(
        raw_on(&a, "GET", &format!("/artifacts/{mine_uuid}"), &[], None)
            .await
            .status,
        404
    );
}

/// The v0.8 instance actions, events and interfaces `shakenfist-client` uses.
#[tokio::test]
async fn instance_actions_events_and_interfaces_on_v08_paths() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let b = env.tenant("tb", "key-b").await;
    let net = raw_on(
        &a,
        "POST",
        "/networks",
        &[],
        Some(json!({"name": "web", "netblock": "10.0.0.0/24"})),
    )
    .await
    .json();
    let net_uuid = net["uuid"].as_str().expect("uuid").to_string();
    let inst = raw_on(
        &a,
        "POST",
        "/instances",
        &[],
        Some(json!({
            "name": "web-1", "cpus": 1, "memory": 512,
            "disk": [{"size": 8}],
            "network": [{"network_uuid": net_uuid}],
        })),
    )
    .await;
    assert_eq!(inst.status, 200, "{}", inst.text());
    let uuid = inst.json()["uuid"].as_str().expect("uuid").to_string();
    let k8s = "/apis/shakenfist.io/v1alpha1/namespaces/ta/instances/web-1";
    let desired = || async {
        let got = env.raw("GET", k8s, &[], None).await.json();
        (
            got["spec"]["powerState"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            got["metadata"]["resourceVersion"].clone(),
        )
    };

    // Power changes set spec.powerState; invalid moves are 409 in v0.8's shape.
    let off = raw_on(&a, "POST", "/instances/web-1/poweroff", &[], None).await;
    assert_eq!(off.status, 200, "{}", off.text());
    assert_eq!(off.json()["uuid"], uuid.as_str());
    assert_eq!(desired().await.0, "off");
    for action in ["pause", "unpause", "rebootsoft", "reboothard"] {
        let refused = raw_on(&a, "POST", &format!("/instances/web-1/{action}"), &[], None).await;
        assert_eq!(refused.status, 409, "{action}: {}", refused.text());
        assert_eq!(refused.json()["status"], 409);
        assert!(refused.json()["error"].is_string(), "{}", refused.text());
    }
    let on = raw_on(&a, "POST", &format!("/instances/{uuid}/poweron"), &[], None).await;
    assert_eq!(on.status, 200, "{}", on.text());
    let (state, version) = desired().await;
    assert_eq!(state, "on");
    let again = raw_on(&a, "POST", "/instances/web-1/poweron", &[], None).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        desired().await.1,
        version,
        "nothing to change: nothing written"
    );
    raw_on(&a, "POST", "/instances/web-1/pause", &[], None).await;
    assert_eq!(desired().await.0, "paused");
    raw_on(&a, "POST", "/instances/web-1/unpause", &[], None).await;
    assert_eq!(desired().await.0, "on");

    // A reboot is an operation: 409 while unplaced, then one instance_reboot.
    let unplaced = raw_on(&a, "POST", "/instances/web-1/reboothard", &[], None).await;
    assert_eq!(unplaced.status, 409, "{}", unplaced.text());
    assert_eq!(env.count_rows("ClusterOperation"), 0);
    env.raw(
        "PATCH",
        &format!("{k8s}/status"),
        &[("content-type", "application/merge-patch+json")],
        Some(json!({"status": {"node": "hv-1", "powerState": "running"}})),
    )
    .await;
    // What the hypervisor reports, in v0.8's words.
    let shown = raw_on(&a, "GET", "/instances/web-1", &[], None)
        .await
        .json();
    assert_eq!(shown["power_state"], "on", "{shown}");
    // The namespace a client names in the body scopes the lookup (a system caller
    // naming tb finds no web-1 there).
    let elsewhere = env
        .raw(
            "GET",
            "/instances/web-1",
            &[],
            Some(json!({"namespace": "tb"})),
        )
        .await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.text());
    let refused = env
        .raw(
            "DELETE",
            "/instances/web-1",
            &[],
            Some(json!({"namespace": "tb"})),
        )
        .await;
    assert_eq!(refused.status, 404, "{}", refused.text());
    assert_eq!(desired().await.0, "on", "nothing deleted");
    let reboot = raw_on(&a, "POST", "/instances/web-1/reboothard", &[], None).await;
    assert_eq!(reboot.status, 200, "{}", reboot.text());
    let ops = env
        .raw(
            "GET",
            "/apis/shakenfist.io/v1alpha1/namespaces/ta/clusteroperations",
            &[],
            None,
        )
        .await
        .json();
    let items = ops["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{ops}");
    assert_eq!(items[0]["spec"]["operationType"], "instance_reboot");
    assert_eq!(items[0]["spec"]["payload"]["hard"], true);
    // The same operation on the v0.8 cluster operation paths.
    let op_uuid = items[0]["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    let by_target = raw_on(
        &a,
        "GET",
        "/clusteroperations",
        &[],
        Some(json!({"target_object_type": "instance", "target_uuid": uuid})),
    )
    .await
    .json();
    assert_eq!(by_target.as_array().map(Vec::len), Some(1), "{by_target}");
    assert_eq!(by_target[0]["uuid"], op_uuid.as_str());
    assert_eq!(by_target[0]["operation_type"], "instance_reboot");
    assert_eq!(by_target[0]["target_uuid"], uuid.as_str());
    let other_target = raw_on(
        &a,
        "GET",
        "/clusteroperations?target_object_type=network",
        &[],
        None,
    )
    .await
    .json();
    assert_eq!(other_target, json!([]));
    let one = raw_on(
        &a,
        "GET",
        &format!("/clusteroperations/instance_reboot/{op_uuid}"),
        &[],
        None,
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["state"], "queued");
    let wrong_type = raw_on(
        &a,
        "GET",
        &format!("/clusteroperations/instance_delete/{op_uuid}"),
        &[],
        None,
    )
    .await;
    assert_eq!(wrong_type.status, 404, "{}", wrong_type.text());
    let chain = raw_on(
        &a,
        "GET",
        &format!("/clusteroperations/{op_uuid}/chain"),
        &[],
        None,
    )
    .await
    .json();
    assert_eq!(chain.as_array().map(Vec::len), Some(1), "{chain}");
    let hidden = raw_on(
        &b,
        "GET",
        &format!("/clusteroperations/instance_reboot/{op_uuid}"),
        &[],
        None,
    )
    .await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());
    assert_eq!(
        raw_on(&b, "GET", "/clusteroperations", &[], None)
            .await
            .json(),
        json!([])
    );

    // Unknown actions and other tenants: 404, nothing changed.
    let unknown = raw_on(&a, "POST", "/instances/web-1/explode", &[], None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let foreign = raw_on(
        &b,
        "POST",
        &format!("/instances/{uuid}/poweroff"),
        &[],
        None,
    )
    .await;
    assert_eq!(foreign.status, 404, "{}", foreign.text());
    assert_eq!(desired().await.0, "on");

    // Events: newest first, filtered by the body as the client sends it.
    for (i, kind) in ["audit", "status", "audit"].iter().enumerate() {
        let event = sf_proto::v1::Event {
            event_uuid: format!("00000000-0000-4000-8000-00000000000{i}"),
            event_type: (*kind).into(),
            timestamp: 1_700_000_000.0 + i as f64,
            fqdn: "hv-1".into(),
            duration: None,
            message: format!("event {i}"),
            extra: Vec::new(),
            request_id: None,
            objects: vec![sf_proto::v1::EventObject {
                object_type: "instance".into(),
                object_uuid: uuid.clone(),
            }],
        };
        env.record_event(event).await;
    }
    let all = raw_on(&a, "GET", "/instances/web-1/events", &[], None).await;
    assert_eq!(all.status, 200, "{}", all.text());
    let messages: Vec<String> = all
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["message"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(messages, ["event 2", "event 1", "event 0"]);
    let filtered = raw_on(
        &a,
        "GET",
        "/instances/web-1/events",
        &[],
        Some(json!({"event_type": "audit", "limit": 1})),
    )
    .await
    .json();
    assert_eq!(filtered.as_array().map(Vec::len), Some(1), "{filtered}");
    assert_eq!(
        filtered[0]["event_uuid"],
        "00000000-0000-4000-8000-000000000002"
    );
    let bad = raw_on(&a, "GET", "/instances/web-1/events?limit=x", &[], None).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let hidden = raw_on(&b, "GET", &format!("/instances/{uuid}/events"), &[], None).await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());

    // Interfaces, in the order the guest sees them.
    for (name, order) in [("late", json!(5)), ("web-1-0", json!(null))] {
        let mut spec = json!({"instance": "web-1", "network": "web"});
        if !order.is_null() {
            spec["order"] = order;
        }
        let made = env
            .raw(
                "POST",
                "/apis/shakenfist.io/v1alpha1/namespaces/ta/networkinterfaces",
                &[],
                Some(json!({
                    "apiVersion": "shakenfist.io/v1alpha1", "kind": "NetworkInterface",
                    "metadata": {"name": name, "namespace": "ta"}, "spec": spec,
                })),
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.text());
    }
    let rows = raw_on(&a, "GET", "/instances/web-1/interfaces", &[], None)
        .await
        .json();
    let names: Vec<&str> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["web-1-0", "late"], "{rows}");
    assert_eq!(rows[1]["order"], 1);
    assert_eq!(rows[0]["network_uuid"], net_uuid.as_str());
    assert_eq!(rows[0]["instance_uuid"], uuid.as_str());
    assert_eq!(rows[0]["model"], "virtio");
}

/// v0.8 snapshots: the answer names artifact and blob at once; bad requests are 400;
/// the list shows each recorded version with its blob's state.
#[tokio::test]
async fn snapshots_on_v08_paths() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let b = env.tenant("tb", "key-b").await;
    let made = raw_on(
        &a,
        "POST",
        "/instances",
        &[],
        Some(json!({
            "name": "db", "cpus": 1, "memory": 512,
            "disk": [{"size": 8}, {"size": 4, "bus": "sata"}],
        })),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text());
    let uuid = made.json()["uuid"].as_str().expect("uuid").to_string();
    let path = "/instances/db/snapshot";
    let unplaced = raw_on(&a, "POST", path, &[], Some(json!({"all": true}))).await;
    assert_eq!(unplaced.status, 409, "{}", unplaced.text());
    env.raw(
        "PATCH",
        "/apis/shakenfist.io/v1alpha1/namespaces/ta/instances/db/status",
        &[("content-type", "application/merge-patch+json")],
        Some(json!({"status": {"node": "hv-1"}})),
    )
    .await;
    for (body, why) in [
        (json!({"thin": true}), "thin"),
        (json!({"device": "vdb"}), "the config drive"),
        (json!({"device": "sdz"}), "no such disk"),
    ] {
        let bad = raw_on(&a, "POST", path, &[], Some(body)).await;
        assert_eq!(bad.status, 400, "{why}: {}", bad.text());
        assert_eq!(bad.json()["status"], 400);
    }
    assert_eq!(env.count_rows("ClusterOperation"), 0);
    let hidden = raw_on(
        &b,
        "POST",
        &format!("/instances/{uuid}/snapshot"),
        &[],
        None,
    )
    .await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());

    let taken = raw_on(
        &a,
        "POST",
        path,
        &[],
        Some(json!({"all": true, "device": null, "thin": false})),
    )
    .await;
    assert_eq!(taken.status, 200, "{}", taken.text());
    let taken = taken.json();
    let mut devices: Vec<&String> = taken.as_object().expect("map").keys().collect();
    devices.sort();
    assert_eq!(devices, ["sda", "vda"], "{taken}");
    assert_eq!(
        taken["sda"]["source_url"],
        format!("sf://instance/{uuid}/sda")
    );
    let ops = env
        .raw(
            "GET",
            "/apis/shakenfist.io/v1alpha1/namespaces/ta/clusteroperations",
            &[],
            None,
        )
        .await
        .json();
    let op = &ops["items"][0];
    assert_eq!(op["spec"]["operationType"], "instance_snapshot");
    assert_eq!(op["spec"]["payload"], json!({"all": true}));
    let op_uid = op["metadata"]["uid"].as_str().expect("op uid");
    assert_eq!(
        taken["vda"]["blob_uuid"],
        sf_schema::common::derived_uuid(&format!("{op_uid}/vda")).as_str(),
        "named as the agent names it"
    );
    // Nothing recorded yet.
    let empty = raw_on(&a, "GET", path, &[], None).await;
    assert_eq!(empty.status, 200, "{}", empty.text());
    assert_eq!(empty.json(), json!([]));

    // Recorded as the artifact controller records a completed snapshot.
    let artifact = format!("{uuid}-vda");
    let blob = taken["vda"]["blob_uuid"]
        .as_str()
        .expect("blob")
        .to_string();
    let created = env
        .raw(
            "POST",
            "/apis/shakenfist.io/v1alpha1/blobs",
            &[],
            Some(json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Blob",
                "metadata": {"name": blob},
                "spec": {"ownerNamespace": "ta", "mimeType": "application/x-qcow2"},
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    for (kind_path, status) in [
        (
            format!("/apis/shakenfist.io/v1alpha1/blobs/{blob}/status"),
            json!({"status": {"state": "created", "size": 4096, "nodes": ["hv-1"]}}),
        ),
        (
            format!("/apis/shakenfist.io/v1alpha1/namespaces/ta/artifacts/{artifact}/status"),
            json!({"status": {"state": "created", "versions": [
                {"index": 1, "blob": blob, "size": 4096, "created": "2026-11-26T12:00:00Z"}
            ]}}),
        ),
    ] {
        let patched = env
            .raw(
                "PATCH",
                &kind_path,
                &[("content-type", "application/merge-patch+json")],
                Some(status),
            )
            .await;
        assert_eq!(patched.status, 200, "{}", patched.text());
    }
    let listed = raw_on(&a, "GET", &format!("/instances/{uuid}/snapshot"), &[], None)
        .await
        .json();
    let rows = listed.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["blob_uuid"], blob.as_str());
    assert_eq!(rows[0]["state"], "created");
    assert_eq!(rows[0]["index"], 1);
    assert_eq!(rows[0]["uuid"], taken["vda"]["artifact_uuid"]);
    assert_eq!(rows[0]["source_url"], format!("sf://instance/{uuid}/vda"));
}

/// v0.8 interfaces (by uuid, float and defloat), a network's interfaces and
/// addresses, nodes and blobs with their events, and deleting every instance of a
/// namespace.
#[tokio::test]
async fn interfaces_addresses_nodes_and_blobs_on_v08_paths() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let b = env.tenant("tb", "key-b").await;
    let api = "/apis/shakenfist.io/v1alpha1";
    let net = raw_on(
        &a,
        "POST",
        "/networks",
        &[],
        Some(json!({"name": "web", "netblock": "10.0.0.0/24"})),
    )
    .await
    .json();
    let net_uuid = net["uuid"].as_str().expect("uuid").to_string();
    let inst = raw_on(
        &a,
        "POST",
        "/instances",
        &[],
        Some(json!({"name": "web-1", "cpus": 1, "memory": 512, "disk": [{"size": 8}]})),
    )
    .await
    .json();
    let inst_uuid = inst["uuid"].as_str().expect("uuid").to_string();
    let made = env
        .raw(
            "POST",
            &format!("{api}/namespaces/ta/networkinterfaces"),
            &[],
            Some(json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "NetworkInterface",
                "metadata": {"name": "web-1-0", "namespace": "ta"},
                "spec": {"instance": "web-1", "network": "web"},
            })),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let iface_uuid = made.json()["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();

    // One interface by uuid, only in its namespace.
    let shown = raw_on(&a, "GET", &format!("/interfaces/{iface_uuid}"), &[], None).await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.json()["instance_uuid"], inst_uuid.as_str());
    assert_eq!(shown.json()["network_uuid"], net_uuid.as_str());
    assert_eq!(shown.json()["order"], 0);
    let hidden = raw_on(&b, "GET", &format!("/interfaces/{iface_uuid}"), &[], None).await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());

    // float / defloat set spec.float; a repeat writes nothing.
    let stored = || async {
        let got = env
            .raw(
                "GET",
                &format!("{api}/namespaces/ta/networkinterfaces/web-1-0"),
                &[],
                None,
            )
            .await
            .json();
        (
            got["spec"]["float"].as_bool().unwrap_or(false),
            got["metadata"]["resourceVersion"].clone(),
        )
    };
    let float = raw_on(
        &a,
        "POST",
        &format!("/interfaces/{iface_uuid}/float"),
        &[],
        None,
    )
    .await;
    assert_eq!(float.status, 200, "{}", float.text());
    assert_eq!(float.json()["uuid"], iface_uuid.as_str());
    let (floating, version) = stored().await;
    assert!(floating);
    raw_on(
        &a,
        "POST",
        &format!("/interfaces/{iface_uuid}/float"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        stored().await.1,
        version,
        "already floating: nothing written"
    );
    let foreign = raw_on(
        &b,
        "POST",
        &format!("/interfaces/{iface_uuid}/defloat"),
        &[],
        None,
    )
    .await;
    assert_eq!(foreign.status, 404, "{}", foreign.text());
    assert!(stored().await.0, "another tenant changed nothing");
    raw_on(
        &a,
        "POST",
        &format!("/interfaces/{iface_uuid}/defloat"),
        &[],
        None,
    )
    .await;
    assert!(!stored().await.0);
    let unknown = raw_on(
        &a,
        "POST",
        &format!("/interfaces/{iface_uuid}/sink"),
        &[],
        None,
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    // Hot plug: a NetworkInterface one past the instance's last.
    let plugged = raw_on(
        &a,
        "POST",
        "/instances/web-1/interfaces",
        &[],
        Some(json!({"network": {"network_uuid": net_uuid, "float": true}})),
    )
    .await;
    assert_eq!(plugged.status, 200, "{}", plugged.text());
    assert_eq!(plugged.json()["name"], "web-1-nic1", "{}", plugged.text());
    assert_eq!(plugged.json()["order"], 1);
    let stored_plug = env
        .raw(
            "GET",
            &format!("{api}/namespaces/ta/networkinterfaces/web-1-nic1"),
            &[],
            None,
        )
        .await
        .json();
    assert_eq!(stored_plug["spec"]["order"], 1, "{stored_plug}");
    assert_eq!(stored_plug["spec"]["network"], "web");
    assert_eq!(stored_plug["spec"]["float"], true);
    for (client, body, code) in [
        (&b, json!({"network": {"network_uuid": net_uuid}}), 404),
        (&a, json!({"network": {"network_uuid": "nowhere"}}), 404),
        (&a, json!({}), 400),
    ] {
        let refused = raw_on(
            client,
            "POST",
            "/instances/web-1/interfaces",
            &[],
            Some(body.clone()),
        )
        .await;
        assert_eq!(refused.status, code, "{body}: {}", refused.text());
    }
    assert_eq!(env.count_rows("NetworkInterface"), 2, "nothing more stored");

    // The network's interfaces and its addresses (leases, in address order).
    let rows = raw_on(&a, "GET", "/networks/web/interfaces", &[], None)
        .await
        .json();
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
    assert_eq!(rows[0]["uuid"], iface_uuid.as_str());
    assert_eq!(rows[1]["name"], "web-1-nic1");
    let gateway = || env.gateway.clone();
    gateway()
        .call("prepare_network", |mut g| {
            let network_uid = net_uuid.clone();
            async move {
                g.prepare_network(sf_proto::v1::PrepareNetworkRequest { network_uid })
                    .await
            }
        })
        .await
        .expect("prepare network");
    let reserve = |address: &'static str| {
        let network_uid = net_uuid.clone();
        let owner_uid = iface_uuid.clone();
        async move {
            gateway()
                .call("reserve_address", |mut g| {
                    let request = sf_proto::v1::ReserveAddressRequest {
                        network_uid: network_uid.clone(),
                        address: address.into(),
                        reservation_type: "instance".into(),
                        owner_kind: "NetworkInterface".into(),
                        owner_uid: owner_uid.clone(),
                        owner_name: "web-1-0".into(),
                        comment: String::new(),
                    };
                    async move { g.reserve_address(request).await }
                })
                .await
                .expect("reserve")
        }
    };
    reserve("10.0.0.20").await;
    let addresses = raw_on(&a, "GET", "/networks/web/addresses", &[], None)
        .await
        .json();
    let listed: Vec<(String, String)> = addresses
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["address"].as_str().unwrap_or_default().to_owned(),
                r["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let types: std::collections::HashMap<&str, &str> = listed
        .iter()
        .map(|(a, t)| (a.as_str(), t.as_str()))
        .collect();
    assert_eq!(types.get("10.0.0.20"), Some(&"instance"), "{addresses}");
    assert_eq!(types.get("10.0.0.0"), Some(&"network"), "{addresses}");
    assert_eq!(types.get("10.0.0.255"), Some(&"broadcast"), "{addresses}");
    assert_eq!(listed.first().map(|(a, _)| a.as_str()), Some("10.0.0.0"));
    assert_eq!(listed.last().map(|(a, _)| a.as_str()), Some("10.0.0.255"));
    let held = addresses
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["address"] == "10.0.0.20")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        held["user"],
        json!(["networkinterface", iface_uuid]),
        "{held}"
    );
    assert!(held["when"].as_f64().is_some_and(|w| w > 1.7e9), "{held}");
    let elsewhere = raw_on(
        &b,
        "GET",
        &format!("/networks/{net_uuid}/addresses"),
        &[],
        None,
    )
    .await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.text());

    // Nodes (every caller sees them) and blobs (a tenant sees its own).
    let node = env
        .raw(
            "POST",
            &format!("{api}/nodes"),
            &[],
            Some(json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Node",
                "metadata": {"name": "hv-1"}, "spec": {"roles": ["hypervisor"]},
            })),
        )
        .await;
    assert_eq!(node.status, 201, "{}", node.text());
    let nodes = raw_on(&b, "GET", "/nodes", &[], None).await.json();
    assert_eq!(nodes[0]["name"], "hv-1", "{nodes}");
    assert_eq!(nodes[0]["is_hypervisor"], true);
    assert_eq!(nodes[0]["lastseen"], json!(0.0));
    let one = raw_on(&a, "GET", "/nodes/hv-1", &[], None).await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(
        raw_on(&a, "GET", "/nodes/hv-9", &[], None).await.status,
        404
    );
    let blob_name = "0b5e1e9c-8d1c-4a4e-9f53-2f1f0c3a7b11";
    let blob = env
        .raw(
            "POST",
            &format!("{api}/blobs"),
            &[],
            Some(json!({
                "apiVersion": "shakenfist.io/v1alpha1", "kind": "Blob",
                "metadata": {"name": blob_name}, "spec": {"ownerNamespace": "ta", "size": 7},
            })),
        )
        .await;
    assert_eq!(blob.status, 201, "{}", blob.text());
    let blob_uid = blob.json()["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let mine = raw_on(&a, "GET", "/blobs", &[], None).await.json();
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine[0]["uuid"], blob_name);
    assert_eq!(mine[0]["size"], 7);
    assert_eq!(
        raw_on(&b, "GET", "/blobs", &[], None).await.json(),
        json!([])
    );
    assert_eq!(
        raw_on(&b, "GET", &format!("/blobs/{blob_name}"), &[], None)
            .await
            .status,
        404
    );
    let on_node = raw_on(&a, "GET", "/blobs?node=hv-1", &[], None)
        .await
        .json();
    assert_eq!(on_node, json!([]), "no replica on hv-1 yet");

    // Its bytes: none in the database (an artifact's blob is on hypervisors), then a
    // screenshot's, whole or from an offset; never another tenant's.
    let none = raw_on(&a, "GET", &format!("/blobs/{blob_name}/data"), &[], None).await;
    assert_eq!(none.status, 404, "{}", none.text());
    assert!(
        none.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("hypervisors")),
        "{}",
        none.text()
    );
    let bytes = b"shot-01".to_vec();
    env.gateway
        .call("put_blob_data", |mut g| {
            let request = sf_proto::v1::PutBlobDataRequest {
                uid: blob_uid.clone(),
                data: bytes.clone(),
                mime_type: "text/plain".into(),
            };
            async move { g.put_blob_data(request).await }
        })
        .await
        .expect("put blob data");
    let whole = raw_on(&a, "GET", &format!("/blobs/{blob_name}/data"), &[], None).await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.body, bytes);
    assert_eq!(whole.headers["content-type"], "text/plain");
    let rest = raw_on(
        &a,
        "GET",
        &format!("/blobs/{blob_name}/data?offset=5"),
        &[],
        None,
    )
    .await;
    assert_eq!(rest.body, b"01".to_vec());
    let past = raw_on(
        &a,
        "GET",
        &format!("/blobs/{blob_name}/data?offset=99"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        (past.status, past.body.len()),
        (200, 0),
        "v0.8 seeks past the end"
    );
    for bad in ["offset=x", "offset=-1"] {
        let refused = raw_on(
            &a,
            "GET",
            &format!("/blobs/{blob_name}/data?{bad}"),
            &[],
            None,
        )
        .await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
        assert_eq!(refused.json()["status"], 400);
    }
    let hidden = raw_on(&b, "GET", &format!("/blobs/{blob_name}/data"), &[], None).await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());

    // Events of each kind are keyed by the object's uid.
    for (i, (object_type, uid)) in [
        ("network", net_uuid.as_str()),
        ("node", ""),
        ("blob", blob_uid.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        let uid = if object_type == "node" {
            env.raw("GET", &format!("{api}/nodes/hv-1"), &[], None)
                .await
                .json()["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            uid.to_owned()
        };
        env.record_event(sf_proto::v1::Event {
            event_uuid: format!("00000000-0000-4000-8000-00000000010{i}"),
            event_type: "audit".into(),
            timestamp: 1_700_000_000.0 + i as f64,
            fqdn: "hv-1".into(),
            duration: None,
            message: format!("{object_type} event"),
            extra: Vec::new(),
            request_id: None,
            objects: vec![sf_proto::v1::EventObject {
                object_type: object_type.into(),
                object_uuid: uid,
            }],
        })
        .await;
    }
    for (path, message) in [
        ("/networks/web/events", "network event"),
        ("/nodes/hv-1/events", "node event"),
        (&format!("/blobs/{blob_name}/events") as &str, "blob event"),
    ] {
        let rows = raw_on(&a, "GET", path, &[], None).await;
        assert_eq!(rows.status, 200, "{path}: {}", rows.text());
        assert_eq!(rows.json()[0]["message"], message, "{path}");
    }
    let hidden = raw_on(&b, "GET", "/networks/web/events", &[], None).await;
    assert_eq!(hidden.status, 404, "{}", hidden.text());

    // Deleting every instance of a namespace needs confirm, and system names it;
    // another namespace's instance is never touched.
    let other = raw_on(
        &b,
        "POST",
        "/instances",
        &[],
        Some(json!({"name": "web-1", "cpus": 1, "memory": 512, "disk": [{"size": 8}]})),
    )
    .await;
    assert_eq!(other.status, 200, "{}", other.text());
    let unconfirmed = raw_on(&a, "DELETE", "/instances", &[], Some(json!({}))).await;
    assert_eq!(unconfirmed.status, 400, "{}", unconfirmed.text());
    assert!(
        unconfirmed.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("confirm"))
    );
    let unnamed = env
        .raw("DELETE", "/instances", &[], Some(json!({"confirm": true})))
        .await;
    assert_eq!(unnamed.status, 400, "{}", unnamed.text());
    let overruled = raw_on(
        &a,
        "DELETE",
        "/instances?confirm=true",
        &[],
        Some(json!({"confirm": false})),
    )
    .await;
    assert_eq!(overruled.status, 400, "the body wins: {}", overruled.text());
    assert_eq!(env.count_rows("Instance"), 2, "nothing deleted");
    let foreign = raw_on(
        &b,
        "DELETE",
        "/instances",
        &[],
        Some(json!({"confirm": true, "namespace": "ta"})),
    )
    .await;
    assert_eq!(foreign.status, 404, "{}", foreign.text());
    let deleted = raw_on(
        &a,
        "DELETE",
        "/instances",
        &[],
        Some(json!({"confirm": true, "namespace": "ta"})),
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json(), json!([inst_uuid]));
    let after = raw_on(&a, "GET", &format!("/instances/{inst_uuid}"), &[], None)
        .await
        .json();
    assert_eq!(after["state"], "deleted", "{after}");
    let survivor = raw_on(&b, "GET", "/instances/web-1", &[], None).await;
    assert_eq!(survivor.status, 200, "{}", survivor.text());
    assert_ne!(survivor.json()["state"], "deleted");
}

/// v0.8 metadata items: stored in the object's annotation, set at create or one key
/// at a time, removed, scoped like the objects; `affinity` refused; nodes written
/// by `system` only.
#[tokio::test]
async fn metadata_on_v08_paths() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let b = env.tenant("tb", "key-b").await;
    let api = "/apis/shakenfist.io/v1alpha1";
    let refused = raw_on(
        &a,
        "POST",
        "/instances",
        &[],
        Some(
            json!({"name": "web-1", "cpus": 1, "memory": 512, "disk": [{"size": 8}],
                    "metadata": {"affinity": {"cpu": {"web": 1}}}}),
        ),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("affinity"))
    );
    assert_eq!(env.count_rows("Instance"), 0, "nothing stored");
    let made = raw_on(
        &a,
        "POST",
        "/instances",
        &[],
        Some(
            json!({"name": "web-1", "cpus": 1, "memory": 512, "disk": [{"size": 8}],
                    "metadata": {"tags": ["front"]}}),
        ),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text());
    let read = || async {
        raw_on(&a, "GET", "/instances/web-1/metadata", &[], None)
            .await
            .json()
    };
    assert_eq!(read().await, json!({"tags": ["front"]}));
    // It is an annotation on the Kubernetes paths.
    let stored = env
        .raw(
            "GET",
            &format!("{api}/namespaces/ta/instances/web-1"),
            &[],
            None,
        )
        .await
        .json();
    assert_eq!(
        stored["metadata"]["annotations"]["shakenfist.io/metadata"], r#"{"tags":["front"]}"#,
        "{stored}"
    );

    let set = raw_on(
        &a,
        "PUT",
        "/instances/web-1/metadata/owner",
        &[],
        Some(json!({"value": "ops"})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json(), json!({"tags": ["front"], "owner": "ops"}));
    let no_value = raw_on(
        &a,
        "PUT",
        "/instances/web-1/metadata/owner",
        &[],
        Some(json!({})),
    )
    .await;
    assert_eq!(no_value.status, 400, "{}", no_value.text());
    let affinity = raw_on(
        &a,
        "PUT",
        "/instances/web-1/metadata/affinity",
        &[],
        Some(json!({"value": {}})),
    )
    .await;
    assert_eq!(affinity.status, 400, "{}", affinity.text());
    let foreign = raw_on(
        &b,
        "PUT",
        "/instances/web-1/metadata/owner",
        &[],
        Some(json!({"value": "thief"})),
    )
    .await;
    assert_eq!(foreign.status, 404, "{}", foreign.text());
    assert_eq!(
        raw_on(&b, "GET", "/instances/web-1/metadata", &[], None)
            .await
            .status,
        404
    );
    let removed = raw_on(&a, "DELETE", "/instances/web-1/metadata/tags", &[], None).await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert_eq!(read().await, json!({"owner": "ops"}));
    let again = raw_on(&a, "DELETE", "/instances/web-1/metadata/tags", &[], None).await;
    assert_eq!(again.status, 404, "{}", again.text());

    // Networks too; nodes are written by system only, read by all.
    raw_on(
        &a,
        "POST",
        "/networks",
        &[],
        Some(json!({"name": "web", "netblock": "10.0.0.0/24"})),
    )
    .await;
    let tier = raw_on(
        &a,
        "PUT",
        "/networks/web/metadata/tier",
        &[],
        Some(json!({"value": "front"})),
    )
    .await;
    assert_eq!(tier.json(), json!({"tier": "front"}), "{}", tier.text());
    env.raw(
        "POST",
        &format!("{api}/nodes"),
        &[],
        Some(
            json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Node",
                    "metadata": {"name": "hv-1"}, "spec": {}}),
        ),
    )
    .await;
    let tenant = raw_on(
        &a,
        "PUT",
        "/nodes/hv-1/metadata/rack",
        &[],
        Some(json!({"value": "r1"})),
    )
    .await;
    assert_eq!(tenant.status, 401, "{}", tenant.text());
    let system = env
        .raw(
            "PUT",
            "/nodes/hv-1/metadata/rack",
            &[],
            Some(json!({"value": "r1"})),
        )
        .await;
    assert_eq!(system.status, 200, "{}", system.text());
    assert_eq!(
        raw_on(&a, "GET", "/nodes/hv-1/metadata", &[], None)
            .await
            .json(),
        json!({"rack": "r1"})
    );
    let blob = "3c1d2e4f-0000-4000-8000-000000000001";
    env.raw(
        "POST",
        &format!("{api}/blobs"),
        &[],
        Some(
            json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Blob",
                    "metadata": {"name": blob}, "spec": {"ownerNamespace": "ta"}}),
        ),
    )
    .await;
    let own_blob = raw_on(
        &a,
        "PUT",
        &format!("/blobs/{blob}/metadata/k"),
        &[],
        Some(json!({"value": "v"})),
    )
    .await;
    assert_eq!(own_blob.status, 401, "{}", own_blob.text());
    assert_eq!(
        raw_on(&a, "GET", &format!("/blobs/{blob}/metadata"), &[], None)
            .await
            .json(),
        json!({})
    );
    let null = raw_on(
        &a,
        "PUT",
        "/networks/web/metadata/tier",
        &[],
        Some(json!({"value": null})),
    )
    .await;
    assert_eq!(null.status, 400, "{}", null.text());

    // Namespaces: system writes, the namespace's own callers read, others see nothing.
    let set = env
        .raw(
            "POST",
            "/auth/namespaces/ta/metadata/owner",
            &[],
            Some(json!({"value": "team-a"})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json(), json!({"owner": "team-a"}));
    let own = raw_on(&a, "GET", "/auth/namespaces/ta/metadata", &[], None).await;
    assert_eq!(own.json(), json!({"owner": "team-a"}), "{}", own.text());
    let stored = env
        .raw("GET", &format!("{api}/namespaces/ta"), &[], None)
        .await
        .json();
    assert_eq!(
        stored["metadata"]["annotations"]["shakenfist.io/metadata"], "{\"owner\":\"team-a\"}",
        "{stored}"
    );
    let tenant_write = raw_on(
        &a,
        "PUT",
        "/auth/namespaces/ta/metadata/owner",
        &[],
        Some(json!({"value": "me"})),
    )
    .await;
    assert_eq!(tenant_write.status, 401, "{}", tenant_write.text());
    let foreign = raw_on(&b, "GET", "/auth/namespaces/ta/metadata", &[], None).await;
    assert_eq!(foreign.status, 404, "{}", foreign.text());
    let missing = env
        .raw("GET", "/auth/namespaces/nope/metadata", &[], None)
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    let removed = env
        .raw("DELETE", "/auth/namespaces/ta/metadata/owner", &[], None)
        .await;
    assert_eq!(removed.json(), json!({}), "{}", removed.text());
}

/// v0.8 artifact management: max_versions, share/unshare (system only), deleting
/// every artifact of a namespace; dropping one version is 501.
#[tokio::test]
async fn artifact_management_on_v08_paths() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let b = env.tenant("tb", "key-b").await;
    let api = "/apis/shakenfist.io/v1alpha1";
    let made = raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(json!({"url": "https://images.example/deb.qcow2", "name": "deb"})),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text());
    let uuid = made.json()["uuid"].as_str().expect("uuid").to_string();
    let spec = |ns: &'static str, name: &'static str| {
        let env = &env;
        async move {
            env.raw(
                "GET",
                &format!("{api}/namespaces/{ns}/artifacts/{name}"),
                &[],
                None,
            )
            .await
            .json()["spec"]
                .clone()
        }
    };

    let set = raw_on(
        &a,
        "POST",
        "/artifacts/deb/versions",
        &[],
        Some(json!({"max_versions": 1})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["max_versions"], 1);
    assert_eq!(spec("ta", "deb").await["maxVersions"], 1);
    for bad in [
        json!({"max_versions": 0}),
        json!({"max_versions": "x"}),
        json!({}),
    ] {
        let refused = raw_on(
            &a,
            "POST",
            "/artifacts/deb/versions",
            &[],
            Some(bad.clone()),
        )
        .await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
        assert!(
            refused.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_versions"))
        );
    }
    assert_eq!(spec("ta", "deb").await["maxVersions"], 1, "nothing stored");
    let foreign = raw_on(
        &b,
        "POST",
        &format!("/artifacts/{uuid}/versions"),
        &[],
        Some(json!({"max_versions": 5})),
    )
    .await;
    assert_eq!(foreign.status, 404, "{}", foreign.text());
    let one = raw_on(&a, "DELETE", "/artifacts/deb/versions/1", &[], None).await;
    assert_eq!(one.status, 501, "{}", one.text());
    assert!(
        one.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_versions"))
    );

    // Sharing: system only; a shared system artifact is visible to tenants.
    let tenant_share = raw_on(&a, "POST", "/artifacts/deb/share", &[], None).await;
    assert_eq!(tenant_share.status, 403, "{}", tenant_share.text());
    assert_eq!(spec("ta", "deb").await["shared"], false);
    let base = env
        .raw(
            "POST",
            "/artifacts",
            &[],
            Some(
                json!({"url": "https://images.example/base.qcow2", "name": "base",
                        "namespace": "system"}),
            ),
        )
        .await;
    assert_eq!(base.status, 200, "{}", base.text());
    let visible = |c: &kube::Client| {
        let c = c.clone();
        async move {
            raw_on(&c, "GET", "/artifacts", &[], None)
                .await
                .json()
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    assert!(!visible(&b).await.contains(&"base".to_owned()));
    // A tenant's namesake is never the one shared, and a name only a tenant has is
    // not system's to share.
    raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(json!({"url": "https://images.example/mine.qcow2", "name": "base"})),
    )
    .await;
    let tenant_only = env.raw("POST", "/artifacts/deb/share", &[], None).await;
    assert_eq!(tenant_only.status, 404, "{}", tenant_only.text());
    assert_eq!(spec("ta", "deb").await["shared"], false);
    let shared = env.raw("POST", "/artifacts/base/share", &[], None).await;
    assert_eq!(shared.status, 200, "{}", shared.text());
    assert_eq!(shared.json()["shared"], true);
    assert_eq!(shared.json()["namespace"], "system");
    assert_eq!(spec("ta", "base").await["shared"], false);
    assert!(visible(&b).await.contains(&"base".to_owned()));
    env.raw("POST", "/artifacts/base/unshare", &[], None).await;
    assert!(!visible(&b).await.contains(&"base".to_owned()));
    let unknown = env.raw("POST", "/artifacts/base/polish", &[], None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    // What only system may ask of an artifact, on both paths: 403, nothing stored.
    let file = raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(json!({"url": "file:///etc/shadow"})),
    )
    .await;
    assert_eq!(file.status, 403, "{}", file.text());
    let metadata_service = raw_on(
        &a,
        "POST",
        "/artifacts",
        &[],
        Some(json!({"url": "http://169.254.169.254/latest/user-data"})),
    )
    .await;
    assert_eq!(metadata_service.status, 403, "{}", metadata_service.text());
    for spec_body in [
        json!({"sourceUrl": "FILE:///etc/shadow"}),
        json!({"sourceUrl": "https://images.example/x.qcow2", "shared": true}),
    ] {
        let refused = raw_on(
            &a,
            "POST",
            &format!("{api}/namespaces/ta/artifacts"),
            &[],
            Some(
                json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Artifact",
                        "metadata": {"name": "sneaky"}, "spec": spec_body}),
            ),
        )
        .await;
        assert_eq!(refused.status, 403, "{spec_body}: {}", refused.text());
        assert_eq!(refused.json()["kind"], "Status");
    }
    let mut deb = env
        .raw(
            "GET",
            &format!("{api}/namespaces/ta/artifacts/deb"),
            &[],
            None,
        )
        .await
        .json();
    deb["spec"]["shared"] = json!(true);
    let put = raw_on(
        &a,
        "PUT",
        &format!("{api}/namespaces/ta/artifacts/deb"),
        &[],
        Some(deb),
    )
    .await;
    assert_eq!(put.status, 403, "{}", put.text());
    let patch = raw_on(
        &a,
        "PATCH",
        &format!("{api}/namespaces/ta/artifacts/deb"),
        &[("content-type", "application/merge-patch+json")],
        Some(json!({"spec": {"shared": true}})),
    )
    .await;
    assert_eq!(patch.status, 403, "{}", patch.text());
    assert_eq!(spec("ta", "deb").await["shared"], false);

    // Every artifact of a namespace.
    let unconfirmed = raw_on(
        &a,
        "DELETE",
        "/artifacts",
        &[],
        Some(json!({"namespace": "ta"})),
    )
    .await;
    assert_eq!(unconfirmed.status, 400, "{}", unconfirmed.text());
    let deleted = raw_on(
        &a,
        "DELETE",
        "/artifacts",
        &[],
        Some(json!({"confirm": true, "namespace": "ta"})),
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let gone = deleted.json();
    assert_eq!(
        gone.as_array().map(Vec::len),
        Some(2),
        "deb and ta's base: {gone}"
    );
    assert!(gone.as_array().is_some_and(|g| g.contains(&json!(uuid))));
    assert_eq!(
        raw_on(&a, "GET", "/artifacts/deb", &[], None).await.status,
        404
    );
    let kept = env
        .raw(
            "GET",
            &format!("{api}/namespaces/system/artifacts/base"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        kept.status,
        200,
        "system's base is not ta's: {}",
        kept.text()
    );
}

/// Hypervisor files (paths, `file://`) as disk bases or NVRAM templates are for the
/// system namespace only: 403 for a tenant on both paths, nothing stored.
#[tokio::test]
async fn tenants_cannot_boot_from_hypervisor_files() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    let api = "/apis/shakenfist.io/v1alpha1";
    for disk in [
        json!({"size": 8, "base": "/etc/shadow"}),
        json!({"size": 8, "base": "file:///etc/shadow"}),
    ] {
        let v08 = raw_on(
            &a,
            "POST",
            "/instances",
            &[],
            Some(json!({"name": "web-1", "cpus": 1, "memory": 512, "disk": [disk.clone()]})),
        )
        .await;
        assert_eq!(v08.status, 403, "{disk}: {}", v08.text());
        assert!(
            v08.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("spec.disks[0].base"))
        );
    }
    let mut spec = json!({"cpus": 1, "memory": 512, "disks": [{"size": 8}]});
    spec["nvramTemplate"] = json!("/usr/share/OVMF/OVMF_VARS.fd");
    spec["uefi"] = json!(true);
    let object = |spec: serde_json::Value| {
        json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
               "metadata": {"name": "web-2"}, "spec": spec})
    };
    let k8s = raw_on(
        &a,
        "POST",
        &format!("{api}/namespaces/ta/instances"),
        &[],
        Some(object(spec.clone())),
    )
    .await;
    assert_eq!(k8s.status, 403, "{}", k8s.text());
    assert!(
        k8s.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.nvramTemplate"))
    );
    assert_eq!(env.count_rows("Instance"), 0, "nothing stored");
    // The system namespace may (an operator's local image).
    let system = env
        .raw(
            "POST",
            &format!("{api}/namespaces/system/instances"),
            &[],
            Some(object(spec)),
        )
        .await;
    assert_eq!(system.status, 201, "{}", system.text());
}
