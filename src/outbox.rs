//! The outbox dispatcher: delivers the replies and agent messages that step
//! transactions committed, through a [`Sender`], with retries, backoff,
//! dead letters, a circuit breaker and a per-number rate limit.
//!
//! A reply is claimed by the step transaction that writes it (status
//! `sending`, leased to this process) and handed to the dispatcher in
//! memory ([`Handoff`]): no claim statement, no commit of its own, on the
//! way of a reply. Other rows — retries, rows left pending while the
//! handoff was full, rows of a process that died — are claimed with `FOR
//! UPDATE SKIP LOCKED` once their lease has passed, so several processes
//! share one outbox and a row whose process died mid-send is retried
//! after its lease. A row is marked `sent` once; it is never claimed
//! again after that. (A crash between the provider's accept and our record
//! can still repeat one send: no send API offers an idempotency key.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex, Notify};

use crate::breaker::{BreakerSettings, CallResult, CircuitBreaker};
use crate::db::outbox::{self as rows, Claimed};
use crate::db::Database;
use crate::error::Result;
use crate::phone::mask;
use crate::retry::RetryPolicy;
use crate::whatsapp::sender::{OutboundMessage, SendOutcome, Sender};

/// `[outbox]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Longest pause between looks at the outbox when nothing wakes the dispatcher.
    pub poll_interval_ms: u64,
    /// Rows claimed at once.
    pub batch: i64,
    /// Sends in flight at once (over the rounds in flight). Sends per
    /// second are at most this over the API's answer time: keep it above
    /// `rate_per_s` × that time.
    pub concurrency: usize,
    /// Attempts before a row goes to dead letters.
    pub max_attempts: i32,
    /// Retry backoff: ceiling doubles from `base_delay_ms` up to `max_delay_ms`, full jitter.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// A claimed row not recorded within this is claimed again (its process died).
    pub lease_ms: i64,
    /// Sends per second per business number (WhatsApp's default tier is 80).
    pub rate_per_s: u32,
    pub breaker: BreakerSettings,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            poll_interval_ms: 500,
            batch: 32,
            concurrency: 32,
            max_attempts: 8,
            base_delay_ms: 1_000,
            // WhatsApp retries its own webhooks for days; five minutes between
            // our send attempts keeps a long outage cheap.
            max_delay_ms: 300_000,
            lease_ms: 30_000,
            rate_per_s: 80,
            breaker: BreakerSettings::default(),
        }
    }
}

