//! sf-cluster's configuration: `SHAKENFIST_*` environment variables and flags.
//!
//! Contract: every key has a flag named after it and Shaken Fist's default; [`Config`]
//! implements [`Validate`] so bad values exit 64 naming the key before any port is
//! bound. The sub-configurations ([`Config::scheduler`], [`Config::node`],
//! [`Config::reaper`], ...) translate the flat keys into the structs the plan crate and
//! the maintenance services take.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sf_daemon::config::{ConfigError, TelemetryArgs, Validate};
use sf_plan::{NodeConfig, SchedulerConfig};

use crate::maintenance::{CompactionConfig, PurgeConfig, ReaperConfig, RetentionConfig};

/// The floating network's well-known uid.
pub use sf_schema::network::FLOATING_NETWORK_UID;

/// sf-cluster: the Shaken Fist controllers and maintenance services.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sf-cluster", version)]
pub struct Config {
    /// sf-api's base URL.
    #[arg(
        long,
        env = "SHAKENFIST_API_URL",
        default_value = "http://127.0.0.1:13000"
    )]
    pub api_url: String,
    /// A PEM CA file to trust for an `https://` sf-api (e.g. its self-signed
    /// certificate) instead of the system's trust store.
    #[arg(long, env = "SHAKENFIST_API_CA_FILE")]
    pub api_ca_file: Option<PathBuf>,
    /// The namespace of the service key (the admin namespace).
    #[arg(long, env = "SHAKENFIST_CLUSTER_NAMESPACE", default_value = "system")]
    pub cluster_namespace: String,
    /// The service key (clear) used to authenticate to sf-api.
    #[arg(long, env = "SHAKENFIST_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// A ready token instead of a key (tests, or an API without authentication).
    #[arg(long, env = "SHAKENFIST_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// sf-database endpoints, comma-separated `host[:port]`.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_HOSTS",
        default_value = "127.0.0.1:13005"
    )]
    pub mariadb_gateway_hosts: String,
    /// The shared secret of sf-database.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_SECRET",
        hide_env_values = true
    )]
    pub mariadb_gateway_secret: String,
    /// Address the metrics server listens on.
    #[arg(
        long,
        env = "SHAKENFIST_CLUSTER_METRICS_LISTEN",
        default_value = "127.0.0.1"
    )]
    pub cluster_metrics_listen: IpAddr,
    /// Port of the metrics server (0: any free port).
    #[arg(long, env = "SHAKENFIST_CLUSTER_METRICS_PORT", default_value_t = 13007)]
    pub cluster_metrics_port: u16,
    /// This sf-cluster's name in the lease (default: host name and pid).
    #[arg(long, env = "SHAKENFIST_NODE_NAME")]
    pub node_name: Option<String>,
    /// Lease time to live, seconds; the holder refreshes at a third of it.
    #[arg(long, env = "SHAKENFIST_CLUSTER_LEASE_TTL", default_value_t = 15)]
    pub cluster_lease_ttl: u32,

    /// The scheduler's settings (shared with sf-api's `/admin/resources`).
    #[command(flatten)]
    pub scheduler_args: sf_plan::args::SchedulerArgs,
    /// Seconds without a check-in before a node is missing (10× that: error).
    #[arg(long, env = "SHAKENFIST_NODE_CHECKIN_MAXIMUM", default_value_t = 120)]
    pub node_checkin_maximum: i64,
    /// Multiplier of NODE_CHECKIN_MAXIMUM after which a missing node is in error.
    #[arg(long, env = "SHAKENFIST_NODE_ERROR_MULTIPLIER", default_value_t = 10)]
    pub node_error_multiplier: i64,

    /// The floating network's netblock (created at start-up when missing).
    #[arg(
        long,
        env = "SHAKENFIST_FLOATING_NETWORK",
        default_value = "192.168.20.0/24"
    )]
    pub floating_network: String,

    /// Reaper period, seconds.
    #[arg(
        long,
        env = "SHAKENFIST_CLUSTER_OP_REAPER_INTERVAL",
        default_value_t = 60
    )]
    pub cluster_op_reaper_interval: u64,
    /// A claim older than this (seconds, no heartbeat) is re-queued.
    #[arg(
        long,
        env = "SHAKENFIST_CLUSTER_OP_STUCK_THRESHOLD",
        default_value_t = 1800
    )]
    pub cluster_op_stuck_threshold: u64,
    /// Claims before a stuck operation is rejected.
    #[arg(long, env = "SHAKENFIST_CLUSTER_OP_MAX_ATTEMPTS", default_value_t = 5)]
    pub cluster_op_max_attempts: u32,
    /// Seconds after which complete/error/abort operations are purged.
    #[arg(long, env = "SHAKENFIST_CLEANER_DELAY", default_value_t = 3600)]
    pub cleaner_delay: u64,
    /// Seconds a Blob nothing uses is kept before its files are removed from the nodes.
    #[arg(long, env = "SHAKENFIST_BLOB_GC_GRACE", default_value_t = 3600)]
    pub blob_gc_grace: u64,
    /// Seconds after a refused (still in use) or failed blob file removal before it is
    /// tried again.
    #[arg(long, env = "SHAKENFIST_BLOB_GC_RETRY", default_value_t = 600)]
    pub blob_gc_retry: u64,
    /// Seconds a collected Blob (its files gone from every node) is kept as a record
    /// before it is deleted; keep it above SHAKENFIST_CLEANER_DELAY.
    #[arg(long, env = "SHAKENFIST_BLOB_GC_RECORD", default_value_t = 86_400)]
    pub blob_gc_record: u64,
    /// Seconds a screenshot (a Blob kept in MariaDB, on no node) lives before it is
    /// deleted with its bytes.
    #[arg(
        long,
        env = "SHAKENFIST_SCREENSHOT_RETENTION",
        default_value_t = 86_400
    )]
    pub screenshot_retention: u64,
    /// Change-log compaction period, seconds.
    #[arg(
        long,
        env = "SHAKENFIST_CHANGE_LOG_COMPACT_INTERVAL",
        default_value_t = 300
    )]
    pub change_log_compact_interval: u64,
    /// Newest change-log revisions always kept.
    #[arg(
        long,
        env = "SHAKENFIST_CHANGE_LOG_KEEP_REVISIONS",
        default_value_t = 1000
    )]
    pub change_log_keep_revisions: u64,
    /// Change-log history always kept, seconds.
    #[arg(
        long,
        env = "SHAKENFIST_CHANGE_LOG_KEEP_SECONDS",
        default_value_t = 3600
    )]
    pub change_log_keep_seconds: u64,
    /// Event retention period, seconds.
    #[arg(long, env = "SHAKENFIST_EVENT_PRUNE_INTERVAL", default_value_t = 3600)]
    pub event_prune_interval: u64,

    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let url: Result<http::Uri, _> = self.api_url.parse();
        match url {
            Ok(u) if u.scheme().is_some() && u.authority().is_some() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "SHAKENFIST_API_URL",
                    format!("expected scheme://host[:port], got {:?}", self.api_url),
                ));
            }
        }
        if let Some(path) = &self.api_ca_file
            && !path.is_file()
        {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_CA_FILE",
                format!("{} is not a readable file", path.display()),
            ));
        }
        if self.cluster_key.is_none() && self.cluster_token.is_none() {
            return Err(ConfigError::invalid(
                "SHAKENFIST_CLUSTER_KEY",
                "is required (or SHAKENFIST_CLUSTER_TOKEN)",
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
        if self.cluster_lease_ttl < 3 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_CLUSTER_LEASE_TTL",
                format!("must be at least 3 seconds, got {}", self.cluster_lease_ttl),
            ));
        }
        if let Some((key, problem)) = self.scheduler_args.invalid() {
            return Err(ConfigError::invalid(key, problem));
        }
        if self.node_checkin_maximum < 1 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_NODE_CHECKIN_MAXIMUM",
                "must be at least 1 second",
            ));
        }
        if self.node_error_multiplier < 1 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_NODE_ERROR_MULTIPLIER",
                "must be at least 1",
            ));
        }
        if sf_schema::validation::parse_netblock(&self.floating_network).is_err() {
            return Err(ConfigError::invalid(
                "SHAKENFIST_FLOATING_NETWORK",
                format!("not a netblock: {:?}", self.floating_network),
            ));
        }
        let periods = [
            (
                "SHAKENFIST_CLUSTER_OP_REAPER_INTERVAL",
                self.cluster_op_reaper_interval,
            ),
            (
                "SHAKENFIST_CHANGE_LOG_COMPACT_INTERVAL",
                self.change_log_compact_interval,
            ),
            ("SHAKENFIST_EVENT_PRUNE_INTERVAL", self.event_prune_interval),
        ];
        for (key, value) in periods {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1 second"));
            }
        }
        if self.cluster_op_max_attempts == 0 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_CLUSTER_OP_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }
        self.telemetry.validate()
    }
}

