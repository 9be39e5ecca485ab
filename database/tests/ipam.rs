//! IPAM against a real private MariaDB (DESIGN invariant 7).

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use sea_orm::sqlx;
use serde_json::Value;
use sf_database::store::ObjectKey;
use sf_database::store::ipam::{IP_DELETION_HALO_DURATION, ReserveRequest, lease_name};
use sf_database::{Store, StoreError};
use sf_schema::ObjectRef;
use sf_schema::ipam::ReservationType;

const NET: &str = "0a000000-0000-4000-8000-000000000001";

fn owner(n: u32) -> ObjectRef {
    ObjectRef {
        kind: "NetworkInterface".into(),
        name: format!("if-{n}"),
        namespace: Some("demo".into()),
        uid: format!("00000000-0000-4000-8000-{n:012}"),
    }
}

fn request(netblock: &str, address: Option<Ipv4Addr>, who: Option<ObjectRef>) -> ReserveRequest {
    ReserveRequest {
        network_uid: NET.into(),
        network_name: "web".into(),
        namespace: "demo".into(),
        netblock: netblock.into(),
        address,
        reservation_type: ReservationType::Instance,
        owner: who,
        comment: None,
    }
}

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, d)
}

async fn lease(store: &Store, address: Ipv4Addr) -> Result<Value, StoreError> {
    store
        .get(&ObjectKey::new(
            "IPAMLease",
            "demo",
            lease_name("web", address),
        ))
        .await
        .map(|s| s.object)
}

async fn age_halos(store: &Store, seconds: u32) {
    sqlx::query(
        "UPDATE ipam_reservations SET reserved_at = NOW(6) - INTERVAL ? SECOND \
         WHERE network_uid = ? AND reservation_type = 'deletion-halo'",
    )
    .bind(seconds)
    .bind(NET)
    .execute(store.pool())
    .await
    .expect("age halos");
}

#[tokio::test]
async fn an_address_held_by_another_owner_is_a_conflict() {
    let (_db, store) = common::store().await;
    let first = store
        .reserve_address(&request("10.0.0.0/24", Some(ip(5)), Some(owner(1))))
        .await
        .expect("first");
    assert_eq!(first.address, ip(5));
    assert!(first.created);
    let err = store
        .reserve_address(&request("10.0.0.0/24", Some(ip(5)), Some(owner(2))))
        .await
        .expect_err("second owner");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("already held"), "{err}");
    // The owner already holds .5, so asking for .6 too is a conflict, not a second address.
    let err = store
        .reserve_address(&request("10.0.0.0/24", Some(ip(6)), Some(owner(1))))
        .await
        .expect_err("second address for one owner");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(store.list_reservations(NET).await.expect("list").len(), 1);
}

#[tokio::test]
async fn bad_requests_are_invalid() {
    let (_db, store) = common::store().await;
    let outside = store
        .reserve_address(&request(
            "10.0.0.0/24",
            Some(Ipv4Addr::new(10, 0, 1, 5)),
            Some(owner(1)),
        ))
        .await
        .expect_err("outside");
    assert!(matches!(outside, StoreError::Invalid(_)), "{outside}");
    assert!(
        outside.to_string().contains("outside the netblock"),
        "{outside}"
    );
    let bad_block = store
        .reserve_address(&request("10.0.0.1/24", None, Some(owner(1))))
        .await
        .expect_err("host bits");
    assert!(matches!(bad_block, StoreError::Invalid(_)), "{bad_block}");
    let mut halo = request("10.0.0.0/24", None, Some(owner(1)));
    halo.reservation_type = ReservationType::DeletionHalo;
    let halo = store.reserve_address(&halo).await.expect_err("halo type");
    assert!(matches!(halo, StoreError::Invalid(_)), "{halo}");
    assert!(store.list_reservations(NET).await.expect("list").is_empty());
}

