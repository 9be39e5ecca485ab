//! The change feed and watches: every change after a revision, exactly once, in order.
//!
//! Contract:
//! - One [`ChangeFeed`] per gateway process reads `change_log` in revision order — woken
//!   at once by a local commit, and every `poll_interval` (≤ 50 ms) for writes made
//!   through other gateway instances — and publishes each change to a broadcast
//!   channel. Writers never push their own change to watchers (that would reorder
//!   events across instances); only this reader does.
//! - A watch from revision R first subscribes, then replays `change_log` after R from
//!   the database, then follows the broadcast, dropping what it already replayed. A
//!   watcher that falls behind the broadcast (lagged) catches up from the database the
//!   same way, so a slow consumer never loses or reorders a change.
//! - Revisions are gap-free by construction (see [`super`]); a watch checks continuity
//!   and a hole means compaction raced it: it ends with [`StoreError::Expired`], as
//!   does a start from a revision older than the compacted one.
//! - Progress events carry a revision up to which every change has been delivered.
//! - A [`Change`] holds its objects as the change log's JSON text (checked to be JSON
//!   when read; a row that is not is [`StoreError::Corrupt`]). Watches are sent that
//!   text unchanged; [`Change::object`] parses it once, on first use (selectors), and
//!   the claim wake-ups deserialize only the four fields they read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sea_orm::sqlx::{self, Row};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use super::resources::ObjectKey;
use super::{Store, StoreError};
use sf_schema::selector::{FieldSelector, LabelSelector};

/// The longest a change made through another gateway instance waits to be seen.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Rows read per change-log query.
const PAGE: i64 = 1000;

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeType {
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "ADDED" => Ok(Self::Added),
            "MODIFIED" => Ok(Self::Modified),
            "DELETED" => Ok(Self::Deleted),
            other => Err(StoreError::Corrupt(format!(
                "change_log.event_type {other}"
            ))),
        }
    }
}

/// One change. The objects are kept as the JSON text the change log holds (checked
/// to be JSON when read) and parsed only when something asks for them: a watch is
/// sent the text as it is, and a gateway's feed reads every change of the cluster.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its revision.
    pub revision: u64,
    /// What happened.
    pub change_type: ChangeType,
    /// Which object.
    pub key: ObjectKey,
    object_json: String,
    prev_json: Option<String>,
    object: OnceLock<Value>,
    prev_object: OnceLock<Option<Value>>,
}

impl PartialEq for Change {
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision
            && self.change_type == other.change_type
            && self.key == other.key
            && self.object_json == other.object_json
            && self.prev_json == other.prev_json
    }
}

impl Change {
    /// A change whose objects are `object_json` and `prev_json`, which must be JSON
    /// ([`StoreError::Corrupt`] naming `source` if not).
    fn from_json(
        revision: u64,
        change_type: ChangeType,
        key: ObjectKey,
        object_json: String,
        prev_json: Option<String>,
    ) -> Result<Self, StoreError> {
        // Validates without building the tree (no allocation per value).
        let check = |text: &str, what: &str| {
            serde_json::from_str::<serde::de::IgnoredAny>(text)
                .map(|_| ())
                .map_err(|e| StoreError::Corrupt(format!("{what} at revision {revision}: {e}")))
        };
        check(&object_json, "change_log.object")?;
        if let Some(prev) = &prev_json {
            check(prev, "change_log.prev_object")?;
        }
        Ok(Self {
            revision,
            change_type,
            key,
            object_json,
            prev_json,
            object: OnceLock::new(),
            prev_object: OnceLock::new(),
        })
    }

    /// The object after the change (its final state for a deletion), parsed on first
    /// use.
    pub fn object(&self) -> &Value {
        self.object
            .get_or_init(|| parse_logged(&self.object_json, self.revision, "object"))
    }

    /// The object before the change (none for an addition), parsed on first use.
    pub fn prev_object(&self) -> Option<&Value> {
        self.prev_object
            .get_or_init(|| {
                self.prev_json
                    .as_deref()
                    .map(|p| parse_logged(p, self.revision, "prev_object"))
            })
            .as_ref()
    }

    /// The object after the change, as stored.
    pub fn object_json(&self) -> &str {
        &self.object_json
    }

    /// The object before the change, as stored.
    pub fn prev_object_json(&self) -> Option<&str> {
        self.prev_json.as_deref()
    }

