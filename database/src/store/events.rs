//! Events: Shaken Fist v0.8's `events` and `event_objects`, written in batches.
//!
//! Contract:
//! - A batch is written in ONE transaction: its events and every (object, event) row;
//!   an event whose uuid is stored already is skipped (`INSERT IGNORE`), so a daemon
//!   may resend a batch after a crash (DESIGN invariant 9). Statements carry many rows
//!   each ([`ROWS_PER_INSERT`]); identifiers are checked before writing, so nothing is
//!   silently truncated. Events are not resources: no revision, no change_log.
//! - Reads are per object, newest first, with Shaken Fist's limit rules: default 100,
//!   at most 1000, and ≤ 0 means 100.
//! - Pruning runs in bounded batches, each its own transaction: per event type, the
//!   event_objects rows of events older than that type's age, then the events; then
//!   an orphan sweep of events no event_objects row refers to. Ages are measured on
//!   the database clock against the events' own `timestamp`.

use std::collections::BTreeMap;

use sea_orm::sqlx::{self, Row};
use serde_json::Value;

use super::{Store, StoreError, parse_json};

/// Events per multi-row INSERT.
pub const ROWS_PER_INSERT: usize = 500;

/// Rows per pruning batch (and transaction).
const PRUNE_BATCH: usize = 1000;

/// The default and largest number of events a query returns (Shaken Fist v0.8).
pub const DEFAULT_EVENT_LIMIT: u32 = 100;
/// The largest number of events a query returns.
pub const MAX_EVENT_LIMIT: u32 = 1000;

/// The longest message `events.message` (TEXT) holds, in bytes.
const MAX_MESSAGE_BYTES: usize = 65_535;

/// An event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Its uuid (the idempotency key).
    pub event_uuid: String,
    /// Its type (`audit`, `status`, `api-requests`, ...).
    pub event_type: String,
    /// When it happened, seconds since the epoch.
    pub timestamp: f64,
    /// The node it happened on.
    pub fqdn: String,
    /// How long the thing took, seconds.
    pub duration: Option<f64>,
    /// What happened.
    pub message: String,
    /// Structured detail.
    pub extra: Option<Value>,
    /// The API request it belongs to.
    pub request_id: Option<String>,
    /// The objects it concerns: (object type, object uuid).
    pub objects: Vec<(String, String)>,
}

/// An event as read back (the v0.8 read shape).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its uuid.
    pub event_uuid: String,
    /// Its type.
    pub event_type: String,
    /// When it happened, seconds since the epoch.
    pub timestamp: f64,
    /// The node it happened on.
    pub fqdn: String,
    /// How long the thing took, seconds.
    pub duration: Option<f64>,
    /// What happened.
    pub message: String,
    /// Structured detail.
    pub extra: Option<Value>,
    /// The API request it belongs to.
    pub request_id: Option<String>,
}

/// The number of events a query with `limit` returns: ≤ 0 → 100, at most 1000.
pub fn effective_limit(limit: i32) -> u32 {
    match u32::try_from(limit) {
        Ok(0) | Err(_) => DEFAULT_EVENT_LIMIT,
        Ok(n) => n.min(MAX_EVENT_LIMIT),
    }
}

fn check_ascii(
    what: &str,
    index: usize,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), StoreError> {
    if (required && value.is_empty()) || value.len() > max || !value.is_ascii() {
        return Err(StoreError::Invalid(format!(
            "event {index}: {what} must be {} to {max} ASCII characters, got {value:?}",
            usize::from(required)
        )));
    }
    Ok(())
}

fn validate(index: usize, e: &EventRecord) -> Result<(), StoreError> {
    check_ascii("event_uuid", index, &e.event_uuid, 36, true)?;
    check_ascii("event_type", index, &e.event_type, 32, true)?;
    if e.fqdn.chars().count() > 255 {
        return Err(StoreError::Invalid(format!(
            "event {index}: fqdn is longer than 255 characters"
        )));
    }
    if let Some(r) = &e.request_id {
        check_ascii("request_id", index, r, 64, false)?;
    }
    if !e.timestamp.is_finite() || e.duration.is_some_and(|d| !d.is_finite()) {
        return Err(StoreError::Invalid(format!(
            "event {index}: timestamp and duration must be finite numbers"
        )));
    }
    if e.message.len() > MAX_MESSAGE_BYTES {
        return Err(StoreError::Invalid(format!(
            "event {index}: message is {} bytes, more than {MAX_MESSAGE_BYTES}",
            e.message.len()
        )));
    }
    for (object_type, object_uuid) in &e.objects {
        check_ascii("object type", index, object_type, 32, true)?;
        check_ascii("object uuid", index, object_uuid, 36, true)?;
    }
    Ok(())
}

