//! The work queue: ClusterOperations, their claims by agents and the cluster, and the
//! reaper (DESIGN invariants 3, 4, 6).
//!
//! Contract:
//! - **Create** ([`Store::create_operations`], [`Store::create_operation`]) writes, in ONE
//!   transaction (rerun on deadlock/conflict, never reported as success without the
//!   rows): the `cluster_operations` projection row, its `operation_dependencies`, its
//!   `work_queue` row and then, after allocating the revision LAST, the ClusterOperation
//!   resource with `status {state: queued, attempts: 0}`. A duplicate (namespace, name)
//!   is [`StoreError::AlreadyExists`], detected before the revision is allocated.
//!   `spec.dependsOn` names operations of the same namespace (created earlier, or earlier
//!   in the same batch); an unknown name is [`StoreError::Invalid`] naming it, and so is
//!   a dependency that already ended in `error` or `abort` ("dependency X failed"): the
//!   new operation could never run, and refusing tells the caller at once. The queue row
//!   is `node:<spec.node>` or `cluster`, priority 0/1/2 for high/normal/low,
//!   `scheduled_at` now + delay, `waiting_on` = dependencies not yet complete.
//! - **Claim** ([`Store::claim`]) takes ready rows (`waiting_on = 0`, unclaimed, due) of
//!   `node:<node>` and `cluster`, ordered by priority, scheduled time and id, with
//!   `SELECT ... FOR UPDATE SKIP LOCKED`, in one transaction per batch. It touches only
//!   `work_queue` (no revision, no resource write): the returned object has
//!   `status.state = executing`, `attempts`, `claimedBy` and `startedAt` overlaid, while
//!   the STORED resource keeps `queued` until Complete/Fail (a GET-side overlay is a
//!   later change). A claim that names a `claim_id` whose rows are still claimed gets
//!   the same rows again: a claimer whose response was lost (or whose call was
//!   cancelled after the commit, Shaken Fist #3605) retries with the same id and loses
//!   nothing (a replay stamps the rows' heartbeat first, so they are never put back
//!   under it, see below). A claim is one transaction of two statements: one
//!   scan locks ready rows of every queue (SKIP LOCKED) with their objects and, on a
//!   call's first attempt, asks whether its `claim_id` still holds rows; one UPDATE
//!   claims them. Only an idle re-poll (after a nap nothing woke) first looks without
//!   locks whether any queue has a ready row. Concurrent claims of one gateway over
//!   the same queues are combined (`Claims`, see `store/combine.rs`): one
//!   transaction for all of them, its rows shared out in arrival order, each
//!   claim up to its max and under its own `claim_id` and claimer. A claim whose caller
//!   went away while its attempt ran puts the rows back (attempt undone, in the
//!   background) rather than leaving them to the reaper, unless they were heartbeated
//!   or replayed since. When nothing is ready the claim
//!   long-polls up to `wait`: it looks again every 250 ms, and at once when woken.
//!   Wakes are aimed (`store/wakes.rs`) so that work does not stampede every claimer
//!   into a scan: new work wakes one claim of its node per operation, a completion
//!   wakes the queues of the work it made ready, failures, aborts and re-queues wake
//!   every claim of the gateway, and other gateways' writes arrive through this
//!   gateway's change feed (≤ its poll interval), so idle claimers cost MariaDB
//!   nothing.
//! - **Per-target exclusion**: no two operations on one target are claimed at once. The
//!   generated column `work_queue.claimed_target` (the target uid while claimed, else
//!   NULL) has a UNIQUE key, so InnoDB itself refuses a second claimed row per target,
//!   also between concurrent claimers on several gateways, whatever they read. The
//!   ready scan skips targets that are already claimed (a non-locking `NOT EXISTS` on
//!   that key, so the scan does not stall on them) and a batch takes one row per
//!   target; a claimer that races another one to a target gets a duplicate-key error
//!   on that row, which only drops the row from its batch (a deadlock between two such
//!   claimers reruns the claim).
//! - **Leases and fencing**: a claim returns a [`Lease`] `(row id, attempt)`.
//!   [`Store::heartbeat`], [`Store::complete`], [`Store::complete_batch`] and
//!   [`Store::fail`] with a lease whose row is gone, re-claimed (attempt differs) or no
//!   longer claimed get [`StoreError::StaleLease`] and change nothing.
//! - **Complete** deletes the row, decrements `waiting_on` of the dependents, sets the
//!   projection to `complete` and writes the status (state, result, attempts,
//!   claimedBy, startedAt, completedAt): one revision per operation;
//!   [`Store::complete_batch`] completes many leases in one transaction with one
//!   [`allocate_revisions`] call.
//! - **Fail**: a retryable failure below [`CLUSTER_OP_MAX_ATTEMPTS`] clears the claim and
//!   re-schedules the row after an exponential backoff (1 s, 2 s, 4 s, ..., capped at
//!   5 min); the status stays `queued` with the report (one revision). Otherwise the
//!   operation goes to `error` with the report and its row is deleted.
//! - **Failure propagates**: when an operation ends in `error` or `abort`, every
//!   operation that depends on it, transitively, is aborted (code `DependencyFailed`),
//!   in the same transaction, one revision each.
//! - **Abort** ([`Store::abort`]) aborts a target's queued and executing operations
//!   except `instance_snapshot` ones (kept to complete first; a kept snapshot that
//!   depended on an aborted operation is released rather than aborted). The row of an
//!   aborted EXECUTING operation stays claimed until its claimer learns of it: its
//!   heartbeat returns `false` (stop), its complete/fail is [`StoreError::StaleLease`]
//!   and removes the row (the operation stays `abort`); until then the target stays
//!   busy, so a delete queued after the abort never runs beside the aborted work.
//! - **Reaper** ([`Store::reap_stuck`]): a claimed row whose last heartbeat (or claim) is
//!   older than the threshold is re-queued with its attempts kept; one at
//!   `max_attempts` is deleted and its operation goes to `error` ("claimed N times
//!   without completing; rejected by the reaper"). Rows of aborted operations are
//!   simply removed.
//! - **Retention** ([`Store::purge_terminal_operations`]) removes complete/error/abort
//!   operations older than a threshold: projection, dependency edges and the resource
//!   (through the resources building blocks, so watchers see DELETED).
//! - **Combining**: concurrent [`Store::create_operations`] and [`Store::complete_batch`]
//!   calls of one store run as one transaction (`Writes`, see `store/combine.rs`):
//!   the creates' rows, then the completions' locks, then ONE revision allocation for
//!   both. Each call gets its own outcome; a combined transaction that fails as a whole
//!   (a duplicate name, an unknown dependency) is rerun call by call.
//! - Lock order, as the store contract requires: `work_queue` rows, then
//!   `cluster_operations` rows (a completion locks each of its queue rows together
//!   with that row's operation row, in id order), then dependents' rows, then
//!   `resources` rows, then the revision counter, then only `resources`/`change_log`
//!   writes. Deadlocks between these orders are retried (store contract).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use sea_orm::sqlx::{self, Row, mysql::MySqlRow};
use serde_json::{Map, Value, json};
use sf_schema::operation::{ClusterOperation, ClusterOperationSpec, Priority};
use sf_schema::validation::validate_cluster_operation;

use super::combine::{self, Combine};
use super::namespaces::hold_namespaces;
use super::resources::{
    ChangeRow, NewObject, Replacement, Row0, append_changes, insert_objects_log_later, prepare_new,
    remove_object, replace_objects_log_later,
};
use super::{ObjectKey, Store, StoreError, Stored, Tx, allocate_revisions, parse_json, rfc3339};

pub use sf_schema::operation::ErrorReport;

/// After this many claims an operation that fails (or is reaped) goes to error.
pub const CLUSTER_OP_MAX_ATTEMPTS: u32 = 5;
/// A claim without a heartbeat for this long is re-queued by the reaper.
pub const CLUSTER_OP_STUCK_THRESHOLD: Duration = Duration::from_secs(1800);
/// The longest batch one claim takes.
pub const MAX_CLAIM_BATCH: u32 = 500;

/// The resource kind.
const KIND: &str = "ClusterOperation";
/// The operation type abort() keeps.
const SNAPSHOT: &str = "instance_snapshot";
/// How often a waiting claim looks again without being woken: a safety net for rows
/// whose `scheduled_at` arrives (backoff, delay). Wakes (`store/wakes.rs`) cover work
/// enqueued or freed through this gateway or, through the change feed, through others.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The first retry backoff, doubled per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest retry backoff.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Rows per statement or transaction in bulk paths.
const CHUNK: usize = 500;

/// A claim on one work_queue row: valid while the row exists, is claimed, and its
/// attempts counter still equals `attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    /// The work_queue row id.
    pub id: u64,
    /// The attempt this claim made (1 for the first claim).
    pub attempt: u32,
}

/// One claimed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The lease to heartbeat, complete or fail with.
    pub lease: Lease,
    /// The ClusterOperation with `status.state = executing`, `attempts`, `claimedBy`
    /// and `startedAt` overlaid (the stored resource still says `queued`).
    pub object: Value,
}

/// The retry delay after the `attempts`-th claim failed.
pub fn retry_backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

// ---------------------------------------------------------------------------------
// Small helpers.

/// `?, ?, ?` for `n` values.
fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// A dynamic statement built from constant fragments and placeholders only.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

fn col<'r, T>(row: &'r MySqlRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("work queue column {name}: {e}")))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn timestamp_from_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(rfc3339)
        .unwrap_or_default()
}

fn priority_number(p: &Priority) -> Result<u8, StoreError> {
    match p {
        Priority::High => Ok(0),
        Priority::Normal => Ok(1),
        Priority::Low => Ok(2),
        Priority::Other(v) => Err(StoreError::Invalid(format!(
            "spec.priority: unsupported value {v:?}: supported values: \"high\", \"normal\", \"low\""
        ))),
    }
}

fn stale(lease: Lease, reason: impl Into<String>) -> StoreError {
    StoreError::StaleLease {
        id: lease.id,
        attempt: lease.attempt,
        reason: reason.into(),
    }
}

/// Reads the work_queue columns every path needs. Times are epoch microseconds.
const QUEUE_COLUMNS: &str = "w.id, w.op_uid, w.target_uid, w.attempts, w.priority, w.claimed_by, \
     CAST(UNIX_TIMESTAMP(w.claimed_at) * 1000000 AS SIGNED) AS claimed_us, \
     CAST(UNIX_TIMESTAMP(w.scheduled_at) * 1000000 AS SIGNED) AS scheduled_us";

/// A work_queue row (locked by the reader unless said otherwise).
#[derive(Debug, Clone)]
struct QueueRow {
    id: u64,
    op_uid: String,
    target_uid: String,
    attempts: u32,
    priority: u8,
    claimed_by: Option<String>,
    /// When claimed (epoch µs); None while unclaimed.
    claimed_us: Option<i64>,
    scheduled_us: i64,
}

impl QueueRow {
    fn decode(row: &MySqlRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: col(row, "id")?,
            op_uid: col(row, "op_uid")?,
            target_uid: col(row, "target_uid")?,
            attempts: col(row, "attempts")?,
            priority: col(row, "priority")?,
            claimed_by: col(row, "claimed_by")?,
            claimed_us: col(row, "claimed_us")?,
            scheduled_us: col::<Option<i64>>(row, "scheduled_us")?.unwrap_or(0),
        })
    }

    fn sort_key(&self) -> (u8, i64, u64) {
        (self.priority, self.scheduled_us, self.id)
    }
}

/// Runs a locking SELECT over `keys` in chunks of [`CHUNK`]: `template` holds one `{}`,
/// replaced by the chunk's placeholders. Returns every row, decoded.
async fn fetch_by_keys<K, T>(
    tx: &mut Tx,
    keys: &[K],
    template: &str,
    operation: &'static str,
    decode: fn(&MySqlRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError>
where
    K: for<'q> sqlx::Encode<'q, sqlx::MySql> + sqlx::Type<sqlx::MySql> + Sync,
{
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let mut q = sqlx::query(sql(template.replacen("{}", &marks(chunk.len()), 1)));
        for key in chunk {
            q = q.bind(key);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::query(operation))?
        {
            out.push(decode(&row)?);
        }
    }
    Ok(out)
}

/// Locks work_queue rows by operation uid.
async fn lock_queue_rows_of(
    tx: &mut Tx,
    op_uids: &[String],
) -> Result<HashMap<String, QueueRow>, StoreError> {
    let template = format!(
        "SELECT {QUEUE_COLUMNS} FROM work_queue w FORCE INDEX (ux_work_queue_op) WHERE w.op_uid IN ({{}}) ORDER BY w.id FOR UPDATE"
    );
    let rows = fetch_by_keys(
        tx,
        op_uids,
        &template,
        "lock work queue rows",
        QueueRow::decode,
    )
    .await?;
    Ok(rows.into_iter().map(|r| (r.op_uid.clone(), r)).collect())
}

/// A `cluster_operations` projection row.
#[derive(Debug, Clone)]
struct OpRow {
    uid: String,
    namespace: String,
    name: String,
    operation_type: String,
    state: String,
}

impl OpRow {
    fn decode(row: &MySqlRow) -> Result<Self, StoreError> {
        Ok(Self {
            uid: col(row, "uid")?,
            namespace: col(row, "namespace")?,
            name: col(row, "name")?,
            operation_type: col(row, "operation_type")?,
            state: col(row, "state")?,
        })
    }

    fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

const OP_COLUMNS: &str = "uid, namespace, name, operation_type, CAST(state AS CHAR) AS state";

/// Locks projection rows by uid.
async fn lock_ops(tx: &mut Tx, uids: &[String]) -> Result<HashMap<String, OpRow>, StoreError> {
    let template = format!(
        "SELECT {OP_COLUMNS} FROM cluster_operations FORCE INDEX (PRIMARY) WHERE uid IN ({{}}) FOR UPDATE"
    );
    let rows = fetch_by_keys(
        tx,
        uids,
        &template,
        "lock cluster operations",
        OpRow::decode,
    )
    .await?;
    Ok(rows.into_iter().map(|r| (r.uid.clone(), r)).collect())
}

/// Locks ClusterOperation resource rows by uid (the resources building blocks' row).
async fn lock_resources(tx: &mut Tx, uids: &[String]) -> Result<HashMap<String, Row0>, StoreError> {
    let mut out = HashMap::new();
    for chunk in uids.chunks(CHUNK) {
        let text = format!(
            "SELECT uid, namespace, name, resource_version, generation, object FROM resources \
             FORCE INDEX (ux_resources_uid) WHERE uid IN ({}) AND kind = ? FOR UPDATE",
            marks(chunk.len())
        );
        let mut q = sqlx::query(sql(text));
        for uid in chunk {
            q = q.bind(uid);
        }
        q = q.bind(KIND);
        for row in q
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::query("lock operation resources"))?
        {
            let text: String = col(&row, "object")?;
            let r = Row0 {
                key: ObjectKey::new(
                    KIND,
                    col::<String>(&row, "namespace")?,
                    col::<String>(&row, "name")?,
                ),
                uid: col(&row, "uid")?,
                resource_version: col(&row, "resource_version")?,
                generation: col(&row, "generation")?,
                object: parse_json(&text, "resources.object")?,
            };
            out.insert(r.uid.clone(), r);
        }
    }
    Ok(out)
}

async fn delete_queue_rows(tx: &mut Tx, ids: &[u64]) -> Result<(), StoreError> {
    for chunk in ids.chunks(CHUNK) {
        let text = format!(
            "DELETE w FROM work_queue w FORCE INDEX (PRIMARY) WHERE w.id IN ({})",
            marks(chunk.len())
        );
        let mut q = sqlx::query(sql(text));
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("delete work queue rows"))?;
    }
    Ok(())
}