impl Config {
    /// The metrics server's address.
    pub fn metrics_address(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_metrics_listen, self.cluster_metrics_port)
    }

    /// The scheduler settings.
    pub fn scheduler(&self) -> SchedulerConfig {
        self.scheduler_args.config()
    }

    /// The node timeline settings.
    pub fn node(&self) -> NodeConfig {
        NodeConfig {
            checkin_maximum_secs: self.node_checkin_maximum,
            error_multiplier: self.node_error_multiplier,
        }
    }

    /// The stuck-job reaper's settings.
    pub fn reaper(&self) -> ReaperConfig {
        ReaperConfig {
            interval: Duration::from_secs(self.cluster_op_reaper_interval),
            stuck_threshold: Duration::from_secs(self.cluster_op_stuck_threshold),
            max_attempts: self.cluster_op_max_attempts,
        }
    }

    /// The change-log compaction settings.
    pub fn compaction(&self) -> CompactionConfig {
        CompactionConfig {
            interval: Duration::from_secs(self.change_log_compact_interval),
            keep_revisions: self.change_log_keep_revisions,
            keep: Duration::from_secs(self.change_log_keep_seconds),
        }
    }

    /// The event retention settings (Shaken Fist's ages per event type).
    pub fn retention(&self) -> RetentionConfig {
        RetentionConfig {
            interval: Duration::from_secs(self.event_prune_interval),
            ..RetentionConfig::default()
        }
    }

    /// The terminal-operation purge settings.
    pub fn purge(&self) -> PurgeConfig {
        PurgeConfig {
            interval: Duration::from_secs(self.cluster_op_reaper_interval),
            cleaner_delay: Duration::from_secs(self.cleaner_delay),
        }
    }

    /// The lease holder's name: `SHAKENFIST_NODE_NAME` or `<host>-<pid>`.
    pub fn holder_name(&self) -> String {
        let base = self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "sf-cluster".to_owned())
        });
        format!("{base}-{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec![
            "sf-cluster",
            "--cluster-token=t",
            "--mariadb-gateway-secret=0123456789abcdef",
        ];
        argv.extend_from_slice(args);
        sf_daemon::config::try_parse_from::<Config, _, _>(argv)
    }

    #[test]
    fn defaults_are_shaken_fists() {
        let c = parse(&[]).expect("defaults parse");
        assert_eq!(c.cluster_metrics_port, 13007);
        assert_eq!(c.scheduler(), SchedulerConfig::default());
        assert_eq!(c.node(), NodeConfig::default());
        let r = c.reaper();
        assert_eq!(r.stuck_threshold, Duration::from_secs(1800));
        assert_eq!(r.max_attempts, 5);
        assert_eq!(r.interval, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_name_their_key() {
        let table = [
            (vec!["--api-url=nope"], "SHAKENFIST_API_URL"),
            (
                vec!["--api-ca-file=/nonexistent/ca.pem"],
                "SHAKENFIST_API_CA_FILE",
            ),
            (
                vec!["--cpu-overcommit-ratio=-1"],
                "SHAKENFIST_CPU_OVERCOMMIT_RATIO",
            ),
            (
                vec!["--floating-network=10.0.0.1"],
                "SHAKENFIST_FLOATING_NETWORK",
            ),
            (
                vec!["--cluster-op-max-attempts=0"],
                "SHAKENFIST_CLUSTER_OP_MAX_ATTEMPTS",
            ),
        ];
        for (args, key) in table {
            let err = parse(&args).expect_err("invalid");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
