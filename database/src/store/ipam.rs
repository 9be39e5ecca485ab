//! IPAM: IPv4 reservations per network, their IPAMLease objects, and VXLAN ids.
//!
//! Contract (DESIGN invariant 7; Shaken Fist's `ipam.py`):
//! - No address is held twice in a network. Every IPAM write of a network first locks
//!   the network's row in `network_vxids` (created on first use), so a network's
//!   reservations, releases and sweeps are serialised across every gateway instance;
//!   the primary key (network_uid, address) backs this up. Lock order: a reserve
//!   first holds the network's namespace (shared; it must exist), then that row, then
//!   `ipam_reservations` rows, then the IPAMLease rows in `resources`, then the
//!   revision counter (allocated last), then `resources`/`change_log` writes.
//! - Reserve is idempotent per (network, owner uid, type) for `instance`, `floating`
//!   and `routed`: a retry gets the address the owner already holds, never a second
//!   one (Shaken Fist #256). A specific address may be taken when free or resting in
//!   the deletion halo (explicit reuse, #4059); one held by someone else is
//!   [`StoreError::Conflict`]; one outside the netblock is [`StoreError::Invalid`].
//! - Any address: expired halos are swept first (same transaction), then a few random
//!   tries, then a linear scan of the host addresses. When nothing is free, halos
//!   older than [`CONGESTED_HALO`] are released with a warning and the scan runs once
//!   more; then [`StoreError::Congested`].
//! - Release moves an address into the deletion halo (`deletion-halo`, `halo_until` =
//!   now + halo) and is idempotent for its owner; every reservation, release and sweep
//!   writes its IPAMLease (phase held / halo, deleted when swept) in the same
//!   transaction. Times come from the database clock.
//! - VXLAN ids are random in 1..=16 777 215, unique by `ux_network_vxids_vxid`,
//!   retried on collision, one per network.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Row};
use serde_json::{Value, json};
use sf_schema::ObjectRef;
use sf_schema::ipam::{IPAMLeaseSpec, IPAMLeaseStatus, LeasePhase, ReservationType};

use super::namespaces::hold_namespaces;
use super::resources::{
    ObjectKey, Row0, apply_change, insert_object, lock_row, prepare_new, remove_object,
};
use super::{Store, StoreError, Tx, allocate_revisions};

/// How long a released address rests before it is handed out again
/// (`IP_DELETION_HALO_DURATION`).
pub const IP_DELETION_HALO_DURATION: Duration = Duration::from_secs(300);

/// The halo a congested network shrinks to.
pub const CONGESTED_HALO: Duration = Duration::from_secs(30);

/// Random addresses tried before the linear scan.
const RANDOM_TRIES: usize = 5;

/// Random VXLAN ids tried before giving up.
const VXID_TRIES: usize = 32;

/// The largest VXLAN id (24 bits).
pub const MAX_VXID: u32 = 0x00FF_FFFF;

const LEASE_KIND: &str = "IPAMLease";
const API_VERSION: &str = "shakenfist.io/v1alpha1";
const DELETION_HALO: &str = "deletion-halo";

/// A request for one address.
#[derive(Debug, Clone, PartialEq)]
pub struct ReserveRequest {
    /// The network's `metadata.uid` (the IPAM's id).
    pub network_uid: String,
    /// The network's name (IPAMLease names derive from it).
    pub network_name: String,
    /// The network's namespace; '' for the floating network.
    pub namespace: String,
    /// The network's netblock, e.g. `10.0.0.0/24`.
    pub netblock: String,
    /// A specific address, or any free one.
    pub address: Option<Ipv4Addr>,
    /// Why: network, broadcast, gateway, floating, routed or instance.
    pub reservation_type: ReservationType,
    /// Who holds it.
    pub owner: Option<ObjectRef>,
    /// Free text.
    pub comment: Option<String>,
}

/// The outcome of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// The address held.
    pub address: Ipv4Addr,
    /// False when the owner already held it (an idempotent retry).
    pub created: bool,
}

