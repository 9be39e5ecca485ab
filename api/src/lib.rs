//! `sf-api`: Shaken Fist's public face, a Kubernetes-compatible resource API over
//! sf-database.
//!
//! Contract: stateless over sf-database (reached only through `sf-database-client`
//! over gRPC; no SQL, no sea-orm), sf-api speaks the Kubernetes API conventions closely
//! enough that the `kube` crate (`Api`, `watcher`, `Controller`) and kubectl work
//! against it unchanged (see `shared/research/k8s-api.md`).
//!
//! Modules: [`actions`] (instance operations, blob data, events, admin resources),
//! [`v08`] (Shaken Fist v0.8 `/instances`, `/networks`, `/interfaces`, `/artifacts`, `/nodes`, `/blobs`), [`openapi`] (OpenAPI v3 for kubectl), [`requests`] (metrics, api-requests events), [`plan`] (dry-run plans with sf-plan), [`table`] (kubectl Table output), [`auth`] (keys, tokens, the token check), [`namespaces`] (namespace and
//! key management), [`config`] (keys), [`server`] (routes, request ids, health, shutdown), [`tls`]
//! (HTTPS: certificates, reloading, self-signed generation),
//! [`resources`] (CRUD, patch, `/status`), [`watch`], [`discovery`], [`admission`]
//! (unknown fields, typed decoding, validation), [`kinds`] (the kind table from the
//! CRDs), [`params`] (query parameters), [`gateway`] (the sf-database calls) and
//! [`error`] (`Status` responses).

pub mod actions;
pub mod admission;
pub mod auth;
pub mod config;
pub mod discovery;
pub mod error;
pub mod gateway;
pub mod kinds;
pub mod namespaces;
pub mod openapi;
pub mod params;
pub mod plan;
pub mod requests;
pub mod resources;
pub mod server;
pub mod table;
pub use sf_daemon::tls;
pub mod v08;
pub mod watch;

pub use config::Config;
pub use error::ApiError;
pub use server::{App, ServerError, Settings, bind, router, serve, serve_app, serve_app_tls};
