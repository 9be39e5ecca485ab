//! sf-agent configuration: `SHAKENFIST_*` environment variables and flags.
//!
//! Contract: [`Config`] is parsed with `sf_daemon::config::parse_or_exit` (bad values
//! exit 64 naming the key). [`Config::agent_settings`] turns it into the
//! [`crate::agent::AgentSettings`] the agent runs with, and
//! [`Config::lifecycle_settings`] into the instance lifecycle's.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sf_daemon::config::{ConfigError, TelemetryArgs, Validate};
use sf_schema::addresses::Cidr;

use crate::domain_xml::{DomainType, OvmfPaths, RenderSettings};
use crate::instance::LifecycleSettings;

/// The agent's default metrics port.
pub const DEFAULT_METRICS_PORT: u16 = 13008;

/// The default largest artifact download (64 GiB).
pub const DEFAULT_ARTIFACT_MAX_BYTES: u64 = 64 << 30;

/// sf-agent: the Shaken Fist hypervisor agent.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sf-agent", version)]
pub struct Config {
    /// This node's name (default: the host name).
    #[arg(long, env = "SHAKENFIST_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's UUID; else `<STORAGE_PATH>/node_uuid`, else generated and stored there.
    #[arg(long, env = "SHAKENFIST_NODE_UUID")]
    pub node_uuid: Option<String>,
    /// A network namespace every host networking action happens in (two nodes on one
    /// machine); the agent itself stays in the root namespace.
    #[arg(long, env = "SHAKENFIST_NODE_NETNS")]
    pub node_netns: Option<String>,
    /// The NIC carrying VXLAN traffic (inside NODE_NETNS when set).
    #[arg(long, env = "SHAKENFIST_NODE_MESH_NIC", default_value = "eth0")]
    pub node_mesh_nic: String,
    /// This node's address on the mesh (its Node status.address).
    #[arg(long, env = "SHAKENFIST_NODE_MESH_IP")]
    pub node_mesh_ip: Ipv4Addr,
    /// The network node's egress NIC (a dead-end veth in tests).
    #[arg(long, env = "SHAKENFIST_NODE_EGRESS_NIC")]
    pub node_egress_nic: Option<String>,
    /// The floating network (`FLOATING_NETWORK`).
    #[arg(
        long,
        env = "SHAKENFIST_FLOATING_NETWORK",
        default_value = "192.168.20.0/24"
    )]
    pub floating_network: String,
    /// Register as the network node (role `network`) when creating the Node.
    #[arg(long, env = "SHAKENFIST_NODE_IS_NETWORK_NODE", default_value_t = false)]
    pub node_is_network_node: bool,
    /// Where instance files live.
    #[arg(
        long,
        env = "SHAKENFIST_STORAGE_PATH",
        default_value = "/srv/shakenfist"
    )]
    pub storage_path: PathBuf,
    /// libvirt connection URI.
    #[arg(long, env = "SHAKENFIST_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// Domain type: kvm, qemu (TCG) or test (the test driver).
    #[arg(long, env = "SHAKENFIST_LIBVIRT_DOMAIN_TYPE", default_value = "kvm")]
    pub libvirt_domain_type: String,
    /// OVMF code for UEFI instances.
    #[arg(
        long,
        env = "SHAKENFIST_OVMF_CODE",
        default_value = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    )]
    pub ovmf_code: PathBuf,
    /// OVMF NVRAM template.
    #[arg(
        long,
        env = "SHAKENFIST_OVMF_VARS",
        default_value = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    )]
    pub ovmf_vars: PathBuf,
    /// OVMF secure-boot code.
    #[arg(
        long,
        env = "SHAKENFIST_OVMF_SECURE_CODE",
        default_value = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    )]
    pub ovmf_secure_code: PathBuf,
    /// OVMF secure-boot NVRAM template.
    #[arg(
        long,
        env = "SHAKENFIST_OVMF_SECURE_VARS",
        default_value = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    )]
    pub ovmf_secure_vars: PathBuf,
    /// Address VNC/SPICE consoles listen on.
    #[arg(long, env = "SHAKENFIST_VDI_LISTEN", default_value = "0.0.0.0")]
    pub vdi_listen: String,
    /// Metrics port.
    #[arg(long, env = "SHAKENFIST_AGENT_METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub agent_metrics_port: u16,
    /// Metrics listen address.
    #[arg(
        long,
        env = "SHAKENFIST_AGENT_METRICS_LISTEN",
        default_value = "127.0.0.1"
    )]
    pub agent_metrics_listen: std::net::IpAddr,
    /// Serve the metrics endpoint over HTTPS with the agent's certificate, a
    /// self-signed one generated (and renewed) under `<STORAGE_PATH>/tls/` unless the
    /// files below hold an operator's.
    #[arg(long, env = "SHAKENFIST_AGENT_TLS", default_value_t = false)]
    pub agent_tls: bool,
    /// The agent's certificate (PEM); default `<STORAGE_PATH>/tls/agent.crt`.
    #[arg(long, env = "SHAKENFIST_AGENT_TLS_CERT_PATH")]
    pub agent_tls_cert_path: Option<PathBuf>,
    /// The agent's private key (PEM); default `<STORAGE_PATH>/tls/agent.key`.
    #[arg(long, env = "SHAKENFIST_AGENT_TLS_KEY_PATH")]
    pub agent_tls_key_path: Option<PathBuf>,
    /// A self-signed agent certificate is replaced this many days before it expires.
    #[arg(long, env = "SHAKENFIST_AGENT_TLS_RENEW_DAYS", default_value_t = 30)]
    pub agent_tls_renew_days: u32,
    /// sf-database gateways, `host[:port]` comma separated.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_HOSTS",
        default_value = "127.0.0.1"
    )]
    pub mariadb_gateway_hosts: String,
    /// The gateway's shared secret.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_SECRET",
        hide_env_values = true
    )]
    pub mariadb_gateway_secret: String,
    /// Node heartbeat interval, seconds.
    #[arg(
        long,
        env = "SHAKENFIST_AGENT_HEARTBEAT_INTERVAL",
        default_value_t = 30
    )]
    pub agent_heartbeat_interval: u64,
    /// Operations executed at once.
    #[arg(long, env = "SHAKENFIST_AGENT_MAX_CONCURRENCY", default_value_t = 4)]
    pub agent_max_concurrency: u32,
    /// Domain state polling interval, seconds.
    #[arg(long, env = "SHAKENFIST_AGENT_POLL_INTERVAL", default_value_t = 5)]
    pub agent_poll_interval: u64,
    /// How long shutdown waits for in-flight operations, seconds.
    #[arg(long, env = "SHAKENFIST_AGENT_DRAIN_TIMEOUT", default_value_t = 60)]
    pub agent_drain_timeout: u64,
    /// Seconds without a heartbeat after which a node counts as gone.
    #[arg(long, env = "SHAKENFIST_NODE_CHECKIN_MAXIMUM", default_value_t = 120)]
    pub node_checkin_maximum: u64,
    /// The DNS zone (instance names are `<name>.<namespace>.<zone>`).
    #[arg(long, env = "SHAKENFIST_ZONE", default_value = "sf")]
    pub zone: String,
    /// The largest MTU of the hypervisor network; VXLAN NICs get 50 less.
    #[arg(long, env = "SHAKENFIST_MAX_HYPERVISOR_MTU", default_value_t = 8000)]
    pub max_hypervisor_mtu: u32,
    /// Fault injection for tests: wait this many milliseconds after claiming an
    /// operation before running it (so a test can kill the agent mid-operation).
    /// Never set in production.
    #[arg(
        long,
        env = "SHAKENFIST_AGENT_TEST_OPERATION_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub agent_test_operation_delay_ms: u64,
    /// The largest artifact an `artifact_fetch` downloads, bytes (a bigger one fails
    /// before it can fill the disk).
    #[arg(
        long,
        env = "SHAKENFIST_ARTIFACT_MAX_BYTES",
        default_value_t = DEFAULT_ARTIFACT_MAX_BYTES
    )]
    pub artifact_max_bytes: u64,
    /// Internal address blocks (comma-separated CIDRs, e.g. a local mirror's
    /// `10.0.5.0/24`) that a tenant's artifacts may be fetched from; by default none:
    /// a tenant's source must resolve to external addresses only.
    #[arg(
        long,
        env = "SHAKENFIST_ARTIFACT_TENANT_ALLOWED_CIDRS",
        default_value = ""
    )]
    pub artifact_tenant_allowed_cidrs: String,
    /// Address blocks (comma-separated CIDRs) a tenant's artifacts are never fetched
    /// from, internal or not, whatever the allowed list says: the control plane's
    /// public addresses (sf-api, sf-database, MariaDB). This host's own addresses are
    /// always refused.
    #[arg(
        long,
        env = "SHAKENFIST_ARTIFACT_TENANT_DENIED_CIDRS",
        default_value = ""
    )]
    pub artifact_tenant_denied_cidrs: String,
    /// The event spool (`<STORAGE_PATH>/spool`).
    #[command(flatten)]
    pub spool: sf_database_client::spool::SpoolArgs,
    /// Shared logging options.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.spool.validate()?;
        if DomainType::parse(&self.libvirt_domain_type).is_none() {
            return Err(ConfigError::invalid(
                "SHAKENFIST_LIBVIRT_DOMAIN_TYPE",
                format!(
                    "must be kvm, qemu or test, got {:?}",
                    self.libvirt_domain_type
                ),
            ));
        }
        if let Some(name) = &self.node_name
            && (name.is_empty() || name.len() > 63 || name.contains('/'))
        {
            return Err(ConfigError::invalid(
                "SHAKENFIST_NODE_NAME",
                format!("must be 1-63 characters without '/', got {name:?}"),
            ));
        }
        if let Some(uuid) = &self.node_uuid
            && uuid::Uuid::parse_str(uuid).is_err()
        {
            return Err(ConfigError::invalid(
                "SHAKENFIST_NODE_UUID",
                format!("must be a UUID, got {uuid:?}"),
            ));
        }
        if self.mariadb_gateway_secret.len() < 16 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_MARIADB_GATEWAY_SECRET",
                "must be at least 16 characters",
            ));
        }
        sf_daemon::config::parse_host_list(
            "SHAKENFIST_MARIADB_GATEWAY_HOSTS",
            &self.mariadb_gateway_hosts,
            sf_database_client::DEFAULT_PORT,
        )?;
        self.artifact_tenant_allowed()?;
        self.artifact_tenant_denied()?;
        for (key, value) in [
            (
                "SHAKENFIST_AGENT_HEARTBEAT_INTERVAL",
                self.agent_heartbeat_interval,
            ),
            ("SHAKENFIST_AGENT_POLL_INTERVAL", self.agent_poll_interval),
            ("SHAKENFIST_NODE_CHECKIN_MAXIMUM", self.node_checkin_maximum),
            ("SHAKENFIST_ARTIFACT_MAX_BYTES", self.artifact_max_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.agent_max_concurrency == 0 || self.agent_max_concurrency > 256 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_AGENT_MAX_CONCURRENCY",
                format!("must be 1-256, got {}", self.agent_max_concurrency),
            ));
        }
        if self.agent_metrics_port == 0 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_AGENT_METRICS_PORT",
                "must be 1-65535, got 0",
            ));
        }
        if !(1..=365).contains(&self.agent_tls_renew_days) {
            return Err(ConfigError::invalid(
                "SHAKENFIST_AGENT_TLS_RENEW_DAYS",
                format!("must be 1-365, got {}", self.agent_tls_renew_days),
            ));
        }
        if !(1280..=65535).contains(&self.max_hypervisor_mtu) {
            return Err(ConfigError::invalid(
                "SHAKENFIST_MAX_HYPERVISOR_MTU",
                format!("must be 1280-65535, got {}", self.max_hypervisor_mtu),
            ));
        }
        self.telemetry.validate()
    }
}

