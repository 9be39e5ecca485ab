//! The sf-database daemon: configuration, start-up checks, serving and draining.
//!
//! Contract: before any port is bound the configuration is validated (bad: exit 64,
//! key named). Before serving, the MariaDB compatibility check and the schema version
//! check run; either failing refuses to start with a multi-line message saying what to
//! fix. Then gRPC (with grpc.health.v1) and Prometheus metrics are served until
//! shutdown, when health turns NOT_SERVING, watches end and in-flight calls finish.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sf_daemon::config::{ConfigError, TelemetryArgs, Validate};
use sf_daemon::{Metrics, Shutdown};
use sf_proto::v1::gateway_server::GatewayServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::compat::{self, CompatError};
use crate::connection::{ConnectError, MariaDbArgs, PoolError, connect, connect_pool};
use crate::migration::{SchemaError, check_schema_versions};
use crate::server::{GatewayMetrics, GatewayService, SecretCheck};
use crate::store::watch::ChangeFeed;
use crate::store::{Store, StoreError};

/// sf-database's configuration (`SHAKENFIST_*` environment variables; flags override).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sf-database",
    version,
    about = "Shaken Fist's MariaDB gateway (gRPC)"
)]
pub struct Config {
    /// How to reach MariaDB.
    #[command(flatten)]
    pub mariadb: MariaDbArgs,
    /// Address to listen on for gRPC and metrics.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_LISTEN",
        default_value = "0.0.0.0"
    )]
    pub listen: IpAddr,
    /// gRPC port.
    #[arg(long, env = "SHAKENFIST_MARIADB_GATEWAY_PORT", default_value_t = 13005)]
    pub mariadb_gateway_port: u16,
    /// Prometheus metrics port.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_METRICS_PORT",
        default_value_t = 13006
    )]
    pub mariadb_gateway_metrics_port: u16,
    /// Shared secret every caller must present.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub mariadb_gateway_secret: String,
    /// How often the change log is polled for writes made through other instances (ms).
    #[arg(long, env = "SHAKENFIST_MARIADB_GATEWAY_POLL_MS", default_value_t = 25)]
    pub poll_ms: u64,
    /// How long a released address stays in the deletion halo (seconds).
    #[arg(
        long,
        env = "SHAKENFIST_IP_DELETION_HALO_DURATION",
        default_value_t = 300
    )]
    pub ip_deletion_halo_duration: u64,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.mariadb_gateway_secret.len() < 16 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_MARIADB_GATEWAY_SECRET",
                "must be set to a secret of at least 16 characters, shared with every daemon that calls sf-database",
            ));
        }
        if self.poll_ms == 0 || self.poll_ms > 50 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_MARIADB_GATEWAY_POLL_MS",
                format!(
                    "must be 1-50 (changes through other instances must be seen within 50 ms), got {}",
                    self.poll_ms
                ),
            ));
        }
        if self.mariadb_gateway_port == self.mariadb_gateway_metrics_port
            && self.mariadb_gateway_port != 0
        {
            return Err(ConfigError::invalid(
                "SHAKENFIST_MARIADB_GATEWAY_METRICS_PORT",
                "must differ from SHAKENFIST_MARIADB_GATEWAY_PORT",
            ));
        }
        if let Err((key, why)) = self.mariadb.validate() {
            return Err(ConfigError::invalid(key, why));
        }
        if self.mariadb.pool_size == 0 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_MARIADB_POOL_SIZE",
                "must be at least 1",
            ));
        }
        self.telemetry.validate()
    }
}

/// Why the daemon stopped or would not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Connecting for the start-up checks failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server is not a compatible MariaDB.
    #[error("sf-database refuses to start.\n{0}")]
    Incompatible(CompatError),
    /// The schema is missing or at other versions.
    #[error("sf-database refuses to start.\n{0}")]
    Schema(SchemaError),
    /// Opening the store's pool failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Starting the change feed failed.
    #[error("cannot start the change feed: {0}")]
    Feed(StoreError),
    /// A port could not be bound.
    #[error("cannot bind {what} port {addr}: {source}")]
    Bind {
        /// gRPC or metrics.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving gRPC failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Serving metrics failed.
    #[error(transparent)]
    Metrics(#[from] sf_daemon::MetricsError),
}

/// Runs the start-up checks: compatibility, then schema versions.
pub async fn startup_checks(args: &MariaDbArgs) -> Result<(), DaemonError> {
    let db = connect(args).await?;
    let facts = compat::check(&db, &args.target())
        .await
        .map_err(DaemonError::Incompatible)?;
    for warning in compat::warnings(&facts) {
        tracing::warn!("{warning}");
    }
    check_schema_versions(&db)
        .await
        .map_err(DaemonError::Schema)?;
    let _ = db.close().await;
    Ok(())
}

/// Binds `addr` for `what`.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { what, addr, source })
}

