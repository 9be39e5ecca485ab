//! Namespaces and keys against a real private MariaDB (DESIGN invariant 8).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use sea_orm::sqlx;
use serde_json::{Value, json};
use sf_database::StoreError;
use sf_database::store::ObjectKey;
use sf_database::store::ipam::{IP_DELETION_HALO_DURATION, ReserveRequest};
use sf_schema::ipam::ReservationType;

fn ns_key(name: &str) -> ObjectKey {
    ObjectKey::new("Namespace", "", name)
}

#[tokio::test]
async fn create_writes_the_row_and_a_cluster_scoped_object_once() {
    let (_db, store) = common::bare_store().await;
    let before = store.current_revision().await.expect("revision");
    let created = store.create_namespace("demo").await.expect("create");
    assert_eq!(created.resource_version, before + 1);
    let o = &created.object;
    assert_eq!(o["apiVersion"], "shakenfist.io/v1alpha1");
    assert_eq!(o["kind"], "Namespace");
    assert_eq!(o["metadata"]["name"], "demo");
    assert!(o["metadata"].get("namespace").is_none(), "{o}");
    assert_eq!(o["spec"], json!({"trust": []}));
    assert_eq!(o["status"], json!({"state": "created"}));
    assert_eq!(
        store.get(&ns_key("demo")).await.expect("get").object,
        created.object
    );
    let row_uid: String = sqlx::query_scalar("SELECT uid FROM namespaces WHERE name = 'demo'")
        .fetch_one(store.pool())
        .await
        .expect("row");
    assert_eq!(json!(row_uid), o["metadata"]["uid"]);

    let dup = store.create_namespace("demo").await.expect_err("duplicate");
    assert!(matches!(dup, StoreError::AlreadyExists { .. }), "{dup}");
    let bad = store
        .create_namespace("Not_A_Label")
        .await
        .expect_err("bad name");
    assert!(matches!(bad, StoreError::Invalid(_)), "{bad}");
    assert_eq!(
        store.current_revision().await.expect("revision"),
        before + 1
    );
}

#[tokio::test]
async fn system_cannot_be_deleted() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("system").await.expect("create");
    let err = store.delete_namespace("system").await.expect_err("system");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("system namespace"), "{err}");
    assert!(store.get(&ns_key("system")).await.is_ok());
}

#[tokio::test]
async fn a_namespace_with_objects_is_kept_and_unknown_ones_are_not_found() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("demo").await.expect("create");
    for name in ["a", "b"] {
        store
            .create(
                json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
                       "metadata": {"name": name, "namespace": "demo"}, "spec": {"cpus": 1}}),
                false,
            )
            .await
            .expect("instance");
    }
    let err = store.delete_namespace("demo").await.expect_err("busy");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("namespace demo still holds 2 Instance: delete them first"),
        "{err}"
    );
    assert!(store.get(&ns_key("demo")).await.is_ok());

    let missing = store.delete_namespace("nope").await.expect_err("missing");
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
}

#[tokio::test]
async fn delete_removes_keys_leftover_leases_and_the_object() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("demo").await.expect("create");
    store
        .put_key("demo", "admin", "$argon2id$hash-1")
        .await
        .expect("key");
    // An address resting in the halo after its network went: only its lease is left.
    let net = "0a000000-0000-4000-8000-000000000001";
    let r = store
        .reserve_address(&ReserveRequest {
            network_uid: net.into(),
            network_name: "web".into(),
            namespace: "demo".into(),
            netblock: "10.0.0.0/24".into(),
            address: Some(Ipv4Addr::new(10, 0, 0, 9)),
            reservation_type: ReservationType::Instance,
            owner: None,
            comment: None,
        })
        .await
        .expect("reserve");
    store
        .release_address(net, r.address, None, IP_DELETION_HALO_DURATION)
        .await
        .expect("release");
    let lease = ObjectKey::new("IPAMLease", "demo", "web-10-0-0-9");
    assert!(store.get(&lease).await.is_ok());

    let before = store.current_revision().await.expect("revision");
    let deleted = store.delete_namespace("demo").await.expect("delete");
    assert!(deleted.removed);
    assert_eq!(
        deleted.revision,
        before + 2,
        "one revision for the lease, one for the namespace"
    );
    assert!(matches!(
        store.get(&ns_key("demo")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get(&lease).await,
        Err(StoreError::NotFound { .. })
    ));
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM namespace_keys")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(keys, 0, "keys go with their namespace");
    assert!(matches!(
        store.list_keys("demo").await,
        Err(StoreError::NotFound { .. })
    ));
    // The name is free again.
    store.create_namespace("demo").await.expect("re-create");
}

