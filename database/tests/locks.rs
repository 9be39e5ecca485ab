//! Cluster locks against a real private MariaDB.

mod common;

use std::time::{Duration, Instant};

use sf_database::StoreError;
use sf_database::store::locks::LockAcquire;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_second_acquirer_waits_then_times_out_and_is_told_who_holds_it() {
    let (_db, store) = common::store().await;
    let first = store
        .acquire_lock(
            "network/web",
            "network reconcile",
            "node-1",
            42,
            30 * SECOND,
            SECOND,
        )
        .await
        .expect("first")
        .acquired()
        .expect("free lock acquired");
    assert_eq!(first.holder, "network reconcile");
    assert!(first.expires_at > chrono::Utc::now() + chrono::Duration::seconds(20));

    let started = Instant::now();
    let second = store
        .acquire_lock(
            "network/web",
            "instance create",
            "node-2",
            7,
            30 * SECOND,
            Duration::from_millis(600),
        )
        .await
        .expect("second");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "gave up after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    match second {
        LockAcquire::TimedOut(Some(holder)) => {
            assert_eq!(holder.holder, "network reconcile");
            assert_eq!(holder.node, "node-1");
            assert_eq!(holder.pid, 42);
            assert_eq!(holder.expires_at, first.expires_at);
        }
        other => panic!("expected a timeout naming the holder, got {other:?}"),
    }

    // Another name is independent.
    assert!(
        store
            .acquire_lock("network/db", "x", "node-2", 7, SECOND, Duration::ZERO)
            .await
            .expect("other key")
            .acquired()
            .is_some()
    );
}

#[tokio::test]
async fn an_expired_lock_is_taken_over_and_only_then() {
    let (_db, store) = common::store().await;
    let first = store
        .acquire_lock(
            "k",
            "a",
            "node-1",
            1,
            Duration::from_millis(400),
            Duration::ZERO,
        )
        .await
        .expect("first")
        .acquired()
        .expect("acquired");
    // Still valid: no steal, even with zero timeout.
    let early = store
        .acquire_lock("k", "b", "node-2", 2, SECOND, Duration::ZERO)
        .await
        .expect("early");
    assert!(matches!(early, LockAcquire::TimedOut(Some(_))), "{early:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = store
        .acquire_lock("k", "b", "node-2", 2, 10 * SECOND, Duration::ZERO)
        .await
        .expect("after expiry")
        .acquired()
        .expect("expired lock taken over");
    assert_ne!(second.lock_id, first.lock_id);
    assert_eq!(
        store
            .lock_holder("k")
            .await
            .expect("holder")
            .expect("held")
            .holder,
        "b"
    );

    // The old holder can neither refresh nor release the new holder's lock.
    assert_eq!(
        store
            .refresh_lock("k", &first.lock_id, SECOND)
            .await
            .expect("refresh"),
        None
    );
    assert!(
        !store
            .release_lock("k", &first.lock_id)
            .await
            .expect("release")
    );
    assert_eq!(
        store
            .lock_holder("k")
            .await
            .expect("holder")
            .expect("held")
            .node,
        "node-2"
    );
}

#[tokio::test]
async fn refresh_needs_the_right_lock_id() {
    let (_db, store) = common::store().await;
    let lock = store
        .acquire_lock("k", "a", "node-1", 1, SECOND, Duration::ZERO)
        .await
        .expect("acquire")
        .acquired()
        .expect("acquired");
    assert_eq!(
        store
            .refresh_lock("k", "not-the-id", 60 * SECOND)
            .await
            .expect("wrong id"),
        None
    );
    assert_eq!(
        store
            .refresh_lock("other", &lock.lock_id, 60 * SECOND)
            .await
            .expect("wrong key"),
        None
    );
    let extended = store
        .refresh_lock("k", &lock.lock_id, 60 * SECOND)
        .await
        .expect("refresh")
        .expect("still held");
    assert!(extended > lock.expires_at + chrono::Duration::seconds(50));
    // Refreshed past its first ttl: nobody can take it over.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let other = store
        .acquire_lock("k", "b", "node-2", 2, SECOND, Duration::ZERO)
        .await
        .expect("other");
    assert!(other.acquired().is_none());
    assert!(matches!(
        store.refresh_lock("k", &lock.lock_id, Duration::ZERO).await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test]
async fn release_by_a_wrong_id_does_nothing() {
    let (_db, store) = common::store().await;
    let lock = store
        .acquire_lock("k", "a", "node-1", 1, 60 * SECOND, Duration::ZERO)
        .await
        .expect("acquire")
        .acquired()
        .expect("acquired");
    assert!(
        !store
            .release_lock("k", "not-the-id")
            .await
            .expect("wrong id")
    );
    assert!(store.lock_holder("k").await.expect("holder").is_some());
    assert!(
        store
            .release_lock("k", &lock.lock_id)
            .await
            .expect("release")
    );
    assert!(!store.release_lock("k", &lock.lock_id).await.expect("twice"));
    assert!(store.lock_holder("k").await.expect("holder").is_none());
    // Free again at once.
    assert!(
        store
            .acquire_lock("k", "b", "node-2", 2, SECOND, Duration::ZERO)
            .await
            .expect("again")
            .acquired()
            .is_some()
    );
}

#[tokio::test]
async fn a_slow_acquire_still_succeeds_past_half_the_timeout() {
    let (_db, store) = common::store().await;
    let first = store
        .acquire_lock("k", "a", "node-1", 1, 60 * SECOND, Duration::ZERO)
        .await
        .expect("first")
        .acquired()
        .expect("acquired");
    let releaser = {
        let store = store.clone();
        let id = first.lock_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1300)).await;
            store.release_lock("k", &id).await.expect("release")
        })
    };
    // Released after 1.3 s of a 2 s timeout: acquired, on the slow-lock warning path.
    let second = store
        .acquire_lock("k", "b", "node-2", 2, 60 * SECOND, 2 * SECOND)
        .await
        .expect("second")
        .acquired()
        .expect("acquired after the release");
    assert!(releaser.await.expect("join"));
    assert!(second.waited > SECOND, "waited {:?}", second.waited);
    assert!(
        second.waited < 2 * SECOND + Duration::from_millis(500),
        "waited {:?}",
        second.waited
    );
    assert_eq!(
        store
            .lock_holder("k")
            .await
            .expect("holder")
            .expect("held")
            .holder,
        "b"
    );
}

#[tokio::test]
async fn concurrent_acquirers_never_share_a_lock() {
    let (_db, store) = common::store().await;
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.acquire_lock(
                "k",
                &format!("t{n}"),
                "node",
                n,
                60 * SECOND,
                Duration::ZERO,
            )
            .await
            .expect("acquire")
            .acquired()
            .is_some()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("join"));
    }
    assert_eq!(winners, 1);
}
