//! Typed daemon configuration from `SHAKENFIST_<KEY>` environment variables and flags.
//!
//! Contract:
//!
//! - Each daemon declares its configuration as a [`clap::Parser`] struct whose fields use
//!   `#[arg(long, env = "SHAKENFIST_<KEY>", default_value...)]`. The environment variable
//!   supplies the value and a command-line flag overrides it. Flags are named after the
//!   key: `SHAKENFIST_MARIADB_GATEWAY_PORT` is `--mariadb-gateway-port`.
//! - The daemon implements [`Validate`] for cross-field and semantic checks and calls
//!   [`parse_or_exit`] first thing in `main`, before any port is bound.
//! - `--help` and `--version` print and exit 0. Any other failure prints one message
//!   that names the key as both environment variable and flag, e.g.
//!   `invalid configuration: SHAKENFIST_MARIADB_GATEWAY_PORT (--mariadb-gateway-port):
//!   must be 1-65535, got 0`, and exits with [`EX_USAGE`] (64).
//! - Options every daemon shares live in [`TelemetryArgs`], to be `#[command(flatten)]`ed.
//!   The OTLP endpoint is not a Shaken Fist key: it is the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`, read by [`crate::telemetry`].
//!
//! ```
//! use clap::Parser;
//! use sf_daemon::config::{self, ConfigError, TelemetryArgs, Validate};
//!
//! /// sf-example: an example daemon.
//! #[derive(Parser, Debug)]
//! struct Config {
//!     /// Port the gRPC server listens on.
//!     #[arg(long, env = "SHAKENFIST_MARIADB_GATEWAY_PORT", default_value_t = 13005)]
//!     mariadb_gateway_port: u16,
//!     #[command(flatten)]
//!     telemetry: TelemetryArgs,
//! }
//!
//! impl Validate for Config {
//!     fn validate(&self) -> Result<(), ConfigError> {
//!         if self.mariadb_gateway_port == 0 {
//!             return Err(ConfigError::invalid(
//!                 "SHAKENFIST_MARIADB_GATEWAY_PORT",
//!                 format!("must be 1-65535, got {}", self.mariadb_gateway_port),
//!             ));
//!         }
//!         self.telemetry.validate()
//!     }
//! }
//!
//! // In main: `let config: Config = config::parse_or_exit();`
//! let err = config::try_parse_from::<Config, _, _>(["sf-example", "--mariadb-gateway-port", "0"])
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "invalid configuration: SHAKENFIST_MARIADB_GATEWAY_PORT (--mariadb-gateway-port): \
//!      must be 1-65535, got 0"
//! );
//! ```

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use tracing_subscriber::EnvFilter;

use crate::EX_USAGE;

/// Environment variable of [`TelemetryArgs::log_format`].
pub const LOG_FORMAT_KEY: &str = "SHAKENFIST_LOG_FORMAT";
/// Environment variable of [`TelemetryArgs::log_filter`].
pub const LOG_FILTER_KEY: &str = "SHAKENFIST_LOG";

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value that is missing, malformed or out of range.
    #[error("invalid configuration: {key}{}: {message}", FlagSuffix(.flag.as_deref()))]
    Invalid {
        /// The environment variable naming the key, e.g. `SHAKENFIST_MARIADB_GATEWAY_PORT`.
        key: String,
        /// The flag for the same key, e.g. `--mariadb-gateway-port`, when known.
        flag: Option<String>,
        /// What is wrong, e.g. `must be 1-65535, got 0`.
        message: String,
    },
    /// The command line could not be parsed (unknown flag, stray argument), or help or
    /// version output was requested ([`clap::Error::use_stderr`] is false for those).
    #[error("{0}")]
    ParseArgs(clap::Error),
}

impl ConfigError {
    /// A [`ConfigError::Invalid`] for `key` (the `SHAKENFIST_...` variable). The flag is
    /// filled in by [`try_parse_from`] from the daemon's argument definitions.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            flag: None,
            message: message.into(),
        }
    }
}

