//! Wiring: builds the application from settings, runs it until a shutdown
//! signal, and stops it in order. `main`, the tests and the load harness all
//! use this, so they exercise the real wiring.

use std::future::Future;

use crate::config::Settings;
use crate::engine::Engine;
use crate::error::Result;

/// A built, running switchboard process.
pub struct Application {
    engine: Engine,
}

impl Application {
    /// Opens the database (embedded cluster if no URL), applies migrations,
    /// loads the flow and starts the engine (resuming unprocessed messages).
    pub async fn build(settings: Settings) -> Result<Self> {
        let embedded = settings.database.url.is_none();
        let engine = Engine::start(settings).await?;
        let stats = engine.database().stats();
        tracing::info!(
            pool_max = stats.max_size,
            embedded,
            flow = %engine.flow().name,
            "switchboard is ready"
        );
        Ok(Self { engine })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs until `shutdown` completes, then stops in order: no new work,
    /// queued work drained (bounded by `server.shutdown_timeout_s`), actors
    /// stopped, the database last.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        shutdown.await;
        tracing::info!("shutting down");
        self.engine.shutdown().await
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("SIGINT received"),
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGINT"),
        },
    }
}
