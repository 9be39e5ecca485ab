//! Maintenance services run by the lease holder through sf-database's maintenance
//! calls: the stuck-job reaper, change-log compaction, event retention and the purge
//! of terminal ClusterOperations.
//!
//! Contract: each service ([`Reaper`], [`Compactor`], [`EventRetention`],
//! [`OperationPurge`]) has a config struct with Shaken Fist's defaults ([`Default`]),
//! a `run_once()` that performs one pass and returns what it did, and a `run()` loop
//! ([`run_loop`]) that runs a pass every `interval` (the first one at once) until the
//! future is dropped — the daemon drops it when the lease is lost. A failed pass is
//! logged and counted (`cluster_maintenance_runs_total{service,outcome="error"}`), and
//! the loop carries on.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use sf_database_client::{ClientError, GatewayClient};
use sf_proto::v1 as pb;

use crate::metrics::ClusterMetrics;

/// Why a maintenance pass failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// `ReapStuck` failed.
    #[error("reaping stuck operations: {0}")]
    Reap(#[source] ClientError),
    /// `CompactChangeLog` failed.
    #[error("compacting the change log: {0}")]
    Compact(#[source] ClientError),
    /// `PruneEvents` failed.
    #[error("pruning events: {0}")]
    Prune(#[source] ClientError),
    /// `PurgeTerminalOperations` failed.
    #[error("purging terminal operations: {0}")]
    Purge(#[source] ClientError),
}

const DAY: u64 = 86_400;

/// The stuck-job reaper (DESIGN invariant 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaperConfig {
    /// How often (60 s).
    pub interval: Duration,
    /// `CLUSTER_OP_STUCK_THRESHOLD`: a claim without a heartbeat for this long is
    /// re-queued (1800 s).
    pub stuck_threshold: Duration,
    /// `CLUSTER_OP_MAX_ATTEMPTS`: claims before the job is rejected (5).
    pub max_attempts: u32,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            stuck_threshold: Duration::from_secs(1800),
            max_attempts: 5,
        }
    }
}

/// Change-log compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionConfig {
    /// How often (300 s).
    pub interval: Duration,
    /// Newest revisions always kept (1000).
    pub keep_revisions: u64,
    /// History always kept (1 h).
    pub keep: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            keep_revisions: 1000,
            keep: Duration::from_secs(3600),
        }
    }
}

/// Event retention by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// How often (1 h; Shaken Fist pruned daily).
    pub interval: Duration,
    /// Maximum age per event type; types not listed are kept. Shaken Fist's: audit and
    /// mutate 90 d, status 7 d, usage 30 d, api-request 1 d.
    pub max_age: HashMap<String, Duration>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let ages = [
            ("audit", 90 * DAY),
            ("mutate", 90 * DAY),
            ("status", 7 * DAY),
            ("usage", 30 * DAY),
            ("api-request", DAY),
        ];
        Self {
            interval: Duration::from_secs(3600),
            max_age: ages
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Duration::from_secs(v)))
                .collect(),
        }
    }
}

/// The purge of complete/error/abort operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeConfig {
    /// How often (60 s).
    pub interval: Duration,
    /// `CLEANER_DELAY`: terminal operations older than this go (3600 s).
    pub cleaner_delay: Duration,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            cleaner_delay: Duration::from_secs(3600),
        }
    }
}

/// The four services over one gateway client.
#[derive(Clone)]
pub struct Maintenance {
    gateway: GatewayClient,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance").finish_non_exhaustive()
    }
}

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
    /// Re-queued.
    pub requeued: u64,
    /// Rejected (to error).
    pub rejected: u64,
}

impl Maintenance {
    /// The services over `gateway`, counting into `metrics`.
    pub fn new(gateway: GatewayClient, metrics: ClusterMetrics) -> Self {
        Self { gateway, metrics }
    }

    /// One reaper pass.
    pub async fn reap_once(&self, cfg: &ReaperConfig) -> Result<Reaped, MaintenanceError> {
        let request = pb::ReapStuckRequest {
            stuck_threshold_seconds: cfg.stuck_threshold.as_secs(),
            max_attempts: cfg.max_attempts,
        };
        let reply = self
            .gateway
            .call(
                "reap_stuck",
                |mut g| async move { g.reap_stuck(request).await },
            )
            .await
            .map_err(MaintenanceError::Reap)?;
        self.metrics.reaper_requeued.inc_by(reply.requeued);
        self.metrics.reaper_rejected.inc_by(reply.rejected);
        if reply.requeued + reply.rejected > 0 {
            tracing::warn!(
                requeued = reply.requeued,
                rejected = reply.rejected,
                "reaper: stuck operations"
            );
        }
        Ok(Reaped {
            requeued: reply.requeued,
            rejected: reply.rejected,
        })
    }

