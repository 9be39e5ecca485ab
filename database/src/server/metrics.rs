//! The gateway's Prometheus metrics (served on MARIADB_GATEWAY_METRICS_PORT, 13006).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::CombineMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventTypeLabels {
    event_type: String,
}

/// Every metric of the gateway.
pub struct GatewayMetrics {
    requests: Family<OutcomeLabels, Counter>,
    duration: Family<OperationLabels, Histogram>,
    watchers: Gauge,
    /// `database_events_rows`: rows in the events table (refreshed periodically).
    pub events_rows: Gauge,
    events_inserted: Family<EventTypeLabels, Counter>,
    /// `database_queue_depth`: rows in the work queue (refreshed periodically).
    pub queue_depth: Gauge,
    /// `database_change_feed_gaps_total`: holes seen by the change feed (should stay 0).
    pub feed_gaps: Gauge,
}

impl GatewayMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            watchers: Gauge::default(),
            events_rows: Gauge::default(),
            events_inserted: Family::default(),
            queue_depth: Gauge::default(),
            feed_gaps: Gauge::default(),
        };
        registry.register(
            "database_requests",
            "gRPC calls handled, by operation and outcome",
            m.requests.clone(),
        );
        registry.register(
            "database_request_duration_seconds",
            "Time to handle a gRPC call, by operation",
            m.duration.clone(),
        );
        registry.register(
            "database_watchers",
            "Open watch streams",
            m.watchers.clone(),
        );
        registry.register(
            "database_events_rows",
            "Rows in the events table",
            m.events_rows.clone(),
        );
        registry.register(
            "database_events_inserted",
            "Events inserted, by event type",
            m.events_inserted.clone(),
        );
        registry.register(
            "database_queue_depth",
            "Rows in the work queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "database_change_feed_gaps",
            "Holes the change feed saw in the change log (must stay 0)",
            m.feed_gaps.clone(),
        );
        m
    }

    /// Registers a store's combining counters (`database_combined_batches_total` and
    /// `database_combined_calls_total`, labelled `kind`): calls per batch is how many
    /// callers share one transaction.
    pub fn register_combining(registry: &mut Registry, combining: CombineMetrics) {
        registry.register(
            "database_combined_batches",
            "Combined rounds run by the queue's combiners (writes: creates and completions; claims)",
            combining.batches,
        );
        registry.register(
            "database_combined_calls",
            "Calls carried by those rounds",
            combining.calls,
        );
    }

    /// Records one call.
    pub fn observe(&self, operation: &'static str, took: Duration, ok: bool) {
        self.requests
            .get_or_create(&OutcomeLabels {
                operation,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }

    /// Counts inserted events of a type.
    pub fn events_inserted(&self, event_type: &str, n: u64) {
        self.events_inserted
            .get_or_create(&EventTypeLabels {
                event_type: event_type.to_string(),
            })
            .inc_by(n);
    }

    pub(crate) fn watchers_inc(&self) {
        self.watchers.inc();
    }

    pub(crate) fn watchers_dec(&self) {
        self.watchers.dec();
    }
}
