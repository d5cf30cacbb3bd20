//! The actix system on a thread of its own, so the engine works from any
//! tokio program (actix's arbiters need their own system). It starts the
//! singleton actors — the DB writer, the AI actor, the supervisor — and the
//! arbiters that run the session actors.

use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::actors::ai::{AiActor, AiStats};
use crate::actors::db_writer::{DbWriter, WriterStats};
use crate::actors::supervisor::{Supervisor, SupervisorStats};
use crate::ai::Model;
use crate::breaker::CircuitBreaker;
use crate::config::Settings;
use crate::db::inbox::Lease;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::outbox::SendQueue;

/// What the singleton actors are made from.
pub(super) struct ActorParts {
    pub db: Database,
    pub settings: Settings,
    /// An `Arc<dyn>`: any provider; the AI actor clones it into each call.
    pub model: Arc<dyn Model>,
    pub lease: Lease,
    /// Shared with the dispatcher: the writer hands it rows at commit.
    pub send_queue: Arc<SendQueue>,
    /// Clones (sharing state) for the AI actor and the supervisor.
    pub ai_breaker: CircuitBreaker,
    /// Clones (sharing state) for the supervisor; the dispatcher gets others.
    pub outbound_breakers: crate::outbox::OutboundBreakers,
    /// Shared with the engine handle, which reads what the actor counts.
    pub writer_stats: Arc<WriterStats>,
    /// Shared with the engine handle, which reads what the actor counts.
    pub ai_stats: Arc<AiStats>,
    /// Shared with the engine handle, which reads what the actor counts.
    pub supervisor_stats: Arc<SupervisorStats>,
    /// The team's webhooks, for the supervisor's dead letters.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The flow actions' breakers, listed and forced by the supervisor.
    pub action_breakers: Vec<crate::breaker::CircuitBreaker>,
}

/// The singleton actors' addresses and the arbiters for session actors.
pub(super) struct Started {
    /// The writer's mailbox, for the engine handle and the session actors.
    pub writer: Addr<DbWriter>,
    /// The AI actor's mailbox, for the session actors.
    pub ai: Addr<AiActor>,
    /// The supervisor's mailbox, for the engine handle and the session actors.
    pub supervisor: Addr<Supervisor>,
    pub arbiters: Vec<ArbiterHandle>,
}

/// The running system: where the engine spawns its own tasks, and the thread
/// to join at shutdown.
pub(super) struct ActorThread {
    system: actix::System,
    /// The system's own arbiter: the engine's background tasks run here.
    main: ArbiterHandle,
    /// Taken (joined) once, at shutdown; a mutex only so `&self` can take it.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ActorThread {
    /// Starts the system, its arbiters and the singleton actors.
    pub async fn start(parts: ActorParts) -> Result<(Self, Started)> {
        let arbiters = match parts.settings.engine.arbiters {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("switchboard-actors".into())
            .spawn(move || {
                let system = actix::System::new();
                let arbiters = system.block_on(async move {
                    let arbiters: Vec<Arbiter> = (0..arbiters).map(|_| Arbiter::new()).collect();
                    let started = start_actors(parts, arbiters.iter().map(Arbiter::handle).collect());
                    let _ = tx.send((actix::System::current(), Arbiter::current(), started));
                    arbiters
                });
                if let Err(e) = system.run() {
                    tracing::error!(error = %e, "actor system failed");
                }
                // The system stopped every arbiter; their threads end with it.
                for a in arbiters {
                    let _ = a.join();
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start the actor thread: {e}")))?;
        let (system, main, started) = rx
            .await
            .map_err(|_| Error::Unavailable("the actor system did not start".into()))?;
        let me = Self {
            system,
            main,
            thread: Mutex::new(Some(thread)),
        };
        Ok((me, started))
    }

    /// Runs `task` on the system's arbiter.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.main.spawn(task);
    }

    /// Stops the system (every arbiter, and any task still on them) and
    /// waits for its thread, which joins the arbiters' threads, to end.
    pub async fn stop(&self) {
        self.system.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Inside the system: the singleton actors, and the arbiters' handles for
/// the session actors.
fn start_actors(p: ActorParts, arbiters: Vec<ArbiterHandle>) -> Started {
    let group = p.settings.engine.group_commit.clone();
    let writer = DbWriter::new(p.db.clone(), group, p.writer_stats, p.send_queue, p.lease).start();
    let ai = AiActor::new(p.model, &p.settings.ai, p.ai_breaker.clone(), p.ai_stats).start();
    let breakers = std::iter::once(p.ai_breaker)
        .chain(p.outbound_breakers.all())
        .chain(p.action_breakers)
        .collect();
    let supervisor = Supervisor::new(
        p.db,
        p.settings.engine.max_crashes,
        breakers,
        p.supervisor_stats,
        p.webhooks,
    )
    .start();
    Started {
        writer,
        ai,
        supervisor,
        arbiters,
    }
}
