//! Cluster locks: named leases in `cluster_locks` (Shaken Fist's etcd-style locks).
//!
//! Contract:
//! - A lock is a row keyed by name and owned by a random `lock_id`; it expires at
//!   `expires_at` unless its holder refreshes it. Every time is the database's clock.
//! - Acquire inserts the row when the name is free, or takes it over (a CAS UPDATE on
//!   `expires_at < NOW(6)`) when it has expired; otherwise it polls until the timeout
//!   and then reports who holds the lock. Taking more than half the timeout logs
//!   Shaken Fist's slow-lock warning.
//! - Refresh and release are compare-and-swaps on `lock_id`: a holder whose lock was
//!   stolen after expiry can neither extend nor release the new holder's lock.
//! - Single statements in autocommit: no transaction spans a wait.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Row};

use super::{Store, StoreError};

/// The first pause between attempts; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(25);
/// The longest pause between attempts.
const MAX_POLL: Duration = Duration::from_millis(500);

/// A lock this caller holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The lock's name.
    pub key: String,
    /// The id that proves ownership (refresh and release need it).
    pub lock_id: String,
    /// When it expires unless refreshed.
    pub expires_at: DateTime<Utc>,
    /// Who holds it (as given).
    pub holder: String,
    /// How long acquiring took.
    pub waited: Duration,
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Who (as given at acquire).
    pub holder: String,
    /// On which node.
    pub node: String,
    /// Which process.
    pub pid: u32,
    /// Since when.
    pub acquired_at: DateTime<Utc>,
    /// Until when, unless refreshed.
    pub expires_at: DateTime<Utc>,
}

/// The outcome of [`Store::acquire_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAcquire {
    /// The caller holds the lock.
    Acquired(LockInfo),
    /// The timeout passed; this is who held it last (None if it was released just as
    /// the timeout passed).
    TimedOut(Option<LockHolder>),
}

impl LockAcquire {
    /// The lock, if acquired.
    pub fn acquired(self) -> Option<LockInfo> {
        match self {
            Self::Acquired(info) => Some(info),
            Self::TimedOut(_) => None,
        }
    }
}

fn micros(what: &str, d: Duration) -> Result<u64, StoreError> {
    match u64::try_from(d.as_micros()) {
        Ok(0) | Err(_) => Err(StoreError::Invalid(format!(
            "{what} must be between 1 µs and 584 000 years, got {d:?}"
        ))),
        Ok(n) => Ok(n),
    }
}

fn check_text(what: &str, value: &str, max: usize, ascii: bool) -> Result<(), StoreError> {
    if value.is_empty() || value.chars().count() > max || (ascii && !value.is_ascii()) {
        return Err(StoreError::Invalid(format!(
            "{what} must be 1 to {max}{} characters, got {value:?}",
            if ascii { " ASCII" } else { "" }
        )));
    }
    Ok(())
}

