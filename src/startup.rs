//! Wiring: builds the application from settings, runs it until a shutdown
//! signal, and stops it in order. `main`, the tests and the load harness all
//! use this, so they exercise the real wiring.

use std::future::Future;

use crate::config::Settings;
use crate::db::Database;
use crate::error::Result;

/// A built, running switchboard process.
pub struct Application {
    settings: Settings,
    db: Database,
}

impl Application {
    /// Opens the database (embedded cluster if no URL), applies migrations
    /// and builds the pool.
    pub async fn build(settings: Settings) -> Result<Self> {
        let db = Database::open(&settings.database).await?;
        let stats = db.stats();
        tracing::info!(
            pool_max = stats.max_size,
            embedded = settings.database.url.is_none(),
            "switchboard is ready"
        );
        Ok(Self { settings, db })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs until `shutdown` completes, then stops in order: the database
    /// last (the embedded cluster with a fast, clean shutdown).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        shutdown.await;
        tracing::info!("shutting down");
        self.db.shutdown().await
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
