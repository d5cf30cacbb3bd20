//! The supervisor: decides what happens after a session actor crashes on a
//! message (retry after a restart, or quarantine to dead letters), and hosts
//! the circuit breakers so their state can be read and forced in one place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use scoped_futures::ScopedFutureExt;

use crate::breaker::{BreakerSnapshot, CircuitBreaker};
use crate::db::{resume, Database};
use crate::error::Error;
use crate::phone::mask;

/// A session actor crashed while applying inbox row `inbox_id`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<CrashDecision, Error>")]
pub struct Crashed {
    pub phone: String,
    pub inbox_id: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashDecision {
    /// Restart and try again; `attempts` failures so far.
    Retry { attempts: i32 },
    /// Moved to dead letters and marked handled; go on with the next message.
    Quarantined,
}

/// Read every breaker's state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<BreakerSnapshot>")]
pub struct GetBreakers;

/// Force a breaker open or closed (operator action).
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct ForceBreaker {
    pub name: String,
    pub open: bool,
}

/// Crash figures; atomics: counted on the actor thread, read by the engine
/// handle from any thread without a message to the supervisor.
#[derive(Debug, Default)]
pub struct SupervisorStats {
    /// Crashes reported; atomic (see above).
    pub crashes: AtomicU64,
    /// Crashes answered with a retry; atomic (see above).
    pub restarts: AtomicU64,
    /// Messages moved to dead letters; atomic (see above).
    pub quarantined: AtomicU64,
}

pub struct Supervisor {
    db: Database,
    max_crashes: u32,
    /// Clones of the AI and outbound breakers, sharing their state: forcing
    /// one here acts on the one its calls go through.
    breakers: Vec<CircuitBreaker>,
    /// Shared with the engine handle, which reads it for `/metrics`.
    stats: Arc<SupervisorStats>,
    /// The team's webhooks: a quarantined message is told as a dead letter.
    webhooks: Arc<crate::webhooks::Webhooks>,
}

impl Supervisor {
    pub fn new(
        db: Database,
        max_crashes: u32,
        breakers: Vec<CircuitBreaker>,
        stats: Arc<SupervisorStats>,
        webhooks: Arc<crate::webhooks::Webhooks>,
    ) -> Self {
        Self {
            db,
            webhooks,
            max_crashes: max_crashes.max(1),
            breakers,
            stats,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<Crashed> for Supervisor {
    type Result = ResponseFuture<Result<CrashDecision, Error>>;

    fn handle(&mut self, msg: Crashed, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let max = self.max_crashes as i32;
        let stats = self.stats.clone();
        let webhooks = self.webhooks.clone();
        stats.crashes.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let attempts = db
                .run("record_failure", |c| {
                    resume::record_failure(c, &msg.phone, msg.inbox_id, &msg.reason).scope_boxed()
                })
                .await?;
            if attempts >= max {
                let told = webhooks.dead_letter_rows(&msg.phone, "inbox", &msg.inbox_id.to_string(), &msg.reason);
                db.run("quarantine", |c| {
                    resume::quarantine(c, &msg.phone, msg.inbox_id, &msg.reason, &told).scope_boxed()
                })
                .await?;
                stats.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    phone = %mask(&msg.phone),
                    inbox_id = msg.inbox_id,
                    attempts,
                    reason = %msg.reason,
                    "poison message moved to dead letters"
                );
                Ok(CrashDecision::Quarantined)
            } else {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    phone = %mask(&msg.phone),
                    inbox_id = msg.inbox_id,
                    attempts,
                    reason = %msg.reason,
                    "session actor crashed; restarting it from the database"
                );
                Ok(CrashDecision::Retry { attempts })
            }
        })
    }
}

impl Handler<GetBreakers> for Supervisor {
    type Result = MessageResult<GetBreakers>;

    fn handle(&mut self, _: GetBreakers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.breakers.iter().map(CircuitBreaker::snapshot).collect())
    }
}

impl Handler<ForceBreaker> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: ForceBreaker, _: &mut Context<Self>) -> bool {
        let Some(b) = self.breakers.iter().find(|b| b.name() == msg.name) else {
            return false;
        };
        if msg.open {
            b.force_open();
        } else {
            b.force_close();
        }
        true
    }
}
