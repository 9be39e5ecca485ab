//! Operation names, intent sequences and the observed operations every plan reads.
//!
//! Contract (DESIGN invariant 5):
//! - An operation's name is `<kind-lower>-<target name>-<seq>-<op short>`
//!   ([`operation_name`]), where `seq` is the target's intent sequence. Per-node
//!   operations append `-<node>` to the short name, operations a controller emits on
//!   behalf of another object append the object's name.
//! - The current sequence of a target is the larger of its `status.intentSeq` and the
//!   sequence in the name of any observed operation of that target ([`current_seq`]).
//!   A plan that emits new operations names them all at `current + 1` and emits
//!   `BumpIntentSeq { to: current + 1 }`. So a plan repeated after a crash (the
//!   operation was created, status not yet written, or the observation predates the
//!   create) reproduces the same names (AlreadyExists), while a deliberate re-issue,
//!   planned once the previous operation is visible, gets a new name.
//! - Observations list the operations a reconciled object's controller created for
//!   it (apply labels each `shakenfist.io/owner=<uid>`), in any state, oldest first,
//!   read no older than the object itself (observe lists them after reading it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sf_schema::operation::{OperationState, OperationType};

/// An existing ClusterOperation as observe() reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedOperation {
    /// `metadata.name`.
    pub name: String,
    /// `spec.operationType`.
    pub operation_type: OperationType,
    /// `status.state`.
    pub state: OperationState,
    /// `spec.node`.
    #[serde(default)]
    pub node: Option<String>,
    /// `spec.payload`.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// `status.completedAt`.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// `status.errorReport.message`, for conditions.
    #[serde(default)]
    pub error: Option<String>,
}

impl ObservedOperation {
    /// A queued operation of `operation_type` (test and dry-run convenience).
    pub fn new(
        name: impl Into<String>,
        operation_type: OperationType,
        state: OperationState,
    ) -> Self {
        Self {
            name: name.into(),
            operation_type,
            state,
            node: None,
            payload: serde_json::Value::Null,
            completed_at: None,
            error: None,
        }
    }

    /// Queued or executing.
    pub fn is_outstanding(&self) -> bool {
        matches!(
            self.state,
            OperationState::Queued | OperationState::Executing
        )
    }

    /// Error or abort.
    pub fn failed(&self) -> bool {
        matches!(self.state, OperationState::Error | OperationState::Abort)
    }
}

/// The short name of an operation type used in operation names.
pub fn short_name(operation_type: &OperationType) -> &str {
    use OperationType as T;
    match operation_type {
        T::InstanceCreate => "create",
        T::InstancePowerOn => "poweron",
        T::InstancePowerOff => "poweroff",
        T::InstancePause => "pause",
        T::InstanceUnpause => "unpause",
        T::InstanceReboot => "reboot",
        T::InstanceScreenshot => "screenshot",
        T::InstanceSnapshot => "snapshot",
        T::InterfaceHotPlug => "hotplug",
        T::InterfaceHotUnplug => "unplug",
        T::InstanceDelete => "delete",
        T::NetworkCreateOnNode => "netcreate",
        T::NetworkUpdateDhcp => "dhcp",
        T::NetworkDelete => "netdelete",
        T::ArtifactFetch => "fetch",
        T::BlobDelete => "rm",
        T::Other(other) => other.as_str(),
    }
}

/// `<kind-lower>-<target>-<seq>-<short>`, e.g. `instance-web-1-4-pause`.
pub fn operation_name(kind: &str, target: &str, seq: u64, short: &str) -> String {
    format!("{}-{target}-{seq}-{short}", kind.to_ascii_lowercase())
}

/// The intent sequence in `op_name` when it was named for `kind`/`target`.
pub fn intent_seq_of(kind: &str, target: &str, op_name: &str) -> Option<u64> {
    let prefix = format!("{}-{target}-", kind.to_ascii_lowercase());
    let rest = op_name.strip_prefix(&prefix)?;
    let (digits, short) = rest.split_once('-')?;
    // Short names start with a letter, so `web`'s prefix never parses `web-1`'s names.
    let starts_with_letter = short.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if !starts_with_letter || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The target's current intent sequence: `stored` or the highest in an observed name.
pub fn current_seq(kind: &str, target: &str, stored: u64, ops: &[ObservedOperation]) -> u64 {
    ops.iter()
        .filter_map(|op| intent_seq_of(kind, target, &op.name))
        .fold(stored, u64::max)
}

/// The most recent operation matching `pred`: highest own sequence, then latest in
/// the (oldest-first) observation.
pub(crate) fn latest<'a>(
    kind: &str,
    target: &str,
    ops: &'a [ObservedOperation],
    pred: impl Fn(&ObservedOperation) -> bool,
) -> Option<&'a ObservedOperation> {
    ops.iter()
        .enumerate()
        .filter(|(_, op)| pred(op))
        .max_by_key(|(i, op)| (intent_seq_of(kind, target, &op.name).unwrap_or(0), *i))
        .map(|(_, op)| op)
}

