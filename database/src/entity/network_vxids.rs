//! Entity of the `network_vxids` table: VXLAN ids, unique across networks.

use sea_orm::entity::prelude::*;

/// A row of `network_vxids`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "network_vxids")]
pub struct Model {
    /// Column `vxid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub vxid: u32,
    /// Column `network_uid`.
    pub network_uid: String,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
