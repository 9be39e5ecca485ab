//! Migration 4: `tombstones`, the final state of recently deleted objects of the kinds
//! Shaken Fist v0.8 clients look up after deleting them.
//!
//! Contract: idempotent like every migration. One row per removed Instance or Network
//! (by uid), written in the transaction that removes its `resources` row
//! ([`crate::store::resources`]), deleted once older than the change log's retention
//! (`CompactChangeLog`) or with its namespace (a namesake namespace made later never
//! reads them). A v0.8 client polls a deleted object by uuid
//! until it reads `state: deleted`; without this row the object is simply gone and
//! the poll fails with 404.

use sea_orm_migration::prelude::*;

use super::{TableVersion, record_versions};

/// The tables this migration creates and the version it leaves them at.
pub const TABLES: &[TableVersion] = &[TableVersion::new("tombstones", 1)];

/// Migration 4.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS tombstones (
                uid CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
                kind VARCHAR(64) CHARACTER SET ascii NOT NULL,
                namespace VARCHAR(253) NOT NULL,
                resource_version BIGINT UNSIGNED NOT NULL,
                object LONGTEXT NOT NULL,
                deleted_at DATETIME(6) NOT NULL,
                KEY ix_tombstones_deleted (deleted_at),
                KEY ix_tombstones_namespace (namespace)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
        )
        .await?;
        record_versions(db, TABLES).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS tombstones")
            .await?;
        Ok(())
    }
}
