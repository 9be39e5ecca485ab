//! The resource endpoints through kube-rs's `Api<Instance>` and raw HTTP, against an
//! in-process sf-database over a private MariaDB.

mod common;

use common::{Env, instance, instance_json, raw_on, start};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sf_schema::{Instance, StringEnum};

fn api(env: &Env) -> Api<Instance> {
    Api::namespaced(env.client.clone(), "demo")
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn create_get_list_replace_and_stale_replace() {
    let env = start().await;
    let api = api(&env);

    let created = api
        .create(&PostParams::default(), &instance("web-1"))
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    let rv1 = created.metadata.resource_version.clone().expect("rv");
    assert_eq!(
        created.spec.disks[0].bus.wire(),
        "virtio",
        "defaults filled in"
    );

    let again = api_error(
        api.create(&PostParams::default(), &instance("web-1"))
            .await
            .expect_err("duplicate"),
    );
    assert_eq!(again.code, 409);
    assert_eq!(again.reason, "AlreadyExists");

    let got = api.get("web-1").await.expect("get");
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let missing = api_error(api.get("nope").await.expect_err("missing"));
    assert_eq!(missing.code, 404);
    assert_eq!(missing.reason, "NotFound");

    api.create(&PostParams::default(), &{
        let mut db = instance("db-1");
        db.metadata.labels = Some([("tier".to_string(), "db".to_string())].into());
        db
    })
    .await
    .expect("create db-1");
    let all = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(all.items.len(), 2);
    assert!(
        all.metadata
            .resource_version
            .as_deref()
            .is_some_and(|rv| !rv.is_empty())
    );
    let web = api
        .list(&ListParams::default().labels("tier=web"))
        .await
        .expect("list web");
    let names: Vec<_> = web.items.iter().map(|i| i.metadata.name.clone()).collect();
    assert_eq!(names, vec![Some("web-1".to_string())]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=db-1"))
        .await
        .expect("list by name");
    assert_eq!(by_name.items.len(), 1);

    // Replace: labels change, generation does not (spec unchanged); rv moves.
    let mut next = got.clone();
    next.metadata
        .labels
        .get_or_insert_default()
        .insert("colour".into(), "blue".into());
    let replaced = api
        .replace("web-1", &PostParams::default(), &next)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    assert_eq!(replaced.metadata.generation, Some(1));
    assert_eq!(
        replaced.metadata.labels.as_ref().unwrap().get("colour"),
        Some(&"blue".to_string())
    );

    // The same stale object again: 409 Conflict, nothing overwritten.
    let mut stale = got.clone();
    stale.spec.ssh_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI stale".into());
    let conflict = api_error(
        api.replace("web-1", &PostParams::default(), &stale)
            .await
            .expect_err("stale"),
    );
    assert_eq!(conflict.code, 409);
    assert_eq!(conflict.reason, "Conflict");
    let now = api.get("web-1").await.expect("get");
    assert_eq!(now.spec.ssh_key, None);

    // A spec change bumps generation; status sent on the main endpoint is ignored.
    let mut changed = now.clone();
    changed.spec.ssh_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI me".into());
    changed.status = Some(serde_json::from_value(json!({"state": "created"})).unwrap());
    let replaced = api
        .replace("web-1", &PostParams::default(), &changed)
        .await
        .expect("replace spec");
    assert_eq!(replaced.metadata.generation, Some(2));
    assert!(replaced.status.is_none(), "{:?}", replaced.status);
}

#[tokio::test]
async fn merge_and_json_patches_and_status() {
    let env = start().await;
    let api = api(&env);
    api.create(&PostParams::default(), &instance("web-1"))
        .await
        .expect("create");

    let merged = api
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"tier": "edge"}}, "spec": {"powerState": "off"}}),
            ),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged.metadata.labels.as_ref().unwrap().get("tier"),
        Some(&"edge".to_string())
    );
    assert_eq!(merged.spec.power_state.wire(), "off");
    assert_eq!(merged.metadata.generation, Some(2));

    // JSON patch with a passing `test` op (what kube's finalizer helper sends).
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/tier", "value": "edge"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["shakenfist.io/test"]},
    ]))
    .unwrap();
    let patched = api
        .patch("web-1", &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .expect("json patch");
    assert_eq!(
        patched.metadata.finalizers,
        Some(vec!["shakenfist.io/test".to_string()])
    );

    // A failing `test` op changes nothing: 422.
    let before = api.get("web-1").await.expect("get");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/tier", "value": "web"},
        {"op": "replace", "path": "/metadata/labels/tier", "value": "hacked"},
    ]))
    .unwrap();
    let failed = api_error(
        api.patch("web-1", &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .expect_err("test op fails"),
    );
    assert_eq!(failed.code, 422);
    let after = api.get("web-1").await.expect("get");
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );

    // A merge patch naming a stale resourceVersion: 409, not retried.
    let stale = api_error(
        api.patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}})),
        )
        .await
        .expect_err("stale patch"),
    );
    assert_eq!(stale.code, 409);

    // Status: written through /status, generation unchanged; the main endpoint
    // ignores status patches.
    let generation = after.metadata.generation;
    let with_status = api
        .patch_status(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "created", "node": "hv-1"}})),
        )
        .await
        .expect("patch status");
    assert_eq!(with_status.metadata.generation, generation);
    let status = with_status.status.clone().expect("status");
    assert_eq!(status.state.wire(), "created");
    assert_eq!(status.node.as_deref(), Some("hv-1"));
    let ignored = api
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"node": "hv-2"}})),
        )
        .await
        .expect("main patch of status");
    assert_eq!(ignored.status.unwrap().node.as_deref(), Some("hv-1"));
    assert_eq!(
        ignored.metadata.resource_version, with_status.metadata.resource_version,
        "a write that changes nothing keeps its resourceVersion"
    );
    let fetched = api.get_status("web-1").await.expect("get status");
    assert_eq!(fetched.status.unwrap().node.as_deref(), Some("hv-1"));

    // replace_status with the current object.
    let mut current = api.get("web-1").await.expect("get");
    current.status.as_mut().unwrap().node = Some("hv-3".into());
    current.spec.cpus = 7;
    let replaced = api
        .replace_status("web-1", &PostParams::default(), &current)
        .await
        .expect("replace status");
    assert_eq!(replaced.status.unwrap().node.as_deref(), Some("hv-3"));
    assert_eq!(replaced.spec.cpus, 1, "status writes never touch spec");
    assert_eq!(replaced.metadata.generation, generation);
}