    /// One compaction pass; returns the rows deleted.
    pub async fn compact_once(&self, cfg: &CompactionConfig) -> Result<u64, MaintenanceError> {
        let request = pb::CompactChangeLogRequest {
            keep_revisions: cfg.keep_revisions,
            keep_seconds: cfg.keep.as_secs(),
        };
        let reply = self
            .gateway
            .call("compact_change_log", |mut g| async move {
                g.compact_change_log(request).await
            })
            .await
            .map_err(MaintenanceError::Compact)?;
        Ok(reply.rows_deleted)
    }

    /// One retention pass; returns (event_objects, events, orphans) pruned.
    pub async fn prune_once(
        &self,
        cfg: &RetentionConfig,
    ) -> Result<(u64, u64, u64), MaintenanceError> {
        let request = pb::PruneEventsRequest {
            max_age_seconds: cfg
                .max_age
                .iter()
                .map(|(k, v)| (k.clone(), v.as_secs()))
                .collect(),
        };
        let reply = self
            .gateway
            .call("prune_events", |mut g| {
                let request = request.clone();
                async move { g.prune_events(request).await }
            })
            .await
            .map_err(MaintenanceError::Prune)?;
        Ok((
            reply.event_objects_pruned,
            reply.events_pruned,
            reply.orphans_pruned,
        ))
    }

    /// One purge pass; returns the operations removed.
    pub async fn purge_once(&self, cfg: &PurgeConfig) -> Result<u64, MaintenanceError> {
        let request = pb::PurgeTerminalOperationsRequest {
            older_than_seconds: cfg.cleaner_delay.as_secs(),
        };
        let reply = self
            .gateway
            .call("purge_terminal_operations", |mut g| async move {
                g.purge_terminal_operations(request).await
            })
            .await
            .map_err(MaintenanceError::Purge)?;
        Ok(reply.purged)
    }

    /// Runs every service in its own loop until the future is dropped.
    pub async fn run_all(
        self,
        reaper: ReaperConfig,
        compaction: CompactionConfig,
        retention: RetentionConfig,
        purge: PurgeConfig,
    ) {
        tokio::join!(
            Reaper::new(self.clone(), reaper).run(),
            Compactor::new(self.clone(), compaction).run(),
            EventRetention::new(self.clone(), retention).run(),
            OperationPurge::new(self, purge).run(),
        );
    }
}

macro_rules! service {
    ($(#[$doc:meta])* $name:ident, $cfg:ty, $label:literal, $once:ident, $out:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            maintenance: Maintenance,
            /// Its settings.
            pub config: $cfg,
        }

        impl $name {
            /// The service over `maintenance`'s gateway and metrics.
            pub fn new(maintenance: Maintenance, config: $cfg) -> Self {
                Self { maintenance, config }
            }

            /// One pass.
            pub async fn run_once(&self) -> Result<$out, MaintenanceError> {
                self.maintenance.$once(&self.config).await
            }

            /// A pass now and then every `config.interval`, until dropped.
            pub async fn run(self) {
                let metrics = self.maintenance.metrics.clone();
                run_loop($label, self.config.interval, &metrics, || self.run_once()).await
            }
        }
    };
}

service!(
    /// The stuck-job reaper (`ReapStuck`).
    Reaper, ReaperConfig, "reaper", reap_once, Reaped
);
service!(
    /// Change-log compaction (`CompactChangeLog`); a pass returns the rows deleted.
    Compactor, CompactionConfig, "compaction", compact_once, u64
);
service!(
    /// Event retention (`PruneEvents`); a pass returns (event_objects, events,
    /// orphans) pruned.
    EventRetention, RetentionConfig, "retention", prune_once, (u64, u64, u64)
);
service!(
    /// The purge of terminal ClusterOperations (`PurgeTerminalOperations`); a pass
    /// returns the operations removed.
    OperationPurge, PurgeConfig, "purge", purge_once, u64
);

/// Runs `pass` now and then every `interval`, forever; failures are logged and counted.
pub async fn run_loop<T, F, Fut>(
    service: &str,
    interval: Duration,
    metrics: &ClusterMetrics,
    mut pass: F,
) where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, MaintenanceError>>,
{
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match pass().await {
            Ok(outcome) => {
                tracing::debug!(service, ?outcome, "maintenance pass");
                metrics.maintenance_run(service, true);
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "maintenance pass failed");
                metrics.maintenance_run(service, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_shaken_fists() {
        assert_eq!(ReaperConfig::default().stuck_threshold.as_secs(), 1800);
        assert_eq!(ReaperConfig::default().max_attempts, 5);
        assert_eq!(PurgeConfig::default().cleaner_delay.as_secs(), 3600);
        let r = RetentionConfig::default();
        assert_eq!(r.max_age["status"].as_secs(), 7 * DAY);
        assert_eq!(r.max_age["audit"].as_secs(), 90 * DAY);
    }
}
