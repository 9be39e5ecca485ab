//! The schema tooling against a real private MariaDB.

use std::collections::BTreeSet;

use sea_orm::{DatabaseConnection, EntityName, Iterable};
use sf_database::entity;
use sf_database::migration::{SchemaError, expected_versions, read_versions};
use sf_database::{MariaDbArgs, check_schema_versions, compat, connect, ensure_schema};
use sf_harness::{MariaDb, ServerOptions, TestDatabase};

async fn fresh() -> (TestDatabase, DatabaseConnection) {
    let tdb = TestDatabase::new().expect("test database");
    let db = connect(&MariaDbArgs::local_root(tdb.port, &tdb.name))
        .await
        .expect("connect");
    (tdb, db)
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::to_string).collect()
}

/// Everything information_schema says about the tables, columns and indexes.
fn describe(tdb: &TestDatabase) -> String {
    let sql = format!(
        "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' ORDER BY 1; \
         SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='{db}' ORDER BY 1, ORDINAL_POSITION; \
         SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS WHERE TABLE_SCHEMA='{db}' ORDER BY 1, 2, 3; \
         SELECT table_name, version, updated_at FROM schema_versions ORDER BY 1",
        db = tdb.name
    );
    tdb.query(&sql).expect("describe")
}

#[tokio::test]
async fn schema_is_created_from_empty_with_innodb_utf8mb4_tables() {
    let (tdb, db) = fresh().await;
    assert!(matches!(
        check_schema_versions(&db).await,
        Err(SchemaError::Mismatch(m)) if m.missing.len() == expected_versions().len()
    ));
    let report = ensure_schema(&db).await.expect("ensure");
    assert_eq!(
        report.applied,
        vec![
            "m0001_initial".to_string(),
            "m0002_blob_data".to_string(),
            "m0003_fewer_queue_indexes".to_string(),
            "m0004_tombstones".to_string()
        ]
    );
    // Migration 3 dropped the two indexes no statement used.
    let indexes = tdb
        .query(&format!(
            "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA='{}' \
             AND INDEX_NAME IN ('ix_work_queue_heartbeat', 'ix_cluster_operations_type')",
            tdb.name
        ))
        .expect("indexes");
    assert_eq!(indexes.trim(), "", "dropped indexes remain: {indexes}");
    let tables = tdb
        .query(&format!(
            "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA='{}'",
            tdb.name
        ))
        .expect("tables");
    let mut names = BTreeSet::new();
    for row in tables.lines() {
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols[1], "InnoDB", "{row}");
        assert!(cols[2].starts_with("utf8mb4_"), "{row}");
        names.insert(cols[0].to_string());
    }
    for table in entity::TABLES {
        assert!(names.contains(*table), "table {table} missing: {names:?}");
    }
    check_schema_versions(&db)
        .await
        .expect("versions match after ensure");
}

#[tokio::test]
async fn ensure_twice_changes_nothing_the_second_time() {
    let (tdb, db) = fresh().await;
    ensure_schema(&db).await.expect("first");
    let before = describe(&tdb);
    let second = ensure_schema(&db).await.expect("second");
    assert!(second.applied.is_empty(), "{second:?}");
    assert!(second.to_string().contains("nothing to do"));
    assert_eq!(before, describe(&tdb), "the second run changed the schema");
}

#[tokio::test]
async fn schema_versions_lists_every_table() {
    let (tdb, db) = fresh().await;
    ensure_schema(&db).await.expect("ensure");
    let tables = lines(
        &tdb.query(&format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{}'",
            tdb.name
        ))
        .expect("tables"),
    );
    let versions = read_versions(&db).await.expect("versions");
    let recorded: BTreeSet<String> = versions.keys().cloned().collect();
    assert_eq!(tables, recorded);
    assert!(versions.values().all(|v| *v >= 1));
}

