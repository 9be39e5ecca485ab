//! Entity of the `cluster_locks` table: Named leases.

use sea_orm::entity::prelude::*;

/// A row of `cluster_locks`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "cluster_locks")]
pub struct Model {
    /// Column `lock_key`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub lock_key: String,
    /// Column `lock_id`.
    pub lock_id: String,
    /// Column `holder`.
    pub holder: String,
    /// Column `node`.
    pub node: String,
    /// Column `pid`.
    pub pid: u32,
    /// Column `acquired_at`.
    pub acquired_at: DateTimeUtc,
    /// Column `expires_at`.
    pub expires_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