    /// What the queue's wake-ups need of a ClusterOperation change, read from its JSON
    /// without building the object; an object whose fields have unexpected types
    /// falls back to the parsed object, reading what it can.
    fn operation_facts(&self) -> OperationFacts {
        serde_json::from_str(&self.object_json).unwrap_or_else(|_| {
            let o = self.object();
            let text = |p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_owned);
            OperationFacts {
                metadata: FactsMetadata {
                    uid: text("/metadata/uid"),
                },
                spec: FactsSpec {
                    node: text("/spec/node"),
                    target: FactsTarget {
                        uid: text("/spec/target/uid"),
                    },
                },
                status: FactsStatus {
                    state: text("/status/state"),
                },
            }
        })
    }
}

/// Parses a change-log object that was checked to be JSON when read. The check does
/// not bound nesting the way a parse does (serde_json stops at 128 levels); stored
/// objects never come near that (MariaDB's JSON columns and
/// `resources::MAX_OBJECT_DEPTH` stop at 31), but should a parse fail, it is logged
/// and the object reads as null rather than stalling the feed.
fn parse_logged(text: &str, revision: u64, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::error!(revision, what, error = %e, "change log: an object does not parse");
        Value::Null
    })
}

/// The fields of a ClusterOperation the change feed's claim wake-ups read.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct OperationFacts {
    metadata: FactsMetadata,
    spec: FactsSpec,
    status: FactsStatus,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FactsMetadata {
    uid: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FactsSpec {
    node: Option<String>,
    target: FactsTarget,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FactsTarget {
    uid: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FactsStatus {
    state: Option<String>,
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// A change that matches the watch.
    Change(Arc<Change>),
    /// Every change up to this revision has been delivered.
    Progress(u64),
}

/// What a watch selects.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// Kind; required.
    pub kind: String,
    /// Namespace; `None` for all.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl WatchFilter {
    /// Whether the change concerns this watch: the object matches now or matched before
    /// (so a caller can turn "stopped matching" into a deletion).
    pub fn matches(&self, change: &Change) -> bool {
        if change.key.kind != self.kind {
            return false;
        }
        if let Some(ns) = &self.namespace
            && &change.key.namespace != ns
        {
            return false;
        }
        if self.labels.is_empty() && self.fields.is_empty() {
            // Kind and namespace decide: the objects need not be parsed.
            return true;
        }
        let selects = |o: &Value| self.labels.matches(o) && self.fields.matches(o);
        selects(change.object()) || change.prev_object().is_some_and(selects)
    }
}

/// Reads change_log rows after `after`, in order.
async fn read_changes(store: &Store, after: u64, limit: i64) -> Result<Vec<Change>, StoreError> {
    let rows = sqlx::query(
        "SELECT revision, event_type, kind, namespace, name, object, prev_object \
         FROM change_log WHERE revision > ? ORDER BY revision LIMIT ?",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read change log"))?;
    let corrupt = |e: sqlx::Error| StoreError::Corrupt(format!("change_log: {e}"));
    rows.iter()
        .map(|r| {
            let object: String = r.try_get("object").map_err(corrupt)?;
            let prev: Option<String> = r.try_get("prev_object").map_err(corrupt)?;
            let event_type: String = r.try_get("event_type").map_err(corrupt)?;
            Change::from_json(
                r.try_get("revision").map_err(corrupt)?,
                ChangeType::parse(&event_type)?,
                ObjectKey::new(
                    r.try_get::<String, _>("kind").map_err(corrupt)?,
                    r.try_get::<String, _>("namespace").map_err(corrupt)?,
                    r.try_get::<String, _>("name").map_err(corrupt)?,
                ),
                object,
                prev,
            )
        })
        .collect()
}

impl Store {
    /// The newest compacted revision: watches must start at or after it.
    pub async fn compacted_revision(&self) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, u64>("SELECT compacted_revision FROM revision_counter WHERE id = 1")
            .fetch_one(self.pool())
            .await
            .map_err(StoreError::query("read compacted revision"))
    }

    /// Deletes change-log entries at or below `to_revision` (capped at the current
    /// revision). Returns the compacted revision and the rows deleted. The compacted
    /// mark moves first, so a watch can never start inside the deleted range.
    pub async fn compact(&self, to_revision: u64) -> Result<(u64, u64), StoreError> {
        let target = self
            .with_retry("compact change log", || async {
                let mut tx = self.begin("compact change log").await?;
                let row = sqlx::query(
                    "SELECT revision, compacted_revision FROM revision_counter WHERE id = 1 FOR UPDATE",
                )
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::query("compact change log"))?;
                let current: u64 = row.try_get(0).map_err(StoreError::query("compact change log"))?;
                let compacted: u64 = row.try_get(1).map_err(StoreError::query("compact change log"))?;
                let target = to_revision.min(current).max(compacted);
                if target > compacted {
                    sqlx::query("UPDATE revision_counter SET compacted_revision = ? WHERE id = 1")
                        .bind(target)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::query("compact change log"))?;
                }
                tx.commit().await.map_err(StoreError::query("compact change log"))?;
                Ok(target)
            })
            .await?;
        let mut deleted = 0;
        loop {
            let n = sqlx::query("DELETE FROM change_log WHERE revision <= ? LIMIT 5000")
                .bind(target)
                .execute(self.pool())
                .await
                .map_err(StoreError::query("compact change log"))?
                .rows_affected();
            deleted += n;
            if n < 5000 {
                break;
            }
        }
        Ok((target, deleted))
    }
}