/// Clears the claim of rows (re-queue), `delay_us` after now.
async fn requeue_rows(tx: &mut Tx, ids: &[u64], delay_us: Option<u64>) -> Result<(), StoreError> {
    for chunk in ids.chunks(CHUNK) {
        let schedule = if delay_us.is_some() {
            "scheduled_at = NOW(6) + INTERVAL ? MICROSECOND, "
        } else {
            ""
        };
        let text = format!(
            "UPDATE work_queue FORCE INDEX (PRIMARY) SET {schedule}claimed_at = NULL, claimed_by = NULL, claim_id = NULL, \
             heartbeat_at = NULL WHERE id IN ({})",
            marks(chunk.len())
        );
        let mut q = sqlx::query(sql(text));
        if let Some(d) = delay_us {
            q = q.bind(d);
        }
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("re-queue work"))?;
    }
    Ok(())
}

async fn set_op_state(tx: &mut Tx, uids: &[String], state: &str) -> Result<(), StoreError> {
    for chunk in uids.chunks(CHUNK) {
        let text = format!(
            "UPDATE cluster_operations FORCE INDEX (PRIMARY) SET state = ?, updated_at = NOW(6) WHERE uid IN ({})",
            marks(chunk.len())
        );
        let mut q = sqlx::query(sql(text)).bind(state);
        for uid in chunk {
            q = q.bind(uid);
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("update operation state"))?;
    }
    Ok(())
}

/// Dependency edges `(dependent, dependency)` whose dependency is one of `uids`.
async fn dependents_of(tx: &mut Tx, uids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for chunk in uids.chunks(CHUNK) {
        let text = format!(
            "SELECT op_uid, depends_on_uid FROM operation_dependencies WHERE depends_on_uid IN ({})",
            marks(chunk.len())
        );
        let mut q = sqlx::query(sql(text));
        for uid in chunk {
            q = q.bind(uid);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::query("read dependents"))?
        {
            out.push((col(&row, "op_uid")?, col(&row, "depends_on_uid")?));
        }
    }
    Ok(out)
}