/// One row of a network's IPAM.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The address.
    pub address: Ipv4Addr,
    /// Why it is held (`deletion-halo` once released).
    pub reservation_type: ReservationType,
    /// The holder's kind.
    pub owner_kind: Option<String>,
    /// The holder's uid.
    pub owner_uid: Option<String>,
    /// When it was reserved (or released, for a halo).
    pub reserved_at: DateTime<Utc>,
    /// When a halo ends.
    pub halo_until: Option<DateTime<Utc>>,
    /// Free text.
    pub comment: Option<String>,
}

/// A netblock: its network address and prefix (8..=30, host bits zero).
#[derive(Debug, Clone, Copy)]
struct Netblock {
    network: u32,
    prefix: u8,
}

impl Netblock {
    fn parse(text: &str) -> Result<Self, StoreError> {
        let (address, prefix) = sf_schema::validation::parse_netblock(text)
            .map_err(|e| StoreError::Invalid(format!("netblock {text}: {e}")))?;
        Ok(Self {
            network: u32::from(address),
            prefix,
        })
    }

    fn broadcast(self) -> u32 {
        self.network | (u32::MAX >> u32::from(self.prefix))
    }

    fn first_host(self) -> u32 {
        self.network + 1
    }

    fn last_host(self) -> u32 {
        self.broadcast() - 1
    }

    fn contains(self, address: u32) -> bool {
        (self.network..=self.broadcast()).contains(&address)
    }
}

/// The IPAMLease name of `address` in network `network_name`: `web-10-0-0-5`.
pub fn lease_name(network_name: &str, address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("{network_name}-{a}-{b}-{c}-{d}")
}

fn lease_key(namespace: &str, network_name: &str, address: u32) -> ObjectKey {
    ObjectKey::new(
        LEASE_KIND,
        namespace,
        lease_name(network_name, Ipv4Addr::from(address)),
    )
}

/// A change to an IPAMLease, applied after every other lock is taken.
#[derive(Debug)]
enum LeaseOp {
    /// Delete the lease (its address was swept or taken over).
    Delete(ObjectKey),
    /// Create a new lease (a lease left under that name is replaced).
    Create(Value),
    /// Move the lease into the halo.
    Halo(ObjectKey, DateTime<Utc>),
}

/// The network's row, locked.
#[derive(Debug)]
struct Anchor {
    namespace: String,
    name: String,
    vxid: Option<u32>,
}

/// How to find the network's row.
enum AnchorMode<'a> {
    /// Create or update it with the network's namespace and name.
    Named { namespace: &'a str, name: &'a str },
    /// Create it if missing (VXLAN ids).
    Create,
    /// Only an existing row.
    Existing,
}

fn random_u32() -> u32 {
    let b = *uuid::Uuid::new_v4().as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn check_uid(what: &str, uid: &str) -> Result<(), StoreError> {
    if uid.is_empty() || uid.len() > 36 || !uid.is_ascii() {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1 to 36 ASCII characters, got {uid:?}"
        )));
    }
    Ok(())
}

/// Locks the network's row (see the module contract).
async fn lock_anchor(
    tx: &mut Tx,
    network_uid: &str,
    mode: AnchorMode<'_>,
) -> Result<Option<Anchor>, StoreError> {
    match mode {
        AnchorMode::Named { namespace, name } => {
            sqlx::query(
                "INSERT INTO network_vxids (network_uid, namespace, name) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE namespace = VALUES(namespace), name = VALUES(name)",
            )
            .bind(network_uid)
            .bind(namespace)
            .bind(name)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("lock network"))?;
        }
        AnchorMode::Create => {
            sqlx::query(
                "INSERT INTO network_vxids (network_uid) VALUES (?) \
                 ON DUPLICATE KEY UPDATE network_uid = network_uid",
            )
            .bind(network_uid)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("lock network"))?;
        }
        AnchorMode::Existing => {}
    }
    let row = sqlx::query(
        "SELECT namespace, name, vxid FROM network_vxids WHERE network_uid = ? FOR UPDATE",
    )
    .bind(network_uid)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::query("lock network"))?;
    row.map(|r| {
        Ok(Anchor {
            namespace: r
                .try_get("namespace")
                .map_err(|e| StoreError::Corrupt(format!("network_vxids.namespace: {e}")))?,
            name: r
                .try_get("name")
                .map_err(|e| StoreError::Corrupt(format!("network_vxids.name: {e}")))?,
            vxid: r
                .try_get("vxid")
                .map_err(|e| StoreError::Corrupt(format!("network_vxids.vxid: {e}")))?,
        })
    })
    .transpose()
}

