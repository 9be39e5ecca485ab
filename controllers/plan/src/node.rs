//! The node reconciler's plan: [`plan_node`].
//!
//! Contract (shakenfist.md §2 and DESIGN "node `missing → stopping`"):
//! - A node that checked in within `NODE_CHECKIN_MAXIMUM` (120 s) is `created`:
//!   initial → created, missing → created on return, and error → created when the
//!   error was the lost check-in (condition `Ready` reason `CheckInLost`).
//! - No check-in for longer than that: created/degraded/initial → `missing`.
//! - No check-in for ten times that: → `error`, and its instances go to error
//!   ([`Action::MarkInstancesError`] before the state write, so a crash in between
//!   repeats the marking, which is idempotent).
//! - `stopping` is left alone whether or not the node checks in: an operator may
//!   drain a missing node (missing → stopping, the deliberate divergence), and the
//!   drain is not overridden by the check-in timeline. `stopped` and `deleted` nodes
//!   are expected to be silent.
//! - A node that never checked in stays `initial`.
//! - The plan ends with a requeue at the next deadline, since time alone moves the
//!   state; with nothing to change it holds nothing else.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sf_schema::common::ConditionStatus;
use sf_schema::node::{Node, NodeState};

use crate::action::{Action, Plan, StateValue, condition};

/// The node timeline's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// `NODE_CHECKIN_MAXIMUM`: seconds without a check-in before a node is missing (120).
    pub checkin_maximum_secs: i64,
    /// A node is in error after this many times `checkin_maximum_secs` (10).
    pub error_multiplier: i64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            checkin_maximum_secs: 120,
            error_multiplier: 10,
        }
    }
}

const LOST: &str = "CheckInLost";

fn requeue(secs: i64) -> Action {
    Action::Requeue {
        after_secs: u64::try_from(secs.max(1)).unwrap_or(1),
    }
}

