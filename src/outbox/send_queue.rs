//! Rows claimed by the step transaction that inserted them, handed to this
//! process's dispatcher in memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::OutboxSettings;
use crate::db::outbox::{Claimed, ClaimedRows};

/// Outbox rows claimed by the step transaction that inserted them, on their
/// way to this process's dispatcher in memory (no claim query, no commit of
/// their own). Bounded: while it is full, steps insert their rows pending
/// for the claim query. Each row keeps when it was handed over: the
/// dispatcher gives back, unsent, a row whose lease is half gone (see
/// [`super::pipeline`]), so it is never sent by two dispatchers.
pub struct SendQueue {
    /// A mutex: pushed by step commits on the writer, popped by the
    /// dispatcher's pipeline. A std one: held for a push or a pop, never across an await.
    /// Each row with when the commit that claimed it began.
    rows: std::sync::Mutex<std::collections::VecDeque<(Claimed, Instant)>>,
    /// Wakes the dispatcher when a commit hands it rows; an `Arc`, shared
    /// with the dispatcher's handle, which wakes it the same way.
    pub(super) wake: Arc<Notify>,
    limit: usize,
    lease: Duration,
    /// Set when the dispatcher stops: later commits leave their rows pending.
    /// An atomic: read by every step commit, set once.
    pub(super) closed: std::sync::atomic::AtomicBool,
}

impl SendQueue {
    pub fn new(settings: &OutboxSettings) -> Self {
        Self {
            rows: std::sync::Mutex::new(std::collections::VecDeque::new()),
            wake: Arc::new(Notify::new()),
            limit: Self::limit(settings),
            lease: Duration::from_millis(settings.lease_ms.max(0) as u64),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Room for eight batches' worth of rows (at 2,000 replies/s, four leave
    /// one row in six to the claim query), but no more than the rate limit
    /// sends in a quarter of the lease: a row handed over is sent well
    /// within it.
    fn limit(settings: &OutboxSettings) -> usize {
        let batch = settings.batch.max(1) as usize;
        let quarter_lease = u64::from(settings.rate_per_s) * (settings.lease_ms.max(0) as u64) / 4_000;
        (batch * 8).min(quarter_lease as usize).max(batch)
    }

    /// The lease to claim inserted rows with, or `None` while the queue is
    /// full or closed (they are inserted pending then).
    pub fn claim_ms(&self) -> Option<i64> {
        let open = !self.closed.load(std::sync::atomic::Ordering::SeqCst);
        (open && self.len() < self.limit && !self.lease.is_zero()).then_some(self.lease.as_millis() as i64)
    }

    /// Rows a commit that began at `began` claimed for this dispatcher
    /// (their leases began after it); wakes it.
    pub fn hand(&self, claimed: Vec<Claimed>, began: Instant) {
        if !claimed.is_empty() {
            // In line by `began`: step commits overlap and end in any order.
            let mut rows = self.lock();
            let at = rows.partition_point(|(_, b)| *b <= began);
            for (i, row) in claimed.into_iter().enumerate() {
                rows.insert(at + i, (row, began));
            }
        }
        self.wake.notify_one();
    }

    /// Up to `n` rows, oldest first, each with when the commit that
    /// claimed it began.
    pub(super) fn take(&self, n: usize) -> Vec<(Claimed, Instant)> {
        let mut rows = self.lock();
        let n = n.min(rows.len());
        rows.drain(..n).collect()
    }

    /// When the commit that claimed the oldest row waiting began.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.lock().front().map(|(_, at)| *at)
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(Claimed, Instant)>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClaimedRows for SendQueue {
    fn claim_ms(&self) -> Option<i64> {
        SendQueue::claim_ms(self)
    }

    fn hand(&self, claimed: Vec<Claimed>, began: Instant) {
        SendQueue::hand(self, claimed, began)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutboxSettings;

    fn row(id: i64) -> Claimed {
        Claimed {
            id,
            phone: "5215500000001".into(),
            payload: serde_json::json!({"text": "hola"}),
            idempotency_key: format!("k.{id}"),
            attempts: 1,
            lapsed: false,
            traceparent: None,
        }
    }

    #[test]
    fn the_send_queue_claims_while_it_has_room_and_gives_rows_out_in_order() {
        let settings = OutboxSettings {
            batch: 2,
            lease_ms: 10_000,
            ..OutboxSettings::default()
        };
        let h = SendQueue::new(&settings);
        assert_eq!(h.claim_ms(), Some(10_000));
        h.hand((1..=16).map(row).collect(), Instant::now());
        // Eight batches' worth fill it: later commits insert their rows pending.
        assert_eq!(h.claim_ms(), None);
        assert_eq!(h.take(3).iter().map(|(r, _)| r.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(h.claim_ms(), Some(10_000));
        assert_eq!(h.take(usize::MAX).len(), 13);
    }

    #[test]
    fn the_send_queue_holds_no_more_than_the_rate_limit_sends_in_a_quarter_of_the_lease() {
        let settings = OutboxSettings {
            batch: 32,
            rate_per_s: 10,
            lease_ms: 8_000,
            ..OutboxSettings::default()
        };
        assert_eq!(
            SendQueue::limit(&settings),
            32,
            "20 by the rate, but at least one batch"
        );
        let settings = OutboxSettings {
            rate_per_s: 80,
            ..settings
        };
        assert_eq!(SendQueue::limit(&settings), 160);
        assert_eq!(SendQueue::limit(&OutboxSettings::default()), 256);
    }

    #[test]
    fn rows_of_overlapping_commits_line_up_by_when_their_commit_began() {
        let h = SendQueue::new(&OutboxSettings::default());
        let t0 = Instant::now();
        // The later commit ends first.
        h.hand(vec![row(3), row(4)], t0 + Duration::from_millis(5));
        h.hand(vec![row(1), row(2)], t0);
        assert_eq!(h.oldest(), Some(t0));
        let ids: Vec<i64> = h.take(usize::MAX).iter().map(|(r, _)| r.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
    }

    #[test]
    fn with_no_lease_nothing_is_claimed_at_insert() {
        let settings = OutboxSettings {
            lease_ms: 0,
            ..OutboxSettings::default()
        };
        assert_eq!(SendQueue::new(&settings).claim_ms(), None);
    }
}