#[tokio::test]
async fn delete_with_a_finalizer_waits_for_it() {
    let env = start().await;
    let api = api(&env);
    let mut held = instance("held");
    held.metadata.finalizers = Some(vec!["shakenfist.io/test".into()]);
    api.create(&PostParams::default(), &held)
        .await
        .expect("create");

    let pending = api
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let object = pending
        .left()
        .expect("the object while the finalizer holds it");
    assert!(object.metadata.deletion_timestamp.is_some());
    let still = api.get("held").await.expect("still there");
    assert!(still.metadata.deletion_timestamp.is_some());
    assert_eq!(env.count_rows("Instance"), 1);

    // Remove the finalizer the way kube's finalizer helper does.
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "shakenfist.io/test"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]))
    .unwrap();
    api.patch("held", &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .expect("remove finalizer");
    let gone = api_error(api.get("held").await.expect_err("gone"));
    assert_eq!(gone.code, 404);
    assert_eq!(env.count_rows("Instance"), 0);

    // Without finalizers, delete answers a Status.
    api.create(&PostParams::default(), &instance("free"))
        .await
        .expect("create");
    let status = api
        .delete("free", &DeleteParams::default())
        .await
        .expect("delete")
        .right()
        .expect("a Status");
    assert!(status.is_success(), "{status:?}");
    let again = api_error(
        api.delete("free", &DeleteParams::default())
            .await
            .expect_err("already gone"),
    );
    assert_eq!(again.code, 404);
}

