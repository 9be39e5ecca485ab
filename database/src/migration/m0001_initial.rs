//! Migration 1: every table of the first schema.
//!
//! Contract: idempotent (`CREATE TABLE IF NOT EXISTS`, `INSERT IGNORE`), because
//! MariaDB DDL is not transactional and a half-applied run must be safe to repeat.
//! Every table is InnoDB, utf8mb4; names that Kubernetes treats as case-sensitive use
//! `utf8mb4_bin`, identifiers (uids, kinds) are ASCII. Records each table's version in
//! `schema_versions`.

use sea_orm_migration::prelude::*;

use super::{TableVersion, record_versions};

/// The tables this migration creates and the version it leaves them at.
pub const TABLES: &[TableVersion] = &[
    TableVersion::new("schema_versions", 1),
    TableVersion::new("seaql_migrations", 1),
    TableVersion::new("revision_counter", 1),
    TableVersion::new("resources", 1),
    TableVersion::new("change_log", 1),
    TableVersion::new("namespaces", 1),
    TableVersion::new("namespace_keys", 1),
    TableVersion::new("cluster_operations", 1),
    TableVersion::new("operation_dependencies", 1),
    TableVersion::new("work_queue", 1),
    TableVersion::new("ipam_reservations", 1),
    TableVersion::new("network_vxids", 1),
    TableVersion::new("events", 1),
    TableVersion::new("event_objects", 1),
    TableVersion::new("cluster_locks", 1),
];

const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci";

