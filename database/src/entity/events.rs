//! Entity of the `events` table: Shaken Fist v0.8 events.

use sea_orm::entity::prelude::*;

/// A row of `events`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    /// Column `event_uuid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_uuid: String,
    /// Column `event_type`.
    pub event_type: String,
    /// Column `timestamp`.
    #[sea_orm(column_type = "Double")]
    pub timestamp: f64,
    /// Column `fqdn`.
    pub fqdn: String,
    /// Column `duration`.
    #[sea_orm(column_type = "Double")]
    pub duration: Option<f64>,
    /// Column `message`.
    pub message: String,
    /// Column `extra`.
    #[sea_orm(column_type = "Json")]
    pub extra: Option<Json>,
    /// Column `request_id`.
    pub request_id: Option<String>,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
