//! `sf-database`'s storage library: the only code of the project that speaks SQL.
//!
//! Contract: only the sf-database gateway and `sf-ctl` link this crate (no other daemon
//! opens a MariaDB connection). It owns the connection settings ([`connection`]), the
//! start-up compatibility check ([`compat`]), the schema and its versions
//! ([`migration`]) and the sea-orm entities of every table ([`entity`]).

pub mod compat;
pub mod connection;
pub mod daemon;
pub mod entity;
pub mod migration;
pub mod server;
pub mod store;

pub use compat::{CompatError, ServerFacts};
pub use connection::{ConnectError, MariaDbArgs, PoolError, connect, connect_pool};
pub use migration::{EnsureReport, SchemaError, check_schema_versions, ensure_schema};
pub use store::{Store, StoreError};
