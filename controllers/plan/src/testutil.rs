//! Fixtures shared by the plan tests.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sf_schema::common::{Condition, ConditionStatus};
use sf_schema::operation::{OperationState, OperationType};

use crate::{ObservedOperation, PlanContext};

/// A fixed instant.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

/// The default context at [`now`].
pub fn ctx() -> PlanContext {
    PlanContext::new(now())
}

/// An observed operation.
pub fn op(name: &str, operation_type: OperationType, state: OperationState) -> ObservedOperation {
    let mut o = ObservedOperation::new(name, operation_type, state);
    if matches!(
        o.state,
        OperationState::Complete | OperationState::Error | OperationState::Abort
    ) {
        o.completed_at = Some(now() - chrono::Duration::seconds(3600));
    }
    o
}

/// A condition as status would hold it.
pub fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: ConditionStatus::parse(status),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now(),
        observed_generation: Some(1),
    }
}

/// `obj` with `metadata.deletionTimestamp` set.
pub fn with_deletion<T: Serialize + DeserializeOwned>(obj: T) -> T {
    let mut value = serde_json::to_value(obj).expect("serializes");
    value["metadata"]["deletionTimestamp"] = "2025-06-01T11:59:00Z".into();
    serde_json::from_value(value).expect("deserializes")
}