/// Renders ` (--flag)` when the flag is known.
struct FlagSuffix<'a>(Option<&'a str>);

impl fmt::Display for FlagSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(flag) => write!(f, " ({flag})"),
            None => Ok(()),
        }
    }
}

/// Semantic checks on a parsed configuration, run before the daemon binds any port.
pub trait Validate {
    /// Checks the configuration; the first problem found is returned, naming its key
    /// (see [`ConfigError::invalid`]).
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Parses the process arguments and `SHAKENFIST_*` environment into `C` and validates it.
///
/// Help and version requests print and exit 0. Any other failure prints a message naming
/// the key and exits with [`EX_USAGE`]. Call this before binding any port.
pub fn parse_or_exit<C: clap::Parser + Validate>() -> C {
    match try_parse_from::<C, _, _>(std::env::args_os()) {
        Ok(config) => config,
        // Help and version: clap prints to stdout and exits 0.
        Err(ConfigError::ParseArgs(err)) if !err.use_stderr() => err.exit(),
        Err(ConfigError::ParseArgs(err)) => {
            // clap's own rendering: message, usage and a pointer to --help.
            if err.print().is_err() {
                eprintln!("{err}");
            }
            std::process::exit(EX_USAGE)
        }
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(EX_USAGE)
        }
    }
}

/// Parses `args` (the first item is the program name) and the environment into `C`, then
/// runs [`Validate::validate`]. Value errors are reported as [`ConfigError::Invalid`] naming
/// the key's environment variable and flag; the rest as [`ConfigError::ParseArgs`].
pub fn try_parse_from<C, I, T>(args: I) -> Result<C, ConfigError>
where
    C: clap::Parser + Validate,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let config = C::try_parse_from(args).map_err(|err| from_clap::<C>(err))?;
    config.validate().map_err(|err| with_flag::<C>(err))?;
    Ok(config)
}

/// Fills in the flag of a [`ConfigError::Invalid`] from the argument whose `env` is `key`.
fn with_flag<C: clap::CommandFactory>(err: ConfigError) -> ConfigError {
    match err {
        ConfigError::Invalid {
            key,
            flag: None,
            message,
        } => {
            let command = C::command();
            let flag = command
                .get_arguments()
                .find(|arg| arg.get_env().is_some_and(|env| env == key.as_str()))
                .and_then(|arg| arg.get_long())
                .map(|long| format!("--{long}"));
            ConfigError::Invalid { key, flag, message }
        }
        other => other,
    }
}

/// Turns a clap value error into [`ConfigError::Invalid`] naming the key.
fn from_clap<C: clap::CommandFactory>(err: clap::Error) -> ConfigError {
    let message = match err.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let value = match err.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(value)) => value.clone(),
                _ => String::new(),
            };
            let mut message = format!("invalid value '{value}'");
            if let Some(source) = std::error::Error::source(&err) {
                message.push_str(&format!(": {source}"));
            }
            if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
                message.push_str(&format!(" (expected one of: {})", valid.join(", ")));
            }
            message
        }
        ErrorKind::MissingRequiredArgument => "is required but not set".to_owned(),
        _ => return ConfigError::ParseArgs(err),
    };
    // clap names the argument as it appears in usage, e.g. `--mariadb-gateway-port <PORT>`.
    let rendered = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.clone(),
        Some(ContextValue::Strings(args)) => match args.first() {
            Some(arg) => arg.clone(),
            None => return ConfigError::ParseArgs(err),
        },
        _ => return ConfigError::ParseArgs(err),
    };
    let long = rendered
        .split_whitespace()
        .next()
        .and_then(|token| token.strip_prefix("--"));
    let command = C::command();
    let arg = long.and_then(|long| command.get_arguments().find(|a| a.get_long() == Some(long)));
    match arg {
        Some(arg) => match arg.get_env() {
            Some(env) => ConfigError::Invalid {
                key: env.to_string_lossy().into_owned(),
                flag: arg.get_long().map(|long| format!("--{long}")),
                message,
            },
            None => ConfigError::Invalid {
                key: format!("--{}", arg.get_long().unwrap_or_default()),
                flag: None,
                message,
            },
        },
        None => ConfigError::Invalid {
            key: rendered,
            flag: None,
            message,
        },
    }
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable text when it is.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Logging options every daemon shares; `#[command(flatten)]` it into the daemon's config.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format: auto (JSON unless stdout is a terminal), json or text.
    #[arg(long, env = LOG_FORMAT_KEY, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,sf_database=debug`.
    #[arg(long = "log", env = LOG_FILTER_KEY, default_value = "info")]
    pub log_filter: String,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Auto,
            log_filter: "info".to_owned(),
        }
    }
}

