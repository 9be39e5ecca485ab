//! Entity of the `work_queue` table: Claimable work, one row per queued or executing operation.

use sea_orm::entity::prelude::*;

/// A row of `work_queue`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "work_queue")]
pub struct Model {
    /// Column `id`.
    #[sea_orm(primary_key)]
    pub id: u64,
    /// Column `queue_name`.
    pub queue_name: String,
    /// Column `priority`.
    pub priority: u8,
    /// Column `scheduled_at`.
    pub scheduled_at: DateTimeUtc,
    /// Column `claimed_at`.
    pub claimed_at: Option<DateTimeUtc>,
    /// Column `claimed_by`.
    pub claimed_by: Option<String>,
    /// Column `claim_id`.
    pub claim_id: Option<String>,
    /// Column `heartbeat_at`.
    pub heartbeat_at: Option<DateTimeUtc>,
    /// Column `attempts`.
    pub attempts: u32,
    /// Column `waiting_on`.
    pub waiting_on: u32,
    /// Column `op_uid`.
    pub op_uid: String,
    /// Column `target_uid`.
    pub target_uid: String,
    /// Column `claimed_target`: generated (`target_uid` while claimed, else NULL), unique;
    /// never written.
    pub claimed_target: Option<String>,
    /// Column `created_at`.
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
