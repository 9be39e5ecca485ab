//! Claim wake-ups: which waiting claims of this gateway look at the queue again, when.
//!
//! Contract:
//! - Every waiting claim waits on its queue key's [`Notify`] (`node` for a hypervisor's
//!   claim, `""` for a cluster-only claim) and on the store-wide "everyone" notify; it
//!   also looks again every poll interval (the safety net for rows whose
//!   `scheduled_at` arrives), so a missed wake costs latency, never work.
//! - A wake is aimed at the claims that can use it, so that work does not stampede
//!   every claimer into a locking scan that finds nothing: new work on node `n` wakes
//!   one claim of `n` per operation (at most 8: a claim takes a batch); cluster-queue
//!   work wakes everyone; a completion wakes the queues that hold rows it made ready
//!   (a freed target, released dependents), one claim per ready row; a claim round that
//!   left ready rows behind (its scan reads one row past what it asked for) wakes the
//!   next claim of its queue (a backlog has no wake of its own). `notify_one` keeps a permit
//!   when nobody waits, so a wake sent between a claim's scan and its wait is not lost.
//! - Changes made through OTHER gateways arrive through this gateway's change feed:
//!   a queued operation wakes one claim of its node; an operation that finished
//!   (complete, error, abort) makes the feed read which ready rows wait on its target
//!   or depend on it (only while a claim of this gateway runs) and wake their queues.
//!   These freed-work reads (local and remote) run in the background, one at a time per
//!   store; what finishes meanwhile is read together in the next round.
//!   The feed recognises this gateway's own operation writes by their revisions
//!   ([`Wakes::record_local`]) and skips them: they woke claims already.
//! - State is per [`super::Store`], so two gateways in one process (tests, benchmarks)
//!   wake each other only through their feeds, as two processes do.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// How many local revision ranges are remembered for the feed at most (the feed forgets
/// them as it passes; the bound only matters when no feed runs).
const LOCAL_RANGES_CAP: usize = 4096;

/// The wake-up state of one store.
pub(crate) struct Wakes {
    everyone: Notify,
    queues: Mutex<HashMap<String, Arc<Notify>>>,
    active_claims: AtomicUsize,
    /// ClusterOperation revision ranges this store committed: first → end (exclusive).
    local: Mutex<BTreeMap<u64, u64>>,
    /// Finished work whose freed rows are still to be read (see [`Wakes::queue_freed`]).
    freed: Mutex<Freed>,
}

/// Targets and operation uids waiting for the freed-work read, and whether a reader runs.
#[derive(Default)]
struct Freed {
    targets: Vec<String>,
    uids: Vec<String>,
    reading: bool,
}

/// Marks one running claim call of a store (see [`Wakes::claim_started`]).
pub(crate) struct ActiveClaim(Arc<Wakes>);

impl Drop for ActiveClaim {
    fn drop(&mut self) {
        self.0.active_claims.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Wakes {
    fn default() -> Self {
        Self {
            everyone: Notify::new(),
            queues: Mutex::new(HashMap::new()),
            active_claims: AtomicUsize::new(0),
            local: Mutex::new(BTreeMap::new()),
            freed: Mutex::new(Freed::default()),
        }
    }
}

/// The queue key of a claim for `node` ("" for a cluster-only claim) or of a
/// work_queue `queue_name` (`node:<n>` → `n`; `cluster` → None: everyone may take it).
pub(crate) fn key_of_queue(queue_name: &str) -> Option<&str> {
    queue_name.strip_prefix("node:")
}

impl Wakes {
    /// What a claim for `key` waits on besides [`Wakes::everyone`].
    pub(crate) fn queue(&self, key: &str) -> Arc<Notify> {
        let mut map = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_owned()).or_default().clone()
    }

    /// The notify every waiting claim also waits on.
    pub(crate) fn everyone(&self) -> &Notify {
        &self.everyone
    }

    /// Wakes every waiting claim.
    pub(crate) fn wake_everyone(&self) {
        self.everyone.notify_waiters();
    }

    /// New work: one claim of its node per operation (at most 8 per node); everyone for
    /// cluster-queue work (`None`).
    pub(crate) fn new_work<'a>(&self, nodes: impl IntoIterator<Item = Option<&'a str>>) {
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for node in nodes {
            match node {
                Some(n) => *per_node.entry(n).or_default() += 1,
                None => {
                    self.wake_everyone();
                    return;
                }
            }
        }
        for (node, count) in per_node {
            let notify = self.queue(node);
            for _ in 0..count.min(8) {
                notify.notify_one();
            }
        }
    }