/// `(?, ?, ...)` repeated `rows` times for `columns` columns.
fn values_clause(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

fn event_from_row(r: &sqlx::mysql::MySqlRow) -> Result<Event, StoreError> {
    let col = |e: sqlx::Error| StoreError::Corrupt(format!("events: {e}"));
    let extra: Option<String> = r.try_get("extra").map_err(col)?;
    Ok(Event {
        event_uuid: r.try_get("event_uuid").map_err(col)?,
        event_type: r.try_get("event_type").map_err(col)?,
        timestamp: r.try_get("timestamp").map_err(col)?,
        fqdn: r.try_get("fqdn").map_err(col)?,
        duration: r.try_get("duration").map_err(col)?,
        message: r.try_get("message").map_err(col)?,
        extra: extra
            .as_deref()
            .map(|t| parse_json(t, "events.extra"))
            .transpose()?,
        request_id: r.try_get("request_id").map_err(col)?,
    })
}

impl Store {
    /// Records a batch of events in one transaction; returns (inserted, skipped as
    /// already stored).
    pub async fn record_event_batch(
        &self,
        events: &[EventRecord],
    ) -> Result<(u32, u32), StoreError> {
        for (i, e) in events.iter().enumerate() {
            validate(i, e)?;
        }
        if events.is_empty() {
            return Ok((0, 0));
        }
        let extras: Vec<Option<String>> = events
            .iter()
            .map(|e| e.extra.as_ref().map(Value::to_string))
            .collect();
        let links: Vec<(&str, &str, &str)> = events
            .iter()
            .flat_map(|e| {
                e.objects
                    .iter()
                    .map(|(t, u)| (t.as_str(), u.as_str(), e.event_uuid.as_str()))
            })
            .collect();
        let total = u32::try_from(events.len())
            .map_err(|_| StoreError::Invalid("too many events in one batch".into()))?;
        self.with_retry("record events", || async {
            let mut tx = self.begin("record events").await?;
            let mut inserted: u64 = 0;
            for (chunk, extras) in events.chunks(ROWS_PER_INSERT).zip(extras.chunks(ROWS_PER_INSERT)) {
                let sql = format!(
                    "INSERT IGNORE INTO events \
                     (event_uuid, event_type, `timestamp`, fqdn, duration, message, extra, request_id) VALUES {}",
                    values_clause(chunk.len(), 8)
                );
                // Built from constant fragments only; values are bound.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (e, extra) in chunk.iter().zip(extras) {
                    q = q
                        .bind(&e.event_uuid)
                        .bind(&e.event_type)
                        .bind(e.timestamp)
                        .bind(&e.fqdn)
                        .bind(e.duration)
                        .bind(&e.message)
                        .bind(extra.as_deref())
                        .bind(e.request_id.as_deref());
                }
                inserted += q
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("record events"))?
                    .rows_affected();
            }
            for chunk in links.chunks(ROWS_PER_INSERT * 2) {
                let sql = format!(
                    "INSERT IGNORE INTO event_objects (object_type, object_uuid, event_uuid) VALUES {}",
                    values_clause(chunk.len(), 3)
                );
                // Built from constant fragments only; values are bound.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (t, u, e) in chunk {
                    q = q.bind(*t).bind(*u).bind(*e);
                }
                q.execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("record event objects"))?;
            }
            tx.commit().await.map_err(StoreError::query("record events"))?;
            let inserted = u32::try_from(inserted).unwrap_or(total).min(total);
            Ok((inserted, total - inserted))
        })
        .await
    }

    /// The events of one object, newest first, optionally of one type only; see
    /// [`effective_limit`] for `limit`.
    pub async fn query_events(
        &self,
        object_type: &str,
        object_uuid: &str,
        event_type: Option<&str>,
        limit: i32,
    ) -> Result<Vec<Event>, StoreError> {
        let mut sql = String::from(
            "SELECT e.event_uuid, e.event_type, e.`timestamp`, e.fqdn, e.duration, e.message, e.extra, e.request_id \
             FROM event_objects o JOIN events e ON e.event_uuid = o.event_uuid \
             WHERE o.object_type = ? AND o.object_uuid = ?",
        );
        if event_type.is_some() {
            sql.push_str(" AND e.event_type = ?");
        }
        sql.push_str(" ORDER BY e.`timestamp` DESC, e.event_uuid DESC LIMIT ?");
        // Built from constant fragments only; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(object_type)
            .bind(object_uuid);
        if let Some(t) = event_type {
            q = q.bind(t);
        }
        let rows = q
            .bind(effective_limit(limit))
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("query events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// Prunes events by per-type age (seconds), then orphaned events; returns
    /// (event_objects rows, events of those types, orphan events) deleted.
    pub async fn prune_events(
        &self,
        max_age_seconds: &BTreeMap<String, u64>,
    ) -> Result<(u64, u64, u64), StoreError> {
        let (mut objects, mut events, mut orphans) = (0, 0, 0);
        for (event_type, age) in max_age_seconds {
            loop {
                let uuids: Vec<String> = sqlx::query_scalar(
                    "SELECT event_uuid FROM events WHERE event_type = ? \
                     AND `timestamp` < UNIX_TIMESTAMP(NOW(6)) - ? ORDER BY `timestamp` LIMIT ?",
                )
                .bind(event_type)
                .bind(*age)
                .bind(PRUNE_BATCH as u64)
                .fetch_all(self.pool())
                .await
                .map_err(StoreError::query("prune events"))?;
                if uuids.is_empty() {
                    break;
                }
                let (o, e) = self.delete_events(&uuids, false).await?;
                objects += o;
                events += e;
                if uuids.len() < PRUNE_BATCH {
                    break;
                }
            }
        }
        loop {
            let uuids: Vec<String> = sqlx::query_scalar(
                "SELECT e.event_uuid FROM events e WHERE NOT EXISTS \
                 (SELECT 1 FROM event_objects o WHERE o.event_uuid = e.event_uuid) LIMIT ?",
            )
            .bind(PRUNE_BATCH as u64)
            .fetch_all(self.pool())
            .await
            .map_err(StoreError::query("prune orphan events"))?;
            if uuids.is_empty() {
                break;
            }
            let (_, e) = self.delete_events(&uuids, true).await?;
            orphans += e;
            if uuids.len() < PRUNE_BATCH || e == 0 {
                break;
            }
        }
        Ok((objects, events, orphans))
    }

    /// Deletes `uuids`' event_objects rows then the events, in one transaction
    /// (`orphans_only`: only events that still have no event_objects row).
    async fn delete_events(
        &self,
        uuids: &[String],
        orphans_only: bool,
    ) -> Result<(u64, u64), StoreError> {
        let placeholders = vec!["?"; uuids.len()].join(", ");
        self.with_retry("prune events", || async {
            let mut tx = self.begin("prune events").await?;
            let mut objects = 0;
            if !orphans_only {
                let sql = format!("DELETE FROM event_objects WHERE event_uuid IN ({placeholders})");
                // Built from constant fragments only; values are bound.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for u in uuids {
                    q = q.bind(u);
                }
                objects = q
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::query("prune event objects"))?
                    .rows_affected();
            }
            let mut sql = format!("DELETE FROM events WHERE event_uuid IN ({placeholders})");
            if orphans_only {
                sql.push_str(
                    " AND NOT EXISTS (SELECT 1 FROM event_objects o WHERE o.event_uuid = events.event_uuid)",
                );
            }
            // Built from constant fragments only; values are bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in uuids {
                q = q.bind(u);
            }
            let events = q
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("prune events"))?
                .rows_affected();
            tx.commit().await.map_err(StoreError::query("prune events"))?;
            Ok((objects, events))
        })
        .await
    }

    /// The approximate number of rows in `events` (InnoDB's estimate), for the
    /// `database_events_rows` gauge.
    pub async fn events_row_count(&self) -> Result<u64, StoreError> {
        let rows: Option<Option<u64>> = sqlx::query_scalar(
            "SELECT TABLE_ROWS FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'events'",
        )
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("count events"))?;
        Ok(rows.flatten().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_shaken_fist() {
        assert_eq!(effective_limit(0), 100);
        assert_eq!(effective_limit(-5), 100);
        assert_eq!(effective_limit(5), 5);
        assert_eq!(effective_limit(5000), 1000);
    }

    #[test]
    fn values_clause_repeats_rows() {
        assert_eq!(values_clause(2, 3), "(?, ?, ?), (?, ?, ?)");
    }
}