/// Lowers `waiting_on` of each dependent by its count of finished dependencies.
async fn release_dependents(tx: &mut Tx, counts: &BTreeMap<String, u32>) -> Result<(), StoreError> {
    let mut by_count: BTreeMap<u32, Vec<&String>> = BTreeMap::new();
    for (uid, n) in counts {
        by_count.entry(*n).or_default().push(uid);
    }
    for (n, uids) in by_count {
        for chunk in uids.chunks(CHUNK) {
            let text = format!(
                "UPDATE work_queue FORCE INDEX (ux_work_queue_op) SET waiting_on = GREATEST(waiting_on, ?) - ? WHERE op_uid IN ({})",
                marks(chunk.len())
            );
            let mut q = sqlx::query(sql(text)).bind(n).bind(n);
            for uid in chunk {
                q = q.bind(*uid);
            }
            q.execute(&mut **tx)
                .await
                .map_err(StoreError::query("release dependents"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Finishing operations: the one path every outcome goes through.

/// What happens to an operation.
#[derive(Debug, Clone)]
enum Outcome {
    /// Done, with its result.
    Complete(Option<Value>),
    /// Failed but will be tried again after `delay`.
    Retry(ErrorReport, Duration),
    /// Failed for good.
    Error(ErrorReport),
    /// Cancelled.
    Abort(ErrorReport),
}

impl Outcome {
    fn state(&self) -> &'static str {
        match self {
            Outcome::Complete(_) => "complete",
            Outcome::Retry(..) => "queued",
            Outcome::Error(_) => "error",
            Outcome::Abort(_) => "abort",
        }
    }
}

/// One operation to finish: its locked projection row, its locked queue row (if any).
#[derive(Debug, Clone)]
struct Finishing {
    op: OpRow,
    queue: Option<QueueRow>,
    outcome: Outcome,
}

/// The new status of a finished operation (pure apart from the clock).
fn next_object(stored: &Value, item: &Finishing) -> Result<Value, StoreError> {
    let mut next = stored.clone();
    let map = next
        .as_object_mut()
        .ok_or_else(|| StoreError::Corrupt("stored operation is not a JSON object".into()))?;
    let status = map.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    let status: &mut Map<String, Value> = status
        .as_object_mut()
        .ok_or_else(|| StoreError::Corrupt("operation status is not an object".into()))?;
    status.insert("state".into(), json!(item.outcome.state()));
    if let Some(q) = &item.queue {
        status.insert("attempts".into(), json!(q.attempts));
    } else if !status.contains_key("attempts") {
        status.insert("attempts".into(), json!(0));
    }
    let now = rfc3339(chrono::Utc::now());
    let claimed = item
        .queue
        .as_ref()
        .and_then(|q| q.claimed_us.map(|us| (q, us)));
    let record_claim = |status: &mut Map<String, Value>| {
        if let Some((q, us)) = claimed {
            if let Some(by) = &q.claimed_by {
                status.insert("claimedBy".into(), json!(by));
            }
            status.insert("startedAt".into(), json!(timestamp_from_micros(us)));
        }
    };
    match &item.outcome {
        Outcome::Complete(result) => {
            record_claim(status);
            status.insert("completedAt".into(), json!(now));
            status.remove("errorReport");
            match result {
                Some(r) => status.insert("result".into(), r.clone()),
                None => status.remove("result"),
            };
        }
        Outcome::Retry(report, _) => {
            status.remove("claimedBy");
            status.remove("startedAt");
            status.insert("errorReport".into(), report_json(report)?);
        }
        Outcome::Error(report) | Outcome::Abort(report) => {
            record_claim(status);
            status.insert("completedAt".into(), json!(now));
            status.insert("errorReport".into(), report_json(report)?);
        }
    }
    Ok(next)
}

fn report_json(report: &ErrorReport) -> Result<Value, StoreError> {
    serde_json::to_value(report).map_err(|e| StoreError::Invalid(format!("errorReport: {e}")))
}

/// Applies the work_queue and projection writes of `items`.
async fn write_queue_side(tx: &mut Tx, items: &[Finishing]) -> Result<(), StoreError> {
    let mut delete = Vec::new();
    let mut retry: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut states: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for item in items {
        match &item.outcome {
            Outcome::Retry(_, delay) => {
                if let Some(q) = &item.queue {
                    retry.entry(micros(*delay)).or_default().push(q.id);
                }
            }
            // An aborted operation that is executing keeps its claimed row until its
            // claimer learns of the abort (heartbeat false, complete/fail stale).
            Outcome::Abort(_) => {
                if let Some(q) = item.queue.as_ref().filter(|q| q.claimed_us.is_none()) {
                    delete.push(q.id);
                }
                states.entry("abort").or_default().push(item.op.uid.clone());
            }
            Outcome::Complete(_) | Outcome::Error(_) => {
                if let Some(q) = &item.queue {
                    delete.push(q.id);
                }
                states
                    .entry(item.outcome.state())
                    .or_default()
                    .push(item.op.uid.clone());
            }
        }
    }
    delete_queue_rows(tx, &delete).await?;
    for (delay, ids) in retry {
        requeue_rows(tx, &ids, Some(delay)).await?;
    }
    for (state, uids) in states {
        set_op_state(tx, &uids, state).await?;
    }
    Ok(())
}

/// What [`finish`] did.
struct Finished {
    /// The stored object of each primary item, in order (None: its resource is gone).
    stored: Vec<Option<Stored>>,
    /// Names (`namespace/name`) of dependents aborted because a dependency failed.
    cascaded: Vec<String>,
    /// The change-log rows of the resource writes: [`finish_write`] leaves them to its
    /// caller to append before COMMIT; [`finish`] has appended them already.
    changes: Vec<ChangeRow>,
}

/// Finishes `items` (whose queue and projection rows the caller locked, in that order):
/// queue rows, projection states, dependents (released on completion, aborted
/// transitively on error/abort unless in `keep`, which are released), then the
/// resources, with their revisions allocated last.
async fn finish(
    tx: &mut Tx,
    items: Vec<Finishing>,
    keep: &HashSet<String>,
) -> Result<Finished, StoreError> {
    let prepared = finish_prepare(tx, items, keep).await?;
    let first = match prepared.revision_count() {
        0 => 0,
        n => allocate_revisions(tx, n).await?,
    };
    let finished = finish_write(tx, prepared, first).await?;
    append_changes(tx, &finished.changes).await?;
    Ok(finished)
}

/// What [`finish_prepare`] decided: the resource writes that remain, after the counter.
struct PreparedFinish {
    /// How many primary items there were.
    items: usize,
    /// The locked resource rows, by uid.
    rows: HashMap<String, Row0>,
    /// (item index, uid, next object) per resource write, in revision order.
    writes: Vec<(usize, String, Value)>,
    cascaded: Vec<String>,
    released: usize,
}

impl PreparedFinish {
    fn revision_count(&self) -> u64 {
        u64::try_from(self.writes.len()).unwrap_or(u64::MAX)
    }
}

/// Everything of [`finish`] before the revision counter: queue rows, projection states,
/// dependents, and the locked resources with their next objects.
async fn finish_prepare(
    tx: &mut Tx,
    items: Vec<Finishing>,
    keep: &HashSet<String>,
) -> Result<PreparedFinish, StoreError> {
    write_queue_side(tx, &items).await?;

    // Completion releases dependents.
    let mut released = 0;
    let completed: Vec<String> = items
        .iter()
        .filter(|i| matches!(i.outcome, Outcome::Complete(_)))
        .map(|i| i.op.uid.clone())
        .collect();
    if !completed.is_empty() {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for (dependent, _) in dependents_of(tx, &completed).await? {
            *counts.entry(dependent).or_default() += 1;
        }
        release_dependents(tx, &counts).await?;
        released = counts.len();
    }

    // Error and abort propagate to dependents, transitively.
    let mut done: HashSet<String> = items.iter().map(|i| i.op.uid.clone()).collect();
    let mut frontier: HashMap<String, (String, &'static str)> = items
        .iter()
        .filter(|i| matches!(i.outcome, Outcome::Error(_) | Outcome::Abort(_)))
        .map(|i| (i.op.uid.clone(), (i.op.display(), i.outcome.state())))
        .collect();
    let mut cascaded: Vec<Finishing> = Vec::new();
    while !frontier.is_empty() {
        let uids: Vec<String> = frontier.keys().cloned().collect();
        let edges = dependents_of(tx, &uids).await?;
        let mut dependents: Vec<String> = edges
            .iter()
            .map(|(d, _)| d.clone())
            .filter(|d| !done.contains(d))
            .collect();
        dependents.sort();
        dependents.dedup();
        if dependents.is_empty() {
            break;
        }
        let queue = lock_queue_rows_of(tx, &dependents).await?;
        let ops = lock_ops(tx, &dependents).await?;
        let mut released: BTreeMap<String, u32> = BTreeMap::new();
        let mut next_frontier = HashMap::new();
        let mut round = Vec::new();
        for uid in dependents {
            let Some(op) = ops.get(&uid).filter(|o| o.state == "queued") else {
                continue;
            };
            let failed: Vec<&(String, &'static str)> = edges
                .iter()
                .filter(|(d, _)| *d == uid)
                .filter_map(|(_, dep)| frontier.get(dep))
                .collect();
            if keep.contains(&uid) {
                released.insert(uid, u32::try_from(failed.len()).unwrap_or(u32::MAX));
                continue;
            }
            let message = failed
                .iter()
                .map(|(name, state)| format!("dependency {name} ended in {state}"))
                .collect::<Vec<_>>()
                .join("; ");
            done.insert(uid.clone());
            next_frontier.insert(uid.clone(), (op.display(), "abort"));
            round.push(Finishing {
                op: op.clone(),
                queue: queue.get(&uid).cloned(),
                outcome: Outcome::Abort(ErrorReport {
                    code: "DependencyFailed".into(),
                    message,
                    retryable: false,
                }),
            });
        }
        release_dependents(tx, &released).await?;
        write_queue_side(tx, &round).await?;
        cascaded.extend(round);
        frontier = next_frontier;
    }

    // Resources last: lock them, then the counter, then write.
    let all: Vec<&Finishing> = items.iter().chain(cascaded.iter()).collect();
    let uids: Vec<String> = all.iter().map(|i| i.op.uid.clone()).collect();
    let rows = lock_resources(tx, &uids).await?;
    let mut writes = Vec::new();
    for (index, item) in all.iter().enumerate() {
        if let Some(row) = rows.get(&item.op.uid) {
            let next = next_object(&row.object, item)?;
            writes.push((index, item.op.uid.clone(), next));
        } else {
            tracing::warn!(operation = %item.op.display(), uid = %item.op.uid,
                "cluster operation has no resource; finished its queue rows only");
        }
    }
    let mut names: Vec<String> = cascaded.iter().map(|c| c.op.display()).collect();
    names.sort();
    Ok(PreparedFinish {
        items: items.len(),
        rows,
        writes,
        cascaded: names,
        released,
    })
}

/// The rest of [`finish`], after the counter: the resource writes at consecutive
/// revisions from `first` (unused when there are none).
async fn finish_write(
    tx: &mut Tx,
    prepared: PreparedFinish,
    first: u64,
) -> Result<Finished, StoreError> {
    let PreparedFinish {
        items,
        rows,
        writes,
        cascaded,
        ..
    } = prepared;
    let mut stored: Vec<Option<Stored>> = vec![None; items];
    let mut changes = Vec::new();
    if !writes.is_empty() {
        let indexes: Vec<usize> = writes.iter().map(|(index, _, _)| *index).collect();
        let mut replacements = Vec::with_capacity(writes.len());
        for (_, uid, next) in writes {
            let row = rows
                .get(&uid)
                .ok_or_else(|| StoreError::Corrupt(format!("lost the locked row of {uid}")))?;
            replacements.push(Replacement {
                row,
                object: next,
                generation: row.generation,
            });
        }
        changes = replace_objects_log_later(tx, first, &mut replacements).await?;
        for ((revision, index), r) in (first..).zip(indexes).zip(replacements) {
            if index < items {
                stored[index] = Some(Stored {
                    object: r.object,
                    resource_version: revision,
                    changed: true,
                });
            }
        }
    }
    Ok(Finished {
        stored,
        cascaded,
        changes,
    })
}

/// The create half of a write, before the revision counter: projection, name check,
/// dependencies and queue rows.
async fn create_prepare(tx: &mut Tx, ops: &[NewOp]) -> Result<(), StoreError> {
    hold_namespaces(tx, ops.iter().map(|op| op.key.namespace.as_str())).await?;
    let deps = resolve_dependencies(tx, ops).await?;
    insert_projection(tx, ops).await?;
    check_resources_free(tx, ops).await?;
    let mut edges = Vec::new();
    let mut waiting = Vec::with_capacity(ops.len());
    for (op, deps) in ops.iter().zip(&deps) {
        let mut wait = 0u32;
        for dep in deps {
            edges.push((op.uid.as_str(), dep.uid.as_str()));
            if !dep.complete {
                wait += 1;
            }
        }
        waiting.push(wait);
    }
    insert_dependencies(tx, &edges).await?;
    insert_queue_rows(tx, ops, &waiting).await
}

/// The create half after the counter: the resources at revisions from `first`, and
/// their change-log rows (to append before COMMIT).
async fn create_write(
    tx: &mut Tx,
    ops: &[NewOp],
    first: u64,
) -> Result<(Vec<Stored>, Vec<ChangeRow>), StoreError> {
    if ops.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut objects: Vec<NewObject> = ops
        .iter()
        .map(|op| NewObject {
            key: op.key.clone(),
            uid: op.uid.clone(),
            object: op.object.clone(),
        })
        .collect();
    let changes = insert_objects_log_later(tx, first, &mut objects).await?;
    let stored = (first..)
        .zip(objects)
        .map(|(revision, o)| Stored {
            object: o.object,
            resource_version: revision,
            changed: true,
        })
        .collect();
    Ok((stored, changes))
}

/// The completion half of a write, before the revision counter.
struct PreparedCompletion {
    /// One slot per lease: decided already (stale, invalid) or filled after the write.
    slots: Vec<Option<Result<Stored, StoreError>>>,
    /// The slot of each finishing item, and its key (for a vanished resource).
    index: Vec<(usize, ObjectKey)>,
    /// Targets the completions free, and (when dependents were released) their uids.
    targets: Vec<String>,
    uids: Vec<String>,
    prepared: PreparedFinish,
}

async fn complete_prepare(
    tx: &mut Tx,
    items: &[(Lease, Value)],
) -> Result<PreparedCompletion, StoreError> {
    let leases: Vec<Lease> = items.iter().map(|(l, _)| *l).collect();
    let checked = if leases.is_empty() {
        Vec::new()
    } else {
        check_leases(tx, &leases).await?
    };
    let mut slots = Vec::with_capacity(items.len());
    let mut finishing = Vec::new();
    let mut index = Vec::new();
    for (i, (check, (_, result))) in checked.into_iter().zip(items).enumerate() {
        match check {
            Checked::Stale(e) => slots.push(Some(Err(e))),
            Checked::Valid(_, _) if !(result.is_object() || result.is_null()) => {
                slots.push(Some(Err(invalid("result must be a JSON object"))));
            }
            Checked::Valid(op, queue) => {
                slots.push(None);
                index.push((
                    i,
                    ObjectKey::new(KIND, op.namespace.clone(), op.name.clone()),
                ));
                finishing.push(Finishing {
                    op,
                    queue: Some(queue),
                    outcome: Outcome::Complete(Some(result.clone()).filter(|r| !r.is_null())),
                });
            }
        }
    }
    let targets: Vec<String> = finishing
        .iter()
        .filter_map(|f| f.queue.as_ref().map(|q| q.target_uid.clone()))
        .collect();
    let mut uids: Vec<String> = finishing.iter().map(|f| f.op.uid.clone()).collect();
    let prepared = if finishing.is_empty() {
        PreparedFinish {
            items: 0,
            rows: HashMap::new(),
            writes: Vec::new(),
            cascaded: Vec::new(),
            released: 0,
        }
    } else {
        finish_prepare(tx, finishing, &HashSet::new()).await?
    };
    if prepared.released == 0 {
        // Nothing depends on these: no dependents to look for.
        uids.clear();
    }
    Ok(PreparedCompletion {
        slots,
        index,
        targets,
        uids,
        prepared,
    })
}

/// What [`complete_write`] did: each lease's outcome, the freed targets, the uids whose
/// dependents were released, and the change-log rows still to append before COMMIT.
struct CompleteWritten {
    outcomes: Vec<Result<Stored, StoreError>>,
    targets: Vec<String>,
    uids: Vec<String>,
    changes: Vec<ChangeRow>,
}

/// The completion half after the counter, at revisions from `first`.
async fn complete_write(
    tx: &mut Tx,
    completion: PreparedCompletion,
    first: u64,
) -> Result<CompleteWritten, StoreError> {
    let PreparedCompletion {
        mut slots,
        index,
        targets,
        uids,
        prepared,
    } = completion;
    let finished = finish_write(tx, prepared, first).await?;
    for ((i, key), stored) in index.into_iter().zip(finished.stored) {
        slots[i] = Some(stored.ok_or_else(|| key.not_found()));
    }
    let outcomes = slots
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(StoreError::Corrupt("lost a slot".into()))))
        .collect();
    Ok(CompleteWritten {
        outcomes,
        targets,
        uids,
        changes: finished.changes,
    })
}

/// What one write transaction did.
struct WriteDone {
    created: Vec<Stored>,
    completed: Vec<Result<Stored, StoreError>>,
}

// ---------------------------------------------------------------------------------
// Create.

/// A validated new operation.
pub(crate) struct NewOp {
    key: ObjectKey,
    uid: String,
    object: Value,
    depends_on: Vec<String>,
    queue_name: String,
    priority: u8,
    operation_type: String,
    target_kind: String,
    target_uid: String,
    target_name: String,
    node: Option<String>,
    delay_us: u64,
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Invalid(message.into())
}

/// Validates and prepares one new operation (uid, timestamps, status queued).
fn prepare_operation(mut object: Value, delay: Duration) -> Result<NewOp, StoreError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| invalid("a ClusterOperation must be a JSON object"))?;
    match map.get("kind").and_then(Value::as_str) {
        Some(KIND) => {}
        other => {
            return Err(invalid(format!(
                "kind must be {KIND}, not {}",
                other.unwrap_or("missing")
            )));
        }
    }
    map.entry("apiVersion")
        .or_insert_with(|| json!("shakenfist.io/v1alpha1"));
    map.remove("status");
    let spec_json = map
        .get("spec")
        .cloned()
        .ok_or_else(|| invalid("spec is required"))?;
    let spec: ClusterOperationSpec =
        serde_json::from_value(spec_json).map_err(|e| invalid(format!("spec: {e}")))?;
    let key = ObjectKey::of(&object)?;
    if key.namespace.is_empty() {
        return Err(invalid(
            "metadata.namespace is required for a ClusterOperation",
        ));
    }
    let mut typed = ClusterOperation::new(&key.name, spec.clone());
    typed.metadata.namespace = Some(key.namespace.clone());
    let errors = validate_cluster_operation(&typed);
    if !errors.is_empty() {
        return Err(invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    let ascii_max = |field: &str, value: &str, max: usize| {
        if value.is_ascii() && value.len() <= max {
            Ok(())
        } else {
            Err(invalid(format!(
                "{field}: must be ASCII of at most {max} characters: {value:?}"
            )))
        }
    };
    ascii_max("spec.target.uid", &spec.target.uid, 36)?;
    ascii_max("spec.target.kind", &spec.target.kind, 64)?;
    ascii_max("spec.operationType", spec.operation_type.as_str(), 64)?;
    let priority = priority_number(&spec.priority)?;
    let mut depends_on = Vec::new();
    for name in &spec.depends_on {
        if !depends_on.contains(name) {
            depends_on.push(name.clone());
        }
    }
    let (key, uid) = prepare_new(&mut object)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("status".into(), json!({"state": "queued", "attempts": 0}));
    }
    Ok(NewOp {
        queue_name: match &spec.node {
            Some(node) => format!("node:{node}"),
            None => "cluster".into(),
        },
        key,
        uid,
        object,
        depends_on,
        priority,
        operation_type: spec.operation_type.as_str().to_string(),
        target_kind: spec.target.kind.clone(),
        target_uid: spec.target.uid.clone(),
        target_name: spec.target.name.clone(),
        node: spec.node.clone(),
        delay_us: micros(delay),
    })
}

fn already_exists(key: &ObjectKey) -> StoreError {
    StoreError::AlreadyExists {
        kind: key.kind.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// A dependency as resolved at create time.
struct Dependency {
    uid: String,
    complete: bool,
}

/// Resolves and locks the dependencies of `ops` (earlier items of the batch, or
/// committed operations of the same namespace).
async fn resolve_dependencies(
    tx: &mut Tx,
    ops: &[NewOp],
) -> Result<Vec<Vec<Dependency>>, StoreError> {
    // Names to look up, per namespace.
    let mut in_batch: HashMap<(&str, &str), &str> = HashMap::new();
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for op in ops {
        for dep in &op.depends_on {
            if !in_batch.contains_key(&(op.key.namespace.as_str(), dep.as_str())) {
                wanted
                    .entry(op.key.namespace.as_str())
                    .or_default()
                    .push(dep);
            }
        }
        in_batch.insert(
            (op.key.namespace.as_str(), op.key.name.as_str()),
            op.uid.as_str(),
        );
    }
    let mut found: HashMap<(String, String), OpRow> = HashMap::new();
    for (namespace, mut names) in wanted {
        names.sort_unstable();
        names.dedup();
        for chunk in names.chunks(CHUNK) {
            let text = format!(
                "SELECT {OP_COLUMNS} FROM cluster_operations FORCE INDEX (ux_cluster_operations_name) \
                 WHERE namespace = ? AND name IN ({}) FOR UPDATE",
                marks(chunk.len())
            );
            let mut q = sqlx::query(sql(text)).bind(namespace);
            for name in chunk {
                q = q.bind(*name);
            }
            for row in q
                .fetch_all(&mut **tx)
                .await
                .map_err(StoreError::query("resolve dependencies"))?
            {
                let r = OpRow::decode(&row)?;
                found.insert((r.namespace.clone(), r.name.clone()), r);
            }
        }
    }
    let mut batch_uids: HashMap<(&str, &str), &str> = HashMap::new();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let mut deps = Vec::new();
        for dep in &op.depends_on {
            let ns = op.key.namespace.as_str();
            if let Some(uid) = batch_uids.get(&(ns, dep.as_str())) {
                deps.push(Dependency {
                    uid: (*uid).to_string(),
                    complete: false,
                });
                continue;
            }
            match found.get(&(ns.to_string(), dep.clone())) {
                None => {
                    return Err(invalid(format!(
                        "spec.dependsOn: operation {ns}/{dep} (of {ns}/{}) does not exist",
                        op.key.name
                    )));
                }
                Some(r) if r.state == "error" || r.state == "abort" => {
                    return Err(invalid(format!(
                        "spec.dependsOn: dependency {ns}/{dep} failed (state {}), so {ns}/{} could never run",
                        r.state, op.key.name
                    )));
                }
                Some(r) => deps.push(Dependency {
                    uid: r.uid.clone(),
                    complete: r.state == "complete",
                }),
            }
        }
        batch_uids.insert(
            (op.key.namespace.as_str(), op.key.name.as_str()),
            op.uid.as_str(),
        );
        out.push(deps);
    }
    Ok(out)
}

async fn insert_projection(tx: &mut Tx, ops: &[NewOp]) -> Result<(), StoreError> {
    for chunk in ops.chunks(CHUNK) {
        let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', NOW(6), NOW(6))";
        let text = format!(
            "INSERT INTO cluster_operations (uid, namespace, name, operation_type, target_kind, \
             target_uid, target_name, node, priority, state, created_at, updated_at) VALUES {}",
            vec![row; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(sql(text));
        for op in chunk {
            q = q
                .bind(&op.uid)
                .bind(&op.key.namespace)
                .bind(&op.key.name)
                .bind(&op.operation_type)
                .bind(&op.target_kind)
                .bind(&op.target_uid)
                .bind(&op.target_name)
                .bind(&op.node)
                .bind(op.priority);
        }
        let res = q
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("insert cluster operation"));
        match res {
            Ok(_) => {}
            Err(e) if e.is_duplicate_key() => return Err(find_duplicate(tx, chunk).await),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The AlreadyExists error for the first item of `ops` whose name is taken.
async fn find_duplicate(tx: &mut Tx, ops: &[NewOp]) -> StoreError {
    for op in ops {
        let taken =
            sqlx::query("SELECT 1 FROM cluster_operations WHERE namespace = ? AND name = ?")
                .bind(&op.key.namespace)
                .bind(&op.key.name)
                .fetch_optional(&mut **tx)
                .await;
        match taken {
            Ok(Some(_)) => return already_exists(&op.key),
            Ok(None) => {}
            Err(e) => return StoreError::query("find duplicate operation")(e),
        }
    }
    ops.first()
        .map(|op| already_exists(&op.key))
        .unwrap_or_else(|| invalid("duplicate operation"))
}

/// AlreadyExists if a resource of one of these names exists (created outside the queue).
async fn check_resources_free(tx: &mut Tx, ops: &[NewOp]) -> Result<(), StoreError> {
    for chunk in ops.chunks(CHUNK) {
        let text = format!(
            "SELECT namespace, name FROM resources FORCE INDEX (PRIMARY) \
             WHERE kind = ? AND (namespace, name) IN ({}) FOR UPDATE",
            vec!["(?, ?)"; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(sql(text)).bind(KIND);
        for op in chunk {
            q = q.bind(&op.key.namespace).bind(&op.key.name);
        }
        if let Some(row) = q
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::query("check operation names"))?
        {
            return Err(already_exists(&ObjectKey::new(
                KIND,
                col::<String>(&row, "namespace")?,
                col::<String>(&row, "name")?,
            )));
        }
    }
    Ok(())
}

async fn insert_dependencies(tx: &mut Tx, edges: &[(&str, &str)]) -> Result<(), StoreError> {
    for chunk in edges.chunks(CHUNK) {
        let text = format!(
            "INSERT INTO operation_dependencies (op_uid, depends_on_uid) VALUES {}",
            vec!["(?, ?)"; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(sql(text));
        for (op, dep) in chunk {
            q = q.bind(*op).bind(*dep);
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("insert operation dependencies"))?;
    }
    Ok(())
}

async fn insert_queue_rows(tx: &mut Tx, ops: &[NewOp], waiting: &[u32]) -> Result<(), StoreError> {
    for (chunk, waits) in ops.chunks(CHUNK).zip(waiting.chunks(CHUNK)) {
        let row = "(?, ?, NOW(6) + INTERVAL ? MICROSECOND, ?, ?, ?, NOW(6))";
        let text = format!(
            "INSERT INTO work_queue (queue_name, priority, scheduled_at, waiting_on, op_uid, \
             target_uid, created_at) VALUES {}",
            vec![row; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(sql(text));
        for (op, wait) in chunk.iter().zip(waits) {
            q = q
                .bind(&op.queue_name)
                .bind(op.priority)
                .bind(op.delay_us)
                .bind(wait)
                .bind(&op.uid)
                .bind(&op.target_uid);
        }
        q.execute(&mut **tx)
            .await
            .map_err(StoreError::query("enqueue operation"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Claims.

/// Reads claimed rows and their objects with the executing overlay, in claim order.
async fn read_claimed<'e, E>(
    executor: E,
    where_sql: &str,
    binds: Vec<BindValue>,
) -> Result<Vec<(QueueRow, Option<Value>)>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::MySql>,
{
    let text = format!(
        "SELECT {QUEUE_COLUMNS}, r.object FROM work_queue w \
         LEFT JOIN resources r ON r.uid = w.op_uid AND r.kind = '{KIND}' \
         WHERE {where_sql} ORDER BY w.priority, w.scheduled_at, w.id"
    );
    let mut q = sqlx::query(sql(text));
    for b in binds {
        q = match b {
            BindValue::Id(v) => q.bind(v),
            BindValue::Text(v) => q.bind(v),
        };
    }
    let rows = q
        .fetch_all(executor)
        .await
        .map_err(StoreError::query("read claimed work"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let q = QueueRow::decode(row)?;
        let object: Option<String> = col(row, "object")?;
        let object = object
            .map(|text| parse_json(&text, "resources.object"))
            .transpose()?;
        out.push((q, object));
    }
    Ok(out)
}

enum BindValue {
    Id(u64),
    Text(String),
}

/// The claimed view of an operation: executing, attempts, claimedBy, startedAt.
fn claimed_view(q: &QueueRow, mut object: Value) -> Claimed {
    let state = object
        .pointer("/status/state")
        .and_then(Value::as_str)
        .unwrap_or("queued");
    // A terminal state (an abort since the claim) is shown as it is.
    if (state == "queued" || state == "executing")
        && let Some(map) = object.as_object_mut()
    {
        let status = map.entry("status").or_insert_with(|| json!({}));
        if !status.is_object() {
            *status = json!({});
        }
        if let Some(s) = status.as_object_mut() {
            s.insert("state".into(), json!("executing"));
            s.insert("attempts".into(), json!(q.attempts));
            if let Some(by) = &q.claimed_by {
                s.insert("claimedBy".into(), json!(by));
            }
            if let Some(us) = q.claimed_us {
                s.insert("startedAt".into(), json!(timestamp_from_micros(us)));
            }
        }
    }
    Claimed {
        lease: Lease {
            id: q.id,
            attempt: q.attempts,
        },
        object,
    }
}

/// The readiness condition of a work_queue row `w` (on `ix_work_queue_ready`): ready,
/// due, unclaimed, and its target not claimed (a non-locking read of
/// `ux_work_queue_claimed_target`).
const READY: &str = "w.queue_name = ? AND w.waiting_on = 0 AND w.claimed_at IS NULL \
     AND w.scheduled_at <= NOW(6) \
     AND NOT EXISTS (SELECT 1 FROM work_queue b WHERE b.claimed_target = w.target_uid)";

/// Prefixes every statement that reads [`READY`]. MariaDB's default `exists_to_in`
/// turns the `NOT EXISTS` into a materialised semi-join: a range scan of the whole
/// claimed-target index per statement, where every claim and completion leaves
/// delete-marked entries until purge (12 % of mariadbd's CPU in a 16-claimer profile).
/// Per candidate row, one unique-key lookup is far cheaper.
const PER_ROW_TARGET_CHECK: &str = "SET STATEMENT optimizer_switch='exists_to_in=off' FOR ";

/// One statement, no locks: which of `queues` have a ready row now. Only an idle retry
/// (a claim re-polling after a nap, woken by nothing) looks first: in a quiet cluster
/// most such polls find nothing, and a look is one statement where a locking round is
/// three.
async fn ready_queues(
    pool: &sqlx::MySqlPool,
    queues: &[String],
) -> Result<Vec<String>, StoreError> {
    let parts: Vec<String> = queues
        .iter()
        .map(|_| {
            format!(
                "(SELECT ? AS queue_name FROM work_queue w FORCE INDEX (ix_work_queue_ready) \
                 WHERE {READY} LIMIT 1)"
            )
        })
        .collect();
    let mut q = sqlx::query(sql(format!(
        "{PER_ROW_TARGET_CHECK}{}",
        parts.join(" UNION ALL ")
    )));
    for queue in queues {
        q = q.bind(queue).bind(queue);
    }
    let rows = q
        .fetch_all(pool)
        .await
        .map_err(StoreError::query("look for ready work"))?;
    rows.iter().map(|row| col(row, "queue_name")).collect()
}

/// A ready row a claim round's scan locked.
struct Candidate {
    row: QueueRow,
    /// Its queue.
    queue: String,
    /// Its operation's stored object (None: the resource is gone, or the scan's
    /// snapshot predates its create).
    object: Option<String>,
}

/// What a claim round's locking scan found.
struct Scan {
    /// Ready, unclaimed rows of the queues, locked (SKIP LOCKED), in claim order.
    candidates: Vec<Candidate>,
    /// The queues that had more ready rows than the round asked of them (the scan
    /// reads one past each queue's limit).
    more: HashSet<String>,
    /// The asked `claim_id`s that still hold claimed rows (read, not locked).
    replayed: HashSet<String>,
    /// The statement's `NOW(6)`, as text (what the claim stores as `claimed_at`), and
    /// in epoch µs (what the answer shows as `startedAt`).
    now_text: String,
    now_us: i64,
}

/// ONE statement of a claim round: per queue, up to its limit + 1 ready rows locked
/// with SKIP LOCKED (one past the limit tells whether work is left behind), each with its
/// operation's object (a scalar subquery: resources are read, not locked); and which of
/// `replays` (claim_ids) still hold claimed rows.
///
/// The subquery reads the statement's snapshot (READ COMMITTED opens it at the first
/// plain read), while the locked rows are the latest committed: a create that commits
/// during the scan comes back with no object. The caller reads such rows again.
async fn scan_ready(
    tx: &mut Tx,
    queues: &[(String, u32)],
    replays: &[&str],
) -> Result<Scan, StoreError> {
    const NOW: &str = "CAST(NOW(6) AS CHAR) AS now_text, \
                       CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED) AS now_us";
    // The equality prefix (queue_name, waiting_on, claimed_at IS NULL) of
    // ix_work_queue_ready gives rows in (priority, scheduled_at, id) order, so LIMIT stops
    // the scan early and no filesort locks the whole ready set. The NOT EXISTS reads
    // ux_work_queue_claimed_target without locking (InnoDB locks only the outer rows of
    // a locking read, not those of its subqueries).
    let mut parts: Vec<String> = queues
        .iter()
        .map(|_| {
            format!(
                "(SELECT 0 AS replay, ? AS part, {QUEUE_COLUMNS}, \
                 (SELECT r.object FROM resources r FORCE INDEX (ux_resources_uid) \
                 WHERE r.uid = w.op_uid AND r.kind = '{KIND}') AS object, {NOW} \
                 FROM work_queue w FORCE INDEX (ix_work_queue_ready) WHERE {READY} \
                 ORDER BY w.priority, w.scheduled_at, w.id LIMIT ? FOR UPDATE SKIP LOCKED)"
            )
        })
        .collect();
    // A replayed claim_id comes back in the `part` column.
    parts.extend(replays.iter().map(|_| {
        format!(
            "(SELECT 1 AS replay, ? AS part, {QUEUE_COLUMNS}, NULL AS object, {NOW} \
             FROM work_queue w FORCE INDEX (ix_work_queue_claim) \
             WHERE w.claim_id = ? AND w.claimed_at IS NOT NULL LIMIT 1)"
        )
    }));
    let mut q = sqlx::query(sql(format!(
        "{PER_ROW_TARGET_CHECK}{}",
        parts.join(" UNION ALL ")
    )));
    for (queue, limit) in queues {
        q = q.bind(queue).bind(queue).bind(limit.saturating_add(1));
    }
    for claim_id in replays {
        q = q.bind(*claim_id).bind(*claim_id);
    }
    let rows = q
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::query("claim work"))?;
    let mut scan = Scan {
        candidates: Vec::with_capacity(rows.len()),
        more: HashSet::new(),
        replayed: HashSet::new(),
        now_text: String::new(),
        now_us: 0,
    };
    let mut per_queue: HashMap<String, u32> = HashMap::new();
    for row in &rows {
        if scan.now_text.is_empty() {
            scan.now_text = col(row, "now_text")?;
            scan.now_us = col(row, "now_us")?;
        }
        let part: String = col(row, "part")?;
        if col::<i32>(row, "replay")? == 1 {
            scan.replayed.insert(part);
            continue;
        }
        let taken = per_queue.entry(part.clone()).or_default();
        *taken += 1;
        let limit = queues
            .iter()
            .find(|(q, _)| *q == part)
            .map_or(0, |(_, l)| *l);
        if *taken > limit {
            scan.more.insert(part.clone());
        }
        scan.candidates.push(Candidate {
            row: QueueRow::decode(row)?,
            queue: part,
            object: col(row, "object")?,
        });
    }
    scan.candidates.sort_by_key(|c| c.row.sort_key());
    Ok(scan)
}

/// One claim's share of a combined claim transaction.
struct Share<'a> {
    rows: Vec<QueueRow>,
    claim_id: &'a str,
    claimer: &'a str,
}

/// Marks each share's rows claimed under its claim_id and claimer; returns, per share,
/// the ids actually claimed (a row whose target another claimer took meanwhile is
/// dropped).
async fn mark_claimed(
    tx: &mut Tx,
    shares: &[Share<'_>],
    now: &str,
) -> Result<Vec<Vec<u64>>, StoreError> {
    const SET: &str = "UPDATE work_queue FORCE INDEX (PRIMARY) SET claimed_by = ?, claim_id = ?, \
                       claimed_at = ?, heartbeat_at = ?, attempts = attempts + 1";
    let ids: Vec<Vec<u64>> = shares
        .iter()
        .map(|s| s.rows.iter().map(|r| r.id).collect())
        .collect();
    let taking: Vec<(&Share<'_>, &Vec<u64>)> = shares
        .iter()
        .zip(&ids)
        .filter(|(_, ids)| !ids.is_empty())
        .collect();
    let all: Vec<u64> = ids.iter().flatten().copied().collect();
    if all.is_empty() {
        return Ok(ids);
    }
    let res = if let [(share, _)] = taking.as_slice() {
        let text = format!("{SET} WHERE id IN ({})", marks(all.len()));
        let mut q = sqlx::query(sql(text))
            .bind(share.claimer)
            .bind(share.claim_id)
            .bind(now)
            .bind(now);
        for id in &all {
            q = q.bind(id);
        }
        q.execute(&mut **tx).await
    } else {
        // Several claims in one statement: each column picks its claim's value by id.
        let case = taking
            .iter()
            .map(|(_, ids)| format!("WHEN id IN ({}) THEN ?", marks(ids.len())))
            .collect::<Vec<_>>()
            .join(" ");
        let text = format!(
            "UPDATE work_queue FORCE INDEX (PRIMARY) SET \
             claimed_by = CASE {case} END, claim_id = CASE {case} END, \
             claimed_at = ?, heartbeat_at = ?, attempts = attempts + 1 WHERE id IN ({})",
            marks(all.len())
        );
        let mut q = sqlx::query(sql(text));
        for (share, ids) in &taking {
            for id in *ids {
                q = q.bind(id);
            }
            q = q.bind(share.claimer);
        }
        for (share, ids) in &taking {
            for id in *ids {
                q = q.bind(id);
            }
            q = q.bind(share.claim_id);
        }
        q = q.bind(now).bind(now);
        for id in &all {
            q = q.bind(id);
        }
        q.execute(&mut **tx).await
    };
    match res.map_err(StoreError::query("claim work")) {
        Ok(_) => return Ok(ids),
        Err(e) if e.is_duplicate_key() => {}
        Err(e) => return Err(e),
    }
    // Another claimer holds one of these targets: claim row by row, in target order (so
    // two such claimers wait on each other's targets in one order), skipping the taken.
    let mut by_target: Vec<(usize, &QueueRow)> = shares
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.rows.iter().map(move |r| (i, r)))
        .collect();
    by_target.sort_by(|a, b| a.1.target_uid.cmp(&b.1.target_uid));
    let mut claimed = vec![Vec::new(); shares.len()];
    for (i, row) in by_target {
        let res = sqlx::query(sql(format!("{SET} WHERE id = ?")))
            .bind(shares[i].claimer)
            .bind(shares[i].claim_id)
            .bind(now)
            .bind(now)
            .bind(row.id)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("claim work"));
        match res {
            Ok(_) => claimed[i].push(row.id),
            Err(e) if e.is_duplicate_key() => {
                tracing::debug!(target_uid = %row.target_uid, "target claimed concurrently; skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(claimed)
}

// ---------------------------------------------------------------------------------
// Leases.

/// Why a locked row does not match a lease, if it does not.
fn lease_problem(lease: Lease, row: Option<&QueueRow>) -> Option<String> {
    match row {
        None => Some("the work item is gone (completed, failed, aborted or rejected)".into()),
        Some(r) if r.attempts != lease.attempt => Some(format!(
            "the work item was claimed again since (attempt {})",
            r.attempts
        )),
        Some(r) if r.claimed_us.is_none() => {
            Some("the work item is no longer claimed (re-queued by the reaper or failed)".into())
        }
        Some(_) => None,
    }
}

/// A lease checked under lock: the finishing item, or why it is stale.
enum Checked {
    Valid(OpRow, QueueRow),
    Stale(StoreError),
}

/// Locks work_queue rows by id with their projection rows, in one statement (each
/// queue row, then its operation's row, in id order).
async fn lock_leased(
    tx: &mut Tx,
    ids: &[u64],
) -> Result<(HashMap<u64, QueueRow>, HashMap<String, OpRow>), StoreError> {
    fn decode(row: &MySqlRow) -> Result<(QueueRow, Option<OpRow>), StoreError> {
        let op = match col::<Option<String>>(row, "uid")? {
            Some(_) => Some(OpRow::decode(row)?),
            None => None,
        };
        Ok((QueueRow::decode(row)?, op))
    }
    let template = format!(
        "SELECT {QUEUE_COLUMNS}, o.uid, o.namespace, o.name, o.operation_type, \
         CAST(o.state AS CHAR) AS state FROM work_queue w FORCE INDEX (PRIMARY) \
         LEFT JOIN cluster_operations o FORCE INDEX (PRIMARY) ON o.uid = w.op_uid \
         WHERE w.id IN ({{}}) ORDER BY w.id FOR UPDATE"
    );
    let found = fetch_by_keys(tx, ids, &template, "lock work queue rows", decode).await?;
    let mut rows = HashMap::with_capacity(found.len());
    let mut ops = HashMap::with_capacity(found.len());
    for (row, op) in found {
        if let Some(op) = op {
            ops.insert(op.uid.clone(), op);
        }
        rows.insert(row.id, row);
    }
    Ok((rows, ops))
}

/// Locks and checks `leases` (queue rows with their projection rows). Rows of aborted
/// operations whose lease matched are deleted: their claimer is done with them.
async fn check_leases(tx: &mut Tx, leases: &[Lease]) -> Result<Vec<Checked>, StoreError> {
    let mut ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let (rows, ops) = lock_leased(tx, &ids).await?;
    let mut seen = HashSet::new();
    let mut leftovers = Vec::new();
    let mut out = Vec::with_capacity(leases.len());
    for lease in leases {
        let row = rows.get(&lease.id);
        if let Some(problem) = lease_problem(*lease, row) {
            out.push(Checked::Stale(stale(*lease, problem)));
            continue;
        }
        if !seen.insert(lease.id) {
            out.push(Checked::Stale(stale(*lease, "the lease is listed twice")));
            continue;
        }
        let Some(row) = row else { continue };
        match ops.get(&row.op_uid) {
            Some(op) if op.state == "queued" => out.push(Checked::Valid(op.clone(), row.clone())),
            Some(op) => {
                leftovers.push(row.id);
                out.push(Checked::Stale(stale(
                    *lease,
                    format!(
                        "operation {} was aborted (state {})",
                        op.display(),
                        op.state
                    ),
                )));
            }
            None => {
                leftovers.push(row.id);
                out.push(Checked::Stale(stale(
                    *lease,
                    "the operation no longer exists",
                )));
            }
        }
    }
    delete_queue_rows(tx, &leftovers).await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The API.

/// The first half of removing terminal operations (purge, namespace delete), before
/// the revision counter: locks their resource rows and deletes their dependency edges
/// (both ways) and projection rows. Returns the resource rows, for
/// [`remove_unlinked`] once every other lock of the transaction is taken.
async fn unlink_operations(tx: &mut Tx, ops: &[OpRow]) -> Result<Vec<Row0>, StoreError> {
    let uids: Vec<String> = ops.iter().map(|o| o.uid.clone()).collect();
    let mut resources = lock_resources(tx, &uids).await?;
    for chunk in uids.chunks(CHUNK) {
        let m = marks(chunk.len());
        for text in [
            format!(
                "DELETE d FROM operation_dependencies d FORCE INDEX (PRIMARY) WHERE d.op_uid IN ({m})"
            ),
            format!(
                "DELETE d FROM operation_dependencies d FORCE INDEX (ix_operation_dependencies_on) WHERE d.depends_on_uid IN ({m})"
            ),
            format!(
                "DELETE o FROM cluster_operations o FORCE INDEX (PRIMARY) WHERE o.uid IN ({m})"
            ),
        ] {
            let mut q = sqlx::query(sql(text));
            for uid in chunk {
                q = q.bind(uid);
            }
            q.execute(&mut **tx)
                .await
                .map_err(StoreError::query("remove operations"))?;
        }
    }
    Ok(uids.iter().filter_map(|u| resources.remove(u)).collect())
}

/// The second half: the resources go, each with a DELETED change, at revisions
/// allocated now (the counter is taken here).
pub(crate) async fn remove_unlinked(tx: &mut Tx, rows: &[Row0]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let count = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    let first = allocate_revisions(tx, count).await?;
    for (revision, row) in (first..).zip(rows) {
        let mut object = row.object.clone();
        remove_object(tx, revision, row, &mut object).await?;
    }
    Ok(())
}

/// How many ClusterOperations of `namespace` are not finished: queued, waiting,
/// executing, terminal but still holding a queue row (an aborted one its claimer
/// holds), or a bare resource without a queue projection (written around the queue).
/// These keep a namespace from being deleted.
pub(crate) async fn unfinished_operations_in(
    tx: &mut Tx,
    namespace: &str,
) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM resources r WHERE r.kind = 'ClusterOperation' AND r.namespace = ? \
         AND NOT EXISTS (SELECT 1 FROM cluster_operations o FORCE INDEX (PRIMARY) \
         WHERE o.uid = r.uid AND o.state IN ('complete', 'error', 'abort') \
         AND NOT EXISTS (SELECT 1 FROM work_queue w WHERE w.op_uid = o.uid))",
    )
    .bind(namespace)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::query("count unfinished operations"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Locks and unlinks every finished operation of `namespace` (history that goes with
/// the namespace), for [`remove_unlinked`] after the caller's other locks. Call after
/// [`unfinished_operations_in`] found none, with the namespace row held exclusively.
pub(crate) async fn unlink_finished_operations_in(
    tx: &mut Tx,
    namespace: &str,
) -> Result<Vec<Row0>, StoreError> {
    let text = format!(
        "SELECT {OP_COLUMNS} FROM cluster_operations o FORCE INDEX (ux_cluster_operations_name) \
         WHERE o.namespace = ? AND o.state IN ('complete', 'error', 'abort') FOR UPDATE"
    );
    let ops: Vec<OpRow> = sqlx::query(sql(text))
        .bind(namespace)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::query("lock finished operations"))?
        .iter()
        .map(OpRow::decode)
        .collect::<Result<_, _>>()?;
    unlink_operations(tx, &ops).await
}

impl Store {
    /// Creates one operation, claimable after `delay` (see the module contract).
    pub async fn create_operation(
        &self,
        object: Value,
        delay: Duration,
    ) -> Result<Stored, StoreError> {
        let mut stored = self.create_operations(vec![(object, delay)]).await?;
        stored
            .pop()
            .ok_or_else(|| StoreError::Corrupt("create returned nothing".into()))
    }

    /// Creates operations in one transaction (all or none), with consecutive revisions in
    /// input order. A `dependsOn` may name an earlier item of the batch. Concurrent
    /// calls share a transaction (`store/combine.rs`); each gets its own outcome.
    pub async fn create_operations(
        &self,
        items: Vec<(Value, Duration)>,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut ops = Vec::with_capacity(items.len());
        let mut names = HashSet::new();
        for (object, delay) in items {
            let op = prepare_operation(object, delay)?;
            if !names.insert((op.key.namespace.clone(), op.key.name.clone())) {
                return Err(already_exists(&op.key));
            }
            ops.push(op);
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.combiners
            .writes
            .submit(self, WriteCall::Create(ops))
            .await?
            .created()
    }

    /// One write transaction: `creates` (validated operations) and `completes` (leases
    /// with results), their revisions allocated together, LAST, after every row lock of
    /// both halves. Records the revisions as local and wakes the claims the writes made
    /// work for. A failed create fails the whole transaction; a stale lease fails only
    /// its slot.
    async fn write_now(
        &self,
        creates: &[NewOp],
        completes: &[(Lease, Value)],
    ) -> Result<WriteDone, StoreError> {
        let (done, revisions, targets, uids) = self
            .with_retry("write operations", || async move {
                let mut tx = self.begin("write operations").await?;
                if !creates.is_empty() {
                    create_prepare(&mut tx, creates).await?;
                }
                let completion = complete_prepare(&mut tx, completes).await?;
                let n_creates = u64::try_from(creates.len()).unwrap_or(u64::MAX);
                let count = n_creates + completion.prepared.revision_count();
                let first = match count {
                    0 => 0,
                    n => allocate_revisions(&mut tx, n).await?,
                };
                let (created, mut changes) = create_write(&mut tx, creates, first).await?;
                let CompleteWritten {
                    outcomes: completed,
                    targets,
                    uids,
                    changes: completed_changes,
                } = complete_write(&mut tx, completion, first + n_creates).await?;
                // Both halves' change-log rows in one statement (the counter is held
                // until COMMIT: one round trip fewer under it).
                changes.extend(completed_changes);
                append_changes(&mut tx, &changes).await?;
                self.commit(tx, "write operations").await?;
                Ok((
                    WriteDone { created, completed },
                    (first, count),
                    targets,
                    uids,
                ))
            })
            .await?;
        self.wakes.record_local(revisions.0, revisions.1);
        if !creates.is_empty() {
            self.wakes
                .new_work(creates.iter().map(|op| op.node.as_deref()));
        }
        if !targets.is_empty() {
            // Completions free their targets and release dependents: wake the queues of
            // the work that became ready. Read after the commit, so work enqueued
            // meanwhile is either seen here or woke its claimers itself after this
            // completion freed the target.
            self.wake_freed_work(targets, uids);
        }
        Ok(done)
    }

    /// Claims up to `max` ready operations of `node:<node>` and the cluster queue (only
    /// the cluster queue when `node` is empty) for `claimer`, waiting up to `wait` for
    /// work. A repeated `claim_id` whose rows are still claimed returns them again.
    pub async fn claim(
        &self,
        node: &str,
        max: u32,
        claim_id: &str,
        claimer: &str,
        wait: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.claim_queues(node, true, max, claim_id, claimer, wait)
            .await
    }

    /// Like [`Store::claim`]; with `include_cluster` false only `node:<node>` is
    /// claimed from (what a hypervisor agent wants: cluster work is not its to run).
    pub async fn claim_queues(
        &self,
        node: &str,
        include_cluster: bool,
        max: u32,
        claim_id: &str,
        claimer: &str,
        wait: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        if claim_id.is_empty() || claim_id.len() > 64 || !claim_id.is_ascii() {
            return Err(invalid("claim_id must be 1 to 64 ASCII characters"));
        }
        if claimer.is_empty() || claimer.chars().count() > 255 {
            return Err(invalid("claimer must be 1 to 255 characters"));
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut queues = Vec::new();
        if !node.is_empty() {
            queues.push(format!("node:{node}"));
        }
        if include_cluster || node.is_empty() {
            queues.push("cluster".to_string());
        }
        let max = max.min(MAX_CLAIM_BATCH);
        let deadline = tokio::time::Instant::now() + wait;
        let mine = self.wakes.queue(node);
        let _active = self.wakes.claim_started();
        // The first attempt also asks whether `claim_id` still holds rows (a repeated
        // call): then those rows are the answer.
        let mut replay = true;
        let mut idle = false;
        loop {
            let notified = self.wakes.everyone().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Concurrent attempts of this gateway run together (`Claims`): one locking
            // transaction shared out between them.
            let attempt = self
                .combiners
                .claims
                .submit(
                    self,
                    ClaimCall {
                        queues: queues.clone(),
                        max,
                        claim_id: claim_id.to_string(),
                        claimer: claimer.to_string(),
                        replay,
                        idle,
                    },
                )
                .await?;
            replay = false;
            if attempt.backlog {
                // The round left ready work behind (a backlog has no wake of its own):
                // the next claim of this queue looks.
                mine.notify_one();
            }
            if attempt.replayed {
                return Ok(attempt.claimed);
            }
            let now = tokio::time::Instant::now();
            if !attempt.claimed.is_empty() || now >= deadline {
                return Ok(attempt.claimed);
            }
            let nap = POLL_INTERVAL.min(deadline - now);
            // `notify_one` stores a permit when nobody waits, so a queue wake sent
            // between the scan and this point is not lost.
            idle = tokio::select! {
                () = &mut notified => false,
                () = mine.notified() => false,
                () = tokio::time::sleep(nap) => true,
            };
        }
    }

    /// One round of claim attempts: ONE locking transaction (scan, claim, commit) over
    /// every queue the calls ask for, whose rows are shared out in call order, each call
    /// up to its max and only from its own queues. A call whose `claim_id` still holds
    /// rows (a repeated call) gets those instead. A round of idle retries only looks
    /// first (see [`ready_queues`]), and then scans only the queues that had work.
    ///
    /// The outer error means nothing was claimed (the round may be rerun); an inner one
    /// is a call's own, after the round committed (a replay that failed to read).
    async fn claim_attempts(
        &self,
        calls: &[&ClaimCall],
    ) -> Result<Vec<Result<ClaimAttempt, StoreError>>, StoreError> {
        let mut out: Vec<ClaimAttempt> = calls
            .iter()
            .map(|c| ClaimAttempt {
                claim_id: c.claim_id.clone(),
                claimed: Vec::new(),
                replayed: false,
                backlog: false,
            })
            .collect();
        let mut sets: Vec<Vec<String>> = calls.iter().map(|c| c.queues.clone()).collect();
        if calls.iter().all(|c| c.idle) {
            let ready: HashSet<String> = ready_queues(&self.pool, &queues_of(&sets))
                .await?
                .into_iter()
                .collect();
            if ready.is_empty() {
                return Ok(out.into_iter().map(Ok).collect());
            }
            for set in &mut sets {
                set.retain(|q| ready.contains(q));
            }
        }
        let round = self.claim_once(calls, &sets).await?;
        for ((attempt, claimed), backlog) in out.iter_mut().zip(round.claimed).zip(round.backlog) {
            attempt.claimed = claimed;
            attempt.backlog = backlog;
        }
        // The round has committed: from here a failure is the replayed call's alone.
        let mut results = Vec::with_capacity(out.len());
        for (mut attempt, call) in out.into_iter().zip(calls) {
            if call.replay && round.replayed.contains(&call.claim_id) {
                let replayed = self
                    .with_retry("replay a claim", || self.replay_claim(&call.claim_id))
                    .await;
                match replayed {
                    Ok(claimed) => {
                        attempt.claimed = claimed;
                        attempt.replayed = true;
                    }
                    Err(e) => {
                        if attempt.backlog {
                            // Its wake must not go with it.
                            self.wakes.wake_everyone();
                        }
                        results.push(Err(e));
                        continue;
                    }
                }
            }
            results.push(Ok(attempt));
        }
        Ok(results)
    }

    /// The rows `claim_id` still holds, handed out again. A replay is a sign of life: it
    /// stamps the heartbeat BEFORE reading, so an undelivered-claim put-back of the same
    /// rows (`unclaim`, which only takes rows never heartbeated since their claim)
    /// either commits first (and this read finds nothing) or no longer matches.
    async fn replay_claim(&self, claim_id: &str) -> Result<Vec<Claimed>, StoreError> {
        sqlx::query(
            "UPDATE work_queue FORCE INDEX (ix_work_queue_claim) SET heartbeat_at = NOW(6) \
             WHERE claim_id = ? AND claimed_at IS NOT NULL",
        )
        .bind(claim_id)
        .execute(&self.pool)
        .await
        .map_err(StoreError::query("replay a claim"))?;
        let rows = read_claimed(
            &self.pool,
            "w.claim_id = ? AND w.claimed_at IS NOT NULL",
            vec![BindValue::Text(claim_id.to_string())],
        )
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(q, object)| object.map(|o| claimed_view(&q, o)))
            .collect())
    }

    /// One claim transaction for `calls`, each over its queue set in `sets`: one
    /// statement scans every queue of the round (and answers the replay questions), one
    /// claims, then COMMIT. Rows are shared out in call order, in claim order, up to
    /// each call's max and from its own queues only; a replayed call gets none.
    async fn claim_once(
        &self,
        calls: &[&ClaimCall],
        sets: &[Vec<String>],
    ) -> Result<ClaimRound, StoreError> {
        let limits = queue_limits(calls, sets);
        let replays: Vec<&str> = calls
            .iter()
            .filter(|c| c.replay)
            .map(|c| c.claim_id.as_str())
            .collect();
        let (limits, replays) = (limits.as_slice(), replays.as_slice());
        if limits.is_empty() && replays.is_empty() {
            return Ok(ClaimRound {
                claimed: calls.iter().map(|_| Vec::new()).collect(),
                replayed: HashSet::new(),
                backlog: vec![false; calls.len()],
            });
        }
        let (round, orphans) = self
            .with_retry("claim work", || async move {
                let mut tx = self.begin("claim work").await?;
                let scan = scan_ready(&mut tx, limits, replays).await?;
                let mut round = ClaimRound {
                    claimed: calls.iter().map(|_| Vec::new()).collect(),
                    replayed: scan.replayed,
                    backlog: vec![false; calls.len()],
                };
                // One row per target (the first in claim order).
                let mut targets = HashSet::new();
                let mut objects = HashMap::new();
                let mut pool = Vec::new();
                for c in scan.candidates {
                    if targets.insert(c.row.target_uid.clone()) {
                        objects.insert(c.row.id, c.object);
                        pool.push(Some((c.row, c.queue)));
                    }
                }
                if pool.is_empty() {
                    tx.commit().await.map_err(StoreError::query("claim work"))?;
                    return Ok((round, 0));
                }
                let shares: Vec<Share<'_>> = calls
                    .iter()
                    .zip(sets)
                    .map(|(c, set)| Share {
                        rows: if c.replay && round.replayed.contains(&c.claim_id) {
                            Vec::new()
                        } else {
                            take_rows(&mut pool, set, c.max)
                        },
                        claim_id: &c.claim_id,
                        claimer: &c.claimer,
                    })
                    .collect();
                // Work left behind wakes the next claim of its queue: flag the first
                // call of the round that asked for that queue.
                let mut left = scan.more;
                left.extend(pool.into_iter().flatten().map(|(_, queue)| queue));
                for queue in &left {
                    if let Some(i) = sets.iter().position(|set| set.contains(queue)) {
                        round.backlog[i] = true;
                    }
                }
                let ids = mark_claimed(&mut tx, &shares, &scan.now_text).await?;
                // Each call's claimed rows as the claim left them, in claim order.
                let mut claimed: Vec<Vec<QueueRow>> = Vec::with_capacity(shares.len());
                for (share, ids) in shares.iter().zip(ids) {
                    let ids: HashSet<u64> = ids.into_iter().collect();
                    claimed.push(
                        share
                            .rows
                            .iter()
                            .filter(|r| ids.contains(&r.id))
                            .map(|r| {
                                let mut row = r.clone();
                                row.attempts = row.attempts.saturating_add(1);
                                row.claimed_by = Some(share.claimer.to_string());
                                row.claimed_us = Some(scan.now_us);
                                row
                            })
                            .collect(),
                    );
                }
                // Rows whose object the scan's snapshot did not have are read again in a
                // fresh statement: an operation created during the scan has its object
                // now; only one still without is an orphan.
                let unseen: Vec<u64> = claimed
                    .iter()
                    .flatten()
                    .filter(|r| matches!(objects.get(&r.id), Some(None)))
                    .map(|r| r.id)
                    .collect();
                let mut again: HashMap<u64, Value> = HashMap::new();
                if !unseen.is_empty() {
                    let rows = read_claimed(
                        &mut *tx,
                        &format!("w.id IN ({})", marks(unseen.len())),
                        unseen.iter().map(|id| BindValue::Id(*id)).collect(),
                    )
                    .await?;
                    again.extend(rows.into_iter().filter_map(|(q, o)| Some((q.id, o?))));
                }
                let mut orphans = Vec::new();
                for (out, rows) in round.claimed.iter_mut().zip(claimed) {
                    for row in rows {
                        let object = match objects.remove(&row.id).flatten() {
                            Some(text) => parse_json(&text, "resources.object")?,
                            None => match again.remove(&row.id) {
                                Some(object) => object,
                                None => {
                                    orphans.push(row);
                                    continue;
                                }
                            },
                        };
                        out.push(claimed_view(&row, object));
                    }
                }
                let orphan_count = orphans.len();
                if orphans.is_empty() {
                    // A claim appends nothing to the change log: no change-feed wake.
                    tx.commit().await.map_err(StoreError::query("claim work"))?;
                } else {
                    abort_orphans(&mut tx, orphans).await?;
                    self.commit(tx, "claim work").await?;
                }
                Ok((round, orphan_count))
            })
            .await?;
        if orphans > 0 {
            self.wakes.wake_everyone();
        }
        Ok(round)
    }

    /// Puts back rows claimed for a caller that went away before it got them (its
    /// long-poll was cancelled while its attempt ran): unclaimed, with the attempt
    /// undone, unless they changed since: re-claimed, or heartbeated (a replay of the
    /// same claim_id stamps the heartbeat before it hands the rows out, so rows a
    /// retrying caller got are never put back under it).
    async fn unclaim(&self, claim_id: &str, leases: &[Lease]) {
        let res = self
            .with_retry("put back undelivered claims", || async {
                let mut tx = self.begin("put back undelivered claims").await?;
                for lease in leases {
                    sqlx::query(
                        "UPDATE work_queue SET claimed_at = NULL, claimed_by = NULL, claim_id = NULL, \
                         heartbeat_at = NULL, attempts = attempts - 1 \
                         WHERE id = ? AND attempts = ? AND claim_id = ? AND claimed_at IS NOT NULL \
                         AND heartbeat_at = claimed_at",
                    )
                    .bind(lease.id)
                    .bind(lease.attempt)
                    .bind(claim_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("put back undelivered claims"))?;
                }
                tx.commit()
                    .await
                    .map_err(StoreError::query("put back undelivered claims"))
            })
            .await;
        match res {
            Ok(()) => self.wakes.wake_everyone(),
            // The reaper re-queues them after the stuck threshold.
            Err(e) => tracing::warn!(error = %e, claim_id, "could not put back undelivered claims"),
        }
    }

    /// Records that the lease's claimer is alive. `Ok(false)` means stop: the operation
    /// was aborted. A stale lease is [`StoreError::StaleLease`].
    pub async fn heartbeat(&self, lease: Lease) -> Result<bool, StoreError> {
        self.with_retry("heartbeat", || async {
            let done = sqlx::query(
                "UPDATE work_queue SET heartbeat_at = NOW(6) \
                 WHERE id = ? AND attempts = ? AND claimed_at IS NOT NULL",
            )
            .bind(lease.id)
            .bind(lease.attempt)
            .execute(&self.pool)
            .await
            .map_err(StoreError::query("heartbeat"))?;
            let state: Option<String> = sqlx::query_scalar(
                "SELECT CAST(o.state AS CHAR) FROM work_queue w \
                 LEFT JOIN cluster_operations o ON o.uid = w.op_uid WHERE w.id = ?",
            )
            .bind(lease.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::query("heartbeat"))?
            .flatten();
            if done.rows_affected() == 1 {
                return Ok(state.as_deref() == Some("queued"));
            }
            let row = read_claimed(&self.pool, "w.id = ?", vec![BindValue::Id(lease.id)])
                .await?
                .into_iter()
                .next()
                .map(|(q, _)| q);
            Err(stale(
                lease,
                lease_problem(lease, row.as_ref()).unwrap_or_else(|| "the lease changed".into()),
            ))
        })
        .await
    }

    /// Completes one claimed operation with its `result` (a JSON object, or null).
    pub async fn complete(&self, lease: Lease, result: Value) -> Result<Stored, StoreError> {
        self.complete_batch(vec![(lease, result)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("complete returned nothing".into())))
    }

    /// Completes many claimed operations in one transaction (one revision each, allocated
    /// together). The outcome of each lease is in its slot: a stale one is
    /// [`StoreError::StaleLease`] and changes nothing, the others complete. Concurrent
    /// calls share a transaction (`store/combine.rs`); each gets its own outcomes.
    pub async fn complete_batch(
        &self,
        items: Vec<(Lease, Value)>,
    ) -> Result<Vec<Result<Stored, StoreError>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.combiners
            .writes
            .submit(self, WriteCall::Complete(items))
            .await?
            .completed()
    }

    /// Wakes one claim per ready row that waits on `targets` or depends on the
    /// operations `uids` (which just finished, here or through another gateway). The
    /// read runs in the background, one at a time per store: finished work that arrives
    /// while one runs is read together by the next, so a busy gateway pays one read per
    /// round, not one per write.
    pub(crate) fn wake_freed_work(&self, targets: Vec<String>, uids: Vec<String>) {
        if !self.wakes.queue_freed(targets, uids) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            while let Some((targets, uids)) = store.wakes.take_freed() {
                match freed_work_queues(&store.pool, &targets, &uids).await {
                    Ok(queues) => store.wakes.queues_ready(&queues),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading work freed by completions; waking every claim");
                        store.wakes.wake_everyone();
                    }
                }
            }
        });
    }

    /// Fails a claimed operation. A retryable report below [`CLUSTER_OP_MAX_ATTEMPTS`]
    /// re-queues it after [`retry_backoff`] (status stays `queued` with the report);
    /// otherwise it goes to `error` and its dependents are aborted.
    pub async fn fail(&self, lease: Lease, report: ErrorReport) -> Result<Stored, StoreError> {
        let report = &report;
        let stored = self
            .with_retry("fail work", || async move {
                let mut tx = self.begin("fail work").await?;
                let mut checked = check_leases(&mut tx, &[lease]).await?;
                let (op, queue) = match checked.pop() {
                    Some(Checked::Valid(op, queue)) => (op, queue),
                    Some(Checked::Stale(e)) => {
                        // Commit the removal of an aborted operation's leftover row.
                        self.commit(tx, "fail work").await?;
                        return Err(e);
                    }
                    None => return Err(StoreError::Corrupt("lease check returned nothing".into())),
                };
                let outcome = if report.retryable && queue.attempts < CLUSTER_OP_MAX_ATTEMPTS {
                    Outcome::Retry(report.clone(), retry_backoff(queue.attempts))
                } else if report.retryable {
                    Outcome::Error(ErrorReport {
                        message: format!(
                            "{} (gave up after {} attempts)",
                            report.message, queue.attempts
                        ),
                        ..report.clone()
                    })
                } else {
                    Outcome::Error(report.clone())
                };
                let key = ObjectKey::new(KIND, op.namespace.clone(), op.name.clone());
                let finished = finish(
                    &mut tx,
                    vec![Finishing {
                        op,
                        queue: Some(queue),
                        outcome,
                    }],
                    &HashSet::new(),
                )
                .await?;
                self.commit(tx, "fail work").await?;
                finished
                    .stored
                    .into_iter()
                    .next()
                    .flatten()
                    .ok_or_else(|| key.not_found())
            })
            .await;
        self.wakes.wake_everyone();
        stored
    }

    /// Aborts the queued and executing operations of `target_uid` except
    /// `instance_snapshot` ones, with `reason`; their dependents are aborted too. Returns
    /// the aborted operations' and the kept snapshots' `namespace/name`s, sorted.
    pub async fn abort(
        &self,
        target_uid: &str,
        reason: &str,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let result = self
            .with_retry("abort operations", || async {
                let uids: Vec<String> = sqlx::query_scalar(
                    "SELECT uid FROM cluster_operations WHERE target_uid = ? AND state = 'queued'",
                )
                .bind(target_uid)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::query("abort operations"))?;
                if uids.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                let mut tx = self.begin("abort operations").await?;
                let queue = lock_queue_rows_of(&mut tx, &uids).await?;
                let ops = lock_ops(&mut tx, &uids).await?;
                let mut kept = Vec::new();
                let mut keep = HashSet::new();
                let mut finishing = Vec::new();
                let mut sorted: Vec<&OpRow> =
                    ops.values().filter(|o| o.state == "queued").collect();
                sorted.sort_by(|a, b| a.uid.cmp(&b.uid));
                for op in sorted {
                    if op.operation_type == SNAPSHOT {
                        kept.push(op.display());
                        keep.insert(op.uid.clone());
                        continue;
                    }
                    finishing.push(Finishing {
                        op: op.clone(),
                        queue: queue.get(&op.uid).cloned(),
                        outcome: Outcome::Abort(ErrorReport {
                            code: "Aborted".into(),
                            message: reason.to_string(),
                            retryable: false,
                        }),
                    });
                }
                let mut aborted: Vec<String> = finishing.iter().map(|f| f.op.display()).collect();
                let finished = finish(&mut tx, finishing, &keep).await?;
                self.commit(tx, "abort operations").await?;
                aborted.extend(finished.cascaded);
                aborted.sort();
                kept.sort();
                Ok((aborted, kept))
            })
            .await?;
        self.wakes.wake_everyone();
        Ok(result)
    }

    /// Re-queues claims whose last heartbeat (or claim) is older than `threshold`, keeping
    /// their attempts; rejects (error) those claimed `max_attempts` times. Returns
    /// (re-queued, rejected).
    pub async fn reap_stuck(
        &self,
        threshold: Duration,
        max_attempts: u32,
    ) -> Result<(u64, u64), StoreError> {
        let threshold_us = micros(threshold);
        let mut requeued_total = 0u64;
        let mut rejected_total = 0u64;
        loop {
            let (seen, requeued, rejected) = self
                .with_retry("reap stuck work", || async {
                    let mut tx = self.begin("reap stuck work").await?;
                    let text = format!(
                        // The claimed rows, through the claimed-target key (non-NULL
                        // exactly while claimed; there is no heartbeat index).
                        "SELECT {QUEUE_COLUMNS} FROM work_queue w FORCE INDEX (ux_work_queue_claimed_target) \
                         WHERE w.claimed_target IS NOT NULL AND w.claimed_at IS NOT NULL \
                         AND COALESCE(w.heartbeat_at, w.claimed_at) < NOW(6) - INTERVAL ? MICROSECOND \
                         LIMIT {CHUNK} FOR UPDATE SKIP LOCKED"
                    );
                    let rows: Vec<QueueRow> = sqlx::query(sql(text))
                        .bind(threshold_us)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(StoreError::query("reap stuck work"))?
                        .iter()
                        .map(QueueRow::decode)
                        .collect::<Result<_, _>>()?;
                    if rows.is_empty() {
                        return Ok((0, 0, 0));
                    }
                    let uids: Vec<String> = rows.iter().map(|r| r.op_uid.clone()).collect();
                    let ops = lock_ops(&mut tx, &uids).await?;
                    let mut leftovers = Vec::new();
                    let mut requeue = Vec::new();
                    let mut reject = Vec::new();
                    for row in &rows {
                        match ops.get(&row.op_uid) {
                            Some(op) if op.state == "queued" => {
                                if row.attempts >= max_attempts {
                                    tracing::warn!(operation = %op.display(), attempts = row.attempts,
                                        "rejecting a stuck operation");
                                    reject.push(Finishing {
                                        op: op.clone(),
                                        queue: Some(row.clone()),
                                        outcome: Outcome::Error(ErrorReport {
                                            code: "ReaperRejected".into(),
                                            message: format!(
                                                "claimed {} times without completing; rejected by the reaper",
                                                row.attempts
                                            ),
                                            retryable: false,
                                        }),
                                    });
                                } else {
                                    tracing::info!(operation = %op.display(), attempts = row.attempts,
                                        claimed_by = ?row.claimed_by, "re-queueing a stuck operation");
                                    requeue.push(row.id);
                                }
                            }
                            _ => leftovers.push(row.id),
                        }
                    }
                    delete_queue_rows(&mut tx, &leftovers).await?;
                    requeue_rows(&mut tx, &requeue, None).await?;
                    let rejected = reject.len();
                    if !reject.is_empty() {
                        finish(&mut tx, reject, &HashSet::new()).await?;
                    }
                    self.commit(tx, "reap stuck work").await?;
                    Ok((rows.len(), requeue.len(), rejected))
                })
                .await?;
            requeued_total += u64::try_from(requeued).unwrap_or(u64::MAX);
            rejected_total += u64::try_from(rejected).unwrap_or(u64::MAX);
            if requeued > 0 {
                self.wakes.wake_everyone();
            }
            if seen < CHUNK {
                break;
            }
        }
        Ok((requeued_total, rejected_total))
    }

    /// Removes complete, error and abort operations last changed more than `older_than`
    /// ago: resource (a DELETED change), projection and dependency edges. An aborted
    /// operation whose claimer still holds its row waits for that row to go. Returns how
    /// many were removed.
    pub async fn purge_terminal_operations(&self, older_than: Duration) -> Result<u64, StoreError> {
        self.purge_finished(Some(older_than), None).await
    }

    /// Removes every finished operation of `namespace` (as the purge does, whatever
    /// their age), in transactions of at most [`CHUNK`] so the revision counter is
    /// never held for long; the namespace delete runs it first.
    pub(crate) async fn purge_finished_operations_of(
        &self,
        namespace: &str,
    ) -> Result<u64, StoreError> {
        self.purge_finished(None, Some(namespace)).await
    }

    async fn purge_finished(
        &self,
        older_than: Option<Duration>,
        namespace: Option<&str>,
    ) -> Result<u64, StoreError> {
        let age_us = older_than.map_or(0, micros);
        let mut total = 0u64;
        loop {
            let purged = self
                .with_retry("purge operations", || async {
                    let mut tx = self.begin("purge operations").await?;
                    let (index, scope) = match namespace {
                        Some(_) => ("ux_cluster_operations_name", "o.namespace = ? AND"),
                        None => ("ix_cluster_operations_state", ""),
                    };
                    let text = format!(
                        "SELECT {OP_COLUMNS} FROM cluster_operations o FORCE INDEX ({index}) \
                         WHERE {scope} o.state IN ('complete', 'error', 'abort') \
                         AND o.updated_at < NOW(6) - INTERVAL ? MICROSECOND \
                         AND NOT EXISTS (SELECT 1 FROM work_queue w WHERE w.op_uid = o.uid) \
                         LIMIT {CHUNK} FOR UPDATE SKIP LOCKED"
                    );
                    let mut q = sqlx::query(sql(text));
                    if let Some(ns) = namespace {
                        q = q.bind(ns);
                    }
                    let ops: Vec<OpRow> = q
                        .bind(age_us)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(StoreError::query("purge operations"))?
                        .iter()
                        .map(OpRow::decode)
                        .collect::<Result<_, _>>()?;
                    if ops.is_empty() {
                        return Ok(0);
                    }
                    let rows = unlink_operations(&mut tx, &ops).await?;
                    remove_unlinked(&mut tx, &rows).await?;
                    self.commit(tx, "purge operations").await?;
                    Ok(ops.len())
                })
                .await?;
            total += u64::try_from(purged).unwrap_or(u64::MAX);
            if purged < CHUNK {
                return Ok(total);
            }
        }
    }

    /// Operations waiting to be claimed (ready, backing off or waiting on dependencies);
    /// executing ones are not counted.
    pub async fn queue_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM work_queue WHERE claimed_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::query("queue depth"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Claimed rows whose resource is gone (deleted outside the queue): their operations
/// are aborted, so dependents do not wait forever.
async fn abort_orphans(tx: &mut Tx, orphans: Vec<QueueRow>) -> Result<(), StoreError> {
    let uids: Vec<String> = orphans.iter().map(|q| q.op_uid.clone()).collect();
    let ops = lock_ops(tx, &uids).await?;
    let mut finishing = Vec::new();
    let mut lost = Vec::new();
    for mut q in orphans {
        tracing::warn!(uid = %q.op_uid, "claimed work has no ClusterOperation resource; aborting it");
        // Not executing: nobody was told about it, so the row goes at once.
        q.claimed_us = None;
        match ops.get(&q.op_uid) {
            Some(op) => finishing.push(Finishing {
                op: op.clone(),
                queue: Some(q),
                outcome: Outcome::Abort(ErrorReport {
                    code: "ResourceMissing".into(),
                    message: "the ClusterOperation resource was deleted".into(),
                    retryable: false,
                }),
            }),
            None => lost.push(q.id),
        }
    }
    delete_queue_rows(tx, &lost).await?;
    finish(tx, finishing, &HashSet::new()).await?;
    Ok(())
}

/// The `queue_name` of each ready, unclaimed row that waits on one of `targets` or
/// depends on one of the operations `uids` (read without locks; at most 64 rows per
/// chunk: a wake per row, and a few wakes cover a batch claim).
async fn freed_work_queues(
    pool: &sqlx::MySqlPool,
    targets: &[String],
    uids: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut queues = queue_names_for(
        pool,
        targets,
        "SELECT queue_name FROM work_queue FORCE INDEX (ix_work_queue_target) \
         WHERE target_uid IN ({}) AND claimed_at IS NULL AND waiting_on = 0 LIMIT 64",
    )
    .await?;
    queues.extend(
        queue_names_for(
            pool,
            uids,
            "SELECT w.queue_name FROM operation_dependencies d \
             FORCE INDEX (ix_operation_dependencies_on) \
             JOIN work_queue w ON w.op_uid = d.op_uid \
             WHERE d.depends_on_uid IN ({}) AND w.claimed_at IS NULL AND w.waiting_on = 0 LIMIT 64",
        )
        .await?,
    );
    Ok(queues)
}

/// Runs `template` (one `{}` for the key placeholders) over `keys` in chunks of
/// [`CHUNK`], without locks, and returns the queue names it selects.
async fn queue_names_for(
    pool: &sqlx::MySqlPool,
    keys: &[String],
    template: &str,
) -> Result<Vec<String>, StoreError> {
    let mut queues = Vec::new();
    for chunk in keys.chunks(CHUNK) {
        let mut q =
            sqlx::query_scalar::<_, String>(sql(template.replacen("{}", &marks(chunk.len()), 1)));
        for key in chunk {
            q = q.bind(key);
        }
        queues.extend(
            q.fetch_all(pool)
                .await
                .map_err(StoreError::query("read freed work"))?,
        );
    }
    Ok(queues)
}

/// Splits `flat` back into calls of `sizes` items.
fn split_by<T>(flat: Vec<T>, sizes: &[usize]) -> Vec<Vec<T>> {
    let mut rest = flat.into_iter();
    sizes
        .iter()
        .map(|n| rest.by_ref().take(*n).collect())
        .collect()
}

/// One claim attempt, for the claim combiner.
pub(crate) struct ClaimCall {
    queues: Vec<String>,
    max: u32,
    claim_id: String,
    claimer: String,
    /// The call's first attempt: rows its `claim_id` still holds are the answer.
    replay: bool,
    /// A retry after a nap that nothing woke: likely nothing is ready.
    idle: bool,
}

/// What one claim transaction did.
struct ClaimRound {
    /// Each call's claims, in call order (empty for a replayed call).
    claimed: Vec<Vec<Claimed>>,
    /// The asked `claim_id`s that still hold claimed rows.
    replayed: HashSet<String>,
    /// Per call: ready work of its queues was left behind, and it is the round's first
    /// call of such a queue (it wakes the next claim).
    backlog: Vec<bool>,
}

/// Every queue of a round's queue sets, in order of first appearance.
fn queues_of(sets: &[Vec<String>]) -> Vec<String> {
    let mut queues: Vec<String> = Vec::new();
    for queue in sets.iter().flatten() {
        if !queues.contains(queue) {
            queues.push(queue.clone());
        }
    }
    queues
}

/// The rows a round asks of each queue: the maxes of the calls whose set holds it,
/// summed, at most [`MAX_CLAIM_BATCH`]; in order of first appearance.
fn queue_limits(calls: &[&ClaimCall], sets: &[Vec<String>]) -> Vec<(String, u32)> {
    let mut limits: Vec<(String, u32)> = Vec::new();
    for (call, set) in calls.iter().zip(sets) {
        for queue in set {
            match limits.iter_mut().find(|(q, _)| q == queue) {
                Some((_, limit)) => *limit = limit.saturating_add(call.max).min(MAX_CLAIM_BATCH),
                None => limits.push((queue.clone(), call.max.min(MAX_CLAIM_BATCH))),
            }
        }
    }
    limits
}

/// Takes up to `max` rows of `set`'s queues from `pool` (in claim order), leaving the
/// rest.
fn take_rows(pool: &mut [Option<(QueueRow, String)>], set: &[String], max: u32) -> Vec<QueueRow> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    for slot in pool.iter_mut() {
        if rows.len() >= max {
            break;
        }
        if slot.as_ref().is_some_and(|(_, queue)| set.contains(queue))
            && let Some((row, _)) = slot.take()
        {
            rows.push(row);
        }
    }
    rows
}

/// What one claim attempt got.
pub(crate) struct ClaimAttempt {
    claim_id: String,
    claimed: Vec<Claimed>,
    /// `claimed` is the replay of the claim_id's earlier claim.
    replayed: bool,
    /// The round left ready work of this call's queues behind (locked but not shared
    /// out, or more than it asked for): the caller wakes the next claim of its queue (set
    /// on the round's first call of each such queue).
    backlog: bool,
}

/// Concurrent claim attempts of one store: they share one locking transaction, whatever
/// their queues (agents of different nodes included).
pub(crate) struct Claims;

impl Combine for Claims {
    type Req = ClaimCall;
    type Out = Result<ClaimAttempt, StoreError>;
    const MAX_WEIGHT: usize = MAX_CLAIM_BATCH as usize;
    const WORKERS: usize = 2;

    fn weight(req: &Self::Req) -> usize {
        usize::try_from(req.max).unwrap_or(usize::MAX)
    }

    fn keys(req: &Self::Req) -> Vec<String> {
        vec![req.claim_id.clone()]
    }

    async fn run(store: &Store, reqs: Vec<Self::Req>) -> Vec<Self::Out> {
        let calls: Vec<&ClaimCall> = reqs.iter().collect();
        match store.claim_attempts(&calls).await {
            Ok(attempts) => attempts,
            Err(e) if calls.len() == 1 => vec![Err(e)],
            Err(e @ StoreError::Unavailable { .. }) => {
                combine::unavailable_for_all(e, calls.len(), "claim work")
                    .into_iter()
                    .map(Err)
                    .collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, calls = calls.len(), "combined claim failed; running each call alone");
                let mut outs = Vec::with_capacity(calls.len());
                for call in calls {
                    outs.push(store.claim_attempts(&[call]).await.and_then(|mut one| {
                        one.pop().unwrap_or_else(|| {
                            Err(StoreError::Corrupt("lost a claim outcome".into()))
                        })
                    }));
                }
                outs
            }
        }
    }

    async fn undelivered(store: Store, out: Self::Out) {
        if let Ok(attempt) = out
            && !attempt.replayed
            && !attempt.claimed.is_empty()
        {
            let leases: Vec<Lease> = attempt.claimed.iter().map(|c| c.lease).collect();
            store.unclaim(&attempt.claim_id, &leases).await;
        }
    }

    fn worker_lost() -> Self::Out {
        Err(StoreError::Unavailable {
            operation: "claim work",
            source: sqlx::Error::WorkerCrashed,
        })
    }
}

/// One call to the write combiner.
pub(crate) enum WriteCall {
    /// [`Store::create_operations`] (validated).
    Create(Vec<NewOp>),
    /// [`Store::complete_batch`].
    Complete(Vec<(Lease, Value)>),
}

/// One call's outcome.
pub(crate) enum WriteOk {
    Created(Vec<Stored>),
    Completed(Vec<Result<Stored, StoreError>>),
}

impl WriteOk {
    /// A create call's outcome (the combiner answers each call with its own kind).
    fn created(self) -> Result<Vec<Stored>, StoreError> {
        match self {
            Self::Created(stored) => Ok(stored),
            Self::Completed(_) => Err(StoreError::Corrupt(
                "a create got a completion's outcome".into(),
            )),
        }
    }

    /// A completion call's outcome.
    fn completed(self) -> Result<Vec<Result<Stored, StoreError>>, StoreError> {
        match self {
            Self::Completed(out) => Ok(out),
            Self::Created(_) => Err(StoreError::Corrupt(
                "a completion got a create's outcome".into(),
            )),
        }
    }
}

/// Concurrent creates and completions of one store, combined into one transaction.
pub(crate) struct Writes;

impl Combine for Writes {
    type Req = WriteCall;
    type Out = Result<WriteOk, StoreError>;
    const MAX_WEIGHT: usize = CHUNK;
    const WORKERS: usize = 1;

    fn weight(req: &Self::Req) -> usize {
        match req {
            WriteCall::Create(ops) => ops.len(),
            WriteCall::Complete(items) => items.len(),
        }
    }

    fn keys(req: &Self::Req) -> Vec<String> {
        match req {
            WriteCall::Create(ops) => ops
                .iter()
                .map(|op| format!("op:{}/{}", op.key.namespace, op.key.name))
                .collect(),
            WriteCall::Complete(items) => items
                .iter()
                .map(|(l, _)| format!("lease:{}", l.id))
                .collect(),
        }
    }

    async fn run(store: &Store, reqs: Vec<Self::Req>) -> Vec<Self::Out> {
        let mut kinds = Vec::with_capacity(reqs.len());
        let (mut creates, mut completes) = (Vec::new(), Vec::new());
        let (mut create_sizes, mut complete_sizes) = (Vec::new(), Vec::new());
        for req in reqs {
            match req {
                WriteCall::Create(ops) => {
                    kinds.push(true);
                    create_sizes.push(ops.len());
                    creates.extend(ops);
                }
                WriteCall::Complete(items) => {
                    kinds.push(false);
                    complete_sizes.push(items.len());
                    completes.extend(items);
                }
            }
        }
        match store.write_now(&creates, &completes).await {
            Ok(done) => {
                let mut created = split_by(done.created, &create_sizes).into_iter();
                let mut completed = split_by(done.completed, &complete_sizes).into_iter();
                kinds
                    .into_iter()
                    .map(|is_create| {
                        if is_create {
                            created.next().map(WriteOk::Created)
                        } else {
                            completed.next().map(WriteOk::Completed)
                        }
                        .ok_or_else(|| StoreError::Corrupt("lost a combined outcome".into()))
                    })
                    .collect()
            }
            Err(e) if kinds.len() == 1 => vec![Err(e)],
            Err(e @ StoreError::Unavailable { .. }) => {
                // MariaDB is out of reach: rerunning each call alone would only wait
                // for the pool again, once per call. Every call gets the error now and
                // its client retries (through another gateway if need be).
                combine::unavailable_for_all(e, kinds.len(), "write operations")
                    .into_iter()
                    .map(Err)
                    .collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, calls = kinds.len(), "combined write failed; running each call alone");
                let mut creates = split_by(creates, &create_sizes).into_iter();
                let mut completes = split_by(completes, &complete_sizes).into_iter();
                let mut out = Vec::with_capacity(kinds.len());
                for is_create in kinds {
                    let result = if is_create {
                        let ops = creates.next().unwrap_or_default();
                        store
                            .write_now(&ops, &[])
                            .await
                            .map(|d| WriteOk::Created(d.created))
                    } else {
                        let items = completes.next().unwrap_or_default();
                        store
                            .write_now(&[], &items)
                            .await
                            .map(|d| WriteOk::Completed(d.completed))
                    };
                    out.push(result);
                }
                out
            }
        }
    }

    fn worker_lost() -> Self::Out {
        Err(StoreError::Unavailable {
            operation: "write operations",
            source: sqlx::Error::WorkerCrashed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_is_capped() {
        assert_eq!(retry_backoff(1), Duration::from_secs(1));
        assert_eq!(retry_backoff(2), Duration::from_secs(2));
        assert_eq!(retry_backoff(4), Duration::from_secs(8));
        assert_eq!(retry_backoff(40), BACKOFF_CAP);
        assert_eq!(retry_backoff(0), Duration::from_secs(1));
    }

    fn call(queues: &[&str], max: u32) -> ClaimCall {
        ClaimCall {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            max,
            claim_id: format!("c-{}", queues.join("+")),
            claimer: "t".into(),
            replay: false,
            idle: false,
        }
    }

    fn row(id: u64, queue: &str) -> Option<(QueueRow, String)> {
        Some((
            QueueRow {
                id,
                op_uid: format!("op-{id}"),
                target_uid: format!("t-{id}"),
                attempts: 0,
                priority: 1,
                claimed_by: None,
                claimed_us: None,
                scheduled_us: 0,
            },
            queue.to_string(),
        ))
    }

    #[test]
    fn a_round_asks_each_queue_for_the_maxes_of_the_calls_that_want_it() {
        let a = call(&["node:hv-1", "cluster"], 3);
        let b = call(&["node:hv-2", "cluster"], 2);
        let c = call(&["node:hv-1", "cluster"], MAX_CLAIM_BATCH);
        let calls = [&a, &b, &c];
        let sets: Vec<Vec<String>> = calls.iter().map(|c| c.queues.clone()).collect();
        assert_eq!(queues_of(&sets), ["node:hv-1", "cluster", "node:hv-2"]);
        let limits = queue_limits(&calls, &sets);
        assert_eq!(
            limits,
            [
                ("node:hv-1".to_string(), MAX_CLAIM_BATCH),
                ("cluster".to_string(), MAX_CLAIM_BATCH),
                ("node:hv-2".to_string(), 2),
            ]
        );
        // A call whose queues had no work this round asks for nothing.
        let sets = vec![vec!["node:hv-1".to_string()], Vec::new(), Vec::new()];
        assert_eq!(queue_limits(&calls, &sets), [("node:hv-1".to_string(), 3)]);
    }

    #[test]
    fn rows_go_only_to_calls_of_their_queue_in_claim_order() {
        let mut pool = vec![
            row(1, "node:hv-2"),
            row(2, "cluster"),
            row(3, "node:hv-1"),
            row(4, "node:hv-1"),
            row(5, "node:hv-2"),
        ];
        let hv1 = ["node:hv-1".to_string(), "cluster".to_string()];
        let hv2 = ["node:hv-2".to_string()];
        let ids = |rows: Vec<QueueRow>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(take_rows(&mut pool, &hv1, 2)), [2, 3]);
        assert_eq!(ids(take_rows(&mut pool, &hv2, 5)), [1, 5]);
        assert_eq!(ids(take_rows(&mut pool, &hv1, 0)), Vec::<u64>::new());
        // What no call took stays in the pool: the round's backlog.
        let left: Vec<u64> = pool.iter().flatten().map(|(r, _)| r.id).collect();
        assert_eq!(left, [4]);
    }

    #[test]
    fn placeholders_are_comma_separated() {
        assert_eq!(marks(1), "?");
        assert_eq!(marks(3), "?, ?, ?");
    }

    #[test]
    fn operations_are_validated_before_any_sql() {
        let good = json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "ClusterOperation",
            "metadata": {"name": "op-1", "namespace": "demo"},
            "spec": {"operationType": "instance_create",
                     "target": {"kind": "Instance", "name": "web-1", "uid": "u-1"},
                     "node": "hv-1", "priority": "high", "payload": {}},
            "status": {"state": "complete"}
        });
        let op = prepare_operation(good.clone(), Duration::ZERO).expect("valid");
        assert_eq!(op.queue_name, "node:hv-1");
        assert_eq!(op.priority, 0);
        assert_eq!(
            op.object["status"],
            json!({"state": "queued", "attempts": 0})
        );
        let mut bad = good.clone();
        bad["spec"]["priority"] = json!("urgent");
        assert!(matches!(
            prepare_operation(bad, Duration::ZERO),
            Err(StoreError::Invalid(_))
        ));
        let mut bad = good.clone();
        bad["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("namespace");
        assert!(matches!(
            prepare_operation(bad, Duration::ZERO),
            Err(StoreError::Invalid(_))
        ));
        let mut bad = good;
        bad["kind"] = json!("Instance");
        assert!(matches!(
            prepare_operation(bad, Duration::ZERO),
            Err(StoreError::Invalid(_))
        ));
    }
}
