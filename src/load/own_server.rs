//! The harness's own server (no `--target`, one process): the engine on an
//! embedded cluster in the run's folder, a fake send API and the HTTP
//! server, inside this process; stopped in order, or by its guard.

use std::time::Duration;

use actix_web::rt::task::JoinHandle;
use anyhow::Context;

use super::args::LoadArgs;
use super::fake_graph::FakeGraph;
use super::payloads::{IMAGE, IMAGE_MIME};
use super::population::other_numbers;
use super::run_dir::RunDir;
use super::scenario::Scenario;
use crate::config::{AiProvider, Secret, Settings};
use crate::engine::Engine;
use crate::flow::Flow;
use crate::startup::Application;

/// The own server's pool, above the default 16: this one process takes
/// the whole load.
const MAX_CONNECTIONS: u32 = 32;

/// A server the harness started for itself. Dropped without
/// [`OwnServer::stop`] (an early return, a panic), it still tells the
/// server to stop, and its folder's guard stops the cluster and removes it.
pub(super) struct OwnServer {
    pub(super) base: String,
    pub(super) db_url: Secret,
    pub(super) graph: FakeGraph,
    pub(super) app_secret: Secret,
    engine: Engine,
    /// Tells the server task to stop in order; a oneshot, as it is said
    /// once (`None` once said).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server task, awaited by [`OwnServer::stop`]: it ends once the
    /// engine and the cluster are closed.
    done: Option<JoinHandle<crate::Result<()>>>,
    /// Declared last, so dropped last: the cluster is stopped before the
    /// folder goes.
    dir: RunDir,
}

impl OwnServer {
    /// Starts the database, the fake send API and the server; returns once
    /// the server listens.
    pub(super) async fn start(args: &LoadArgs) -> anyhow::Result<Self> {
        let dir = RunDir::create()?;
        let graph = FakeGraph::start()?;
        graph.set_latency_range(args.send_latency_ms.min(), args.send_latency_ms.max());
        graph.serve_any_media(IMAGE, IMAGE_MIME);
        let app_secret = Secret::new(format!("{:032x}", rand::random::<u128>()));
        let s = settings(args, &dir, &graph, &app_secret)?;
        let flow = Flow::parse(&args.scenario.flow(), "flows/reporte.toml")?;
        let engine = Engine::builder(s.clone())
            .flow(flow)
            .start()
            .await
            .context("starting the server")?;
        let db_url = engine.database().url().clone();
        let app = match Application::with_engine(engine.clone(), s) {
            Ok(app) => app,
            Err(e) => {
                let _ = engine.shutdown().await;
                return Err(anyhow::Error::from(e));
            }
        };
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let done = actix_web::rt::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Ok(Self {
            base,
            db_url,
            graph,
            app_secret,
            engine,
            stop: Some(stop),
            done: Some(done),
            dir,
        })
    }

    /// The cluster's data folder.
    pub(super) fn data_dir(&self) -> std::path::PathBuf {
        self.dir.data_dir()
    }

    /// Waits, each step at most `limit`, for the engine to be idle and the
    /// outbox to have sent everything; `true` when the outbox drained.
    pub(super) async fn drain(&self, limit: Duration) -> bool {
        let _ = tokio::time::timeout(limit, self.engine.wait_idle()).await;
        tokio::time::timeout(limit, self.engine.outbox().wait_drained())
            .await
            .is_ok()
    }

    /// Stops the server, the engine and the cluster in order, then removes
    /// the run's folder.
    pub(super) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        // Dropped here: with the cluster stopped, the guard only removes the folder.
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // Not stopped in order: the server stops on its own once told, and
        // the folder's guard (dropped after this) stops the cluster now.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The own server's settings: the cluster and the media files in the run's
/// folder, replies to the fake send API from each of `--numbers` numbers,
/// and the limits lifted that would only measure themselves.
fn settings(args: &LoadArgs, dir: &RunDir, graph: &FakeGraph, app_secret: &Secret) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    s.database.embedded.data_dir = dir.data_dir();
    s.database.embedded.port = free_port()?;
    s.database.embedded.server_settings = args.cluster_settings();
    s.database.max_connections = MAX_CONNECTIONS;
    s.server.bind = "127.0.0.1:0".into();
    s.whatsapp = graph.settings();
    s.whatsapp.app_secret = Some(app_secret.clone());
    s.whatsapp.numbers = other_numbers(args.numbers as usize);
    s.whatsapp.read_receipts = !args.no_read_receipts;
    s.media.dir = dir.path().join("media");
    // The fake API takes any rate; WhatsApp's 80/s tier would only measure itself.
    s.outbox.rate_per_s = args.send_rate;
    if let Some((batch, concurrency)) = args.outbox_sends {
        (s.outbox.batch, s.outbox.concurrency) = (batch, concurrency);
    }
    // The generator is one client address: lift the per-client API limit.
    s.api.rate_per_s = 1_000_000;
    s.api.burst = 1_000_000;
    if args.scenario == Scenario::AiSlow {
        slow_model(&mut s);
    }
    Ok(s)
}

/// The ai-slow scenario's model: simulated, slow, now and then failing or
/// hanging, with timeouts that cut the hangs short.
fn slow_model(s: &mut Settings) {
    s.ai.provider = AiProvider::Simulated;
    s.ai.simulated.latency_ms = 100;
    s.ai.simulated.jitter_ms = 150;
    s.ai.simulated.error_rate = 0.05;
    s.ai.simulated.hang_rate = 0.01;
    s.ai.intent_timeout_ms = 500;
    s.ai.extract_timeout_ms = 500;
}

/// A loopback port that was free a moment ago, for the cluster.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
