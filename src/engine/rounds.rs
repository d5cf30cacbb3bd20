//! The engine's background loops (the resume sweep, timers, retention, the
//! event feed's pruning): one round, then a pause, until the engine stops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Engine;

/// What a round asks for next.
pub(super) enum Next {
    /// More is waiting (a full batch): the next round at once.
    Now,
    /// The next round after the pause.
    Pause,
}

impl Engine {
    /// Runs `round` until stop, pausing `every` between rounds (and before
    /// the first, with `pause_first`). Holds the engine weakly: an engine
    /// dropped without a shutdown is not kept alive by its own loops.
    pub(super) fn run_rounds<F, Fut>(&self, every: Duration, pause_first: bool, mut round: F)
    where
        F: FnMut(Engine) -> Fut + Send + 'static,
        Fut: Future<Output = Next> + Send,
    {
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.life.cancelled();
        self.inner.actors.spawn(self.inner.life.track(async move {
            tokio::pin!(stop);
            let mut pause = pause_first;
            loop {
                if pause {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
                let Some(inner) = weak.upgrade() else { break };
                pause = matches!(round(Engine { inner }).await, Next::Pause);
            }
        }));
    }
}