/// The DDL, one statement per entry.
fn statements() -> Vec<String> {
    let uid = "CHAR(36) CHARACTER SET ascii COLLATE ascii_bin";
    let kind = "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin";
    let name = "VARCHAR(253) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS schema_versions (
                table_name VARCHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY,
                version INT UNSIGNED NOT NULL,
                updated_at DATETIME(6) NOT NULL
            ) {TABLE_OPTIONS}"
        ),
        // The global revision (DESIGN invariant 1): one row, bumped with
        // `UPDATE ... SET revision = LAST_INSERT_ID(revision + 1)` as the first statement
        // of every writing transaction, so the row lock is held to COMMIT, commit order is
        // revision order and a rollback leaves no gap.
        format!(
            "CREATE TABLE IF NOT EXISTS revision_counter (
                id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
                revision BIGINT UNSIGNED NOT NULL,
                compacted_revision BIGINT UNSIGNED NOT NULL DEFAULT 0,
                CONSTRAINT revision_counter_one_row CHECK (id = 1)
            ) {TABLE_OPTIONS}"
        ),
        "INSERT IGNORE INTO revision_counter (id, revision, compacted_revision) VALUES (1, 0, 0)"
            .to_string(),
        // Every resource of every kind: the full Kubernetes-shaped object as JSON plus the
        // columns that are looked up or compared. Cluster-scoped objects have namespace ''.
        format!(
            "CREATE TABLE IF NOT EXISTS resources (
                uid {uid} NOT NULL,
                kind {kind} NOT NULL,
                namespace {name} NOT NULL DEFAULT '',
                name {name} NOT NULL,
                resource_version BIGINT UNSIGNED NOT NULL,
                generation BIGINT NOT NULL,
                created_at DATETIME(6) NOT NULL,
                deletion_timestamp DATETIME(6) NULL,
                object JSON NOT NULL,
                PRIMARY KEY (kind, namespace, name),
                UNIQUE KEY ux_resources_uid (uid),
                KEY ix_resources_rv (resource_version)
            ) {TABLE_OPTIONS}"
        ),
        // Append-only log of every write, in revision order; watches replay from it.
        format!(
            "CREATE TABLE IF NOT EXISTS change_log (
                revision BIGINT UNSIGNED NOT NULL PRIMARY KEY,
                event_type ENUM('ADDED','MODIFIED','DELETED') NOT NULL,
                kind {kind} NOT NULL,
                namespace {name} NOT NULL DEFAULT '',
                name {name} NOT NULL,
                uid {uid} NOT NULL,
                object JSON NOT NULL,
                prev_object JSON NULL,
                created_at DATETIME(6) NOT NULL,
                KEY ix_change_log_created (created_at),
                KEY ix_change_log_kind (kind, revision)
            ) {TABLE_OPTIONS}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS namespaces (
                name VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
                uid {uid} NOT NULL,
                created_at DATETIME(6) NOT NULL,
                UNIQUE KEY ux_namespaces_uid (uid)
            ) {TABLE_OPTIONS}"
        ),
        // Keys are stored as password hashes only; the nonce changes on rotation and is
        // carried in issued tokens, so rotating a key revokes them.
        format!(
            "CREATE TABLE IF NOT EXISTS namespace_keys (
                namespace VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                key_name VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                key_hash VARCHAR(255) CHARACTER SET ascii NOT NULL,
                nonce {uid} NOT NULL,
                created_at DATETIME(6) NOT NULL,
                PRIMARY KEY (namespace, key_name),
                CONSTRAINT fk_namespace_keys_namespace FOREIGN KEY (namespace)
                    REFERENCES namespaces (name) ON DELETE CASCADE
            ) {TABLE_OPTIONS}"
        ),
        // The queryable projection of ClusterOperation resources (the object itself is in
        // `resources`); written in the same transaction as the object.
        format!(
            "CREATE TABLE IF NOT EXISTS cluster_operations (
                uid {uid} NOT NULL PRIMARY KEY,
                namespace {name} NOT NULL,
                name {name} NOT NULL,
                operation_type VARCHAR(64) CHARACTER SET ascii NOT NULL,
                target_kind {kind} NOT NULL,
                target_uid {uid} NOT NULL,
                target_name {name} NOT NULL,
                node {name} NULL,
                priority TINYINT UNSIGNED NOT NULL,
                state ENUM('queued','executing','complete','error','abort') NOT NULL,
                created_at DATETIME(6) NOT NULL,
                updated_at DATETIME(6) NOT NULL,
                UNIQUE KEY ux_cluster_operations_name (namespace, name),
                KEY ix_cluster_operations_target (target_uid, state),
                KEY ix_cluster_operations_state (state, updated_at),
                KEY ix_cluster_operations_type (operation_type, created_at)
            ) {TABLE_OPTIONS}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS operation_dependencies (
                op_uid {uid} NOT NULL,
                depends_on_uid {uid} NOT NULL,
                PRIMARY KEY (op_uid, depends_on_uid),
                KEY ix_operation_dependencies_on (depends_on_uid)
            ) {TABLE_OPTIONS}"
        ),
        // One row per claimable operation. `waiting_on` counts unfinished dependencies;
        // the ready scan reads ix_work_queue_ready and claims with SKIP LOCKED.
        // `queue_name` is `cluster` or `node:<node>` (a node name is at most 253).
        // `claimed_target` is the target's uid while the row is claimed, else NULL: its
        // unique key lets at most one operation per target be claimed at a time, enforced
        // by InnoDB even between concurrent claimers (NULLs never collide). RTRIM is a
        // no-op on a CHAR value but MariaDB refuses a bare CHAR column under IF() in a
        // generated column (its value would depend on PAD_CHAR_TO_FULL_LENGTH).
        format!(
            "CREATE TABLE IF NOT EXISTS work_queue (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                queue_name VARCHAR(258) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                priority TINYINT UNSIGNED NOT NULL,
                scheduled_at DATETIME(6) NOT NULL,
                claimed_at DATETIME(6) NULL,
                claimed_by VARCHAR(255) NULL,
                claim_id VARCHAR(64) CHARACTER SET ascii NULL,
                heartbeat_at DATETIME(6) NULL,
                attempts INT UNSIGNED NOT NULL DEFAULT 0,
                waiting_on INT UNSIGNED NOT NULL DEFAULT 0,
                op_uid {uid} NOT NULL,
                target_uid {uid} NOT NULL,
                claimed_target {uid} AS (IF(claimed_at IS NULL, NULL, RTRIM(target_uid))) PERSISTENT,
                created_at DATETIME(6) NOT NULL,
                UNIQUE KEY ux_work_queue_op (op_uid),
                UNIQUE KEY ux_work_queue_claimed_target (claimed_target),
                KEY ix_work_queue_ready (queue_name, waiting_on, claimed_at, priority, scheduled_at),
                KEY ix_work_queue_claim (claim_id),
                KEY ix_work_queue_target (target_uid),
                KEY ix_work_queue_heartbeat (claimed_at, heartbeat_at)
            ) {TABLE_OPTIONS}"
        ),
        // Addresses as INT UNSIGNED so they sort numerically (and work on MariaDB < 10.10,
        // which has no INET4).
        format!(
            "CREATE TABLE IF NOT EXISTS ipam_reservations (
                network_uid {uid} NOT NULL,
                address INT UNSIGNED NOT NULL,
                reservation_type ENUM('network','broadcast','gateway','floating','routed','instance','deletion-halo','unknown') NOT NULL,
                user_kind {kind} NULL,
                user_uid {uid} NULL,
                reserved_at DATETIME(6) NOT NULL,
                halo_until DATETIME(6) NULL,
                comment TEXT NULL,
                PRIMARY KEY (network_uid, address),
                KEY ix_ipam_reservations_user (network_uid, user_uid)
            ) {TABLE_OPTIONS}"
        ),
        // One row per network known to IPAM: its VXLAN id (NULL until allocated; the
        // floating network never gets one), and its namespace and name (IPAMLease names
        // derive from them). Every IPAM write of a network locks this row first, so a
        // network's reservations are serialised (DESIGN invariant 7).
        format!(
            "CREATE TABLE IF NOT EXISTS network_vxids (
                network_uid {uid} NOT NULL PRIMARY KEY,
                namespace {name} NOT NULL DEFAULT '',
                name {name} NOT NULL DEFAULT '',
                vxid INT UNSIGNED NULL,
                UNIQUE KEY ux_network_vxids_vxid (vxid)
            ) {TABLE_OPTIONS}"
        ),
        // Shaken Fist v0.8's event tables, same columns and read shape.
        format!(
            "CREATE TABLE IF NOT EXISTS events (
                event_uuid CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
                event_type VARCHAR(32) CHARACTER SET ascii NOT NULL,
                timestamp DOUBLE NOT NULL,
                fqdn VARCHAR(255) NOT NULL,
                duration DOUBLE NULL,
                message TEXT NOT NULL,
                extra JSON NULL,
                request_id VARCHAR(64) CHARACTER SET ascii NULL,
                KEY ix_events_type_time (event_type, timestamp),
                KEY ix_events_request (request_id)
            ) {TABLE_OPTIONS}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS event_objects (
                object_type VARCHAR(32) CHARACTER SET ascii NOT NULL,
                object_uuid VARCHAR(36) CHARACTER SET ascii NOT NULL,
                event_uuid CHAR(36) CHARACTER SET ascii NOT NULL,
                PRIMARY KEY (object_type, object_uuid, event_uuid),
                KEY ix_event_objects_event (event_uuid)
            ) {TABLE_OPTIONS}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS cluster_locks (
                lock_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
                lock_id {uid} NOT NULL,
                holder VARCHAR(255) NOT NULL,
                node VARCHAR(255) NOT NULL,
                pid INT UNSIGNED NOT NULL,
                acquired_at DATETIME(6) NOT NULL,
                expires_at DATETIME(6) NOT NULL
            ) {TABLE_OPTIONS}"
        ),
    ]
}

/// Migration 1.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in statements() {
            db.execute_unprepared(&statement).await?;
        }
        record_versions(db, TABLES).await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the initial schema is not reversible: restore a mariadb-dump instead".into(),
        ))
    }
}
