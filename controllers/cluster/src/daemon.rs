//! The sf-cluster daemon: connections, the metrics server, the lease, and the
//! controllers and maintenance services while the lease is held.
//!
//! Contract ([`serve`]):
//! - The metrics listener is bound by the caller (a taken port is a start-up error).
//! - sf-api is reached through [`connect_api`] (sf-client: a key is exchanged for a
//!   token that is kept fresh; a static token is used as is); sf-database through
//!   `SHAKENFIST_MARIADB_GATEWAY_HOSTS`. sf-api not answering yet is retried until
//!   shutdown.
//! - Every sf-cluster competes for the `cluster_locks` lease. The holder ensures the
//!   floating network, then runs the controllers ([`crate::controllers::run`]) and the
//!   maintenance services; when the lease is lost they are dropped at once (an
//!   interrupted reconcile is re-planned by the next holder) and the process goes
//!   back to standing by. `cluster_lease_held` says which.
//! - On shutdown everything stops and a held lease is released.

use std::sync::Arc;
use std::time::Duration;

use sf_daemon::Shutdown;
use sf_database_client::{GatewayClient, RetryPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::controllers::{self, Settings};
use crate::lease::{CLUSTER_LOCK_KEY, Lease};
use crate::maintenance::Maintenance;
use crate::metrics::ClusterMetrics;

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The sf-database client could not be built.
    #[error("sf-database client: {0}")]
    Gateway(#[source] sf_database_client::ClientError),
    /// The sf-api client could not be built.
    #[error("sf-api client: {0}")]
    Api(#[source] sf_client::ClientError),
    /// The metrics server failed.
    #[error(transparent)]
    Metrics(#[from] sf_daemon::MetricsError),
}

/// The `kube::Client` on sf-api for sf-cluster's service identity (C5 sf-client); an
/// `https://` sf-api is verified against `SHAKENFIST_API_CA_FILE` when set, else the
/// system's trust store.
pub async fn connect_api(config: &Config) -> Result<kube::Client, DaemonError> {
    let creds = sf_client::Credentials {
        url: config.api_url.clone(),
        namespace: config.cluster_namespace.clone(),
        key: config.cluster_key.clone(),
        token: config.cluster_token.clone(),
    };
    let client = sf_client::connect_with_ca(creds, config.api_ca_file.as_deref())
        .await
        .map_err(DaemonError::Api)?;
    Ok(client.kube())
}

/// The settings the controllers take from `config`.
pub fn settings(config: &Config) -> Settings {
    let mut plan = sf_plan::PlanContext::new(chrono::Utc::now());
    plan.scheduler = config.scheduler();
    plan.blob_grace_secs = config.blob_gc_grace;
    plan.blob_retry_secs = config.blob_gc_retry;
    plan.blob_record_secs = config.blob_gc_record;
    plan.screenshot_retention_secs = config.screenshot_retention;
    Settings {
        plan,
        node: config.node(),
        concurrency: 16,
    }
}

/// Runs sf-cluster until `shutdown` (see the module contract). `context_out`, when
/// given, receives the controllers' context each time this process takes the lease.
pub async fn serve(
    config: Config,
    shutdown: Shutdown,
    metrics_listener: TcpListener,
    context_out: Option<watch::Sender<Option<Arc<Context>>>>,
) -> Result<(), DaemonError> {
    let gateway = GatewayClient::from_host_list(
        &config.mariadb_gateway_hosts,
        &config.mariadb_gateway_secret,
        RetryPolicy::default(),
    )
    .map_err(DaemonError::Gateway)?;
    let metrics = ClusterMetrics::default();
    let mut registry = sf_daemon::Metrics::new("sf-cluster", env!("CARGO_PKG_VERSION"));
    metrics.register(registry.registry_mut());
    let metrics_task = tokio::spawn(sf_daemon::metrics::serve(
        registry.into_shared(),
        metrics_listener,
        shutdown.wait_owned(),
    ));

    let client = loop {
        match connect_api(&config).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(error = %e, "sf-api not reachable yet; retrying");
                tokio::select! {
                    () = shutdown.wait() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };

    let (held_tx, mut held) = watch::channel(false);
    let lease = Lease::new(
        gateway.clone(),
        CLUSTER_LOCK_KEY,
        &config.holder_name(),
        Duration::from_secs(u64::from(config.cluster_lease_ttl)),
    );
    let lease_task = tokio::spawn(lease.run(held_tx, shutdown.wait_owned()));

    while !shutdown.is_triggered() {
        tokio::select! {
            () = shutdown.wait() => break,
            r = held.wait_for(|h| *h) => if r.is_err() { break },
        }
        metrics.lease_held.set(1);
        match crate::floating::ensure(&gateway, &config.floating_network).await {
            Ok(outcome) => tracing::info!(?outcome, "floating network"),
            Err(e) => tracing::warn!(error = %e, "cannot ensure the floating network"),
        }
        let (ctx_tx, ctx_rx) = tokio::sync::oneshot::channel();
        let controllers = controllers::run(
            client.clone(),
            gateway.clone(),
            settings(&config),
            metrics.clone(),
            Some(ctx_tx),
        );
        let maintenance = Maintenance::new(gateway.clone(), metrics.clone()).run_all(
            config.reaper(),
            config.compaction(),
            config.retention(),
            config.purge(),
        );
        let publish = async {
            if let (Ok(ctx), Some(out)) = (ctx_rx.await, context_out.as_ref()) {
                out.send_replace(Some(ctx));
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = shutdown.wait() => {}
            r = held.wait_for(|h| !*h) => if r.is_err() { break },
            () = controllers => tracing::error!("the controllers stopped"),
            () = maintenance => tracing::error!("the maintenance services stopped"),
            () = publish => {}
        }
        metrics.lease_held.set(0);
        if let Some(out) = context_out.as_ref() {
            out.send_replace(None);
        }
        tracing::info!("controllers stopped");
    }
    metrics.lease_held.set(0);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    match tokio::time::timeout(Duration::from_secs(5), metrics_task).await {
        Ok(Ok(Err(e))) => Err(DaemonError::Metrics(e)),
        _ => Ok(()),
    }
}
