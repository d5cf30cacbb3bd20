//! The DB actor: owns the step writes and commits them in groups.
//!
//! Writes that arrive while every in-flight batch is busy wait together and
//! go out as one transaction when a slot frees up ("group commit"): under no
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
use scoped_futures::ScopedFutureExt;
use tokio::sync::oneshot;

use crate::config::GroupCommitSettings;
use crate::db::inbox::{self, OwnedDelivery, Registration};
use crate::db::outbox::Claimed;
use crate::db::steps::{self, StepWrite, WriteOutcome};
use crate::db::Database;
use crate::error::Error;
use crate::outbox::SendQueue;

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

pub struct DbWriter {
    db: Database,
    settings: GroupCommitSettings,
    pending: VecDeque<(Vec<StepWrite>, Waiter)>,
    registrations: VecDeque<(OwnedDelivery, oneshot::Sender<Result<Registration, Error>>)>,
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
    outbox: Arc<SendQueue>,
    /// This engine's hold on the messages it registers.
    lease: inbox::Lease,
}

impl DbWriter {
    pub fn new(
        db: Database,
        settings: GroupCommitSettings,
        stats: Arc<WriterStats>,
        outbox: Arc<SendQueue>,
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

    /// Starts batches while there is work and a free slot. When both kinds
    /// wait, the kind with fewer batches in flight goes first, so under
    /// load they share the slots: registrations used to go first always,
    /// and a registration backlog (5,000 req/s while the disk stalled)
    /// kept every slot and starved the steps — nothing was applied for the
    /// rest of the run.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let slots = self.settings.max_in_flight.max(1);
        // Registrations of phones that all have a batch in flight cannot go
        // now; a finishing batch calls flush again.
        let mut registrations_blocked = false;
        while self.in_flight() < slots {
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

    fn start_registration(
        &mut self,
        batch: Vec<(OwnedDelivery, oneshot::Sender<Result<Registration, Error>>)>,
        ctx: &mut Context<Self>,
    ) {
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
                if let Some(claimed) = commit(db, batch, stats, claim_ms).await {
                    outbox.hand(claimed);
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
    fn take_registrations(&mut self) -> Vec<(OwnedDelivery, oneshot::Sender<Result<Registration, Error>>)> {
        // From the front, only as far as the batch needs: the queue can hold
        // tens of thousands under overload, and rescanning all of it for
        // every batch (hashing and cloning each phone) took the writer's
        // thread: SipHash alone was 15.6 % of all samples in a 5,000 req/s
        // profile.
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

/// The two kinds of batch the writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Registration,
    Steps,
}

/// Which kinds have work that could start now.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    registrations: bool,
    steps: bool,
}

/// The kind of batch to start in a free slot: the only one waiting, or,
/// when both wait, the one with fewer batches in flight (a tie goes to the
/// kind not started last). Neither can starve the other, whatever the
/// number of slots.
fn next_kind(waiting: Waiting, registering: usize, stepping: usize, last: Kind) -> Option<Kind> {
    match (waiting.registrations, waiting.steps) {
        (false, false) => None,
        (true, false) => Some(Kind::Registration),
        (false, true) => Some(Kind::Steps),
        (true, true) if registering < stepping => Some(Kind::Registration),
        (true, true) if stepping < registering => Some(Kind::Steps),
        (true, true) if last == Kind::Registration => Some(Kind::Steps),
        (true, true) => Some(Kind::Registration),
    }
}

/// Commits one batch and answers its waiters. When outbound messages were
/// committed, returns those claimed at insert (with `claim_ms`; possibly
/// none, the rest wait pending).
async fn commit(
    db: Database,
    batch: Vec<(Vec<StepWrite>, Waiter)>,
    stats: Arc<WriterStats>,
    claim_ms: Option<i64>,
) -> Option<Vec<Claimed>> {
    let lengths: Vec<usize> = batch.iter().map(|(c, _)| c.len()).collect();
    let (chains, waiters): (Vec<Vec<StepWrite>>, Vec<Waiter>) = batch.into_iter().unzip();
    let writes: Vec<StepWrite> = chains.into_iter().flatten().collect();
    let mut queued_outbound = false;
    let mut claimed = Vec::new();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
    stats.largest_batch.fetch_max(writes.len() as u64, Ordering::Relaxed);
    // A failed batch rolled back entirely, so retrying it is safe: versions
    // and processed marks are checked again under the row locks.
    let result = db
        .run("commit_batch", |c| {
            steps::commit_batch_claiming(c, &writes, claim_ms).scope_boxed()
        })
        .await;
    match result {
        Ok((outcomes, rows)) => {
            claimed = rows;
            if let Some(replica) = db.replica() {
                // Before anyone hears of the commit: reads of these phones
                // wait for the replica to pass this position.
                let lsn = match db.pool().get().await {
                    Ok(mut conn) => crate::db::replica::primary_lsn(&mut conn)
                        .await
                        .unwrap_or(crate::db::replica::ALWAYS_PRIMARY),
                    Err(_) => crate::db::replica::ALWAYS_PRIMARY,
                };
                let written = outcomes
                    .iter()
                    .zip(&writes)
                    .filter(|(o, _)| matches!(o, WriteOutcome::Committed { .. }))
                    .map(|(_, w)| w.phone.as_str());
                replica.note(written, lsn);
            }
            queued_outbound = outcomes
                .iter()
                .zip(&writes)
                .any(|(o, w)| matches!(o, WriteOutcome::Committed { .. }) && !w.outbox.is_empty());
            let mut outcomes = outcomes.into_iter();
            for (n, tx) in lengths.into_iter().zip(waiters) {
                let _ = tx.send(Ok(outcomes.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, batch = waiters.len(), "step batch failed");
            for tx in waiters {
                let _ = tx.send(Err(e.shared()));
            }
        }
    }
    queued_outbound.then_some(claimed)
}

async fn register(
    db: Database,
    batch: Vec<(OwnedDelivery, oneshot::Sender<Result<Registration, Error>>)>,
    lease: inbox::Lease,
) {
    let (deliveries, waiters): (Vec<OwnedDelivery>, Vec<_>) = batch.into_iter().unzip();
    let result = db
        .run("register_batch", |c| {
            inbox::register_batch(c, &deliveries, lease).scope_boxed()
        })
        .await;
    match result {
        Ok(regs) => {
            for (r, tx) in regs.into_iter().zip(waiters) {
                let _ = tx.send(Ok(r));
            }
        }
        Err(e) if !e.is_retryable() && waiters.len() > 1 => {
            // One bad delivery must not fail the others: register one by one.
            for (d, tx) in deliveries.into_iter().zip(waiters) {
                let one = async {
                    let mut r =
                        inbox::register_batch(&mut *db.pool().get().await?, std::slice::from_ref(&d), lease).await?;
                    r.pop().ok_or_else(|| Error::NotFound("registration".into()))
                }
                .await;
                let _ = tx.send(one);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, batch = waiters.len(), "registration batch failed");
            for tx in waiters {
                let _ = tx.send(Err(e.shared()));
            }
        }
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
                .unwrap_or_else(|_| Err(Error::Connection("the DB writer stopped".into())))
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
                .unwrap_or_else(|_| Err(Error::Connection("the DB writer stopped".into())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds always waiting; batches finish oldest first. Returns how
    /// many of each kind started out of `starts`.
    fn share(slots: usize, starts: usize) -> (usize, usize) {
        let both = Waiting {
            registrations: true,
            steps: true,
        };
        let mut running: std::collections::VecDeque<Kind> = Default::default();
        let (mut reg, mut step, mut last) = (0, 0, Kind::Steps);
        let mut started = (0, 0);
        for _ in 0..starts {
            if running.len() == slots {
                match running.pop_front() {
                    Some(Kind::Registration) => reg -= 1,
                    _ => step -= 1,
                }
            }
            let kind = next_kind(both, reg, step, last).unwrap();
            last = kind;
            running.push_back(kind);
            match kind {
                Kind::Registration => {
                    reg += 1;
                    started.0 += 1;
                }
                Kind::Steps => {
                    step += 1;
                    started.1 += 1;
                }
            }
        }
        started
    }

    #[test]
    fn under_both_loads_registrations_and_steps_share_the_slots() {
        // Registrations first, always, gave (1000, 0): the steps starved.
        for slots in 1..=6 {
            let (reg, step) = share(slots, 1000);
            assert!(
                reg.abs_diff(step) <= slots,
                "{slots} slots: {reg} registrations, {step} steps"
            );
        }
    }

    #[test]
    fn a_kind_alone_takes_every_slot_and_nothing_waiting_starts_nothing() {
        let only = |registrations, steps| Waiting { registrations, steps };
        assert_eq!(
            next_kind(only(true, false), 3, 0, Kind::Registration),
            Some(Kind::Registration)
        );
        assert_eq!(next_kind(only(false, true), 0, 3, Kind::Steps), Some(Kind::Steps));
        assert_eq!(next_kind(only(false, false), 0, 0, Kind::Steps), None);
    }
}
