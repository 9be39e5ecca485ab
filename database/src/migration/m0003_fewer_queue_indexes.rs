//! Migration 3: drops two indexes that every queue write maintained and no query needs.
//!
//! Contract: idempotent like every migration (`DROP INDEX IF EXISTS`). Leaves
//! `work_queue` and `cluster_operations` at version 2.
//! - `work_queue.ix_work_queue_heartbeat (claimed_at, heartbeat_at)`: the reaper's
//!   condition on `COALESCE(heartbeat_at, claimed_at)` cannot use it beyond "claimed",
//!   which `ux_work_queue_claimed_target` already answers (non-NULL exactly while
//!   claimed); yet every enqueue, claim, heartbeat and completion updated it. Without
//!   it a heartbeat touches no secondary index at all. (The queue-depth gauge's count
//!   of unclaimed rows read it too; that is most of the table, so scanning another
//!   index costs the same.)
//! - `cluster_operations.ix_cluster_operations_type (operation_type, created_at)`: no
//!   statement filters or orders on the operation type.
//!
//! Measured on the queue benchmark (docs/performance.md, session 5).

use sea_orm_migration::prelude::*;

use super::{TableVersion, record_versions};

/// The tables this migration changes and the version it leaves them at.
pub const TABLES: &[TableVersion] = &[
    TableVersion::new("work_queue", 2),
    TableVersion::new("cluster_operations", 2),
];

/// Migration 3.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE work_queue DROP INDEX IF EXISTS ix_work_queue_heartbeat",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE cluster_operations DROP INDEX IF EXISTS ix_cluster_operations_type",
        )
        .await?;
        record_versions(db, TABLES).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE work_queue ADD INDEX IF NOT EXISTS ix_work_queue_heartbeat (claimed_at, heartbeat_at)",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE cluster_operations ADD INDEX IF NOT EXISTS ix_cluster_operations_type (operation_type, created_at)",
        )
        .await?;
        record_versions(
            db,
            &[
                TableVersion::new("work_queue", 1),
                TableVersion::new("cluster_operations", 1),
            ],
        )
        .await
    }
}
