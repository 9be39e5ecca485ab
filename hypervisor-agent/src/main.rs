//! The `sf-agent` binary: configuration, telemetry, panic reports, metrics, then
//! [`sf_agent::agent::Agent::run`] on libvirt and netlink until SIGTERM/SIGINT.

use anyhow::Context;
use sf_agent::agent::Agent;
use sf_agent::config::Config;
use sf_agent::gateway::Gateway;
use sf_agent::hypervisor::Hypervisor;
use sf_agent::instance::Lifecycle;
use sf_agent::libvirt::LibvirtHypervisor;
use sf_agent::metrics::AgentMetrics;
use sf_database_client::spool::{DrainConfig, EventSpool, SpoolMetrics};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_hostnet::{HostNetConfig, NetlinkHostNet};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let config: Config = sf_daemon::config::parse_or_exit();
    sf_daemon::panic::install(&config.storage_path).context("installing the panic hook")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let _telemetry = sf_daemon::telemetry::init("sf-agent", &config.telemetry)?;
    let shutdown = sf_daemon::shutdown::install_signal_handlers()?;
    let node_uuid =
        sf_agent::identity::node_uuid(config.node_uuid.as_deref(), &config.storage_path)?;
    let settings = config.agent_settings(node_uuid);

    let mut metrics = sf_daemon::Metrics::new("sf-agent", env!("CARGO_PKG_VERSION"));
    let agent_metrics = AgentMetrics::register(metrics.registry_mut());
    let spool_metrics = SpoolMetrics::default();
    spool_metrics.register(metrics.registry_mut());
    let spool = Arc::new(
        EventSpool::open(
            config.spool.config(config.storage_path.join("spool")),
            spool_metrics,
        )
        .context("opening the event spool")?,
    );
    let listener = sf_daemon::metrics::bind(config.metrics_address()).await?;
    match config.tls_settings() {
        Some(tls) => {
            let certs = sf_daemon::tls::CertStore::load(&tls).with_context(|| {
                format!("the agent's TLS certificate {}", tls.cert_path.display())
            })?;
            tokio::spawn(certs.clone().run_reloader(shutdown.clone()));
            let listener = sf_daemon::tls::TlsListener::new(listener, certs.server_config()?)
                .context("serving metrics over TLS")?;
            tokio::spawn(sf_daemon::metrics::serve_on(
                metrics.into_shared(),
                listener,
                shutdown.wait_owned(),
            ));
        }
        None => {
            tokio::spawn(sf_daemon::metrics::serve(
                metrics.into_shared(),
                listener,
                shutdown.wait_owned(),
            ));
        }
    }

    let hv = LibvirtHypervisor::connect(config.libvirt_uri.clone())
        .await
        .with_context(|| format!("SHAKENFIST_LIBVIRT_URI={}", config.libvirt_uri))?;
    let versions = hv.versions().await?;
    let mut lifecycle = config.lifecycle_settings();
    lifecycle.render.qemu_version = if versions.driver.eq_ignore_ascii_case("qemu") {
        versions.hypervisor_major_minor()
    } else {
        sf_agent::installed_qemu_version().await.and_then(|v| {
            let mut p = v.split('.');
            Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
        })
    };
    tracing::info!(libvirt = %versions.libvirt, driver = %versions.driver, hypervisor = %versions.hypervisor, "connected to libvirt");

    let mut net_config = HostNetConfig::new(
        settings.node_name.clone(),
        config.node_mesh_nic.clone(),
        config.node_mesh_ip,
        config.storage_path.join("hostnet"),
    );
    net_config.netns = config.node_netns.clone();
    net_config.egress_interface = config.node_egress_nic.clone();
    net_config.floating_netblock = Some(config.floating_network.clone());
    let net = NetlinkHostNet::new(net_config)?;

    let client = GatewayClient::from_host_list(
        &config.mariadb_gateway_hosts,
        &config.mariadb_gateway_secret,
        RetryPolicy::default(),
    )?;
    let drain = spool.spawn_drain(client.clone(), DrainConfig::default(), shutdown.clone())?;
    let agent = Agent::new(
        settings,
        Gateway::new(client),
        Lifecycle::new(hv, lifecycle),
        net,
        agent_metrics,
    );
    agent.set_event_spool(spool);
    let ran = agent.run(shutdown.clone()).await;
    shutdown.trigger();
    match drain.await {
        Ok(report) => tracing::info!(?report, "event spool drained"),
        Err(e) => tracing::warn!(error = %e, "the event spool drain task failed"),
    }
    ran?;
    tracing::info!("sf-agent stopped");
    Ok(())
}
