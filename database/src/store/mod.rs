//! The store: every query the gateway runs, behind named functions.
//!
//! Contract:
//! - All SQL of the running system lives under this module (migrations live in
//!   [`crate::migration`]); callers see typed functions and [`StoreError`].
//! - Every write that changes a resource allocates its revision(s) from the one-row
//!   `revision_counter` ([`allocate_revisions`]) after taking every other lock it may
//!   wait for (its own rows in `resources`, `work_queue`, `ipam_reservations`, ... are
//!   locked or inserted first); after the counter it writes only `resources` and
//!   `change_log`, whose contended rows only counter holders create, so no deadlock
//!   cycle can include the counter. It appends the full object to `change_log` (and
//!   the previous one only when the labels changed, for selector transitions) and
//!   commits. The counter's row lock is held to COMMIT, so commit
//!   order is revision order and a rolled-back write leaves no gap (invariant 1).
//! - Write transactions run in READ COMMITTED; a deadlock (1213), write conflict
//!   (1020) or lock wait timeout (1205) reruns the whole transaction, a bounded number
//!   of times; it is never reported as success without the row (invariant 3).
//! - A committed local write wakes the change feed at once ([`Store::committed`]).
//! - Locking statements over key lists (`IN (...)`, `FOR UPDATE`, `DELETE`, `UPDATE`)
//!   name their index with `FORCE INDEX`: when a table is small or its statistics lag
//!   (a queue that empties and refills), the optimizer picks a full scan, and a locking
//!   full scan waits for every row another transaction holds. Measured: batch
//!   completions stalled up to 15 s behind each other that way.

pub mod blobs;
mod combine;
pub use combine::{CombineMetrics, KindLabel};
pub mod events;
pub mod ipam;
pub mod locks;
pub mod namespaces;
pub mod queue;
pub mod resources;
mod wakes;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::{self, MySql, MySqlPool, Transaction, mysql::MySqlDatabaseError};
use serde_json::Value;
use tokio::sync::Notify;

pub use resources::{ObjectKey, Stored};

/// How often a transaction is rerun after a deadlock or write conflict.
const MAX_TX_ATTEMPTS: u32 = 8;

/// How often BEGIN is tried on fresh connections after an I/O error.
const BEGIN_ATTEMPTS: u32 = 4;

/// Errors of the store. Outcomes a caller acts on have their own variant; a failed
/// query names the store operation it belonged to.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object.
    #[error("{kind} {} not found", display_name(.namespace, .name))]
    NotFound {
        /// Kind.
        kind: String,
        /// Namespace ('' for cluster-scoped).
        namespace: String,
        /// Name (or uid for a lookup by uid).
        name: String,
    },
    /// An object of that name exists already.
    #[error("{kind} {} already exists", display_name(.namespace, .name))]
    AlreadyExists {
        /// Kind.
        kind: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A compare-and-swap precondition failed (Kubernetes 409 Conflict).
    #[error(
        "Operation cannot be fulfilled on {kind} {}: {reason}",
        display_name(.namespace, .name)
    )]
    Conflict {
        /// Kind.
        kind: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What differed.
        reason: String,
    },
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A watch asked for revisions that were compacted away (Kubernetes 410).
    #[error("too old resource version: {requested} (compacted to {compacted})")]
    Expired {
        /// The revision asked for.
        requested: u64,
        /// The newest compacted revision.
        compacted: u64,
    },
    /// A lease token no longer matches its work_queue row (fencing).
    #[error("lease {id}/{attempt} is no longer held: {reason}")]
    StaleLease {
        /// work_queue row id.
        id: u64,
        /// Attempt the lease was issued at.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// No address is free in a network even after shrinking the deletion halo.
    #[error(
        "network {network} congested: no free address, even after releasing halo addresses older than 30 s"
    )]
    Congested {
        /// Network uid.
        network: String,
    },
    /// MariaDB cannot be reached (or the pool is exhausted): retry, elsewhere if need be.
    #[error("MariaDB unavailable during {operation}: {source}")]
    Unavailable {
        /// The store operation.
        operation: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed for another reason.
    #[error("{operation} failed: {source}")]
    Query {
        /// The store operation.
        operation: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored value could not be decoded (a bug or manual edit).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

fn display_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("\"{name}\"")
    } else {
        format!("\"{namespace}/{name}\"")
    }
}

/// MariaDB error numbers that mean "run the transaction again".
const RETRYABLE_MARIADB_ERRORS: [u16; 3] = [1213, 1020, 1205];

