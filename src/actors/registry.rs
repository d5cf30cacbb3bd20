//! The registry: at most one live session actor per phone in this process.
//!
//! Each entry counts the messages sent to its actor and not yet answered
//! (`pending`). The count is changed under the map's shard lock, and an
//! actor is removed (passivated or evicted) only while its count is zero,
//! under the same lock — so no message is ever sent to an actor that is
//! going away, and passivation never drops a queued message.
//!
//! The entry also bounds the actor's mailbox and keeps it FIFO: senders take
//! a fair (first-come, first-served) lock, wait while `pending` exceeds the
//! capacity, then enqueue. actix's own bounded mailbox is not used for this,
//! because senders parked on a full actix mailbox may enter in any order.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Instant;

use actix::prelude::*;
use dashmap::DashMap;

use super::session::{Inbound, Passivation, SessionActor, SessionDeps, Stop};

/// Turns for one phone's senders, first come, first served. A sender takes
/// a ticket (and starts what must start in arrival order, such as its
/// registration, while taking it), may then wait for slow work without
/// holding anyone up, and waits for its turn only to enqueue: one phone's
/// registrations overlap, its mailbox order stays the arrival order.
#[derive(Default)]
pub(crate) struct Sequencer {
    /// One std mutex over the whole line: taking, waiting and dropping a
    /// ticket read and write several fields at once, never across an await.
    state: Mutex<SeqState>,
}

#[derive(Default)]
struct SeqState {
    /// The next ticket to hand out.
    next: u64,
    /// The ticket whose turn it is.
    serving: u64,
    /// Tickets given up before their turn (skipped when it comes).
    skipped: BTreeSet<u64>,
    /// Tickets waiting for their turn; a oneshot each, as a turn comes once
    /// and the ticket before it sends it.
    waiting: HashMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl Sequencer {
    fn state(&self) -> MutexGuard<'_, SeqState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next ticket; `start` runs before anyone can take another.
    pub fn take<R>(self: &Arc<Self>, start: impl FnOnce() -> R) -> (Ticket, R) {
        let mut st = self.state();
        let number = st.next;
        st.next += 1;
        let r = start();
        drop(st);
        (
            Ticket {
                seq: self.clone(),
                number,
            },
            r,
        )
    }
}

/// A place in a phone's line; its turn ends when it is dropped.
pub(crate) struct Ticket {
    /// The phone's line, shared with its entry: the ticket gives its turn
    /// back there when dropped, wherever that happens.
    seq: Arc<Sequencer>,
    number: u64,
}

impl Ticket {
    /// Waits until every earlier ticket is done (cancel-safe: dropping the
    /// ticket gives its place up).
    pub async fn wait(&self) {
        let rx = {
            let mut st = self.seq.state();
            if st.serving == self.number {
                return;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            st.waiting.insert(self.number, tx);
            rx
        };
        let _ = rx.await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.seq.state();
        st.waiting.remove(&self.number);
        if st.serving != self.number {
            st.skipped.insert(self.number);
            return;
        }
        st.serving += 1;
        loop {
            let next = st.serving;
            if !st.skipped.remove(&next) {
                break;
            }
            st.serving += 1;
        }
        let next = st.serving;
        if let Some(tx) = st.waiting.remove(&next) {
            let _ = tx.send(());
        }
    }
}

/// One live actor.
#[derive(Clone)]
pub(crate) struct LiveActor {
    /// The actor's mailbox; every sender of the phone holds a clone of the entry.
    pub addr: Addr<SessionActor>,
    pub id: u64,
    /// Messages sent and not yet answered (see the module doc). Atomic and
    /// shared by the entry's clones: raised under the shard lock, lowered by
    /// whichever task got the answer.
    pub pending: Arc<AtomicUsize>,
    /// Messages in the actor's mailbox or handler (≤ the mailbox capacity);
    /// atomic, shared by the phone's senders and read while they wait for room.
    pub queued: Arc<AtomicUsize>,
    /// Hands out turns: keeps senders of one phone in arrival order; an
    /// `Arc`, as each ticket holds the line it came from.
    pub order: Arc<Sequencer>,
    /// Signalled when a message of this actor is answered (room in the
    /// mailbox); shared by the entry's clones, so any answer wakes the waiter.
    pub room: Arc<tokio::sync::Notify>,
    /// Inbound messages in mailbox order, shared with the actor: it takes
    /// every one waiting and applies them as one chain (per-phone batching).
    /// A mutex: the sender in turn pushes while the actor drains.
    pub inbound: Inbound,
    /// When the entry was last acquired or released (ms since the registry's
    /// epoch); atomic: stored on every acquire and release, read to pick the LRU.
    last_used_ms: Arc<AtomicU64>,
}

/// Actor lifetimes; atomics: counted by senders and actors on any thread,
/// read by the engine's stats without a lock.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Actors started; atomic (see above).
    pub activations: AtomicU64,
    /// Idle actors that stopped themselves; atomic (see above).
    pub passivations: AtomicU64,
    /// Idle actors stopped over the cap; atomic (see above).
    pub evictions: AtomicU64,
}

pub(crate) struct RegistryInner {
    /// Phone → live actor. Sharded: senders of different phones do not
    /// contend, and one shard's lock orders `pending` against removal.
    map: DashMap<String, LiveActor>,
    arbiters: Vec<ArbiterHandle>,
    /// The next actor id; atomic, as actors start from many senders at once.
    next_id: AtomicU64,
    cap: usize,
    epoch: Instant,
    /// Set once, after construction (the deps hold a weak handle back to the
    /// registry); read lock-free by every activation, shared by every actor.
    deps: OnceLock<Arc<SessionDeps>>,
    pub stats: RegistryStats,
}

/// Cheap to clone; clones share the map.
#[derive(Clone)]
pub(crate) struct Registry(Arc<RegistryInner>);

impl Registry {
    pub fn new(arbiters: Vec<ArbiterHandle>, cap: usize) -> Self {
        Self(Arc::new(RegistryInner {
            map: DashMap::new(),
            arbiters,
            next_id: AtomicU64::new(1),
            cap: cap.max(1),
            epoch: Instant::now(),
            deps: OnceLock::new(),
            stats: RegistryStats::default(),
        }))
    }

