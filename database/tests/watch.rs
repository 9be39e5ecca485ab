//! Watches: every change exactly once, in order, across gateway instances.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sf_database::StoreError;
use sf_database::store::resources::{ObjectKey, Preconditions, UpdateScope};
use sf_database::store::watch::{
    ChangeFeed, ChangeType, DEFAULT_POLL_INTERVAL, WatchFilter, WatchItem,
};
use sf_schema::selector::LabelSelector;
use tokio::sync::mpsc;

fn object(kind: &str, name: &str, i: u64) -> serde_json::Value {
    json!({
        "apiVersion": "shakenfist.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": "demo", "labels": {"parity": if i.is_multiple_of(2) { "even" } else { "odd" }}},
        "spec": {"i": i}
    })
}

fn filter(kind: &str) -> WatchFilter {
    WatchFilter {
        kind: kind.into(),
        ..WatchFilter::default()
    }
}

async fn next_change(
    rx: &mut mpsc::Receiver<Result<WatchItem, StoreError>>,
) -> Arc<sf_database::store::watch::Change> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Ok(WatchItem::Change(c)))) => return c,
            Ok(Some(Ok(WatchItem::Progress(_)))) => continue,
            other => panic!("expected a change, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_watch_replays_then_follows_and_filters() {
    let (_db, store) = common::store().await;
    let start = store.current_revision().await.expect("rev");
    let a = store
        .create(object("Instance", "a", 0), false)
        .await
        .expect("a");
    store
        .create(object("Network", "n", 0), false)
        .await
        .expect("n");
    let feed = ChangeFeed::start(store.clone(), DEFAULT_POLL_INTERVAL, std::future::pending())
        .await
        .expect("feed");
    let mut rx = feed.watch(filter("Instance"), start, Duration::from_millis(200));
    let first = next_change(&mut rx).await;
    assert_eq!(first.revision, a.resource_version);
    assert_eq!(first.change_type, ChangeType::Added);
    // Live: modify, then delete.
    let mut m = a.object.clone();
    m["spec"]["i"] = json!(5);
    let upd = store
        .update(m, UpdateScope::Main, Preconditions::default(), false)
        .await
        .expect("update");
    let second = next_change(&mut rx).await;
    assert_eq!(second.change_type, ChangeType::Modified);
    assert_eq!(second.revision, upd.resource_version);
    assert_eq!(
        second.prev_object(),
        None,
        "a change that leaves the labels alone logs no previous object"
    );
    let del = store
        .delete(
            &ObjectKey::new("Instance", "demo", "a"),
            Preconditions::default(),
            false,
        )
        .await
        .expect("delete");
    let third = next_change(&mut rx).await;
    assert_eq!(third.change_type, ChangeType::Deleted);
    assert_eq!(third.revision, del.revision);
    // Progress reports the delete's revision once idle.
    let progress = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(Ok(WatchItem::Progress(p)))) => p,
        other => panic!("expected progress, got {other:?}"),
    };
    assert!(progress >= del.revision);
}

#[tokio::test]
async fn selectors_see_objects_that_stop_matching() {
    let (_db, store) = common::store().await;
    let feed = ChangeFeed::start(store.clone(), DEFAULT_POLL_INTERVAL, std::future::pending())
        .await
        .expect("feed");
    let start = store.current_revision().await.expect("rev");
    let mut f = filter("Instance");
    f.labels = LabelSelector::parse("parity=even").expect("sel");
    let mut rx = feed.watch(f, start, Duration::from_secs(60));
    let even = store
        .create(object("Instance", "e", 0), false)
        .await
        .expect("e");
    store
        .create(object("Instance", "o", 1), false)
        .await
        .expect("o");
    let c = next_change(&mut rx).await;
    assert_eq!(c.key.name, "e");
    let mut odd = even.object.clone();
    odd["metadata"]["labels"]["parity"] = json!("odd");
    store
        .update(odd, UpdateScope::Main, Preconditions::default(), false)
        .await
        .expect("relabel");
    let c = next_change(&mut rx).await;
    assert_eq!(
        c.key.name, "e",
        "the change that made it stop matching is delivered"
    );
    assert_eq!(
        c.prev_object()
            .map(|p| p["metadata"]["labels"]["parity"].clone()),
        Some(json!("even"))
    );
}

#[tokio::test]
async fn a_compacted_revision_is_expired() {
    let (_db, store) = common::store().await;
    let start = store.current_revision().await.expect("rev");
    for i in 0..5 {
        store
            .create(object("Instance", &format!("x{i}"), i), false)
            .await
            .expect("create");
    }
    let (compacted, deleted) = store.compact(start + 3).await.expect("compact");
    assert_eq!(compacted, start + 3);
    assert_eq!(deleted, start + 3, "the test namespaces' revisions too");
    let feed = ChangeFeed::start(store.clone(), DEFAULT_POLL_INTERVAL, std::future::pending())
        .await
        .expect("feed");
    let mut rx = feed.watch(filter("Instance"), start + 1, Duration::from_secs(60));
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(Err(StoreError::Expired {
            requested,
            compacted,
        }))) => {
            assert_eq!(requested, start + 1);
            assert_eq!(compacted, start + 3);
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    // From the compacted revision itself, the rest is still there.
    let mut ok = feed.watch(filter("Instance"), start + 3, Duration::from_secs(60));
    assert_eq!(next_change(&mut ok).await.revision, start + 4);
}

