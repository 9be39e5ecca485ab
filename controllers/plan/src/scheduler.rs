//! The scheduler: where a new instance goes, and the resource arithmetic behind
//! `GET /admin/resources`.
//!
//! Contract:
//! - [`schedule`] is pure and deterministic: the same request and nodes give the same
//!   answer. Filters, per node: state `created`, `spec.schedulable`, capacity reported,
//!   measured disk not full, and enough CPU, RAM and disk *after reservations and
//!   overcommit* for the request on top of what is already committed (the sum of the
//!   requests of the instances placed there). A requested node (`spec.placedOn`) is
//!   the only candidate: honoured or refused with its reasons. A request that must go
//!   where a blob already is (`holding`: a disk based on a snapshot, whose blob is
//!   never copied between nodes) rejects every other node with the reason given.
//! - Scoring (higher wins): `1 − load` where load is the larger of the committed CPU
//!   and RAM fractions after placement, minus 1 when that load exceeds
//!   `SCHEDULER_TARGET_LOAD`, minus half the measured disk-used fraction and a quarter
//!   of the measured disk-busy fraction. Ties go to the node with the lower name.
//!   Filling the least loaded node first spreads instances in proportion to capacity.
//! - A refusal ([`Unschedulable`]) lists every node with why it was rejected, sorted by
//!   node name: `cluster full: hv-1: not enough RAM (needs 4096 MiB, 1024 free after
//!   reservations and overcommit); hv-2: not schedulable`.
//! - [`resource_summary`] uses the same arithmetic ([`NodeArithmetic`]).
//!
//! Units: CPU in vCPUs (threads), RAM in MiB, disk in GiB.

use serde::{Deserialize, Serialize};
use sf_schema::instance::{DiskType, InstanceSpec};
use sf_schema::node::{Node, NodeCapacity, NodeState, NodeUsage};

/// The scheduler's settings; [`Default`] carries Shaken Fist's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// `NODE_CPU_RESERVATION_THREADS`: threads kept for the host (2).
    pub cpu_reservation_threads: u64,
    /// `NODE_RAM_RESERVATION_GB`: memory kept for the host (2).
    pub ram_reservation_gb: u64,
    /// `NODE_DISK_RESERVATION_GB`: disk kept for the host (20).
    pub disk_reservation_gb: u64,
    /// `CPU_OVERCOMMIT_RATIO` (3.0).
    pub cpu_overcommit_ratio: f64,
    /// `RAM_OVERCOMMIT_RATIO` (3.0).
    pub ram_overcommit_ratio: f64,
    /// `SCHEDULER_DISK_OVERCOMMIT` (5.0).
    pub disk_overcommit_ratio: f64,
    /// `SCHEDULER_TARGET_LOAD`: committed fraction above which a node is penalised (0.75).
    pub target_load: f64,
    /// A node whose measured disk use reaches this percentage is full (95).
    pub disk_full_percent: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            cpu_reservation_threads: 2,
            ram_reservation_gb: 2,
            disk_reservation_gb: 20,
            cpu_overcommit_ratio: 3.0,
            ram_overcommit_ratio: 3.0,
            disk_overcommit_ratio: 5.0,
            target_load: 0.75,
            disk_full_percent: 95.0,
        }
    }
}

/// An amount of CPU, RAM and disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// vCPUs.
    pub cpus: u64,
    /// MiB.
    pub memory_mib: u64,
    /// GiB.
    pub disk_gib: u64,
}

impl Resources {
    /// What an instance asks for: its vCPUs, memory and the sizes of its disks
    /// (cdroms and disks without a size count as 0).
    pub fn for_instance(spec: &InstanceSpec) -> Self {
        let disk_gib = spec
            .disks
            .iter()
            .filter(|d| d.disk_type != DiskType::Cdrom)
            .filter_map(|d| d.size)
            .sum();
        Self {
            cpus: u64::from(spec.cpus),
            memory_mib: spec.memory,
            disk_gib,
        }
    }

    /// Field-wise sum.
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_add(other.cpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            disk_gib: self.disk_gib.saturating_add(other.disk_gib),
        }
    }
}

