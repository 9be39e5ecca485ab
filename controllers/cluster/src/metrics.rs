//! sf-cluster's Prometheus metrics, served on `CLUSTER_METRICS_PORT` (13007).
//!
//! Contract: one [`ClusterMetrics`] per process, registered once into the daemon's
//! registry ([`ClusterMetrics::register`]) and shared (cheap clones: every family is
//! an `Arc` inside). Names as exposed:
//! - `cluster_reconcile_total{controller}`, `cluster_reconcile_errors_total{controller}`,
//!   `cluster_reconcile_duration_seconds{controller}` (histogram);
//! - `cluster_operations_enqueued_total{controller}`;
//! - `cluster_scheduler_decisions_total{outcome}` (`placed` / `unschedulable`);
//! - `cluster_op_reaper_requeued_total`, `cluster_op_reaper_rejected_total`;
//! - `cluster_maintenance_runs_total{service,outcome}`;
//! - `cluster_lease_held` (1 while this process holds the `cluster_locks` lease).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

fn new_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metric families; clone freely.
#[derive(Clone)]
pub struct ClusterMetrics {
    reconciles: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_duration: Family<Labels, Histogram, fn() -> Histogram>,
    enqueued: Family<Labels, Counter>,
    scheduler: Family<Labels, Counter>,
    /// Operations the reaper re-queued.
    pub reaper_requeued: Counter,
    /// Operations the reaper rejected (to error).
    pub reaper_rejected: Counter,
    maintenance: Family<Labels, Counter>,
    /// 1 while this process holds the lease.
    pub lease_held: Gauge,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(new_histogram),
            enqueued: Family::default(),
            scheduler: Family::default(),
            reaper_requeued: Counter::default(),
            reaper_rejected: Counter::default(),
            maintenance: Family::default(),
            lease_held: Gauge::default(),
        }
    }
}

impl std::fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMetrics").finish_non_exhaustive()
    }
}

impl ClusterMetrics {
    /// Registers every family into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_reconcile",
            "Reconciles run, per controller",
            self.reconciles.clone(),
        );
        registry.register(
            "cluster_reconcile_errors",
            "Reconciles that failed, per controller",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "cluster_reconcile_duration_seconds",
            "Reconcile duration, per controller",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "cluster_operations_enqueued",
            "ClusterOperations created, per controller",
            self.enqueued.clone(),
        );
        registry.register(
            "cluster_scheduler_decisions",
            "Scheduler decisions by outcome (placed, unschedulable)",
            self.scheduler.clone(),
        );
        registry.register(
            "cluster_op_reaper_requeued",
            "Stuck operations re-queued by the reaper",
            self.reaper_requeued.clone(),
        );
        registry.register(
            "cluster_op_reaper_rejected",
            "Stuck operations rejected by the reaper after CLUSTER_OP_MAX_ATTEMPTS",
            self.reaper_rejected.clone(),
        );
        registry.register(
            "cluster_maintenance_runs",
            "Maintenance runs per service and outcome",
            self.maintenance.clone(),
        );
        registry.register(
            "cluster_lease_held",
            "1 while this sf-cluster holds the cluster lease and runs the controllers",
            self.lease_held.clone(),
        );
    }

    /// Records one reconcile of `controller`.
    pub fn reconciled(&self, controller: &str, seconds: f64, ok: bool) {
        let l = label("controller", controller);
        self.reconciles.get_or_create(&l).inc();
        self.reconcile_duration.get_or_create(&l).observe(seconds);
        if !ok {
            self.reconcile_errors.get_or_create(&l).inc();
        }
    }

    /// Records `n` operations created by `controller`.
    pub fn enqueued(&self, controller: &str, n: u64) {
        self.enqueued
            .get_or_create(&label("controller", controller))
            .inc_by(n);
    }

    /// Records a scheduler decision (`placed` or `unschedulable`).
    pub fn scheduled(&self, outcome: &str) {
        self.scheduler
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    /// Records one maintenance run.
    pub fn maintenance_run(&self, service: &str, ok: bool) {
        let labels = vec![
            ("service".to_owned(), service.to_owned()),
            (
                "outcome".to_owned(),
                if ok { "ok" } else { "error" }.to_owned(),
            ),
        ];
        self.maintenance.get_or_create(&labels).inc();
    }

    /// Reconciles counted for `controller` so far (tests).
    pub fn reconcile_count(&self, controller: &str) -> u64 {
        self.reconciles
            .get_or_create(&label("controller", controller))
            .get()
    }

    /// Scheduler decisions with `outcome` so far (tests).
    pub fn scheduler_count(&self, outcome: &str) -> u64 {
        self.scheduler
            .get_or_create(&label("outcome", outcome))
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_match_the_contract() {
        let m = ClusterMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.reconciled("instance", 0.01, false);
        m.scheduled("placed");
        m.reaper_requeued.inc();
        let text = sf_daemon::metrics::encode_text(&registry).expect("encode");
        for name in [
            "cluster_reconcile_total{controller=\"instance\"} 1",
            "cluster_reconcile_errors_total{controller=\"instance\"} 1",
            "cluster_reconcile_duration_seconds_count{controller=\"instance\"} 1",
            "cluster_scheduler_decisions_total{outcome=\"placed\"} 1",
            "cluster_op_reaper_requeued_total 1",
            "cluster_op_reaper_rejected_total 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
