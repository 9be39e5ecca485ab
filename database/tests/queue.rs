//! The work queue against a real private MariaDB: create, claim, fencing, dependencies,
//! per-target exclusion, failure and backoff, abort, the reaper, retention, and a
//! 20,000-operation drain through 16 claimers on two gateway pools.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx;
use serde_json::{Value, json};
use sf_database::store::ObjectKey;
use sf_database::store::queue::{CLUSTER_OP_MAX_ATTEMPTS, Claimed, ErrorReport, Lease};
use sf_database::{Store, StoreError};

const NS: &str = "demo";

/// Every claim of each operation uid: (claimer, attempt).
type ClaimLog = Arc<Mutex<HashMap<String, Vec<(String, u32)>>>>;

/// A ClusterOperation on the cluster queue, normal priority, targeting `target`.
fn op(name: &str, target: &str) -> Value {
    json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": "ClusterOperation",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "operationType": "instance_power_on",
            "target": {"kind": "Instance", "name": format!("i-{target}"), "namespace": NS, "uid": target},
            "payload": {}
        }
    })
}

/// Sets `spec.<field>`.
fn with(mut v: Value, field: &str, value: Value) -> Value {
    v["spec"][field] = value;
    v
}

fn on_node(v: Value, node: &str) -> Value {
    with(v, "node", json!(node))
}

fn depends(v: Value, deps: &[&str]) -> Value {
    with(v, "dependsOn", json!(deps))
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("ClusterOperation", NS, name)
}

fn name_of(c: &Claimed) -> String {
    c.object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn names(claimed: &[Claimed]) -> Vec<String> {
    claimed.iter().map(name_of).collect()
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(store.pool())
        .await
        .expect(sql)
}

async fn text(store: &Store, sql: &str) -> Option<String> {
    sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_optional(store.pool())
        .await
        .expect(sql)
        .flatten()
}

async fn exec(store: &Store, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(store.pool())
        .await
        .expect(sql);
}

async fn state(store: &Store, name: &str) -> String {
    let stored = store.get(&key(name)).await.expect("get operation");
    stored.object["status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn uid_of(store: &Store, name: &str) -> String {
    let stored = store.get(&key(name)).await.expect("get operation");
    stored.object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn claim_now(store: &Store, node: &str, max: u32) -> Vec<Claimed> {
    store
        .claim(
            node,
            max,
            &uuid::Uuid::new_v4().to_string(),
            "test-claimer",
            Duration::ZERO,
        )
        .await
        .expect("claim")
}

fn is_stale(r: &Result<impl std::fmt::Debug, StoreError>) -> bool {
    matches!(r, Err(StoreError::StaleLease { .. }))
}

fn report(code: &str, retryable: bool) -> ErrorReport {
    ErrorReport {
        code: code.into(),
        message: format!("{code} happened"),
        retryable,
    }
}

#[tokio::test]
async fn create_writes_operation_projection_and_queue_row_in_one_transaction() {
    let (_tdb, store) = common::store().await;
    let rev0 = store.current_revision().await.expect("revision");
    let stored = store
        .create_operation(
            with(on_node(op("a", "t1"), "hv-1"), "priority", json!("high")),
            Duration::ZERO,
        )
        .await
        .expect("create");
    assert_eq!(stored.resource_version, rev0 + 1);
    assert_eq!(
        stored.object["status"],
        json!({"state": "queued", "attempts": 0})
    );
    let uid = stored.object["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    assert_eq!(
        store.get(&key("a")).await.expect("get").object,
        stored.object
    );

    let projection = text(
        &store,
        &format!("SELECT CONCAT_WS('|', CAST(state AS CHAR), target_uid, priority, node, operation_type) FROM cluster_operations WHERE uid = '{uid}'"),
    )
    .await;
    assert_eq!(
        projection.as_deref(),
        Some("queued|t1|0|hv-1|instance_power_on")
    );
    let queue = text(
        &store,
        &format!("SELECT CONCAT_WS('|', queue_name, priority, waiting_on, target_uid, attempts, claimed_at IS NULL) FROM work_queue WHERE op_uid = '{uid}'"),
    )
    .await;
    assert_eq!(queue.as_deref(), Some("node:hv-1|0|0|t1|0|1"));
    let change = text(
        &store,
        &format!(
            "SELECT CONCAT(event_type, '|', uid) FROM change_log WHERE revision = {}",
            rev0 + 1
        ),
    )
    .await;
    assert_eq!(change, Some(format!("ADDED|{uid}")));
    assert_eq!(store.queue_depth().await.expect("depth"), 1);

    // A duplicate name: AlreadyExists, no revision spent, still exactly one of each row.
    let err = store
        .create_operation(op("a", "t2"), Duration::ZERO)
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, StoreError::AlreadyExists { ref name, .. } if name == "a"),
        "{err:?}"
    );
    // A batch with a duplicate in it writes nothing at all.
    let err = store
        .create_operations(vec![
            (op("b", "t3"), Duration::ZERO),
            (op("a", "t4"), Duration::ZERO),
        ])
        .await
        .expect_err("duplicate in batch");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    // An unknown dependency is refused by name.
    let err = store
        .create_operation(depends(op("c", "t5"), &["nope"]), Duration::ZERO)
        .await
        .expect_err("unknown dependency");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("demo/nope")),
        "{err}"
    );
    // So is a bad priority.
    let err = store
        .create_operation(
            with(op("d", "t6"), "priority", json!("urgent")),
            Duration::ZERO,
        )
        .await
        .expect_err("bad priority");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");

    assert_eq!(store.current_revision().await.expect("revision"), rev0 + 1);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM cluster_operations").await,
        1
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM work_queue").await, 1);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM resources WHERE kind = 'ClusterOperation'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM operation_dependencies").await,
        0
    );
}