/// Deletes `addresses` of the network and queues their leases' deletion.
async fn delete_rows(
    tx: &mut Tx,
    network_uid: &str,
    anchor: &Anchor,
    addresses: &[u32],
    plan: &mut Vec<LeaseOp>,
) -> Result<(), StoreError> {
    for chunk in addresses.chunks(500) {
        let sql = format!(
            "DELETE r FROM ipam_reservations r FORCE INDEX (PRIMARY) WHERE r.network_uid = ? AND r.address IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        // Built from constant fragments only; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(network_uid);
        for a in chunk {
            q = q.bind(*a);
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("delete reservations"))?;
    }
    for a in addresses {
        plan.push(LeaseOp::Delete(lease_key(
            &anchor.namespace,
            &anchor.name,
            *a,
        )));
    }
    Ok(())
}

/// Releases halo addresses: expired ones (`older_than` None) or, for a congested
/// network, those released longer than `older_than` ago. Returns how many.
async fn sweep_halos(
    tx: &mut Tx,
    network_uid: &str,
    anchor: &Anchor,
    older_than: Option<Duration>,
    plan: &mut Vec<LeaseOp>,
) -> Result<usize, StoreError> {
    let addresses: Vec<u32> = match older_than {
        None => {
            sqlx::query_scalar(
                "SELECT address FROM ipam_reservations WHERE network_uid = ? \
             AND reservation_type = 'deletion-halo' AND halo_until <= NOW(6) FOR UPDATE",
            )
            .bind(network_uid)
            .fetch_all(&mut **tx)
            .await
        }
        Some(age) => {
            sqlx::query_scalar(
                "SELECT address FROM ipam_reservations WHERE network_uid = ? \
             AND reservation_type = 'deletion-halo' \
             AND reserved_at <= NOW(6) - INTERVAL ? MICROSECOND FOR UPDATE",
            )
            .bind(network_uid)
            .bind(micros(age)?)
            .fetch_all(&mut **tx)
            .await
        }
    }
    .map_err(StoreError::query("sweep deletion halo"))?;
    delete_rows(tx, network_uid, anchor, &addresses, plan).await?;
    Ok(addresses.len())
}

fn micros(d: Duration) -> Result<u64, StoreError> {
    u64::try_from(d.as_micros())
        .map_err(|_| StoreError::Invalid(format!("duration {d:?} is too long")))
}

/// Applies the lease changes: locks every lease row first, then allocates revisions
/// (see the module contract).
async fn apply_leases(tx: &mut Tx, plan: Vec<LeaseOp>) -> Result<(), StoreError> {
    let mut keys = BTreeSet::new();
    for op in &plan {
        match op {
            LeaseOp::Delete(k) | LeaseOp::Halo(k, _) => {
                keys.insert(k.clone());
            }
            LeaseOp::Create(object) => {
                keys.insert(ObjectKey::of(object)?);
            }
        }
    }
    let mut rows: BTreeMap<ObjectKey, Option<Row0>> = BTreeMap::new();
    for key in keys {
        let row = lock_row(tx, &key).await?;
        rows.insert(key, row);
    }
    for op in plan {
        match op {
            LeaseOp::Delete(key) => {
                if let Some(row) = rows.get_mut(&key).and_then(Option::take) {
                    remove_lease(tx, &row).await?;
                }
            }
            LeaseOp::Create(mut object) => {
                let (key, uid) = prepare_new(&mut object)?;
                if let Some(row) = rows.get_mut(&key).and_then(Option::take) {
                    // A lease left under this name (a network re-created with the same
                    // name): the new holder gets a new object.
                    remove_lease(tx, &row).await?;
                }
                let revision = allocate_revisions(tx, 1).await?;
                insert_object(tx, revision, &key, &uid, &mut object).await?;
            }
            LeaseOp::Halo(key, until) => {
                let Some(row) = rows.get(&key).and_then(Option::as_ref) else {
                    tracing::warn!(lease = %key.name, namespace = %key.namespace, "released an address whose IPAMLease is missing");
                    continue;
                };
                let mut next = row.object.clone();
                let status = serde_json::to_value(IPAMLeaseStatus {
                    phase: LeasePhase::Halo,
                    halo_until: Some(until),
                    ..IPAMLeaseStatus::default()
                })
                .map_err(|e| StoreError::Corrupt(format!("IPAMLease status: {e}")))?;
                if let Some(map) = next.as_object_mut() {
                    map.insert("status".into(), status);
                }
                apply_change(tx, row, next, false).await?;
            }
        }
    }
    Ok(())
}

async fn remove_lease(tx: &mut Tx, row: &Row0) -> Result<(), StoreError> {
    let revision = allocate_revisions(tx, 1).await?;
    let mut object = row.object.clone();
    remove_object(tx, revision, row, &mut object).await
}

/// A new IPAMLease object in phase held.
fn lease_object(req: &ReserveRequest, address: Ipv4Addr) -> Result<Value, StoreError> {
    let spec = IPAMLeaseSpec {
        network: req.network_name.clone(),
        network_uid: req.network_uid.clone(),
        address: address.to_string(),
        reservation_type: req.reservation_type.clone(),
        owner: req.owner.clone(),
        comment: req.comment.clone(),
    };
    let status = IPAMLeaseStatus {
        phase: LeasePhase::Held,
        ..IPAMLeaseStatus::default()
    };
    let mut metadata = json!({"name": lease_name(&req.network_name, address)});
    if !req.namespace.is_empty() {
        metadata["namespace"] = json!(req.namespace);
    }
    Ok(json!({
        "apiVersion": API_VERSION,
        "kind": LEASE_KIND,
        "metadata": metadata,
        "spec": serde_json::to_value(spec).map_err(|e| StoreError::Invalid(format!("IPAMLease spec: {e}")))?,
        "status": serde_json::to_value(status).map_err(|e| StoreError::Invalid(format!("IPAMLease status: {e}")))?,
    }))
}

fn validate_request(req: &ReserveRequest) -> Result<Netblock, StoreError> {
    check_uid("network uid", &req.network_uid)?;
    if !sf_schema::validation::is_dns_label(&req.network_name) {
        return Err(StoreError::Invalid(format!(
            "network name {:?} is not a DNS label",
            req.network_name
        )));
    }
    if !req.namespace.is_empty() && !sf_schema::validation::is_dns_label(&req.namespace) {
        return Err(StoreError::Invalid(format!(
            "namespace {:?} is not a DNS label",
            req.namespace
        )));
    }
    match req.reservation_type {
        ReservationType::Network
        | ReservationType::Broadcast
        | ReservationType::Gateway
        | ReservationType::Floating
        | ReservationType::Routed
        | ReservationType::Instance => {}
        ref other => {
            return Err(StoreError::Invalid(format!(
                "reservation type {other} cannot be reserved (network, broadcast, gateway, floating, routed or instance)"
            )));
        }
    }
    if let Some(owner) = &req.owner {
        check_uid("owner uid", &owner.uid)?;
        if owner.kind.is_empty() || owner.kind.len() > 64 || !owner.kind.is_ascii() {
            return Err(StoreError::Invalid(format!(
                "owner kind {:?} is not valid",
                owner.kind
            )));
        }
    }
    let net = Netblock::parse(&req.netblock)?;
    if let Some(address) = req.address
        && !net.contains(u32::from(address))
    {
        return Err(StoreError::Invalid(format!(
            "address {address} is outside the netblock {}",
            req.netblock
        )));
    }
    Ok(net)
}

/// One reservation row, as the allocator sees it.
struct Held {
    reservation_type: String,
    user_uid: Option<String>,
}

async fn held_row(
    tx: &mut Tx,
    network_uid: &str,
    address: u32,
) -> Result<Option<Held>, StoreError> {
    let row = sqlx::query(
        "SELECT reservation_type, user_uid FROM ipam_reservations \
         WHERE network_uid = ? AND address = ? FOR UPDATE",
    )
    .bind(network_uid)
    .bind(address)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::query("read reservation"))?;
    row.map(|r| {
        Ok(Held {
            reservation_type: r.try_get("reservation_type").map_err(|e| {
                StoreError::Corrupt(format!("ipam_reservations.reservation_type: {e}"))
            })?,
            user_uid: r
                .try_get("user_uid")
                .map_err(|e| StoreError::Corrupt(format!("ipam_reservations.user_uid: {e}")))?,
        })
    })
    .transpose()
}

