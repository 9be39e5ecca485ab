//! Request accounting: Prometheus metrics and `api-requests` events.
//!
//! Contract:
//! - `GET /metrics` (no token needed) answers OpenMetrics text from sf-daemon's
//!   registry: `sf_build_info`, `api_requests_total{method,route,code}`,
//!   `api_request_duration_seconds{method,route}` (a histogram of the time to the
//!   response head; a watch counts until its stream starts) and
//!   `api_request_events_dropped_total`. `route` is a template, never a name: e.g.
//!   `/apis/shakenfist.io/v1alpha1/namespaces/{ns}/instances/{name}/status`.
//! - Every request except `/healthz`, `/livez`, `/readyz` and `/metrics` is recorded as
//!   an `audit` event on object type `api-requests` with the request id as object uuid
//!   and as `request_id`; `extra` holds method, path, status, duration (ms), caller
//!   (`namespace/key`, or null) and client address. Events are queued (at most
//!   [`EVENT_QUEUE`]; beyond that they are dropped and counted; queueing wakes no task
//!   until a full batch waits) and written to sf-database with `RecordEventBatch` in
//!   batches of up to [`EVENT_BATCH`] at least every [`FLUSH_INTERVAL`], and once more
//!   at shutdown. A failed write is logged and
//!   its batch dropped (counted): request accounting never fails a request.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use sf_proto::v1 as pb;

use crate::gateway::Gateway;

/// Events queued for writing at most.
pub const EVENT_QUEUE: usize = 10_000;
/// Events written per `RecordEventBatch` at most.
pub const EVENT_BATCH: usize = 500;
/// How often queued events are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Paths that are neither events nor worth one.
const QUIET: &[&str] = &["/healthz", "/livez", "/readyz", "/metrics"];

type Labels = Vec<(String, String)>;
type HistogramMaker = fn() -> Histogram;

fn histogram() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The metrics and the event queue.
#[derive(Debug)]
pub struct Requests {
    registry: std::sync::Arc<Registry>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, HistogramMaker>,
    dropped: Counter,
    /// Events waiting for the flusher (a plain vector: queueing wakes no task).
    queue: Mutex<Vec<pb::Event>>,
    /// Wakes the flusher when a full batch is waiting.
    batch_ready: tokio::sync::Notify,
    /// Set by the first flusher.
    flusher_started: std::sync::atomic::AtomicBool,
    fqdn: String,
}

/// One answered request.
pub struct Answered<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path.
    pub path: &'a str,
    /// The HTTP status.
    pub status: u16,
    /// Time to the response head.
    pub duration: Duration,
    /// `namespace/key` of the caller, when authenticated.
    pub caller: Option<String>,
    /// The client's address.
    pub client: String,
}

impl Default for Requests {
    fn default() -> Self {
        Self::new()
    }
}

