//! The per-phone line into a session actor's mailbox: senders of one phone
//! enqueue one at a time, first come, first served, in a bounded mailbox;
//! [`Engine::call`] waits for the actor's answer, [`Engine::post`] awaits it
//! in the background.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::Engine;
use crate::actors::registry::{LiveActor, Ticket};
use crate::actors::session::SessionActor;
use crate::db::resume::PendingInbound;
use crate::error::{Error, Result};
use crate::phone;

/// A phone's turn to enqueue (see [`Engine::turn`]).
pub(super) struct Turn {
    pub(super) live: LiveActor,
    pub(super) _ticket: Ticket,
}

/// Counts work in flight; [`Engine::wait_idle`] waits for zero. Holds a
/// clone of the engine's watch sender, so the count drops wherever the work ends.
pub(super) struct InFlightGuard(watch::Sender<usize>);

impl InFlightGuard {
    pub(super) fn new(tx: &watch::Sender<usize>) -> Self {
        tx.send_modify(|n| *n += 1);
        Self(tx.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Engine {
    /// Refuses new work once stop was asked.
    pub(super) fn check_running(&self) -> Result<()> {
        if self.inner.life.is_cancelled() {
            Err(Error::Unavailable("the engine is shutting down".into()))
        } else {
            Ok(())
        }
    }

    pub(super) async fn enqueue_permit(&self) -> Result<OwnedSemaphorePermit> {
        let wait = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        match tokio::time::timeout(wait, self.inner.queue.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Unavailable("the engine is shutting down".into())),
            Err(_) => Err(Error::Overloaded(format!(
                "{} messages are waiting to be applied",
                self.inner.settings.engine.max_queued
            ))),
        }
    }

    /// The phone's live actor (activated if needed), its pending count
    /// raised: pair with a release.
    pub(super) fn live_actor(&self, phone: &str) -> Result<LiveActor> {
        self.inner
            .registry
            .acquire(phone)
            .ok_or_else(|| Error::Unavailable("engine not started".into()))
    }

    /// Waits for the phone's turn: senders of one phone enqueue one at a
    /// time, first come, first served, so the mailbox keeps their order.
    /// Activates the phone's actor if needed.
    pub(super) async fn turn(&self, phone: &str) -> Result<Turn> {
        let live = self.live_actor(phone)?;
        let (ticket, ()) = live.order.take(|| ());
        self.wait_turn(live, ticket).await
    }

    /// Waits (bounded) until `ticket`'s turn comes.
    pub(super) async fn wait_turn(&self, live: LiveActor, ticket: Ticket) -> Result<Turn> {
        let wait = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        match tokio::time::timeout(wait, ticket.wait()).await {
            Ok(()) => Ok(Turn { live, _ticket: ticket }),
            Err(_) => {
                // Dropping the ticket gives its place up.
                self.inner.registry.release(&live, false);
                Err(Error::Overloaded("the conversation is busy; try again".into()))
            }
        }
    }

    /// Gives a turn back without sending anything.
    pub(super) fn abandon(&self, turn: Turn) {
        self.inner.registry.release(&turn.live, false);
    }

    /// Puts `msg` in the mailbox during `turn`, waiting while the mailbox is
    /// full (`bounded`: at most `engine.enqueue_timeout_ms`), and `inbound` (the message an `Apply` carries) in the actor's
    /// waiting list. Returns the entry (to release when the answer comes)
    /// and the pending answer.
    pub(super) async fn send_in_turn<M>(
        &self,
        turn: Turn,
        msg: M,
        inbound: Option<PendingInbound>,
        bounded: bool,
    ) -> Result<(LiveActor, Request<SessionActor, M>)>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        let capacity = self.inner.settings.engine.mailbox_capacity.max(1);
        let wait = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        let live = &turn.live;
        // Only the holder of the turn waits here, so a freed place is its.
        let room = async {
            loop {
                let room = live.room.notified();
                if live.queued.load(Ordering::SeqCst) < capacity {
                    break;
                }
                room.await;
            }
        };
        if !bounded {
            room.await;
        } else if tokio::time::timeout(wait, room).await.is_err() {
            self.abandon(turn);
            return Err(Error::Overloaded(format!(
                "the conversation already has {capacity} queued messages"
            )));
        }
        live.queued.fetch_add(1, Ordering::SeqCst);
        if let Some(p) = inbound {
            if let Ok(mut waiting) = live.inbound.lock() {
                waiting.push_back(p);
            }
        }
        let request = live.addr.send(msg);
        Ok((turn.live.clone(), request))
    }

    /// Puts `msg` in the phone's actor mailbox, in arrival order.
    pub(super) async fn enqueue<M>(&self, phone: &str, msg: M) -> Result<(LiveActor, Request<SessionActor, M>)>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        let turn = self.turn(phone).await?;
        self.send_in_turn(turn, msg, None, true).await
    }

    /// Sends `msg` to the phone's actor and waits for the answer. An actor
    /// that stopped between lookup and delivery is replaced and the message
    /// sent again.
    pub(super) async fn call<M>(&self, phone: &str, msg: M) -> Result<M::Result>
    where
        M: Message + Send + Clone + 'static,
        M::Result: Send,
        SessionActor: Handler<M>,
    {
        for _ in 0..3 {
            let (live, request) = self.enqueue(phone, msg.clone()).await?;
            let answer = request.await;
            self.inner.registry.release(&live, true);
            match answer {
                Ok(r) => return Ok(r),
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => return Err(Error::Unavailable("session actor timed out".into())),
            }
        }
        Err(Error::Unavailable("session actor kept stopping".into()))
    }

    /// Enqueues `msg` now (during `turn`, or a new turn) and waits for its
    /// answer in the background, counting it in flight until applied.
    pub(super) async fn post<M>(
        &self,
        phone: String,
        msg: M,
        turn: Option<Turn>,
        permit: Option<OwnedSemaphorePermit>,
        inbound: Option<PendingInbound>,
    ) -> Result<()>
    where
        M: Message<Result = Result<()>> + Send + Clone + 'static,
        SessionActor: Handler<M>,
    {
        let guard = InFlightGuard::new(&self.inner.in_flight);
        let turn = match turn {
            Some(t) => t,
            None => self.turn(&phone).await?,
        };
        // Unbounded: the message is stored and has its place in line; the
        // actor answers every message, so room comes.
        let (live, request) = self.send_in_turn(turn, msg.clone(), inbound, false).await?;
        let this = self.clone();
        self.inner.actors.spawn(self.inner.life.track(async move {
            let answer = request.await;
            this.inner.registry.release(&live, true);
            let result = match answer {
                Ok(r) => r,
                // The actor died with the message queued: send it again.
                Err(MailboxError::Closed) => this.call(&phone, msg).await.and_then(|r| r),
                Err(MailboxError::Timeout) => Err(Error::Unavailable("session actor timed out".into())),
            };
            if let Err(e) = result {
                // A message stays in the inbox (resumed later), a timer
                // stays pending (claimed again after its lease).
                tracing::warn!(phone = %phone::mask(&phone), error = %e, "work left undone; it will be taken up again");
            }
            drop(permit);
            drop(guard);
        }));
        Ok(())
    }
}