fn is_idempotent_type(t: &ReservationType) -> bool {
    matches!(
        t,
        ReservationType::Instance | ReservationType::Floating | ReservationType::Routed
    )
}

/// Reserves one address with the network's row locked and expired halos swept.
async fn reserve_locked(
    tx: &mut Tx,
    anchor: &Anchor,
    net: Netblock,
    req: &ReserveRequest,
    plan: &mut Vec<LeaseOp>,
) -> Result<Reserved, StoreError> {
    let owner_uid = req.owner.as_ref().map(|o| o.uid.as_str());
    let conflict = |address: Ipv4Addr, reason: String| StoreError::Conflict {
        kind: LEASE_KIND.into(),
        namespace: req.namespace.clone(),
        name: lease_name(&req.network_name, address),
        reason,
    };

    // An owner's retry gets what it holds already (Shaken Fist #256).
    if let Some(uid) = owner_uid.filter(|_| is_idempotent_type(&req.reservation_type)) {
        let existing: Option<u32> = sqlx::query_scalar(
            "SELECT address FROM ipam_reservations WHERE network_uid = ? AND user_uid = ? \
             AND reservation_type = ? ORDER BY address LIMIT 1",
        )
        .bind(&req.network_uid)
        .bind(uid)
        .bind(req.reservation_type.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("read reservation"))?;
        if let Some(existing) = existing {
            let existing = Ipv4Addr::from(existing);
            return match req.address {
                Some(wanted) if wanted != existing => Err(conflict(
                    wanted,
                    format!(
                        "{} {uid} already holds {existing} in this network",
                        req.owner.as_ref().map_or("owner", |o| o.kind.as_str())
                    ),
                )),
                _ => Ok(Reserved {
                    address: existing,
                    created: false,
                }),
            };
        }
    }

    let address = match req.address {
        Some(wanted) => {
            let a = u32::from(wanted);
            match held_row(tx, &req.network_uid, a).await? {
                None => a,
                Some(h) if h.reservation_type == DELETION_HALO => {
                    // Explicit reuse of an address in the halo (Shaken Fist #4059).
                    delete_rows(tx, &req.network_uid, anchor, &[a], plan).await?;
                    a
                }
                Some(h)
                    if h.reservation_type == req.reservation_type.as_str()
                        && h.user_uid.as_deref() == owner_uid =>
                {
                    return Ok(Reserved {
                        address: wanted,
                        created: false,
                    });
                }
                Some(h) => {
                    return Err(conflict(
                        wanted,
                        format!(
                            "address {wanted} is already held ({}{})",
                            h.reservation_type,
                            h.user_uid.map(|u| format!(" by {u}")).unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        None => match next_free(tx, &req.network_uid, net).await? {
            Some(a) => a,
            None => {
                let released =
                    sweep_halos(tx, &req.network_uid, anchor, Some(CONGESTED_HALO), plan).await?;
                if released > 0 {
                    tracing::warn!(
                        network = %req.network_uid,
                        netblock = %req.netblock,
                        released,
                        "network congested, shrinking the deletion halo to 30 s"
                    );
                }
                match next_free(tx, &req.network_uid, net).await? {
                    Some(a) => a,
                    None => {
                        return Err(StoreError::Congested {
                            network: req.network_uid.clone(),
                        });
                    }
                }
            }
        },
    };

    sqlx::query(
        "INSERT INTO ipam_reservations \
         (network_uid, address, reservation_type, user_kind, user_uid, reserved_at, halo_until, comment) \
         VALUES (?, ?, ?, ?, ?, NOW(6), NULL, ?)",
    )
    .bind(&req.network_uid)
    .bind(address)
    .bind(req.reservation_type.as_str())
    .bind(req.owner.as_ref().map(|o| o.kind.as_str()))
    .bind(owner_uid)
    .bind(req.comment.as_deref())
    .execute(&mut **tx)
    .await
    .map_err(StoreError::query("insert reservation"))?;
    let address = Ipv4Addr::from(address);
    plan.push(LeaseOp::Create(lease_object(req, address)?));
    Ok(Reserved {
        address,
        created: true,
    })
}

/// A free host address: a few random tries, then a linear scan.
async fn next_free(
    tx: &mut Tx,
    network_uid: &str,
    net: Netblock,
) -> Result<Option<u32>, StoreError> {
    let held: HashSet<u32> =
        sqlx::query_scalar("SELECT address FROM ipam_reservations WHERE network_uid = ?")
            .bind(network_uid)
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::query("read reservations"))?
            .into_iter()
            .collect();
    let (first, last) = (net.first_host(), net.last_host());
    let count = last - first + 1;
    for _ in 0..RANDOM_TRIES {
        let candidate = first + random_u32() % count;
        if !held.contains(&candidate) {
            return Ok(Some(candidate));
        }
    }
    Ok((first..=last).find(|a| !held.contains(a)))
}

fn reservation_from_row(r: &sqlx::mysql::MySqlRow) -> Result<Reservation, StoreError> {
    let col = |e: sqlx::Error| StoreError::Corrupt(format!("ipam_reservations: {e}"));
    let address: u32 = r.try_get("address").map_err(col)?;
    let reservation_type: String = r.try_get("reservation_type").map_err(col)?;
    Ok(Reservation {
        address: Ipv4Addr::from(address),
        reservation_type: ReservationType::parse(&reservation_type),
        owner_kind: r.try_get("user_kind").map_err(col)?,
        owner_uid: r.try_get("user_uid").map_err(col)?,
        reserved_at: r.try_get("reserved_at").map_err(col)?,
        halo_until: r.try_get("halo_until").map_err(col)?,
        comment: r.try_get("comment").map_err(col)?,
    })
}

impl Store {
    /// Reserves an address (see the module contract).
    pub async fn reserve_address(&self, req: &ReserveRequest) -> Result<Reserved, StoreError> {
        let net = validate_request(req)?;
        self.with_retry("reserve address", || async {
            let mut tx = self.begin("reserve address").await?;
            hold_namespaces(&mut tx, [req.namespace.as_str()]).await?;
            let anchor = locked_named(&mut tx, req).await?;
            let mut plan = Vec::new();
            sweep_halos(&mut tx, &req.network_uid, &anchor, None, &mut plan).await?;
            let reserved = reserve_locked(&mut tx, &anchor, net, req, &mut plan).await?;
            apply_leases(&mut tx, plan).await?;
            self.commit(tx, "reserve address").await?;
            Ok(reserved)
        })
        .await
    }

    /// Reserves a new network's network, broadcast and gateway (first host) addresses,
    /// owned by the Network; idempotent. Returns them in that order.
    pub async fn reserve_network_addresses(
        &self,
        network_uid: &str,
        network_name: &str,
        namespace: &str,
        netblock: &str,
    ) -> Result<Vec<Reserved>, StoreError> {
        let owner = ObjectRef {
            kind: "Network".into(),
            name: network_name.into(),
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            uid: network_uid.into(),
        };
        let base = ReserveRequest {
            network_uid: network_uid.into(),
            network_name: network_name.into(),
            namespace: namespace.into(),
            netblock: netblock.into(),
            address: None,
            reservation_type: ReservationType::Network,
            owner: Some(owner),
            comment: None,
        };
        let net = validate_request(&base)?;
        let requests: Vec<ReserveRequest> = [
            (ReservationType::Network, net.network),
            (ReservationType::Broadcast, net.broadcast()),
            (ReservationType::Gateway, net.first_host()),
        ]
        .into_iter()
        .map(|(t, a)| ReserveRequest {
            address: Some(Ipv4Addr::from(a)),
            reservation_type: t,
            ..base.clone()
        })
        .collect();
        self.with_retry("reserve network addresses", || async {
            let mut tx = self.begin("reserve network addresses").await?;
            hold_namespaces(&mut tx, [namespace]).await?;
            let anchor = locked_named(&mut tx, &base).await?;
            let mut plan = Vec::new();
            sweep_halos(&mut tx, network_uid, &anchor, None, &mut plan).await?;
            let mut out = Vec::with_capacity(requests.len());
            for req in &requests {
                out.push(reserve_locked(&mut tx, &anchor, net, req, &mut plan).await?);
            }
            apply_leases(&mut tx, plan).await?;
            self.commit(tx, "reserve network addresses").await?;
            Ok(out)
        })
        .await
    }

    /// Releases `address` into the deletion halo for `halo` (normally
    /// [`IP_DELETION_HALO_DURATION`]) and returns when the halo ends. `owner_uid`, when
    /// given, must be the holder's; releasing again is idempotent.
    pub async fn release_address(
        &self,
        network_uid: &str,
        address: Ipv4Addr,
        owner_uid: Option<&str>,
        halo: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        check_uid("network uid", network_uid)?;
        let halo_micros = micros(halo)?;
        let a = u32::from(address);
        self.with_retry("release address", || async {
            let mut tx = self.begin("release address").await?;
            let anchor = lock_anchor(&mut tx, network_uid, AnchorMode::Existing).await?;
            let not_found = |anchor: Option<&Anchor>| StoreError::NotFound {
                kind: LEASE_KIND.into(),
                namespace: anchor.map(|x| x.namespace.clone()).unwrap_or_default(),
                name: anchor.map_or_else(
                    || format!("{network_uid}/{address}"),
                    |x| lease_name(&x.name, address),
                ),
            };
            let Some(anchor) = anchor else {
                return Err(not_found(None));
            };
            let row = sqlx::query(
                "SELECT reservation_type, user_uid, halo_until FROM ipam_reservations \
                 WHERE network_uid = ? AND address = ? FOR UPDATE",
            )
            .bind(network_uid)
            .bind(a)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::query("read reservation"))?
            .ok_or_else(|| not_found(Some(&anchor)))?;
            let col = |e: sqlx::Error| StoreError::Corrupt(format!("ipam_reservations: {e}"));
            let reservation_type: String = row.try_get("reservation_type").map_err(col)?;
            let user_uid: Option<String> = row.try_get("user_uid").map_err(col)?;
            let halo_until: Option<DateTime<Utc>> = row.try_get("halo_until").map_err(col)?;
            let same_owner = owner_uid.is_none_or(|o| user_uid.as_deref() == Some(o));
            if reservation_type == DELETION_HALO {
                // A retried release by its owner finds it resting already.
                return match halo_until {
                    Some(until) if same_owner => Ok(until),
                    _ => Err(not_found(Some(&anchor))),
                };
            }
            if !same_owner {
                return Err(StoreError::Conflict {
                    kind: LEASE_KIND.into(),
                    namespace: anchor.namespace.clone(),
                    name: lease_name(&anchor.name, address),
                    reason: format!(
                        "address {address} is held by {}, not {}",
                        user_uid.as_deref().unwrap_or("no owner"),
                        owner_uid.unwrap_or_default()
                    ),
                });
            }
            sqlx::query(
                "UPDATE ipam_reservations SET reservation_type = 'deletion-halo', reserved_at = NOW(6), \
                 halo_until = NOW(6) + INTERVAL ? MICROSECOND WHERE network_uid = ? AND address = ?",
            )
            .bind(halo_micros)
            .bind(network_uid)
            .bind(a)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("release address"))?;
            let until: DateTime<Utc> = sqlx::query_scalar(
                "SELECT halo_until FROM ipam_reservations WHERE network_uid = ? AND address = ?",
            )
            .bind(network_uid)
            .bind(a)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::query("release address"))?;
            let key = lease_key(&anchor.namespace, &anchor.name, a);
            apply_leases(&mut tx, vec![LeaseOp::Halo(key, until)]).await?;
            self.commit(tx, "release address").await?;
            Ok(until)
        })
        .await
    }

    /// Removes the network's expired halos (and their IPAMLeases); returns how many.
    /// Reservations do this themselves; a periodic caller keeps idle networks tidy.
    pub async fn sweep_expired_halos(&self, network_uid: &str) -> Result<usize, StoreError> {
        check_uid("network uid", network_uid)?;
        self.with_retry("sweep deletion halo", || async {
            let mut tx = self.begin("sweep deletion halo").await?;
            let Some(anchor) = lock_anchor(&mut tx, network_uid, AnchorMode::Existing).await?
            else {
                return Ok(0);
            };
            let mut plan = Vec::new();
            let swept = sweep_halos(&mut tx, network_uid, &anchor, None, &mut plan).await?;
            apply_leases(&mut tx, plan).await?;
            self.commit(tx, "sweep deletion halo").await?;
            Ok(swept)
        })
        .await
    }

    /// Every reservation of a network (halos included), in numeric address order.
    pub async fn list_reservations(
        &self,
        network_uid: &str,
    ) -> Result<Vec<Reservation>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, reservation_type, user_kind, user_uid, reserved_at, halo_until, comment \
             FROM ipam_reservations WHERE network_uid = ? ORDER BY address",
        )
        .bind(network_uid)
        .fetch_all(self.pool())
        .await
        .map_err(StoreError::query("list reservations"))?;
        rows.iter().map(reservation_from_row).collect()
    }

    /// The network's VXLAN id: allocated at random on first call (unique across
    /// networks, retried on collision), the same one afterwards.
    pub async fn allocate_vxid(&self, network_uid: &str) -> Result<u32, StoreError> {
        check_uid("network uid", network_uid)?;
        self.with_retry("allocate vxid", || async {
            let mut tx = self.begin("allocate vxid").await?;
            let anchor = lock_anchor(&mut tx, network_uid, AnchorMode::Create)
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("network_vxids row of {network_uid} vanished"))
                })?;
            if let Some(vxid) = anchor.vxid {
                return Ok(vxid);
            }
            for _ in 0..VXID_TRIES {
                let vxid = 1 + random_u32() % MAX_VXID;
                let res = sqlx::query("UPDATE network_vxids SET vxid = ? WHERE network_uid = ?")
                    .bind(vxid)
                    .bind(network_uid)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("allocate vxid"));
                match res {
                    Ok(_) => {
                        self.commit(tx, "allocate vxid").await?;
                        return Ok(vxid);
                    }
                    Err(e) if e.is_duplicate_key() => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(StoreError::Conflict {
                kind: "Network".into(),
                namespace: anchor.namespace.clone(),
                name: anchor.name.clone(),
                reason: format!("no free VXLAN id after {VXID_TRIES} random tries"),
            })
        })
        .await
    }
}