#[tokio::test]
async fn every_put_gets_a_new_nonce() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("demo").await.expect("create");
    let first = store
        .put_key("demo", "deploy", "hash-1")
        .await
        .expect("put");
    assert_eq!(first.namespace, "demo");
    assert_eq!(first.key_name, "deploy");
    assert_eq!(first.key_hash, "hash-1");
    assert_eq!(store.get_key("demo", "deploy").await.expect("get"), first);

    let same_hash = store
        .put_key("demo", "deploy", "hash-1")
        .await
        .expect("put again");
    assert_ne!(
        same_hash.nonce, first.nonce,
        "a re-put must revoke old tokens"
    );
    let rotated = store
        .put_key("demo", "deploy", "hash-2")
        .await
        .expect("rotate");
    assert_ne!(rotated.nonce, same_hash.nonce);
    assert_eq!(rotated.key_hash, "hash-2");
    assert!(rotated.created_at >= first.created_at);
    assert_eq!(store.get_key("demo", "deploy").await.expect("get"), rotated);
}

#[tokio::test]
async fn keys_need_a_namespace_and_are_listed_with_hashes() {
    let (_db, store) = common::bare_store().await;
    let err = store
        .put_key("ghost", "k", "hash")
        .await
        .expect_err("no namespace");
    assert!(
        matches!(&err, StoreError::NotFound { kind, .. } if kind == "Namespace"),
        "{err}"
    );
    assert!(matches!(
        store.list_keys("ghost").await,
        Err(StoreError::NotFound { .. })
    ));

    store.create_namespace("demo").await.expect("create");
    store.create_namespace("other").await.expect("create");
    assert!(store.list_keys("demo").await.expect("empty").is_empty());
    store.put_key("demo", "b", "hash-b").await.expect("b");
    store.put_key("demo", "a", "hash-a").await.expect("a");
    store
        .put_key("other", "a", "hash-other")
        .await
        .expect("other");
    let keys = store.list_keys("demo").await.expect("list");
    let listed: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k.key_name.as_str(), k.key_hash.as_str()))
        .collect();
    assert_eq!(listed, vec![("a", "hash-a"), ("b", "hash-b")]);
    assert!(matches!(
        store.get_key("demo", "zzz").await,
        Err(StoreError::NotFound { .. })
    ));
    let bad = store
        .put_key("demo", "", "hash")
        .await
        .expect_err("empty name");
    assert!(matches!(bad, StoreError::Invalid(_)), "{bad}");
}

#[tokio::test]
async fn delete_key_removes_only_that_key() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("demo").await.expect("create");
    store.put_key("demo", "a", "hash-a").await.expect("a");
    store.put_key("demo", "b", "hash-b").await.expect("b");
    store.delete_key("demo", "a").await.expect("delete");
    assert!(matches!(
        store.get_key("demo", "a").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.get_key("demo", "b").await.expect("b").key_hash,
        "hash-b"
    );
    let again = store.delete_key("demo", "a").await.expect_err("twice");
    assert!(matches!(again, StoreError::NotFound { .. }), "{again}");
}

fn instance(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Instance",
           "metadata": {"name": name, "namespace": ns}, "spec": {"cpus": 1}})
}

fn operation(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "ClusterOperation",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"operationType": "instance_power_on",
                    "target": {"kind": "Instance", "name": "web", "namespace": ns,
                               "uid": format!("{ns}-{name}-target")},
                    "payload": {}}})
}

fn namespace_not_found(err: &StoreError, ns: &str) -> bool {
    matches!(err, StoreError::NotFound { kind, name, .. } if kind == "Namespace" && name == ns)
}