#[tokio::test]
async fn dry_run_and_validation_store_nothing() {
    let env = start().await;
    let api = api(&env);

    let dry = api
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &instance("dry"),
        )
        .await
        .expect("dry run create");
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert_eq!(env.count_rows("Instance"), 0);

    let mut bad = instance_json("bad");
    bad["spec"]["cpus"] = json!(0);
    bad["spec"]["memory"] = json!(1);
    bad["spec"]["disks"] = json!([{"size": 8, "bus": "ide"}]);
    let answer = env
        .raw(
            "POST",
            "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances",
            &[],
            Some(bad),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(!answer.text().trim_end().contains('\n'), "one line");
    let status = answer.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["kind"], "Instance");
    assert_eq!(status["details"]["name"], "bad");
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    for field in ["spec.cpus", "spec.memory", "spec.disks[0].bus"] {
        assert!(fields.contains(&field), "{field} in {fields:?}");
    }
    assert!(
        status["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["reason"] == "FieldValueNotSupported")
    );
    assert_eq!(env.count_rows("Instance"), 0);

    // A wrong type is 422 with the field path too.
    let mut typed = instance_json("typed");
    typed["spec"]["cpus"] = json!("two");
    let answer = env
        .raw(
            "POST",
            "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances",
            &[],
            Some(typed),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert_eq!(answer.json()["details"]["causes"][0]["field"], "spec.cpus");

    // Unknown fields: 400 under Strict, pruned with a warning otherwise.
    let mut unknown = instance_json("unknown");
    unknown["spec"]["cpu"] = json!(2);
    let strict = env
        .raw(
            "POST",
            "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances?fieldValidation=Strict",
            &[],
            Some(unknown.clone()),
        )
        .await;
    assert_eq!(strict.status, 400, "{}", strict.text());
    assert!(
        strict.text().contains("unknown field \\\"spec.cpu\\\""),
        "{}",
        strict.text()
    );
    assert_eq!(env.count_rows("Instance"), 0);
    let warned = env
        .raw(
            "POST",
            "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances",
            &[],
            Some(unknown),
        )
        .await;
    assert_eq!(warned.status, 201, "{}", warned.text());
    assert!(warned.json()["spec"].get("cpu").is_none());
    let warning = warned.headers.get("warning").expect("warning header");
    assert!(warning.to_str().unwrap().contains("spec.cpu"));
    assert_eq!(env.count_rows("Instance"), 1);

    // An invalid patch stores nothing either.
    let rv = api.get("unknown").await.unwrap().metadata.resource_version;
    let invalid = api_error(
        api.patch(
            "unknown",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"powerState": "sideways"}})),
        )
        .await
        .expect_err("invalid patch"),
    );
    assert_eq!(invalid.code, 422);
    assert_eq!(
        api.get("unknown").await.unwrap().metadata.resource_version,
        rv
    );
}

