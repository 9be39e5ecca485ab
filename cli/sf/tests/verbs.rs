//! `sf plan`, the Shaken Fist verbs, namespaces and keys, and `network addresses`
//! through the real `sf` binary against in-process sf-database + sf-api.

mod common;

use common::{WEB, start};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_create_power_change_and_delete_without_storing() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    let path = file.to_str().expect("path");

    let created = env.sf(&["plan", "-f", path]).await.ok();
    assert!(
        created.stdout.contains("+ network/web: create"),
        "{created:?}"
    );
    assert!(
        created.stdout.contains("+ instance/web-1: create"),
        "{created:?}"
    );
    assert!(
        created
            .stdout
            .contains("Plan: 2 to create, 0 to update, 0 to delete, 0 unchanged."),
        "{created:?}"
    );
    assert_eq!(env.count_rows("Instance"), 0, "plan stores nothing");
    assert_eq!(env.count_rows("Network"), 0, "plan stores nothing");

    env.sf(&["apply", "-f", path]).await.ok();
    let off = WEB.replace("powerState: \"on\"", "powerState: \"off\"");
    let off_file = env.file("off.yaml", &off);
    let power = env
        .sf(&["plan", "-f", off_file.to_str().expect("path"), "-o", "json"])
        .await
        .ok();
    let answer: Value = serde_json::from_str(&power.stdout).expect("JSON plan");
    let plans = answer["plans"].as_array().expect("plans");
    let change = |name: &str| {
        plans
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["change"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(change("web"), "unchanged", "{answer}");
    assert_eq!(change("web-1"), "update", "{answer}");
    assert_eq!(
        env.get_json("instance", "web-1").await["spec"]["powerState"],
        "on",
        "plan changed nothing"
    );

    let deleting = env.sf(&["plan", "-f", path, "--delete"]).await.ok();
    assert!(
        deleting.stdout.contains("- network/web: delete"),
        "{deleting:?}"
    );
    assert!(
        deleting.stdout.contains("- instance/web-1: delete"),
        "{deleting:?}"
    );
    assert!(
        deleting
            .stdout
            .contains("0 to create, 0 to update, 2 to delete"),
        "{deleting:?}"
    );
    assert_eq!(
        env.count_rows("Instance"),
        1,
        "plan --delete deletes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_verbs() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    env.sf(&["apply", "-f", file.to_str().expect("path")])
        .await
        .ok();
    for (verb, want) in [
        ("poweroff", "off"),
        ("poweron", "on"),
        ("pause", "paused"),
        ("unpause", "on"),
    ] {
        let run = env
            .sf(&["-n", "demo", "instance", verb, "web-1"])
            .await
            .ok();
        assert_eq!(run.stdout, format!("instance/web-1 powerState={want}\n"));
        assert_eq!(
            env.get_json("instance", "web-1").await["spec"]["powerState"],
            want,
            "{verb}"
        );
    }
    // Not placed yet (no controllers run here): sf-api's refusal reaches the user.
    let reboot = env
        .sf(&["-n", "demo", "instance", "reboot", "web-1", "--hard"])
        .await;
    assert_eq!(reboot.code, 1, "{reboot:?}");
    assert!(reboot.stderr.contains("409"), "{reboot:?}");

    let added = env
        .sf(&[
            "-n",
            "demo",
            "instance",
            "add-interface",
            "web-1",
            "--network",
            "web",
        ])
        .await
        .ok();
    assert!(
        added.stdout.starts_with("networkinterface/web-1-") && added.stdout.ends_with(" created\n"),
        "{added:?}"
    );
    let ifaces = env
        .sf(&["-n", "demo", "get", "iface", "-o", "json"])
        .await
        .ok();
    let ifaces: Value = serde_json::from_str(&ifaces.stdout).expect("JSON");
    assert_eq!(ifaces["items"][0]["spec"]["instance"], "web-1");
    assert_eq!(ifaces["items"][0]["spec"]["network"], "web");

    let events = env
        .sf(&[
            "-n", "demo", "events", "instance", "web-1", "-o", "json", "-l", "5",
        ])
        .await
        .ok();
    let events: Value = serde_json::from_str(&events.stdout).expect("JSON events");
    assert!(events.is_array(), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_keys() {
    let env = start().await;
    let created = env
        .sf(&["namespace", "create", "tenant1", "--key-name", "k1"])
        .await
        .ok();
    let mut lines = created.stdout.lines();
    assert_eq!(lines.next(), Some("namespace/tenant1 created"));
    let key = lines.next().expect("the key, printed once").to_string();
    assert_eq!(key.len(), 48, "{created:?}");

    let listed = env.sf(&["namespace", "list"]).await.ok();
    assert!(listed.stdout.lines().any(|l| l == "tenant1"), "{listed:?}");

    // The printed key works: the environment overrides the file.
    let as_tenant = env
        .sf_with(&["get", "instances"], |c| {
            c.env("SHAKENFIST_NAMESPACE", "tenant1")
                .env("SHAKENFIST_KEY", &key);
        })
        .await
        .ok();
    assert!(
        as_tenant
            .stderr
            .contains("No instances found in namespace tenant1"),
        "{as_tenant:?}"
    );

    let k2 = env
        .sf(&[
            "-n",
            "tenant1",
            "key",
            "create",
            "k2",
            "--key",
            "second-key-0123456789",
        ])
        .await
        .ok();
    assert_eq!(k2.stdout, "second-key-0123456789\n");
    let keys = env.sf(&["-n", "tenant1", "key", "list"]).await.ok();
    assert_eq!(keys.stdout, "KEY\nk1\nk2\n");
    env.sf(&["-n", "tenant1", "key", "delete", "k2"]).await.ok();
    let keys = env.sf(&["-n", "tenant1", "key", "list"]).await.ok();
    assert_eq!(keys.stdout, "KEY\nk1\n");

    let deleted = env.sf(&["namespace", "delete", "tenant1"]).await.ok();
    assert_eq!(deleted.stdout, "namespace/tenant1 deleted\n");
    let listed = env.sf(&["namespace", "list"]).await.ok();
    assert!(!listed.stdout.lines().any(|l| l == "tenant1"), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_addresses_sort_numerically() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    env.sf(&["apply", "-f", file.to_str().expect("path")])
        .await
        .ok();
    let uid = env.get_json("network", "web").await["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    env.gateway
        .call("prepare_network", |mut g| {
            let request = sf_proto::v1::PrepareNetworkRequest {
                network_uid: uid.clone(),
            };
            async move { g.prepare_network(request).await }
        })
        .await
        .expect("prepare network");
    for (address, kind, owner) in [
        ("10.0.0.10", "instance", "web-1-0"),
        ("10.0.0.9", "routed", ""),
        ("10.0.0.100", "instance", "web-1-1"),
    ] {
        env.gateway
            .call("reserve_address", |mut g| {
                let request = sf_proto::v1::ReserveAddressRequest {
                    network_uid: uid.clone(),
                    address: address.to_string(),
                    reservation_type: kind.to_string(),
                    owner_kind: if owner.is_empty() {
                        String::new()
                    } else {
                        "NetworkInterface".into()
                    },
                    owner_uid: if owner.is_empty() {
                        String::new()
                    } else {
                        format!("00000000-0000-4000-8000-{:012}", address.len())
                    },
                    owner_name: owner.to_string(),
                    comment: String::new(),
                };
                async move { g.reserve_address(request).await }
            })
            .await
            .expect("reserve address");
    }
    let run = env
        .sf(&["-n", "demo", "network", "addresses", "web"])
        .await
        .ok();
    let addresses: Vec<&str> = run
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut sorted = addresses.clone();
    sorted.sort_by_key(|a| a.parse::<std::net::Ipv4Addr>().expect("an address"));
    assert_eq!(addresses, sorted, "{run:?}");
    for a in ["10.0.0.9", "10.0.0.10", "10.0.0.100"] {
        assert!(addresses.contains(&a), "{a} in {run:?}");
    }
    let routed = run
        .stdout
        .lines()
        .find(|l| l.starts_with("10.0.0.9 "))
        .expect("the routed row");
    let cells: Vec<&str> = routed.split_whitespace().collect();
    assert_eq!(cells, ["10.0.0.9", "routed", "-", "-"], "{run:?}");
    assert!(run.stdout.contains("networkinterface/web-1-0"), "{run:?}");
}

async fn system_client(env: &common::Env) -> kube::Client {
    sf_client::connect(sf_client::Credentials {
        url: env.url.clone(),
        namespace: "system".into(),
        key: Some(common::SYSTEM_KEY.into()),
        token: None,
    })
    .await
    .expect("connect")
    .kube()
}

async fn send_json(
    client: &kube::Client,
    method: &str,
    path: &str,
    ctype: &str,
    body: Value,
) -> Value {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ctype)
        .body(serde_json::to_vec(&body).expect("JSON"))
        .expect("request");
    client
        .request::<Value>(request)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Plays the agent's part: completes the screenshot operation with a Blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot_waits_for_the_operation_and_downloads_the_blob() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    env.sf(&["apply", "-f", file.to_str().expect("path")])
        .await
        .ok();
    let client = system_client(&env).await;
    let base = "/apis/shakenfist.io/v1alpha1";
    send_json(
        &client,
        "PATCH",
        &format!("{base}/namespaces/demo/instances/web-1/status"),
        "application/merge-patch+json",
        serde_json::json!({"status": {"node": "hv-1", "state": "created"}}),
    )
    .await;

    let out = env.dir.path().join("shot.png");
    let mut child = env
        .command(&[
            "-n",
            "demo",
            "instance",
            "screenshot",
            "web-1",
            "-o",
            out.to_str().expect("path"),
            "--timeout",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sf");

    // Wait for the operation sf asked for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let op_name = loop {
        let request = http::Request::get(format!("{base}/namespaces/demo/clusteroperations"))
            .body(Vec::new())
            .expect("request");
        let list: Value = client.request(request).await.expect("list operations");
        if let Some(op) = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["spec"]["operationType"] == "instance_screenshot")
        {
            break op["metadata"]["name"].as_str().expect("name").to_string();
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                e.read_to_string(&mut err).await.expect("stderr");
            }
            panic!("sf ended early ({status}): {err}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no screenshot operation in {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    let png: Vec<u8> = b"\x89PNG\r\n\x1a\nnot-really-a-png".to_vec();
    let blob = send_json(
        &client,
        "POST",
        &format!("{base}/blobs"),
        "application/json",
        serde_json::json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Blob",
            "metadata": {"name": "shot-1"},
            "spec": {"ownerNamespace": "demo", "mimeType": "image/png", "size": png.len()}}),
    )
    .await;
    let uid = blob["metadata"]["uid"].as_str().expect("uid").to_string();
    env.gateway
        .call("put_blob_data", |mut g| {
            let request = sf_proto::v1::PutBlobDataRequest {
                uid: uid.clone(),
                data: png.clone(),
                mime_type: "image/png".into(),
            };
            async move { g.put_blob_data(request).await }
        })
        .await
        .expect("put blob data");
    send_json(
        &client,
        "PATCH",
        &format!("{base}/namespaces/demo/clusteroperations/{op_name}/status"),
        "application/merge-patch+json",
        serde_json::json!({"status": {"state": "complete", "result": {"blob": "shot-1"}}}),
    )
    .await;

    let output = tokio::time::timeout(std::time::Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("sf finishes")
        .expect("output");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(std::fs::read(&out).expect("the screenshot"), png);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("image/png"), "{stdout}");
}
