//! One dispatcher round: take the rows handed over (and claim the due ones),
//! send them within the rate and behind the breaker, record the results.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::stream::{FuturesUnordered, StreamExt};
use scoped_futures::ScopedFutureExt;

use super::rate::Rates;
use super::{OutboxStats, SendQueue, BACKLOG_EVERY};
use crate::breaker::{CallResult, CircuitBreaker};
use crate::config::OutboxSettings;
use crate::db::outbox::{self as rows, Claimed};
use crate::db::{Database, DbError};
use crate::error::Result;
use crate::numbers::Numbers;
use crate::phone::mask;
use crate::retry::RetryPolicy;
use crate::whatsapp::sender::{OutboundMessage, SendOutcome, Sender};

pub(super) struct Worker {
    pub(super) db: Database,
    /// Shared with the writer, which hands rows over here at commit.
    pub(super) queue: Arc<SendQueue>,
    /// The embedder's sender or the built-in one; an `Arc<dyn>`: any
    /// implementation, which its giver may keep a handle to.
    pub(super) sender: Arc<dyn Sender>,
    pub(super) settings: OutboxSettings,
    /// The outbound breaker; a clone, sharing its state with the supervisor's.
    pub(super) breaker: CircuitBreaker,
    /// Each business number's send rate.
    pub(super) rates: Rates,
    /// Which number a row's conversation belongs to.
    pub(super) numbers: Arc<Numbers>,
    /// `concurrency` permits, shared by the rounds in flight.
    pub(super) sends: tokio::sync::Semaphore,
    /// When the backlog was last counted (never, at first); std mutexes,
    /// held for a read or a write, never across an await.
    pub(super) counted: std::sync::Mutex<Option<Instant>>,
    /// When the claim query last ran (never, at first); a mutex: the loop's
    /// `look_due` and the rounds in flight read and set it.
    pub(super) looked: std::sync::Mutex<Option<Instant>>,
    /// Shared with the handle: callers of `wait_drained` waiting now;
    /// atomic, read by every round without a lock.
    pub(super) drain_waiters: Arc<AtomicUsize>,
    /// Shared with the handle: counted here by each send, read by `/metrics`.
    pub(super) stats: Arc<OutboxStats>,
}

impl Worker {
    /// Claims due rows, sends them, records the results. Returns the rows
    /// claimed and, when this round counted it, the backlog left with the
    /// time the count began: at most every [`BACKLOG_EVERY`], and in every
    /// round that found nothing due while someone waits for the drain — the
    /// count visits every row version the busy outbox left in its index,
    /// too costly for every round.
    ///
    /// Rows handed over by the step commits go first; the claim query (rows
    /// left pending, retries, leases run out) runs when none were handed,
    /// and at least every `poll_interval_ms` while they flow.
    pub(super) async fn round(self: Arc<Self>) -> Result<(usize, Option<(Instant, i64)>)> {
        let mut claimed = self.queue.take(self.settings.batch.max(1) as usize);
        let look = {
            let mut looked = self.looked.lock().unwrap_or_else(|p| p.into_inner());
            let look = claimed.is_empty() || self.due(*looked);
            if look {
                *looked = Some(Instant::now());
            }
            look
        };
        if look {
            let (batch, lease_ms) = (self.settings.batch, self.settings.lease_ms);
            let due = self.db.once(|c| rows::claim(c, batch, lease_ms).scope_boxed());
            match due.await {
                Ok(rows) => claimed.extend(rows),
                // The handed rows are leased to us: send them all the same.
                Err(e) if !claimed.is_empty() => tracing::warn!(error = %e, "outbox claim failed"),
                Err(e) => return Err(e.into()),
            }
        }
        let n = claimed.len();
        // Up to `concurrency` sends at once over the rounds in flight; this
        // round's `sent` marks share one commit at its end (the other
        // outcomes are rare and recorded one by one).
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
                .run("outbox_sent", |c| rows::mark_sent_batch(c, &sent).scope_boxed())
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
        let backlog = self.db.once(|c| rows::backlog(c).scope_boxed()).await?;
        Ok((n, Some((began, backlog))))
    }

    /// The claim query has not run for `poll_interval_ms`.
    pub(super) fn look_due(&self) -> bool {
        self.due(*self.looked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn due(&self, looked: Option<Instant>) -> bool {
        looked.is_none_or(|at| at.elapsed() >= Duration::from_millis(self.settings.poll_interval_ms))
    }

    /// At stop: rows handed over and not sent go back to pending (their
    /// attempt uncounted), for the next start or another process to send
    /// at once rather than after their lease.
    pub(super) async fn give_back_handed(&self) {
        self.queue.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let rows = self.queue.take(usize::MAX);
        if rows.is_empty() {
            return;
        }
        let given = self
            .db
            .run("outbox_give_back", |c| rows::give_back(c, &rows).scope_boxed())
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
        let result = match self.breaker.try_acquire() {
            Err(_) => {
                let at = Utc::now() + chrono::Duration::milliseconds(self.settings.breaker.open_ms as i64);
                self.db
                    .run("outbox_release", |c| rows::release(c, row, at).scope_boxed())
                    .await
            }
            Ok(permit) => {
                let (number, contact) = self.numbers.split(&row.phone);
                self.rates.of(number).wait().await;
                let outcome = self
                    .sender
                    .send(OutboundMessage {
                        tracking: Some(row.idempotency_key.clone()),
                        from: number.map(str::to_string),
                        ..OutboundMessage::from_outbox(contact, &row.payload)
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

    async fn record(&self, row: &Claimed, outcome: SendOutcome) -> Result<(), DbError> {
        use std::sync::atomic::Ordering::Relaxed;
        match outcome {
            SendOutcome::Sent { provider_id } => {
                self.stats.sent.fetch_add(1, Relaxed);
                let sent = [(row, provider_id)];
                self.db
                    .run("outbox_sent", |c| rows::mark_sent_batch(c, &sent).scope_boxed())
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
                self.db
                    .run("outbox_retry", |c| rows::mark_retry(c, row, at, &reason).scope_boxed())
                    .await
            }
            SendOutcome::Retry { reason } => {
                self.stats.dead.fetch_add(1, Relaxed);
                tracing::error!(%reason, "send failed on every attempt; moved to dead letters");
                self.db
                    .run("outbox_dead", |c| rows::mark_final(c, row, true, &reason).scope_boxed())
                    .await
            }
            SendOutcome::Failed { reason } => {
                self.stats.failed.fetch_add(1, Relaxed);
                tracing::warn!(%reason, "send failed permanently");
                self.db
                    .run("outbox_failed", |c| {
                        rows::mark_final(c, row, false, &reason).scope_boxed()
                    })
                    .await
            }
        }
    }
}