/// The first plan of a new incarnation of an object pins its intent sequence to its
/// `resourceVersion` before naming anything, so that an object re-created under the
/// name of a deleted one never names an operation that the deleted one already used
/// (its operations linger until purged, and a repeated name is AlreadyExists, which
/// apply treats as "already done"). Every intent of the old incarnation created an
/// operation, and each creation consumed a revision before the new object existed, so
/// the old sequences are all below the new object's `resourceVersion`.
///
/// Returns the `BumpIntentSeq` to apply alone (with the finalizer) when `stored` is 0,
/// no operation of this incarnation is observed and `resource_version` is known (a dry
/// run of an unsaved object has none and plans as before).
pub fn pin_intent_seq(
    kind: &str,
    target: &str,
    stored: u64,
    resource_version: Option<&str>,
    ops: &[ObservedOperation],
) -> Option<crate::Action> {
    let rv: u64 = resource_version?.parse().ok()?;
    let named = ops
        .iter()
        .any(|op| intent_seq_of(kind, target, &op.name).is_some());
    (stored == 0 && rv > 0 && !named).then_some(crate::Action::BumpIntentSeq { to: rv })
}

/// Names the operations of one plan: everything new is named at `current + 1`.
#[derive(Debug, Clone)]
pub(crate) struct Namer {
    kind: String,
    target: String,
    stored: u64,
    current: u64,
}

impl Namer {
    pub(crate) fn new(kind: &str, target: &str, stored: u64, ops: &[ObservedOperation]) -> Self {
        Self {
            kind: kind.to_owned(),
            target: target.to_owned(),
            stored,
            current: current_seq(kind, target, stored, ops),
        }
    }

    /// The name of a new operation in this plan.
    pub(crate) fn next(&self, short: &str) -> String {
        operation_name(&self.kind, &self.target, self.current + 1, short)
    }

    /// The `BumpIntentSeq` this plan needs: to `current + 1` when it enqueues, to
    /// `current` when status lags behind an observed operation, else none.
    pub(crate) fn bump(&self, enqueues: bool) -> Option<crate::Action> {
        let to = if enqueues {
            self.current + 1
        } else {
            self.current
        };
        (to > self.stored).then_some(crate::Action::BumpIntentSeq { to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_incarnation_pins_its_sequence_to_its_resource_version() {
        use crate::Action;
        // First plan of a saved object: pin.
        assert_eq!(
            pin_intent_seq("Instance", "web-3", 0, Some("147"), &[]),
            Some(Action::BumpIntentSeq { to: 147 })
        );
        // Already pinned, never saved (dry run), or an operation already named (a
        // crash between creating it and writing status): no pin.
        assert_eq!(
            pin_intent_seq("Instance", "web-3", 147, Some("150"), &[]),
            None
        );
        assert_eq!(pin_intent_seq("Instance", "web-3", 0, None, &[]), None);
        let ops = [ObservedOperation::new(
            "instance-web-3-148-create",
            OperationType::InstanceCreate,
            OperationState::Queued,
        )];
        assert_eq!(
            pin_intent_seq("Instance", "web-3", 0, Some("150"), &ops),
            None
        );
    }

    #[test]
    fn names_round_trip_through_intent_seq_of() {
        let table = [
            ("Instance", "web-1", 4, "pause", "instance-web-1-4-pause"),
            (
                "Network",
                "web",
                1,
                "netcreate-hv-1",
                "network-web-1-netcreate-hv-1",
            ),
            (
                "NetworkInterface",
                "web-1-2",
                7,
                "hotplug",
                "networkinterface-web-1-2-7-hotplug",
            ),
        ];
        for (kind, target, seq, short, want) in table {
            let name = operation_name(kind, target, seq, short);
            assert_eq!(name, want);
            assert_eq!(intent_seq_of(kind, target, &name), Some(seq), "{name}");
        }
    }

    #[test]
    fn foreign_names_have_no_sequence() {
        let table = [
            ("Instance", "web", "instance-web-1-4-pause"), // web-1's op, not web's
            ("Instance", "web", "network-web-3-netcreate-hv-1"),
            ("Instance", "web", "instance-web-x-pause"),
            ("Instance", "web", "instance-web-3-"),
        ];
        for (kind, target, name) in table {
            assert_eq!(intent_seq_of(kind, target, name), None, "{name}");
        }
    }

    #[test]
    fn current_seq_is_the_highest_known() {
        let ops = vec![
            ObservedOperation::new(
                "instance-a-3-create",
                OperationType::InstanceCreate,
                OperationState::Complete,
            ),
            ObservedOperation::new(
                "instance-a-5-pause",
                OperationType::InstancePause,
                OperationState::Queued,
            ),
            ObservedOperation::new(
                "network-n-9-netcreate-hv",
                OperationType::NetworkCreateOnNode,
                OperationState::Queued,
            ),
        ];
        assert_eq!(current_seq("Instance", "a", 4, &ops), 5);
        assert_eq!(current_seq("Instance", "a", 6, &ops), 6);
        assert_eq!(current_seq("Instance", "b", 0, &ops), 0);
    }
}
