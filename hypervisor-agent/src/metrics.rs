//! The agent's Prometheus metrics.
//!
//! Contract: [`AgentMetrics::register`] adds, to the daemon's registry:
//! `agent_claims_total` (operations claimed), `agent_operations_total{type,outcome}`
//! (`complete`, `error`, `aborted` or `released`), `agent_operation_failures_total{type,code}`,
//! `agent_operation_duration_seconds{type}` (histogram), `agent_operations_in_flight`,
//! `agent_domain_state_changes_total` (changes seen by polling) and
//! `agent_node_heartbeat_failures_total`. [`AgentMetrics::default`] is an unregistered
//! set (tests).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The metric handles (cheap to clone; clones share values).
#[derive(Clone)]
pub struct AgentMetrics {
    /// Operations claimed.
    pub claims: Counter,
    /// Operations finished, by type and outcome.
    pub operations: Family<Labels, Counter>,
    /// Failures by type and error code.
    pub failures: Family<Labels, Counter>,
    /// Execution time by type.
    pub durations: Family<Labels, Histogram, fn() -> Histogram>,
    /// Operations executing now.
    pub in_flight: Gauge,
    /// Domain state changes reported by polling.
    pub state_changes: Counter,
    /// Node heartbeats that failed.
    pub heartbeat_failures: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            claims: Counter::default(),
            operations: Family::default(),
            failures: Family::default(),
            durations: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            in_flight: Gauge::default(),
            state_changes: Counter::default(),
            heartbeat_failures: Counter::default(),
        }
    }
}

impl AgentMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("agent_claims", "Operations claimed", m.claims.clone());
        registry.register(
            "agent_operations",
            "Operations finished, by type and outcome",
            m.operations.clone(),
        );
        registry.register(
            "agent_operation_failures",
            "Operations failed, by type and error code",
            m.failures.clone(),
        );
        registry.register(
            "agent_operation_duration_seconds",
            "Operation execution time, by type",
            m.durations.clone(),
        );
        registry.register(
            "agent_operations_in_flight",
            "Operations executing now",
            m.in_flight.clone(),
        );
        registry.register(
            "agent_domain_state_changes",
            "Domain state changes seen by polling",
            m.state_changes.clone(),
        );
        registry.register(
            "agent_node_heartbeat_failures",
            "Node heartbeats that failed",
            m.heartbeat_failures.clone(),
        );
        m
    }

    /// Records one finished operation.
    pub fn finished(&self, op_type: &str, outcome: &str, seconds: f64, code: Option<&str>) {
        self.operations
            .get_or_create(&vec![
                ("type".to_owned(), op_type.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
        self.durations
            .get_or_create(&vec![("type".to_owned(), op_type.to_owned())])
            .observe(seconds);
        if let Some(code) = code {
            self.failures
                .get_or_create(&vec![
                    ("type".to_owned(), op_type.to_owned()),
                    ("code".to_owned(), code.to_owned()),
                ])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_operations_show_up_in_the_exposition() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        m.claims.inc();
        m.finished("instance_create", "complete", 0.2, None);
        m.finished("instance_pause", "error", 0.1, Some("InvalidLifecycle"));
        let text = sf_daemon::metrics::encode_text(&registry).expect("encode");
        assert!(text.contains("agent_claims_total 1"), "{text}");
        assert!(
            text.contains(r#"agent_operations_total{type="instance_create",outcome="complete"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"agent_operation_failures_total{type="instance_pause",code="InvalidLifecycle"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"agent_operation_duration_seconds_count{type="instance_create"} 1"#),
            "{text}"
        );
    }
}
