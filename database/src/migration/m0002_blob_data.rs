//! Migration 2: `blob_data`, the bytes of small blobs (screenshots).
//!
//! Contract: idempotent like every migration. Holds one row per blob whose bytes are
//! kept in MariaDB (at most [`crate::store::blobs::MAX_BLOB_DATA`]); large blobs
//! (artifact images) live on the nodes' disks and never come here.

use sea_orm_migration::prelude::*;

use super::{TableVersion, record_versions};

/// The tables this migration creates and the version it leaves them at.
pub const TABLES: &[TableVersion] = &[TableVersion::new("blob_data", 1)];

/// Migration 2.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS blob_data (
                uid CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
                mime_type VARCHAR(255) CHARACTER SET ascii NOT NULL,
                size BIGINT UNSIGNED NOT NULL,
                sha256 CHAR(64) CHARACTER SET ascii NOT NULL,
                data LONGBLOB NOT NULL,
                created_at DATETIME(6) NOT NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
        )
        .await?;
        record_versions(db, TABLES).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS blob_data")
            .await?;
        Ok(())
    }
}