#[tokio::test]
async fn http_errors_are_status_objects() {
    let env = start().await;
    let base = "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances";
    env.raw("POST", base, &[], Some(instance_json("web-1")))
        .await;

    // Empty query pairs are fine.
    let list = env
        .raw("GET", &format!("{base}?&limit=500"), &[], None)
        .await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list["kind"], "InstanceList");
    assert_eq!(list["apiVersion"], "shakenfist.io/v1alpha1");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["kind"], "Instance");

    // Server-side apply and strategic merge: 415.
    for media in [
        "application/apply-patch+yaml",
        "application/strategic-merge-patch+json",
    ] {
        let answer = env
            .raw(
                "PATCH",
                &format!("{base}/web-1?fieldManager=x"),
                &[("content-type", media)],
                Some(json!({"metadata": {"labels": {"a": "b"}}})),
            )
            .await;
        assert_eq!(answer.status, 415, "{media}");
        assert_eq!(answer.json()["reason"], "UnsupportedMediaType");
    }

    // The path's namespace wins; a different one in the body is 400.
    let mut elsewhere = instance_json("web-2");
    elsewhere["metadata"]["namespace"] = json!("other");
    let answer = env.raw("POST", base, &[], Some(elsewhere)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["reason"], "BadRequest");
    let mut bare = instance_json("web-3");
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let answer = env.raw("POST", base, &[], Some(bare)).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.json()["metadata"]["namespace"], "demo");

    // PUT without a resourceVersion: 422.
    let answer = env
        .raw(
            "PUT",
            &format!("{base}/web-1"),
            &[],
            Some(instance_json("web-1")),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text());

    // Unknown paths and verbs.
    let answer = env
        .raw(
            "GET",
            "/apis/shakenfist.io/v1alpha1/namespaces/demo/pods",
            &[],
            None,
        )
        .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["reason"], "NotFound");
    let answer = env.raw("GET", "/nope", &[], None).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["kind"], "Status");
    let answer = env.raw("DELETE", base, &[], None).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.json()["reason"], "MethodNotAllowed");
    let answer = env.raw("POST", "/version", &[], None).await;
    assert_eq!(answer.status, 405);
    let answer = env.raw("GET", &format!("{base}/missing"), &[], None).await;
    assert_eq!(
        answer.json(),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "instances.shakenfist.io \"missing\" not found", "reason": "NotFound",
            "details": {"name": "missing", "group": "shakenfist.io", "kind": "instances"},
            "code": 404
        })
    );

    // Request ids: echoed when sane, generated otherwise.
    let answer = env
        .raw("GET", "/healthz", &[("x-request-id", "req-42")], None)
        .await;
    assert_eq!(answer.headers["x-request-id"], "req-42");
    let answer = env.raw("GET", "/healthz", &[], None).await;
    let generated = answer.headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
}

#[tokio::test]
async fn cluster_scoped_kinds_and_all_namespace_lists() {
    let env = start().await;
    let nodes: Api<sf_schema::Node> = Api::all(env.client.clone());
    let node: sf_schema::Node = serde_json::from_value(json!({
        "apiVersion": "shakenfist.io/v1alpha1", "kind": "Node",
        "metadata": {"name": "hv-1.example.com"},
        "spec": {}
    }))
    .unwrap();
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    assert_eq!(created.metadata.namespace, None);
    assert!(nodes.get("hv-1.example.com").await.is_ok());

    // A namespaced object needs its namespace: 404 naming the namespace, as apiserver.
    let other: Api<Instance> = Api::namespaced(env.client.clone(), "other");
    let mut i = instance("web-1");
    i.metadata.namespace = Some("other".into());
    match other.create(&PostParams::default(), &i).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404, "{s:?}");
            assert_eq!(s.reason, "NotFound");
            let details = s.details.expect("details");
            assert_eq!(
                (details.kind.as_str(), details.name.as_str()),
                ("namespaces", "other")
            );
            assert!(s.message.contains("\"other\" not found"), "{}", s.message);
        }
        other => panic!("create in a missing namespace: {other:?}"),
    }
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    assert!(
        matches!(other.create(&dry, &i).await, Err(kube::Error::Api(s)) if s.code == 404),
        "a dry run is refused the same way"
    );
    env.add_namespace("other").await;
    for ns in ["demo", "other"] {
        let api: Api<Instance> = Api::namespaced(env.client.clone(), ns);
        let mut i = instance("web-1");
        i.metadata.namespace = Some(ns.into());
        api.create(&PostParams::default(), &i)
            .await
            .expect("create");
    }
    let all: Api<Instance> = Api::all(env.client.clone());
    let listed = all.list(&ListParams::default()).await.expect("list all");
    let namespaces: Vec<Option<String>> = listed
        .items
        .iter()
        .map(|i| i.metadata.namespace.clone())
        .collect();
    assert_eq!(
        namespaces,
        vec![Some("demo".to_string()), Some("other".to_string())]
    );
    let demo: Api<Instance> = Api::namespaced(env.client.clone(), "demo");
    assert_eq!(
        demo.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let value: Value = serde_json::to_value(&listed.items[0]).unwrap();
    assert_eq!(value["apiVersion"], "shakenfist.io/v1alpha1");
}

