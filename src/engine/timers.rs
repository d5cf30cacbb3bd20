//! The timer poller: every `timers.poll_interval_ms` it claims the due
//! timers of many conversations at once and hands each to its
//! conversation's actor, in line behind what that conversation already has
//! queued. Pending timers cost nothing while they wait: no task, no memory,
//! an index entry.

use std::time::Duration;

use scoped_futures::ScopedFutureExt;

use super::rounds::Next;
use super::Engine;
use crate::actors::session::{DueTimer, Fire};
use crate::db::timers::{self, ClaimedTimer};
use crate::flow::TimerKind;

impl Engine {
    /// Claims due timers until stop, a round per poll (see `rounds`).
    pub(super) fn start_timer_poller(&self) {
        let settings = self.inner.settings.timers.clone();
        let every = Duration::from_millis(settings.poll_interval_ms.max(10));
        let (batch, lease_ms) = (settings.batch, settings.lease_ms);
        self.run_rounds(every, false, move |engine| async move {
            let claimed = engine.fire_due(batch, lease_ms).await;
            // A full batch: more may be due now.
            match claimed >= batch as usize {
                true => Next::Now,
                false => Next::Pause,
            }
        });
    }

    /// Claims up to `batch` due timers and puts each in its conversation's
    /// line. Returns how many were claimed. A timer that cannot be queued
    /// (the engine stops) is claimed again after its lease.
    async fn fire_due(&self, batch: i64, lease_ms: i64) -> usize {
        if self.is_stopping() {
            return 0;
        }
        let holder = self.inner.instance;
        let due = self
            .inner
            .db
            .run("claim_due_timers", |c| {
                timers::claim_due(c, holder, lease_ms, batch).scope_boxed()
            })
            .await;
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "claiming due timers failed");
                return 0;
            }
        };
        let n = due.len();
        // Each conversation's due timers, most overdue first, posted in
        // that order by a task of its own: a busy conversation's full
        // mailbox holds up only its own timers, not the poller.
        let mut by_phone: std::collections::BTreeMap<String, Vec<ClaimedTimer>> = Default::default();
        for t in due {
            by_phone.entry(t.phone.clone()).or_default().push(t);
        }
        for (phone, mut timers) in by_phone {
            timers.sort_by_key(|t| (t.due_at, t.id));
            let engine = self.clone();
            self.inner.actors.spawn(self.inner.life.track(async move {
                for t in timers {
                    let Some(kind) = TimerKind::parse(&t.kind) else { continue };
                    let id = t.id;
                    let fire = Fire(DueTimer {
                        id,
                        kind,
                        action: t.action,
                        due_at: t.due_at,
                    });
                    if let Err(e) = engine.post(phone.clone(), fire, None, None, None).await {
                        tracing::warn!(timer = id, error = %e, "due timer not queued; it is claimed again after its lease");
                    }
                }
            }));
        }
        n
    }
}
