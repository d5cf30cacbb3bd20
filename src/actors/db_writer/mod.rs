//! The DB actor: owns the step writes and commits them in groups.
//!
//! Writes that arrive while every in-flight batch is busy wait together and
//! go out as one transaction when a place frees up ("group commit"): under no
//! load each write commits alone at once; under load batches grow by
//! themselves, so one disk flush covers many messages. Up to
//! `max_in_flight` batches run at once, each on its own pooled connection,
//! shared between inbox registrations and steps when both wait (neither
//! kind can starve the other); sessions are locked in phone order, so
//! batches never deadlock.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::config::GroupCommitSettings;
use crate::db::inbox::{self, OwnedDelivery, Registration};
use crate::db::outbox::ClaimedRows;
use crate::db::steps::{StepWrite, WriteOutcome};
use crate::db::Database;
use crate::error::Error;

mod commit;
mod share;

use commit::{commit, register};
use share::{next_kind, Kind, Waiting};

/// Commit the steps of one phone, in order (a chain: each on the version
/// the one before makes). The answer — one outcome per step — comes when
/// its batch has committed.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<WriteOutcome>, Error>")]
pub struct Persist(pub Vec<StepWrite>);

/// Register one inbound delivery (atomic dedupe). Registrations of
/// concurrent requests share one statement and one commit.
#[derive(Debug, Message)]
#[rtype(result = "Result<Registration, Error>")]
pub struct Register(pub OwnedDelivery);

/// Group-commit figures.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub writes: AtomicU64,
    pub failed_batches: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Registration statements (each a commit) and the deliveries they held.
    pub registration_batches: AtomicU64,
    pub registrations: AtomicU64,
}

/// Room in the writer's mailbox (far above `engine.max_live_sessions`).
const WRITER_MAILBOX: usize = 1 << 20;

type Waiter = oneshot::Sender<Result<Vec<WriteOutcome>, Error>>;
type RegistrationWaiter = oneshot::Sender<Result<Registration, Error>>;

pub struct DbWriter {
    db: Database,
    settings: GroupCommitSettings,
    pending: VecDeque<(Vec<StepWrite>, Waiter)>,
    registrations: VecDeque<(OwnedDelivery, RegistrationWaiter)>,
    /// Phones with a registration batch in flight: one at a time per phone,
    /// so a phone's messages are numbered in the order they came.
    registering: HashSet<String>,
    /// Batches committing now, of each kind (together at most `max_in_flight`).
    registering_batches: usize,
    step_batches: usize,
    /// The kind of the batch started last (ties go to the other kind).
    last: Kind,
    stats: Arc<WriterStats>,
    /// Where a commit hands the outbound messages it claimed (and wakes
    /// the dispatcher after queuing any).
    outbox: Arc<dyn ClaimedRows>,
    /// This engine's hold on the messages it registers.
    lease: inbox::Lease,
}

impl DbWriter {
    pub fn new(
        db: Database,
        settings: GroupCommitSettings,
        stats: Arc<WriterStats>,
        outbox: Arc<dyn ClaimedRows>,
        lease: inbox::Lease,
    ) -> Self {
        Self {
            db,
            settings,
            pending: VecDeque::new(),
            registrations: VecDeque::new(),
            registering: HashSet::new(),
            registering_batches: 0,
            step_batches: 0,
            last: Kind::Steps,
            stats,
            outbox,
            lease,
        }
    }

