//! MariaDB connection settings and connecting.
//!
//! Contract: settings come from `SHAKENFIST_MARIADB_{HOST,PORT,USER,PASSWORD,DATABASE}`
//! (defaults from Shaken Fist: 127.0.0.1, 3306, shakenfist, no password, shakenfist), and
//! flags override them. The password is never printed: [`MariaDbArgs::target`] and
//! `Debug` leave it out. [`connect`] turns the driver's errors into messages that say
//! what to do.
//!
//! TLS: `SHAKENFIST_MARIADB_SSL_MODE` is `disabled` (the default: a MariaDB on the same
//! host or a private link), `preferred`, `required` (encrypted, server not verified),
//! `verify-ca` (its certificate chains to a trusted root) or `verify-identity` (and
//! names the host connected to); a client certificate for accounts that `REQUIRE X509`
//! is `SHAKENFIST_MARIADB_SSL_CERT` with `SHAKENFIST_MARIADB_SSL_KEY`. The driver
//! trusts `SHAKENFIST_MARIADB_SSL_CA` *in addition to* the system's roots, so only
//! `verify-identity` with a host name no public CA would certify (an internal name)
//! pins the server; `verify-ca` is logged as weak. Both connection paths ([`connect`]
//! and [`connect_pool`]) use the same settings; [`MariaDbArgs::validate`] refuses
//! inconsistent ones before any connection, and a mode that slipped past it fails
//! closed (treated as `verify-identity`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use sea_orm::sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sea_orm::sqlx::{self, Executor};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// How to reach MariaDB. Embed in a daemon's config with `#[command(flatten)]`.
#[derive(Clone, clap::Args)]
pub struct MariaDbArgs {
    /// MariaDB host name or address.
    #[arg(
        long = "mariadb-host",
        env = "SHAKENFIST_MARIADB_HOST",
        default_value = "127.0.0.1"
    )]
    pub host: String,
    /// MariaDB TCP port.
    #[arg(
        long = "mariadb-port",
        env = "SHAKENFIST_MARIADB_PORT",
        default_value_t = 3306
    )]
    pub port: u16,
    /// MariaDB user.
    #[arg(
        long = "mariadb-user",
        env = "SHAKENFIST_MARIADB_USER",
        default_value = "shakenfist"
    )]
    pub user: String,
    /// MariaDB password (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long = "mariadb-password",
        env = "SHAKENFIST_MARIADB_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub password: String,
    /// Database name.
    #[arg(
        long = "mariadb-database",
        env = "SHAKENFIST_MARIADB_DATABASE",
        default_value = "shakenfist"
    )]
    pub database: String,
    /// Size of the connection pool.
    #[arg(
        long = "mariadb-pool-size",
        env = "SHAKENFIST_MARIADB_POOL_SIZE",
        default_value_t = 32
    )]
    pub pool_size: u32,
    /// Seconds a call waits for a pooled connection (while MariaDB is unreachable or
    /// every connection is busy) before it fails as unavailable.
    #[arg(
        long = "mariadb-acquire-timeout",
        env = "SHAKENFIST_MARIADB_ACQUIRE_TIMEOUT",
        default_value_t = 30
    )]
    pub acquire_timeout_secs: u64,
    /// Connect through this Unix socket instead of host and port (a MariaDB on the
    /// same machine: no TCP, so no loopback stack and no Nagle delays).
    #[arg(long = "mariadb-socket", env = "SHAKENFIST_MARIADB_SOCKET")]
    pub socket: Option<PathBuf>,
    /// TLS to MariaDB: disabled, preferred, required, verify-ca, verify-identity.
    #[arg(
        long = "mariadb-ssl-mode",
        env = "SHAKENFIST_MARIADB_SSL_MODE",
        default_value = "disabled"
    )]
    pub ssl_mode: String,
    /// PEM file of the CA(s) that sign MariaDB's certificate (verify modes; else the
    /// system's roots).
    #[arg(long = "mariadb-ssl-ca", env = "SHAKENFIST_MARIADB_SSL_CA")]
    pub ssl_ca: Option<PathBuf>,
    /// PEM client certificate (with `SSL_KEY`), for accounts that require one.
    #[arg(long = "mariadb-ssl-cert", env = "SHAKENFIST_MARIADB_SSL_CERT")]
    pub ssl_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = "mariadb-ssl-key", env = "SHAKENFIST_MARIADB_SSL_KEY")]
    pub ssl_key: Option<PathBuf>,
}

