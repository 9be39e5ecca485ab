//! Entity of the `ipam_reservations` table: IPv4 reservations per network; addresses as integers.

use sea_orm::entity::prelude::*;

/// A row of `ipam_reservations`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "ipam_reservations")]
pub struct Model {
    /// Column `network_uid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub network_uid: String,
    /// Column `address`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub address: u32,
    /// Column `reservation_type`.
    pub reservation_type: String,
    /// Column `user_kind`.
    pub user_kind: Option<String>,
    /// Column `user_uid`.
    pub user_uid: Option<String>,
    /// Column `reserved_at`.
    pub reserved_at: DateTimeUtc,
    /// Column `halo_until`.
    pub halo_until: Option<DateTimeUtc>,
    /// Column `comment`.
    pub comment: Option<String>,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
