//! Entity of the `change_log` table: The append-only log of every write, by revision.

use sea_orm::entity::prelude::*;

/// A row of `change_log`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "change_log")]
pub struct Model {
    /// Column `revision`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub revision: u64,
    /// Column `event_type`.
    pub event_type: String,
    /// Column `kind`.
    pub kind: String,
    /// Column `namespace`.
    pub namespace: String,
    /// Column `name`.
    pub name: String,
    /// Column `uid`.
    pub uid: String,
    /// Column `object`.
    #[sea_orm(column_type = "Json")]
    pub object: Json,
    /// Column `prev_object`.
    #[sea_orm(column_type = "Json")]
    pub prev_object: Option<Json>,
    /// Column `created_at`.
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
