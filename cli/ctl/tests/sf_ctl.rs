//! `sf-ctl` as a process against real private MariaDB servers.

use std::process::{Command, Output};

use sf_harness::{MariaDb, ServerOptions, TestDatabase};

fn sf_ctl(port: u16, database: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sf-ctl"))
        .env_clear()
        .env("SHAKENFIST_MARIADB_HOST", "127.0.0.1")
        .env("SHAKENFIST_MARIADB_PORT", port.to_string())
        .env("SHAKENFIST_MARIADB_USER", "root")
        .env("SHAKENFIST_MARIADB_DATABASE", database)
        .args(args)
        .output()
        .expect("run sf-ctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn ensure_then_ensure_again_then_check() {
    let tdb = TestDatabase::new().expect("db");
    let first = sf_ctl(tdb.port, &tdb.name, &["ensure-mariadb-schema"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("applied migration m0001_initial"),
        "{}",
        text(&first)
    );
    assert!(text(&first).contains("work_queue"), "{}", text(&first));

    let second = sf_ctl(tdb.port, &tdb.name, &["ensure-mariadb-schema"]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("nothing to do"), "{}", text(&second));

    let check = sf_ctl(tdb.port, &tdb.name, &["check-mariadb"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("is compatible"), "{}", text(&check));
    assert!(text(&check).contains("every table at the expected version"));
}

#[test]
fn check_mariadb_refuses_latin1_and_myisam_servers() {
    for (opts, expect) in [
        (ServerOptions::latin1(), "found latin1; expected utf8mb4"),
        (ServerOptions::myisam(), "found MyISAM; expected InnoDB"),
    ] {
        let server = MariaDb::start(&opts).expect("server");
        let tdb = server.create_database().expect("db");
        for verb in ["check-mariadb", "ensure-mariadb-schema"] {
            let out = sf_ctl(tdb.port, &tdb.name, &[verb]);
            assert_eq!(out.status.code(), Some(1), "{verb}: {}", text(&out));
            let t = text(&out);
            assert!(t.contains("is not compatible"), "{t}");
            assert!(t.contains(expect), "{t}");
            assert!(t.contains("Fix:"), "{t}");
            assert!(t.lines().count() >= 3, "multi-line: {t}");
        }
        // Refused before anything was created.
        let tables = tdb
            .query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
            .expect("count");
        assert_eq!(tables.trim(), "0");
    }
}

#[test]
fn an_unknown_database_says_how_to_create_it() {
    let tdb = TestDatabase::new().expect("db");
    let out = sf_ctl(tdb.port, "no_such_database", &["check-mariadb"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("bootstrap-mariadb.sql"),
        "{}",
        text(&out)
    );
}

#[test]
fn backup_and_restore_are_retired_with_the_commands_to_use() {
    for verb in ["backup", "restore"] {
        let out = sf_ctl(1, "shakenfist", &[verb, "--whatever"]);
        assert_eq!(out.status.code(), Some(1));
        let t = text(&out);
        assert!(t.contains("retired"), "{t}");
        assert!(t.contains("mariadb-dump --single-transaction"), "{t}");
        assert!(t.contains("mariadb -h 127.0.0.1 -P 1"), "{t}");
    }
}

#[test]
fn a_bad_port_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sf-ctl"))
        .env_clear()
        .env("SHAKENFIST_MARIADB_PORT", "not-a-port")
        .arg("check-mariadb")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("SHAKENFIST_MARIADB_PORT") || text(&out).contains("--mariadb-port"),
        "{}",
        text(&out)
    );
}

fn workspace_file(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn bootstrap_sql_is_idempotent_and_its_user_can_create_the_schema() {
    // A server of its own: the script creates users and a database named shakenfist.
    let server = MariaDb::start(&ServerOptions::default()).expect("server");
    let sql = std::fs::read_to_string(workspace_file("tools/bootstrap-mariadb.sql")).expect("read");
    server.execute(&sql).expect("first run");
    server.execute(&sql).expect("second run is harmless");
    let out = Command::new(env!("CARGO_BIN_EXE_sf-ctl"))
        .env_clear()
        .env("SHAKENFIST_MARIADB_PORT", server.port().to_string())
        .env("SHAKENFIST_MARIADB_PASSWORD", "change-me")
        .arg("ensure-mariadb-schema")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("applied migration"), "{}", text(&out));
}

/// SHAKENFIST_MARIADB_SOCKET: both connection paths (the schema tool's and the store's
/// pool, which bootstrap-system-key uses) go through the Unix socket; the TCP address
/// given is a dead one, so only the socket can have worked.
#[test]
fn a_unix_socket_replaces_host_and_port() {
    let server = MariaDb::start(&ServerOptions::default()).expect("server");
    let tdb = server.create_database().expect("db");
    let via_socket = |args: &[&str], socket: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_sf-ctl"))
            .env_clear()
            .env("SHAKENFIST_MARIADB_HOST", "127.0.0.1")
            .env("SHAKENFIST_MARIADB_PORT", "1")
            .env("SHAKENFIST_MARIADB_USER", "root")
            .env("SHAKENFIST_MARIADB_DATABASE", &tdb.name)
            .env("SHAKENFIST_MARIADB_SOCKET", socket)
            .args(args)
            .output()
            .expect("run sf-ctl")
    };
    let socket = server.socket();
    let schema = via_socket(&["ensure-mariadb-schema"], &socket);
    assert!(schema.status.success(), "{}", text(&schema));
    let key = via_socket(&["bootstrap-system-key"], &socket);
    assert!(key.status.success(), "{}", text(&key));
    assert_eq!(String::from_utf8_lossy(&key.stdout).trim().len(), 64);

    // A wrong socket is named in the error, with what to check.
    let missing = socket.with_file_name("no-such.sock");
    let out = via_socket(&["check-mariadb"], &missing);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no-such.sock"), "{}", text(&out));
    assert!(
        text(&out).contains("SHAKENFIST_MARIADB_SOCKET"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_example_tuning_file_gives_a_compatible_server() {
    let opts = ServerOptions {
        defaults_file: Some(workspace_file("examples/mariadb-tuning.cnf")),
        ..ServerOptions::default()
    };
    let server = MariaDb::start(&opts).expect("server with examples/mariadb-tuning.cnf");
    assert_eq!(
        server.execute("SELECT @@tx_isolation").expect("q").trim(),
        "READ-COMMITTED"
    );
    let tdb = server.create_database().expect("db");
    let out = sf_ctl(tdb.port, &tdb.name, &["check-mariadb"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn bootstrap_system_key_prints_the_key_once_and_stores_its_hash() {
    let tdb = TestDatabase::new().expect("db");
    let schema = sf_ctl(tdb.port, &tdb.name, &["ensure-mariadb-schema"]);
    assert!(schema.status.success(), "{}", text(&schema));

    let first = sf_ctl(tdb.port, &tdb.name, &["bootstrap-system-key"]);
    assert!(first.status.success(), "{}", text(&first));
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the key on stdout: {stdout:?}");
    let key = lines[0];
    assert_eq!(key.len(), 64, "{key}");
    let stored = tdb
        .query("SELECT key_hash FROM namespace_keys WHERE namespace = 'system' AND key_name = 'bootstrap'")
        .expect("query");
    let hash = stored
        .lines()
        .find(|l| l.starts_with("$argon2id$"))
        .unwrap_or_else(|| panic!("no hash in {stored:?}"));
    assert!(!stored.contains(key), "the clear key is not stored");
    assert!(sf_api::auth::verify_key(key, hash));
    let ns = tdb
        .query("SELECT COUNT(*) FROM namespaces WHERE name = 'system'")
        .expect("query");
    assert!(ns.lines().any(|l| l.trim() == "1"), "{ns}");

    // An existing key is kept unless --replace.
    let again = sf_ctl(tdb.port, &tdb.name, &["bootstrap-system-key"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(again.stdout.is_empty());
    let replaced = sf_ctl(tdb.port, &tdb.name, &["bootstrap-system-key", "--replace"]);
    assert!(replaced.status.success(), "{}", text(&replaced));
    let new_key = String::from_utf8_lossy(&replaced.stdout).trim().to_string();
    assert_ne!(new_key, key);
    let other = sf_ctl(
        tdb.port,
        &tdb.name,
        &["bootstrap-system-key", "--key-name", "second"],
    );
    assert!(other.status.success(), "{}", text(&other));
}

/// The Helm chart's install hook: the key comes from a Secret, is never printed, and a
/// rerun (every upgrade) with the same key changes nothing.
#[test]
fn bootstrap_system_key_stores_a_given_key_idempotently() {
    let tdb = TestDatabase::new().expect("db");
    let schema = sf_ctl(tdb.port, &tdb.name, &["ensure-mariadb-schema"]);
    assert!(schema.status.success(), "{}", text(&schema));
    let given = |key: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sf-ctl"))
            .env_clear()
            .env("SHAKENFIST_MARIADB_HOST", "127.0.0.1")
            .env("SHAKENFIST_MARIADB_PORT", tdb.port.to_string())
            .env("SHAKENFIST_MARIADB_USER", "root")
            .env("SHAKENFIST_MARIADB_DATABASE", &tdb.name)
            .env("SHAKENFIST_SYSTEM_KEY", key)
            .args(["bootstrap-system-key", "--key-name", "cluster"])
            .args(extra)
            .output()
            .expect("run sf-ctl")
    };
    let hash = || {
        tdb.query("SELECT key_hash FROM namespace_keys WHERE namespace = 'system' AND key_name = 'cluster'")
            .expect("query")
            .lines()
            .find(|l| l.starts_with("$argon2id$"))
            .map(str::to_string)
    };
    let key = "k".repeat(40);

    // Refused before anything is stored, the variable named.
    for bad in [
        "short",
        "with a space but long enough to pass the length rule",
    ] {
        let out = given(bad, &[]);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        assert!(
            text(&out).contains("SHAKENFIST_SYSTEM_KEY"),
            "{}",
            text(&out)
        );
        assert_eq!(hash(), None, "nothing stored for a refused key");
    }

    let first = given(&key, &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(first.stdout.is_empty(), "a given key is never printed");
    assert!(!text(&first).contains(&key), "{}", text(&first));
    let stored = hash().expect("stored");
    assert!(sf_api::auth::verify_key(&key, &stored));

    // The rerun of an upgrade: success, the stored hash (and so its tokens) untouched.
    let again = given(&key, &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(hash().as_deref(), Some(stored.as_str()));

    // Another key under the same name is refused unless --replace.
    let other = "o".repeat(40);
    let refused = given(&other, &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert_eq!(hash().as_deref(), Some(stored.as_str()));
    let replaced = given(&other, &["--replace"]);
    assert!(replaced.status.success(), "{}", text(&replaced));
    let now = hash().expect("stored");
    assert!(sf_api::auth::verify_key(&other, &now));
    assert!(!sf_api::auth::verify_key(&key, &now));
}
