//! sf-api's configuration: `SHAKENFIST_*` environment variables, flags override.
//!
//! Contract: parsed and validated (exit 64 naming the key, see `sf_daemon::config`)
//! before any port is bound. Keys: `SHAKENFIST_API_PORT` (13000),
//! `SHAKENFIST_API_LISTEN` (0.0.0.0), `SHAKENFIST_MARIADB_GATEWAY_HOSTS`
//! (`host[:port]` list, default port 13005), `SHAKENFIST_MARIADB_GATEWAY_SECRET` (at
//! least 16 characters, shared with sf-database), `SHAKENFIST_API_WATCH_BOOKMARK_SECONDS`
//! (how often an idle watch that asked for bookmarks gets one, 10),
//! `SHAKENFIST_API_WATCH_TIMEOUT_SECONDS` (the longest a watch request lasts, 1800),
//! `SHAKENFIST_AUTH_SECRET_SEED` (required, at least 16 characters: the HS256 token
//! key), `SHAKENFIST_ZONE` (the token issuer, `sf`) and
//! `SHAKENFIST_API_TOKEN_DURATION` (token lifetime in seconds, 900), the TLS keys
//! (`SHAKENFIST_API_TLS_CERT_PATH` and `SHAKENFIST_API_TLS_KEY_PATH`, both or
//! neither: HTTPS when set; `SHAKENFIST_API_TLS_SELF_SIGNED` (false),
//! `SHAKENFIST_API_TLS_SANS` (`localhost,127.0.0.1`), `SHAKENFIST_API_TLS_RELOAD_SECONDS`
//! (60); see [`crate::tls`]), plus the shared logging keys.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sf_daemon::config::{ConfigError, TelemetryArgs, Validate};

use crate::tls::TlsSettings;

