//! Entity of the `tombstones` table: the final state of recently removed objects.

use sea_orm::entity::prelude::*;

/// A row of `tombstones`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tombstones")]
pub struct Model {
    /// Column `uid`: the removed object's uid.
    #[sea_orm(primary_key, auto_increment = false)]
    pub uid: String,
    /// Column `kind`.
    pub kind: String,
    /// Column `namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// Column `resource_version`: the revision of its removal.
    pub resource_version: u64,
    /// Column `object`: its final state (JSON text).
    #[sea_orm(column_type = "Text")]
    pub object: String,
    /// Column `deleted_at`.
    pub deleted_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