impl Validate for TelemetryArgs {
    fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::builder()
            .parse(&self.log_filter)
            .map(|_| ())
            .map_err(|err| {
                ConfigError::invalid(
                    LOG_FILTER_KEY,
                    format!("invalid log filter {:?}: {err}", self.log_filter),
                )
            })
    }
}

/// One entry of a `host[:port]` list, e.g. an element of `SHAKENFIST_MARIADB_GATEWAY_HOSTS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The port, 1-65535.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a comma-separated `host[:port]` list such as `"a,b:13005,[::1]:7"` for the
/// config key `key`; entries without a port get `default_port`.
///
/// Whitespace around entries is ignored. Hosts are DNS names or IP addresses (IPv6 in
/// brackets when a port follows). An empty list, an empty entry, a bad host, port 0 and a
/// repeated entry are errors naming `key`.
pub fn parse_host_list(
    key: &str,
    s: &str,
    default_port: u16,
) -> Result<Vec<HostPort>, ConfigError> {
    let invalid = |message: String| ConfigError::invalid(key, message);
    if default_port == 0 {
        return Err(invalid("default port must be 1-65535, got 0".to_owned()));
    }
    if s.trim().is_empty() {
        return Err(invalid("must list at least one host".to_owned()));
    }
    let mut seen = HashSet::new();
    let mut hosts = Vec::new();
    for (index, entry) in s.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            return Err(invalid(format!("entry {} of {s:?} is empty", index + 1)));
        }
        let host_port = parse_host_port(entry, default_port).map_err(invalid)?;
        if !seen.insert(host_port.clone()) {
            return Err(invalid(format!("{host_port} is listed twice")));
        }
        hosts.push(host_port);
    }
    Ok(hosts)
}

