//! `sf-api`: the API server daemon. All logic is in the library ([`sf_api`]); this wires
//! configuration, telemetry and signals.

use anyhow::Context;
use sf_api::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = sf_daemon::config::parse_or_exit();
    let _telemetry = sf_daemon::telemetry::init("sf-api", &config.telemetry)
        .context("cannot start telemetry")?;
    let shutdown =
        sf_daemon::shutdown::install_signal_handlers().context("cannot install signal handlers")?;
    let listener = sf_api::bind(config.listen_address()).await?;
    if let Err(e) = sf_api::serve(&config, listener, shutdown).await {
        tracing::error!("{e}");
        return Err(e.into());
    }
    Ok(())
}