impl Requests {
    /// Registers the metrics.
    pub fn new() -> Self {
        let mut metrics = sf_daemon::metrics::Metrics::new("sf-api", env!("CARGO_PKG_VERSION"));
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, HistogramMaker>::new_with_constructor(
            histogram as HistogramMaker,
        );
        let dropped = Counter::default();
        let registry = metrics.registry_mut();
        registry.register("api_requests", "Requests answered", requests.clone());
        registry.register(
            "api_request_duration_seconds",
            "Time to the response head",
            latency.clone(),
        );
        registry.register(
            "api_request_events_dropped",
            "api-requests events dropped (queue full or write failed)",
            dropped.clone(),
        );
        let fqdn = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "sf-api".into());
        Self {
            registry: metrics.into_shared(),
            requests,
            latency,
            dropped,
            queue: Mutex::new(Vec::with_capacity(EVENT_BATCH)),
            batch_ready: tokio::sync::Notify::new(),
            flusher_started: std::sync::atomic::AtomicBool::new(false),
            fqdn,
        }
    }

    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> Result<String, sf_daemon::metrics::MetricsError> {
        sf_daemon::metrics::encode_text(&self.registry)
    }

    /// Accounts one answered request.
    pub fn record(&self, answered: &Answered<'_>) {
        if QUIET.contains(&answered.path) {
            return;
        }
        let route = route_template(answered.path);
        self.requests
            .get_or_create(&vec![
                ("method".into(), answered.method.to_string()),
                ("route".into(), route.clone()),
                ("code".into(), answered.status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![
                ("method".into(), answered.method.to_string()),
                ("route".into(), route),
            ])
            .observe(answered.duration.as_secs_f64());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let extra = json!({
            "method": answered.method,
            "path": answered.path,
            "status": answered.status,
            "duration_ms": answered.duration.as_secs_f64() * 1000.0,
            "caller": answered.caller,
            "client": answered.client,
        });
        let event = pb::Event {
            event_uuid: uuid::Uuid::new_v4().to_string(),
            event_type: "audit".into(),
            timestamp: now,
            fqdn: self.fqdn.clone(),
            duration: Some(answered.duration.as_secs_f64()),
            message: format!("{} {} {}", answered.method, answered.path, answered.status),
            extra: serde_json::to_vec(&extra).unwrap_or_default(),
            request_id: Some(answered.request_id.to_string()),
            objects: vec![pb::EventObject {
                object_type: "api-requests".into(),
                object_uuid: answered.request_id.to_string(),
            }],
        };
        let queued = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= EVENT_QUEUE {
                None
            } else {
                queue.push(event);
                Some(queue.len())
            }
        };
        match queued {
            None => {
                self.dropped.inc();
            }
            Some(EVENT_BATCH) => self.batch_ready.notify_one(),
            Some(_) => {}
        }
    }

    fn take_queued(&self) -> Vec<pb::Event> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *queue, Vec::with_capacity(EVENT_BATCH))
    }

    /// Writes queued events until `shutdown`, then once more. Only the first call
    /// flushes; later ones return at once.
    pub async fn run_flusher(&self, gateway: Gateway, shutdown: sf_daemon::Shutdown) {
        if self
            .flusher_started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.batch_ready.notified() => {}
                () = shutdown.wait() => break,
            }
            self.flush(&gateway).await;
        }
        self.flush(&gateway).await;
    }

    async fn flush(&self, gateway: &Gateway) {
        let mut events = self.take_queued();
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(EVENT_BATCH));
            let count = events.len() as u64;
            if let Err(e) = gateway.record_events(events).await {
                tracing::warn!(error = %e, count, "cannot record api-requests events; dropped");
                self.dropped.inc_by(count);
            }
            events = rest;
        }
    }
}

/// The resource plurals of the group: any other segment there is `{plural}` in a
/// route, so requests (answered 404 or 401) cannot mint metric series.
const PLURALS: &[&str] = &[
    "artifacts",
    "blobs",
    "clusteroperations",
    "instances",
    "ipamleases",
    "namespaces",
    "networkinterfaces",
    "networks",
    "nodes",
];

/// The subresources and actions after an object's name; any other is `{sub}`.
const SUBRESOURCES: &[&str] = &[
    "status",
    "data",
    "events",
    "reboot",
    "screenshot",
    "snapshot",
    "plan",
];

fn known(segment: &str, names: &[&str], placeholder: &str) -> String {
    if names.contains(&segment) {
        segment.to_string()
    } else {
        placeholder.to_string()
    }
}

