//! Write combining: concurrent calls of one kind run as ONE transaction (group commit).
//!
//! Contract:
//! - Every write that changes a resource holds the revision counter from its allocation
//!   to its COMMIT (store contract, invariant 1), so such writes commit one at a time
//!   and each pays a commit (an fsync) under the counter. A [`Combiner`] gives a kind of
//!   write a single worker per store (the queue's creates and completions share one:
//!   [`super::queue::Writes`]): calls that arrive while a batch runs form the next
//!   batch, which runs as one transaction with one revision allocation. A call that
//!   finds the worker idle runs at once, so a lone call waits for nobody.
//! - A batch never holds two calls that touch the same key (a lease, an operation
//!   name): the later call waits for the next batch, so each call sees the outcome it
//!   would have seen alone.
//! - [`Combine::run`] returns one outcome per call, in order. When the combined
//!   transaction fails as a whole, it reruns each call alone, so a call's error is its
//!   own and one bad call never fails its neighbours.
//! - A batch is bounded by [`Combine::MAX_WEIGHT`] items; a call larger than that runs
//!   alone.
//! - The worker starts on the first call (on the caller's Tokio runtime) and ends when
//!   the last clone of its [`super::Store`] is dropped. A caller whose worker is gone
//!   runs its call directly. Cancelling a call does not withdraw it: like a call
//!   cancelled after its COMMIT, it may still happen.

use std::collections::HashSet;
use std::future::Future;
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use super::Store;

/// One kind of combinable write.
pub(crate) trait Combine: Send + Sync + 'static {
    /// One call's input.
    type Req: Send + 'static;
    /// One call's outcome.
    type Out: Send + 'static;
    /// The most items one combined transaction carries.
    const MAX_WEIGHT: usize;
    /// How many items a call carries.
    fn weight(req: &Self::Req) -> usize;
    /// Keys two calls of one batch must not share.
    fn keys(req: &Self::Req) -> Vec<String>;
    /// Runs `reqs` (one or more calls) and returns their outcomes in order.
    fn run(store: &Store, reqs: Vec<Self::Req>) -> impl Future<Output = Vec<Self::Out>> + Send;
    /// The outcome of a call whose worker died before answering.
    fn worker_lost() -> Self::Out;
}

type Job<C> = (<C as Combine>::Req, oneshot::Sender<<C as Combine>::Out>);

/// The entry to one kind's worker.
pub(crate) struct Combiner<C: Combine> {
    sender: OnceLock<mpsc::UnboundedSender<Job<C>>>,
}

impl<C: Combine> Default for Combiner<C> {
    fn default() -> Self {
        Self {
            sender: OnceLock::new(),
        }
    }
}

impl<C: Combine> Combiner<C> {
    /// Runs `req` in the next batch of `store`'s worker.
    pub(crate) async fn submit(&self, store: &Store, req: C::Req) -> C::Out {
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(worker::<C>(store.detached(), rx));
            tx
        });
        let (reply, outcome) = oneshot::channel();
        match sender.send((req, reply)) {
            Ok(()) => {}
            Err(mpsc::error::SendError((req, _))) => {
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

async fn worker<C: Combine>(store: Store, mut rx: mpsc::UnboundedReceiver<Job<C>>) {
    let mut carry: Option<Job<C>> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut keys: HashSet<String> = C::keys(&first.0).into_iter().collect();
        let mut weight = C::weight(&first.0);
        let mut batch = vec![first];
        while weight < C::MAX_WEIGHT {
            let Ok(job) = rx.try_recv() else { break };
            let job_keys = C::keys(&job.0);
            if weight + C::weight(&job.0) > C::MAX_WEIGHT
                || job_keys.iter().any(|k| keys.contains(k))
            {
                carry = Some(job);
                break;
            }
            weight += C::weight(&job.0);
            keys.extend(job_keys);
            batch.push(job);
        }
        let (reqs, replies): (Vec<C::Req>, Vec<oneshot::Sender<C::Out>>) =
            batch.into_iter().unzip();
        let outs = C::run(&store, reqs).await;
        for (reply, out) in replies.into_iter().zip(outs) {
            // A caller that went away gets nothing; what ran, ran.
            let _ = reply.send(out);
        }
    }
}
