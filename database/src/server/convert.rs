//! Conversions between the wire types and the store's, and error mapping.

use serde_json::Value;
use sf_schema::selector::{FieldSelector, LabelSelector};
use tonic::Status;

use crate::store::StoreError;

/// The gRPC status for a store error (see `gateway.proto` for the mapping).
pub fn status_from_store(e: &StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::NotFound { .. } => Status::not_found(msg),
        StoreError::AlreadyExists { .. } => Status::already_exists(msg),
        StoreError::Conflict { .. } => Status::aborted(msg),
        StoreError::Invalid(_) => Status::invalid_argument(msg),
        StoreError::Expired { .. } => Status::out_of_range(msg),
        StoreError::StaleLease { .. } => Status::failed_precondition(msg),
        StoreError::Congested { .. } => Status::resource_exhausted(msg),
        StoreError::Unavailable { .. } => Status::unavailable(msg),
        StoreError::Query { .. } | StoreError::Corrupt(_) => Status::internal(msg),
    }
}

/// Parses an object's JSON bytes.
pub fn parse_object(bytes: &[u8]) -> Result<Value, StoreError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Invalid(format!("object is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(StoreError::Invalid("object must be a JSON object".into()));
    }
    Ok(v)
}

/// Serialises JSON for the wire.
pub fn json_bytes(v: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Parses label and field selectors.
pub fn parse_selectors(
    labels: &str,
    fields: &str,
) -> Result<(LabelSelector, FieldSelector), StoreError> {
    let l = LabelSelector::parse(labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let f = FieldSelector::parse(fields).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok((l, f))
}