/// The `SHAKENFIST_MARIADB_SSL_MODE` values, as written there.
pub const SSL_MODES: [&str; 5] = [
    "disabled",
    "preferred",
    "required",
    "verify-ca",
    "verify-identity",
];

impl fmt::Debug for MariaDbArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MariaDbArgs")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("database", &self.database)
            .field("pool_size", &self.pool_size)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .field("socket", &self.socket)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_ca", &self.ssl_ca)
            .field("ssl_cert", &self.ssl_cert)
            .field("ssl_key", &self.ssl_key)
            .finish()
    }
}

impl MariaDbArgs {
    /// Settings for a URL-less caller (tests): root on `127.0.0.1:port`.
    pub fn local_root(port: u16, database: &str) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
            password: String::new(),
            database: database.into(),
            pool_size: 8,
            acquire_timeout_secs: 30,
            socket: None,
            ssl_mode: "disabled".into(),
            ssl_ca: None,
            ssl_cert: None,
            ssl_key: None,
        }
    }

    /// Refuses TLS settings that cannot work: an unknown mode, a certificate without
    /// its key (or the reverse), a file that cannot be read. Returns the environment
    /// variable at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !SSL_MODES.contains(&self.ssl_mode.as_str()) {
            return Err((
                "SHAKENFIST_MARIADB_SSL_MODE",
                format!(
                    "must be one of {}, got {:?}",
                    SSL_MODES.join(", "),
                    self.ssl_mode
                ),
            ));
        }
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            return Err((
                "SHAKENFIST_MARIADB_SSL_CERT",
                "a client certificate needs SHAKENFIST_MARIADB_SSL_KEY too, and a key its \
                 certificate"
                    .into(),
            ));
        }
        for (key, path) in [
            ("SHAKENFIST_MARIADB_SSL_CA", &self.ssl_ca),
            ("SHAKENFIST_MARIADB_SSL_CERT", &self.ssl_cert),
            ("SHAKENFIST_MARIADB_SSL_KEY", &self.ssl_key),
        ] {
            if let Some(path) = path {
                match std::fs::File::open(path).and_then(|f| f.metadata()) {
                    Err(e) => return Err((key, format!("cannot read {}: {e}", path.display()))),
                    Ok(meta) if !meta.is_file() => {
                        return Err((key, format!("{} is not a file", path.display())));
                    }
                    Ok(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The TLS mode in the driver's terms; an unknown one (never past
    /// [`Self::validate`]) fails closed as `verify-identity`.
    fn driver_ssl_mode(&self) -> (MySqlSslMode, &'static str) {
        match self.ssl_mode.as_str() {
            "disabled" => (MySqlSslMode::Disabled, "DISABLED"),
            "preferred" => (MySqlSslMode::Preferred, "PREFERRED"),
            "required" => (MySqlSslMode::Required, "REQUIRED"),
            "verify-ca" => (MySqlSslMode::VerifyCa, "VERIFY_CA"),
            _ => (MySqlSslMode::VerifyIdentity, "VERIFY_IDENTITY"),
        }
    }

    /// The driver's options for these settings (host or socket, credentials, TLS).
    fn connect_options(&self) -> MySqlConnectOptions {
        let mut opts = MySqlConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .database(&self.database)
            .charset("utf8mb4")
            .ssl_mode(self.driver_ssl_mode().0);
        if !self.password.is_empty() {
            opts = opts.password(&self.password);
        }
        if let Some(socket) = &self.socket {
            opts = opts.socket(socket);
        }
        if let Some(ca) = &self.ssl_ca {
            opts = opts.ssl_ca(ca);
        }
        if let (Some(cert), Some(key)) = (&self.ssl_cert, &self.ssl_key) {
            opts = opts.ssl_client_cert(cert).ssl_client_key(key);
        }
        opts
    }

    /// `user@host:port/database` (or `user@unix:<socket>/database`), for messages (no
    /// password).
    pub fn target(&self) -> String {
        match &self.socket {
            Some(socket) => format!("{}@unix:{}/{}", self.user, socket.display(), self.database),
            None => format!(
                "{}@{}:{}/{}",
                self.user, self.host, self.port, self.database
            ),
        }
    }

    /// The driver URL (contains the password: never log it).
    pub fn url(&self) -> String {
        let auth = if self.password.is_empty() {
            percent_encode(&self.user)
        } else {
            format!(
                "{}:{}",
                percent_encode(&self.user),
                percent_encode(&self.password)
            )
        };
        let mut query = vec![format!("ssl-mode={}", self.driver_ssl_mode().1)];
        for (key, path) in [
            ("socket", &self.socket),
            ("ssl-ca", &self.ssl_ca),
            ("ssl-cert", &self.ssl_cert),
            ("ssl-key", &self.ssl_key),
        ] {
            if let Some(path) = path {
                query.push(format!("{key}={}", percent_encode(&path.to_string_lossy())));
            }
        }
        format!(
            "mysql://{auth}@{}:{}/{}?{}",
            self.host,
            self.port,
            percent_encode(&self.database),
            query.join("&")
        )
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Errors of [`connect`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection failed; `hint` says what to check.
    #[error("cannot connect to MariaDB at {target}: {source}\n{hint}")]
    Connect {
        /// `user@host:port/database`.
        target: String,
        /// What to check.
        hint: &'static str,
        /// The driver's error.
        #[source]
        source: DbErr,
    },
}

fn hint_for(err: &DbErr) -> &'static str {
    let text = err.to_string();
    if text.contains("1049") || text.contains("Unknown database") {
        "The database does not exist: create it and its user with tools/bootstrap-mariadb.sql."
    } else if text.contains("1045") || text.contains("Access denied") {
        "Check SHAKENFIST_MARIADB_USER and SHAKENFIST_MARIADB_PASSWORD (tools/bootstrap-mariadb.sql creates the user); an account that REQUIRE SSL also needs SHAKENFIST_MARIADB_SSL_MODE, one that REQUIRE X509 SHAKENFIST_MARIADB_SSL_CERT and SHAKENFIST_MARIADB_SSL_KEY."
    } else if text.contains("certificate")
        || text.contains("tls")
        || text.contains("TLS")
        || text.contains("SSL")
        || text.contains("ssl")
    {
        "TLS to MariaDB failed: check SHAKENFIST_MARIADB_SSL_MODE, and that SHAKENFIST_MARIADB_SSL_CA signs the server's certificate (verify-identity: for the host name connected to)."
    } else if text.contains("refused") || text.contains("timed out") || text.contains("resolve") {
        "Is MariaDB running and listening there? Check SHAKENFIST_MARIADB_HOST and SHAKENFIST_MARIADB_PORT (or SHAKENFIST_MARIADB_SOCKET)."
    } else if text.contains("No such file") {
        "A file is missing: check SHAKENFIST_MARIADB_SOCKET (the server's `socket` setting) and the TLS files (SHAKENFIST_MARIADB_SSL_CA, _SSL_CERT, _SSL_KEY)."
    } else {
        "Check the SHAKENFIST_MARIADB_* settings."
    }
}

/// Opens a connection pool.
pub async fn connect(args: &MariaDbArgs) -> Result<DatabaseConnection, ConnectError> {
    let mut opts = ConnectOptions::new(args.url());
    opts.max_connections(args.pool_size)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(args.acquire_timeout_secs))
        .sqlx_logging(false);
    Database::connect(opts)
        .await
        .map_err(|source| ConnectError::Connect {
            target: args.target(),
            hint: hint_for(&source),
            source,
        })
}

/// Errors of [`connect_pool`].
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool could not open its first connection.
    #[error("cannot connect to MariaDB at {target}: {source}\n{hint}")]
    Connect {
        /// `user@host:port/database`.
        target: String,
        /// What to check.
        hint: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// Opens the store's pool. Every session runs READ COMMITTED (no gap locks, so
/// concurrent inserts and SKIP LOCKED claims do not deadlock on ranges) with a
/// 10-second lock wait, utf8mb4.
pub async fn connect_pool(args: &MariaDbArgs) -> Result<MySqlPool, PoolError> {
    if args.ssl_mode == "verify-ca" {
        tracing::warn!(
            "SHAKENFIST_MARIADB_SSL_MODE=verify-ca accepts any certificate that chains to \
             the system's roots or SHAKENFIST_MARIADB_SSL_CA, whatever host it names; use \
             verify-identity with a host name only your CA certifies"
        );
    }
    let opts = args.connect_options();
    let capacity = statement_cache_capacity(args, &opts).await;
    let opts = opts.statement_cache_capacity(capacity);
    MySqlPoolOptions::new()
        .max_connections(args.pool_size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(args.acquire_timeout_secs))
        // No ping before every checkout (sqlx's default): it is a round trip per
        // transaction. A connection that died meanwhile fails its first statement as
        // `Unavailable`, which callers retry (on another gateway if need be).
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                conn.execute("SET SESSION innodb_lock_wait_timeout = 10")
                    .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| {
            let hint = hint_for(&DbErr::Custom(source.to_string()));
            PoolError::Connect {
                target: args.target(),
                hint,
                source,
            }
        })
}

/// Gateways assumed to share one MariaDB when sizing the statement cache.
const GATEWAYS_PER_SERVER: u64 = 4;
/// Bounds of the per-connection statement cache.
const STATEMENT_CACHE_BOUNDS: (u64, u64) = (32, 1024);

/// The per-connection prepared-statement cache, sized from the server's
/// `max_prepared_stmt_count` so that [`GATEWAYS_PER_SERVER`] gateways with full pools stay
/// under it (a PREPARE past the limit fails).
///
/// Why it matters: when the cache is full the driver closes its least recently used
/// statement with COM_STMT_CLOSE, which has no reply, and sends the next statement
/// right after it; the driver does not set TCP_NODELAY, so Nagle's algorithm holds that
/// next packet until the server's delayed ACK (~40 ms). Measured: with sqlx's default
/// of 100 statements, queue completions took 40-270 ms in steps of 44 ms and the
/// machine sat 60 % idle; with no evictions, 2.3x the throughput. The store's key-list
/// statements differ per list length, so the cache must hold many texts.
async fn statement_cache_capacity(args: &MariaDbArgs, opts: &MySqlConnectOptions) -> usize {
    use sea_orm::sqlx::{ConnectOptions, Connection};
    let limit: Option<u64> = match opts.connect().await {
        Ok(mut conn) => {
            let v = sqlx::query_scalar::<_, u64>("SELECT @@GLOBAL.max_prepared_stmt_count")
                .fetch_one(&mut conn)
                .await
                .ok();
            let _ = conn.close().await;
            v
        }
        Err(_) => None,
    };
    let pool = u64::from(args.pool_size.max(1));
    let capacity = statement_cache_size(limit.unwrap_or(16_382), pool);
    if capacity < 100 {
        tracing::warn!(
            capacity,
            max_prepared_stmt_count = ?limit,
            pool_size = pool,
            "the statement cache is small for this pool: raise MariaDB's max_prepared_stmt_count \
             (or lower the pool size) to avoid statement re-preparation stalls"
        );
    }
    usize::try_from(capacity).unwrap_or(100)
}

/// The cache size for a server limit and pool size (pure; see [`statement_cache_capacity`]).
fn statement_cache_size(max_prepared: u64, pool_size: u64) -> u64 {
    (max_prepared / (pool_size.max(1) * GATEWAYS_PER_SERVER))
        .clamp(STATEMENT_CACHE_BOUNDS.0, STATEMENT_CACHE_BOUNDS.1)
}

#[cfg(test)]
mod cache_tests {
    use super::statement_cache_size;

    #[test]
    fn the_statement_cache_leaves_room_for_four_gateways() {
        // MariaDB's default limit with the default pool of 8: 511 per connection.
        assert_eq!(statement_cache_size(16_382, 8), 511);
        assert_eq!(statement_cache_size(16_382, 24), 170);
        assert_eq!(statement_cache_size(1_000_000, 8), 1024, "capped");
        assert_eq!(statement_cache_size(100, 64), 32, "floored");
    }

    use super::*;

    #[test]
    fn url_encodes_credentials_and_debug_hides_the_password() {
        let mut a = MariaDbArgs::local_root(3306, "shakenfist");
        a.user = "sf user".into();
        a.password = "p@ss:w/rd".into();
        assert_eq!(
            a.url(),
            "mysql://sf%20user:p%40ss%3Aw%2Frd@127.0.0.1:3306/shakenfist?ssl-mode=DISABLED"
        );
        a.ssl_mode = "verify-identity".into();
        a.ssl_ca = Some("/etc/mariadb ca.pem".into());
        assert!(
            a.url()
                .ends_with("?ssl-mode=VERIFY_IDENTITY&ssl-ca=%2Fetc%2Fmariadb%20ca.pem"),
            "{}",
            a.url()
        );
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("p@ss"), "{dbg}");
        assert!(!a.target().contains("p@ss"));
    }
}