#[tokio::test]
async fn nothing_is_created_in_a_namespace_that_does_not_exist() {
    let (_db, store) = common::bare_store().await;
    let err = store
        .create(instance("ghost", "web"), false)
        .await
        .expect_err("no namespace");
    assert!(namespace_not_found(&err, "ghost"), "{err}");
    assert_eq!(err.to_string(), "Namespace \"ghost\" not found");
    let dry = store
        .create(instance("ghost", "web"), true)
        .await
        .expect_err("dry run too");
    assert!(namespace_not_found(&dry, "ghost"), "{dry}");
    let op = store
        .create_operation(operation("ghost", "op-1"), Duration::ZERO)
        .await
        .expect_err("operation");
    assert!(namespace_not_found(&op, "ghost"), "{op}");
    let lease = store
        .reserve_address(&ReserveRequest {
            network_uid: "0a000000-0000-4000-8000-000000000002".into(),
            network_name: "web".into(),
            namespace: "ghost".into(),
            netblock: "10.0.0.0/24".into(),
            address: None,
            reservation_type: ReservationType::Instance,
            owner: None,
            comment: None,
        })
        .await
        .expect_err("lease");
    assert!(namespace_not_found(&lease, "ghost"), "{lease}");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(rows, 0, "nothing stored");
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM work_queue")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(queued, 0, "nothing queued");

    // Cluster-scoped objects need no namespace; the namespace once made, creates work.
    store
        .create(
            json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Node",
                   "metadata": {"name": "hv1"}, "spec": {}}),
            false,
        )
        .await
        .expect("cluster-scoped");
    store.create_namespace("ghost").await.expect("namespace");
    store
        .create(instance("ghost", "web"), false)
        .await
        .expect("now it exists");
}

#[tokio::test]
async fn finished_operations_go_with_their_namespace_and_unfinished_ones_keep_it() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("demo").await.expect("create");
    store
        .create_operation(operation("demo", "done"), Duration::ZERO)
        .await
        .expect("op");
    let claimed = store
        .claim("", 1, "c-1", "agent", Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    store
        .complete(claimed[0].lease, json!({}))
        .await
        .expect("complete");
    store
        .create_operation(operation("demo", "queued"), Duration::ZERO)
        .await
        .expect("op");

    let err = store.delete_namespace("demo").await.expect_err("queued op");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("still holds 1 unfinished ClusterOperation"),
        "{err}"
    );

    let claimed = store
        .claim("", 1, "c-2", "agent", Duration::ZERO)
        .await
        .expect("claim");
    store
        .complete(claimed[0].lease, json!({}))
        .await
        .expect("complete");
    let before = store.current_revision().await.expect("revision");
    let deleted = store.delete_namespace("demo").await.expect("delete");
    assert_eq!(
        deleted.revision,
        before + 3,
        "a DELETED change for each finished operation, then the namespace"
    );
    for name in ["done", "queued"] {
        let key = ObjectKey::new("ClusterOperation", "demo", name);
        assert!(
            matches!(store.get(&key).await, Err(StoreError::NotFound { .. })),
            "{name} went with the namespace"
        );
    }
    let projection: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM cluster_operations WHERE namespace = 'demo'")
            .fetch_one(store.pool())
            .await
            .expect("count");
    assert_eq!(projection, 0);
}

/// Creates racing a namespace delete: every create either committed before the
/// delete looked (and the delete refused) or failed with NotFound after it; no object
/// is ever left in a namespace that is gone.
#[tokio::test]
async fn a_create_racing_a_namespace_delete_never_leaves_an_orphan() {
    let (_db, store) = common::bare_store().await;
    for round in 0..20 {
        let ns = format!("race-{round}");
        store.create_namespace(&ns).await.expect("create");
        let creators: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                let ns = ns.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        store
                            .create(instance(&ns, &format!("web-{i}")), false)
                            .await
                            .map(|_| ())
                    } else {
                        store
                            .create_operation(operation(&ns, &format!("op-{i}")), Duration::ZERO)
                            .await
                            .map(|_| ())
                    }
                })
            })
            .collect();
        let deleter = {
            let store = store.clone();
            let ns = ns.clone();
            tokio::spawn(async move { store.delete_namespace(&ns).await })
        };
        let mut created = 0;
        for c in creators {
            match c.await.expect("task") {
                Ok(()) => created += 1,
                Err(e) => assert!(namespace_not_found(&e, &ns), "{e}"),
            }
        }
        let deleted = deleter.await.expect("task");
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources WHERE namespace = ?")
            .bind(&ns)
            .fetch_one(store.pool())
            .await
            .expect("count");
        let row: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM namespaces WHERE name = ?")
            .bind(&ns)
            .fetch_one(store.pool())
            .await
            .expect("count");
        match deleted {
            Ok(_) => {
                assert_eq!(row, 0, "round {round}: deleted");
                assert_eq!(left, 0, "round {round}: an object outlived its namespace");
            }
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Conflict { .. }),
                    "round {round}: {e}"
                );
                assert_eq!(row, 1, "round {round}: kept");
                assert_eq!(
                    left, created,
                    "round {round}: every create that succeeded is there"
                );
            }
        }
    }
}

