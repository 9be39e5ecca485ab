//! Resource semantics against a real private MariaDB.

mod common;

use serde_json::{Value, json};
use sf_database::StoreError;
use sf_database::store::resources::{ObjectKey, Preconditions, UpdateScope};
use sf_schema::selector::{FieldSelector, LabelSelector};

fn instance(name: &str, cpus: u32) -> Value {
    json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": "demo", "labels": {"tier": "web"}},
        "spec": {"cpus": cpus, "memory": 1024, "disks": [{"size": 8}]}
    })
}

fn rv(o: &Value) -> u64 {
    o["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn create_assigns_identity_and_a_duplicate_is_already_exists() {
    let (_db, store) = common::store().await;
    let before = store.current_revision().await.expect("rev");
    let created = store.create(instance("a", 1), false).await.expect("create");
    let o = &created.object;
    assert_eq!(created.resource_version, before + 1);
    assert_eq!(rv(o), before + 1);
    assert_eq!(o["metadata"]["generation"], 1);
    assert_eq!(o["metadata"]["uid"].as_str().map(str::len), Some(36));
    assert!(
        o["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let err = store
        .create(instance("a", 2), false)
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    // The failed create allocated no revision (no gap).
    assert_eq!(store.current_revision().await.expect("rev"), before + 1);
    let got = store
        .get(&ObjectKey::new("Instance", "demo", "a"))
        .await
        .expect("get");
    assert_eq!(got.object, created.object);
    let by_uid = store
        .get_by_uid("Instance", o["metadata"]["uid"].as_str().expect("uid"))
        .await
        .expect("by uid");
    assert_eq!(by_uid.object, created.object);
}

#[tokio::test]
async fn a_stale_resource_version_is_a_conflict_and_overwrites_nothing() {
    let (_db, store) = common::store().await;
    let created = store.create(instance("a", 1), false).await.expect("create");
    let mut first = created.object.clone();
    first["spec"]["cpus"] = json!(2);
    let updated = store
        .update(
            first,
            UpdateScope::Main,
            Preconditions {
                resource_version: Some(created.resource_version),
                uid: None,
            },
            false,
        )
        .await
        .expect("update");
    assert!(updated.resource_version > created.resource_version);
    let mut stale = created.object.clone();
    stale["spec"]["cpus"] = json!(4);
    let err = store
        .update(
            stale,
            UpdateScope::Main,
            Preconditions {
                resource_version: Some(created.resource_version),
                uid: None,
            },
            false,
        )
        .await
        .expect_err("stale");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let now = store
        .get(&ObjectKey::new("Instance", "demo", "a"))
        .await
        .expect("get");
    assert_eq!(now.object["spec"]["cpus"], 2);
}

#[tokio::test]
async fn generation_bumps_on_spec_only_and_a_no_op_keeps_the_resource_version() {
    let (_db, store) = common::store().await;
    let created = store.create(instance("a", 1), false).await.expect("create");
    // Same object again: nothing changes, no revision.
    let rev = store.current_revision().await.expect("rev");
    let same = store
        .update(
            created.object.clone(),
            UpdateScope::Main,
            Preconditions::default(),
            false,
        )
        .await
        .expect("noop");
    assert!(!same.changed);
    assert_eq!(same.resource_version, created.resource_version);
    assert_eq!(store.current_revision().await.expect("rev"), rev);

    // Labels only: new resourceVersion, same generation.
    let mut labels = created.object.clone();
    labels["metadata"]["labels"]["extra"] = json!("1");
    let l = store
        .update(labels, UpdateScope::Main, Preconditions::default(), false)
        .await
        .expect("labels");
    assert_eq!(l.object["metadata"]["generation"], 1);
    assert!(l.resource_version > created.resource_version);

    // Status: never bumps generation; the main endpoint ignores status.
    let mut status = l.object.clone();
    status["status"] = json!({"state": "created"});
    let s = store
        .update(
            status.clone(),
            UpdateScope::Status,
            Preconditions::default(),
            false,
        )
        .await
        .expect("status");
    assert_eq!(s.object["metadata"]["generation"], 1);
    assert_eq!(s.object["status"]["state"], "created");
    let mut via_main = s.object.clone();
    via_main["status"] = json!({"state": "error"});
    let m = store
        .update(via_main, UpdateScope::Main, Preconditions::default(), false)
        .await
        .expect("main");
    assert!(
        !m.changed,
        "status written through the main scope must be ignored"
    );

    // Spec: generation 2.
    let mut spec = s.object.clone();
    spec["spec"]["cpus"] = json!(3);
    let g = store
        .update(spec, UpdateScope::Main, Preconditions::default(), false)
        .await
        .expect("spec");
    assert_eq!(g.object["metadata"]["generation"], 2);
    assert_eq!(g.object["status"]["state"], "created");

    // Merge into status (the agent's path).
    let merged = store
        .merge_status(
            &ObjectKey::new("Instance", "demo", "a"),
            &json!({"powerState": "running"}),
        )
        .await
        .expect("merge");
    assert_eq!(merged.object["status"]["powerState"], "running");
    assert_eq!(merged.object["status"]["state"], "created");
    assert_eq!(merged.object["metadata"]["generation"], 2);
}

#[tokio::test]
async fn delete_waits_for_finalizers_then_removes_the_row() {
    let (_db, store) = common::store().await;
    let mut o = instance("a", 1);
    o["metadata"]["finalizers"] = json!(["shakenfist.io/instance"]);
    let created = store.create(o, false).await.expect("create");
    let key = ObjectKey::new("Instance", "demo", "a");
    let d = store
        .delete(&key, Preconditions::default(), false)
        .await
        .expect("delete");
    assert!(!d.removed);
    assert!(d.object["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(d.object["metadata"]["generation"], 2);
    let still = store.get(&key).await.expect("still there");
    assert!(still.object["metadata"]["deletionTimestamp"].is_string());
    // Deleting again changes nothing.
    let again = store
        .delete(&key, Preconditions::default(), false)
        .await
        .expect("again");
    assert_eq!(again.revision, still.resource_version);
    // Removing the last finalizer removes the object.
    let mut unfinalized = still.object.clone();
    unfinalized["metadata"]["finalizers"] = json!([]);
    store
        .update(
            unfinalized,
            UpdateScope::Main,
            Preconditions::default(),
            false,
        )
        .await
        .expect("drop finalizer");
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::NotFound { .. })
    ));
    // Its final state stays readable by uid (a tombstone) until purged with the
    // change log's retention; only for its kind.
    let uid = created.object["metadata"]["uid"].as_str().expect("uid");
    let tomb = store.get_deleted("Instance", uid).await.expect("tombstone");
    assert_eq!(tomb.object["metadata"]["name"], "a");
    assert!(tomb.object["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(tomb.object["metadata"]["finalizers"], json!([]));
    assert!(matches!(
        store.get_deleted("Network", uid).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store
            .purge_tombstones(std::time::Duration::from_secs(3600))
            .await
            .expect("purge"),
        0,
        "younger than the retention: kept"
    );
    assert_eq!(
        store
            .purge_tombstones(std::time::Duration::ZERO)
            .await
            .expect("purge"),
        1
    );
    assert!(matches!(
        store.get_deleted("Instance", uid).await,
        Err(StoreError::NotFound { .. })
    ));
    // A namespace's tombstones go with it: a namesake made later reads none.
    let b = store
        .create(instance("b", 1), false)
        .await
        .expect("create b");
    let key_b = ObjectKey::new("Instance", "demo", "b");
    store
        .delete(&key_b, Preconditions::default(), false)
        .await
        .expect("delete b");
    let uid_b = b.object["metadata"]["uid"].as_str().expect("uid");
    store
        .get_deleted("Instance", uid_b)
        .await
        .expect("tombstone b");
    store.delete_namespace("demo").await.expect("delete demo");
    assert!(matches!(
        store.get_deleted("Instance", uid_b).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn delete_without_finalizers_is_immediate_and_preconditions_hold() {
    let (_db, store) = common::store().await;
    let created = store.create(instance("a", 1), false).await.expect("create");
    let key = ObjectKey::new("Instance", "demo", "a");
    let err = store
        .delete(
            &key,
            Preconditions {
                resource_version: None,
                uid: Some("not-the-uid"),
            },
            false,
        )
        .await
        .expect_err("uid precondition");
    assert!(matches!(err, StoreError::Conflict { .. }));
    let d = store
        .delete(&key, Preconditions::default(), false)
        .await
        .expect("delete");
    assert!(d.removed);
    assert!(d.revision > created.resource_version);
    assert!(matches!(
        store.delete(&key, Preconditions::default(), false).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    let (_db, store) = common::store().await;
    let rev = store.current_revision().await.expect("rev");
    store
        .create(instance("a", 1), true)
        .await
        .expect("dry create");
    assert_eq!(store.current_revision().await.expect("rev"), rev);
    assert!(
        store
            .get(&ObjectKey::new("Instance", "demo", "a"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn lists_filter_by_namespace_and_selectors_with_the_snapshot_revision() {
    let (_db, store) = common::store().await;
    store.create(instance("a", 1), false).await.expect("a");
    let mut b = instance("b", 1);
    b["metadata"]["labels"] = json!({"tier": "db"});
    store.create(b, false).await.expect("b");
    let mut other = instance("c", 1);
    other["metadata"]["namespace"] = json!("other");
    let last = store.create(other, false).await.expect("c");
    let all = LabelSelector::default();
    let none = FieldSelector::default();
    let (items, rev) = store
        .list("Instance", Some("demo"), &all, &none)
        .await
        .expect("list");
    assert_eq!(items.len(), 2);
    assert_eq!(rev, last.resource_version);
    let (everywhere, _) = store
        .list("Instance", None, &all, &none)
        .await
        .expect("list all");
    assert_eq!(everywhere.len(), 3);
    let web = LabelSelector::parse("tier=web").expect("sel");
    let (webs, _) = store
        .list("Instance", None, &web, &none)
        .await
        .expect("web");
    assert_eq!(webs.len(), 2);
    let by_name = FieldSelector::parse("metadata.name=b").expect("sel");
    let (bs, _) = store
        .list("Instance", None, &all, &by_name)
        .await
        .expect("b");
    assert_eq!(bs.len(), 1);
    let (empty, rev2) = store
        .list("Network", None, &all, &none)
        .await
        .expect("empty");
    assert!(empty.is_empty());
    assert_eq!(
        rev2, last.resource_version,
        "an empty list still has the revision"
    );
}

#[tokio::test]
async fn concurrent_writers_never_lose_an_update_without_a_conflict() {
    let (_db, store) = common::store().await;
    store
        .create(instance("counter", 0), false)
        .await
        .expect("create");
    let key = ObjectKey::new("Instance", "demo", "counter");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let cur = store.get(&key).await.expect("get");
                let mut next = cur.object.clone();
                next["spec"]["cpus"] = json!(next["spec"]["cpus"].as_u64().expect("n") + 1);
                match store
                    .update(
                        next,
                        UpdateScope::Main,
                        Preconditions {
                            resource_version: Some(cur.resource_version),
                            uid: None,
                        },
                        false,
                    )
                    .await
                {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let end = store.get(&key).await.expect("get");
    assert_eq!(
        end.object["spec"]["cpus"], 80,
        "every successful CAS counted exactly once"
    );
}

#[tokio::test]
async fn the_floating_network_is_created_once_with_its_well_known_uid() {
    use sf_database::store::resources::FLOATING_NETWORK_UID;
    let (_db, store) = common::store().await;
    let created = store
        .ensure_floating_network("192.168.20.0/24")
        .await
        .expect("ensure")
        .expect("created the first time");
    assert_eq!(created.object["metadata"]["uid"], FLOATING_NETWORK_UID);
    assert!(created.object["metadata"].get("namespace").is_none());
    assert_eq!(created.object["spec"]["netblock"], "192.168.20.0/24");
    let stored = store
        .get_by_uid("Network", FLOATING_NETWORK_UID)
        .await
        .expect("found by its uid");
    assert_eq!(stored.resource_version, created.resource_version);
    assert!(
        store
            .ensure_floating_network("192.168.20.0/24")
            .await
            .expect("second")
            .is_none(),
        "the second run changes nothing"
    );
}

/// An object nested past what readers parse is refused with the reason, and nothing is
/// stored; one at the limit is stored and reads back (GET and the change feed).
#[tokio::test]
async fn an_object_nested_too_deep_to_read_back_is_refused() {
    use sf_database::store::resources::MAX_OBJECT_DEPTH;
    let (_db, store) = common::store().await;
    // `nested(n)` is n levels of arrays inside spec (itself 2 levels deep).
    let nested = |n: usize| {
        let mut v = json!(1);
        for _ in 0..n {
            v = json!([v]);
        }
        v
    };
    let before = store.current_revision().await.expect("rev");
    let mut deep = instance("deep", 1);
    deep["spec"]["x"] = nested(MAX_OBJECT_DEPTH - 1);
    let err = store.create(deep, false).await.expect_err("too deep");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("deeper than")),
        "{err}"
    );
    assert_eq!(
        store.current_revision().await.expect("rev"),
        before,
        "nothing stored"
    );
    let mut ok = instance("at-limit", 1);
    ok["spec"]["x"] = nested(MAX_OBJECT_DEPTH - 2);
    let created = store.create(ok, false).await.expect("at the limit");
    let got = store
        .get(&ObjectKey::new("Instance", "demo", "at-limit"))
        .await
        .expect("reads back");
    assert_eq!(got.object, created.object);
}
