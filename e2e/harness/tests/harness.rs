//! The harness starts real private servers with the settings asked for.

use sf_harness::{MariaDb, ServerOptions, TestDatabase};

#[test]
fn fresh_databases_are_distinct_and_utf8mb4() {
    let a = TestDatabase::new().expect("database a");
    let b = TestDatabase::new().expect("database b");
    assert_ne!(a.name, b.name);
    let charset = a
        .query(&format!(
            "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='{}'",
            a.name
        ))
        .expect("query");
    assert_eq!(charset.trim(), "utf8mb4");
    a.query("CREATE TABLE t (id INT PRIMARY KEY)")
        .expect("create");
    // The table exists in a, not in b.
    assert!(b.query("SELECT * FROM t").is_err());
}

#[test]
fn wrong_settings_servers_really_have_them() {
    let latin1 = MariaDb::start(&ServerOptions::latin1()).expect("latin1 server");
    assert_eq!(
        latin1
            .execute("SELECT @@character_set_server")
            .expect("q")
            .trim(),
        "latin1"
    );
    let myisam = MariaDb::start(&ServerOptions::myisam()).expect("myisam server");
    assert_eq!(
        myisam
            .execute("SELECT @@default_storage_engine")
            .expect("q")
            .trim(),
        "MyISAM"
    );
}

#[test]
fn restart_keeps_the_data_and_the_port() {
    let mut server = MariaDb::start(&ServerOptions::default()).expect("server");
    let port = server.port();
    server
        .execute(
            "CREATE DATABASE r; CREATE TABLE r.t (id INT PRIMARY KEY); INSERT INTO r.t VALUES (7)",
        )
        .expect("write");
    server.restart().expect("restart");
    assert_eq!(server.port(), port);
    assert_eq!(
        server.execute("SELECT id FROM r.t").expect("read").trim(),
        "7",
        "a committed row survives the restart"
    );
}