    /// Completes construction (the actors' dependencies reach the registry
    /// through [`Registry::downgrade`]).
    pub fn set_deps(&self, deps: Arc<SessionDeps>) {
        let _ = self.0.deps.set(deps);
    }

    /// What the session actors hold of the registry: weak, so the registry's
    /// dependencies, which every actor shares, are no cycle through it.
    pub fn downgrade(&self) -> Weak<dyn Passivation> {
        let weak: Weak<RegistryInner> = Arc::downgrade(&self.0);
        weak
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.0.stats
    }

    fn now_ms(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64
    }

    /// The live actor of `phone`, started if needed, with its pending count
    /// already raised. Pair every call with [`Registry::release`].
    pub fn acquire(&self, phone: &str) -> Option<LiveActor> {
        let deps = self.0.deps.get()?.clone();
        let mut created = false;
        let live = {
            let entry = self.0.map.entry(phone.to_string()).or_insert_with(|| {
                created = true;
                let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
                let arbiter = &self.0.arbiters[(id as usize) % self.0.arbiters.len()];
                let phone = phone.to_string();
                let deps = deps.clone();
                let inbound: Inbound = Arc::new(Mutex::new(Default::default()));
                let side = inbound.clone();
                let addr = SessionActor::start_in_arbiter(arbiter, move |_| SessionActor::new(phone, id, deps, side));
                LiveActor {
                    addr,
                    id,
                    pending: Arc::new(AtomicUsize::new(0)),
                    queued: Arc::new(AtomicUsize::new(0)),
                    order: Arc::new(Sequencer::default()),
                    room: Arc::new(tokio::sync::Notify::new()),
                    inbound,
                    last_used_ms: Arc::new(AtomicU64::new(0)),
                }
            });
            entry.pending.fetch_add(1, Ordering::SeqCst);
            entry.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
            entry.clone()
        };
        if created {
            self.0.stats.activations.fetch_add(1, Ordering::Relaxed);
        }
        // Over the cap (it is soft while every actor is busy): shed idle ones.
        if self.0.map.len() > self.0.cap {
            self.evict_lru(phone);
        }
        Some(live)
    }

    /// The answer to an enqueued message arrived (or it was never sent:
    /// `enqueued` false).
    pub fn release(&self, live: &LiveActor, enqueued: bool) {
        live.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        if enqueued {
            live.queued.fetch_sub(1, Ordering::SeqCst);
            live.room.notify_one();
        }
        live.pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Evicts the least recently used idle actor (never `keep`). Over the
    /// cap with every actor busy, nothing is evicted: the cap is soft rather
    /// than drop a queued message.
    fn evict_lru(&self, keep: &str) {
        let victim = self
            .0
            .map
            .iter()
            .filter(|e| e.key() != keep && e.value().pending.load(Ordering::SeqCst) == 0)
            .min_by_key(|e| e.value().last_used_ms.load(Ordering::Relaxed))
            .map(|e| (e.key().clone(), e.value().id));
        let Some((phone, id)) = victim else { return };
        if let Some((_, live)) = self
            .0
            .map
            .remove_if(&phone, |_, s| s.id == id && s.pending.load(Ordering::SeqCst) == 0)
        {
            self.0.stats.evictions.fetch_add(1, Ordering::Relaxed);
            live.addr.do_send(Stop);
        }
    }

    /// Live actors now.
    pub fn live(&self) -> usize {
        self.0.map.len()
    }

    /// Messages sent to live actors and not yet answered.
    pub fn mailbox_depth(&self) -> usize {
        self.0
            .map
            .iter()
            .map(|e| e.value().pending.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether `phone` has a live actor.
    pub fn is_live(&self, phone: &str) -> bool {
        self.0.map.contains_key(phone)
    }

    /// Stops every actor (at shutdown, once no work is pending).
    pub fn stop_all(&self) {
        let all: Vec<LiveActor> = self.0.map.iter().map(|e| e.value().clone()).collect();
        self.0.map.clear();
        for s in all {
            s.addr.do_send(Stop);
        }
    }
}

impl Passivation for RegistryInner {
    fn try_passivate(&self, phone: &str, id: u64) -> bool {
        let removed = self
            .map
            .remove_if(phone, |_, s| s.id == id && s.pending.load(Ordering::SeqCst) == 0)
            .is_some();
        if removed {
            self.stats.passivations.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }
}
