//! The outbox dispatcher: delivers the replies and agent messages that step
//! transactions committed, through a [`Sender`], with retries, backoff,
//! dead letters, a circuit breaker and a send rate per business number.
//!
//! **Order per recipient.** A conversation's messages leave one at a time,
//! in the order they were committed: a row is claimed only while no earlier
//! row of its conversation is open (pending or being sent), and the next
//! is claimed in the commit that records the one before it as sent or
//! failed for good. A retry holds the later ones back until it succeeds or
//! is dead-lettered. Different conversations go in parallel. The database
//! decides every claim, so this holds across processes and crashes (a row
//! whose sender died is sent again, after its lease, before any later one
//! of its conversation).
//!
//! A conversation's next row is usually claimed by the step transaction
//! that writes it (status `sending`, leased to this process) and handed to
//! the dispatcher in memory (its [`SendQueue`]): no claim statement, no
//! commit of its own, on the way of a reply. Other rows are claimed with
//! `FOR UPDATE SKIP LOCKED` once due. A row is marked `sent` once; it is
//! never claimed again after that.
//!
//! **A second send.** A crash between the provider's accept and the commit
//! that marks the row `sent` sends it again after its lease (WhatsApp's
//! send API has no idempotency key). Accepted sends wait only for the mark
//! commit in flight, so the window is one commit long; every such resend is
//! counted (`switchboard_outbox_resent_after_crash_total`).
//!
//! - [`SendQueue`]: rows claimed at commit, on their way in memory;
//! - `pipeline`: the task — claimed rows, sends, marks in batches;
//! - `worker`: one row's send and the record of its result;
//! - `rate`: each number's send rate, shared by the processes;
//! - `breakers`: each number's circuit breaker.

mod breakers;
mod pipeline;
mod rate;
mod send_queue;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

pub use crate::config::OutboxSettings;
pub use breakers::OutboundBreakers;
pub use send_queue::SendQueue;

use self::rate::Rates;
use self::worker::Worker;
use crate::breaker::CircuitBreaker;
use crate::db::Database;
use crate::numbers::Numbers;
use crate::whatsapp::sender::Sender;

/// Counters for `/metrics`.
/// Atomics: counted by every send, read by `/metrics`.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Sends the provider accepted; atomic: counted by the sends, read by `/metrics`.
    pub sent: std::sync::atomic::AtomicU64,
    /// Sends to retry later; atomic: counted by the sends, read by `/metrics`.
    pub retried: std::sync::atomic::AtomicU64,
    /// Sends refused for good; atomic: counted by the sends, read by `/metrics`.
    pub failed: std::sync::atomic::AtomicU64,
    /// Rows moved to dead letters; atomic: counted by the sends, read by `/metrics`.
    pub dead: std::sync::atomic::AtomicU64,
    /// Sends the provider refused for the rate (130429, 131056); atomic, as above.
    pub throttled: std::sync::atomic::AtomicU64,
    /// Rows sent again whose earlier attempt's answer was never recorded
    /// (its sender died mid-send): each may reach the customer twice.
    pub resent_after_crash: std::sync::atomic::AtomicU64,
    /// Claimed rows given back unsent because half their lease went by
    /// before their send could begin (the dispatcher or the number's rate
    /// was behind); atomic, as above.
    pub given_back_late: std::sync::atomic::AtomicU64,
}

/// Longest time the dispatcher goes without counting its backlog.
pub(crate) const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// The running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    /// The send queue's: a look at the outbox now. Shared, so a commit's
    /// hand-over and [`Dispatcher::wake`] rouse the same loop.
    wake: Arc<Notify>,
    /// Callers of `wait_drained` waiting now: the pipeline, when idle,
    /// counts the backlog for them. Atomic and shared with the pipeline: callers
    /// count themselves in and out, the pipeline reads it without a lock.
    drain_waiters: Arc<AtomicUsize>,
    /// (when the last count began, the backlog it counted): a watch, so
    /// `wait_drained` waits for a count without polling.
    backlog: watch::Receiver<(Option<Instant>, i64)>,
    /// The home number's outbound breaker (`outbound`); a clone, sharing its state.
    pub breaker: CircuitBreaker,
    /// Every number's breaker; clones, sharing their state.
    pub breakers: OutboundBreakers,
    /// Shared with the worker: its sends count here, `/metrics` reads it here.
    pub stats: Arc<OutboxStats>,
}

/// What the dispatcher sends through, and from which number each row goes.
pub struct Outbound {
    pub sender: Arc<dyn Sender>,
    pub numbers: Arc<Numbers>,
    /// The team's webhook endpoints (`[[integrations.webhooks]]`).
    pub webhooks: Arc<crate::webhooks::post::Poster>,
}

impl Dispatcher {
    /// Starts the dispatcher on `spawn` (a runtime or an arbiter). It runs
    /// until `until` completes (the engine stopped and no step will commit
    /// another reply), then finishes the sends in progress, gives back the
    /// rows handed over and not sent, and ends.
    pub fn start(
        db: Database,
        Outbound {
            sender,
            numbers,
            webhooks,
        }: Outbound,
        settings: OutboxSettings,
        breakers: OutboundBreakers,
        queue: Arc<SendQueue>,
        until: impl Future<Output = ()> + Send + 'static,
        spawn: impl FnOnce(futures_util::future::BoxFuture<'static, ()>),
    ) -> Self {
        let wake = queue.wake.clone();
        let stats = Arc::new(OutboxStats::default());
        let (backlog_tx, backlog) = watch::channel((None, -1));
        let drain_waiters = Arc::new(AtomicUsize::new(0));
        let worker = Arc::new(Worker {
            db,
            queue,
            sender,
            rates: Rates::new(
                settings.rate_per_s,
                &numbers,
                Duration::from_millis(settings.lease_ms.max(0) as u64),
            ),
            numbers,
            settings,
            breakers: breakers.clone(),
            stats: stats.clone(),
            webhooks,
        });
        spawn(Box::pin(pipeline::run(
            worker,
            wake.clone(),
            backlog_tx,
            drain_waiters.clone(),
            until,
        )));
        Self {
            wake,
            drain_waiters,
            backlog,
            breaker: breakers.home().clone(),
            breakers,
            stats,
        }
    }

    /// Looks at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Rows not yet delivered, as last counted (at most about a second ago
    /// while busy; -1 before the first count).
    pub fn backlog(&self) -> i64 {
        self.backlog.borrow().1
    }

    /// Waits until no row is pending or being sent, as counted by the pipeline
    /// after this call.
    pub async fn wait_drained(&self) {
        /// Counts this caller as waiting until it returns or is dropped.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.drain_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.drain_waiters);
        let called = Instant::now();
        let mut rx = self.backlog.clone();
        rx.borrow_and_update();
        loop {
            self.wake.notify_one();
            if rx.changed().await.is_err() {
                return;
            }
            let (at, backlog) = *rx.borrow_and_update();
            if at.is_some_and(|at| at >= called) && backlog == 0 {
                return;
            }
        }
    }
}