#[tokio::test]
async fn claims_come_by_priority_then_time_and_a_repeated_claim_id_gets_the_same_rows() {
    let (_tdb, store) = common::store().await;
    let plan = [
        ("low", "t1", "low", None),
        ("normal-1", "t2", "normal", None),
        ("high-1", "t3", "high", None),
        ("high-2", "t4", "high", Some("hv-1")),
        ("other-node", "t6", "high", Some("hv-2")),
        ("normal-2", "t7", "normal", Some("hv-1")),
    ];
    for (name, target, priority, node) in plan {
        let mut v = with(op(name, target), "priority", json!(priority));
        if let Some(node) = node {
            v = on_node(v, node);
        }
        store
            .create_operation(v, Duration::ZERO)
            .await
            .expect("create");
    }
    store
        .create_operation(
            with(op("later", "t5"), "priority", json!("high")),
            Duration::from_secs(3600),
        )
        .await
        .expect("create delayed");
    let rev = store.current_revision().await.expect("revision");

    let first = store
        .claim("hv-1", 10, "claim-1", "hv-1", Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(
        names(&first),
        ["high-1", "high-2", "normal-1", "normal-2", "low"]
    );
    for c in &first {
        assert_eq!(c.lease.attempt, 1);
        assert_eq!(c.object["status"]["state"], "executing");
        assert_eq!(c.object["status"]["claimedBy"], "hv-1");
        assert_eq!(c.object["status"]["attempts"], 1);
    }
    // A claim writes no revision and leaves the stored resource queued.
    assert_eq!(store.current_revision().await.expect("revision"), rev);
    assert_eq!(state(&store, "high-1").await, "queued");

    // The lost-response retry gets the same rows.
    let again = store
        .claim("hv-1", 10, "claim-1", "hv-1", Duration::ZERO)
        .await
        .expect("claim again");
    let leases: Vec<Lease> = first.iter().map(|c| c.lease).collect();
    assert_eq!(again.iter().map(|c| c.lease).collect::<Vec<_>>(), leases);
    assert_eq!(names(&again), names(&first));
    // A new claim finds nothing more for hv-1 (the delayed one is not due).
    assert!(claim_now(&store, "hv-1", 10).await.is_empty());
    assert_eq!(names(&claim_now(&store, "hv-2", 10).await), ["other-node"]);
    assert_eq!(store.queue_depth().await.expect("depth"), 1);
    // The batch limit holds.
    for i in 0..3 {
        store
            .create_operation(op(&format!("more-{i}"), &format!("m{i}")), Duration::ZERO)
            .await
            .expect("create");
    }
    assert_eq!(claim_now(&store, "", 2).await.len(), 2);
}

#[tokio::test]
async fn long_poll_returns_work_enqueued_during_the_wait_and_nothing_after_an_idle_wait() {
    let (tdb, store) = common::store().await;
    let started = Instant::now();
    let none = store
        .claim("hv-1", 5, "idle", "hv-1", Duration::from_millis(300))
        .await
        .expect("idle claim");
    let idle = started.elapsed();
    assert!(none.is_empty());
    assert!(idle >= Duration::from_millis(300), "{idle:?}");
    assert!(idle < Duration::from_secs(3), "{idle:?}");

    // Work created through another gateway pool during the wait is returned at once.
    let other = common::second_store(&tdb, 2).await;
    let creator = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        other
            .create_operation(on_node(op("late", "t1"), "hv-1"), Duration::ZERO)
            .await
            .expect("create");
    });
    let started = Instant::now();
    let got = store
        .claim("hv-1", 5, "waiting", "hv-1", Duration::from_secs(10))
        .await
        .expect("waiting claim");
    let waited = started.elapsed();
    creator.await.expect("creator");
    assert_eq!(names(&got), ["late"]);
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "returned late: {waited:?}");
}

#[tokio::test]
async fn stale_leases_are_fenced_and_change_nothing() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(op("a", "t1"), Duration::ZERO)
        .await
        .expect("create");
    store
        .create_operation(op("b", "t2"), Duration::ZERO)
        .await
        .expect("create");
    let claimed = claim_now(&store, "", 2).await;
    assert_eq!(names(&claimed), ["a", "b"]);
    let lease = claimed[0].lease;
    let other = claimed[1].lease;
    let started = claimed[0].object["status"]["startedAt"].clone();
    assert!(started.is_string(), "{}", claimed[0].object);
    // The claim stores the instant it shows: claimed_at and heartbeat_at are one value.
    let stamps = text(
        &store,
        &format!(
            "SELECT CONCAT(claimed_at = heartbeat_at, '|', attempts) FROM work_queue WHERE id = {}",
            lease.id
        ),
    )
    .await;
    assert_eq!(stamps.as_deref(), Some("1|1"));
    let row_sql = format!(
        "SELECT CONCAT_WS('|', attempts, claim_id, claimed_by, claimed_at, heartbeat_at, scheduled_at) FROM work_queue WHERE id = {}",
        lease.id
    );
    let row_before = text(&store, &row_sql).await;
    let rev = store.current_revision().await.expect("revision");
    let object_before = store.get(&key("a")).await.expect("get");

    let wrong = Lease {
        attempt: lease.attempt + 1,
        ..lease
    };
    let gone = Lease {
        id: lease.id + 1_000_000,
        ..lease
    };
    assert!(is_stale(&store.heartbeat(wrong).await));
    assert!(is_stale(&store.complete(wrong, json!({})).await));
    assert!(is_stale(&store.fail(wrong, report("Boom", false)).await));
    assert!(is_stale(&store.heartbeat(gone).await));
    assert!(is_stale(&store.complete(gone, json!({})).await));
    assert_eq!(store.current_revision().await.expect("revision"), rev);
    assert_eq!(text(&store, &row_sql).await, row_before);
    assert_eq!(store.get(&key("a")).await.expect("get"), object_before);

    assert!(store.heartbeat(lease).await.expect("heartbeat"));
    let done = store
        .complete(lease, json!({"domain": "ok"}))
        .await
        .expect("complete");
    assert_eq!(done.resource_version, rev + 1);
    let status = &done.object["status"];
    assert_eq!(status["state"], "complete");
    assert_eq!(status["result"], json!({"domain": "ok"}));
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["claimedBy"], "test-claimer");
    assert!(status["completedAt"].is_string(), "{status}");
    // The completion reads startedAt from the stored claimed_at: the claim showed the same.
    assert_eq!(status["startedAt"], started);
    assert_eq!(store.get(&key("a")).await.expect("get").object, done.object);
    assert_eq!(
        count(
            &store,
            &format!("SELECT COUNT(*) FROM work_queue WHERE id = {}", lease.id)
        )
        .await,
        0
    );
    let uid = uid_of(&store, "a").await;
    assert_eq!(
        text(
            &store,
            &format!("SELECT CAST(state AS CHAR) FROM cluster_operations WHERE uid = '{uid}'")
        )
        .await
        .as_deref(),
        Some("complete")
    );

    // The finished lease is stale now; a batch reports each lease on its own.
    assert!(is_stale(&store.complete(lease, json!({})).await));
    assert!(is_stale(&store.heartbeat(lease).await));
    let results = store
        .complete_batch(vec![(other, json!({"n": 2})), (lease, json!({}))])
        .await
        .expect("batch");
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0].as_ref().expect("b completes").object["status"]["state"],
        "complete"
    );
    assert!(is_stale(&results[1]));
    assert_eq!(store.current_revision().await.expect("revision"), rev + 2);
}

