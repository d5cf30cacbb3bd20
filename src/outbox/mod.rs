//! The outbox dispatcher: delivers the replies and agent messages that step
//! transactions committed, through a [`Sender`], with retries, backoff,
//! dead letters, a circuit breaker and a per-number rate limit.
//!
//! A reply is claimed by the step transaction that writes it (status
//! `sending`, leased to this process) and handed to the dispatcher in
//! memory (its [`SendQueue`]): no claim statement, no commit of its own, on the
//! way of a reply. Other rows — retries, rows left pending while the
//! send queue was full, rows of a process that died — are claimed with `FOR
//! UPDATE SKIP LOCKED` once their lease has passed, so several processes
//! share one outbox and a row whose process died mid-send is retried
//! after its lease. A row is marked `sent` once; it is never claimed
//! again after that. (A crash between the provider's accept and our record
//! can still repeat one send: no send API offers an idempotency key.)
//!
//! - [`SendQueue`]: rows claimed at commit, on their way in memory;
//! - `worker`: one round — claim, send (rate-limited, behind the breaker), record;
//! - `rate`: the per-number send rate.

mod rate;
mod send_queue;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{watch, Notify};

pub use crate::config::OutboxSettings;
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
}

/// Longest time the dispatcher goes without counting its backlog.
pub(crate) const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// The running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    /// The send queue's: a look at the outbox now. Shared, so a commit's
    /// hand-over and [`Dispatcher::wake`] rouse the same loop.
    wake: Arc<Notify>,
    /// Callers of `wait_drained` waiting now: rounds that find nothing due
    /// count the backlog for them. Atomic and shared with the worker: callers
    /// count themselves in and out, every round reads it without a lock.
    drain_waiters: Arc<AtomicUsize>,
    /// (when the last count began, the backlog it counted): a watch, so
    /// `wait_drained` waits for a count without polling.
    backlog: watch::Receiver<(Option<Instant>, i64)>,
    /// The outbound breaker the sends go behind; a clone, sharing its state.
    pub breaker: CircuitBreaker,
    /// Shared with the worker: its sends count here, `/metrics` reads it here.
    pub stats: Arc<OutboxStats>,
}

/// Rounds in flight at once. A round waits for its slowest send before it
/// records its sends; the next one claims and sends meanwhile, so one slow
/// answer from the provider does not idle the other sends.
const ROUNDS_AT_ONCE: usize = 2;

/// What the dispatcher sends through, and from which number each row goes.
pub struct Outbound {
    pub sender: Arc<dyn Sender>,
    pub numbers: Arc<Numbers>,
}

impl Dispatcher {
    /// Starts the dispatcher on `spawn` (a runtime or an arbiter). It runs
    /// until `until` completes (the engine stopped and no step will commit
    /// another reply), then finishes the sends in progress, gives back the
    /// rows handed over and not sent, and ends.
    pub fn start(
        db: Database,
        Outbound { sender, numbers }: Outbound,
        settings: OutboxSettings,
        breaker: CircuitBreaker,
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
            rates: Rates::new(settings.rate_per_s, &numbers),
            numbers,
            sends: tokio::sync::Semaphore::new(settings.concurrency.max(1)),
            counted: std::sync::Mutex::new(None),
            looked: std::sync::Mutex::new(None),
            drain_waiters: drain_waiters.clone(),
            settings,
            breaker: breaker.clone(),
            stats: stats.clone(),
        });
        spawn(Box::pin(run(worker, wake.clone(), backlog_tx, until)));
        Self {
            wake,
            drain_waiters,
            backlog,
            breaker,
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

    /// Waits until no row is pending or being sent, as counted by a round
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

/// The dispatcher's task: rounds of sends, up to [`ROUNDS_AT_ONCE`] at a
/// time, started by a wake-up, the poll pause or a round that found work;
/// once `until` completes, the rounds in progress finish and the rows
/// handed over and not sent are given back.
async fn run(
    worker: Arc<Worker>,
    w: Arc<tokio::sync::Notify>,
    backlog_tx: watch::Sender<(Option<std::time::Instant>, i64)>,
    until: impl Future<Output = ()> + Send + 'static,
) {
    let mut rounds = FuturesUnordered::new();
    // The last round found nothing due: wait for a wake-up or the pause.
    let mut idle = false;
    let mut stopping = false;
    tokio::pin!(until);
    loop {
        if stopping {
            if rounds.is_empty() {
                break;
            }
        } else if (rounds.is_empty() && !idle)
            || (rounds.len() < ROUNDS_AT_ONCE && (worker.queue.len() > 0 || worker.look_due()))
        {
            // A second round only for rows already handed over or
            // when the claim query is due (retries, rows left
            // pending): an idle outbox costs one claim query per
            // look, not two.
            rounds.push(worker.clone().round());
            continue;
        }
        let pause = Duration::from_millis(worker.settings.poll_interval_ms);
        tokio::select! {
            Some(result) = rounds.next(), if !rounds.is_empty() => match result {
                Ok((claimed, counted)) => {
                    if let Some(count) = counted {
                        backlog_tx.send_modify(|b| {
                            // Rounds overlap: keep the latest count.
                            if b.0.is_none_or(|at| at <= count.0) {
                                *b = (Some(count.0), count.1);
                            }
                        });
                    }
                    // More may be due right away.
                    idle = claimed == 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox round failed");
                    idle = true;
                }
            },
            _ = w.notified(), if !stopping => idle = false,
            _ = tokio::time::sleep(pause), if !stopping && rounds.len() < ROUNDS_AT_ONCE => idle = false,
            _ = &mut until, if !stopping => stopping = true,
        }
    }
    worker.give_back_handed().await;
}