/// The configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sf-api",
    version,
    about = "Shaken Fist's Kubernetes-style API server"
)]
pub struct Config {
    /// HTTP port.
    #[arg(long, env = "SHAKENFIST_API_PORT", default_value_t = 13000)]
    pub api_port: u16,
    /// Address to listen on.
    #[arg(long, env = "SHAKENFIST_API_LISTEN", default_value = "0.0.0.0")]
    pub api_listen: IpAddr,
    /// sf-database instances, comma-separated `host[:port]` (default port 13005).
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_HOSTS",
        default_value = "127.0.0.1"
    )]
    pub mariadb_gateway_hosts: String,
    /// Shared secret sf-database expects.
    #[arg(
        long,
        env = "SHAKENFIST_MARIADB_GATEWAY_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub mariadb_gateway_secret: String,
    /// Seconds between bookmarks on an idle watch that asked for them.
    #[arg(
        long,
        env = "SHAKENFIST_API_WATCH_BOOKMARK_SECONDS",
        default_value_t = 10
    )]
    pub watch_bookmark_seconds: u64,
    /// The longest a watch request lasts, in seconds (clients then re-watch).
    #[arg(
        long,
        env = "SHAKENFIST_API_WATCH_TIMEOUT_SECONDS",
        default_value_t = 1800
    )]
    pub watch_timeout_seconds: u64,
    /// The secret tokens are signed with (HS256); required, at least 16 characters.
    #[arg(
        long,
        env = "SHAKENFIST_AUTH_SECRET_SEED",
        default_value = "",
        hide_env_values = true
    )]
    pub auth_secret_seed: String,
    /// The zone: the issuer of tokens.
    #[arg(long, env = "SHAKENFIST_ZONE", default_value = "sf")]
    pub zone: String,
    /// How long a token is valid, in seconds.
    #[arg(long, env = "SHAKENFIST_API_TOKEN_DURATION", default_value_t = 900)]
    pub api_token_duration: u64,
    /// The TLS certificate chain (PEM); with the key, sf-api serves HTTPS.
    #[arg(long, env = "SHAKENFIST_API_TLS_CERT_PATH")]
    pub api_tls_cert_path: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, env = "SHAKENFIST_API_TLS_KEY_PATH")]
    pub api_tls_key_path: Option<PathBuf>,
    /// Generate a self-signed certificate when neither TLS file exists.
    #[arg(long, env = "SHAKENFIST_API_TLS_SELF_SIGNED", default_value_t = false)]
    pub api_tls_self_signed: bool,
    /// The names (DNS names, IP addresses) a generated certificate is for.
    #[arg(
        long,
        env = "SHAKENFIST_API_TLS_SANS",
        default_value = "localhost,127.0.0.1"
    )]
    pub api_tls_sans: String,
    /// How often the TLS files are checked for a new certificate, in seconds (SIGHUP
    /// checks at once).
    #[arg(long, env = "SHAKENFIST_API_TLS_RELOAD_SECONDS", default_value_t = 60)]
    pub api_tls_reload_seconds: u64,
    /// The scheduler's settings, reported by `/admin/resources` (set them as for
    /// sf-cluster).
    #[command(flatten)]
    pub scheduler: sf_plan::args::SchedulerArgs,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Config {
    /// sf-api on 127.0.0.1 (its port chosen by whoever binds it) for an embedding
    /// process such as a test or a benchmark: these gateways, secret and signing seed,
    /// then `extra` flags (which may override any of them). Validated as at start-up.
    pub fn on_loopback(
        gateway_hosts: &str,
        gateway_secret: &str,
        auth_secret_seed: &str,
        extra: &[String],
    ) -> Result<Self, ConfigError> {
        let mut argv = vec![
            "sf-api".to_string(),
            "--api-listen=127.0.0.1".to_string(),
            "--api-port=0".to_string(),
            format!("--mariadb-gateway-hosts={gateway_hosts}"),
            format!("--mariadb-gateway-secret={gateway_secret}"),
            format!("--auth-secret-seed={auth_secret_seed}"),
        ];
        argv.extend_from_slice(extra);
        sf_daemon::config::try_parse_from(argv)
    }

    /// Where to listen.
    pub fn listen_address(&self) -> SocketAddr {
        SocketAddr::new(self.api_listen, self.api_port)
    }

    /// The bookmark interval.
    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_secs(self.watch_bookmark_seconds)
    }

    /// How long a token is valid.
    pub fn token_duration(&self) -> Duration {
        Duration::from_secs(self.api_token_duration)
    }

    /// The longest watch.
    pub fn max_watch(&self) -> Duration {
        Duration::from_secs(self.watch_timeout_seconds)
    }

    /// The TLS settings, when a certificate and key are configured.
    pub fn tls(&self) -> Option<TlsSettings> {
        let (cert_path, key_path) = (
            self.api_tls_cert_path.clone()?,
            self.api_tls_key_path.clone()?,
        );
        Some(TlsSettings {
            cert_path,
            key_path,
            self_signed: self.api_tls_self_signed,
            sans: self.tls_sans(),
            common_name: "sf-api".into(),
            reload_interval: Duration::from_secs(self.api_tls_reload_seconds),
            // A self-signed certificate is replaced 30 days before it expires.
            renew_before: Some(Duration::from_secs(30 * 86_400)),
        })
    }

    fn tls_sans(&self) -> Vec<String> {
        self.api_tls_sans
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some((key, problem)) = self.scheduler.invalid() {
            return Err(ConfigError::invalid(key, problem));
        }
        if self.mariadb_gateway_secret.len() < 16 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_MARIADB_GATEWAY_SECRET",
                "must be set to the secret of at least 16 characters that sf-database expects",
            ));
        }
        if self.auth_secret_seed.len() < 16 {
            return Err(ConfigError::invalid(
                "SHAKENFIST_AUTH_SECRET_SEED",
                "must be set to a secret of at least 16 characters (tokens are signed with it)",
            ));
        }
        if self.zone.is_empty() {
            return Err(ConfigError::invalid("SHAKENFIST_ZONE", "must not be empty"));
        }
        if !(1..=86_400).contains(&self.api_token_duration) {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_TOKEN_DURATION",
                format!("must be 1-86400 seconds, got {}", self.api_token_duration),
            ));
        }
        sf_daemon::config::parse_host_list(
            "SHAKENFIST_MARIADB_GATEWAY_HOSTS",
            &self.mariadb_gateway_hosts,
            sf_database_client::DEFAULT_PORT,
        )?;
        if !(1..=3600).contains(&self.watch_bookmark_seconds) {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_WATCH_BOOKMARK_SECONDS",
                format!("must be 1-3600, got {}", self.watch_bookmark_seconds),
            ));
        }
        if !(1..=86_400).contains(&self.watch_timeout_seconds) {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_WATCH_TIMEOUT_SECONDS",
                format!("must be 1-86400, got {}", self.watch_timeout_seconds),
            ));
        }
        match (&self.api_tls_cert_path, &self.api_tls_key_path) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "SHAKENFIST_API_TLS_KEY_PATH",
                    "must be set with SHAKENFIST_API_TLS_CERT_PATH",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "SHAKENFIST_API_TLS_CERT_PATH",
                    "must be set with SHAKENFIST_API_TLS_KEY_PATH",
                ));
            }
            _ => {}
        }
        if self.api_tls_cert_path.is_some() && self.api_tls_cert_path == self.api_tls_key_path {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_TLS_KEY_PATH",
                "must be a different file from SHAKENFIST_API_TLS_CERT_PATH",
            ));
        }
        let sans = self.tls_sans();
        if sans.is_empty() {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_TLS_SANS",
                "must name at least one DNS name or IP address",
            ));
        }
        if let Some(bad) = sans.iter().find(|s| {
            s.parse::<IpAddr>().is_err()
                && !s
                    .split('.')
                    .all(|label| sf_schema::validation::is_dns_label(label) || label == "*")
        }) {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_TLS_SANS",
                format!("{bad:?} is neither a DNS name nor an IP address"),
            ));
        }
        if !(1..=86_400).contains(&self.api_tls_reload_seconds) {
            return Err(ConfigError::invalid(
                "SHAKENFIST_API_TLS_RELOAD_SECONDS",
                format!("must be 1-86400, got {}", self.api_tls_reload_seconds),
            ));
        }
        self.telemetry.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "--mariadb-gateway-secret=0123456789abcdef";
    const SEED: &str = "--auth-secret-seed=fedcba9876543210";

    #[test]
    fn defaults() {
        let c: Config = sf_daemon::config::try_parse_from(["sf-api", SECRET, SEED]).unwrap();
        assert_eq!(c.zone, "sf");
        assert_eq!(c.token_duration(), Duration::from_secs(900));
        assert_eq!(c.api_port, 13000);
        assert_eq!(c.listen_address().to_string(), "0.0.0.0:13000");
        assert_eq!(c.bookmark_interval(), Duration::from_secs(10));
    }

    #[test]
    fn tls_needs_both_files_and_sane_names() {
        let c: Config = sf_daemon::config::try_parse_from(["sf-api", SECRET, SEED]).unwrap();
        assert!(c.tls().is_none(), "HTTP by default");
        let c: Config = sf_daemon::config::try_parse_from([
            "sf-api",
            SECRET,
            SEED,
            "--api-tls-cert-path=/etc/sf/cert.pem",
            "--api-tls-key-path=/etc/sf/key.pem",
            "--api-tls-self-signed",
        ])
        .unwrap();
        let tls = c.tls().unwrap();
        assert!(tls.self_signed);
        assert_eq!(tls.sans, ["localhost", "127.0.0.1"]);
        assert_eq!(tls.reload_interval, Duration::from_secs(60));
        for (args, key) in [
            (
                vec!["--api-tls-cert-path=/c.pem"],
                "SHAKENFIST_API_TLS_KEY_PATH",
            ),
            (
                vec!["--api-tls-key-path=/k.pem"],
                "SHAKENFIST_API_TLS_CERT_PATH",
            ),
            (
                vec!["--api-tls-sans=localhost,bad name"],
                "SHAKENFIST_API_TLS_SANS",
            ),
            (
                vec!["--api-tls-reload-seconds=0"],
                "SHAKENFIST_API_TLS_RELOAD_SECONDS",
            ),
        ] {
            let mut argv = vec!["sf-api", SECRET, SEED];
            argv.extend(args);
            let err = sf_daemon::config::try_parse_from::<Config, _, _>(argv).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = sf_daemon::config::try_parse_from::<Config, _, _>(["sf-api"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("SHAKENFIST_MARIADB_GATEWAY_SECRET"),
            "{err}"
        );
        let err =
            sf_daemon::config::try_parse_from::<Config, _, _>(["sf-api", SECRET]).unwrap_err();
        assert!(
            err.to_string().contains("SHAKENFIST_AUTH_SECRET_SEED"),
            "{err}"
        );
        let err = sf_daemon::config::try_parse_from::<Config, _, _>([
            "sf-api",
            SECRET,
            SEED,
            "--api-token-duration=0",
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("SHAKENFIST_API_TOKEN_DURATION"),
            "{err}"
        );
        let err = sf_daemon::config::try_parse_from::<Config, _, _>([
            "sf-api",
            SECRET,
            SEED,
            "--mariadb-gateway-hosts=a,,b",
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("SHAKENFIST_MARIADB_GATEWAY_HOSTS"),
            "{err}"
        );
        let err = sf_daemon::config::try_parse_from::<Config, _, _>([
            "sf-api",
            SECRET,
            SEED,
            "--watch-bookmark-seconds=0",
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("SHAKENFIST_API_WATCH_BOOKMARK_SECONDS"),
            "{err}"
        );
    }
}
