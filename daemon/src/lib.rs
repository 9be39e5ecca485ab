//! Plumbing shared by every Shaken Fist daemon (sf-database, sf-api, sf-cluster, sf-agent).
//!
//! - [`config`]: typed configuration from `SHAKENFIST_<KEY>` environment variables and
//!   flags, validated before any port is bound; bad configuration exits with
//!   [`EX_USAGE`] naming the key.
//! - [`telemetry`]: `tracing` logs (JSON when stdout is not a terminal), spans exported
//!   over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C trace context on HTTP and
//!   gRPC headers.
//! - [`metrics`]: a `prometheus-client` registry served on the daemon's metrics port.
//! - [`shutdown`]: graceful shutdown on SIGTERM/SIGINT.
//! - [`panic`](mod@panic): a panic hook writing a JSON report to
//!   `<STORAGE_PATH>/exceptions/<timestamp>-<pid>.json`.
//! - `tls` (feature `tls`): certificates (self-signed generation, reload, renewal
//!   before expiry) and the TLS listener for sf-api and the agent's metrics.
//!
//! A daemon's `main` typically reads:
//!
//! ```ignore
//! let config: Config = sf_daemon::config::parse_or_exit();
//! let _telemetry = sf_daemon::telemetry::init("sf-database", &config.telemetry)?;
//! sf_daemon::panic::install(&config.storage_path)?; // daemons with a STORAGE_PATH
//! let shutdown = sf_daemon::shutdown::install_signal_handlers()?;
//! let mut metrics = sf_daemon::metrics::Metrics::new("sf-database", env!("CARGO_PKG_VERSION"));
//! // ... register the daemon's metrics ...
//! let listener = sf_daemon::metrics::bind(config.metrics_address()).await?;
//! tokio::spawn(sf_daemon::metrics::serve(metrics.into_shared(), listener, shutdown.wait_owned()));
//! ```

pub mod config;
pub mod metrics;
pub mod panic;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

pub use config::{ConfigError, HostPort, LogFormat, TelemetryArgs, Validate};
pub use metrics::{Metrics, MetricsError};
pub use shutdown::{Shutdown, ShutdownError};
pub use telemetry::{TelemetryError, TelemetryGuard};

/// Exit status for bad configuration (`EX_USAGE` from sysexits.h).
pub const EX_USAGE: i32 = 64;