/// A scheduling request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRequest {
    /// What the instance needs.
    pub resources: Resources,
    /// `spec.placedOn`: the only node to consider.
    #[serde(default)]
    pub requested_node: Option<String>,
    /// When set, the only nodes that may take it: those holding a disk base's blob
    /// that is never copied between nodes (a snapshot's), with why.
    #[serde(default)]
    pub holding: Option<(Vec<String>, String)>,
}

impl InstanceRequest {
    /// The request of an instance spec.
    pub fn for_instance(spec: &InstanceSpec) -> Self {
        Self {
            resources: Resources::for_instance(spec),
            requested_node: spec.placed_on.clone(),
            holding: None,
        }
    }
}

/// What the scheduler knows about a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The Node's name.
    pub name: String,
    /// `status.state`.
    pub state: NodeState,
    /// `spec.schedulable`.
    pub schedulable: bool,
    /// `status.capacity`; a node that has not reported one is not a candidate.
    #[serde(default)]
    pub capacity: Option<NodeCapacity>,
    /// `status.usage` (measured).
    #[serde(default)]
    pub usage: Option<NodeUsage>,
    /// The sum of the requests of the instances placed here (not deleted).
    #[serde(default)]
    pub committed: Resources,
    /// How many instances are placed here.
    #[serde(default)]
    pub instances: u32,
}

impl NodeView {
    /// The view of `node` with what observe() summed over the instances placed on it.
    pub fn from_node(node: &Node, committed: Resources, instances: u32) -> Self {
        let status = node.status.clone().unwrap_or_default();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            state: status.state,
            schedulable: node.spec.schedulable,
            capacity: status.capacity,
            usage: status.usage,
            committed,
            instances,
        }
    }

    /// Commits `request` here (one more instance); for simulations and tests.
    pub fn commit(&mut self, request: Resources) {
        self.committed = self.committed.plus(request);
        self.instances = self.instances.saturating_add(1);
    }
}

/// One resource dimension of a node.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dimension {
    /// What the node has.
    pub capacity: u64,
    /// Kept for the host.
    pub reserved: u64,
    /// `(capacity − reserved) × overcommit ratio`, rounded down.
    pub schedulable: u64,
    /// Requested by the instances placed here.
    pub committed: u64,
    /// `schedulable − committed` (never negative).
    pub free: u64,
    /// Measured: load average (CPU), MiB used (RAM), GiB used (disk).
    pub measured: Option<f64>,
}

impl Dimension {
    fn new(
        capacity: u64,
        reserved: u64,
        ratio: f64,
        committed: u64,
        measured: Option<f64>,
    ) -> Self {
        let usable = capacity.saturating_sub(reserved);
        // u64 → f64 loses precision only beyond 2^53 units, far past any machine.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let schedulable = (usable as f64 * ratio).max(0.0).floor() as u64;
        Self {
            capacity,
            reserved,
            schedulable,
            committed,
            free: schedulable.saturating_sub(committed),
            measured,
        }
    }

    /// Committed fraction of schedulable after adding `more` (1 when nothing is).
    #[allow(clippy::cast_precision_loss)]
    fn load_after(&self, more: u64) -> f64 {
        if self.schedulable == 0 {
            return 1.0;
        }
        self.committed.saturating_add(more) as f64 / self.schedulable as f64
    }
}

/// A node's CPU, RAM and disk arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeArithmetic {
    /// vCPUs.
    pub cpu: Dimension,
    /// MiB.
    pub ram_mib: Dimension,
    /// GiB.
    pub disk_gib: Dimension,
    /// Measured disk busy time, percent.
    pub disk_busy_percent: Option<f64>,
}

