//! One row's delivery: send it within its number's rate and behind its
//! number's breaker, then record any result but success (successes are
//! recorded in batches by the pipeline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use scoped_futures::ScopedFutureExt;

use super::breakers::OutboundBreakers;
use super::rate::Rates;
use super::{OutboxStats, SendQueue};
use crate::breaker::CallResult;
use crate::config::OutboxSettings;
use crate::db::outbox::{self as rows, Claimed};
use crate::db::{Database, DbError};
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
    /// Each number's breaker; clones, sharing their state with the supervisor's.
    pub(super) breakers: OutboundBreakers,
    /// Each business number's send rate.
    pub(super) rates: Rates,
    /// Which number a row's conversation belongs to.
    pub(super) numbers: Arc<Numbers>,
    /// Shared with the handle: counted here by each send, read by `/metrics`.
    pub(super) stats: Arc<OutboxStats>,
    /// Delivers the webhook rows (lanes `webhook:…`).
    pub(super) webhooks: Arc<crate::webhooks::post::Poster>,
}

/// How one row's delivery ended.
pub(super) enum Delivery {
    /// Accepted, with the provider's id: to be marked `sent` (in a batch).
    Sent(String),
    /// Recorded otherwise (retry, failure, breaker open): with the
    /// conversation's next rows, claimed when a failure ended this one,
    /// and when the commit that claimed them began.
    Recorded(Vec<Claimed>, Instant),
}

impl Worker {
    /// Half the rows' lease: a claimed row's send must begin within it (a
    /// day without a lease, which only settings left unchecked can have).
    pub(super) fn half_lease(&self) -> Duration {
        match self.settings.lease_ms {
            ..=0 => Duration::from_secs(86_400),
            ms => Duration::from_millis(ms as u64) / 2,
        }
    }

    /// Sends one row unless `begin_by` has passed (then it is given back
    /// unsent: see [`super::pipeline`]); records any result but success.
    #[tracing::instrument(skip_all, fields(phone = %mask(&row.phone), outbox_id = row.id, attempt = row.attempts))]
    pub(super) async fn deliver(&self, row: &Claimed, begin_by: Instant) -> Delivery {
        use std::sync::atomic::Ordering::Relaxed;
        if Instant::now() >= begin_by {
            return self.give_back_late(row).await;
        }
        if row.lapsed {
            // Its earlier attempt's answer was never recorded: the
            // provider may have accepted it (see `db::outbox::Claimed`).
            self.stats.resent_after_crash.fetch_add(1, Relaxed);
            tracing::warn!("sending again a row whose earlier attempt was never recorded; it may arrive twice");
        }
        let delivered = match crate::webhooks::is_lane(&row.phone) {
            true => self.to_endpoint(row).await,
            false => self.to_whatsapp(row, begin_by).await,
        };
        delivered.unwrap_or_else(|e| {
            // The lease makes the row due again; it is retried then.
            tracing::warn!(error = %e, "could not record a send result");
            Delivery::Recorded(Vec::new(), Instant::now())
        })
    }

    /// A reply to WhatsApp: within its number's rate, behind its breaker.
    async fn to_whatsapp(&self, row: &Claimed, begin_by: Instant) -> Result<Delivery, DbError> {
        use std::sync::atomic::Ordering::Relaxed;
        let (number, contact) = self.numbers.split(&row.phone);
        // The rate first: a wait for it (or a throttling pause) is not the
        // provider's slowness, which the breaker times.
        let rate = self.rates.of(number);
        if !rate.wait(&self.db, begin_by).await {
            // The number's rate would begin it too late.
            return Ok(self.give_back_late(row).await);
        }
        let Ok(permit) = self.breakers.of(number).try_acquire() else {
            let at = Utc::now() + chrono::Duration::milliseconds(self.settings.breaker.open_ms as i64);
            return self.release(row, at).await;
        };
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
        match outcome {
            SendOutcome::Sent { provider_id } => {
                rate.accepted().await;
                self.stats.sent.fetch_add(1, Relaxed);
                return Ok(Delivery::Sent(provider_id));
            }
            SendOutcome::Throttled { pair: false, .. } => rate.throttled().await,
            _ => {}
        }
        self.recorded(row, outcome).await
    }

