//! Stopping in the documented order: stop accepting, drain the mailboxes,
//! let the dispatcher finish its sends, join every background task, stop the
//! actors, close the database — all within `server.shutdown_timeout_s`.

use std::time::Duration;

use super::Engine;
use crate::error::Result;

impl Engine {
    /// Stops accepting, lets queued work finish (up to the server's
    /// shutdown timeout), joins every background task, stops the actors
    /// and, if the engine opened the database itself, the database. No task
    /// of the engine outlives it.
    pub async fn shutdown(&self) -> Result<()> {
        let life = &self.inner.life;
        if !life.cancel() {
            return Ok(());
        }
        let grace = Duration::from_secs(self.inner.settings.server.shutdown_timeout_s);
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, self.wait_idle()).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                "shutdown grace period over; unapplied messages stay in the inbox and resume at next start"
            );
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !life.join(left).await {
            tracing::warn!(
                tasks = life.tasks(),
                "background tasks still running at the end of the grace period; stopping the actor system ends them"
            );
        }
        self.inner.registry.stop_all();
        // Ends whatever is left on the arbiters; their tracked futures are
        // dropped with them, so the tracker is empty once the thread is joined.
        self.inner.actors.stop().await;
        if self.inner.owns_db {
            self.inner.db.shutdown().await?;
        }
        tracing::info!("engine stopped");
        Ok(())
    }
}