#[tokio::test]
async fn release_puts_the_address_and_its_lease_in_the_halo() {
    let (_db, store) = common::store().await;
    let r = store
        .reserve_address(&request("10.0.0.0/24", Some(ip(7)), Some(owner(1))))
        .await
        .expect("reserve");
    let held = lease(&store, r.address).await.expect("lease");
    assert_eq!(held["status"]["phase"], "held");
    assert_eq!(held["spec"]["address"], "10.0.0.7");
    assert_eq!(held["spec"]["reservationType"], "instance");
    assert_eq!(held["spec"]["networkUid"], NET);
    assert_eq!(held["spec"]["owner"]["uid"], owner(1).uid);
    assert_eq!(held["metadata"]["namespace"], "demo");
    assert_eq!(held["metadata"]["name"], "web-10-0-0-7");

    let wrong = store
        .release_address(NET, ip(7), Some(&owner(2).uid), IP_DELETION_HALO_DURATION)
        .await
        .expect_err("wrong owner");
    assert!(matches!(wrong, StoreError::Conflict { .. }), "{wrong}");
    let unheld = store
        .release_address(NET, ip(8), None, IP_DELETION_HALO_DURATION)
        .await
        .expect_err("unheld");
    assert!(matches!(unheld, StoreError::NotFound { .. }), "{unheld}");
    let unknown = store
        .release_address(
            "0a000000-0000-4000-8000-00000000dead",
            ip(8),
            None,
            IP_DELETION_HALO_DURATION,
        )
        .await
        .expect_err("unknown network");
    assert!(matches!(unknown, StoreError::NotFound { .. }), "{unknown}");

    let until = store
        .release_address(NET, ip(7), Some(&owner(1).uid), IP_DELETION_HALO_DURATION)
        .await
        .expect("release");
    let rows = store.list_reservations(NET).await.expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].reservation_type, ReservationType::DeletionHalo);
    assert_eq!(rows[0].halo_until, Some(until));
    let halo_secs = (until - rows[0].reserved_at).num_seconds();
    assert_eq!(halo_secs, 300, "halo of {halo_secs} s");

    let halo = lease(&store, ip(7)).await.expect("lease");
    assert_eq!(halo["status"]["phase"], "halo");
    let lease_until: chrono::DateTime<chrono::Utc> = halo["status"]["haloUntil"]
        .as_str()
        .expect("haloUntil")
        .parse()
        .expect("timestamp");
    assert_eq!(lease_until, until);

    // A retried release by the owner is idempotent.
    let again = store
        .release_address(NET, ip(7), Some(&owner(1).uid), IP_DELETION_HALO_DURATION)
        .await
        .expect("release again");
    assert_eq!(again, until);

    // The owner no longer holds it: a new reservation gets another address.
    let next = store
        .reserve_address(&request("10.0.0.0/24", None, Some(owner(1))))
        .await
        .expect("reserve again");
    assert_ne!(next.address, ip(7));
    assert!(next.created);
}

