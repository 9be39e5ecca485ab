//! The sf-database gateway's gRPC contract.
//!
//! Contract: generated code only (from `proto/gateway.proto`); no behaviour. Every
//! daemon that talks to sf-database uses these types; the semantics of each call are
//! documented on the RPC in the `.proto`.

#![allow(missing_docs, clippy::all)]

/// The gRPC metadata key that carries the gateway's shared secret on every call.
pub const SECRET_HEADER: &str = "x-sf-gateway-secret";

/// `shakenfist.gateway.v1`: resources, watch, operations and work queue, IPAM, events,
/// locks and maintenance.
pub mod v1 {
    tonic::include_proto!("shakenfist.gateway.v1");
}
