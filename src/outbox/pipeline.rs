//! The dispatcher's task: a pipeline of claimed rows → sends → `sent` marks.
//!
//! Rows come from three places: the step commits' hand-over (the send
//! queue), the marks (each conversation's next row, claimed in the commit
//! that marks the row before it sent, or failed), and the claim query
//! (retries, rows left pending, leases run out), run on a wake-up with
//! nothing handed over and at least every `poll_interval_ms`. Rows are
//! sent oldest claim first, and a row whose lease is half gone before its
//! send begins is given back unsent (see [`Worker::deliver`]): sent that
//! late, it could reach the provider after the lease ran out and another
//! dispatcher sent it — and the conversation's next rows — again. Up to
//! `concurrency` sends run at once; accepted sends gather for at most
//! [`MARK_GATHER`] (or a batch), wait for the one mark commit in flight, and
//! the next commit marks them all (group commit): the window in which a
//! crash leaves an accepted send unrecorded is a few milliseconds and one
//! commit long.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{watch, Notify};

use super::worker::{Delivery, Worker};
use super::BACKLOG_EVERY;
use crate::db::outbox::Claimed;
use crate::db::DbError;

type Backlog = watch::Sender<(Option<Instant>, i64)>;
/// A claim query in flight: how many rows it asked for, when it began
/// (the rows' leases began after), and its answer.
type Claiming = BoxFuture<'static, (usize, Instant, Result<Vec<Claimed>, DbError>)>;
/// A mark commit in flight: when it began, and the next rows it claimed.
type Marking = BoxFuture<'static, (Instant, Vec<Claimed>)>;
/// A backlog count in flight: when it began, and its answer.
type Counting = BoxFuture<'static, (Instant, Result<i64, DbError>)>;

/// How long an accepted send waits for others to share its mark commit
/// (unless a batch of them is ready sooner): a few milliseconds more in
/// the window in which a crash repeats a send, for several times fewer
/// commits at a high rate.
const MARK_GATHER: Duration = Duration::from_millis(5);

/// Until the accepted sends waiting since `first` are due for their mark.
async fn sleep_until_marked(first: Option<Instant>) {
    if let Some(at) = first {
        tokio::time::sleep_until((at + MARK_GATHER).into()).await;
    }
}

/// The shortest pause between two counts for a caller waiting for the
/// drain (while a retry is due later, it asks again at once).
const DRAIN_COUNT_EVERY: Duration = Duration::from_millis(20);