/// The host name from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Config {
    /// The node name: the configured one or the host name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(hostname)
    }

    /// The metrics address.
    pub fn metrics_address(&self) -> SocketAddr {
        SocketAddr::new(self.agent_metrics_listen, self.agent_metrics_port)
    }

    /// The metrics endpoint's TLS, when `SHAKENFIST_AGENT_TLS` is on: the agent's
    /// certificate for its node name, mesh address and host name, checked hourly and
    /// renewed `SHAKENFIST_AGENT_TLS_RENEW_DAYS` before it expires.
    pub fn tls_settings(&self) -> Option<sf_daemon::tls::TlsSettings> {
        if !self.agent_tls {
            return None;
        }
        let dir = self.storage_path.join("tls");
        let mut sans = vec![
            self.node_name(),
            hostname(),
            self.node_mesh_ip.to_string(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        sans.sort();
        sans.dedup();
        Some(sf_daemon::tls::TlsSettings {
            cert_path: self
                .agent_tls_cert_path
                .clone()
                .unwrap_or_else(|| dir.join("agent.crt")),
            key_path: self
                .agent_tls_key_path
                .clone()
                .unwrap_or_else(|| dir.join("agent.key")),
            self_signed: true,
            sans,
            common_name: format!("sf-agent {}", self.node_name()),
            reload_interval: Duration::from_secs(3600),
            renew_before: Some(Duration::from_secs(
                u64::from(self.agent_tls_renew_days) * 86_400,
            )),
        })
    }

    /// The domain rendering settings (the QEMU version is filled in at start).
    pub fn render_settings(&self) -> RenderSettings {
        RenderSettings {
            domain_type: DomainType::parse(&self.libvirt_domain_type).unwrap_or(DomainType::Kvm),
            ovmf: OvmfPaths {
                code: self.ovmf_code.clone(),
                vars: self.ovmf_vars.clone(),
                secure_code: self.ovmf_secure_code.clone(),
                secure_vars: self.ovmf_secure_vars.clone(),
            },
            qemu_version: None,
            vdi_listen: self.vdi_listen.clone(),
        }
    }

    /// The lifecycle settings.
    pub fn lifecycle_settings(&self) -> LifecycleSettings {
        LifecycleSettings::new(self.storage_path.clone(), self.render_settings())
    }

    /// `SHAKENFIST_ARTIFACT_TENANT_ALLOWED_CIDRS` as blocks.
    pub fn artifact_tenant_allowed(&self) -> Result<Vec<Cidr>, ConfigError> {
        cidr_list(
            "SHAKENFIST_ARTIFACT_TENANT_ALLOWED_CIDRS",
            &self.artifact_tenant_allowed_cidrs,
        )
    }

    /// `SHAKENFIST_ARTIFACT_TENANT_DENIED_CIDRS` as blocks.
    pub fn artifact_tenant_denied(&self) -> Result<Vec<Cidr>, ConfigError> {
        cidr_list(
            "SHAKENFIST_ARTIFACT_TENANT_DENIED_CIDRS",
            &self.artifact_tenant_denied_cidrs,
        )
    }

    /// The agent settings.
    pub fn agent_settings(&self, node_uuid: String) -> crate::agent::AgentSettings {
        crate::agent::AgentSettings {
            node_name: self.node_name(),
            node_uuid,
            mesh_address: self.node_mesh_ip,
            network_node_role: self.node_is_network_node,
            storage_path: self.storage_path.clone(),
            heartbeat_interval: Duration::from_secs(self.agent_heartbeat_interval),
            poll_interval: Duration::from_secs(self.agent_poll_interval),
            max_concurrency: self.agent_max_concurrency,
            drain_timeout: Duration::from_secs(self.agent_drain_timeout),
            checkin_maximum: Duration::from_secs(self.node_checkin_maximum),
            zone: self.zone.clone(),
            mtu: self.max_hypervisor_mtu - 50,
            operation_delay: Duration::from_millis(self.agent_test_operation_delay_ms),
            artifact_max_bytes: self.artifact_max_bytes,
            // Validated at start-up.
            artifact_tenant_allowed: self.artifact_tenant_allowed().unwrap_or_default(),
            artifact_tenant_denied: self.artifact_tenant_denied().unwrap_or_default(),
            ..crate::agent::AgentSettings::default()
        }
    }
}

/// A comma-separated CIDR list (empty entries ignored); a bad block names `key`.
fn cidr_list(key: &'static str, text: &str) -> Result<Vec<Cidr>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|block| Cidr::parse(block).map_err(|why| ConfigError::invalid(key, why)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let base = [
            "sf-agent",
            "--node-mesh-ip=10.0.0.1",
            "--mariadb-gateway-secret=0123456789abcdef",
        ];
        sf_daemon::config::try_parse_from(base.iter().chain(args.iter()).copied())
    }

    #[test]
    fn defaults_follow_shaken_fist() {
        let c = parse(&[]).expect("config");
        assert_eq!(c.libvirt_uri, "qemu:///system");
        assert_eq!(c.storage_path, PathBuf::from("/srv/shakenfist"));
        assert_eq!(c.agent_heartbeat_interval, 30);
        assert_eq!(c.agent_metrics_port, DEFAULT_METRICS_PORT);
        let s = c.agent_settings("u".into());
        assert_eq!(s.mtu, 7950);
        assert!(!c.node_name().is_empty());
    }

    #[test]
    fn bad_values_name_their_keys() {
        let err = parse(&["--libvirt-domain-type=xen"]).expect_err("xen");
        assert!(
            err.to_string().starts_with(
                "invalid configuration: SHAKENFIST_LIBVIRT_DOMAIN_TYPE (--libvirt-domain-type)"
            ),
            "{err}"
        );
        let err = parse(&["--node-uuid=nope"]).expect_err("uuid");
        assert!(err.to_string().contains("SHAKENFIST_NODE_UUID"), "{err}");
        let err = parse(&["--agent-max-concurrency=0"]).expect_err("zero");
        assert!(
            err.to_string().contains("SHAKENFIST_AGENT_MAX_CONCURRENCY"),
            "{err}"
        );
        let err = parse(&["--mariadb-gateway-hosts=a,,b"]).expect_err("hosts");
        assert!(
            err.to_string().contains("SHAKENFIST_MARIADB_GATEWAY_HOSTS"),
            "{err}"
        );
        let err = parse(&["--artifact-tenant-allowed-cidrs=10.0.5.0/24,10.0.6.1/24"])
            .expect_err("host bits");
        assert!(
            err.to_string()
                .contains("SHAKENFIST_ARTIFACT_TENANT_ALLOWED_CIDRS")
                && err.to_string().contains("host bits"),
            "{err}"
        );
    }

    #[test]
    fn tenant_mirrors_are_allowed_by_block() {
        assert!(
            parse(&[])
                .expect("config")
                .agent_settings("u".into())
                .artifact_tenant_allowed
                .is_empty()
        );
        let c =
            parse(&["--artifact-tenant-allowed-cidrs= 10.0.5.0/24, fd00:5::/64"]).expect("config");
        let blocks: Vec<String> = c
            .agent_settings("u".into())
            .artifact_tenant_allowed
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(blocks, ["10.0.5.0/24", "fd00:5::/64"]);
        let c = parse(&["--artifact-tenant-denied-cidrs=203.0.113.10"]).expect("config");
        assert_eq!(
            c.agent_settings("u".into()).artifact_tenant_denied,
            [Cidr::parse("203.0.113.10/32").expect("a block")]
        );
        let err = parse(&["--artifact-tenant-denied-cidrs=public"]).expect_err("not a block");
        assert!(
            err.to_string()
                .contains("SHAKENFIST_ARTIFACT_TENANT_DENIED_CIDRS"),
            "{err}"
        );
    }
}
