//! The HTTP server: routes, request context, health, graceful shutdown.
//!
//! Contract:
//! - [`router`] serves discovery ([`crate::discovery`]), the resource endpoints
//!   ([`crate::resources`], watches included), `/healthz` (200 while the process runs)
//!   and `/readyz` (503 while sf-database does not answer a quick probe, or once
//!   shutdown has begun). Unknown paths are a 404 `Status`, a verb a route does not
//!   serve a 405 `Status`.
//! - Every route but `auth::PUBLIC_PATHS` needs a token ([`crate::auth`]); the
//!   key and namespace routes are in [`crate::namespaces`].
//! - Every request gets an id: `X-Request-ID` when the client sent a sane one (1-128
//!   visible ASCII characters), else a new UUID; it is echoed in the response and
//!   recorded on the request's `tracing` span (with method, path and status), whose
//!   parent is the caller's W3C trace context when it sent one.
//! - [`serve`] runs until the [`Shutdown`] fires, then stops accepting, ends open
//!   watches and lets in-flight requests finish. It serves HTTPS ([`crate::tls`])
//!   when a certificate is configured, HTTP otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http::{HeaderName, HeaderValue, StatusCode};
use sf_daemon::Shutdown;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::{self, Auth, TokenSigner};
use crate::config::Config;
use crate::discovery;
use crate::error::ApiError;
use crate::gateway::{Gateway, GatewayError};
use crate::kinds::{Kinds, KindsError};
use crate::requests::{Answered, Requests};
use crate::resources;
use crate::tls::{CertStore, TlsListener};

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The sf-database client could not be built.
    #[error("cannot set up the sf-database client: {0}")]
    Gateway(#[from] GatewayError),
    /// The kind table could not be built.
    #[error(transparent)]
    Kinds(#[from] KindsError),
    /// The port could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Tunables of the resource endpoints.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often an idle watch gets a bookmark (when it asked for them).
    pub bookmark_interval: Duration,
    /// The longest a watch request lasts.
    pub max_watch: Duration,
    /// The scheduler's settings, for `/admin/resources` (the same keys sf-cluster
    /// schedules with).
    pub scheduler: sf_plan::scheduler::SchedulerConfig,
}

/// Everything a handler needs.
pub struct App {
    /// sf-database.
    pub gateway: Gateway,
    /// The served kinds.
    pub kinds: Kinds,
    /// Tunables.
    pub settings: Settings,
    /// Fires when the server is to stop.
    pub shutdown: Shutdown,
    /// Tokens, failed-attempt counts, key nonces.
    pub auth: Auth,
    /// Metrics and api-requests events.
    pub requests: Requests,
}

impl App {
    /// The application state for `config`.
    pub fn new(config: &Config, shutdown: Shutdown) -> Result<Arc<Self>, ServerError> {
        Ok(Arc::new(Self {
            gateway: Gateway::new(
                &config.mariadb_gateway_hosts,
                &config.mariadb_gateway_secret,
            )?,
            kinds: Kinds::new()?,
            settings: Settings {
                bookmark_interval: config.bookmark_interval(),
                max_watch: config.max_watch(),
                scheduler: config.scheduler.config(),
            },
            shutdown,
            auth: Auth::new(TokenSigner::new(
                &config.auth_secret_seed,
                &config.zone,
                config.token_duration(),
            )),
            requests: Requests::new(),
        }))
    }
}

/// Every route.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/auth", post(auth::post_auth))
        .merge(crate::namespaces::routes())
        .merge(crate::v08::routes())
        .route("/admin/resources", get(crate::actions::admin_resources))
        .route("/metrics", get(metrics))
        .route("/openapi/v3", get(crate::openapi::get_root))
        .route(
            "/openapi/v3/apis/shakenfist.io/v1alpha1",
            get(crate::openapi::get_group),
        )
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(discovery::get_version))
        .route("/api", get(discovery::get_api))
        .route("/api/v1", get(discovery::get_core_v1))
        .route("/apis", get(discovery::get_apis))
        .route("/apis/shakenfist.io", get(discovery::get_group))
        .route(
            "/apis/shakenfist.io/v1alpha1",
            get(discovery::get_resources),
        )
        .route(
            "/apis/shakenfist.io/v1alpha1/{*rest}",
            any(resources::handle),
        )
        .fallback(|| async { ApiError::UnknownPath.into_response() })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() })
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), request_context))
        .with_state(app)
}

/// A request id the client sent, if sane.
fn client_request_id(value: Option<&HeaderValue>) -> Option<String> {
    let text = value?.to_str().ok()?;
    let sane = (1..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| text.to_string())
}

