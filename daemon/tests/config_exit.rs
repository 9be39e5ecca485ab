//! `parse_or_exit` end to end: environment variables, flag overrides, and exit codes.
//!
//! The binary runs itself as a child (marked by `SF_DAEMON_CONFIG_CHILD`) with chosen
//! environment and arguments; the child calls `parse_or_exit` and prints the config. The
//! environment is set only on the child's `Command`, never in this process.

use sf_harness::runner as support;

use std::process::{Command, Output};

use clap::Parser;
use sf_daemon::config::{self, ConfigError, TelemetryArgs, Validate};

const CHILD_MARKER: &str = "SF_DAEMON_CONFIG_CHILD";
const PORT_KEY: &str = "SHAKENFIST_MARIADB_GATEWAY_PORT";
const HOSTS_KEY: &str = "SHAKENFIST_MARIADB_GATEWAY_HOSTS";

/// sf-config-test: a daemon configuration like sf-database's.
#[derive(Parser, Debug)]
#[command(name = "sf-config-test", version)]
struct Config {
    /// Port of the gateway.
    #[arg(long, env = PORT_KEY, default_value_t = 13005)]
    mariadb_gateway_port: u16,
    /// Gateways, `host[:port]`, comma separated.
    #[arg(long, env = HOSTS_KEY, default_value = "localhost")]
    mariadb_gateway_hosts: String,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.mariadb_gateway_port == 0 {
            return Err(ConfigError::invalid(
                PORT_KEY,
                format!("must be 1-65535, got {}", self.mariadb_gateway_port),
            ));
        }
        config::parse_host_list(
            HOSTS_KEY,
            &self.mariadb_gateway_hosts,
            self.mariadb_gateway_port,
        )?;
        self.telemetry.validate()
    }
}

fn child() {
    let config: Config = config::parse_or_exit();
    let hosts = config::parse_host_list(
        HOSTS_KEY,
        &config.mariadb_gateway_hosts,
        config.mariadb_gateway_port,
    )
    .map(|hosts| {
        hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
    .unwrap_or_default();
    println!(
        "port={} hosts={} format={:?} log={}",
        config.mariadb_gateway_port,
        hosts,
        config.telemetry.log_format,
        config.telemetry.log_filter
    );
}

/// Runs the child with `env` and `args`, with every inherited `SHAKENFIST_*` removed.
fn run(env: &[(&str, &str)], args: &[&str]) -> Result<Output, String> {
    let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
    let mut command = Command::new(exe);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHAKENFIST_") {
            command.env_remove(key);
        }
    }
    command
        .env(CHILD_MARKER, "1")
        .envs(env.iter().copied())
        .args(args);
    command
        .output()
        .map_err(|err| format!("spawn child: {err}"))
}

struct Case {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    code: i32,
    stdout: &'static [&'static str],
    stderr: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "defaults",
        env: &[],
        args: &[],
        code: 0,
        stdout: &["port=13005 hosts=localhost:13005 format=Auto log=info"],
        stderr: &[],
    },
    Case {
        name: "environment applies",
        env: &[
            (PORT_KEY, "14000"),
            (HOSTS_KEY, "a,b:7"),
            ("SHAKENFIST_LOG_FORMAT", "json"),
            ("SHAKENFIST_LOG", "debug"),
        ],
        args: &[],
        code: 0,
        stdout: &["port=14000 hosts=a:14000,b:7 format=Json log=debug"],
        stderr: &[],
    },
    Case {
        name: "flag overrides environment",
        env: &[(PORT_KEY, "14000")],
        args: &["--mariadb-gateway-port", "15000"],
        code: 0,
        stdout: &["port=15000 "],
        stderr: &[],
    },
    Case {
        name: "validation failure names the key",
        env: &[(PORT_KEY, "0")],
        args: &[],
        code: 64,
        stdout: &[],
        stderr: &[
            "invalid configuration: SHAKENFIST_MARIADB_GATEWAY_PORT (--mariadb-gateway-port): must be 1-65535, got 0",
        ],
    },
    Case {
        name: "unparsable environment value names the key",
        env: &[(PORT_KEY, "lots")],
        args: &[],
        code: 64,
        stdout: &[],
        stderr: &[
            "invalid configuration: SHAKENFIST_MARIADB_GATEWAY_PORT (--mariadb-gateway-port): invalid value 'lots'",
        ],
    },
    Case {
        name: "bad enum value names the key",
        env: &[("SHAKENFIST_LOG_FORMAT", "xml")],
        args: &[],
        code: 64,
        stdout: &[],
        stderr: &["SHAKENFIST_LOG_FORMAT (--log-format)", "auto, json, text"],
    },
    Case {
        name: "bad host list names the key",
        env: &[(HOSTS_KEY, "a,b:0")],
        args: &[],
        code: 64,
        stdout: &[],
        stderr: &[
            "invalid configuration: SHAKENFIST_MARIADB_GATEWAY_HOSTS (--mariadb-gateway-hosts): ",
        ],
    },
    Case {
        name: "unknown flag is a usage error",
        env: &[],
        args: &["--no-such-flag"],
        code: 64,
        stdout: &[],
        stderr: &["--no-such-flag"],
    },
    Case {
        name: "help exits 0 and lists the environment variables",
        env: &[],
        args: &["--help"],
        code: 0,
        stdout: &[
            "SHAKENFIST_MARIADB_GATEWAY_PORT",
            "SHAKENFIST_LOG_FORMAT",
            "SHAKENFIST_LOG=",
        ],
        stderr: &[],
    },
    Case {
        name: "version exits 0",
        env: &[],
        args: &["--version"],
        code: 0,
        stdout: &["sf-config-test "],
        stderr: &[],
    },
];

fn check(case: &Case) -> Result<(), String> {
    let output = run(case.env, case.args)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "status {:?}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        )
    };
    if output.status.code() != Some(case.code) {
        return Err(format!("expected exit code {}, {}", case.code, context()));
    }
    for want in case.stdout {
        if !stdout.contains(want) {
            return Err(format!("stdout lacks {want:?}, {}", context()));
        }
    }
    for want in case.stderr {
        if !stderr.contains(want) {
            return Err(format!("stderr lacks {want:?}, {}", context()));
        }
    }
    Ok(())
}

fn main() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        child();
        return;
    }
    let checks: Vec<support::Check> = CASES
        .iter()
        .map(|case| {
            (
                case.name,
                Box::new(move || check(case)) as Box<dyn Fn() -> Result<(), String>>,
            )
        })
        .collect();
    support::run("config_exit", checks);
}
