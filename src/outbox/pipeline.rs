//! The dispatcher's task: a pipeline of claimed rows → sends → `sent` marks.
//!
//! Rows come from three places: the step commits' hand-over (the send
//! queue), the marks (each conversation's next row, claimed in the commit
//! that marks the row before it sent, or failed), and the claim query
//! (retries, rows left pending, leases run out), run on a wake-up with
//! nothing handed over and at least every `poll_interval_ms`. Up to
//! `concurrency` sends run at once; every accepted send waits for the one
//! mark commit in flight, and the next commit marks all that gathered
//! meanwhile (group commit): the window in which a crash leaves an accepted
//! send unrecorded is one commit long.

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
    let concurrency = worker.settings.concurrency.max(1);
    let batch = worker.settings.batch.max(1) as usize;
    let poll = Duration::from_millis(worker.settings.poll_interval_ms);
    let mut ready: VecDeque<Claimed> = VecDeque::new();
    let mut sending = FuturesUnordered::new();
    let mut to_mark: Vec<(Claimed, String)> = Vec::new();
    let mut marking: Option<BoxFuture<'static, Vec<Claimed>>> = None;
    let mut claiming: Option<BoxFuture<'static, (usize, Result<Vec<Claimed>, DbError>)>> = None;
    let mut counting: Option<BoxFuture<'static, (Instant, Result<i64, DbError>)>> = None;
    let (mut looked, mut counted, mut woke_at): (Option<Instant>, Option<Instant>, Instant) =
        (None, None, Instant::now());
    // Look with the claim query at the first turn.
    let mut woken = true;
    let mut stopping = false;
    tokio::pin!(until);
    loop {
        if !stopping {
            while sending.len() < concurrency {
                let Some(row) = ready.pop_front().or_else(|| worker.queue.take(1).pop()) else {
                    break;
                };
                sending.push(send(worker.clone(), row));
            }
            let room = concurrency.saturating_sub(sending.len()).min(batch);
            if claiming.is_none() && room > 0 && (woken || looked.is_none_or(|at| at.elapsed() >= poll)) {
                woken = false;
                looked = Some(Instant::now());
                let w = worker.clone();
                claiming = Some(async move { (room, w.claim(room as i64).await) }.boxed());
            }
        }
        if marking.is_none() && !to_mark.is_empty() {
            let (w, sent) = (worker.clone(), std::mem::take(&mut to_mark));
            marking = Some(async move { w.mark_sent(sent).await }.boxed());
        }
        let idle = sending.is_empty() && marking.is_none() && claiming.is_none() && ready.is_empty();
        let drain_asked = idle && drain_waiters.load(Ordering::SeqCst) > 0 && counted.is_none_or(|c| c < woke_at);
        if counting.is_none() && !stopping && (drain_asked || counted.is_none_or(|c| c.elapsed() >= BACKLOG_EVERY)) {
            let w = worker.clone();
            let began = Instant::now();
            counted = Some(began);
            counting = Some(async move { (began, w.backlog().await) }.boxed());
        }
        if stopping && sending.is_empty() && marking.is_none() && to_mark.is_empty() && claiming.is_none() {
            break;
        }
        tokio::select! {
            Some((row, delivery)) = sending.next(), if !sending.is_empty() => match delivery {
                Delivery::Sent(provider_id) => to_mark.push((row, provider_id)),
                Delivery::Recorded(next) => ready.extend(next),
            },
            next = async { marking.as_mut().expect("guarded").await }, if marking.is_some() => {
                marking = None;
                ready.extend(next);
            }
            (asked, claimed) = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                claiming = None;
                match claimed {
                    Ok(rows) => {
                        // A full claim: more may be due right away.
                        woken |= rows.len() == asked;
                        ready.extend(rows);
                    }
                    Err(e) => tracing::warn!(error = %e, "outbox claim failed"),
                }
            }
            (began, count) = async { counting.as_mut().expect("guarded").await }, if counting.is_some() => {
                counting = None;
                match count {
                    // Counts overlap no more than one at a time: the latest is kept.
                    Ok(n) => { backlog.send_replace((Some(began), n)); }
                    Err(e) => tracing::warn!(error = %e, "could not count the outbox backlog"),
                }
            }
            _ = wake.notified(), if !stopping => {
                woke_at = Instant::now();
                // A commit's hand-over wakes to send; any other wake-up
                // (a drain asked, a replay) to look with the claim query.
                woken |= worker.queue.len() == 0;
            }
            _ = tokio::time::sleep(poll), if !stopping => {}
            _ = &mut until, if !stopping => stopping = true,
        }
    }
    worker.queue.closed.store(true, Ordering::SeqCst);
    let mut left: Vec<Claimed> = worker.queue.take(usize::MAX);
    left.extend(ready);
    worker.give_back(left).await;
}

/// One row's send, with the row for the caller.
fn send(worker: Arc<Worker>, row: Claimed) -> BoxFuture<'static, (Claimed, Delivery)> {
    async move {
        let delivery = worker.deliver(&row).await;
        (row, delivery)
    }
    .boxed()
}