#[tokio::test]
async fn expired_halos_are_swept_with_their_leases() {
    let (_db, store) = common::store().await;
    for n in 1..=3 {
        store
            .reserve_address(&request(
                "10.0.0.0/24",
                Some(ip(10 + n as u8)),
                Some(owner(n)),
            ))
            .await
            .expect("reserve");
    }
    store
        .release_address(NET, ip(11), None, Duration::ZERO)
        .await
        .expect("release 11");
    store
        .release_address(NET, ip(12), None, IP_DELETION_HALO_DURATION)
        .await
        .expect("release 12");
    store
        .reserve_address(&request("10.0.0.0/24", None, Some(owner(4))))
        .await
        .expect("reserve sweeps");
    let rows = store.list_reservations(NET).await.expect("list");
    let addresses: BTreeSet<Ipv4Addr> = rows.iter().map(|r| r.address).collect();
    // The sweep freed .11; the new reservation may pick it (a random try) and then
    // holds it afresh, never as the old halo.
    let eleven = rows.iter().find(|r| r.address == ip(11));
    assert!(
        eleven.is_none_or(|r| r.halo_until.is_none() && r.owner_uid == Some(owner(4).uid)),
        "expired halo kept: {rows:?}"
    );
    assert!(addresses.contains(&ip(12)), "live halo swept: {rows:?}");
    if eleven.is_none() {
        assert!(matches!(
            lease(&store, ip(11)).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert_eq!(
        lease(&store, ip(12)).await.expect("lease")["status"]["phase"],
        "halo"
    );

    // The explicit sweep does the same for idle networks.
    store
        .release_address(NET, ip(13), None, Duration::ZERO)
        .await
        .expect("release 13");
    assert_eq!(store.sweep_expired_halos(NET).await.expect("sweep"), 1);
    assert!(matches!(
        lease(&store, ip(13)).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_congested_network_shrinks_the_halo_to_30_s_then_fails_clearly() {
    let (_db, store) = common::store().await;
    let reserved = store
        .reserve_network_addresses(NET, "web", "demo", "10.0.0.0/29")
        .await
        .expect("network addresses");
    assert_eq!(
        reserved.iter().map(|r| r.address).collect::<Vec<_>>(),
        vec![ip(0), ip(7), ip(1)]
    );
    // Hosts .2 to .6 are left: hold them all, then release them into the halo.
    let mut held = BTreeSet::new();
    for n in 1..=5 {
        let r = store
            .reserve_address(&request("10.0.0.0/29", None, Some(owner(n))))
            .await
            .expect("reserve");
        held.insert(r.address);
    }
    assert_eq!(held, (2..=6).map(ip).collect());
    let full = store
        .reserve_address(&request("10.0.0.0/29", None, Some(owner(9))))
        .await
        .expect_err("full");
    assert!(matches!(full, StoreError::Congested { .. }), "{full}");
    for a in &held {
        store
            .release_address(NET, *a, None, IP_DELETION_HALO_DURATION)
            .await
            .expect("release");
    }

    // Halos younger than 30 s are kept: the network is congested.
    let err = store
        .reserve_address(&request("10.0.0.0/29", None, Some(owner(9))))
        .await
        .expect_err("congested");
    assert!(matches!(err, StoreError::Congested { .. }), "{err}");
    assert!(err.to_string().contains("congested"), "{err}");
    assert_eq!(store.list_reservations(NET).await.expect("list").len(), 8);

    // Older than 30 s (but well inside the 300 s halo): released, and one is reused.
    age_halos(&store, 45).await;
    let r = store
        .reserve_address(&request("10.0.0.0/29", None, Some(owner(9))))
        .await
        .expect("reused after shrinking the halo");
    assert!(held.contains(&r.address), "{r:?}");
    let rows = store.list_reservations(NET).await.expect("list");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.reservation_type != ReservationType::DeletionHalo)
    );
    assert_eq!(
        lease(&store, r.address).await.expect("lease")["status"]["phase"],
        "held"
    );
    assert_eq!(
        lease(&store, r.address).await.expect("lease")["spec"]["owner"]["uid"],
        owner(9).uid
    );
    for a in held.iter().filter(|a| **a != r.address) {
        assert!(
            matches!(lease(&store, *a).await, Err(StoreError::NotFound { .. })),
            "lease of released halo {a} kept"
        );
    }
}

#[tokio::test]
async fn a_halo_address_may_be_taken_explicitly() {
    let (_db, store) = common::store().await;
    store
        .reserve_address(&request("10.0.0.0/24", Some(ip(50)), Some(owner(1))))
        .await
        .expect("reserve");
    let first_uid = lease(&store, ip(50)).await.expect("lease")["metadata"]["uid"].clone();
    store
        .release_address(NET, ip(50), None, IP_DELETION_HALO_DURATION)
        .await
        .expect("release");
    let r = store
        .reserve_address(&request("10.0.0.0/24", Some(ip(50)), Some(owner(2))))
        .await
        .expect("explicit reuse (#4059)");
    assert_eq!(r.address, ip(50));
    assert!(r.created);
    let rows = store.list_reservations(NET).await.expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].reservation_type, ReservationType::Instance);
    assert_eq!(rows[0].owner_uid.as_deref(), Some(owner(2).uid.as_str()));
    assert_eq!(rows[0].halo_until, None);
    let l = lease(&store, ip(50)).await.expect("lease");
    assert_eq!(l["status"]["phase"], "held");
    assert!(l["status"].get("haloUntil").is_none(), "{l}");
    assert_eq!(l["spec"]["owner"]["uid"], owner(2).uid);
    assert_ne!(
        l["metadata"]["uid"], first_uid,
        "the new holder gets a new lease object"
    );
}

#[tokio::test]
async fn a_retry_returns_the_address_already_held() {
    let (tdb, store) = common::store().await;
    let first = store
        .reserve_address(&request("10.0.0.0/24", None, Some(owner(1))))
        .await
        .expect("first");
    let again = store
        .reserve_address(&request("10.0.0.0/24", None, Some(owner(1))))
        .await
        .expect("retry");
    assert_eq!(again.address, first.address);
    assert!(!again.created);
    let same_specific = store
        .reserve_address(&request("10.0.0.0/24", Some(first.address), Some(owner(1))))
        .await
        .expect("retry naming the address");
    assert_eq!(same_specific.address, first.address);
    assert!(!same_specific.created);

    // Concurrent retries of one owner, through two gateway instances: one address.
    let other = common::second_store(&tdb, 8).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.reserve_address(&request("10.0.0.0/24", None, Some(owner(2))))
                .await
                .expect("reserve")
        }));
    }
    let mut got = BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.expect("join");
        got.insert(r.address);
        created += usize::from(r.created);
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(created, 1);
    assert_eq!(store.list_reservations(NET).await.expect("list").len(), 2);
}

#[tokio::test]
async fn concurrent_reservers_get_distinct_addresses() {
    let (tdb, store) = common::store().await;
    let other = common::second_store(&tdb, 8).await;
    let mut tasks = Vec::new();
    for n in 1..=16u32 {
        let s = if n % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.reserve_address(&request("10.0.0.0/24", None, Some(owner(n))))
                .await
                .expect("reserve")
                .address
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        assert!(
            got.insert(t.await.expect("join")),
            "an address was handed out twice"
        );
    }
    assert_eq!(got.len(), 16);
    assert!(
        got.iter()
            .all(|a| (1..=254).contains(&a.octets()[3]) && a.octets()[..3] == [10, 0, 0])
    );
    let rows = store.list_reservations(NET).await.expect("list");
    assert_eq!(rows.len(), 16);
    for a in &got {
        assert_eq!(
            lease(&store, *a).await.expect("lease")["status"]["phase"],
            "held"
        );
    }
}

