//! `sf-cluster`: the controllers daemon. All logic is in the library ([`sf_cluster`]);
//! this wires configuration, telemetry and signals.

use anyhow::Context;
use sf_cluster::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = sf_daemon::config::parse_or_exit();
    let _telemetry = sf_daemon::telemetry::init("sf-cluster", &config.telemetry)
        .context("cannot start telemetry")?;
    let shutdown =
        sf_daemon::shutdown::install_signal_handlers().context("cannot install signal handlers")?;
    let listener = sf_daemon::metrics::bind(config.metrics_address()).await?;
    if let Err(e) = sf_cluster::serve(config, shutdown, listener, None).await {
        tracing::error!("{e}");
        return Err(e.into());
    }
    Ok(())
}