/// The route template of `path`: names and namespaces replaced by placeholders, and
/// any plural or subresource the API does not have too (a label value never comes
/// from an unknown request).
pub fn route_template(path: &str) -> String {
    const GROUP: &str = "/apis/shakenfist.io/v1alpha1/";
    if let Some(rest) = path.strip_prefix(GROUP) {
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let plural = |p: &str| known(p, PLURALS, "{plural}");
        let tail = |t: &[&str]| -> Vec<String> {
            t.iter()
                .take(1)
                .map(|s| known(s, SUBRESOURCES, "{sub}"))
                .collect()
        };
        let shaped: Vec<String> = match segments.as_slice() {
            ["namespaces", _, p, rest @ ..] => {
                let mut out = vec!["namespaces".into(), "{ns}".into(), plural(p)];
                if let [_, t @ ..] = rest {
                    out.push("{name}".into());
                    out.extend(tail(t));
                }
                out
            }
            ["namespaces", _] => vec!["namespaces".into(), "{name}".into()],
            [p, rest @ ..] => {
                let mut out = vec![plural(p)];
                if let [_, t @ ..] = rest {
                    out.push("{name}".into());
                    out.extend(tail(t));
                }
                out
            }
            [] => Vec::new(),
        };
        return format!("{GROUP}{}", shaped.join("/"));
    }
    if let Some(rest) = path.strip_prefix("/auth/namespaces/") {
        let depth = rest.split('/').count();
        return match depth {
            1 => "/auth/namespaces/{ns}".into(),
            2 => "/auth/namespaces/{ns}/keys".into(),
            _ => "/auth/namespaces/{ns}/keys/{key_name}".into(),
        };
    }
    match path {
        "/"
        | "/auth"
        | "/auth/namespaces"
        | "/version"
        | "/api"
        | "/api/v1"
        | "/apis"
        | "/apis/shakenfist.io"
        | "/apis/shakenfist.io/v1alpha1"
        | "/admin/resources"
        | "/openapi/v3"
        | "/openapi/v2" => path.to_string(),
        p if p.starts_with("/openapi/v3/") => "/openapi/v3/{group}".into(),
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates() {
        let g = "/apis/shakenfist.io/v1alpha1";
        assert_eq!(
            route_template(&format!("{g}/namespaces/demo/instances/web-1/status")),
            format!("{g}/namespaces/{{ns}}/instances/{{name}}/status")
        );
        assert_eq!(
            route_template(&format!("{g}/namespaces/demo/instances")),
            format!("{g}/namespaces/{{ns}}/instances")
        );
        assert_eq!(
            route_template(&format!("{g}/blobs/x/data")),
            format!("{g}/blobs/{{name}}/data")
        );
        assert_eq!(
            route_template(&format!("{g}/namespaces/demo")),
            format!("{g}/namespaces/{{name}}")
        );
        assert_eq!(
            route_template("/auth/namespaces/demo/keys/k"),
            "/auth/namespaces/{ns}/keys/{key_name}"
        );
        assert_eq!(route_template("/secret-name-probe"), "other");
        // Unknown plurals and subresources never become label values.
        assert_eq!(
            route_template(&format!("{g}/x1b2c3")),
            format!("{g}/{{plural}}")
        );
        assert_eq!(
            route_template(&format!("{g}/namespaces/demo/zz9/a/b")),
            format!("{g}/namespaces/{{ns}}/{{plural}}/{{name}}/{{sub}}")
        );
        assert_eq!(
            route_template(&format!("{g}/instances/a/random-probe")),
            format!("{g}/instances/{{name}}/{{sub}}")
        );
    }

    #[test]
    fn metrics_count_by_route_and_code() {
        let r = Requests::new();
        r.record(&Answered {
            request_id: "abc",
            method: "GET",
            path: "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances/web-1",
            status: 200,
            duration: Duration::from_millis(2),
            caller: None,
            client: "127.0.0.1".into(),
        });
        let text = r.encode().expect("encode");
        assert!(text.contains("api_requests_total{method=\"GET\",route=\"/apis/shakenfist.io/v1alpha1/namespaces/{ns}/instances/{name}\",code=\"200\"} 1"), "{text}");
        assert!(
            text.contains("api_request_duration_seconds_count"),
            "{text}"
        );
        assert!(!text.contains("web-1"));
    }
}