#[tokio::test]
async fn reservations_sort_numerically() {
    let (_db, store) = common::store().await;
    for (n, d) in [(1, 100), (2, 10), (3, 9), (4, 2)] {
        store
            .reserve_address(&request("10.0.0.0/24", Some(ip(d)), Some(owner(n))))
            .await
            .expect("reserve");
    }
    let order: Vec<Ipv4Addr> = store
        .list_reservations(NET)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.address)
        .collect();
    assert_eq!(order, vec![ip(2), ip(9), ip(10), ip(100)]);
}

#[tokio::test]
async fn network_addresses_are_reserved_once_with_leases() {
    let (_db, store) = common::store().await;
    let first = store
        .reserve_network_addresses(NET, "web", "demo", "10.0.0.0/24")
        .await
        .expect("first");
    assert!(first.iter().all(|r| r.created));
    let again = store
        .reserve_network_addresses(NET, "web", "demo", "10.0.0.0/24")
        .await
        .expect("again");
    assert!(again.iter().all(|r| !r.created));
    assert_eq!(
        again.iter().map(|r| r.address).collect::<Vec<_>>(),
        vec![ip(0), ip(255), ip(1)]
    );
    let rows = store.list_reservations(NET).await.expect("list");
    let types: Vec<&str> = rows.iter().map(|r| r.reservation_type.as_str()).collect();
    assert_eq!(types, vec!["network", "gateway", "broadcast"]);
    let gw = lease(&store, ip(1)).await.expect("gateway lease");
    assert_eq!(gw["spec"]["reservationType"], "gateway");
    assert_eq!(gw["spec"]["owner"]["kind"], "Network");
    assert_eq!(gw["spec"]["owner"]["uid"], NET);
    assert_eq!(gw["status"]["phase"], "held");
    // Any-address reservations never get those three.
    let r = store
        .reserve_address(&request("10.0.0.0/24", None, Some(owner(1))))
        .await
        .expect("reserve");
    assert!(![ip(0), ip(1), ip(255)].contains(&r.address));
}

#[tokio::test]
async fn floating_leases_are_cluster_scoped() {
    let (_db, store) = common::store().await;
    let floating = "f10a7f10-a7f1-4a7f-a10a-7f10a7f10a7f";
    let r = store
        .reserve_address(&ReserveRequest {
            network_uid: floating.into(),
            network_name: "floating".into(),
            namespace: String::new(),
            netblock: "192.168.20.0/24".into(),
            address: None,
            reservation_type: ReservationType::Floating,
            owner: Some(owner(1)),
            comment: Some("float for if-1".into()),
        })
        .await
        .expect("floating");
    let l = store
        .get(&ObjectKey::new(
            "IPAMLease",
            "",
            lease_name("floating", r.address),
        ))
        .await
        .expect("lease")
        .object;
    assert!(l["metadata"].get("namespace").is_none(), "{l}");
    assert_eq!(l["spec"]["reservationType"], "floating");
    assert_eq!(l["spec"]["comment"], "float for if-1");
    assert_eq!(l["spec"]["owner"]["namespace"], "demo");
}

#[tokio::test]
async fn vxids_are_unique_random_and_idempotent() {
    let (_db, store) = common::store().await;
    let mut seen = BTreeSet::new();
    for n in 0..100u32 {
        let uid = format!("0b000000-0000-4000-8000-{n:012}");
        let vxid = store.allocate_vxid(&uid).await.expect("vxid");
        assert!((1..=0x00FF_FFFF).contains(&vxid), "{vxid}");
        assert!(seen.insert(vxid), "vxid {vxid} handed out twice");
        assert_eq!(store.allocate_vxid(&uid).await.expect("again"), vxid);
    }
    // Not sequential: random ids spread over the 24-bit space.
    assert!(seen.iter().max().expect("max") - seen.iter().min().expect("min") > 1_000_000);

    // Concurrent first calls for one network agree.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.allocate_vxid(NET).await.expect("vxid")
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        got.insert(t.await.expect("join"));
    }
    assert_eq!(got.len(), 1, "{got:?}");
    // A network with a vxid still reserves addresses (one row per network).
    store
        .reserve_address(&request("10.0.0.0/24", None, Some(owner(1))))
        .await
        .expect("reserve");
    assert_eq!(
        store.allocate_vxid(NET).await.expect("vxid"),
        *got.iter().next().expect("one")
    );
}