    /// Starts batches while there is work and a free in-flight place. When
    /// both kinds wait they share the places (see [`next_kind`]): a
    /// registration backlog that took every place would starve the steps.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let places = self.settings.max_in_flight.max(1);
        // Registrations of phones that all have a batch in flight cannot go
        // now; a finishing batch calls flush again.
        let mut registrations_blocked = false;
        while self.in_flight() < places {
            let waiting = Waiting {
                registrations: !registrations_blocked && !self.registrations.is_empty(),
                steps: !self.pending.is_empty(),
            };
            let Some(kind) = next_kind(waiting, self.registering_batches, self.step_batches, self.last) else {
                break;
            };
            self.last = kind;
            if kind == Kind::Registration {
                let batch = self.take_registrations();
                if batch.is_empty() {
                    registrations_blocked = true;
                    continue;
                }
                self.start_registration(batch, ctx);
            } else {
                self.start_steps(ctx);
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.registering_batches + self.step_batches
    }

    fn start_registration(&mut self, batch: Vec<(OwnedDelivery, RegistrationWaiter)>, ctx: &mut Context<Self>) {
        // One entry per phone (a busy phone fills a batch with its own).
        let phones: HashSet<String> = batch.iter().map(|(d, _)| d.phone.clone()).collect();
        self.stats.registration_batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .registrations
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.registering.extend(phones.iter().cloned());
        self.registering_batches += 1;
        let db = self.db.clone();
        ctx.spawn(
            register(db, batch, self.lease)
                .into_actor(self)
                .map(move |(), act, ctx| {
                    for p in &phones {
                        act.registering.remove(p);
                    }
                    act.registering_batches -= 1;
                    act.flush(ctx);
                }),
        );
    }

    fn start_steps(&mut self, ctx: &mut Context<Self>) {
        let batch = self.take_batch();
        self.step_batches += 1;
        let db = self.db.clone();
        let stats = self.stats.clone();
        let outbox = self.outbox.clone();
        ctx.spawn(
            async move {
                // Claimed for this dispatcher at insert while it has room.
                let claim_ms = outbox.claim_ms();
                // Before the commit: the leases begin after it.
                let began = std::time::Instant::now();
                if let Some(claimed) = commit(db, batch, stats, claim_ms).await {
                    outbox.hand(claimed, began);
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                act.step_batches -= 1;
                act.flush(ctx);
            }),
        );
    }

    /// Up to `max_batch` registrations with distinct keys (a repeated key
    /// waits for the next batch: one statement may not touch a row twice),
    /// of phones with no batch in flight. Once one registration of a phone
    /// waits, so do the phone's later ones: they keep their order.
    fn take_registrations(&mut self) -> Vec<(OwnedDelivery, RegistrationWaiter)> {
        // From the front, only as far as the batch needs: under overload the
        // queue holds tens of thousands, and rescanning it all per batch
        // (hashing each phone) would take the writer's thread.
        let max = self.settings.max_batch.max(1);
        let mut keys = HashSet::new();
        let mut held: HashSet<String> = HashSet::new();
        let mut batch = Vec::new();
        let mut skipped = Vec::new();
        while batch.len() < max {
            let Some((d, tx)) = self.registrations.pop_front() else {
                break;
            };
            let free = !self.registering.contains(&d.phone) && !held.contains(&d.phone);
            if free && keys.insert((d.phone.clone(), d.provider_message_id.clone())) {
                batch.push((d, tx));
            } else {
                held.insert(d.phone.clone());
                skipped.push((d, tx));
            }
        }
        for entry in skipped.into_iter().rev() {
            self.registrations.push_front(entry);
        }
        batch
    }

    /// Pending chains of up to `max_batch` writes in all (at least one
    /// chain), in order from the front, at most one chain per phone (a
    /// second waits for the next batch, keeping per-phone order).
    fn take_batch(&mut self) -> Vec<(Vec<StepWrite>, Waiter)> {
        let max = self.settings.max_batch.max(1);
        let mut phones = HashSet::new();
        let mut batch = Vec::new();
        let mut writes = 0;
        let mut skipped = Vec::new();
        while let Some((chain, tx)) = self.pending.pop_front() {
            if !batch.is_empty() && writes + chain.len() > max {
                self.pending.push_front((chain, tx));
                break;
            }
            let phone = chain.first().map(|w| w.phone.clone()).unwrap_or_default();
            if phones.insert(phone) {
                writes += chain.len();
                batch.push((chain, tx));
            } else {
                skipped.push((chain, tx));
            }
        }
        for entry in skipped.into_iter().rev() {
            self.pending.push_front(entry);
        }
        batch
    }
}

impl Actor for DbWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Every live session has at most one write here at a time: the
        // mailbox needs room for all of them, never a wait.
        ctx.set_mailbox_capacity(WRITER_MAILBOX);
    }
}

impl Handler<Persist> for DbWriter {
    type Result = ResponseFuture<Result<Vec<WriteOutcome>, Error>>;

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if msg.0.is_empty() {
            let _ = tx.send(Ok(Vec::new()));
        } else {
            self.pending.push_back((msg.0, tx));
        }
        self.flush(ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Unavailable("the DB writer stopped".into())))
        })
    }
}

impl Handler<Register> for DbWriter {
    type Result = ResponseFuture<Result<Registration, Error>>;

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.registrations.push_back((msg.0, tx));
        self.flush(ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Unavailable("the DB writer stopped".into())))
        })
    }
}
