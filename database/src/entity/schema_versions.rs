//! Entity of the `schema_versions` table: Recorded version of each table.

use sea_orm::entity::prelude::*;

/// A row of `schema_versions`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "schema_versions")]
pub struct Model {
    /// Column `table_name`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub table_name: String,
    /// Column `version`.
    pub version: u32,
    /// Column `updated_at`.
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
