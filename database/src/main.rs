//! `sf-database`: the MariaDB gateway daemon. All logic is in the library
//! ([`sf_database::daemon`]); this wires configuration, telemetry and signals.

use std::net::SocketAddr;
use std::process::ExitCode;

use sf_database::daemon::{self, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = sf_daemon::config::parse_or_exit();
    let _telemetry = match sf_daemon::telemetry::init("sf-database", &config.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("sf-database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = match sf_daemon::shutdown::install_signal_handlers() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sf-database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grpc_addr = SocketAddr::new(config.listen, config.mariadb_gateway_port);
    let metrics_addr = SocketAddr::new(config.listen, config.mariadb_gateway_metrics_port);
    let result = async {
        let grpc = daemon::bind("gRPC", grpc_addr).await?;
        let metrics = daemon::bind("metrics", metrics_addr).await?;
        daemon::serve(config, grpc, metrics, shutdown).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
