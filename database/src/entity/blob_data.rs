//! Entity of the `blob_data` table: the bytes of small blobs.

use sea_orm::entity::prelude::*;

/// A row of `blob_data`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "blob_data")]
pub struct Model {
    /// Column `uid`: the Blob resource's uid.
    #[sea_orm(primary_key, auto_increment = false)]
    pub uid: String,
    /// Column `mime_type`.
    pub mime_type: String,
    /// Column `size`.
    pub size: u64,
    /// Column `sha256` (lower-case hex).
    pub sha256: String,
    /// Column `data`.
    pub data: Vec<u8>,
    /// Column `created_at`.
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