    /// An event to a team's endpoint: no business number's rate or breaker.
    async fn to_endpoint(&self, row: &Claimed) -> Result<Delivery, DbError> {
        match self.webhooks.post(row).await {
            Some(SendOutcome::Sent { provider_id }) => {
                self.stats.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Delivery::Sent(provider_id))
            }
            Some(outcome) => self.recorded(row, outcome).await,
            None => {
                // Its endpoint's slots are busy: about a second, spread, so
                // released rows do not all come back at once.
                let at = Utc::now() + chrono::Duration::milliseconds(rand::random_range(700..1300));
                self.release(row, at).await
            }
        }
    }

    /// A row whose lease is half gone before its send began: given back
    /// due now (the attempt uncounted), for the claim query to take again
    /// in the conversation's order. Sent later, it could arrive after the
    /// lease ran out and another dispatcher sent it and the rows after it.
    async fn give_back_late(&self, row: &Claimed) -> Delivery {
        self.stats
            .given_back_late
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!("a claimed row waited past half its lease for its send; given back unsent");
        self.release(row, Utc::now()).await.unwrap_or_else(|e| {
            // Its lease makes it due again.
            tracing::warn!(error = %e, "could not give back a late row");
            Delivery::Recorded(Vec::new(), Instant::now())
        })
    }

    /// Gives the claim back untouched, due at `at` (the attempt uncounted).
    async fn release(&self, row: &Claimed, at: chrono::DateTime<Utc>) -> Result<Delivery, DbError> {
        let released = self
            .db
            .run("outbox_release", |c| rows::release(c, row, at).scope_boxed());
        released.await.map(|()| Delivery::Recorded(Vec::new(), Instant::now()))
    }

    /// [`Worker::record`], with when its commit began.
    async fn recorded(&self, row: &Claimed, outcome: SendOutcome) -> Result<Delivery, DbError> {
        let began = Instant::now();
        let next = self.record(row, outcome).await?;
        Ok(Delivery::Recorded(next, began))
    }

    /// Records a send that was not accepted; returns the conversation's
    /// next rows when it ended this one for good.
    async fn record(&self, row: &Claimed, outcome: SendOutcome) -> Result<Vec<Claimed>, DbError> {
        use std::sync::atomic::Ordering::Relaxed;
        let lease = self.settings.lease_ms;
        let (reason, retry) = match outcome {
            SendOutcome::Sent { .. } => unreachable!("a sent row is marked in a batch"),
            SendOutcome::Throttled { reason, .. } => {
                self.stats.throttled.fetch_add(1, Relaxed);
                (reason, true)
            }
            SendOutcome::Retry { reason } => (reason, true),
            SendOutcome::Failed { reason } => (reason, false),
        };
        if retry && row.attempts < self.settings.max_attempts {
            self.stats.retried.fetch_add(1, Relaxed);
            let backoff = RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_millis(self.settings.base_delay_ms),
                max_delay: Duration::from_millis(self.settings.max_delay_ms),
            }
            .delay(row.attempts.max(1) as u32 - 1, &mut rand::rng());
            let at = Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default();
            tracing::info!(%reason, retry_in_ms = backoff.as_millis() as u64, "send failed; will retry (the conversation's later messages wait)");
            return self
                .db
                .run("outbox_retry", |c| rows::mark_retry(c, row, at, &reason).scope_boxed())
                .await
                .map(|()| Vec::new());
        }
        if retry {
            self.stats.dead.fetch_add(1, Relaxed);
            tracing::error!(%reason, "send failed on every attempt; moved to dead letters");
        } else {
            self.stats.failed.fetch_add(1, Relaxed);
            tracing::warn!(%reason, "send failed permanently");
        }
        let told = match retry {
            true => self
                .webhooks
                .webhooks
                .dead_letter_rows(&row.phone, "outbox", &row.id.to_string(), &reason),
            false => Vec::new(),
        };
        self.db
            .run("outbox_final", |c| {
                rows::mark_final(c, row, retry, &reason, lease, &told).scope_boxed()
            })
            .await
    }

    /// Marks rows sent in one commit; returns their conversations' next rows.
    pub(super) async fn mark_sent(&self, sent: Vec<(Claimed, String)>) -> Vec<Claimed> {
        let lease = self.settings.lease_ms;
        // The team's `message.sent` webhooks, only when one wants it.
        let webhooks = &self.webhooks.webhooks;
        let told = webhooks
            .wanted("message.sent")
            .then_some(|m: &[crate::db::told::SentMessage]| webhooks.sent_rows(m));
        let marked = self
            .db
            .run("outbox_sent", |c| {
                rows::mark_sent_batch(c, &sent, lease, told.as_ref().map(|t| t as _)).scope_boxed()
            })
            .await;
        if told.is_some() {
            // Its lane rows were inserted pending: claimed now, not at the next poll.
            self.queue.wake.notify_one();
        }
        marked.unwrap_or_else(|e| {
            // The lease makes the rows due again; they are sent again then
            // (and counted as possible repeats).
            tracing::warn!(error = %e, rows = sent.len(), "could not record sends");
            Vec::new()
        })
    }

    /// Rows still to deliver, counted.
    pub(super) async fn backlog(&self) -> Result<i64, DbError> {
        self.db.once(|c| rows::backlog(c).scope_boxed()).await
    }

    /// Claims due rows (the next of their conversations), up to `n`.
    pub(super) async fn claim(&self, n: i64) -> Result<Vec<Claimed>, DbError> {
        let lease = self.settings.lease_ms;
        self.db.once(|c| rows::claim(c, n, lease).scope_boxed()).await
    }

    /// At stop: rows claimed and not sent go back to pending (their attempt
    /// uncounted), for the next start or another process to send at once
    /// rather than after their lease.
    pub(super) async fn give_back(&self, rows: Vec<Claimed>) {
        if rows.is_empty() {
            return;
        }
        let given = self
            .db
            .run("outbox_give_back", |c| rows::give_back(c, &rows).scope_boxed())
            .await;
        if let Err(e) = given {
            tracing::warn!(error = %e, rows = rows.len(), "could not give claimed rows back; they are sent after their lease");
        }
    }
}