impl NodeArithmetic {
    /// The arithmetic of `node`, or `None` when it reported no capacity.
    pub fn of(node: &NodeView, cfg: &SchedulerConfig) -> Option<Self> {
        let capacity = node.capacity.as_ref()?;
        let usage = node.usage.as_ref();
        #[allow(clippy::cast_precision_loss)]
        let disk_measured = usage.map(|u| u.disk_used_gib as f64);
        #[allow(clippy::cast_precision_loss)]
        let ram_measured = usage.map(|u| u.memory_used_mib as f64);
        Some(Self {
            cpu: Dimension::new(
                u64::from(capacity.cpu_threads),
                cfg.cpu_reservation_threads,
                cfg.cpu_overcommit_ratio,
                node.committed.cpus,
                usage.map(|u| u.load_1m),
            ),
            ram_mib: Dimension::new(
                capacity.memory_mib,
                cfg.ram_reservation_gb.saturating_mul(1024),
                cfg.ram_overcommit_ratio,
                node.committed.memory_mib,
                ram_measured,
            ),
            disk_gib: Dimension::new(
                capacity.disk_gib,
                cfg.disk_reservation_gb,
                cfg.disk_overcommit_ratio,
                node.committed.disk_gib,
                disk_measured,
            ),
            disk_busy_percent: usage.map(|u| u.disk_busy_percent),
        })
    }

    /// Measured disk use as a fraction of capacity (0 when unknown).
    #[allow(clippy::cast_precision_loss)]
    fn disk_used_fraction(&self) -> f64 {
        match self.disk_gib.measured {
            Some(used) if self.disk_gib.capacity > 0 => {
                (used / self.disk_gib.capacity as f64).clamp(0.0, 1.0)
            }
            _ => 0.0,
        }
    }
}

/// Where the instance goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The chosen node.
    pub node: String,
    /// Its score (higher is better).
    pub score: f64,
}

/// Why one node was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// The node.
    pub node: String,
    /// Every reason, e.g. `not enough RAM (needs 4096 MiB, 1024 free after
    /// reservations and overcommit)`.
    pub reasons: Vec<String>,
}

/// No node fits; `reason` is the message for the `Scheduled` condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{reason}")]
#[serde(rename_all = "camelCase")]
pub struct Unschedulable {
    /// `cluster full: <node>: <reasons>; ...` or `requested node <n> ...`.
    pub reason: String,
    /// The rejections, sorted by node name.
    pub rejections: Vec<Rejection>,
}

/// Why `node` cannot take `request`: [`rejections`], and not holding what it must;
/// empty when it can.
fn request_rejections(
    node: &NodeView,
    request: &InstanceRequest,
    cfg: &SchedulerConfig,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some((nodes, why)) = &request.holding
        && !nodes.contains(&node.name)
    {
        reasons.push(why.clone());
    }
    reasons.extend(rejections(node, &request.resources, cfg));
    reasons
}

/// Why `node` cannot take `request`'s resources; empty when it can.
fn rejections(node: &NodeView, request: &Resources, cfg: &SchedulerConfig) -> Vec<String> {
    let mut gates = Vec::new();
    if node.state != NodeState::Created {
        gates.push(format!("not ready (state {})", node.state));
    }
    if !node.schedulable {
        gates.push("not schedulable".to_owned());
    }
    let Some(a) = NodeArithmetic::of(node, cfg) else {
        gates.push("no capacity reported".to_owned());
        return gates;
    };
    if !gates.is_empty() {
        return gates;
    }
    let mut reasons = Vec::new();
    let used_percent = a.disk_used_fraction() * 100.0;
    if used_percent >= cfg.disk_full_percent {
        reasons.push(format!("disk full ({used_percent:.0}% used)"));
    }
    let checks = [
        ("CPU", "vCPUs", request.cpus, a.cpu.free),
        ("RAM", "MiB", request.memory_mib, a.ram_mib.free),
        ("disk", "GiB", request.disk_gib, a.disk_gib.free),
    ];
    for (what, unit, needs, free) in checks {
        if needs > free {
            reasons.push(format!(
                "not enough {what} (needs {needs} {unit}, {free} free after reservations and overcommit)"
            ));
        }
    }
    reasons
}

