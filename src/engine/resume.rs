//! Resume: accepted messages not yet applied are picked up at start and,
//! periodically, after failures (an outage longer than the retry budget, or
//! another process that died holding them).

use scoped_futures::ScopedFutureExt;
use std::time::Duration;

use super::rounds::Next;
use super::Engine;
use crate::actors::session::Wake;
use crate::db::resume;
use crate::error::Result;

impl Engine {
    /// Wakes the actor of every phone with unprocessed inbox rows this
    /// process may resume (`own`: its own rows too, see
    /// [`resume::phones_with_unprocessed`]).
    pub(super) async fn resume(&self, own: bool) -> Result<()> {
        let db = &self.inner.db;
        let phones = db
            .run("phones_with_unprocessed", |c| {
                resume::phones_with_unprocessed(c, self.inner.instance, own).scope_boxed()
            })
            .await?;
        if !phones.is_empty() {
            tracing::info!(phones = phones.len(), "resuming unprocessed messages");
        }
        for phone in phones {
            self.post(phone, Wake, None, None, None).await?;
        }
        Ok(())
    }

    /// Periodically resumes rows left behind by failures, until stop.
    pub(super) fn start_resume_sweeper(&self) {
        let every = self.inner.settings.engine.resume_interval_s;
        if every == 0 {
            return;
        }
        self.run_rounds(Duration::from_secs(every), true, |engine| async move {
            // Other processes' rows (gone, or past their lease) always;
            // this process's own only when idle (when busy, they are in
            // its mailboxes, being applied).
            if let Err(e) = engine.resume(engine.in_flight() == 0).await {
                tracing::warn!(error = %e, "resume sweep failed");
            }
            Next::Pause
        });
    }
}