/// A database from before namespaces had to exist: objects in a namespace with no
/// row (and no Namespace object), and a Namespace object with no row.
#[tokio::test]
async fn namespaces_that_hold_objects_are_adopted_once() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("legacy").await.expect("create");
    store
        .create(instance("legacy", "web"), false)
        .await
        .expect("instance");
    for text in [
        "DELETE FROM namespaces WHERE name = 'legacy'",
        "DELETE FROM resources WHERE kind = 'Namespace' AND name = 'legacy'",
    ] {
        sqlx::query(text)
            .execute(store.pool())
            .await
            .expect("make it old");
    }
    let bare = store
        .create(
            json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Namespace",
                   "metadata": {"name": "bare"}, "spec": {"trust": []}}),
            false,
        )
        .await
        .expect("a Namespace object without its row");
    let err = store
        .create(instance("legacy", "db"), false)
        .await
        .expect_err("no row");
    assert!(namespace_not_found(&err, "legacy"), "{err}");

    let adopted = store.adopt_orphan_namespaces().await.expect("adopt");
    assert_eq!(adopted, vec!["bare".to_string(), "legacy".to_string()]);
    store
        .create(instance("legacy", "db"), false)
        .await
        .expect("creates work again");
    store
        .create(instance("bare", "db"), false)
        .await
        .expect("and in the adopted one");
    let legacy = store.get(&ns_key("legacy")).await.expect("object made");
    assert_eq!(legacy.object["status"]["state"], "created");
    let uid: String = sqlx::query_scalar("SELECT uid FROM namespaces WHERE name = 'bare'")
        .fetch_one(store.pool())
        .await
        .expect("row");
    assert_eq!(
        Some(uid.as_str()),
        bare.object["metadata"]["uid"].as_str(),
        "the row takes the existing object's uid"
    );
    assert_eq!(
        store.adopt_orphan_namespaces().await.expect("again"),
        Vec::<String>::new()
    );
}

/// A namespace's Blobs never pass to a later namespace of the same name: its
/// screenshots go with it (bytes and all); a blob with files on nodes passes to
/// `system`, whose blob controller still collects it.
#[tokio::test]
async fn a_deleted_namespaces_blobs_do_not_pass_to_its_namesake() {
    let (_db, store) = common::bare_store().await;
    store.create_namespace("demo").await.expect("create");
    let blob = |name: &str| {
        json!({"apiVersion": "shakenfist.io/v1alpha1", "kind": "Blob",
               "metadata": {"name": name}, "spec": {"ownerNamespace": "demo"}})
    };
    let shot = store.create(blob("shot"), false).await.expect("screenshot");
    let shot_uid = shot.object["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    store
        .put_blob_data(&shot_uid, "image/png", b"pixels")
        .await
        .expect("bytes");
    store
        .create(blob("image"), false)
        .await
        .expect("image blob");
    store
        .merge_status(
            &ObjectKey::new("Blob", "", "image"),
            &json!({"nodes": ["hv-1"], "state": "created"}),
        )
        .await
        .expect("on a node");
    let mut other = blob("theirs");
    other["spec"]["ownerNamespace"] = json!("other");
    store.create(other, false).await.expect("another's blob");

    let before = store.current_revision().await.expect("revision");
    let deleted = store.delete_namespace("demo").await.expect("delete");
    assert_eq!(
        deleted.revision,
        before + 3,
        "one change per owned blob, then the namespace"
    );
    assert!(matches!(
        store.get(&ObjectKey::new("Blob", "", "shot")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get_blob_data(&shot_uid).await.expect("get"), None);
    let image = store
        .get(&ObjectKey::new("Blob", "", "image"))
        .await
        .expect("kept for the collector");
    assert_eq!(image.object["spec"]["ownerNamespace"], "system");
    assert_eq!(image.object["status"]["nodes"], json!(["hv-1"]));
    let theirs = store
        .get(&ObjectKey::new("Blob", "", "theirs"))
        .await
        .expect("untouched");
    assert_eq!(theirs.object["spec"]["ownerNamespace"], "other");
}
