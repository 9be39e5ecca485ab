//! Entity of the `network_vxids` table: one row per network known to IPAM, holding its
//! VXLAN id (unique across networks, NULL until allocated) and the name its IPAMLeases
//! derive from; IPAM writes lock it to serialise a network's reservations.

use sea_orm::entity::prelude::*;

/// A row of `network_vxids`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "network_vxids")]
pub struct Model {
    /// Column `network_uid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub network_uid: String,
    /// Column `namespace`: the network's namespace ('' for the floating network).
    pub namespace: String,
    /// Column `name`: the network's name.
    pub name: String,
    /// Column `vxid`: the VXLAN id, once allocated.
    #[sea_orm(unique)]
    pub vxid: Option<u32>,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