/// Parses one `host`, `host:port`, `[v6]`, `[v6]:port` or bare IPv6 entry.
fn parse_host_port(entry: &str, default_port: u16) -> Result<HostPort, String> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("{entry:?}: missing ']'"));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{entry:?}: {host:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("{entry:?}: expected ':port' after ']'")),
            },
        };
        (host, port)
    } else if entry.parse::<Ipv6Addr>().is_ok() {
        (entry, None)
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("{entry:?}: port must be 1-65535, got {port:?}")),
        },
    };
    if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
        return Err(format!(
            "{entry:?}: {host:?} is not a host name or IP address"
        ));
    }
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// True for a DNS name: dot-separated labels of 1-63 ASCII letters, digits and hyphens,
/// not starting or ending with a hyphen; at most 253 characters.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// sf-test: a daemon config for tests.
    #[derive(Parser, Debug)]
    #[command(name = "sf-test", version)]
    struct TestConfig {
        /// Gateway port.
        #[arg(long, env = "SHAKENFIST_SF_DAEMON_UNIT_PORT", default_value_t = 13005)]
        sf_daemon_unit_port: u16,
        /// Must be even.
        #[arg(long, env = "SHAKENFIST_SF_DAEMON_UNIT_EVEN", default_value_t = 2)]
        sf_daemon_unit_even: u32,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    impl Validate for TestConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.sf_daemon_unit_port == 0 {
                return Err(ConfigError::invalid(
                    "SHAKENFIST_SF_DAEMON_UNIT_PORT",
                    format!("must be 1-65535, got {}", self.sf_daemon_unit_port),
                ));
            }
            if !self.sf_daemon_unit_even.is_multiple_of(2) {
                return Err(ConfigError::invalid(
                    "SHAKENFIST_SF_DAEMON_UNIT_EVEN",
                    "must be even",
                ));
            }
            self.telemetry.validate()
        }
    }

    fn parse(args: &[&str]) -> Result<TestConfig, ConfigError> {
        try_parse_from(std::iter::once("sf-test").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_apply() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.sf_daemon_unit_port, 13005);
        assert_eq!(config.telemetry.log_format, LogFormat::Auto);
        assert_eq!(config.telemetry.log_filter, "info");
    }

    #[test]
    fn flags_set_values() {
        let config = parse(&[
            "--sf-daemon-unit-port",
            "14000",
            "--log-format",
            "json",
            "--log",
            "debug",
        ])
        .unwrap();
        assert_eq!(config.sf_daemon_unit_port, 14000);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        assert_eq!(config.telemetry.log_filter, "debug");
    }

    #[test]
    fn validate_failure_names_env_and_flag() {
        let err = parse(&["--sf-daemon-unit-port", "0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: SHAKENFIST_SF_DAEMON_UNIT_PORT (--sf-daemon-unit-port): \
             must be 1-65535, got 0"
        );
        let err = parse(&["--sf-daemon-unit-even", "3"]).unwrap_err();
        assert!(matches!(
            &err,
            ConfigError::Invalid { key, flag: Some(flag), .. }
                if key == "SHAKENFIST_SF_DAEMON_UNIT_EVEN" && flag == "--sf-daemon-unit-even"
        ));
    }

    #[test]
    fn clap_value_error_names_env_and_flag() {
        let err = parse(&["--sf-daemon-unit-port", "seventy"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "invalid configuration: SHAKENFIST_SF_DAEMON_UNIT_PORT (--sf-daemon-unit-port): \
                 invalid value 'seventy'"
            ),
            "{text}"
        );
        let err = parse(&["--log-format=xml"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("SHAKENFIST_LOG_FORMAT (--log-format)"),
            "{text}"
        );
        assert!(text.contains("auto, json, text"), "{text}");
    }

    #[test]
    fn bad_log_filter_is_rejected() {
        let err = parse(&["--log", "info,=[[="]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid configuration: SHAKENFIST_LOG (--log): "),
            "{err}"
        );
    }

    #[test]
    fn unknown_flag_and_help_are_parse_args_errors() {
        let err = parse(&["--no-such-flag"]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::ParseArgs(e) if e.use_stderr()),
            "{err}"
        );
        let err = parse(&["--help"]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::ParseArgs(e) if !e.use_stderr()),
            "{err}"
        );
        assert!(
            err.to_string().contains("SHAKENFIST_SF_DAEMON_UNIT_PORT"),
            "{err}"
        );
    }

    #[test]
    fn host_list_parses_with_default_port() {
        let hosts = parse_host_list(
            "K",
            " a, b:13006 ,10.0.0.1,[::1]:7,::2,gw.example.org.",
            13005,
        )
        .unwrap();
        let rendered: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "a:13005",
                "b:13006",
                "10.0.0.1:13005",
                "[::1]:7",
                "[::2]:13005",
                "gw.example.org.:13005"
            ]
        );
        assert_eq!(hosts[3].host, "::1");
    }

    #[test]
    fn host_list_rejects_bad_entries() {
        for bad in [
            "",
            " ",
            "a,,b",
            "a:0",
            "a:65536",
            "a:x",
            "-a",
            "a_b",
            "[::1",
            "[zz]:1",
            "[::1]x",
            "a,a:13005",
        ] {
            let err =
                parse_host_list("SHAKENFIST_MARIADB_GATEWAY_HOSTS", bad, 13005).expect_err(bad);
            assert!(
                matches!(&err, ConfigError::Invalid { key, .. } if key == "SHAKENFIST_MARIADB_GATEWAY_HOSTS"),
                "{bad:?}: {err}"
            );
        }
        assert!(parse_host_list("K", "a", 0).is_err());
    }
}