/// Request id, span, completion log and accounting of every request.
async fn request_context(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = client_request_id(request.headers().get(&REQUEST_ID))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty,
        caller = tracing::field::Empty,
    );
    sf_daemon::telemetry::set_parent_from_headers(&span, request.headers());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let client = crate::auth::client_ip(&request).to_string();
    let mut response = next.run(request).instrument(span.clone()).await;
    app.requests.record(&Answered {
        request_id: &id,
        method: &method,
        path: &path,
        status: response.status().as_u16(),
        duration: started.elapsed(),
        caller: response
            .extensions()
            .get::<crate::auth::Caller>()
            .map(|c| format!("{}/{}", c.namespace, c.key_name)),
        client,
    });
    span.record("status", response.status().as_u16());
    tracing::debug!(
        parent: &span,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request answered"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// `GET /`: Shaken Fist's capability list.
async fn root() -> Response {
    crate::error::json_response(
        StatusCode::OK,
        &serde_json::json!({"capabilities": CAPABILITIES}),
    )
}

/// What this API can do (Shaken Fist's `GET /` capability strings).
/// Each names a `shakenfist-client` check (`check_capability`) whose calls are served.
pub const CAPABILITIES: &[&str] = &[
    "kubernetes-api",
    "namespace-keys",
    "events-by-type",
    "blob-events",
    "get-instance-namespace",
    "get-network-namespace",
    "list-addresses",
    "route-addresses",
    "node-get",
    "provide-dns",
    "cluster-resources",
    "artifact-metadata",
    "blob-metadata",
    "interface-metadata",
    "node-metadata",
    "get-cluster-operations",
    "cluster-operations-by-target",
    "cluster-operation-chain",
    "hot-plug-interface",
];

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.requests.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(sf_daemon::metrics::OPENMETRICS_CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match app.gateway.ready().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            // The details are for the operator's log, not for whoever asks.
            tracing::warn!(error = %e, "not ready: sf-database is not reachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "sf-database is not reachable",
            )
                .into_response()
        }
    }
}

/// Binds the listening socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves `config` on `listener` until `shutdown`: HTTPS when a certificate is
/// configured ([`crate::tls`]), else HTTP.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    let tls = config.tls().map(|s| CertStore::load(&s)).transpose()?;
    let app = App::new(config, shutdown.clone())?;
    match tls {
        Some(certs) => serve_app_tls(app, listener, certs).await,
        None => serve_app(app, listener).await,
    }
}

/// Serves an already built [`App`] over HTTP on `listener` until its shutdown fires.
pub async fn serve_app(app: Arc<App>, listener: TcpListener) -> Result<(), ServerError> {
    serve_with(app, listener, None).await
}

/// Serves an already built [`App`] over HTTPS with `certs` (reloaded as their files
/// change) on `listener` until its shutdown fires.
pub async fn serve_app_tls(
    app: Arc<App>,
    listener: TcpListener,
    certs: Arc<CertStore>,
) -> Result<(), ServerError> {
    serve_with(app, listener, Some(certs)).await
}

async fn serve_with(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<CertStore>>,
) -> Result<(), ServerError> {
    use axum::serve::ListenerExt;
    let tls = match tls {
        Some(certs) => Some((certs.server_config()?, certs)),
        None => None,
    };
    let shutdown = app.shutdown.clone();
    let flusher = {
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            app.requests
                .run_flusher(app.gateway.clone(), shutdown)
                .await;
        })
    };
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        None => {
            tracing::info!(addr = ?listener.local_addr().ok(), "sf-api serving HTTP");
            // Nagle's algorithm off: small responses would otherwise wait for delayed ACKs.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown.wait_owned())
                .await
        }
        Some((config, certs)) => {
            tokio::spawn(certs.clone().run_reloader(shutdown.clone()));
            tracing::info!(
                addr = ?listener.local_addr().ok(),
                cert = %certs.settings().cert_path.display(),
                "sf-api serving HTTPS"
            );
            // TapIo gives the connections their peer address (`ConnectInfo`).
            let listener = TlsListener::new(listener, config)
                .map_err(ServerError::Serve)?
                .tap_io(|_| {});
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown.wait_owned())
                .await
        }
    };
    served.map_err(ServerError::Serve)?;
    if tokio::time::timeout(Duration::from_secs(10), flusher)
        .await
        .is_err()
    {
        tracing::warn!("api-requests events not flushed within 10 s");
    }
    tracing::info!("sf-api stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_taken_only_when_sane() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(client_request_id(Some(&ok)).as_deref(), Some("abc-123"));
        let spaced = HeaderValue::from_static("a b");
        assert_eq!(client_request_id(Some(&spaced)), None);
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        assert_eq!(client_request_id(Some(&long)), None);
        assert_eq!(client_request_id(None), None);
    }
}
