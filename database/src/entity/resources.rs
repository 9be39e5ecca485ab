//! Entity of the `resources` table: Every resource object, keyed by kind, namespace and name.

use sea_orm::entity::prelude::*;

/// A row of `resources`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "resources")]
pub struct Model {
    /// Column `uid`.
    pub uid: String,
    /// Column `kind`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    /// Column `namespace`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub namespace: String,
    /// Column `name`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// Column `resource_version`.
    pub resource_version: u64,
    /// Column `generation`.
    pub generation: i64,
    /// Column `created_at`.
    pub created_at: DateTimeUtc,
    /// Column `deletion_timestamp`.
    pub deletion_timestamp: Option<DateTimeUtc>,
    /// Column `object`.
    #[sea_orm(column_type = "Json")]
    pub object: Json,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
