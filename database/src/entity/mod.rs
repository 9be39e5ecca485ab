//! sea-orm entities, one module per table created by the migrations.
//!
//! Contract: column names and types mirror the migrations (`migration::m0001_initial`, `m0002_blob_data`, `m0004_tombstones`; `m0003` drops only indexes) exactly (a test
//! compares them with information_schema); entities carry no behaviour. Enum columns are
//! plain strings here: their meaning lives in `sf-schema`.

pub mod blob_data;
pub mod change_log;
pub mod cluster_locks;
pub mod cluster_operations;
pub mod event_objects;
pub mod events;
pub mod ipam_reservations;
pub mod namespace_keys;
pub mod namespaces;
pub mod network_vxids;
pub mod operation_dependencies;
pub mod resources;
pub mod revision_counter;
pub mod schema_versions;
pub mod tombstones;
pub mod work_queue;

/// Every table that has an entity, for the schema conformance test.
pub const TABLES: &[&str] = &[
    "schema_versions",
    "revision_counter",
    "resources",
    "change_log",
    "namespaces",
    "namespace_keys",
    "cluster_operations",
    "operation_dependencies",
    "work_queue",
    "ipam_reservations",
    "network_vxids",
    "events",
    "event_objects",
    "cluster_locks",
    "blob_data",
    "tombstones",
];
