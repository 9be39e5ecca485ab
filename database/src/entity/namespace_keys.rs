//! Entity of the `namespace_keys` table: Namespace API keys, stored as password hashes.

use sea_orm::entity::prelude::*;

/// A row of `namespace_keys`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "namespace_keys")]
pub struct Model {
    /// Column `namespace`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub namespace: String,
    /// Column `key_name`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_name: String,
    /// Column `key_hash`.
    pub key_hash: String,
    /// Column `nonce`.
    pub nonce: String,
    /// Column `created_at`.
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
