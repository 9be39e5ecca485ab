//! Events against a real private MariaDB.

mod common;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm::sqlx;
use serde_json::json;
use sf_database::StoreError;
use sf_database::store::events::EventRecord;

const INSTANCE: &str = "11111111-0000-4000-8000-000000000001";
const OTHER: &str = "11111111-0000-4000-8000-000000000002";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn event(n: u32, event_type: &str, timestamp: f64, objects: &[(&str, &str)]) -> EventRecord {
    EventRecord {
        event_uuid: format!("eeeeeeee-0000-4000-8000-{n:012}"),
        event_type: event_type.into(),
        timestamp,
        fqdn: "hv-1.example.com".into(),
        duration: Some(0.25),
        message: format!("event {n}"),
        extra: Some(json!({"n": n})),
        request_id: Some(format!("req-{n}")),
        objects: objects
            .iter()
            .map(|(t, u)| ((*t).to_string(), (*u).to_string()))
            .collect(),
    }
}

async fn count(store: &sf_database::Store, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(store.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn a_batch_is_recorded_with_duplicates_skipped() {
    let (_db, store) = common::store().await;
    let t = now();
    let batch: Vec<EventRecord> = (0..1200)
        .map(|n| {
            event(
                n,
                "audit",
                t + f64::from(n),
                &[("instance", INSTANCE), ("network", OTHER)],
            )
        })
        .collect();
    assert_eq!(
        store.record_event_batch(&batch).await.expect("first"),
        (1200, 0)
    );
    assert_eq!(count(&store, "events").await, 1200);
    assert_eq!(count(&store, "event_objects").await, 2400);

    // A resent batch (a daemon restarted mid-send) plus one new event and one duplicate
    // inside the batch itself.
    let mut again = batch[..10].to_vec();
    again.push(event(5000, "audit", t, &[("instance", INSTANCE)]));
    again.push(event(5000, "audit", t, &[("instance", INSTANCE)]));
    assert_eq!(
        store.record_event_batch(&again).await.expect("again"),
        (1, 11)
    );
    assert_eq!(count(&store, "events").await, 1201);
    assert_eq!(count(&store, "event_objects").await, 2401);
    assert_eq!(store.record_event_batch(&[]).await.expect("empty"), (0, 0));

    let read = store
        .query_events("instance", INSTANCE, None, 1)
        .await
        .expect("query");
    assert_eq!(read.len(), 1);
    let e = &read[0];
    assert_eq!(e.event_uuid, batch[1199].event_uuid);
    assert_eq!(e.event_type, "audit");
    assert_eq!(e.fqdn, "hv-1.example.com");
    assert_eq!(e.duration, Some(0.25));
    assert_eq!(e.message, "event 1199");
    assert_eq!(e.extra, Some(json!({"n": 1199})));
    assert_eq!(e.request_id.as_deref(), Some("req-1199"));
    assert!((e.timestamp - batch[1199].timestamp).abs() < 1e-6);

    analyze(&store).await;
    let rows = store.events_row_count().await.expect("row count");
    assert!(
        (1000..=1400).contains(&rows),
        "approximate row count {rows}"
    );
}

async fn analyze(store: &sf_database::Store) {
    sqlx::query("ANALYZE TABLE events")
        .execute(store.pool())
        .await
        .expect("analyze");
}

#[tokio::test]
async fn a_bad_event_rejects_the_batch_before_anything_is_written() {
    let (_db, store) = common::store().await;
    let mut bad = event(2, "audit", now(), &[("instance", INSTANCE)]);
    bad.event_type = "a-type-name-that-is-longer-than-32-characters".into();
    let err = store
        .record_event_batch(&[event(1, "audit", now(), &[("instance", INSTANCE)]), bad])
        .await
        .expect_err("invalid");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("event 1"), "{err}");
    let mut nan = event(3, "audit", f64::NAN, &[]);
    nan.timestamp = f64::NAN;
    assert!(matches!(
        store.record_event_batch(&[nan]).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(count(&store, "events").await, 0);
}

#[tokio::test]
async fn queries_are_newest_first_with_shaken_fist_limits_and_a_type_filter() {
    let (_db, store) = common::store().await;
    let t = now() - 10_000.0;
    let mut batch: Vec<EventRecord> = (0..1100)
        .map(|n| {
            let kind = if n % 2 == 0 { "audit" } else { "status" };
            event(n, kind, t + f64::from(n), &[("instance", INSTANCE)])
        })
        .collect();
    batch.push(event(9000, "audit", t + 1e6, &[("instance", OTHER)]));
    store.record_event_batch(&batch).await.expect("record");

    let newest = store
        .query_events("instance", INSTANCE, None, 5)
        .await
        .expect("5");
    let messages: Vec<&str> = newest.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        vec![
            "event 1099",
            "event 1098",
            "event 1097",
            "event 1096",
            "event 1095"
        ]
    );
    assert!(newest.windows(2).all(|w| w[0].timestamp >= w[1].timestamp));

    assert_eq!(
        store
            .query_events("instance", INSTANCE, None, 0)
            .await
            .expect("0")
            .len(),
        100
    );
    assert_eq!(
        store
            .query_events("instance", INSTANCE, None, -5)
            .await
            .expect("-5")
            .len(),
        100
    );
    assert_eq!(
        store
            .query_events("instance", INSTANCE, None, 5000)
            .await
            .expect("5000")
            .len(),
        1000
    );

    let status = store
        .query_events("instance", INSTANCE, Some("status"), 1000)
        .await
        .expect("status");
    assert_eq!(status.len(), 550);
    assert!(status.iter().all(|e| e.event_type == "status"));
    assert_eq!(status[0].message, "event 1099");

    // Another object's events stay apart.
    let other = store
        .query_events("instance", OTHER, None, 100)
        .await
        .expect("other");
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].message, "event 9000");
    assert!(
        store
            .query_events("network", INSTANCE, None, 100)
            .await
            .expect("none")
            .is_empty()
    );
}