/// The answer of the task in `slot` (guarded by the caller: never awaited empty).
async fn in_flight<T>(slot: &mut Option<BoxFuture<'static, T>>) -> T {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The pipeline's state: the rows on their way and the one claim, mark
/// and count in flight at a time.
struct Pipeline {
    worker: Arc<Worker>,
    drain_waiters: Arc<AtomicUsize>,
    /// Claimed rows waiting for a send slot (from the marks and the claim
    /// query), each with when it was claimed.
    ready: VecDeque<(Claimed, Instant)>,
    sending: FuturesUnordered<BoxFuture<'static, (Claimed, Delivery)>>,
    /// Accepted sends waiting for the next mark commit, and when the
    /// first of them was accepted.
    to_mark: Vec<(Claimed, String)>,
    first_unmarked: Option<Instant>,
    marking: Option<Marking>,
    claiming: Option<Claiming>,
    counting: Option<Counting>,
    /// When the claim query and the count last began; when a wake-up came.
    looked: Option<Instant>,
    counted: Option<Instant>,
    woke_at: Instant,
    /// Look with the claim query at the next turn.
    woken: bool,
    stopping: bool,
}

impl Pipeline {
    /// Starts what can start: sends up to `concurrency`, the claim query
    /// when due, the mark of the accepted sends, the backlog count.
    fn start_work(&mut self) {
        let settings = &self.worker.settings;
        let concurrency = settings.concurrency.max(1);
        if !self.stopping {
            while self.sending.len() < concurrency {
                // The oldest claim first: neither source starves the other.
                let queued_first = match (self.worker.queue.oldest(), self.ready.front()) {
                    (Some(queued), Some((_, ready))) => queued <= *ready,
                    (queued, _) => queued.is_some(),
                };
                let next = match queued_first {
                    true => self.worker.queue.take(1).pop(),
                    false => self.ready.pop_front(),
                };
                let Some((row, claimed_at)) = next else { break };
                self.sending.push(send(self.worker.clone(), row, claimed_at));
            }
            let room = concurrency
                .saturating_sub(self.sending.len())
                .min(settings.batch.max(1) as usize);
            let poll = Duration::from_millis(settings.poll_interval_ms);
            if self.claiming.is_none() && room > 0 && (self.woken || self.looked.is_none_or(|at| at.elapsed() >= poll))
            {
                self.woken = false;
                self.looked = Some(Instant::now());
                let w = self.worker.clone();
                self.claiming = Some(
                    async move {
                        let began = Instant::now();
                        (room, began, w.claim(room as i64).await)
                    }
                    .boxed(),
                );
            }
        }
        let mark_due = self.to_mark.len() >= settings.batch.max(1) as usize
            || self.stopping
            || self.first_unmarked.is_some_and(|at| at.elapsed() >= MARK_GATHER);
        if self.marking.is_none() && !self.to_mark.is_empty() && mark_due {
            self.first_unmarked = None;
            let (w, sent) = (self.worker.clone(), std::mem::take(&mut self.to_mark));
            self.marking = Some(
                async move {
                    let began = Instant::now();
                    (began, w.mark_sent(sent).await)
                }
                .boxed(),
            );
        }
        let idle =
            self.sending.is_empty() && self.marking.is_none() && self.claiming.is_none() && self.ready.is_empty();
        let drain_asked = idle
            && self.drain_waiters.load(Ordering::SeqCst) > 0
            && self
                .counted
                .is_none_or(|c| c < self.woke_at && c.elapsed() >= DRAIN_COUNT_EVERY);
        let count_due = self.counted.is_none_or(|c| c.elapsed() >= BACKLOG_EVERY);
        if self.counting.is_none() && !self.stopping && (drain_asked || count_due) {
            let w = self.worker.clone();
            let began = Instant::now();
            self.counted = Some(began);
            self.counting = Some(async move { (began, w.backlog().await) }.boxed());
        }
    }

    /// Rows claimed by a statement that began at `began`, in line by it
    /// (oldest claim first: the statements answer in any order).
    fn take_claims(&mut self, rows: Vec<Claimed>, began: Instant) {
        if rows.is_empty() {
            return;
        }
        let at = self.ready.partition_point(|(_, claimed)| *claimed <= began);
        for (i, row) in rows.into_iter().enumerate() {
            self.ready.insert(at + i, (row, began));
        }
    }

    /// Stopping, with nothing left in flight.
    fn done(&self) -> bool {
        self.stopping
            && self.sending.is_empty()
            && self.marking.is_none()
            && self.to_mark.is_empty()
            && self.claiming.is_none()
    }
}

/// Runs until `until` completes (no step of this process will commit
/// another reply), then finishes the sends and marks in progress, gives
/// back the rows claimed and not sent, and ends.
pub(super) async fn run(
    worker: Arc<Worker>,
    wake: Arc<Notify>,
    backlog: Backlog,
    drain_waiters: Arc<AtomicUsize>,
    until: impl Future<Output = ()> + Send + 'static,
) {
    let poll = Duration::from_millis(worker.settings.poll_interval_ms);
    let mut p = Pipeline {
        worker,
        drain_waiters,
        ready: VecDeque::new(),
        sending: FuturesUnordered::new(),
        to_mark: Vec::new(),
        first_unmarked: None,
        marking: None,
        claiming: None,
        counting: None,
        looked: None,
        counted: None,
        woke_at: Instant::now(),
        woken: true,
        stopping: false,
    };
    tokio::pin!(until);
    loop {
        p.start_work();
        if p.done() {
            break;
        }
        tokio::select! {
            Some((row, delivery)) = p.sending.next(), if !p.sending.is_empty() => match delivery {
                Delivery::Sent(provider_id) => {
                    p.first_unmarked.get_or_insert_with(Instant::now);
                    p.to_mark.push((row, provider_id));
                }
                Delivery::Recorded(next, began) => p.take_claims(next, began),
            },
            (began, next) = in_flight(&mut p.marking), if p.marking.is_some() => {
                p.marking = None;
                p.take_claims(next, began);
            }
            (asked, began, claimed) = in_flight(&mut p.claiming), if p.claiming.is_some() => {
                p.claiming = None;
                match claimed {
                    // A full claim: more may be due right away.
                    Ok(rows) => {
                        p.woken |= rows.len() == asked;
                        p.take_claims(rows, began);
                    }
                    Err(e) => tracing::warn!(error = %e, "outbox claim failed"),
                }
            }
            (began, count) = in_flight(&mut p.counting), if p.counting.is_some() => {
                p.counting = None;
                match count {
                    Ok(n) => { backlog.send_replace((Some(began), n)); }
                    Err(e) => tracing::warn!(error = %e, "could not count the outbox backlog"),
                }
            }
            _ = wake.notified(), if !p.stopping => {
                p.woke_at = Instant::now();
                // A commit's hand-over wakes to send; any other wake-up
                // (a drain asked, a replay) to look with the claim query.
                p.woken |= p.worker.queue.len() == 0;
            }
            // While a caller waits for the drain, count again soon.
            _ = tokio::time::sleep(if p.drain_waiters.load(Ordering::SeqCst) > 0 { poll.min(DRAIN_COUNT_EVERY) } else { poll }), if !p.stopping => {}
            _ = sleep_until_marked(p.first_unmarked), if p.marking.is_none() && p.first_unmarked.is_some() => {}
            _ = &mut until, if !p.stopping => p.stopping = true,
        }
    }
    p.worker.queue.closed.store(true, Ordering::SeqCst);
    let mut left: Vec<Claimed> = p.worker.queue.take(usize::MAX).into_iter().map(|(r, _)| r).collect();
    left.extend(p.ready.into_iter().map(|(r, _)| r));
    p.worker.give_back(left).await;
}

/// One row's send, with the row for the caller; it must begin before half
/// the lease taken at `claimed_at` is gone.
fn send(worker: Arc<Worker>, row: Claimed, claimed_at: Instant) -> BoxFuture<'static, (Claimed, Delivery)> {
    use tracing::Instrument;
    // On the trace of the step that made the row.
    let span = tracing::info_span!(target: crate::telemetry::TARGET, "send", attempt = row.attempts);
    crate::telemetry::continue_from(&span, row.traceparent.as_deref());
    async move {
        let begin_by = claimed_at + worker.half_lease();
        let delivery = worker.deliver(&row, begin_by).await;
        (row, delivery)
    }
    .instrument(span)
    .boxed()
}