/// The MariaDB error number of a driver error, if it is a server error.
pub(crate) fn mariadb_error_number(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

impl StoreError {
    /// Wraps a driver error of `operation`, telling unavailability apart.
    pub(crate) fn query(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| match source {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => StoreError::Unavailable { operation, source },
            other => StoreError::Query {
                operation,
                source: other,
            },
        }
    }

    /// True for a deadlock, write conflict or lock wait timeout.
    fn is_retryable_conflict(&self) -> bool {
        match self {
            StoreError::Query { source, .. } => {
                mariadb_error_number(source).is_some_and(|n| RETRYABLE_MARIADB_ERRORS.contains(&n))
            }
            _ => false,
        }
    }

    /// True for a duplicate key (1062).
    pub(crate) fn is_duplicate_key(&self) -> bool {
        match self {
            StoreError::Query { source, .. } => mariadb_error_number(source) == Some(1062),
            _ => false,
        }
    }
}

/// The store over one MariaDB pool. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: MySqlPool,
    committed: Arc<Notify>,
    wakes: Arc<wakes::Wakes>,
    combiners: Arc<Combiners>,
    combine_metrics: CombineMetrics,
}

/// The write combiners of one store (see [`combine`]).
#[derive(Default)]
struct Combiners {
    writes: combine::Combiner<queue::Writes>,
    claims: combine::Combiner<queue::Claims>,
}

/// An open write transaction.
pub(crate) type Tx = Transaction<'static, MySql>;

impl Store {
    /// A store over `pool` (see [`crate::connection::connect_pool`]).
    pub fn new(pool: MySqlPool) -> Self {
        let combine_metrics = CombineMetrics::default();
        Self {
            pool,
            committed: Arc::new(Notify::new()),
            wakes: Arc::default(),
            combiners: Arc::new(Combiners {
                writes: combine::Combiner::new(combine_metrics.stats("writes")),
                claims: combine::Combiner::new(combine_metrics.stats("claims")),
            }),
            combine_metrics,
        }
    }

    /// The same store without its combiners, for their workers: a worker holding its
    /// own combiner would keep itself alive after the last caller's clone is gone.
    fn detached(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            committed: self.committed.clone(),
            wakes: self.wakes.clone(),
            combiners: Arc::default(),
            combine_metrics: self.combine_metrics.clone(),
        }
    }

    /// The counters of this store's combiners, by kind (`writes`: the queue's creates
    /// and completions; `claims`). Clones share the counts.
    pub fn combining(&self) -> CombineMetrics {
        self.combine_metrics.clone()
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Woken after every local commit that appended to the change log.
    pub fn committed(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Begins a write transaction (READ COMMITTED: the pool's sessions are set so by
    /// [`crate::connection::connect_pool`]).
    ///
    /// The pool does not ping connections at checkout, so a connection that died (a
    /// MariaDB restart) fails its BEGIN; nothing has happened yet, so BEGIN is tried
    /// again on another connection a few times before the caller sees `Unavailable`.
    pub(crate) async fn begin(&self, operation: &'static str) -> Result<Tx, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.pool.begin().await {
                Ok(tx) => return Ok(tx),
                Err(e @ sqlx::Error::Io(_)) if tries < BEGIN_ATTEMPTS => {
                    tracing::debug!(operation, error = %e, "BEGIN on a dead connection; retrying");
                }
                Err(e) => return Err(StoreError::query(operation)(e)),
            }
        }
    }

    /// Commits and wakes the change feed.
    pub(crate) async fn commit(&self, tx: Tx, operation: &'static str) -> Result<(), StoreError> {
        tx.commit().await.map_err(StoreError::query(operation))?;
        self.committed.notify_one();
        Ok(())
    }

    /// Runs `attempt` (one whole transaction) again after a deadlock, write conflict or
    /// lock wait timeout, with a short randomised backoff.
    pub(crate) async fn with_retry<T, F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Err(e) if e.is_retryable_conflict() && tries < MAX_TX_ATTEMPTS => {
                    tracing::debug!(operation, tries, error = %e, "retrying transaction");
                    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 5;
                    tokio::time::sleep(Duration::from_millis(u64::from(tries) + jitter)).await;
                }
                other => return other,
            }
        }
    }
}

/// Allocates `n` consecutive revisions and returns the first. Must be the LAST lock a
/// write transaction takes (see the module contract).
pub(crate) async fn allocate_revisions(tx: &mut Tx, n: u64) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "UPDATE revision_counter SET revision = LAST_INSERT_ID(revision + ?) WHERE id = 1",
    )
    .bind(n)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::query("allocate revision"))?;
    let last = result.last_insert_id();
    if result.rows_affected() != 1 || last < n {
        return Err(StoreError::Corrupt(
            "revision_counter has no row 1: run `sf-ctl ensure-mariadb-schema`".into(),
        ));
    }
    Ok(last - n + 1)
}

/// Parses a stored JSON document.
pub(crate) fn parse_json(text: &str, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// RFC 3339 with second precision and `Z`, as Kubernetes writes timestamps.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
