//! The event feed (`events`, see [`crate::db::events`]): reads for the SSE
//! streams of any process — where a subscriber is, what follows a position
//! — and the retention job that forgets events after
//! `integrations.events_keep_s`, in small batches.

use std::time::Duration;

use scoped_futures::ScopedFutureExt;

use super::rounds::Next;
use super::Engine;
use crate::db::events::{self, FeedEvent, Position};
use crate::error::Result;

/// Events the retention job deletes per statement: short locks, short WAL bursts.
const PRUNE_BATCH: i64 = 1_000;
/// How often the retention job looks for expired events.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Engine {
    /// Whether events are kept (`integrations.events_keep_s` > 0).
    pub fn feed_enabled(&self) -> bool {
        self.inner.settings.integrations.events_keep_s > 0
    }

    /// The position after every event released now.
    pub async fn feed_head(&self) -> Result<Position> {
        Ok(self
            .inner
            .db
            .run("feed_head", |c| events::head(c).scope_boxed())
            .await?)
    }

    /// Up to `limit` released events after `from` (of conversation `only`), in feed order.
    pub async fn feed_after(&self, from: Position, only: Option<&str>, limit: i64) -> Result<Vec<FeedEvent>> {
        Ok(self
            .inner
            .db
            .run("feed_after", |c| events::after(c, from, only, limit).scope_boxed())
            .await?)
    }

    /// Starts the retention job: at start and every minute, expired events
    /// go in batches. An event holds message bodies: it is kept no longer
    /// than `retention.message_days` either.
    pub(super) fn start_feed_pruner(&self) {
        let settings = &self.inner.settings;
        let mut keep_s = settings.integrations.events_keep_s;
        if keep_s == 0 {
            return;
        }
        if settings.retention.message_days > 0 {
            keep_s = keep_s.min(u64::from(settings.retention.message_days) * 86_400);
        }
        let keep_s = i64::try_from(keep_s).unwrap_or(i64::MAX);
        self.run_rounds(PRUNE_EVERY, false, move |engine| async move {
            let gone = engine
                .inner
                .db
                .run("prune_events", |c| events::prune(c, keep_s, PRUNE_BATCH).scope_boxed())
                .await;
            match gone {
                // A full batch: more may be old enough now.
                Ok(n) if n as i64 == PRUNE_BATCH => Next::Now,
                Ok(_) => Next::Pause,
                Err(e) => {
                    tracing::warn!(error = %e, "event retention: will try again");
                    Next::Pause
                }
            }
        });
    }
}