async fn locked_named(tx: &mut Tx, req: &ReserveRequest) -> Result<Anchor, StoreError> {
    lock_anchor(
        tx,
        &req.network_uid,
        AnchorMode::Named {
            namespace: &req.namespace,
            name: &req.network_name,
        },
    )
    .await?
    .ok_or_else(|| {
        StoreError::Corrupt(format!("network_vxids row of {} vanished", req.network_uid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netblock_hosts_exclude_network_and_broadcast() {
        let n = Netblock::parse("10.0.0.0/24").expect("parse");
        assert_eq!(Ipv4Addr::from(n.first_host()), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(Ipv4Addr::from(n.last_host()), Ipv4Addr::new(10, 0, 0, 254));
        assert_eq!(Ipv4Addr::from(n.broadcast()), Ipv4Addr::new(10, 0, 0, 255));
        assert!(n.contains(u32::from(Ipv4Addr::new(10, 0, 0, 255))));
        assert!(!n.contains(u32::from(Ipv4Addr::new(10, 0, 1, 0))));
        let n = Netblock::parse("192.168.1.8/29").expect("parse");
        assert_eq!(
            Ipv4Addr::from(n.last_host()),
            Ipv4Addr::new(192, 168, 1, 14)
        );
        assert!(Netblock::parse("10.0.0.1/24").is_err());
        assert!(Netblock::parse("10.0.0.0/31").is_err());
    }

    #[test]
    fn lease_names_use_dashes() {
        assert_eq!(
            lease_name("web", Ipv4Addr::new(10, 0, 0, 5)),
            "web-10-0-0-5"
        );
    }
}