impl Store {
    /// Compacts the change log while keeping at least `keep_revisions` of the newest
    /// revisions AND everything younger than `keep_for`, whichever keeps more (the
    /// maintenance policy: at least an hour or 10,000 revisions).
    pub async fn compact_retaining(
        &self,
        keep_revisions: u64,
        keep_for: Duration,
    ) -> Result<(u64, u64), StoreError> {
        let current = self.current_revision().await?;
        let by_count = current.saturating_sub(keep_revisions);
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(keep_for).unwrap_or(chrono::Duration::MAX);
        let by_age: u64 = sqlx::query_scalar::<_, Option<u64>>(
            "SELECT MAX(revision) FROM change_log WHERE created_at < ?",
        )
        .bind(cutoff.naive_utc())
        .fetch_one(self.pool())
        .await
        .map_err(StoreError::query("compact change log"))?
        .unwrap_or(0);
        let target = by_count.min(by_age);
        if target == 0 {
            return Ok((self.compacted_revision().await?, 0));
        }
        self.compact(target).await
    }
}

/// The process's reader of `change_log`.
pub struct ChangeFeed {
    store: Store,
    sender: broadcast::Sender<Arc<Change>>,
    position: AtomicU64,
    gaps: AtomicU64,
}

impl ChangeFeed {
    /// Starts the reader at the current revision. It stops when `shutdown` resolves.
    pub async fn start(
        store: Store,
        poll_interval: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Arc<Self>, StoreError> {
        let position = store.current_revision().await?;
        let (sender, _) = broadcast::channel(8192);
        let feed = Arc::new(Self {
            store,
            sender,
            position: AtomicU64::new(position),
            gaps: AtomicU64::new(0),
        });
        let runner = feed.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = runner.run(poll_interval) => {}
                () = shutdown => {}
            }
        });
        Ok(feed)
    }

    /// The revision up to which every change has been published.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Holes seen in the change log (always 0 unless the revision invariant broke).
    pub fn gaps_seen(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    async fn run(&self, poll_interval: Duration) {
        let committed = self.store.committed();
        let mut backoff = poll_interval;
        loop {
            match self.poll_once().await {
                Ok(n) if n as i64 == PAGE => continue,
                Ok(_) => backoff = poll_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "change feed: reading the change log failed");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            tokio::select! {
                () = committed.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Publishes every change after the position; returns how many were read.
    async fn poll_once(&self) -> Result<usize, StoreError> {
        let position = self.position();
        let mut changes = read_changes(&self.store, position, PAGE).await?;
        if changes.first().is_some_and(|c| c.revision != position + 1) {
            // Cannot happen while revisions are allocated under the counter lock; look
            // once more in case it ever does, then report it loudly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            changes = read_changes(&self.store, position, PAGE).await?;
            if let Some(first) = changes.first()
                && first.revision != position + 1
            {
                self.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    expected = position + 1,
                    found = first.revision,
                    "change feed: GAP in the change log (compacted under the reader, or the revision invariant broke)"
                );
            }
        }
        let n = changes.len();
        // Work created or finished through ANOTHER gateway: waiting claims of this
        // process look again now instead of polling MariaDB (this gateway's own
        // operation writes woke them already). New work wakes one claim of its node
        // per operation; a finished operation (complete, error, abort) may have freed
        // its target or released dependents: while claims of this gateway run, read
        // which ready rows that made, off the feed's path, and wake their queues.
        let wakes = &self.store.wakes;
        let mut finished_targets = Vec::new();
        let mut finished_uids = Vec::new();
        let new_work: Vec<Option<String>> = changes
            .iter()
            .filter(|c| c.key.kind == "ClusterOperation" && !wakes.is_local(c.revision))
            .map(|c| c.operation_facts())
            .filter_map(|facts| match facts.status.state.as_deref() {
                Some("queued") => Some(facts.spec.node),
                Some("complete" | "error" | "abort") => {
                    finished_targets.extend(facts.spec.target.uid);
                    finished_uids.extend(facts.metadata.uid);
                    None
                }
                _ => None,
            })
            .collect();
        wakes.new_work(new_work.iter().map(Option::as_deref));
        if !finished_uids.is_empty() && wakes.claims_active() {
            self.store.wake_freed_work(finished_targets, finished_uids);
        }
        if let Some(last) = changes.last() {
            wakes.forget_through(last.revision);
        }
        for change in changes {
            let revision = change.revision;
            // No receivers is fine.
            let _ = self.sender.send(Arc::new(change));
            self.position.store(revision, Ordering::Release);
        }
        Ok(n)
    }

    /// Starts a watch from `from_revision`; items arrive on the returned channel until
    /// the receiver is dropped or an error (e.g. [`StoreError::Expired`]) is sent.
    pub fn watch(
        self: &Arc<Self>,
        filter: WatchFilter,
        from_revision: u64,
        progress_interval: Duration,
    ) -> mpsc::Receiver<Result<WatchItem, StoreError>> {
        let (out, rx) = mpsc::channel(1024);
        let feed = self.clone();
        tokio::spawn(async move {
            if let Err(e) = feed
                .serve_watch(&filter, from_revision, progress_interval, &out)
                .await
            {
                let _ = out.send(Err(e)).await;
            }
        });
        rx
    }

    /// Replays from the database everything after `*last` (continuity checked).
    async fn replay(
        &self,
        filter: &WatchFilter,
        last: &mut u64,
        out: &mpsc::Sender<Result<WatchItem, StoreError>>,
    ) -> Result<bool, StoreError> {
        loop {
            let changes = read_changes(&self.store, *last, PAGE).await?;
            let n = changes.len();
            for change in changes {
                if change.revision != *last + 1 {
                    return Err(StoreError::Expired {
                        requested: *last,
                        compacted: self.store.compacted_revision().await?,
                    });
                }
                *last = change.revision;
                if filter.matches(&change)
                    && out
                        .send(Ok(WatchItem::Change(Arc::new(change))))
                        .await
                        .is_err()
                {
                    return Ok(false);
                }
            }
            if (n as i64) < PAGE {
                return Ok(true);
            }
        }
    }

    async fn serve_watch(
        &self,
        filter: &WatchFilter,
        from_revision: u64,
        progress_interval: Duration,
        out: &mpsc::Sender<Result<WatchItem, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut rx = self.sender.subscribe();
        let compacted = self.store.compacted_revision().await?;
        if from_revision < compacted {
            return Err(StoreError::Expired {
                requested: from_revision,
                compacted,
            });
        }
        let mut last = from_revision;
        if !self.replay(filter, &mut last, out).await? {
            return Ok(());
        }
        let mut ticker = tokio::time::interval(progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Ok(change) => {
                        if !self.deliver(filter, &mut last, change, out).await? {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !self.replay(filter, &mut last, out).await? {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = ticker.tick() => {
                    // Everything published so far is in `rx` or done: drain it, then
                    // `last` is a safe progress mark.
                    loop {
                        match rx.try_recv() {
                            Ok(change) => {
                                if !self.deliver(filter, &mut last, change, out).await? {
                                    return Ok(());
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                if !self.replay(filter, &mut last, out).await? {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    if out.send(Ok(WatchItem::Progress(last))).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Delivers one broadcast change after `*last`: skips what was replayed, recovers
    /// from the database on a hole. False when the receiver is gone.
    async fn deliver(
        &self,
        filter: &WatchFilter,
        last: &mut u64,
        change: Arc<Change>,
        out: &mpsc::Sender<Result<WatchItem, StoreError>>,
    ) -> Result<bool, StoreError> {
        if change.revision <= *last {
            return Ok(true);
        }
        if change.revision != *last + 1 {
            // Should not happen (the feed publishes in order): recover from the
            // database rather than skip.
            return self.replay(filter, last, out).await;
        }
        *last = change.revision;
        if filter.matches(&change) {
            return Ok(out.send(Ok(WatchItem::Change(change))).await.is_ok());
        }
        Ok(true)
    }
}
