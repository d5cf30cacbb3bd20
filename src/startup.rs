//! Wiring: builds the application from settings, runs it until a shutdown
//! signal, and stops it in order. `main`, the tests and the load harness all
//! use this, so they exercise the real wiring.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;

use crate::config::Settings;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::http::{self, AppState, Metrics};

/// A built switchboard process: the engine and its HTTP server (bound, not
/// yet serving).
pub struct Application {
    engine: Engine,
    server: Server,
    port: u16,
    state: Arc<AppState>,
}

impl Application {
    /// Opens the database (embedded cluster if no URL), applies migrations,
    /// loads the flow, starts the engine (resuming unprocessed messages) and
    /// binds the HTTP server to `server.bind` (port 0: any free port).
    pub async fn build(settings: Settings) -> Result<Self> {
        let engine = Engine::start(settings.clone()).await?;
        Self::with_engine(engine, settings)
    }

    /// Serves an engine built by the caller (tests inject a database, a
    /// model or a sender this way).
    pub fn with_engine(engine: Engine, settings: Settings) -> Result<Self> {
        if let Some(problem) = settings.exposure_problem() {
            if !settings.server.insecure {
                return Err(Error::Server(problem));
            }
            tracing::warn!(
                "INSECURE: {problem} (server.insecure = true): anyone who reaches this port can inject \
                 messages and read conversations"
            );
        }
        let listener = TcpListener::bind(&settings.server.bind)
            .map_err(|e| Error::Server(format!("cannot listen on {}: {e}", settings.server.bind)))?;
        let port = listener.local_addr().map_err(|e| Error::Server(e.to_string()))?.port();
        let metrics = Metrics::new().map_err(|e| Error::Server(format!("metrics: {e}")))?;
        let state = Arc::new(AppState {
            engine: engine.clone(),
            settings: settings.clone(),
            metrics,
            closing: engine.lifecycle().child_token(),
            limiter: http::limits::RateLimiter::new(settings.api.rate_per_s, settings.api.burst),
            streams: http::limits::StreamSlots::new(settings.api.max_sse_subscribers),
        });
        let server = http::build_server(state.clone(), listener).map_err(|e| Error::Server(e.to_string()))?;
        let pool = engine.database().stats();
        tracing::info!(
            port,
            pool_max = pool.max_size,
            embedded = settings.database.url.is_none(),
            flow = %engine.flow().name,
            "switchboard is ready"
        );
        Ok(Self {
            engine,
            server,
            port,
            state,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The port the HTTP server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` completes, then stops in order: stop
    /// accepting and finish in-flight requests, drain the session mailboxes
    /// and the DB writer, let the dispatcher finish its sends, stop the
    /// actors, close the database (the embedded cluster last).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let handle = self.server.handle();
        let mut server = actix_web::rt::spawn(self.server);
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            r = &mut server => tracing::error!(result = ?r, "the HTTP server stopped by itself"),
        }
        self.state.closing.cancel();
        handle.stop(true).await;
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
