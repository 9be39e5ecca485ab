//! Entity of the `operation_dependencies` table: Edges of the operation dependency graph.

use sea_orm::entity::prelude::*;

/// A row of `operation_dependencies`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "operation_dependencies")]
pub struct Model {
    /// Column `op_uid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub op_uid: String,
    /// Column `depends_on_uid`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub depends_on_uid: String,
}

/// No relations are declared: joins are written in the store.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
