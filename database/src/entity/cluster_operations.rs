//! Entity of the `cluster_operations` table: Queryable projection of ClusterOperation resources.

use sea_orm::entity::prelude::*;

/// A row of `cluster_operations`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "cluster_operations")]
pub struct Model {
    /// Column `uid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub uid: String,
    /// Column `namespace`.
    pub namespace: String,
    /// Column `name`.
    pub name: String,
    /// Column `operation_type`.
    pub operation_type: String,
    /// Column `target_kind`.
    pub target_kind: String,
    /// Column `target_uid`.
    pub target_uid: String,
    /// Column `target_name`.
    pub target_name: String,
    /// Column `node`.
    pub node: Option<String>,
    /// Column `priority`.
    pub priority: u8,
    /// Column `state`.
    pub state: String,
    /// Column `created_at`.
    pub created_at: DateTimeUtc,
    /// Column `updated_at`.
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