/// The score of a node that passed the filters.
fn score(a: &NodeArithmetic, request: &Resources, cfg: &SchedulerConfig) -> f64 {
    let load = a
        .cpu
        .load_after(request.cpus)
        .max(a.ram_mib.load_after(request.memory_mib));
    let over_target = if load > cfg.target_load { 1.0 } else { 0.0 };
    let busy = a.disk_busy_percent.unwrap_or(0.0).clamp(0.0, 100.0) / 100.0;
    (1.0 - load) - over_target - 0.5 * a.disk_used_fraction() - 0.25 * busy
}

fn join(rejections: &[Rejection]) -> String {
    rejections
        .iter()
        .map(|r| format!("{}: {}", r.node, r.reasons.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Chooses a node for `request` among `nodes`, or says why none fits.
pub fn schedule(
    request: &InstanceRequest,
    nodes: &[NodeView],
    cfg: &SchedulerConfig,
) -> Result<Placement, Unschedulable> {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));

    if let Some(wanted) = &request.requested_node {
        let Some(node) = sorted.iter().find(|n| &n.name == wanted) else {
            return Err(Unschedulable {
                reason: format!("requested node {wanted} does not exist"),
                rejections: vec![Rejection {
                    node: wanted.clone(),
                    reasons: vec!["does not exist".to_owned()],
                }],
            });
        };
        let reasons = request_rejections(node, request, cfg);
        if reasons.is_empty() {
            let a = NodeArithmetic::of(node, cfg);
            return Ok(Placement {
                node: node.name.clone(),
                score: a.map_or(0.0, |a| score(&a, &request.resources, cfg)),
            });
        }
        let rejections = vec![Rejection {
            node: wanted.clone(),
            reasons,
        }];
        return Err(Unschedulable {
            reason: format!("requested node refused: {}", join(&rejections)),
            rejections,
        });
    }

    let mut best: Option<Placement> = None;
    let mut refused = Vec::new();
    for node in sorted {
        let reasons = request_rejections(node, request, cfg);
        if !reasons.is_empty() {
            refused.push(Rejection {
                node: node.name.clone(),
                reasons,
            });
            continue;
        }
        let Some(a) = NodeArithmetic::of(node, cfg) else {
            continue;
        };
        let s = score(&a, &request.resources, cfg);
        // Strictly greater: on a tie the earlier (lower) name stays.
        if best.as_ref().is_none_or(|b| s > b.score) {
            best = Some(Placement {
                node: node.name.clone(),
                score: s,
            });
        }
    }
    best.ok_or_else(|| Unschedulable {
        reason: if refused.is_empty() {
            "cluster full: no nodes".to_owned()
        } else {
            format!("cluster full: {}", join(&refused))
        },
        rejections: refused,
    })
}

/// One node in [`ResourceSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    /// The node.
    pub name: String,
    /// Its state.
    pub state: NodeState,
    /// `spec.schedulable`.
    pub schedulable: bool,
    /// Instances placed here.
    pub instances: u32,
    /// The arithmetic; `None` when no capacity was reported.
    pub resources: Option<NodeArithmetic>,
}

/// Cluster totals in [`ResourceSummary`]: the sum over nodes that reported capacity.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTotals {
    /// Nodes known.
    pub nodes: usize,
    /// Nodes the scheduler may use now (state created and schedulable).
    pub eligible_nodes: usize,
    /// Instances placed.
    pub instances: u64,
    /// vCPUs (free only counts eligible nodes).
    pub cpu: Dimension,
    /// MiB (free only counts eligible nodes).
    pub ram_mib: Dimension,
    /// GiB (free only counts eligible nodes).
    pub disk_gib: Dimension,
}

/// The body of `GET /admin/resources`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSummary {
    /// Sums.
    pub totals: ClusterTotals,
    /// Per node, sorted by name.
    pub nodes: Vec<NodeResources>,
}

fn add(total: &mut Dimension, d: &Dimension, eligible: bool) {
    total.capacity += d.capacity;
    total.reserved += d.reserved;
    total.schedulable += d.schedulable;
    total.committed += d.committed;
    if eligible {
        total.free += d.free;
    }
    if let Some(m) = d.measured {
        total.measured = Some(total.measured.unwrap_or(0.0) + m);
    }
}

