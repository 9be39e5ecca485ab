//! Authentication, namespace scoping and permissions, against an in-process
//! sf-database over a private MariaDB.

mod common;

use std::time::Duration;

use common::{Answer, Env, instance_json, raw_on, start, start_with};
use serde_json::{Value, json};

const V1: &str = "/apis/shakenfist.io/v1alpha1";

fn instance_in(ns: &str, name: &str) -> Value {
    let mut object = instance_json(name);
    object["metadata"]["namespace"] = json!(ns);
    object
}

async fn create(env: &Env, ns: &str, plural: &str, object: Value) -> Value {
    let answer = env
        .raw(
            "POST",
            &format!("{V1}/namespaces/{ns}/{plural}"),
            &[],
            Some(object),
        )
        .await;
    assert_eq!(answer.status, 201, "create in {ns}: {}", answer.text());
    answer.json()
}

fn uid(object: &Value) -> String {
    object["metadata"]["uid"].as_str().expect("uid").to_string()
}

/// 404 and nothing of the foreign object in the body.
fn hidden(answer: &Answer, secret: &str, what: &str) {
    assert_eq!(answer.status, 404, "{what}: {}", answer.text());
    assert!(
        !answer.text().contains(secret),
        "{what} leaked: {}",
        answer.text()
    );
}

