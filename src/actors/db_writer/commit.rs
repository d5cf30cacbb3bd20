//! One batch's commit, of either kind, and the answers to its waiters.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use scoped_futures::ScopedFutureExt;

use super::{RegistrationWaiter, Waiter, WriterStats};
use crate::db::inbox::{self, OwnedDelivery};
use crate::db::outbox::Claimed;
use crate::db::replica;
use crate::db::steps::{self, StepWrite, WriteOutcome};
use crate::db::{Database, DbError};
use crate::error::Error;

/// Commits one batch and answers its waiters. When outbound messages were
/// committed, returns those claimed at insert (with `claim_ms`; possibly
/// none, the rest wait pending).
pub(super) async fn commit(
    db: Database,
    batch: Vec<(Vec<StepWrite>, Waiter)>,
    stats: Arc<WriterStats>,
    claim_ms: Option<i64>,
) -> Option<Vec<Claimed>> {
    let lengths: Vec<usize> = batch.iter().map(|(c, _)| c.len()).collect();
    let (chains, waiters): (Vec<Vec<StepWrite>>, Vec<Waiter>) = batch.into_iter().unzip();
    let writes: Vec<StepWrite> = chains.into_iter().flatten().collect();
    let mut queued_outbound = false;
    let mut claimed = Vec::new();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
    stats.largest_batch.fetch_max(writes.len() as u64, Ordering::Relaxed);
    // A failed batch rolled back entirely, so retrying it is safe: versions
    // and processed marks are checked again under the row locks.
    let result = db
        .run("commit_batch", |c| {
            steps::commit_batch_claiming(c, &writes, claim_ms).scope_boxed()
        })
        .await;
    match result {
        Ok((outcomes, rows)) => {
            claimed = rows;
            if let Some(replica) = db.replica() {
                // Before anyone hears of the commit: reads of these phones
                // wait for the replica to pass this position.
                // Unknown position: those reads go to the primary.
                let lsn = db
                    .once(|c| replica::primary_lsn(c).scope_boxed())
                    .await
                    .unwrap_or(replica::ALWAYS_PRIMARY);
                let written = outcomes
                    .iter()
                    .zip(&writes)
                    .filter(|(o, _)| matches!(o, WriteOutcome::Committed { .. }))
                    .map(|(_, w)| w.phone.as_str());
                replica.note(written, lsn);
            }
            queued_outbound = outcomes.iter().zip(&writes).any(|(o, w)| {
                matches!(o, WriteOutcome::Committed { .. })
                    && w.outbox.iter().any(|r| r.kind != crate::db::events::FEED_ROW)
            });
            let mut outcomes = outcomes.into_iter();
            for (n, tx) in lengths.into_iter().zip(waiters) {
                let _ = tx.send(Ok(outcomes.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, batch = waiters.len(), "step batch failed");
            for tx in waiters {
                let _ = tx.send(Err(e.shared().into()));
            }
        }
    }
    queued_outbound.then_some(claimed)
}

pub(super) async fn register(db: Database, batch: Vec<(OwnedDelivery, RegistrationWaiter)>, lease: inbox::Lease) {
    let (deliveries, waiters): (Vec<OwnedDelivery>, Vec<_>) = batch.into_iter().unzip();
    let result = db
        .run("register_batch", |c| {
            inbox::register_batch(c, &deliveries, lease).scope_boxed()
        })
        .await;
    match result {
        Ok(regs) => {
            for (r, tx) in regs.into_iter().zip(waiters) {
                let _ = tx.send(Ok(r));
            }
        }
        Err(e) if !e.is_retryable() && waiters.len() > 1 => {
            // One bad delivery must not fail the others: register one by one.
            for (d, tx) in deliveries.into_iter().zip(waiters) {
                let one = db
                    .once(|c| inbox::register_batch(c, std::slice::from_ref(&d), lease).scope_boxed())
                    .await
                    .and_then(|mut r| r.pop().ok_or_else(|| DbError::NotFound("registration".into())));
                let _ = tx.send(one.map_err(Error::from));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batch = waiters.len(), "registration batch failed");
            for tx in waiters {
                let _ = tx.send(Err(e.shared().into()));
            }
        }
    }
}