/// Spaces sends at `1/rate` seconds.
struct RateLimit {
    next: Mutex<Instant>,
    every: Duration,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        Self {
            next: Mutex::new(Instant::now()),
            every: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.every;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct OutboxStats {
    pub sent: std::sync::atomic::AtomicU64,
    pub retried: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub dead: std::sync::atomic::AtomicU64,
}

/// Outbox rows claimed by the step transaction that inserted them, on their
/// way to this process's dispatcher in memory (no claim query, no commit of
/// their own). Bounded: while it is full, steps insert their rows pending
/// for the claim query. A row that waits here past half its lease is left
/// to the claim query too (taken when the lease runs out), so it is never
/// sent by two dispatchers.
pub struct Handoff {
    rows: std::sync::Mutex<std::collections::VecDeque<(Claimed, Instant)>>,
    wake: Arc<Notify>,
    limit: usize,
    lease: Duration,
    /// Set when the dispatcher stops: later commits leave their rows pending.
    closed: std::sync::atomic::AtomicBool,
}

impl Handoff {
    pub fn new(settings: &OutboxSettings) -> Self {
        Self {
            rows: std::sync::Mutex::new(std::collections::VecDeque::new()),
            wake: Arc::new(Notify::new()),
            limit: Self::limit(settings),
            lease: Duration::from_millis(settings.lease_ms.max(0) as u64),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Room for eight rounds' worth of rows (at 2,000 replies/s, four left
    /// one in six rows to the claim query), but no more than the rate limit
    /// sends in a quarter of the lease: a row handed over is sent well
    /// within it.
    fn limit(settings: &OutboxSettings) -> usize {
        let batch = settings.batch.max(1) as usize;
        let quarter_lease = u64::from(settings.rate_per_s) * (settings.lease_ms.max(0) as u64) / 4_000;
        (batch * 8).min(quarter_lease as usize).max(batch)
    }

    /// The lease to claim inserted rows with, or `None` while the handoff
    /// is full (they are inserted pending then).
    pub fn claim_ms(&self) -> Option<i64> {
        let open = !self.closed.load(std::sync::atomic::Ordering::SeqCst);
        (open && self.len() < self.limit && !self.lease.is_zero()).then_some(self.lease.as_millis() as i64)
    }

    /// Rows a commit claimed for this dispatcher; wakes it.
    pub fn hand(&self, claimed: Vec<Claimed>) {
        if !claimed.is_empty() {
            let now = Instant::now();
            self.lock().extend(claimed.into_iter().map(|c| (c, now)));
        }
        self.wake.notify_one();
    }

    /// Up to `n` rows, oldest first; rows older than half the lease are
    /// dropped (the claim query takes them once the lease runs out).
    fn take(&self, n: usize) -> Vec<Claimed> {
        self.take_at(n, Instant::now())
    }

    fn take_at(&self, n: usize, now: Instant) -> Vec<Claimed> {
        let mut rows = self.lock();
        let mut out = Vec::with_capacity(n.min(rows.len()));
        while out.len() < n {
            let Some((row, at)) = rows.pop_front() else { break };
            if now.saturating_duration_since(at) < self.lease / 2 {
                out.push(row);
            } else {
                tracing::warn!(
                    outbox_id = row.id,
                    "a handed-over row waited past half its lease; the claim query takes it"
                );
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(Claimed, Instant)>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Longest time the dispatcher goes without counting its backlog.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// The running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    wake: Arc<Notify>,
    /// Callers of `wait_drained` waiting now: rounds that find nothing due
    /// count the backlog for them.
    drain_waiters: Arc<AtomicUsize>,
    /// (when the last count began, the backlog it counted).
    backlog: watch::Receiver<(Option<Instant>, i64)>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    pub breaker: CircuitBreaker,
    pub stats: Arc<OutboxStats>,
}

struct Worker {
    db: Database,
    handoff: Arc<Handoff>,
    sender: Arc<dyn Sender>,
    settings: OutboxSettings,
    breaker: CircuitBreaker,
    rate: RateLimit,
    /// `concurrency` permits, shared by the rounds in flight.
    sends: tokio::sync::Semaphore,
    /// When the backlog was last counted (never, at first).
    counted: std::sync::Mutex<Option<Instant>>,
    /// When the claim query last ran (never, at first).
    looked: std::sync::Mutex<Option<Instant>>,
    drain_waiters: Arc<AtomicUsize>,
    stats: Arc<OutboxStats>,
}

/// Rounds in flight at once. A round waits for its slowest send before it
/// records its sends; the next one claims and sends meanwhile, so a slow
/// answer from the provider does not idle the other sends (with rounds one
/// after another, the default settings sent ~40 replies/s against a
/// provider answering in 200 ms, half of WhatsApp's default tier).
const ROUNDS_AT_ONCE: usize = 2;

impl Dispatcher {
    /// Starts the dispatcher on `spawn` (a runtime or an arbiter).
    pub fn start(
        db: Database,
        sender: Arc<dyn Sender>,
        settings: OutboxSettings,
        breaker: CircuitBreaker,
        handoff: Arc<Handoff>,
        spawn: impl FnOnce(futures_util::future::BoxFuture<'static, ()>),
    ) -> Self {
        let wake = handoff.wake.clone();
        let stats = Arc::new(OutboxStats::default());
        let (backlog_tx, backlog) = watch::channel((None, -1));
        let (stop, mut stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let drain_waiters = Arc::new(AtomicUsize::new(0));
        let worker = Arc::new(Worker {
            db,
            handoff,
            sender,
            rate: RateLimit::new(settings.rate_per_s),
            sends: tokio::sync::Semaphore::new(settings.concurrency.max(1)),
            counted: std::sync::Mutex::new(None),
            looked: std::sync::Mutex::new(None),
            drain_waiters: drain_waiters.clone(),
            settings,
            breaker: breaker.clone(),
            stats: stats.clone(),
        });
        let w = wake.clone();
        spawn(Box::pin(async move {
            let mut rounds = FuturesUnordered::new();
            // The last round found nothing due: wait for a wake-up or the pause.
            let mut idle = false;
            loop {
                let stopping = *stop_rx.borrow();
                if stopping {
                    if rounds.is_empty() {
                        break;
                    }
                } else if (rounds.is_empty() && !idle)
                    || (rounds.len() < ROUNDS_AT_ONCE && (worker.handoff.len() > 0 || worker.look_due()))
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
                    _ = stop_rx.changed(), if !stopping => {}
                }
            }
            worker.give_back_handed().await;
            let _ = done_tx.send(true);
        }));
        Self {
            wake,
            drain_waiters,
            backlog,
            stop,
            done,
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

    /// Finishes the sends in progress, then stops.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

impl Worker {
    /// Claims due rows, sends them, records the results. Returns the rows
    /// claimed and, when this round counted it, the backlog left with the
    /// time the count began: at most every [`BACKLOG_EVERY`], and in every
    /// round that found nothing due while someone waits for the drain — the
    /// count visits every row version the busy outbox left in its index:
    /// counting after every round was PostgreSQL's largest single cost at
    /// 2,000 msg/s, and after every idle round still 8 % of its statement
    /// time.
    ///
    /// Rows handed over by the step commits go first; the claim query (rows
    /// left pending, retries, leases run out) runs when none were handed,
    /// and at least every `poll_interval_ms` while they flow.
    async fn round(self: Arc<Self>) -> Result<(usize, Option<(Instant, i64)>)> {
        let mut claimed = self.handoff.take(self.settings.batch.max(1) as usize);
        let look = {
            let mut looked = self.looked.lock().unwrap_or_else(|p| p.into_inner());
            let look = claimed.is_empty() || self.due(*looked);
            if look {
                *looked = Some(Instant::now());
            }
            look
        };
        if look {
            let due = async {
                let mut conn = self.db.pool().get().await?;
                rows::claim(&mut conn, self.settings.batch, self.settings.lease_ms).await
            };
            match due.await {
                Ok(rows) => claimed.extend(rows),
                // The handed rows are leased to us: send them all the same.
                Err(e) if !claimed.is_empty() => tracing::warn!(error = %e, "outbox claim failed"),
                Err(e) => return Err(e),
            }
        }
        let n = claimed.len();
        // Up to `concurrency` sends at once over the rounds in flight; this
        // round's `sent` marks share one commit at its end (the other
        // outcomes are rare and recorded one by one). One mark per round,
        // not per group of sends: the marks took a fifth of PostgreSQL's
        // statement time.
        let this = &*self;
        let mut sending: FuturesUnordered<_> = claimed
            .iter()
            .map(|row| async move {
                let _permit = this.sends.acquire().await;
                this.deliver(row).await
            })
            .collect();
        let mut sent: Vec<(&Claimed, String)> = Vec::with_capacity(n);
        while let Some((row, provider_id)) = sending.next().await {
            if let Some(p) = provider_id {
                sent.push((row, p));
            }
        }
        if !sent.is_empty() {
            let recorded = self
                .db
                .retry_policy()
                .run("outbox_sent", || async {
                    rows::mark_sent_batch(&mut *self.db.pool().get().await?, &sent).await
                })
                .await;
            if let Err(e) = recorded {
                // The lease makes the rows due again; they are sent again then.
                tracing::warn!(error = %e, rows = sent.len(), "could not record sends");
            }
        }
        let began = Instant::now();
        {
            let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
            let drain_seen = n == 0 && self.drain_waiters.load(Ordering::SeqCst) > 0;
            if !drain_seen && counted.is_some_and(|at| at.elapsed() < BACKLOG_EVERY) {
                return Ok((n, None));
            }
            *counted = Some(began);
        }
        let backlog = rows::backlog(&mut *self.db.pool().get().await?).await?;
        Ok((n, Some((began, backlog))))
    }

    /// The claim query has not run for `poll_interval_ms`.
    fn look_due(&self) -> bool {
        self.due(*self.looked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn due(&self, looked: Option<Instant>) -> bool {
        looked.is_none_or(|at| at.elapsed() >= Duration::from_millis(self.settings.poll_interval_ms))
    }

    /// At stop: rows handed over and not sent go back to pending (their
    /// attempt uncounted), for the next start or another process to send
    /// at once rather than after their lease.
    async fn give_back_handed(&self) {
        self.handoff.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let rows = self.handoff.take(usize::MAX);
        if rows.is_empty() {
            return;
        }
        let given = self
            .db
            .retry_policy()
            .run("outbox_give_back", || async {
                rows::give_back(&mut *self.db.pool().get().await?, &rows).await
            })
            .await;
        if let Err(e) = given {
            tracing::warn!(error = %e, rows = rows.len(), "could not give handed-over rows back; they are sent after their lease");
        }
    }

    /// Sends one row; records any result but success, and returns the row
    /// with the provider id of a successful send for the caller to record.
    #[tracing::instrument(skip_all, fields(phone = %mask(&row.phone), outbox_id = row.id, attempt = row.attempts))]
    async fn deliver<'r>(&self, row: &'r Claimed) -> (&'r Claimed, Option<String>) {
        (row, self.deliver_one(row).await)
    }

    async fn deliver_one(&self, row: &Claimed) -> Option<String> {
        let policy = self.db.retry_policy();
        let result = match self.breaker.try_acquire() {
            Err(_) => {
                let at = Utc::now() + chrono::Duration::milliseconds(self.settings.breaker.open_ms as i64);
                policy
                    .run("outbox_release", || async {
                        rows::release(&mut *self.db.pool().get().await?, row, at).await
                    })
                    .await
            }
            Ok(permit) => {
                self.rate.wait().await;
                let outcome = self
                    .sender
                    .send(OutboundMessage {
                        tracking: Some(row.idempotency_key.clone()),
                        ..OutboundMessage::from_outbox(&row.phone, &row.payload)
                    })
                    .await;
                permit.record(match outcome {
                    SendOutcome::Retry { .. } => CallResult::Failure,
                    _ => CallResult::Success,
                });
                if let SendOutcome::Sent { provider_id } = outcome {
                    self.stats.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Some(provider_id);
                }
                self.record(row, outcome).await
            }
        };
        if let Err(e) = result {
            // The lease makes the row due again; it is retried then.
            tracing::warn!(error = %e, "could not record a send result");
        }
        None
    }

    async fn record(&self, row: &Claimed, outcome: SendOutcome) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let policy = self.db.retry_policy();
        match outcome {
            SendOutcome::Sent { provider_id } => {
                self.stats.sent.fetch_add(1, Relaxed);
                let sent = [(row, provider_id)];
                policy
                    .run("outbox_sent", || async {
                        rows::mark_sent_batch(&mut *self.db.pool().get().await?, &sent).await
                    })
                    .await
            }
            SendOutcome::Retry { reason } if row.attempts < self.settings.max_attempts => {
                self.stats.retried.fetch_add(1, Relaxed);
                let backoff = RetryPolicy {
                    max_attempts: u32::MAX,
                    base_delay: Duration::from_millis(self.settings.base_delay_ms),
                    max_delay: Duration::from_millis(self.settings.max_delay_ms),
                }
                .delay(row.attempts.max(1) as u32 - 1, &mut rand::rng());
                let at = Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default();
                tracing::info!(%reason, retry_in_ms = backoff.as_millis() as u64, "send failed; will retry");
                policy
                    .run("outbox_retry", || async {
                        rows::mark_retry(&mut *self.db.pool().get().await?, row, at, &reason).await
                    })
                    .await
            }
            SendOutcome::Retry { reason } => {
                self.stats.dead.fetch_add(1, Relaxed);
                tracing::error!(%reason, "send failed on every attempt; moved to dead letters");
                policy
                    .run("outbox_dead", || async {
                        rows::mark_final(&mut *self.db.pool().get().await?, row, true, &reason).await
                    })
                    .await
            }
            SendOutcome::Failed { reason } => {
                self.stats.failed.fetch_add(1, Relaxed);
                tracing::warn!(%reason, "send failed permanently");
                policy
                    .run("outbox_failed", || async {
                        rows::mark_final(&mut *self.db.pool().get().await?, row, false, &reason).await
                    })
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> Claimed {
        Claimed {
            id,
            phone: "5215500000001".into(),
            payload: serde_json::json!({"text": "hola"}),
            idempotency_key: format!("k.{id}"),
            attempts: 1,
        }
    }

    #[test]
    fn the_handoff_claims_while_it_has_room_and_gives_rows_out_in_order() {
        let settings = OutboxSettings {
            batch: 2,
            lease_ms: 10_000,
            ..OutboxSettings::default()
        };
        let h = Handoff::new(&settings);
        assert_eq!(h.claim_ms(), Some(10_000));
        h.hand((1..=16).map(row).collect());
        // Eight rounds' worth fill it: later commits insert their rows pending.
        assert_eq!(h.claim_ms(), None);
        assert_eq!(h.take(3).iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(h.claim_ms(), Some(10_000));
        assert_eq!(h.take(usize::MAX).len(), 13);
    }

    #[test]
    fn the_handoff_holds_no_more_than_the_rate_limit_sends_in_a_quarter_of_the_lease() {
        let settings = OutboxSettings {
            batch: 32,
            rate_per_s: 10,
            lease_ms: 8_000,
            ..OutboxSettings::default()
        };
        assert_eq!(Handoff::limit(&settings), 32, "20 by the rate, but at least one round");
        let settings = OutboxSettings {
            rate_per_s: 80,
            ..settings
        };
        assert_eq!(Handoff::limit(&settings), 160);
        assert_eq!(Handoff::limit(&OutboxSettings::default()), 256);
    }

    #[test]
    fn a_row_that_waited_past_half_its_lease_is_left_to_the_claim_query() {
        let settings = OutboxSettings {
            lease_ms: 10_000,
            ..OutboxSettings::default()
        };
        let h = Handoff::new(&settings);
        h.hand(vec![row(1), row(2)]);
        let later = Instant::now() + Duration::from_secs(5);
        assert!(h.take_at(10, later).is_empty());
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn with_no_lease_nothing_is_claimed_at_insert() {
        let settings = OutboxSettings {
            lease_ms: 0,
            ..OutboxSettings::default()
        };
        assert_eq!(Handoff::new(&settings).claim_ms(), None);
    }
}