#[tokio::test]
async fn keys_tokens_rotation_and_rate_limit() {
    let env = start().await;
    // No token, a bad token.
    let anon = raw_on(&env.anonymous, "GET", &format!("{V1}/instances"), &[], None).await;
    assert_eq!(anon.status, 401, "{}", anon.text());
    assert_eq!(anon.json()["reason"], "Unauthorized");
    let junk = env.client_with("not.a.token");
    let bad = raw_on(&junk, "GET", &format!("{V1}/instances"), &[], None).await;
    assert_eq!(bad.status, 401);
    // Public paths need none.
    for path in ["/healthz", "/readyz", "/version", "/"] {
        let answer = raw_on(&env.anonymous, "GET", path, &[], None).await;
        assert_eq!(answer.status, 200, "{path}");
    }

    // Wrong key.
    let wrong = env.auth("system", "not-the-key").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.json(),
        json!({"error": "unauthorized", "status": 401})
    );

    // A tenant made through the v0.8 paths.
    let made = env
        .raw(
            "POST",
            "/auth/namespaces",
            &[],
            Some(json!({"namespace": "ta", "key_name": "k", "key": "key-a-1"})),
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.text());
    assert_eq!(made.json()["key_names"], json!(["k"]));
    let token = env.token("ta", "key-a-1").await;
    let tenant = env.client_with(&token);
    let list = raw_on(
        &tenant,
        "GET",
        &format!("{V1}/namespaces/ta/instances"),
        &[],
        None,
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.text());
    let keys = raw_on(&tenant, "GET", "/auth/namespaces/ta/keys", &[], None).await;
    assert_eq!(keys.json(), json!(["k"]));
    assert!(!keys.text().contains("argon2") && !keys.text().contains("key-a-1"));
    // Keys are stored hashed.
    let stored = env
        .db
        .query("SELECT key_hash FROM namespace_keys WHERE namespace = 'ta'")
        .expect("query");
    assert!(
        stored.contains("$argon2id$") && !stored.contains("key-a-1"),
        "{stored}"
    );

    // Tenants on system-only endpoints: 401, as Shaken Fist.
    let create_ns = raw_on(
        &tenant,
        "POST",
        "/auth/namespaces",
        &[],
        Some(json!({"namespace": "tz"})),
    )
    .await;
    assert_eq!(create_ns.status, 401, "{}", create_ns.text());
    let delete_ns = raw_on(&tenant, "DELETE", "/auth/namespaces/ta", &[], None).await;
    assert_eq!(delete_ns.status, 401);
    let foreign_keys = raw_on(&tenant, "GET", "/auth/namespaces/system/keys", &[], None).await;
    assert_eq!(foreign_keys.status, 404);
    // system cannot be deleted.
    let system = env
        .raw("DELETE", "/auth/namespaces/system", &[], None)
        .await;
    assert_eq!(system.status, 403, "{}", system.text());

    // Replacing the key revokes the tokens issued under it.
    let rotated = env
        .raw(
            "PUT",
            "/auth/namespaces/ta/keys/k",
            &[],
            Some(json!({"key": "key-a-2"})),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let old = raw_on(
        &tenant,
        "GET",
        &format!("{V1}/namespaces/ta/instances"),
        &[],
        None,
    )
    .await;
    assert_eq!(old.status, 401, "old token after rotation: {}", old.text());
    assert_eq!(env.auth("ta", "key-a-1").await.status, 401);
    let fresh = env.client_with(&env.token("ta", "key-a-2").await);
    let list = raw_on(
        &fresh,
        "GET",
        &format!("{V1}/namespaces/ta/instances"),
        &[],
        None,
    )
    .await;
    assert_eq!(list.status, 200);
    // Deleting the key revokes too.
    let deleted = env
        .raw("DELETE", "/auth/namespaces/ta/keys/k", &[], None)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let gone = raw_on(
        &fresh,
        "GET",
        &format!("{V1}/namespaces/ta/instances"),
        &[],
        None,
    )
    .await;
    assert_eq!(gone.status, 401);
    // An empty namespace can be deleted.
    let removed = env.raw("DELETE", "/auth/namespaces/ta", &[], None).await;
    assert_eq!(removed.status, 200, "{}", removed.text());

    // Repeated failures per (client, namespace): 429, even for the right key.
    env.add_namespace("rl").await;
    env.put_key("rl", "k", "right").await;
    for attempt in 0..5 {
        assert_eq!(
            env.auth("rl", "wrong").await.status,
            401,
            "attempt {attempt}"
        );
    }
    let limited = env.auth("rl", "right").await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(limited.headers.contains_key("retry-after"));
    // Other namespaces are not affected.
    assert_eq!(env.auth("system", common::SYSTEM_KEY).await.status, 200);
    // A name that is no namespace name (padded, upper case) never reaches a key,
    // even the right one: no fresh attempts per spelling, no token for "system ".
    for spelling in ["system ", "SYSTEM", "system\t", ""] {
        assert_eq!(
            env.auth(spelling, common::SYSTEM_KEY).await.status,
            401,
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn tokens_expire() {
    let env = start_with(&["--api-token-duration=5"]).await;
    let answer = env.auth("system", common::SYSTEM_KEY).await;
    assert_eq!(answer.json()["expires_in"], 5);
    let token = env.token("system", common::SYSTEM_KEY).await;
    let client = env.client_with(&token);
    let path = format!("{V1}/namespaces/demo/instances");
    assert_eq!(raw_on(&client, "GET", &path, &[], None).await.status, 200);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let expired = raw_on(&client, "GET", &path, &[], None).await;
    assert_eq!(expired.status, 401, "{}", expired.text());
    assert!(expired.text().contains("expired"), "{}", expired.text());
}

#[tokio::test]
async fn tenants_see_only_their_namespace() {
    let env = start().await;
    let a = env.tenant("ta", "key-a").await;
    env.tenant("tb", "key-b").await;
    let inst_a = create(&env, "ta", "instances", instance_in("ta", "web")).await;
    let inst_b = create(&env, "tb", "instances", instance_in("tb", "web")).await;
    let (uid_a, uid_b) = (uid(&inst_a), uid(&inst_b));
    let net = |ns: &str| json!({"metadata": {"name": "net", "namespace": ns}, "spec": {"netblock": "10.0.0.0/24"}});
    let net_b = create(&env, "tb", "networks", net("tb")).await;
    let net_b_uid = uid(&net_b);
    let mut blob_uids = Vec::new();
    for (name, owner) in [("blob-a", "ta"), ("blob-b", "tb")] {
        let answer = env
            .raw(
                "POST",
                &format!("{V1}/blobs"),
                &[],
                Some(json!({"metadata": {"name": name}, "spec": {"ownerNamespace": owner}})),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text());
        blob_uids.push(uid(&answer.json()));
    }

    let b_inst = format!("{V1}/namespaces/tb/instances/web");
    let patch = [("content-type", "application/merge-patch+json")];
    // By name, every verb: 404 and no data.
    hidden(&raw_on(&a, "GET", &b_inst, &[], None).await, &uid_b, "get");
    hidden(
        &raw_on(&a, "GET", &format!("{b_inst}/status"), &[], None).await,
        &uid_b,
        "get status",
    );
    hidden(
        &raw_on(&a, "PUT", &b_inst, &[], Some(instance_in("tb", "web"))).await,
        &uid_b,
        "put",
    );
    hidden(
        &raw_on(
            &a,
            "PATCH",
            &b_inst,
            &patch,
            Some(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await,
        &uid_b,
        "patch",
    );
    hidden(
        &raw_on(&a, "DELETE", &b_inst, &[], None).await,
        &uid_b,
        "delete",
    );
    hidden(
        &raw_on(
            &a,
            "GET",
            &format!("{V1}/namespaces/tb/instances"),
            &[],
            None,
        )
        .await,
        &uid_b,
        "list",
    );
    hidden(
        &raw_on(
            &a,
            "GET",
            &format!("{V1}/namespaces/tb/instances?watch=true&timeoutSeconds=1"),
            &[],
            None,
        )
        .await,
        &uid_b,
        "watch",
    );
    hidden(
        &raw_on(
            &a,
            "GET",
            &format!("{V1}/namespaces/tb/networks/net"),
            &[],
            None,
        )
        .await,
        &net_b_uid,
        "network",
    );
    hidden(
        &raw_on(
            &a,
            "POST",
            &format!("{V1}/namespaces/tb/instances"),
            &[],
            Some(instance_in("tb", "new")),
        )
        .await,
        &uid_b,
        "create in b",
    );
    // namespace=B in the body, the query, a field selector.
    hidden(
        &raw_on(
            &a,
            "POST",
            &format!("{V1}/namespaces/ta/instances"),
            &[],
            Some(instance_in("tb", "new")),
        )
        .await,
        &uid_b,
        "body namespace",
    );
    hidden(
        &raw_on(
            &a,
            "GET",
            &format!("{V1}/namespaces/ta/instances?namespace=tb"),
            &[],
            None,
        )
        .await,
        &uid_b,
        "query namespace",
    );
    hidden(
        &raw_on(
            &a,
            "GET",
            &format!("{V1}/instances?fieldSelector=metadata.namespace%3Dtb"),
            &[],
            None,
        )
        .await,
        &uid_b,
        "field selector namespace",
    );
    hidden(
        &raw_on(
            &a,
            "PATCH",
            &format!("{V1}/namespaces/ta/instances/web"),
            &patch,
            Some(json!({"metadata": {"namespace": "tb"}})),
        )
        .await,
        &uid_b,
        "patch to namespace b",
    );
    // By uid: a field selector on the uid finds nothing of B's.
    let by_uid = raw_on(
        &a,
        "GET",
        &format!("{V1}/instances?fieldSelector=metadata.uid%3D{uid_b}"),
        &[],
        None,
    )
    .await;
    assert!(!by_uid.text().contains("\"tb\""), "{}", by_uid.text());
    if by_uid.status == 200 {
        assert_eq!(by_uid.json()["items"], json!([]));
    }
    // A uid in place of the name resolves only within the path's namespace: B's uid
    // is 404 with no data on A's path and on B's, for every verb.
    for path in [
        format!("{V1}/namespaces/ta/instances/{uid_b}"),
        format!("{V1}/namespaces/tb/instances/{uid_b}"),
    ] {
        hidden(
            &raw_on(&a, "GET", &path, &[], None).await,
            "\"tb\"",
            "get uid",
        );
        hidden(
            &raw_on(&a, "GET", &format!("{path}/status"), &[], None).await,
            "\"tb\"",
            "get status by uid",
        );
        hidden(
            &raw_on(
                &a,
                "PATCH",
                &path,
                &patch,
                Some(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
            "\"tb\"",
            "patch by uid",
        );
        hidden(
            &raw_on(&a, "PUT", &path, &[], Some(inst_b.clone())).await,
            "\"tb\"",
            "put by uid",
        );
        hidden(
            &raw_on(&a, "DELETE", &path, &[], None).await,
            "\"tb\"",
            "delete by uid",
        );
    }
    hidden(
        &raw_on(
            &a,
            "GET",
            &format!("{V1}/namespaces/ta/networks/{net_b_uid}"),
            &[],
            None,
        )
        .await,
        "10.0.0.0",
        "network by uid",
    );
    hidden(
        &raw_on(
            &a,
            "GET",
            &format!("{V1}/blobs/{}", blob_uids[1]),
            &[],
            None,
        )
        .await,
        "\"tb\"",
        "blob b by uid",
    );
    // B's instance is untouched.
    let b_now = env.raw("GET", &b_inst, &[], None).await.json();
    assert_eq!(
        b_now["metadata"]["resourceVersion"],
        inst_b["metadata"]["resourceVersion"]
    );
    // Its own objects by uid: every verb works.
    let own_by_uid = format!("{V1}/namespaces/ta/instances/{uid_a}");
    let got = raw_on(&a, "GET", &own_by_uid, &[], None).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["metadata"]["name"], "web");
    let status = raw_on(&a, "GET", &format!("{own_by_uid}/status"), &[], None).await;
    assert_eq!(status.status, 200, "{}", status.text());
    let patched = raw_on(
        &a,
        "PATCH",
        &own_by_uid,
        &patch,
        Some(json!({"metadata": {"labels": {"by": "uid"}}})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let mut replacement = patched.json();
    replacement["metadata"]["labels"]["by"] = json!("put");
    let replaced = raw_on(&a, "PUT", &own_by_uid, &[], Some(replacement)).await;
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    assert_eq!(replaced.json()["metadata"]["labels"]["by"], "put");
    let blob_a = raw_on(
        &a,
        "GET",
        &format!("{V1}/blobs/{}", blob_uids[0]),
        &[],
        None,
    )
    .await;
    assert_eq!(blob_a.status, 200, "{}", blob_a.text());
    // System is scoped strictly by the namespace it names, uids too.
    let wrong_ns = env
        .raw(
            "GET",
            &format!("{V1}/namespaces/ta/instances/{uid_b}"),
            &[],
            None,
        )
        .await;
    hidden(&wrong_ns, "\"tb\"", "system, uid in another namespace");
    let right_ns = env
        .raw(
            "GET",
            &format!("{V1}/namespaces/tb/instances/{uid_b}"),
            &[],
            None,
        )
        .await;
    assert_eq!(right_ns.status, 200, "{}", right_ns.text());

    // All-namespace lists and watches cover A's namespace only.
    let all = raw_on(&a, "GET", &format!("{V1}/instances"), &[], None).await;
    assert_eq!(all.status, 200);
    assert!(
        all.text().contains(&uid_a) && !all.text().contains(&uid_b),
        "{}",
        all.text()
    );
    let watch = raw_on(
        &a,
        "GET",
        &format!("{V1}/instances?watch=true&timeoutSeconds=1"),
        &[],
        None,
    )
    .await;
    assert_eq!(watch.status, 200);
    assert!(
        watch.text().contains(&uid_a) && !watch.text().contains(&uid_b),
        "{}",
        watch.text()
    );
    // Cluster-scoped: its own Namespace, its own Blobs.
    hidden(
        &raw_on(&a, "GET", &format!("{V1}/namespaces/tb"), &[], None).await,
        "creationTimestamp",
        "namespace b",
    );
    let namespaces = raw_on(&a, "GET", &format!("{V1}/namespaces"), &[], None).await;
    let names: Vec<&str> = namespaces.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .map(|n| if n == "ta" { "ta" } else { "other" })
        .collect();
    assert_eq!(names, vec!["ta"], "{}", namespaces.text());
    hidden(
        &raw_on(&a, "GET", &format!("{V1}/blobs/blob-b"), &[], None).await,
        "tb",
        "blob b",
    );
    let blobs = raw_on(&a, "GET", &format!("{V1}/blobs"), &[], None).await;
    assert!(
        blobs.text().contains("blob-a") && !blobs.text().contains("blob-b"),
        "{}",
        blobs.text()
    );
    assert_eq!(
        raw_on(&a, "GET", &format!("{V1}/blobs/blob-a"), &[], None)
            .await
            .status,
        200
    );

    // Permissions inside its own namespace: no status, operations, nodes, leases.
    let own = format!("{V1}/namespaces/ta/instances/web");
    let status = raw_on(
        &a,
        "PATCH",
        &format!("{own}/status"),
        &patch,
        Some(json!({"status": {"state": "created"}})),
    )
    .await;
    assert_eq!(status.status, 403, "{}", status.text());
    let op = raw_on(
        &a,
        "POST",
        &format!("{V1}/namespaces/ta/clusteroperations"),
        &[],
        Some(json!({"metadata": {"name": "x"}, "spec": {}})),
    )
    .await;
    assert_eq!(op.status, 403, "{}", op.text());
    let node = raw_on(
        &a,
        "POST",
        &format!("{V1}/nodes"),
        &[],
        Some(json!({"metadata": {"name": "hv"}, "spec": {}})),
    )
    .await;
    assert_eq!(node.status, 403);
    let lease = raw_on(
        &a,
        "POST",
        &format!("{V1}/namespaces/ta/ipamleases"),
        &[],
        Some(json!({"metadata": {"name": "l"}})),
    )
    .await;
    assert_eq!(lease.status, 403);
    // ... but it writes its own instances.
    let labelled = raw_on(
        &a,
        "PATCH",
        &own,
        &patch,
        Some(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await;
    assert_eq!(labelled.status, 200, "{}", labelled.text());

    // System sees both, and naming a namespace scopes it strictly.
    let all = env.raw("GET", &format!("{V1}/instances"), &[], None).await;
    assert!(all.text().contains(&uid_a) && all.text().contains(&uid_b));
    let in_a = env
        .raw(
            "GET",
            &format!("{V1}/namespaces/ta/instances/web"),
            &[],
            None,
        )
        .await;
    assert_eq!(uid(&in_a.json()), uid_a);
    let list_a = env
        .raw("GET", &format!("{V1}/namespaces/ta/instances"), &[], None)
        .await;
    assert!(!list_a.text().contains(&uid_b));

    // A deletes its own instance by uid.
    let deleted = raw_on(
        &a,
        "DELETE",
        &format!("{V1}/namespaces/ta/instances/{uid_a}"),
        &[],
        None,
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let gone = raw_on(
        &a,
        "GET",
        &format!("{V1}/namespaces/ta/instances/web"),
        &[],
        None,
    )
    .await;
    assert_eq!(gone.status, 404, "{}", gone.text());
}

#[tokio::test]
async fn immutable_fields_are_refused() {
    let env = start().await;
    create(&env, "demo", "instances", instance_in("demo", "web")).await;
    let path = format!("{V1}/namespaces/demo/instances/web");
    let patch = [("content-type", "application/merge-patch+json")];
    for (body, field) in [
        (json!({"spec": {"cpus": 4}}), "spec.cpus"),
        (json!({"spec": {"memory": 4096}}), "spec.memory"),
        (json!({"spec": {"disks": [{"size": 20}]}}), "spec.disks"),
    ] {
        let answer = env.raw("PATCH", &path, &patch, Some(body)).await;
        assert_eq!(answer.status, 422, "{}", answer.text());
        assert!(answer.text().contains("immutable"), "{}", answer.text());
        let causes = answer.json()["details"]["causes"].clone();
        assert!(
            causes
                .as_array()
                .expect("causes")
                .iter()
                .any(|c| c["field"].as_str().is_some_and(|f| f.starts_with(field))),
            "{field}: {causes}"
        );
    }
    // A mutable field still changes.
    let ok = env
        .raw(
            "PATCH",
            &path,
            &patch,
            Some(json!({"spec": {"powerState": "off"}})),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    let net = json!({"metadata": {"name": "net", "namespace": "demo"}, "spec": {"netblock": "10.0.0.0/24"}});
    let created = create(&env, "demo", "networks", net).await;
    let mut replaced = created.clone();
    replaced["spec"]["netblock"] = json!("10.1.0.0/24");
    let answer = env
        .raw(
            "PUT",
            &format!("{V1}/namespaces/demo/networks/net"),
            &[],
            Some(replaced),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.text().contains("spec.netblock"), "{}", answer.text());
    let stored = env
        .raw(
            "GET",
            &format!("{V1}/namespaces/demo/networks/net"),
            &[],
            None,
        )
        .await;
    assert_eq!(stored.json()["spec"]["netblock"], "10.0.0.0/24");
}

#[tokio::test]
async fn namespaces_on_the_resource_path_are_real_namespaces() {
    let env = start().await;
    let made = env
        .raw(
            "POST",
            &format!("{V1}/namespaces"),
            &[],
            Some(json!({"metadata": {"name": "tk", "labels": {"team": "k"}}, "spec": {}})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    assert_eq!(made.json()["metadata"]["labels"]["team"], "k");
    // It has a namespace row: keys can be added and used.
    let key = env
        .raw(
            "POST",
            "/auth/namespaces/tk/keys",
            &[],
            Some(json!({"key_name": "k", "key": "key-k"})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.text());
    assert_eq!(env.auth("tk", "key-k").await.status, 200);
    let system = env
        .raw("DELETE", &format!("{V1}/namespaces/system"), &[], None)
        .await;
    assert_eq!(system.status, 403, "{}", system.text());
    // A namespace with objects stays.
    create(&env, "tk", "instances", instance_in("tk", "web")).await;
    let busy = env
        .raw("DELETE", &format!("{V1}/namespaces/tk"), &[], None)
        .await;
    assert_eq!(busy.status, 409, "{}", busy.text());
    env.raw(
        "DELETE",
        &format!("{V1}/namespaces/tk/instances/web"),
        &[],
        None,
    )
    .await;
    let gone = env
        .raw("DELETE", &format!("{V1}/namespaces/tk"), &[], None)
        .await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(gone.json()["status"], "Success");
    assert_eq!(env.auth("tk", "key-k").await.status, 401);
}
