//! Shared set-up for the store tests: a fresh database with the schema, and a store.

#![allow(dead_code)]

use sf_database::{MariaDbArgs, Store, connect, connect_pool, ensure_schema};
use sf_harness::TestDatabase;

/// The namespaces [`store`] creates: a namespaced object needs its namespace.
pub const TEST_NAMESPACES: [&str; 3] = ["demo", "default", "other"];

/// A fresh database with every table, the namespaces of [`TEST_NAMESPACES`], and a
/// store over it.
pub async fn store() -> (TestDatabase, Store) {
    store_with_pool(16).await
}

/// Like [`store`] with a pool of `size` connections.
pub async fn store_with_pool(size: u32) -> (TestDatabase, Store) {
    let (tdb, store) = bare_store_with_pool(size).await;
    for ns in TEST_NAMESPACES {
        store.create_namespace(ns).await.expect("test namespace");
    }
    (tdb, store)
}

/// A fresh database with every table and no namespace, and a store over it.
pub async fn bare_store() -> (TestDatabase, Store) {
    bare_store_with_pool(16).await
}

/// Like [`bare_store`] with a pool of `size` connections.
pub async fn bare_store_with_pool(size: u32) -> (TestDatabase, Store) {
    let tdb = TestDatabase::new().expect("test database");
    let mut args = MariaDbArgs::local_root(tdb.port, &tdb.name);
    let db = connect(&args).await.expect("connect");
    ensure_schema(&db).await.expect("schema");
    db.close().await.expect("close");
    args.pool_size = size;
    let pool = connect_pool(&args).await.expect("pool");
    (tdb, Store::new(pool))
}

/// Another store (another pool: as a second gateway instance) on the same database.
pub async fn second_store(tdb: &TestDatabase, size: u32) -> Store {
    let mut args = MariaDbArgs::local_root(tdb.port, &tdb.name);
    args.pool_size = size;
    Store::new(connect_pool(&args).await.expect("pool"))
}