    /// Rows of these work_queue `queue_name`s (one entry per row) became ready (a freed
    /// target, released dependents): one claim per row of its node queue (at most 8),
    /// everyone for the cluster queue.
    pub(crate) fn queues_ready(&self, queue_names: &[String]) {
        self.new_work(queue_names.iter().map(|q| key_of_queue(q)));
    }

    /// A claim call of this store started; the guard marks its end.
    pub(crate) fn claim_started(self: &Arc<Self>) -> ActiveClaim {
        self.active_claims.fetch_add(1, Ordering::AcqRel);
        ActiveClaim(Arc::clone(self))
    }

    /// True while any claim call of this store is running or waiting.
    pub(crate) fn claims_active(&self) -> bool {
        self.active_claims.load(Ordering::Acquire) > 0
    }

    /// Adds finished work for the freed-work read. True when the caller must start the
    /// reader (none runs); otherwise the running one picks this up in its next round.
    pub(crate) fn queue_freed(&self, targets: Vec<String>, uids: Vec<String>) -> bool {
        let mut f = self.freed.lock().unwrap_or_else(|p| p.into_inner());
        f.targets.extend(targets);
        f.uids.extend(uids);
        if f.reading {
            false
        } else {
            f.reading = true;
            true
        }
    }

    /// The next round for the reader, or None (and the reader stops) when nothing waits.
    pub(crate) fn take_freed(&self) -> Option<(Vec<String>, Vec<String>)> {
        let mut f = self.freed.lock().unwrap_or_else(|p| p.into_inner());
        if f.targets.is_empty() && f.uids.is_empty() {
            f.reading = false;
            return None;
        }
        Some((std::mem::take(&mut f.targets), std::mem::take(&mut f.uids)))
    }

    /// Remembers that this store committed ClusterOperation revisions
    /// `first..first + count` (and woke claims for them itself).
    pub(crate) fn record_local(&self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.insert(first, first.saturating_add(count));
        while local.len() > LOCAL_RANGES_CAP {
            local.pop_first();
        }
    }

    /// True when `revision` was committed by this store (see [`Wakes::record_local`]).
    pub(crate) fn is_local(&self, revision: u64) -> bool {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local
            .range(..=revision)
            .next_back()
            .is_some_and(|(_, end)| revision < *end)
    }

    /// Forgets local ranges that end at or before `revision` (the feed passed them).
    pub(crate) fn forget_through(&self, revision: u64) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        while local
            .first_key_value()
            .is_some_and(|(_, end)| *end <= revision.saturating_add(1))
        {
            local.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn local_ranges_are_recognised_and_forgotten() {
        let w = Wakes::default();
        w.record_local(10, 3);
        w.record_local(20, 1);
        assert!(!w.is_local(9));
        assert!(w.is_local(10) && w.is_local(12));
        assert!(!w.is_local(13));
        assert!(w.is_local(20) && !w.is_local(21));
        w.forget_through(12);
        assert!(!w.is_local(12), "a passed range is forgotten");
        assert!(w.is_local(20), "a later one is kept");
    }

    #[test]
    fn freed_work_is_read_by_one_reader_in_rounds() {
        let w = Wakes::default();
        assert!(
            w.queue_freed(vec!["t1".into()], vec![]),
            "the first starts the reader"
        );
        assert!(
            !w.queue_freed(vec!["t2".into()], vec!["u2".into()]),
            "one reader at a time"
        );
        let (targets, uids) = w.take_freed().expect("a round");
        assert_eq!(
            (targets, uids),
            (
                vec!["t1".to_string(), "t2".to_string()],
                vec!["u2".to_string()]
            )
        );
        assert!(w.take_freed().is_none(), "nothing left: the reader stops");
        assert!(
            w.queue_freed(vec!["t3".into()], vec![]),
            "and the next one starts it again"
        );
    }

    #[test]
    fn queue_names_map_to_wake_keys() {
        assert_eq!(key_of_queue("node:hv-1"), Some("hv-1"));
        assert_eq!(key_of_queue("cluster"), None);
    }

    #[tokio::test]
    async fn new_work_wakes_one_claim_of_its_node_and_keeps_a_permit() {
        let w = Wakes::default();
        let hv1 = w.queue("hv-1");
        let hv2 = w.queue("hv-2");
        w.new_work([Some("hv-1")]);
        // The permit was kept: the next wait on hv-1 returns at once, hv-2 does not.
        tokio::time::timeout(Duration::from_millis(50), hv1.notified())
            .await
            .expect("hv-1 woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), hv2.notified())
                .await
                .is_err(),
            "hv-2 must not be woken by hv-1's work"
        );
    }
}
