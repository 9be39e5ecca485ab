//! Entity of the `revision_counter` table: The one-row global revision counter.

use sea_orm::entity::prelude::*;

/// A row of `revision_counter`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "revision_counter")]
pub struct Model {
    /// Column `id`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: u8,
    /// Column `revision`.
    pub revision: u64,
    /// Column `compacted_revision`.
    pub compacted_revision: u64,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
