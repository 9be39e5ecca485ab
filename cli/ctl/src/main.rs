//! `sf-ctl`: the operator's tool for the MariaDB side of Shaken Fist.
//!
//! Contract: `ensure-mariadb-schema` is the only path that creates or migrates tables
//! (it refuses an incompatible server first); `check-mariadb` runs the same
//! compatibility check every daemon runs at start and reports the schema state;
//! `bootstrap-system-key` creates namespace `system` when missing and a key for it,
//! printing the clear key once on stdout (one line; only its argon2 hash is stored), or,
//! given the key (`SHAKENFIST_SYSTEM_KEY`, e.g. from a Kubernetes Secret), stores that
//! key's hash and prints nothing: idempotent, so an install hook can rerun it;
//! `backup` and `restore` are retired in favour of `mariadb-dump` / `mariadb`. Exit
//! codes: 0 success, 1 a check or operation failed, 64 bad usage or configuration.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sf_database::migration::{compare_versions, expected_versions, read_versions};
use sf_database::{MariaDbArgs, Store, StoreError, compat, connect, connect_pool, ensure_schema};
use sf_schema::namespace::SYSTEM_NAMESPACE;

/// Operator tool for Shaken Fist's MariaDB.
#[derive(Debug, Parser)]
#[command(name = "sf-ctl", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    mariadb: MariaDbArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or migrate every table (idempotent) and record versions in schema_versions;
    /// then create the floating network with its well-known uid when missing.
    EnsureMariadbSchema {
        /// The floating network's netblock (Shaken Fist's FLOATING_NETWORK).
        #[arg(
            long,
            env = "SHAKENFIST_FLOATING_NETWORK",
            default_value = "192.168.20.0/24"
        )]
        floating_network: String,
    },
    /// Check that the server is MariaDB >= 10.6 with InnoDB and utf8mb4 defaults.
    CheckMariadb,
    /// Create namespace `system` if missing and a key for it; print the clear key once.
    ///
    /// Only the key's argon2 hash is stored. An existing key of the same name is left
    /// alone (exit 1) unless --replace is given (replacing revokes its tokens). With
    /// SHAKENFIST_SYSTEM_KEY the key is that one and nothing is printed; an existing key
    /// of the same name that it matches is success (exit 0, nothing changed).
    BootstrapSystemKey {
        /// The key's name.
        #[arg(long, default_value = "bootstrap")]
        key_name: String,
        /// Replace an existing key of that name.
        #[arg(long)]
        replace: bool,
        /// Store this clear key (at least 32 printable ASCII characters, no spaces)
        /// instead of generating one.
        #[arg(long, env = "SHAKENFIST_SYSTEM_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Retired: use mariadb-dump.
    Backup {
        /// Ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
    /// Retired: use the mariadb client.
    Restore {
        /// Ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
}

fn retired(args: &MariaDbArgs, what: &str) -> ExitCode {
    let db = &args.database;
    let (h, p, u) = (&args.host, args.port, &args.user);
    println!(
        "sf-ctl {what} is retired: Shaken Fist keeps all of its state in MariaDB, so MariaDB's own tools are the way.\n\
         \n\
         Back up (consistent, without locking InnoDB tables):\n\
         \x20 mariadb-dump --single-transaction --routines --triggers -h {h} -P {p} -u {u} -p {db} > shakenfist-$(date +%Y%m%d-%H%M%S).sql\n\
         \n\
         Restore (stop sf-database, sf-cluster and the agents first):\n\
         \x20 mariadb -h {h} -P {p} -u {u} -p {db} < shakenfist-YYYYMMDD-HHMMSS.sql\n\
         \x20 sf-ctl ensure-mariadb-schema   # brings an older dump's schema up to date"
    );
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Backup { .. } => return Ok(retired(&cli.mariadb, "backup")),
        Command::Restore { .. } => return Ok(retired(&cli.mariadb, "restore")),
        Command::EnsureMariadbSchema { .. }
        | Command::CheckMariadb
        | Command::BootstrapSystemKey { .. } => {}
    }
    let db = connect(&cli.mariadb).await?;
    let facts = match compat::check(&db, &cli.mariadb.target()).await {
        Ok(facts) => facts,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in compat::warnings(&facts) {
        eprintln!("warning: {warning}");
    }
    match cli.command {
        Command::CheckMariadb => {
            println!(
                "MariaDB at {} is compatible: {} ({}), default engine {}, server {} / {}, database {} / {}",
                cli.mariadb.target(),
                facts.version,
                facts.version_comment,
                facts.default_engine,
                facts.charset_server,
                facts.collation_server,
                facts.database_charset,
                facts.database_collation,
            );
            let mismatch = compare_versions(&read_versions(&db).await?, &expected_versions());
            if mismatch.is_empty() {
                println!("schema: every table at the expected version");
            } else {
                println!("schema: {mismatch}");
            }
        }
        Command::EnsureMariadbSchema { floating_network } => {
            let report = ensure_schema(&db).await?;
            print!("{report}");
            db.close().await?;
            let pool = connect_pool(&cli.mariadb).await?;
            let store = Store::new(pool);
            match store.ensure_floating_network(&floating_network).await {
                Ok(Some(_)) => println!(
                    "created the floating network {floating_network} ({})",
                    sf_database::store::resources::FLOATING_NETWORK_UID
                ),
                Ok(None) => println!("the floating network exists; nothing to do"),
                Err(e) => {
                    eprintln!("cannot create the floating network: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
            // Objects go only into namespaces that exist: a database from before that
            // rule may hold objects in namespaces without a row.
            match store.adopt_orphan_namespaces().await {
                Ok(adopted) => {
                    for name in adopted {
                        println!("adopted namespace {name}: it held objects but was never created");
                    }
                }
                Err(e) => {
                    eprintln!("cannot adopt namespaces that hold objects: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::BootstrapSystemKey {
            key_name,
            replace,
            key,
        } => {
            db.close().await?;
            return bootstrap_system_key(&cli.mariadb, &key_name, replace, key).await;
        }
        Command::Backup { .. } | Command::Restore { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Why a given system key is refused, if it is.
fn bad_given_key(key: &str) -> Option<&'static str> {
    if key.len() < 32 {
        Some("must be at least 32 characters")
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Some("must be printable ASCII without spaces")
    } else {
        None
    }
}

/// `bootstrap-system-key`: a generated clear key goes to stdout (one line) and nowhere
/// else; a given one (`given`) is never printed.
async fn bootstrap_system_key(
    args: &MariaDbArgs,
    key_name: &str,
    replace: bool,
    given: Option<String>,
) -> anyhow::Result<ExitCode> {
    if let Some(reason) = given.as_deref().and_then(bad_given_key) {
        eprintln!("sf-ctl: SHAKENFIST_SYSTEM_KEY (--key) {reason}");
        return Ok(ExitCode::from(64));
    }
    let store = Store::new(connect_pool(args).await?);
    match store.create_namespace(SYSTEM_NAMESPACE).await {
        Ok(_) => eprintln!("created namespace {SYSTEM_NAMESPACE}"),
        Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    match store.get_key(SYSTEM_NAMESPACE, key_name).await {
        Ok(stored)
            if given
                .as_deref()
                .is_some_and(|k| sf_api::auth::verify_key(k, &stored.key_hash)) =>
        {
            eprintln!(
                "namespace {SYSTEM_NAMESPACE} already has key {key_name}, and it is the given key: nothing to do"
            );
            store.pool().close().await;
            return Ok(ExitCode::SUCCESS);
        }
        Ok(_) if !replace => {
            eprintln!(
                "namespace {SYSTEM_NAMESPACE} already has a key named {key_name}: pass --replace to replace it (its tokens stop working) or choose another --key-name"
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(_) | Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let generated = given.is_none();
    let key = given.unwrap_or_else(sf_api::auth::generate_key);
    let hash = sf_api::auth::hash_key(&key)?;
    store.put_key(SYSTEM_NAMESPACE, key_name, &hash).await?;
    store.pool().close().await;
    if generated {
        eprintln!(
            "stored key {key_name} of namespace {SYSTEM_NAMESPACE} (only its hash is kept; this is the only time it is shown)"
        );
        println!("{key}");
    } else {
        eprintln!(
            "stored the given key as {key_name} of namespace {SYSTEM_NAMESPACE} (only its hash is kept)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(64);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if let Err((key, why)) = cli.mariadb.validate() {
        eprintln!("sf-ctl: invalid configuration: {key}: {why}");
        return ExitCode::from(64);
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sf-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
