//! One stop for everything a process runs in the background: a cancellation
//! token that every background task watches, and a task tracker that every
//! background task is spawned through. Stopping is "cancel, then join within
//! a deadline" (mini-redis's shutdown broadcast plus its all-done channel,
//! in tokio-util's library form).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::task_tracker::TrackedFuture;
use tokio_util::task::TaskTracker;

/// Cheap to clone; clones share the token and the tracker.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    /// Set by the first [`Lifecycle::cancel`]: tells that caller apart from
    /// later ones (a token cannot say who cancelled it). Atomic and shared
    /// by the clones: one swap picks the first caller on any thread.
    first: Arc<AtomicBool>,
    /// Cancelled once, at stop; child tokens (the HTTP server's) may be
    /// cancelled earlier on their own.
    token: CancellationToken,
    /// Counts the tasks still running, whichever runtime or arbiter they
    /// were spawned on: the engine runs tasks on its actor thread as well as
    /// on the caller's runtime.
    tracker: TaskTracker,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token cancelled with this lifecycle, or earlier by whoever holds it.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Stop was asked.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when stop is asked (owned: it can move into a task).
    pub fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Asks every task to stop; does not wait. True for the first call.
    pub fn cancel(&self) -> bool {
        let first = !self.first.swap(true, Ordering::SeqCst);
        self.token.cancel();
        first
    }

    /// `task`, counted by the tracker until it ends or is dropped; spawn the
    /// result wherever it must run.
    pub fn track<F: Future>(&self, task: F) -> TrackedFuture<F> {
        self.tracker.track_future(task)
    }

    /// Spawns `task` on the current tokio runtime, tracked.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Tracked tasks running now.
    pub fn tasks(&self) -> usize {
        self.tracker.len()
    }

    /// Waits up to `within` for every tracked task to end, without
    /// cancelling; true if they all did. No task can be tracked after it.
    pub async fn join(&self, within: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_waits_for_tasks_that_watch_the_token() {
        let life = Lifecycle::new();
        let watcher = life.cancelled();
        life.spawn(watcher);
        assert_eq!(life.tasks(), 1);
        assert!(!life.join(Duration::from_millis(20)).await, "not cancelled yet");
        life.cancel();
        assert!(life.join(Duration::from_secs(5)).await);
        assert_eq!(life.tasks(), 0);
    }

    #[tokio::test]
    async fn a_child_token_stops_alone_or_with_its_parent() {
        let life = Lifecycle::new();
        let early = life.child_token();
        early.cancel();
        assert!(!life.is_cancelled(), "a child does not stop its parent");
        let late = life.child_token();
        life.cancel();
        assert!(late.is_cancelled());
    }
}