/// A tenant's update cannot drop the controllers' finalizers (their cleanup would be
/// skipped by the next delete); its own finalizers are its business.
#[tokio::test]
async fn a_tenant_keeps_the_controllers_finalizers() {
    let env = start().await;
    let tenant = env.tenant("fin", "key-fin").await;
    let path = "/apis/shakenfist.io/v1alpha1/namespaces/fin/instances";
    let mut held = instance_json("held");
    held["metadata"]["namespace"] = json!("fin");
    let made = raw_on(&tenant, "POST", path, &[], Some(held)).await;
    assert_eq!(made.status, 201, "{}", made.text());
    // The controller's finalizer, as the instance controller adds it.
    let held = env
        .raw(
            "PATCH",
            &format!("{path}/held"),
            &[("content-type", "application/merge-patch+json")],
            Some(json!({"metadata": {"finalizers": ["shakenfist.io/cleanup"]}})),
        )
        .await;
    assert_eq!(held.status, 200, "{}", held.text());
    let finalizers = |v: &Value| v["metadata"]["finalizers"].clone();

    // A merge patch that clears them keeps the controller's, sets the tenant's own.
    let patched = raw_on(
        &tenant,
        "PATCH",
        &format!("{path}/held"),
        &[("content-type", "application/merge-patch+json")],
        Some(json!({"metadata": {"finalizers": ["example.com/mine"]}})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(
        finalizers(&patched.json()),
        json!(["example.com/mine", "shakenfist.io/cleanup"])
    );
    // A PUT without finalizers: the same.
    let mut body = patched.json();
    body["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("finalizers");
    let put = raw_on(&tenant, "PUT", &format!("{path}/held"), &[], Some(body)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(finalizers(&put.json()), json!(["shakenfist.io/cleanup"]));
    // So a delete waits for the controller.
    let deleted = raw_on(&tenant, "DELETE", &format!("{path}/held"), &[], None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert!(deleted.json()["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(env.count_rows("Instance"), 1);
}

/// A Network whose netblock overlaps the floating network is refused at once, on
/// both faces, with the field named; nothing is stored.
#[tokio::test]
async fn a_netblock_inside_the_floating_network_is_refused() {
    let env = start().await;
    let mut args = sf_database::MariaDbArgs::local_root(env.db.port, &env.db.name);
    args.pool_size = 1;
    let store = sf_database::Store::new(sf_database::connect_pool(&args).await.expect("pool"));
    store
        .ensure_floating_network("192.168.20.0/24")
        .await
        .expect("the floating network");
    let path = "/apis/shakenfist.io/v1alpha1/namespaces/demo/networks";
    let network = |name: &str, netblock: &str| {
        json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Network",
               "metadata": {"name": name, "namespace": "demo"},
               "spec": {"netblock": netblock}})
    };
    let before = env.count_rows("Network");
    for netblock in ["192.168.20.0/24", "192.168.20.64/26", "192.168.0.0/16"] {
        let refused = env
            .raw("POST", path, &[], Some(network("inside", netblock)))
            .await;
        assert_eq!(refused.status, 422, "{netblock}: {}", refused.text());
        assert_eq!(
            refused.json()["details"]["causes"][0]["field"],
            "spec.netblock",
            "{}",
            refused.text()
        );
    }
    let v08 = env
        .raw(
            "POST",
            "/networks",
            &[],
            Some(json!({"name": "inside", "netblock": "192.168.20.0/28", "namespace": "demo"})),
        )
        .await;
    assert_eq!(v08.status, 422, "{}", v08.text());
    assert!(
        v08.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("floating network")),
        "{}",
        v08.text()
    );
    assert_eq!(env.count_rows("Network"), before, "nothing stored");
    let fine = env
        .raw(
            "POST",
            path,
            &[],
            Some(network("outside", "192.168.21.0/24")),
        )
        .await;
    assert_eq!(fine.status, 201, "{}", fine.text());
}