/// DESIGN invariant 1: 8 concurrent writers spread over TWO gateway instances (two
/// pools, two change feeds), 20,000 writes; a watcher on each instance receives every
/// revision exactly once, in order, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_writes_over_two_instances_reach_both_watchers_in_order() {
    const WRITERS: u64 = 8;
    const WRITES: u64 = 20_000;
    let (db, store_a) = common::store_with_pool(8).await;
    let store_b = common::second_store(&db, 8).await;
    let start = store_a.current_revision().await.expect("rev");
    let feed_a = ChangeFeed::start(
        store_a.clone(),
        DEFAULT_POLL_INTERVAL,
        std::future::pending(),
    )
    .await
    .expect("feed a");
    let feed_b = ChangeFeed::start(
        store_b.clone(),
        DEFAULT_POLL_INTERVAL,
        std::future::pending(),
    )
    .await
    .expect("feed b");
    let collect = |feed: Arc<ChangeFeed>| {
        let mut rx = feed.watch(filter("Instance"), start, Duration::from_millis(500));
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(WRITES as usize);
            let deadline = Instant::now() + Duration::from_secs(600);
            while (seen.len() as u64) < WRITES && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                    Ok(Some(Ok(WatchItem::Change(c)))) => seen.push(c.revision),
                    Ok(Some(Ok(WatchItem::Progress(_)))) => {}
                    other => panic!("watch ended: {other:?}"),
                }
            }
            seen
        })
    };
    let watcher_a = collect(feed_a.clone());
    let watcher_b = collect(feed_b.clone());

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 {
            store_a.clone()
        } else {
            store_b.clone()
        };
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..WRITES / WRITERS {
                // Mix creates and updates of the same objects.
                let name = format!("w{w}-{}", i / 2);
                let stored = if i % 2 == 0 {
                    store
                        .create(object("Instance", &name, i), false)
                        .await
                        .expect("create")
                } else {
                    let mut o = object("Instance", &name, i);
                    o["metadata"]["labels"]["touched"] = json!("yes");
                    store
                        .update(o, UpdateScope::Main, Preconditions::default(), false)
                        .await
                        .expect("update")
                };
                acked.push(stored.resource_version);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    let write_secs = started.elapsed().as_secs_f64();
    acked.sort_unstable();
    let expected: Vec<u64> = (start + 1..=start + WRITES).collect();
    assert_eq!(
        acked, expected,
        "acknowledged revisions are exactly the contiguous range"
    );
    for (name, w) in [("a", watcher_a), ("b", watcher_b)] {
        let seen = w.await.expect("watcher");
        assert_eq!(seen.len() as u64, WRITES, "watcher {name} count");
        for (i, rev) in seen.iter().enumerate() {
            assert_eq!(
                *rev,
                start + 1 + i as u64,
                "watcher {name}: gap, duplicate or reorder at {i}"
            );
        }
    }
    assert_eq!(feed_a.gaps_seen() + feed_b.gaps_seen(), 0);
    eprintln!(
        "{WRITES} writes by {WRITERS} writers over 2 instances in {write_secs:.1} s ({:.0}/s)",
        WRITES as f64 / write_secs
    );
}

/// Maintenance compaction keeps at least N revisions AND everything younger than T.
#[tokio::test]
async fn retention_keeps_the_newest_revisions_and_the_last_hour() {
    let (_db, store) = common::store().await;
    // The test namespaces took the first revisions.
    let start = store.current_revision().await.expect("rev");
    for i in 0..6 {
        store
            .create(object("Instance", &format!("r{i}"), i), false)
            .await
            .expect("create");
    }
    // Everything is younger than an hour: nothing goes, whatever the count says.
    let (compacted, deleted) = store
        .compact_retaining(2, Duration::from_secs(3600))
        .await
        .expect("compact");
    assert_eq!((compacted, deleted), (0, 0));
    // Nothing is protected by age: keep only the newest 2 revisions.
    let (compacted, deleted) = store
        .compact_retaining(2, Duration::ZERO)
        .await
        .expect("compact");
    assert_eq!(compacted, start + 4);
    assert_eq!(
        deleted,
        start + 4,
        "a fresh database: revisions up to start + 4 go, the last two stay"
    );
    assert_eq!(store.compacted_revision().await.expect("rev"), start + 4);
}
