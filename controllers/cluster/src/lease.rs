//! The `cluster_locks` lease: only its holder runs the controllers and the
//! maintenance services.
//!
//! Contract:
//! - [`Lease::run`] loops until shutdown: while not holding, it calls `AcquireLock`
//!   (which waits up to the TTL for the lock to lapse); while holding, it calls
//!   `RefreshLock` every third of the TTL. The `held` channel says which.
//! - The holder steps down (publishes `false`) as soon as a refresh says the lock is
//!   no longer its own, and also when refreshes have failed for two thirds of the TTL
//!   (sf-database unreachable): by then another sf-cluster may take over at expiry,
//!   so this one must already have stopped.
//! - On shutdown a held lock is released so a standby takes over at once.

use std::time::Duration;

use sf_database_client::{ClientError, GatewayClient};
use sf_proto::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;

/// The lock every sf-cluster competes for.
pub const CLUSTER_LOCK_KEY: &str = "sf-cluster";

/// Errors of one lease call (logged; the loop carries on).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// `AcquireLock` failed.
    #[error("acquiring the cluster lease: {0}")]
    Acquire(#[source] ClientError),
    /// `RefreshLock` failed.
    #[error("refreshing the cluster lease: {0}")]
    Refresh(#[source] ClientError),
}

/// A competitor for the cluster lease.
#[derive(Clone)]
pub struct Lease {
    gateway: GatewayClient,
    key: String,
    holder: String,
    ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Lease {
    /// A competitor named `holder` for `key` with time to live `ttl` (≥ 3 s).
    pub fn new(gateway: GatewayClient, key: &str, holder: &str, ttl: Duration) -> Self {
        Self {
            gateway,
            key: key.to_owned(),
            holder: holder.to_owned(),
            ttl: ttl.max(Duration::from_secs(3)),
        }
    }

    fn ttl_secs(&self) -> u32 {
        u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX)
    }

    /// One acquisition attempt (waits up to the TTL); the lock id when taken.
    pub async fn acquire(&self) -> Result<Option<String>, LeaseError> {
        let request = pb::AcquireLockRequest {
            lock_key: self.key.clone(),
            holder: self.holder.clone(),
            node: self.holder.clone(),
            pid: std::process::id(),
            ttl_seconds: self.ttl_secs(),
            timeout_seconds: self.ttl_secs(),
        };
        let reply = self
            .gateway
            .call("acquire_lock", |mut g| {
                let request = request.clone();
                async move { g.acquire_lock(request).await }
            })
            .await
            .map_err(LeaseError::Acquire)?;
        Ok(reply.held.then_some(reply.lock_id))
    }

    /// Extends the lock; false when it is no longer ours.
    pub async fn refresh(&self, lock_id: &str) -> Result<bool, LeaseError> {
        let request = pb::LockRequest {
            lock_key: self.key.clone(),
            lock_id: lock_id.to_owned(),
            ttl_seconds: self.ttl_secs(),
        };
        let reply = self
            .gateway
            .call("refresh_lock", |mut g| {
                let request = request.clone();
                async move { g.refresh_lock(request).await }
            })
            .await
            .map_err(LeaseError::Refresh)?;
        Ok(reply.held)
    }

    async fn release(&self, lock_id: &str) {
        let request = pb::LockRequest {
            lock_key: self.key.clone(),
            lock_id: lock_id.to_owned(),
            ttl_seconds: 0,
        };
        let result = self
            .gateway
            .call("release_lock", |mut g| {
                let request = request.clone();
                async move { g.release_lock(request).await }
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not release the cluster lease; it lapses at expiry");
        }
    }

    /// Competes until `shutdown` completes, publishing whether the lease is held.
    pub async fn run(
        self,
        held: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let mut lock_id: Option<String> = None;
        let mut last_ok = Instant::now();
        let refresh_every = self.ttl / 3;
        let give_up_after = self.ttl * 2 / 3;
        loop {
            match lock_id.clone() {
                None => {
                    let attempt = tokio::select! {
                        () = &mut shutdown => break,
                        r = self.acquire() => r,
                    };
                    match attempt {
                        Ok(Some(id)) => {
                            tracing::info!(holder = %self.holder, "holding the cluster lease; starting the controllers");
                            lock_id = Some(id);
                            last_ok = Instant::now();
                            held.send_replace(true);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster lease");
                            tokio::select! {
                                () = &mut shutdown => break,
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                }
                Some(id) => {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(refresh_every) => {}
                    }
                    match self.refresh(&id).await {
                        Ok(true) => last_ok = Instant::now(),
                        Ok(false) => {
                            tracing::warn!("the cluster lease was lost; stopping the controllers");
                            lock_id = None;
                            held.send_replace(false);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster lease");
                            if last_ok.elapsed() >= give_up_after {
                                tracing::warn!("cannot refresh the cluster lease; stepping down");
                                lock_id = None;
                                held.send_replace(false);
                            }
                        }
                    }
                }
            }
        }
        held.send_replace(false);
        if let Some(id) = lock_id {
            self.release(&id).await;
        }
    }
}