/// Starts a gateway inside this process, on ephemeral ports of 127.0.0.1 (gRPC and
/// metrics), over the MariaDB on 127.0.0.1:`mariadb_port` (user root, no password) and
/// its database `database`: what tests and benchmarks of the other daemons run
/// against. Returns the gRPC address and the gateway's shutdown; a failure while
/// serving is logged.
pub async fn spawn_local(
    mariadb_port: u16,
    database: &str,
    pool_size: u32,
    secret: &str,
) -> Result<(SocketAddr, Shutdown), DaemonError> {
    use clap::Parser;
    let config = Config::parse_from([
        "sf-database".to_string(),
        "--mariadb-host=127.0.0.1".into(),
        format!("--mariadb-port={mariadb_port}"),
        "--mariadb-user=root".into(),
        format!("--mariadb-database={database}"),
        format!("--mariadb-pool-size={pool_size}"),
        "--listen=127.0.0.1".into(),
        format!("--mariadb-gateway-secret={secret}"),
        "--log=warn".into(),
    ]);
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let grpc = bind("gRPC", local).await?;
    let metrics = bind("metrics", local).await?;
    let addr = grpc.local_addr().map_err(|source| DaemonError::Bind {
        what: "gRPC",
        addr: local,
        source,
    })?;
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(config, grpc, metrics, s).await {
            tracing::error!(error = %e, "in-process sf-database failed");
        }
    });
    Ok((addr, shutdown))
}

/// Serves until `shutdown`, on listeners bound by the caller.
pub async fn serve(
    config: Config,
    grpc: TcpListener,
    metrics_listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    startup_checks(&config.mariadb).await?;
    let pool = connect_pool(&config.mariadb).await?;
    let store = Store::new(pool);
    let feed = ChangeFeed::start(
        store.clone(),
        Duration::from_millis(config.poll_ms),
        shutdown.wait_owned(),
    )
    .await
    .map_err(DaemonError::Feed)?;

    let mut metrics = Metrics::new("sf-database", env!("CARGO_PKG_VERSION"));
    let gateway_metrics = Arc::new(GatewayMetrics::register(metrics.registry_mut()));
    GatewayMetrics::register_combining(metrics.registry_mut(), store.combining());
    let registry = metrics.into_shared();
    let metrics_task = tokio::spawn(sf_daemon::metrics::serve(
        registry,
        metrics_listener,
        shutdown.wait_owned(),
    ));
    tokio::spawn(refresh_gauges(
        store.clone(),
        feed.clone(),
        gateway_metrics.clone(),
        shutdown.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<GatewayServer<GatewayService>>()
        .await;
    let service = GatewayService::new(
        store,
        feed,
        gateway_metrics,
        shutdown.clone(),
        Duration::from_secs(config.ip_deletion_halo_duration),
    );
    let gateway = tonic::service::interceptor::InterceptedService::new(
        GatewayServer::new(service)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024),
        SecretCheck::new(&config.mariadb_gateway_secret),
    );

    let drain = {
        let shutdown = shutdown.clone();
        let reporter = health_reporter.clone();
        async move {
            shutdown.wait().await;
            reporter
                .set_not_serving::<GatewayServer<GatewayService>>()
                .await;
            tracing::info!("draining: health NOT_SERVING, finishing in-flight calls");
        }
    };
    tracing::info!(addr = ?grpc.local_addr().ok(), "sf-database serving");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(gateway)
        .serve_with_incoming_shutdown(no_delay(TcpListenerStream::new(grpc)), drain)
        .await?;
    if let Ok(result) = metrics_task.await {
        result?;
    }
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: small gRPC replies otherwise wait
/// for the peer's delayed ACK (~40 ms per unary call on Linux).
fn no_delay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    })
}

async fn refresh_gauges(
    store: Store,
    feed: Arc<ChangeFeed>,
    metrics: Arc<GatewayMetrics>,
    shutdown: Shutdown,
) {
    loop {
        if let Ok(depth) = store.queue_depth().await {
            metrics
                .queue_depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        if let Ok(rows) = store.events_row_count().await {
            metrics
                .events_rows
                .set(i64::try_from(rows).unwrap_or(i64::MAX));
        }
        metrics
            .feed_gaps
            .set(i64::try_from(feed.gaps_seen()).unwrap_or(i64::MAX));
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