#[tokio::test]
async fn a_dependent_is_not_claimable_until_its_dependency_completes() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(op("a", "ta"), Duration::ZERO)
        .await
        .expect("a");
    store
        .create_operation(depends(op("b", "tb"), &["a"]), Duration::ZERO)
        .await
        .expect("b");
    store
        .create_operation(depends(op("c", "tc"), &["a", "b", "a"]), Duration::ZERO)
        .await
        .expect("c");
    let waiting = |name: &'static str| {
        let store = store.clone();
        async move {
            let uid = uid_of(&store, name).await;
            count(
                &store,
                &format!(
                    "SELECT CAST(waiting_on AS SIGNED) FROM work_queue WHERE op_uid = '{uid}'"
                ),
            )
            .await
        }
    };
    assert_eq!(waiting("b").await, 1);
    assert_eq!(waiting("c").await, 2);

    let first = claim_now(&store, "", 10).await;
    assert_eq!(names(&first), ["a"]);
    assert!(claim_now(&store, "", 10).await.is_empty());
    store
        .complete(first[0].lease, json!({}))
        .await
        .expect("complete a");
    assert_eq!(waiting("c").await, 1);
    let second = claim_now(&store, "", 10).await;
    assert_eq!(names(&second), ["b"]);
    store
        .complete(second[0].lease, json!({}))
        .await
        .expect("complete b");
    assert_eq!(names(&claim_now(&store, "", 10).await), ["c"]);

    // A dependency already complete does not hold anything back; nor does one earlier
    // in the same batch once it completes.
    store
        .create_operations(vec![
            (depends(op("d", "td"), &["a"]), Duration::ZERO),
            (depends(op("e", "te"), &["d"]), Duration::ZERO),
        ])
        .await
        .expect("batch");
    assert_eq!(waiting("d").await, 0);
    assert_eq!(waiting("e").await, 1);
    let d = claim_now(&store, "", 10).await;
    assert_eq!(names(&d), ["d"]);
    store
        .complete(d[0].lease, json!({}))
        .await
        .expect("complete d");
    assert_eq!(names(&claim_now(&store, "", 10).await), ["e"]);
}

#[tokio::test]
async fn failure_aborts_dependents_transitively_and_refuses_new_ones() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(op("a", "ta"), Duration::ZERO)
        .await
        .expect("a");
    store
        .create_operation(depends(op("b", "tb"), &["a"]), Duration::ZERO)
        .await
        .expect("b");
    store
        .create_operation(depends(op("c", "tc"), &["b"]), Duration::ZERO)
        .await
        .expect("c");
    let rev = store.current_revision().await.expect("revision");
    let a = claim_now(&store, "", 10).await;
    assert_eq!(names(&a), ["a"]);
    let failed = store
        .fail(a[0].lease, report("DomainStartFailed", false))
        .await
        .expect("fail");
    assert_eq!(failed.object["status"]["state"], "error");
    assert_eq!(
        failed.object["status"]["errorReport"]["code"],
        "DomainStartFailed"
    );
    for name in ["b", "c"] {
        let o = store.get(&key(name)).await.expect("get").object;
        assert_eq!(o["status"]["state"], "abort", "{name}");
        assert_eq!(
            o["status"]["errorReport"]["code"], "DependencyFailed",
            "{name}"
        );
    }
    let b = store.get(&key("b")).await.expect("get").object;
    assert!(
        b["status"]["errorReport"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("demo/a ended in error")
    );
    // One revision per operation.
    assert_eq!(store.current_revision().await.expect("revision"), rev + 3);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM work_queue").await, 0);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM cluster_operations WHERE state = 'abort'"
        )
        .await,
        2
    );

    let err = store
        .create_operation(depends(op("d", "td"), &["a"]), Duration::ZERO)
        .await
        .expect_err("depends on a failed op");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("demo/a failed")),
        "{err}"
    );
}