/// Cluster totals and per-node CPU/RAM/disk (capacity, reserved, schedulable,
/// committed, free, measured), from the scheduler's arithmetic.
pub fn resource_summary(nodes: &[NodeView], cfg: &SchedulerConfig) -> ResourceSummary {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut totals = ClusterTotals {
        nodes: sorted.len(),
        ..ClusterTotals::default()
    };
    let mut out = Vec::new();
    for node in sorted {
        let eligible = node.state == NodeState::Created && node.schedulable;
        let arithmetic = NodeArithmetic::of(node, cfg);
        totals.instances += u64::from(node.instances);
        if let Some(a) = &arithmetic {
            totals.eligible_nodes += usize::from(eligible);
            add(&mut totals.cpu, &a.cpu, eligible);
            add(&mut totals.ram_mib, &a.ram_mib, eligible);
            add(&mut totals.disk_gib, &a.disk_gib, eligible);
        }
        out.push(NodeResources {
            name: node.name.clone(),
            state: node.state.clone(),
            schedulable: node.schedulable,
            instances: node.instances,
            resources: arithmetic,
        });
    }
    ResourceSummary { totals, nodes: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, threads: u32, ram_gib: u64, disk_gib: u64) -> NodeView {
        NodeView {
            name: name.into(),
            state: NodeState::Created,
            schedulable: true,
            capacity: Some(NodeCapacity {
                cpu_threads: threads,
                memory_mib: ram_gib * 1024,
                disk_gib,
            }),
            usage: None,
            committed: Resources::default(),
            instances: 0,
        }
    }

    fn req(cpus: u64, memory_mib: u64, disk_gib: u64) -> InstanceRequest {
        InstanceRequest {
            holding: None,
            resources: Resources {
                cpus,
                memory_mib,
                disk_gib,
            },
            requested_node: None,
        }
    }

    #[test]
    fn defaults_are_shaken_fists() {
        let cfg = SchedulerConfig::default();
        assert_eq!(cfg.cpu_reservation_threads, 2);
        assert_eq!(cfg.ram_reservation_gb, 2);
        assert_eq!(cfg.disk_reservation_gb, 20);
        assert_eq!(cfg.cpu_overcommit_ratio, 3.0);
        assert_eq!(cfg.ram_overcommit_ratio, 3.0);
        assert_eq!(cfg.disk_overcommit_ratio, 5.0);
        assert_eq!(cfg.target_load, 0.75);
    }

    #[test]
    fn arithmetic_applies_reservations_then_overcommit() {
        let mut n = node("hv-1", 8, 16, 120);
        n.committed = Resources {
            cpus: 4,
            memory_mib: 8192,
            disk_gib: 100,
        };
        let a = NodeArithmetic::of(&n, &SchedulerConfig::default()).unwrap();
        // (8 − 2) × 3 = 18 vCPUs; (16384 − 2048) × 3 = 43008 MiB; (120 − 20) × 5 = 500 GiB.
        assert_eq!((a.cpu.schedulable, a.cpu.free), (18, 14));
        assert_eq!((a.ram_mib.schedulable, a.ram_mib.free), (43008, 34816));
        assert_eq!((a.disk_gib.schedulable, a.disk_gib.free), (500, 400));
        // A node smaller than its reservation has nothing schedulable.
        let tiny = node("tiny", 1, 1, 10);
        let a = NodeArithmetic::of(&tiny, &SchedulerConfig::default()).unwrap();
        assert_eq!(
            (
                a.cpu.schedulable,
                a.ram_mib.schedulable,
                a.disk_gib.schedulable
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn filters_table() {
        let cfg = SchedulerConfig::default();
        let mut missing = node("n", 8, 16, 100);
        missing.state = NodeState::Missing;
        let mut drained = node("n", 8, 16, 100);
        drained.schedulable = false;
        let mut no_capacity = node("n", 8, 16, 100);
        no_capacity.capacity = None;
        let mut full_disk = node("n", 8, 16, 100);
        full_disk.usage = Some(NodeUsage {
            disk_used_gib: 98,
            ..NodeUsage::default()
        });
        let table: Vec<(&str, NodeView, InstanceRequest, Vec<&str>)> = vec![
            ("fits", node("n", 8, 16, 100), req(2, 2048, 10), vec![]),
            (
                "missing",
                missing,
                req(1, 128, 1),
                vec!["not ready (state missing)"],
            ),
            (
                "not schedulable",
                drained,
                req(1, 128, 1),
                vec!["not schedulable"],
            ),
            (
                "no capacity",
                no_capacity,
                req(1, 128, 1),
                vec!["no capacity reported"],
            ),
            (
                "disk full",
                full_disk,
                req(1, 128, 1),
                vec!["disk full (98% used)"],
            ),
            (
                "cpu",
                node("n", 4, 16, 100),
                req(7, 128, 1),
                vec!["not enough CPU (needs 7 vCPUs, 6 free after reservations and overcommit)"],
            ),
            (
                "ram and disk",
                node("n", 8, 3, 21),
                req(1, 4096, 6),
                vec![
                    "not enough RAM (needs 4096 MiB, 3072 free after reservations and overcommit)",
                    "not enough disk (needs 6 GiB, 5 free after reservations and overcommit)",
                ],
            ),
        ];
        for (what, n, r, want) in table {
            assert_eq!(rejections(&n, &r.resources, &cfg), want, "{what}");
        }
    }

    #[test]
    fn refusal_lists_every_node_with_its_reason() {
        let cfg = SchedulerConfig::default();
        // hv-1: 6 GiB → (6144 − 2048) × 3 = 12288 MiB schedulable, 11264 committed.
        let mut hv1 = node("hv-1", 8, 6, 100);
        hv1.committed.memory_mib = 11264;
        let mut hv2 = node("hv-2", 8, 64, 100);
        hv2.schedulable = false;
        let err = schedule(&req(1, 4096, 1), &[hv2, hv1], &cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster full: hv-1: not enough RAM (needs 4096 MiB, 1024 free after reservations \
             and overcommit); hv-2: not schedulable"
        );
        assert_eq!(err.rejections.len(), 2);
        assert_eq!(
            schedule(&req(1, 1, 1), &[], &cfg).unwrap_err().reason,
            "cluster full: no nodes"
        );
    }

    #[test]
    fn requested_node_is_honoured_or_refused() {
        let cfg = SchedulerConfig::default();
        let mut small = node("hv-2", 4, 4, 100); // 6 vCPUs schedulable
        small.committed.cpus = 4;
        let nodes = [node("hv-1", 64, 256, 1000), small];
        let mut r = req(1, 1024, 10);
        r.requested_node = Some("hv-2".into());
        // hv-1 would score better, but hv-2 was asked for and has room.
        assert_eq!(schedule(&r, &nodes, &cfg).unwrap().node, "hv-2");
        let mut busy = nodes.clone();
        busy[1].committed.cpus = 6;
        let err = schedule(&r, &busy, &cfg).unwrap_err();
        assert_eq!(
            err.reason,
            "requested node refused: hv-2: not enough CPU (needs 1 vCPUs, 0 free after \
             reservations and overcommit)"
        );
        r.requested_node = Some("hv-9".into());
        assert_eq!(
            schedule(&r, &nodes, &cfg).unwrap_err().reason,
            "requested node hv-9 does not exist"
        );
    }

    #[test]
    fn spreads_twenty_instances_by_capacity_then_refuses_when_full() {
        let cfg = SchedulerConfig::default();
        // hv-big: (14 × 3) = 42 vCPUs; hv-small: (8 − 2) × 3 = 18 vCPUs. RAM and disk
        // are plentiful, so CPU decides: 21 and 9 two-vCPU instances fit.
        let mut nodes = vec![
            node("hv-small", 8, 256, 2000),
            node("hv-big", 16, 256, 2000),
        ];
        let request = req(2, 1024, 10);
        let mut placed = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..20 {
            let p = schedule(&request, &nodes, &cfg).unwrap();
            *placed.entry(p.node.clone()).or_default() += 1;
            let chosen = nodes.iter_mut().find(|n| n.name == p.node).unwrap();
            chosen.commit(request.resources);
        }
        // In proportion to capacity (42:18 → 14:6), both used.
        assert_eq!(placed["hv-big"], 14, "{placed:?}");
        assert_eq!(placed["hv-small"], 6, "{placed:?}");
        // Fill the rest: 30 fit in all, the 31st is refused with the reasons.
        for _ in 20..30 {
            let p = schedule(&request, &nodes, &cfg).unwrap();
            nodes
                .iter_mut()
                .find(|n| n.name == p.node)
                .unwrap()
                .commit(request.resources);
        }
        let err = schedule(&request, &nodes, &cfg).unwrap_err();
        assert_eq!(
            err.reason,
            "cluster full: hv-big: not enough CPU (needs 2 vCPUs, 0 free after reservations \
             and overcommit); hv-small: not enough CPU (needs 2 vCPUs, 0 free after \
             reservations and overcommit)"
        );
    }

    #[test]
    fn busy_or_full_disks_score_lower_and_ties_go_to_the_lower_name() {
        let cfg = SchedulerConfig::default();
        let r = req(1, 1024, 10);
        let nodes = [node("hv-b", 8, 16, 100), node("hv-a", 8, 16, 100)];
        assert_eq!(schedule(&r, &nodes, &cfg).unwrap().node, "hv-a");
        let mut busy = nodes.clone();
        busy[1].usage = Some(NodeUsage {
            disk_busy_percent: 90.0,
            ..NodeUsage::default()
        });
        assert_eq!(schedule(&r, &busy, &cfg).unwrap().node, "hv-b");
        let mut fuller = nodes.clone();
        fuller[1].usage = Some(NodeUsage {
            disk_used_gib: 60,
            ..NodeUsage::default()
        });
        assert_eq!(schedule(&r, &fuller, &cfg).unwrap().node, "hv-b");
    }

    #[test]
    fn committed_load_above_target_is_penalised() {
        let cfg = SchedulerConfig::default();
        // hv-a has more free absolute capacity but would pass 75 %; hv-b stays below.
        let mut a = node("hv-a", 34, 256, 1000); // 96 vCPUs
        a.committed.cpus = 72; // 73/96 = 0.76 after placement
        let mut b = node("hv-b", 10, 256, 1000); // 24 vCPUs
        b.committed.cpus = 17; // 18/24 = 0.75 after placement
        assert_eq!(
            schedule(&req(1, 128, 1), &[a, b], &cfg).unwrap().node,
            "hv-b"
        );
    }

    #[test]
    fn resource_summary_uses_the_same_arithmetic() {
        let cfg = SchedulerConfig::default();
        let mut hv1 = node("hv-1", 8, 16, 120);
        hv1.commit(Resources {
            cpus: 4,
            memory_mib: 8192,
            disk_gib: 100,
        });
        hv1.usage = Some(NodeUsage {
            load_1m: 1.5,
            memory_used_mib: 6000,
            disk_used_gib: 40,
            disk_busy_percent: 12.0,
            instances: 1,
        });
        let mut hv2 = node("hv-2", 8, 16, 120);
        hv2.schedulable = false;
        let summary = resource_summary(&[hv2, hv1], &cfg);
        assert_eq!(summary.nodes[0].name, "hv-1");
        let a = summary.nodes[0].resources.unwrap();
        assert_eq!(
            (a.cpu.schedulable, a.cpu.committed, a.cpu.free),
            (18, 4, 14)
        );
        assert_eq!(a.cpu.measured, Some(1.5));
        assert_eq!(a.disk_gib.measured, Some(40.0));
        let t = &summary.totals;
        assert_eq!((t.nodes, t.eligible_nodes, t.instances), (2, 1, 1));
        assert_eq!(t.cpu.schedulable, 36);
        // Free counts only the eligible node.
        assert_eq!(t.cpu.free, 14);
        assert_eq!(t.ram_mib.free, 43008 - 8192);
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["totals"]["ramMib"]["schedulable"], 86016);
        assert_eq!(json["nodes"][0]["resources"]["diskGib"]["free"], 400);
    }
}
