//! Entity of the `event_objects` table: Which objects each event concerns.

use sea_orm::entity::prelude::*;

/// A row of `event_objects`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "event_objects")]
pub struct Model {
    /// Column `object_type`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub object_type: String,
    /// Column `object_uuid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub object_uuid: String,
    /// Column `event_uuid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_uuid: String,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
