//! sf-cluster: the Shaken Fist controllers (issue 5).
//!
//! Contract: kube-runtime `Controller`s for Instance, Network, NetworkInterface and
//! Node run against sf-api through a `kube::Client` (a service key exchanged for a
//! token by sf-client), and call sf-database directly for what must be atomic
//! (CreateOperations, IPAM, Abort, PrepareNetwork) and for maintenance. Each reconcile
//! is staged observe ([`observe`]) → plan (the pure `sf_plan` crate) → apply and
//! status ([`apply`]). Only the holder of the `cluster_locks` lease ([`lease`]) runs
//! controllers and maintenance ([`maintenance`]); others stand by ([`daemon`]).
//!
//! Modules: [`config`] (keys and defaults), [`daemon`] (the process), [`lease`],
//! [`controllers`] (wiring, watches, error policy), [`observe`], [`apply`],
//! [`kubeapi`] (kind-generic sf-api calls), [`context`], [`maintenance`],
//! [`floating`] (the floating network), [`metrics`], [`error`].

pub mod apply;
pub mod config;
pub mod context;
pub mod controllers;
pub mod daemon;
pub mod error;
pub mod floating;
pub mod kubeapi;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod observe;

pub use config::Config;
pub use daemon::serve;