#[tokio::test]
async fn a_changed_version_is_refused_with_the_fix() {
    let (tdb, db) = fresh().await;
    ensure_schema(&db).await.expect("ensure");
    tdb.query("UPDATE schema_versions SET version = 0 WHERE table_name = 'work_queue'")
        .expect("downgrade");
    tdb.query("UPDATE schema_versions SET version = 99 WHERE table_name = 'events'")
        .expect("upgrade");
    let err = check_schema_versions(&db).await.expect_err("mismatch");
    let text = err.to_string();
    assert!(
        text.contains("table work_queue: version 0, expected 2"),
        "{text}"
    );
    assert!(text.contains("table events: version 99 is NEWER"), "{text}");
    assert!(text.contains("sf-ctl ensure-mariadb-schema"), "{text}");
}

#[tokio::test]
async fn entities_match_the_tables_column_for_column() {
    let (tdb, db) = fresh().await;
    ensure_schema(&db).await.expect("ensure");
    drop(db);
    fn entity_columns<E>() -> (String, Vec<String>)
    where
        E: sea_orm::EntityTrait + EntityName + Default,
    {
        let cols = <E as sea_orm::EntityTrait>::Column::iter()
            .map(|c| sea_orm::IdenStatic::as_str(&c).to_string())
            .collect();
        (E::default().table_name().to_string(), cols)
    }
    let all = vec![
        entity_columns::<entity::schema_versions::Entity>(),
        entity_columns::<entity::revision_counter::Entity>(),
        entity_columns::<entity::resources::Entity>(),
        entity_columns::<entity::change_log::Entity>(),
        entity_columns::<entity::namespaces::Entity>(),
        entity_columns::<entity::namespace_keys::Entity>(),
        entity_columns::<entity::cluster_operations::Entity>(),
        entity_columns::<entity::operation_dependencies::Entity>(),
        entity_columns::<entity::work_queue::Entity>(),
        entity_columns::<entity::ipam_reservations::Entity>(),
        entity_columns::<entity::network_vxids::Entity>(),
        entity_columns::<entity::events::Entity>(),
        entity_columns::<entity::event_objects::Entity>(),
        entity_columns::<entity::cluster_locks::Entity>(),
        entity_columns::<entity::blob_data::Entity>(),
        entity_columns::<entity::tombstones::Entity>(),
    ];
    assert_eq!(all.len(), entity::TABLES.len());
    for (table, cols) in all {
        let actual: Vec<String> = tdb
            .query(&format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='{}' AND TABLE_NAME='{table}' ORDER BY ORDINAL_POSITION",
                tdb.name
            ))
            .expect("columns")
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(cols, actual, "entity {table} differs from its table");
    }
}

#[tokio::test]
async fn the_private_server_passes_the_compatibility_check() {
    let (_tdb, db) = fresh().await;
    let facts = compat::check(&db, "test").await.expect("compatible");
    assert!(facts.version.contains("MariaDB"));
    assert_eq!(facts.database_charset, "utf8mb4");
}

async fn refused(opts: ServerOptions, expect: &str) {
    let server = MariaDb::start(&opts).expect("server");
    let tdb = server.create_database().expect("db");
    // The database is created utf8mb4 explicitly, so only the server setting is wrong.
    let db = connect(&MariaDbArgs::local_root(tdb.port, &tdb.name))
        .await
        .expect("connect");
    let err = compat::check(&db, "bad")
        .await
        .expect_err("must be refused");
    let text = err.to_string();
    assert!(text.contains(expect), "{text}");
    assert!(text.lines().count() >= 3, "multi-line: {text}");
    assert!(text.contains("Fix:"), "{text}");
}

#[tokio::test]
async fn a_latin1_server_is_refused() {
    refused(ServerOptions::latin1(), "found latin1; expected utf8mb4").await;
}

#[tokio::test]
async fn a_myisam_server_is_refused() {
    refused(ServerOptions::myisam(), "found MyISAM; expected InnoDB").await;
}
