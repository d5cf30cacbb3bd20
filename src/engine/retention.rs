//! The retention job (`[retention]`): every `every_minutes`, what expired
//! is blanked or deleted in batches of `batch` rows, one statement (and one
//! short transaction) each, until none is left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use scoped_futures::ScopedFutureExt;

use super::rounds::Next;
use super::Engine;
use crate::db::retention::{self, EXPIRING};

/// Rows the job changed since start; atomic: counted by the job, read by `/metrics`.
#[derive(Debug, Default)]
pub struct RetentionStats {
    pub expired: AtomicU64,
}

impl Engine {
    /// Starts the retention job, if anything expires.
    pub(super) fn start_retention(&self) {
        let s = self.inner.settings.retention.clone();
        if !s.any() {
            return;
        }
        // The age of each kind of `EXPIRING`, in its order; 0 keeps it.
        let days = [s.message_days, s.message_days, s.payload_days, s.dead_letter_days];
        let every = Duration::from_secs(u64::from(s.every_minutes.max(1)) * 60);
        let batch = s.batch;
        self.run_rounds(every, false, move |engine| async move {
            engine.expire_round(&days, batch).await;
            Next::Pause
        });
    }

    /// One round: each kind that expires, batch after batch until a batch
    /// comes back short (or the engine stops).
    async fn expire_round(&self, days: &[u32; 4], batch: i64) {
        for (which, d) in days.iter().enumerate().filter(|(_, d)| **d > 0) {
            let d = i32::try_from(*d).unwrap_or(i32::MAX);
            loop {
                if self.is_stopping() {
                    return;
                }
                let done = self
                    .inner
                    .db
                    .run("retention", |c| retention::expire(c, which, d, batch).scope_boxed())
                    .await;
                match done {
                    Ok(n) => {
                        self.inner.retention.expired.fetch_add(n as u64, Ordering::Relaxed);
                        if (n as i64) < batch {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, what = EXPIRING[which].0, "retention: will try again");
                        break;
                    }
                }
            }
        }
    }

    /// Rows the retention job blanked or deleted since start.
    pub fn retention_expired(&self) -> u64 {
        self.inner.retention.expired.load(Ordering::Relaxed)
    }
}