#[tokio::test]
async fn pruning_removes_old_events_by_type_then_orphans() {
    let (_db, store) = common::store().await;
    let t = now();
    let day = 86_400.0;
    let mut batch = Vec::new();
    // 1500 old api-requests (more than one prune batch), 3 fresh ones.
    for n in 0..1500 {
        batch.push(event(
            n,
            "api-requests",
            t - 2.0 * day,
            &[("api-requests", INSTANCE)],
        ));
    }
    for n in 1500..1503 {
        batch.push(event(
            n,
            "api-requests",
            t - 60.0,
            &[("api-requests", INSTANCE)],
        ));
    }
    // Old audit events with two objects each; audit is not in the age map.
    for n in 2000..2010 {
        batch.push(event(
            n,
            "audit",
            t - 30.0 * day,
            &[("instance", INSTANCE), ("network", OTHER)],
        ));
    }
    // Orphans: events with no objects at all.
    for n in 3000..3004 {
        batch.push(event(n, "status", t, &[]));
    }
    store.record_event_batch(&batch).await.expect("record");
    // An event whose objects rows were lost (another kind of orphan).
    sqlx::query("DELETE FROM event_objects WHERE event_uuid = ?")
        .bind(&batch[1501].event_uuid)
        .execute(store.pool())
        .await
        .expect("unlink");

    let ages = BTreeMap::from([
        ("api-requests".to_string(), 86_400u64),
        ("status".to_string(), 7 * 86_400u64),
    ]);
    let (objects, events, orphans) = store.prune_events(&ages).await.expect("prune");
    assert_eq!((objects, events, orphans), (1500, 1500, 5));
    assert_eq!(count(&store, "events").await, 2 + 10);
    assert_eq!(count(&store, "event_objects").await, 2 + 20);
    let left = store
        .query_events("api-requests", INSTANCE, None, 100)
        .await
        .expect("left");
    assert_eq!(left.len(), 2);
    assert_eq!(
        store
            .query_events("instance", INSTANCE, Some("audit"), 100)
            .await
            .expect("audit")
            .len(),
        10
    );

    // Nothing left to prune.
    assert_eq!(store.prune_events(&ages).await.expect("again"), (0, 0, 0));
}
