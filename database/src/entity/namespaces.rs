//! Entity of the `namespaces` table: Namespaces (tenants), the parent of their keys.

use sea_orm::entity::prelude::*;

/// A row of `namespaces`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "namespaces")]
pub struct Model {
    /// Column `name`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// Column `uid`.
    pub uid: String,
    /// Column `created_at`.
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