/// Plans one reconcile of `node` at `now` (see the module contract).
pub fn plan_node(node: &Node, now: DateTime<Utc>, cfg: &NodeConfig) -> Vec<Action> {
    let status = node.status.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    let state = status.state.clone();
    let mut plan = Plan::default();
    if matches!(
        state,
        NodeState::Stopping | NodeState::Stopped | NodeState::Deleted | NodeState::Other(_)
    ) {
        return Vec::new();
    }
    let Some(seen) = status.last_seen else {
        return Vec::new();
    };
    let age = (now - seen).num_seconds().max(0);
    let missing_after = cfg.checkin_maximum_secs;
    let error_after = cfg
        .checkin_maximum_secs
        .saturating_mul(cfg.error_multiplier);
    let conditions = &status.conditions;
    let lost_error =
        sf_schema::common::find_condition(conditions, "Ready").is_some_and(|c| c.reason == LOST);

    let set = |plan: &mut Plan, to: NodeState| {
        if state != to && state.can_transition_to(&to) {
            plan.push(Action::SetState {
                state: StateValue::Node(to),
                message: None,
            });
        }
    };

    if age <= missing_after {
        let back = match state {
            NodeState::Initial | NodeState::Missing => true,
            NodeState::Error => lost_error,
            _ => false,
        };
        if back {
            set(&mut plan, NodeState::Created);
        }
        if back || state == NodeState::Created {
            plan.push_opt(condition(
                conditions,
                "Ready",
                ConditionStatus::True,
                "CheckingIn",
                "",
            ));
        }
        if state != NodeState::Error || back {
            plan.push(requeue(missing_after - age + 1));
        }
    } else if age <= error_after {
        if matches!(
            state,
            NodeState::Initial | NodeState::Created | NodeState::Degraded
        ) {
            set(&mut plan, NodeState::Missing);
        }
        if state != NodeState::Error {
            let message = format!("no check-in for {age} s");
            let late = condition(
                conditions,
                "Ready",
                ConditionStatus::False,
                "CheckInLate",
                message,
            );
            // The message counts seconds: write it only on the transition.
            if state != NodeState::Missing {
                plan.push_opt(late);
            }
            plan.push(requeue(error_after - age + 1));
        }
    } else if state != NodeState::Error {
        let reason = format!("node {name} has not checked in for {age} s");
        plan.push(Action::MarkInstancesError {
            node: name,
            reason: reason.clone(),
        });
        set(&mut plan, NodeState::Error);
        plan.push_opt(condition(
            conditions,
            "Ready",
            ConditionStatus::False,
            LOST,
            reason,
        ));
    }
    plan.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cond, now};
    use sf_schema::node::{NodeSpec, NodeStatus};

    fn node(state: NodeState, seen_secs_ago: Option<i64>, ready: Option<(&str, &str)>) -> Node {
        let mut n = Node::new("hv-1", NodeSpec::default());
        n.status = Some(NodeStatus {
            state,
            last_seen: seen_secs_ago.map(|s| now() - chrono::Duration::seconds(s)),
            conditions: ready
                .map(|(status, reason)| vec![cond("Ready", status, reason, "")])
                .unwrap_or_default(),
            ..NodeStatus::default()
        });
        n
    }

    fn state_of(plan: &[Action]) -> Option<NodeState> {
        plan.iter().find_map(|a| match a {
            Action::SetState {
                state: StateValue::Node(s),
                ..
            } => Some(s.clone()),
            _ => None,
        })
    }

    #[test]
    fn missing_then_error_timeline() {
        let cfg = NodeConfig::default();
        // (state now, seconds since the last check-in, expected next state, marks instances)
        let table = [
            (NodeState::Created, 30, None, false),
            (NodeState::Created, 120, None, false),
            (NodeState::Created, 121, Some(NodeState::Missing), false),
            (NodeState::Missing, 600, None, false),
            (NodeState::Missing, 1200, None, false),
            (NodeState::Missing, 1201, Some(NodeState::Error), true),
            (NodeState::Created, 5000, Some(NodeState::Error), true),
            (NodeState::Error, 5000, None, false),
        ];
        for (state, ago, want, marks) in table {
            let n = node(state.clone(), Some(ago), Some(("True", "CheckingIn")));
            let plan = plan_node(&n, now(), &cfg);
            assert_eq!(state_of(&plan), want, "{state} after {ago} s: {plan:?}");
            let marked = plan
                .iter()
                .any(|a| matches!(a, Action::MarkInstancesError { node, .. } if node == "hv-1"));
            assert_eq!(marked, marks, "{state} after {ago} s");
            if marks {
                let mark = plan
                    .iter()
                    .position(|a| matches!(a, Action::MarkInstancesError { .. }));
                let set = plan
                    .iter()
                    .position(|a| matches!(a, Action::SetState { .. }));
                assert!(
                    mark < set,
                    "instances are marked before the node's state is written"
                );
            }
        }
    }

    #[test]
    fn steady_node_only_requeues_at_its_deadline() {
        let n = node(NodeState::Created, Some(30), Some(("True", "CheckingIn")));
        let plan = plan_node(&n, now(), &NodeConfig::default());
        assert_eq!(plan, vec![Action::Requeue { after_secs: 91 }]);
        assert!(plan.iter().all(|a| !a.is_write()));
        let missing = node(
            NodeState::Missing,
            Some(600),
            Some(("False", "CheckInLate")),
        );
        assert_eq!(
            plan_node(&missing, now(), &NodeConfig::default()),
            vec![Action::Requeue { after_secs: 601 }]
        );
    }

    #[test]
    fn return_and_drain_table() {
        let cfg = NodeConfig::default();
        let table = [
            (
                "missing comes back",
                NodeState::Missing,
                Some(10),
                Some(("False", "CheckInLate")),
                Some(NodeState::Created),
            ),
            (
                "lost node comes back",
                NodeState::Error,
                Some(10),
                Some(("False", LOST)),
                Some(NodeState::Created),
            ),
            (
                "broken node checking in stays in error",
                NodeState::Error,
                Some(10),
                Some(("False", "Broken")),
                None,
            ),
            (
                "first check-in",
                NodeState::Initial,
                Some(10),
                None,
                Some(NodeState::Created),
            ),
            ("never checked in", NodeState::Initial, None, None, None),
            (
                "draining while unreachable stays stopping",
                NodeState::Stopping,
                Some(5000),
                None,
                None,
            ),
            (
                "draining and checking in stays stopping",
                NodeState::Stopping,
                Some(10),
                None,
                None,
            ),
            (
                "stopped is silent",
                NodeState::Stopped,
                Some(5000),
                None,
                None,
            ),
        ];
        for (what, state, ago, ready, want) in table {
            let plan = plan_node(&node(state, ago, ready), now(), &cfg);
            assert_eq!(state_of(&plan), want, "{what}: {plan:?}");
            assert!(
                !plan
                    .iter()
                    .any(|a| matches!(a, Action::MarkInstancesError { .. })),
                "{what}"
            );
        }
        // missing → stopping is a legal operator move the plan then leaves alone.
        assert!(NodeState::Missing.can_transition_to(&NodeState::Stopping));
    }
}
