//! Prometheus metrics: one registry per daemon, served over HTTP.
//!
//! Contract:
//!
//! - A daemon builds one [`Metrics`] at start (it registers `sf_build_info{service,version}`),
//!   registers its own metrics through [`Metrics::registry_mut`], then shares the registry
//!   with [`Metrics::into_shared`]. Metric names carry no prefix: a counter registered as
//!   `cluster_op_reaper_requeued` is exposed as `cluster_op_reaper_requeued_total`.
//! - [`bind`] binds the metrics port up front so a taken port is a clear start-up error
//!   (`cannot bind metrics port 127.0.0.1:13006: address in use`), then [`serve`] answers
//!   `GET /metrics` with OpenMetrics text ([`OPENMETRICS_CONTENT_TYPE`]) and
//!   `GET /healthz` with `ok`, until the shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type of `GET /metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why metrics could not be encoded or served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics port could not be bound.
    #[error("cannot bind metrics port {addr}: {}", .source.kind())]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error (its kind is in the message; the OS detail is here).
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while serving.
    #[error("metrics server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The registry could not be encoded as OpenMetrics text.
    #[error("cannot encode metrics: {0}")]
    Encode(#[source] std::fmt::Error),
}

/// A daemon's metric registry, with `sf_build_info` already registered.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry for the daemon `service` at `version` (usually
    /// `env!("CARGO_PKG_VERSION")`), exposing `sf_build_info{service="...",version="..."} 1`.
    pub fn new(service: &str, version: &str) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "sf_build",
            "Build information of this Shaken Fist daemon",
            Info::new(vec![
                ("service".to_owned(), service.to_owned()),
                ("version".to_owned(), version.to_owned()),
            ]),
        );
        Self { registry }
    }

    /// The registry, to register the daemon's own metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, ready for [`serve`]; register everything before calling this.
    pub fn into_shared(self) -> Arc<Registry> {
        Arc::new(self.registry)
    }
}

/// Encodes `registry` as OpenMetrics text (ending in `# EOF`).
pub fn encode_text(registry: &Registry) -> Result<String, MetricsError> {
    let mut body = String::new();
    encode(&mut body, registry).map_err(MetricsError::Encode)?;
    Ok(body)
}

/// Binds the metrics port at `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown` completes,
/// then finishes in-flight requests and returns.
pub async fn serve(
    registry: Arc<Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    serve_on(registry, listener, shutdown).await
}

/// [`serve`] on any listener axum accepts, e.g. the `tls` module's `TlsListener` for
/// HTTPS.
pub async fn serve_on<L>(
    registry: Arc<Registry>,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

async fn metrics_handler(State(registry): State<Arc<Registry>>) -> Response {
    match encode_text(&registry) {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A minimal HTTP/1.1 GET; returns the whole response as text.
    async fn get_text(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("response within 10 s")
            .unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_and_health_then_shuts_down() {
        let mut metrics = Metrics::new("sf-test", "1.2.3");
        let requests = Counter::<u64>::default();
        metrics
            .registry_mut()
            .register("test_requests", "Requests handled", requests.clone());
        let registry = metrics.into_shared();

        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(registry, listener, async {
            let _ = stopped.await;
        }));

        requests.inc();
        requests.inc();
        let response = get_text(addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{response}"
        );
        assert!(
            response.lines().any(|line| line == "test_requests_total 2"),
            "{response}"
        );
        assert!(
            response
                .lines()
                .any(|line| line == r#"sf_build_info{service="sf-test",version="1.2.3"} 1"#),
            "{response}"
        );
        assert!(response.trim_end().ends_with("# EOF"), "{response}");

        let health = get_text(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("ok\n"), "{health}");

        let missing = get_text(addr, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops after shutdown")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn bind_conflict_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert!(matches!(err, MetricsError::Bind { .. }));
        assert_eq!(
            err.to_string(),
            format!("cannot bind metrics port {addr}: address in use")
        );
    }
}
