//! Combining: concurrent calls of one kind run as ONE transaction (group commit for
//! writes; one locking scan and claim for claims).
//!
//! Contract:
//! - Every write that changes a resource holds the revision counter from its allocation
//!   to its COMMIT (store contract, invariant 1), so such writes commit one at a time
//!   and each pays a commit (an fsync) under the counter. A [`Combiner`] gives a kind of
//!   call workers of its own per store: calls that arrive while a batch runs form the
//!   next batch. For `queue::Writes` (the queue's creates and completions) a batch is
//!   one transaction with one revision allocation; for `queue::Claims` it is one
//!   locking transaction over every queue its calls ask for, and no revision. A call that finds a
//!   worker idle runs at once, so a lone call waits for nobody.
//! - A batch never holds two calls that share a key (a lease, an operation name, a
//!   claim_id): the later call waits for a later batch. A kind with two workers may run two
//!   such calls at once (one in each batch); each kind's transactions serialise them
//!   on their rows (leases and names by row locks; a claim replay against a put-back
//!   by the heartbeat stamp, see `queue.rs`).
//! - [`Combine::run`] returns one outcome per call, in order. When the combined
//!   transaction fails as a whole, it reruns each call alone, so a call's error is its
//!   own and one bad call never fails its neighbours; except when MariaDB is
//!   unavailable, which every call of the batch is told at once (rerunning would wait
//!   for the pool once per call).
//! - A batch is bounded by [`Combine::MAX_WEIGHT`] items; a call larger than that runs
//!   alone.
//! - [`Combine::WORKERS`] workers share a kind's queue. Writes have one: every write
//!   batch waits for the revision counter anyway, and a second worker halves the batches
//!   (unbatched A/B on this machine: 3.8 calls per transaction and 630–646 jobs/s with
//!   two, 6.8 and 704–725 with one; batched 4,081 against 4,467). Claims need no counter
//!   and have two, so one claim round scans while the other commits.
//! - The workers start on the first call (on the caller's Tokio runtime) and end when
//!   the last clone of its [`super::Store`] is dropped. A caller whose worker is gone
//!   runs its call directly. Cancelling a call does not withdraw it: like a call
//!   cancelled after its COMMIT, it may still happen; a kind that can undo an outcome
//!   nobody received does so in [`Combine::undelivered`] (claims put their rows back).
//! - Each combiner counts its batches and the calls they carried ([`CombineMetrics`],
//!   exported as `database_combined_{batches,calls}_total{kind}`): calls per batch is how
//!   much the combining saves.

use std::collections::HashSet;
use std::future::Future;
use std::sync::OnceLock;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Store, StoreError};

/// One kind of combinable write.
pub(crate) trait Combine: Send + Sync + 'static {
    /// One call's input.
    type Req: Send + 'static;
    /// One call's outcome.
    type Out: Send + 'static;
    /// The most items one combined transaction carries.
    const MAX_WEIGHT: usize;
    /// Batches of this kind in flight at once, per store.
    const WORKERS: usize;
    /// How many items a call carries.
    fn weight(req: &Self::Req) -> usize;
    /// Keys two calls of one batch must not share.
    fn keys(req: &Self::Req) -> Vec<String>;
    /// Runs `reqs` (one or more calls) and returns their outcomes in order.
    fn run(store: &Store, reqs: Vec<Self::Req>) -> impl Future<Output = Vec<Self::Out>> + Send;
    /// The outcome of a call whose worker died before answering.
    fn worker_lost() -> Self::Out;
    /// Called, on a task of its own, with the outcome of a call whose caller went away
    /// before it was delivered (its future was dropped): undo what nobody will use, if
    /// anything.
    fn undelivered(_store: Store, _out: Self::Out) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// `e` (MariaDB unavailable) for each of `n` calls of a failed combined transaction:
/// `e` itself for the first, the same reason for the rest.
pub(crate) fn unavailable_for_all(
    e: StoreError,
    n: usize,
    operation: &'static str,
) -> Vec<StoreError> {
    let reason = e.to_string();
    let mut first = Some(e);
    (0..n)
        .map(|_| {
            first.take().unwrap_or_else(|| StoreError::Unavailable {
                operation,
                source: sqlx::Error::Protocol(reason.clone()),
            })
        })
        .collect()
}

type Job<C> = (<C as Combine>::Req, oneshot::Sender<<C as Combine>::Out>);

/// The label of the combining counters: which combiner (`writes`, `claims`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    kind: &'static str,
}

/// The combining counters of one store, by combiner kind: batches run, and the calls
/// they carried. Clones share the counts (register a clone to export them).
#[derive(Clone, Debug, Default)]
pub struct CombineMetrics {
    /// Batches (combined rounds) run.
    pub batches: Family<KindLabel, Counter>,
    /// Calls those batches carried.
    pub calls: Family<KindLabel, Counter>,
}