#[tokio::test]
async fn one_target_is_never_claimed_twice_at_once() {
    let (tdb, store) = common::store().await;
    for i in 0..3 {
        store
            .create_operation(op(&format!("t-{i}"), "shared"), Duration::ZERO)
            .await
            .expect("create");
    }
    store
        .create_operation(op("u", "alone"), Duration::ZERO)
        .await
        .expect("create");
    let first = claim_now(&store, "", 10).await;
    assert_eq!(names(&first), ["t-0", "u"]);
    assert!(claim_now(&store, "", 10).await.is_empty());
    store
        .complete(first[0].lease, json!({}))
        .await
        .expect("complete");
    let next = claim_now(&store, "", 10).await;
    assert_eq!(names(&next), ["t-1"]);
    store
        .complete(next[0].lease, json!({}))
        .await
        .expect("complete");
    let last = claim_now(&store, "", 10).await;
    store
        .complete(last[0].lease, json!({}))
        .await
        .expect("complete");
    store
        .complete(first[1].lease, json!({}))
        .await
        .expect("complete");

    // Eight claimers over two gateway pools race for 6 targets x 10 operations.
    let second = common::second_store(&tdb, 8).await;
    let mut batch = Vec::new();
    for t in 0..6 {
        for i in 0..10 {
            batch.push((
                op(&format!("r-{t}-{i}"), &format!("target-{t}")),
                Duration::ZERO,
            ));
        }
    }
    store.create_operations(batch).await.expect("create");
    let busy: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let violations = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..8 {
        let s = if k % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        let (busy, violations, completed) = (busy.clone(), violations.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let claimer = format!("claimer-{k}");
            while completed.load(Ordering::SeqCst) < 60 {
                let got = s
                    .claim(
                        "",
                        4,
                        &uuid::Uuid::new_v4().to_string(),
                        &claimer,
                        Duration::from_millis(50),
                    )
                    .await
                    .expect("claim");
                for c in &got {
                    let target = c.object["spec"]["target"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let mut map = busy.lock().expect("busy map");
                    if let Some(holder) = map.insert(target.clone(), name_of(c)) {
                        eprintln!("{target} claimed by {} while {holder} runs", name_of(c));
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
                for c in &got {
                    let target = c.object["spec"]["target"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    busy.lock().expect("busy map").remove(&target);
                    s.complete(c.lease, json!({})).await.expect("complete");
                    completed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let all = futures::future::join_all(tasks);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the race finished in time")
        .into_iter()
        .for_each(|r| r.expect("claimer"));
    assert_eq!(violations.load(Ordering::SeqCst), 0);
    assert_eq!(completed.load(Ordering::SeqCst), 60);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM cluster_operations WHERE name LIKE 'r-%' AND state = 'complete'"
        )
        .await,
        60
    );
}

#[tokio::test]
async fn a_retryable_failure_backs_off_and_the_fifth_failure_is_an_error() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(op("flaky", "t1"), Duration::ZERO)
        .await
        .expect("create");
    let uid = uid_of(&store, "flaky").await;
    let delay_sql = format!(
        "SELECT TIMESTAMPDIFF(MICROSECOND, NOW(6), scheduled_at) FROM work_queue WHERE op_uid = '{uid}'"
    );
    for attempt in 1..=CLUSTER_OP_MAX_ATTEMPTS {
        let claimed = claim_now(&store, "", 1).await;
        assert_eq!(names(&claimed), ["flaky"], "attempt {attempt}");
        assert_eq!(claimed[0].lease.attempt, attempt);
        let stored = store
            .fail(claimed[0].lease, report("NetworkFlap", true))
            .await
            .expect("fail");
        let status = &stored.object["status"];
        assert_eq!(status["attempts"], attempt);
        assert_eq!(status["errorReport"]["code"], "NetworkFlap");
        if attempt < CLUSTER_OP_MAX_ATTEMPTS {
            assert_eq!(status["state"], "queued");
            let expected = 1_000_000i64 << (attempt - 1);
            let delay = count(&store, &delay_sql).await;
            assert!(
                delay > expected - 500_000 && delay <= expected,
                "attempt {attempt}: {delay} µs"
            );
            assert!(claim_now(&store, "", 1).await.is_empty(), "backing off");
            exec(
                &store,
                &format!("UPDATE work_queue SET scheduled_at = NOW(6) WHERE op_uid = '{uid}'"),
            )
            .await;
        } else {
            assert_eq!(status["state"], "error");
            let message = status["errorReport"]["message"]
                .as_str()
                .unwrap_or_default();
            assert!(message.contains("gave up after 5 attempts"), "{message}");
        }
    }
    assert_eq!(state(&store, "flaky").await, "error");
    assert_eq!(count(&store, "SELECT COUNT(*) FROM work_queue").await, 0);
    assert!(claim_now(&store, "", 1).await.is_empty());

    // A failure that is not retryable is an error at once.
    store
        .create_operation(op("broken", "t2"), Duration::ZERO)
        .await
        .expect("create");
    let claimed = claim_now(&store, "", 1).await;
    let stored = store
        .fail(claimed[0].lease, report("BadDiskBus", false))
        .await
        .expect("fail");
    assert_eq!(stored.object["status"]["state"], "error");
    assert_eq!(stored.object["status"]["attempts"], 1);
}

#[tokio::test]
async fn abort_keeps_snapshots_and_stops_executing_work() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(
            with(
                op("reboot", "inst"),
                "operationType",
                json!("instance_reboot"),
            ),
            Duration::ZERO,
        )
        .await
        .expect("reboot");
    let running = claim_now(&store, "", 1).await;
    assert_eq!(names(&running), ["reboot"]);
    let lease = running[0].lease;
    store
        .create_operation(op("power-on", "inst"), Duration::ZERO)
        .await
        .expect("power on");
    store
        .create_operation(
            depends(
                with(
                    op("snap", "inst"),
                    "operationType",
                    json!("instance_snapshot"),
                ),
                &["reboot"],
            ),
            Duration::ZERO,
        )
        .await
        .expect("snapshot");
    store
        .create_operation(depends(op("plug", "other"), &["power-on"]), Duration::ZERO)
        .await
        .expect("dependent on another target");
    store
        .create_operation(op("bystander", "else"), Duration::ZERO)
        .await
        .expect("bystander");

    let (aborted, kept) = store
        .abort("inst", "instance deleted")
        .await
        .expect("abort");
    assert_eq!(aborted, ["demo/plug", "demo/power-on", "demo/reboot"]);
    assert_eq!(kept, ["demo/snap"]);
    let reboot = store.get(&key("reboot")).await.expect("get").object;
    assert_eq!(reboot["status"]["state"], "abort");
    assert_eq!(
        reboot["status"]["errorReport"]["message"],
        "instance deleted"
    );
    assert_eq!(state(&store, "power-on").await, "abort");
    assert_eq!(state(&store, "plug").await, "abort");
    assert_eq!(state(&store, "snap").await, "queued");
    assert_eq!(state(&store, "bystander").await, "queued");
    let snap_uid = uid_of(&store, "snap").await;
    assert_eq!(
        count(
            &store,
            &format!(
                "SELECT CAST(waiting_on AS SIGNED) FROM work_queue WHERE op_uid = '{snap_uid}'"
            )
        )
        .await,
        0,
        "the kept snapshot is released"
    );

    // The aborted operation's claimer is told to stop; the target stays busy until it does.
    assert!(!store.heartbeat(lease).await.expect("heartbeat"));
    assert_eq!(names(&claim_now(&store, "", 10).await), ["bystander"]);
    let rev = store.current_revision().await.expect("revision");
    assert!(is_stale(&store.complete(lease, json!({})).await));
    assert_eq!(store.current_revision().await.expect("revision"), rev);
    assert_eq!(state(&store, "reboot").await, "abort");
    let snap = claim_now(&store, "", 10).await;
    assert_eq!(names(&snap), ["snap"]);
    store
        .complete(snap[0].lease, json!({}))
        .await
        .expect("snapshot completes");
    assert_eq!(
        store.abort("inst", "again").await.expect("abort"),
        (vec![], vec![])
    );
}

#[tokio::test]
async fn the_reaper_requeues_a_vanished_claimer_and_rejects_at_max_attempts() {
    let (tdb, store) = common::store().await;
    store
        .create_operation(op("a", "t1"), Duration::ZERO)
        .await
        .expect("create");
    let ghost = store
        .claim("", 1, "ghost-claim", "ghost", Duration::ZERO)
        .await
        .expect("claim");
    let ghost_lease = ghost[0].lease;
    // Young claims are left alone.
    assert_eq!(
        store
            .reap_stuck(Duration::from_secs(60), 5)
            .await
            .expect("reap"),
        (0, 0)
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        store
            .reap_stuck(Duration::from_millis(20), 5)
            .await
            .expect("reap"),
        (1, 0)
    );
    assert!(is_stale(&store.heartbeat(ghost_lease).await));
    assert_eq!(state(&store, "a").await, "queued");

    // Another gateway's claimer takes it over and completes it, exactly once.
    let other = common::second_store(&tdb, 2).await;
    let alive = other
        .claim("", 1, "alive-claim", "alive", Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(names(&alive), ["a"]);
    assert_eq!(alive[0].lease.attempt, 2);
    assert!(is_stale(
        &store.complete(ghost_lease, json!({"by": "ghost"})).await
    ));
    let done = other
        .complete(alive[0].lease, json!({"by": "alive"}))
        .await
        .expect("complete");
    assert_eq!(done.object["status"]["result"]["by"], "alive");
    assert_eq!(done.object["status"]["attempts"], 2);
    assert_eq!(done.object["status"]["claimedBy"], "alive");
    assert!(is_stale(&store.complete(ghost_lease, json!({})).await));
    let uid = uid_of(&store, "a").await;
    assert_eq!(
        count(&store, &format!("SELECT COUNT(*) FROM change_log WHERE uid = '{uid}' AND JSON_VALUE(object, '$.status.state') = 'complete'")).await,
        1
    );

    // Claimed max_attempts times without completing: rejected, with the reason.
    store
        .create_operation(op("b", "t2"), Duration::ZERO)
        .await
        .expect("create");
    store
        .create_operation(depends(op("after-b", "t3"), &["b"]), Duration::ZERO)
        .await
        .expect("create");
    for round in 1..=3u32 {
        let got = claim_now(&store, "", 1).await;
        assert_eq!(names(&got), ["b"]);
        assert_eq!(got[0].lease.attempt, round);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let expected = if round < 3 { (1, 0) } else { (0, 1) };
        assert_eq!(
            store
                .reap_stuck(Duration::from_millis(10), 3)
                .await
                .expect("reap"),
            expected
        );
    }
    let b = store.get(&key("b")).await.expect("get").object;
    assert_eq!(b["status"]["state"], "error");
    assert_eq!(
        b["status"]["errorReport"]["message"],
        "claimed 3 times without completing; rejected by the reaper"
    );
    assert_eq!(state(&store, "after-b").await, "abort");
    assert_eq!(count(&store, "SELECT COUNT(*) FROM work_queue").await, 0);
}

#[tokio::test]
async fn purge_removes_old_terminal_operations_with_a_deleted_change() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(op("done", "t1"), Duration::ZERO)
        .await
        .expect("create");
    store
        .create_operation(op("pending", "t2"), Duration::from_secs(3600))
        .await
        .expect("create");
    let claimed = claim_now(&store, "", 5).await;
    assert_eq!(names(&claimed), ["done"]);
    store
        .complete(claimed[0].lease, json!({}))
        .await
        .expect("complete");
    let uid = uid_of(&store, "done").await;
    assert_eq!(
        store
            .purge_terminal_operations(Duration::from_secs(3600))
            .await
            .expect("purge"),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rev = store.current_revision().await.expect("revision");
    assert_eq!(
        store
            .purge_terminal_operations(Duration::ZERO)
            .await
            .expect("purge"),
        1
    );
    assert!(matches!(
        store.get(&key("done")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        text(
            &store,
            &format!(
                "SELECT CONCAT(event_type, '|', uid) FROM change_log WHERE revision = {}",
                rev + 1
            )
        )
        .await,
        Some(format!("DELETED|{uid}"))
    );
    assert_eq!(
        count(
            &store,
            &format!("SELECT COUNT(*) FROM cluster_operations WHERE uid = '{uid}'")
        )
        .await,
        0
    );
    assert_eq!(state(&store, "pending").await, "queued");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM cluster_operations").await,
        1
    );
}

/// THE acceptance test: 16 claimers over two gateway pools drain 20,000 operations;
/// none is claimed twice, none is lost, and it finishes in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_operations_drain_through_sixteen_claimers_on_two_gateways() {
    const TOTAL: usize = 20_000;
    const TARGETS: usize = 5_000;
    const BATCH: usize = 250;
    const CLAIMERS: usize = 16;
    let deadline = Duration::from_secs(240);
    let run = async {
        let (tdb, first) = common::store_with_pool(12).await;
        let second = common::second_store(&tdb, 12).await;
        let stores = [first.clone(), second.clone()];

        // Enqueue: 4 creators, 250 operations per transaction, over 4 node queues and
        // the cluster queue; 4 operations per target.
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut creators = Vec::new();
        for c in 0..4 {
            let store = stores[c % 2].clone();
            let next = next.clone();
            creators.push(tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(BATCH, Ordering::SeqCst);
                    if start >= TOTAL {
                        break;
                    }
                    let batch = (start..(start + BATCH).min(TOTAL))
                        .map(|i| {
                            let mut v = op(&format!("op-{i}"), &format!("target-{}", i % TARGETS));
                            if i % 5 != 4 {
                                v = on_node(v, &format!("hv-{}", i % 5));
                            }
                            (v, Duration::ZERO)
                        })
                        .collect();
                    store.create_operations(batch).await.expect("create batch");
                }
            }));
        }
        for c in creators {
            c.await.expect("creator");
        }
        let enqueue = started.elapsed();
        assert_eq!(first.queue_depth().await.expect("depth"), TOTAL as u64);

        // Drain: 16 claimers, 8 per gateway pool, 4 per node, claiming batches of 32.
        let claims: ClaimLog = Arc::default();
        let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
        let violations = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let claim_calls = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut claimers = Vec::new();
        for k in 0..CLAIMERS {
            let store = stores[k % 2].clone();
            let (claims, busy, violations, completed, claim_calls) = (
                claims.clone(),
                busy.clone(),
                violations.clone(),
                completed.clone(),
                claim_calls.clone(),
            );
            claimers.push(tokio::spawn(async move {
                let node = format!("hv-{}", k % 4);
                let claimer = format!("claimer-{k}");
                while completed.load(Ordering::SeqCst) < TOTAL {
                    let got = store
                        .claim(
                            &node,
                            32,
                            &uuid::Uuid::new_v4().to_string(),
                            &claimer,
                            Duration::from_millis(100),
                        )
                        .await
                        .expect("claim");
                    claim_calls.fetch_add(1, Ordering::Relaxed);
                    let mut batch = Vec::with_capacity(got.len());
                    {
                        let mut claims = claims.lock().expect("claims");
                        let mut busy = busy.lock().expect("busy");
                        for c in &got {
                            let uid = c.object["metadata"]["uid"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string();
                            let target = c.object["spec"]["target"]["uid"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string();
                            let seen = claims.entry(uid).or_default();
                            seen.push((claimer.clone(), c.lease.attempt));
                            if seen.len() > 1 || !busy.insert(target) {
                                violations.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        for c in &got {
                            busy.remove(
                                c.object["spec"]["target"]["uid"]
                                    .as_str()
                                    .unwrap_or_default(),
                            );
                            batch.push((c.lease, json!({"by": claimer})));
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let results = store.complete_batch(batch).await.expect("complete batch");
                    for r in results {
                        r.expect("completed");
                        completed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        for c in claimers {
            c.await.expect("claimer");
        }
        let drain = started.elapsed();

        assert_eq!(
            violations.load(Ordering::SeqCst),
            0,
            "an operation or target was claimed twice"
        );
        assert_eq!(completed.load(Ordering::SeqCst), TOTAL);
        {
            let claims = claims.lock().expect("claims");
            assert_eq!(claims.len(), TOTAL, "every operation was claimed");
            assert!(claims.values().all(|v| v.len() == 1 && v[0].1 == 1));
        }
        assert_eq!(
            count(&first, "SELECT COUNT(*) FROM resources WHERE kind = 'ClusterOperation' AND JSON_VALUE(object, '$.status.state') = 'complete'").await,
            TOTAL as i64
        );
        assert_eq!(
            count(
                &first,
                "SELECT COUNT(*) FROM cluster_operations WHERE state = 'complete'"
            )
            .await,
            TOTAL as i64
        );
        assert_eq!(count(&first, "SELECT COUNT(*) FROM work_queue").await, 0);
        // Every write took one revision: 20,000 creates and 20,000 completions (after
        // the test namespaces').
        assert_eq!(
            first.current_revision().await.expect("revision"),
            2 * TOTAL as u64 + common::TEST_NAMESPACES.len() as u64
        );
        println!(
            "{}",
            json!({
                "benchmark": "queue_drain_20k",
                "operations": TOTAL,
                "claimers": CLAIMERS,
                "gateway_pools": 2,
                "enqueue_seconds": enqueue.as_secs_f64(),
                "enqueue_per_second": TOTAL as f64 / enqueue.as_secs_f64(),
                "drain_seconds": drain.as_secs_f64(),
                "drain_per_second": TOTAL as f64 / drain.as_secs_f64(),
                "claim_calls": claim_calls.load(Ordering::Relaxed),
            })
        );
    };
    tokio::time::timeout(deadline, run)
        .await
        .expect("the 20,000-operation drain finished within 240 s");
}

/// Concurrent calls share transactions (the store's write combiner), yet each call gets
/// the outcome it would have had alone: a duplicate name fails only its own call, a
/// stale lease only its own slot, and nothing else is lost or doubled.
#[tokio::test]
async fn concurrent_calls_are_combined_but_keep_their_own_outcomes() {
    let (_tdb, store) = common::store().await;
    // 24 creates at once; two of them share a name.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = store.clone();
        let name = if i == 23 {
            "c-0".to_string()
        } else {
            format!("c-{i}")
        };
        let target = format!("00000000-0000-0000-0000-{i:012}");
        tasks.push(tokio::spawn(async move {
            store
                .create_operation(on_node(op(&name, &target), "hv-c"), Duration::ZERO)
                .await
        }));
    }
    let mut created = 0;
    let mut duplicates = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists { name, .. }) => {
                assert_eq!(name, "c-0");
                duplicates += 1;
            }
            Err(e) => panic!("unexpected outcome: {e}"),
        }
    }
    assert_eq!((created, duplicates), (23, 1));
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM work_queue").await,
        23,
        "one queue row per created operation"
    );

    // Claim them all, then complete them concurrently, one call per lease, plus a
    // call with a lease that was never issued.
    let claimed = claim_now(&store, "hv-c", 100).await;
    assert_eq!(claimed.len(), 23);
    let mut tasks = Vec::new();
    for c in &claimed {
        let store = store.clone();
        let lease = c.lease;
        tasks.push(tokio::spawn(async move {
            store.complete(lease, json!({"ok": true})).await
        }));
    }
    let bogus = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .complete(
                    Lease {
                        id: 999_999,
                        attempt: 1,
                    },
                    json!({}),
                )
                .await
        })
    };
    // Creates in the same burst share transactions with the completions.
    let mut creates = Vec::new();
    for i in 0..5 {
        let store = store.clone();
        let target = format!("00000000-0000-0000-0001-{i:012}");
        creates.push(tokio::spawn(async move {
            store
                .create_operation(
                    on_node(op(&format!("d-{i}"), &target), "hv-d"),
                    Duration::ZERO,
                )
                .await
        }));
    }
    for t in tasks {
        let stored = t.await.expect("task").expect("complete");
        assert_eq!(stored.object["status"]["state"], "complete");
    }
    for t in creates {
        let stored = t.await.expect("task").expect("create");
        assert_eq!(stored.object["status"]["state"], "queued");
    }
    assert!(
        is_stale(&bogus.await.expect("task")),
        "only the bogus call fails"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM work_queue").await,
        5,
        "only the new operations are queued"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM cluster_operations WHERE state = 'complete'"
        )
        .await,
        23
    );
}

/// A combined transaction that fails as a whole (an unknown dependency, a name that
/// exists already) is rerun call by call: only the bad calls fail.
#[tokio::test]
async fn a_bad_call_in_a_combined_batch_fails_alone() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(
            op("exists", "00000000-0000-0000-0002-000000000000"),
            Duration::ZERO,
        )
        .await
        .expect("first create");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        let target = format!("00000000-0000-0000-0002-{:012}", i + 1);
        let object = match i {
            4 => depends(op("e-4", &target), &["no-such-operation"]),
            7 => op("exists", &target),
            _ => op(&format!("e-{i}"), &target),
        };
        tasks.push(tokio::spawn(async move {
            store.create_operation(object, Duration::ZERO).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("task"));
    }
    for (i, outcome) in outcomes.iter().enumerate() {
        match (i, outcome) {
            (4, Err(StoreError::Invalid(message))) => {
                assert!(message.contains("no-such-operation"), "{message}");
            }
            (7, Err(StoreError::AlreadyExists { name, .. })) => assert_eq!(name, "exists"),
            (4 | 7, other) => panic!("call {i} should fail alone, got {other:?}"),
            (_, Ok(stored)) => assert_eq!(stored.object["status"]["state"], "queued"),
            (_, Err(e)) => panic!("call {i} failed with its neighbours: {e}"),
        }
    }
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM work_queue").await,
        11,
        "the first operation and the ten good calls"
    );
}

/// With MariaDB gone, a combined batch's calls all get `Unavailable` from the one
/// attempt, instead of each being rerun alone and waiting for the pool again (which
/// would take the pool's 30 s acquire timeout once per call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_fails_every_call_of_a_batch_at_once() {
    let server = sf_harness::MariaDb::start(&sf_harness::ServerOptions::default()).expect("server");
    let tdb = server.create_database().expect("database");
    let mut args = sf_database::MariaDbArgs::local_root(tdb.port, &tdb.name);
    args.acquire_timeout_secs = 5;
    let db = sf_database::connect(&args).await.expect("connect");
    sf_database::ensure_schema(&db).await.expect("schema");
    db.close().await.expect("close");
    let store = Store::new(sf_database::connect_pool(&args).await.expect("pool"));
    server.shutdown().expect("shutdown");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        let target = format!("00000000-0000-0000-0003-{i:012}");
        tasks.push(tokio::spawn(async move {
            store
                .create_operation(op(&format!("lost-{i}"), &target), Duration::ZERO)
                .await
        }));
    }
    for t in tasks {
        let outcome = t.await.expect("task");
        assert!(
            matches!(outcome, Err(StoreError::Unavailable { .. })),
            "{outcome:?}"
        );
    }
    // The lone first call's pool wait (5 s here), then one for the batch of the other
    // five (the write combiner has one worker): far below the six waits that rerunning
    // each call would cost.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// Concurrent claims of one node share a look and a locking transaction, but each gets
/// at most its max, under its own claim_id (a replay returns exactly its rows), and no
/// row goes to two claims.
#[tokio::test]
async fn concurrent_claims_are_combined_but_each_keeps_its_own_rows() {
    let (_tdb, store) = common::store().await;
    for i in 0..40 {
        let target = format!("00000000-0000-0000-0002-{i:012}");
        store
            .create_operation(
                on_node(op(&format!("k-{i}"), &target), "hv-k"),
                Duration::ZERO,
            )
            .await
            .expect("create");
    }
    // 12 claims at once, max 1, 2 or 3 (24 rows asked for, 40 ready).
    let mut tasks = Vec::new();
    for i in 0..12u32 {
        let store = store.clone();
        let claim_id = format!("combined-{i}");
        let max = 1 + i % 3;
        tasks.push(tokio::spawn(async move {
            let claimed = store
                .claim_queues(
                    "hv-k",
                    false,
                    max,
                    &claim_id,
                    &format!("claimer-{i}"),
                    Duration::ZERO,
                )
                .await
                .expect("claim");
            (claim_id, max, claimed)
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        let (claim_id, max, claimed) = t.await.expect("task");
        assert!(
            !claimed.is_empty(),
            "{claim_id} got nothing with work ready"
        );
        assert!(
            claimed.len() <= max as usize,
            "{claim_id} got more than its max"
        );
        for c in &claimed {
            assert!(seen.insert(c.lease.id), "row {} claimed twice", c.lease.id);
            assert_eq!(c.object["status"]["state"], "executing");
        }
        total += claimed.len();
        // Each claim's rows are stored under its own claim_id and claimer.
        let again = store
            .claim_queues(
                "hv-k",
                false,
                max,
                &claim_id,
                "someone-else",
                Duration::ZERO,
            )
            .await
            .expect("replay");
        let mut a: Vec<u64> = claimed.iter().map(|c| c.lease.id).collect();
        let mut b: Vec<u64> = again.iter().map(|c| c.lease.id).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "the replay of {claim_id} returns its rows, no others");
        // The replay stamped their heartbeat: a put-back of an undelivered attempt
        // (which only takes rows never heartbeated) can no longer take them.
        assert_eq!(
            count(
                &store,
                &format!(
                    "SELECT COUNT(*) FROM work_queue WHERE claim_id = '{claim_id}' AND heartbeat_at > claimed_at"
                )
            )
            .await,
            a.len() as i64,
            "the replay of {claim_id} stamps its rows' heartbeat"
        );
        let by = claimed[0].object["status"]["claimedBy"]
            .as_str()
            .map(str::to_string);
        assert_eq!(
            by,
            Some(format!(
                "claimer-{}",
                claim_id.trim_start_matches("combined-")
            )),
            "claimedBy is the claim's own claimer"
        );
    }
    assert_eq!(total, 24, "every claim got its full max (40 were ready)");
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM work_queue WHERE claimed_at IS NOT NULL"
        )
        .await,
        24
    );
}

/// Agents of different nodes claiming at once share one locking transaction (one scan
/// over every queue they ask for), yet each gets only its own node's work and the
/// cluster queue's.
#[tokio::test]
async fn claims_of_different_nodes_share_a_round_but_take_only_their_own_queues() {
    let (_tdb, store) = common::store().await;
    let nodes = ["hv-x", "hv-y", "hv-z"];
    let mut n = 0;
    for node in nodes {
        for i in 0..10 {
            let target = format!("00000000-0000-0000-0003-{n:012}");
            n += 1;
            store
                .create_operation(
                    on_node(op(&format!("{node}-{i}"), &target), node),
                    Duration::ZERO,
                )
                .await
                .expect("create");
        }
    }
    for i in 0..4 {
        let target = format!("00000000-0000-0000-0003-{n:012}");
        n += 1;
        store
            .create_operation(op(&format!("cluster-{i}"), &target), Duration::ZERO)
            .await
            .expect("create");
    }
    // 12 claims at once, 4 per node, max 2; only hv-x's also take the cluster queue.
    let mut tasks = Vec::new();
    for i in 0..12usize {
        let store = store.clone();
        let node = nodes[i % nodes.len()];
        tasks.push(tokio::spawn(async move {
            let claimed = store
                .claim_queues(
                    node,
                    node == "hv-x",
                    2,
                    &format!("nodes-{i}"),
                    &format!("agent-{node}"),
                    Duration::ZERO,
                )
                .await
                .expect("claim");
            (node, claimed)
        }));
    }
    let mut seen = HashSet::new();
    let mut rounds: HashMap<String, HashSet<&str>> = HashMap::new();
    for t in tasks {
        let (node, claimed) = t.await.expect("task");
        assert_eq!(claimed.len(), 2, "a claim of {node} got less than its max");
        for c in &claimed {
            assert!(seen.insert(c.lease.id), "row {} claimed twice", c.lease.id);
            let from = c.object["spec"]["node"].as_str();
            assert!(
                from == Some(node) || (from.is_none() && node == "hv-x"),
                "a claim of {node} got {} (node {from:?})",
                name_of(c)
            );
            // Rows of one claim transaction share its claimed_at (its NOW(6)).
            let started = c.object["status"]["startedAt"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            rounds.entry(started).or_default().insert(node);
        }
    }
    assert!(
        rounds.values().any(|nodes| nodes.len() > 1),
        "no claim transaction served two nodes: {rounds:?}"
    );
}

/// A claim whose caller goes away while its attempt runs (here: held up by a table lock)
/// puts its rows back, with the attempt undone, instead of stranding them until the
/// reaper's threshold.
#[tokio::test]
async fn a_claim_whose_caller_went_away_puts_its_rows_back() {
    let (_tdb, store) = common::store().await;
    store
        .create_operation(
            on_node(op("gone-1", "00000000-0000-0000-0003-000000000001"), "hv-g"),
            Duration::ZERO,
        )
        .await
        .expect("create");
    let mut blocker = store.pool().acquire().await.expect("connection");
    sqlx::query("LOCK TABLES work_queue WRITE, work_queue AS w WRITE, work_queue AS b WRITE, resources AS r READ")
        .execute(&mut *blocker)
        .await
        .expect("lock tables");
    let claim = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .claim_queues(
                    "hv-g",
                    false,
                    1,
                    "gone-claim",
                    "vanishing",
                    Duration::from_secs(30),
                )
                .await
        })
    };
    // Wait until the attempt is held up by the lock inside the claim combiner.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &store,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE LIKE 'Waiting for table%'",
    )
    .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the claim never reached the table lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    claim.abort();
    assert!(claim.await.is_err(), "the claim was cancelled");
    sqlx::query("UNLOCK TABLES")
        .execute(&mut *blocker)
        .await
        .expect("unlock");
    drop(blocker);
    // The attempt runs after the caller left: it claims the row, finds nobody to give
    // it to and puts it back. Until then the row is claimed and nobody else gets it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = loop {
        let next = claim_now(&store, "hv-g", 1).await;
        if !next.is_empty() {
            break next;
        }
        assert!(
            Instant::now() < deadline,
            "the undelivered claim was not put back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(names(&next), vec!["gone-1"]);
    assert_eq!(
        next[0].lease.attempt, 1,
        "the undelivered attempt does not count"
    );
}

/// Claimed work whose ClusterOperation resource is gone (removed behind the store's
/// back) is aborted at once, not handed out; work whose resource is there is claimed
/// in the same round as usual, with its object.
#[tokio::test]
async fn claimed_work_without_its_resource_is_aborted_not_handed_out() {
    let (_tdb, store) = common::store().await;
    for (name, target) in [("kept", "tk"), ("lost", "tl")] {
        store
            .create_operation(op(name, target), Duration::ZERO)
            .await
            .expect("create");
    }
    exec(
        &store,
        &format!("DELETE FROM resources WHERE kind = 'ClusterOperation' AND name = 'lost' AND namespace = '{NS}'"),
    )
    .await;
    let claimed = claim_now(&store, "", 2).await;
    assert_eq!(names(&claimed), ["kept"]);
    assert_eq!(claimed[0].object["status"]["state"], "executing");
    assert_eq!(
        text(
            &store,
            "SELECT CAST(state AS CHAR) FROM cluster_operations WHERE name = 'lost'"
        )
        .await
        .as_deref(),
        Some("abort")
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM work_queue w JOIN cluster_operations o ON o.uid = w.op_uid WHERE o.name = 'lost'"
        )
        .await,
        0
    );
}