impl Store {
    /// Acquires lock `key` for `ttl`, waiting up to `timeout` (see the module contract).
    pub async fn acquire_lock(
        &self,
        key: &str,
        holder: &str,
        node: &str,
        pid: u32,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<LockAcquire, StoreError> {
        check_text("lock key", key, 255, true)?;
        check_text("lock holder", holder, 255, false)?;
        check_text("lock node", node, 255, false)?;
        let ttl_micros = micros("lock ttl", ttl)?;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut pause = FIRST_POLL;
        loop {
            let lock_id = uuid::Uuid::new_v4().to_string();
            if self
                .try_take(key, &lock_id, holder, node, pid, ttl_micros)
                .await?
            {
                let expires_at = self.lock_expiry(key, &lock_id).await?;
                let waited = started.elapsed();
                if waited > timeout / 2 {
                    tracing::warn!(
                        lock = key,
                        holder,
                        waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                        timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                        "slow lock: waited more than half the timeout to acquire it"
                    );
                }
                if let Some(expires_at) = expires_at {
                    return Ok(LockAcquire::Acquired(LockInfo {
                        key: key.to_string(),
                        lock_id,
                        expires_at,
                        holder: holder.to_string(),
                        waited,
                    }));
                }
                // Taken over between the two statements (a ttl shorter than a round
                // trip): try again.
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                let current = self.lock_holder(key).await?;
                tracing::warn!(
                    lock = key,
                    holder,
                    current = ?current,
                    "timed out waiting for a lock"
                );
                return Ok(LockAcquire::TimedOut(current));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// One attempt: insert the free lock, or take over an expired one.
    async fn try_take(
        &self,
        key: &str,
        lock_id: &str,
        holder: &str,
        node: &str,
        pid: u32,
        ttl_micros: u64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO cluster_locks (lock_key, lock_id, holder, node, pid, acquired_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, NOW(6), NOW(6) + INTERVAL ? MICROSECOND)",
        )
        .bind(key)
        .bind(lock_id)
        .bind(holder)
        .bind(node)
        .bind(pid)
        .bind(ttl_micros)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("acquire lock"));
        match inserted {
            Ok(_) => return Ok(true),
            Err(e) if e.is_duplicate_key() => {}
            Err(e) => return Err(e),
        }
        let stolen = sqlx::query(
            "UPDATE cluster_locks SET lock_id = ?, holder = ?, node = ?, pid = ?, acquired_at = NOW(6), \
             expires_at = NOW(6) + INTERVAL ? MICROSECOND WHERE lock_key = ? AND expires_at < NOW(6)",
        )
        .bind(lock_id)
        .bind(holder)
        .bind(node)
        .bind(pid)
        .bind(ttl_micros)
        .bind(key)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("take over expired lock"))?;
        if stolen.rows_affected() == 1 {
            tracing::info!(lock = key, holder, "took over an expired lock");
            return Ok(true);
        }
        Ok(false)
    }

    async fn lock_expiry(
        &self,
        key: &str,
        lock_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query_scalar(
            "SELECT expires_at FROM cluster_locks WHERE lock_key = ? AND lock_id = ?",
        )
        .bind(key)
        .bind(lock_id)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("read lock"))
    }

    /// Who holds lock `key` now (expired or not), if anyone.
    pub async fn lock_holder(&self, key: &str) -> Result<Option<LockHolder>, StoreError> {
        let row = sqlx::query(
            "SELECT holder, node, pid, acquired_at, expires_at FROM cluster_locks WHERE lock_key = ?",
        )
        .bind(key)
        .fetch_optional(self.pool())
        .await
        .map_err(StoreError::query("read lock"))?;
        row.map(|r| {
            let col = |e: sqlx::Error| StoreError::Corrupt(format!("cluster_locks: {e}"));
            Ok(LockHolder {
                holder: r.try_get("holder").map_err(col)?,
                node: r.try_get("node").map_err(col)?,
                pid: r.try_get("pid").map_err(col)?,
                acquired_at: r.try_get("acquired_at").map_err(col)?,
                expires_at: r.try_get("expires_at").map_err(col)?,
            })
        })
        .transpose()
    }

    /// Extends lock `key` to now + `ttl` if `lock_id` still holds it; returns the new
    /// expiry, or None when the lock is gone or someone else's.
    pub async fn refresh_lock(
        &self,
        key: &str,
        lock_id: &str,
        ttl: Duration,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let ttl_micros = micros("lock ttl", ttl)?;
        let updated = sqlx::query(
            "UPDATE cluster_locks SET expires_at = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE lock_key = ? AND lock_id = ?",
        )
        .bind(ttl_micros)
        .bind(key)
        .bind(lock_id)
        .execute(self.pool())
        .await
        .map_err(StoreError::query("refresh lock"))?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        self.lock_expiry(key, lock_id).await
    }

    /// Releases lock `key` if `lock_id` holds it; false when it did not.
    pub async fn release_lock(&self, key: &str, lock_id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM cluster_locks WHERE lock_key = ? AND lock_id = ?")
            .bind(key)
            .bind(lock_id)
            .execute(self.pool())
            .await
            .map_err(StoreError::query("release lock"))?;
        Ok(deleted.rows_affected() == 1)
    }
}