impl CombineMetrics {
    /// The counters of one kind.
    pub(crate) fn stats(&self, kind: &'static str) -> CombineStats {
        let label = KindLabel { kind };
        CombineStats {
            batches: self.batches.get_or_create(&label).clone(),
            calls: self.calls.get_or_create(&label).clone(),
        }
    }
}

/// How much one combiner combined (a call that ran alone because its worker was gone
/// counts as a batch of one).
#[derive(Clone, Debug, Default)]
pub(crate) struct CombineStats {
    batches: Counter,
    calls: Counter,
}

impl CombineStats {
    fn record(&self, calls: usize) {
        self.batches.inc();
        self.calls.inc_by(u64::try_from(calls).unwrap_or(u64::MAX));
    }
}

/// The entry to one kind's worker.
pub(crate) struct Combiner<C: Combine> {
    sender: OnceLock<mpsc::UnboundedSender<Job<C>>>,
    stats: CombineStats,
}

impl<C: Combine> Default for Combiner<C> {
    fn default() -> Self {
        Self::new(CombineStats::default())
    }
}

impl<C: Combine> Combiner<C> {
    /// A combiner counting into `stats`.
    pub(crate) fn new(stats: CombineStats) -> Self {
        Self {
            sender: OnceLock::new(),
            stats,
        }
    }

    /// Runs `req` in the next batch of `store`'s worker.
    pub(crate) async fn submit(&self, store: &Store, req: C::Req) -> C::Out {
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let inbox = Arc::new(Mutex::new(Inbox { rx, carry: None }));
            for _ in 0..C::WORKERS {
                tokio::spawn(worker::<C>(
                    store.detached(),
                    inbox.clone(),
                    self.stats.clone(),
                ));
            }
            tx
        });
        let (reply, outcome) = oneshot::channel();
        match sender.send((req, reply)) {
            Ok(()) => {}
            Err(mpsc::error::SendError((req, _))) => {
                self.stats.record(1);
                return one::<C>(store, req).await;
            }
        }
        match outcome.await {
            Ok(out) => out,
            // The worker died with the call (its runtime shut down, or it panicked):
            // the call may or may not have committed; the caller's retry tells which.
            Err(_) => C::worker_lost(),
        }
    }
}

async fn one<C: Combine>(store: &Store, req: C::Req) -> C::Out {
    let mut out = C::run(store, vec![req]).await;
    out.pop().unwrap_or_else(C::worker_lost)
}

/// The queue the workers of one combiner take their batches from.
struct Inbox<C: Combine> {
    rx: mpsc::UnboundedReceiver<Job<C>>,
    /// A call that did not fit the previous batch (a shared key, or the weight bound).
    carry: Option<Job<C>>,
}

impl<C: Combine> Inbox<C> {
    /// The next batch: waits for one call, then takes what else is queued and fits.
    /// None when every sender is gone.
    async fn next_batch(&mut self) -> Option<Vec<Job<C>>> {
        let first = match self.carry.take() {
            Some(job) => job,
            None => self.rx.recv().await?,
        };
        let mut keys: HashSet<String> = C::keys(&first.0).into_iter().collect();
        let mut weight = C::weight(&first.0);
        let mut batch = vec![first];
        while weight < C::MAX_WEIGHT {
            let Ok(job) = self.rx.try_recv() else { break };
            let job_keys = C::keys(&job.0);
            if weight + C::weight(&job.0) > C::MAX_WEIGHT
                || job_keys.iter().any(|k| keys.contains(k))
            {
                self.carry = Some(job);
                break;
            }
            weight += C::weight(&job.0);
            keys.extend(job_keys);
            batch.push(job);
        }
        Some(batch)
    }
}

async fn worker<C: Combine>(store: Store, inbox: Arc<Mutex<Inbox<C>>>, stats: CombineStats) {
    loop {
        // The inbox is held only while a batch is taken, so another worker takes the
        // next batch while this one runs.
        let Some(batch) = inbox.lock().await.next_batch().await else {
            return;
        };
        stats.record(batch.len());
        let (reqs, replies): (Vec<C::Req>, Vec<oneshot::Sender<C::Out>>) =
            batch.into_iter().unzip();
        let outs = C::run(&store, reqs).await;
        for (reply, out) in replies.into_iter().zip(outs) {
            // A caller that went away gets nothing; what ran, ran, unless its kind
            // can undo it.
            if let Err(out) = reply.send(out) {
                // Not awaited here: the batch's other callers and the next batch do not
                // wait for the undo.
                tokio::spawn(C::undelivered(store.clone(), out));
            }
        }
    }
}
