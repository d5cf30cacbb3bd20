//! Accepting an inbound message: durable first (atomic dedupe + inbox row,
//! group-committed by the DB writer), then queued in its phone's line.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use scoped_futures::ScopedFutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::mailbox::{InFlightGuard, Turn};
use super::{Accepted, Engine, InboundMessage};
use crate::actors::db_writer::{DbWriter, Register};
use crate::actors::registry::{LiveActor, Ticket};
use crate::actors::session::Apply;
use crate::db::dead_letters::{self, NewUnusable};
use crate::db::inbox::OwnedDelivery;
use crate::db::resume::PendingInbound;
use crate::error::{Error, Result};
use crate::phone;
use crate::telemetry;
use crate::whatsapp::kinds;

impl Engine {
    /// Accepts an inbound message: returns once it is durably registered
    /// (atomic dedupe + inbox row). It is then applied in the background,
    /// in order with the other messages of its phone.
    #[tracing::instrument(skip_all, fields(phone = %phone::mask(&m.phone)))]
    pub async fn submit_inbound(&self, m: InboundMessage) -> Result<Accepted> {
        self.check_running()?;
        if m.provider_message_id.is_empty() || m.provider_message_id.len() > 256 {
            return Err(Error::InvalidInput(
                "a provider message id has 1 to 256 characters".into(),
            ));
        }
        let contact = self.contact_key(&m.phone, m.user_id.as_deref(), &m.payload).await?;
        // A group's message goes to the group's conversation, never the sender's 1:1 one.
        let contact = match kinds::group_of(&m.payload) {
            Some(group) => phone::group_key(group).map_err(Error::InvalidInput)?,
            None => contact,
        };
        let phone = self.inner.numbers.conversation(m.business_number.as_deref(), &contact);
        let permit = self.enqueue_permit().await?;
        // The message's trace: under the request's span, on in its inbox row.
        let kind = m
            .payload
            .get("type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown");
        let span = tracing::info_span!(target: telemetry::TARGET, "inbound", kind);
        let traceparent = telemetry::traceparent(&span);
        // The registration is handed to the DB writer as the phone's ticket
        // is taken, so the writer sees a phone's messages in ticket order and
        // numbers them in that order; registrations of concurrent requests
        // share one commit. The message then enters the mailbox in its
        // ticket's turn: inbox ids of a phone grow in the order they are
        // applied, and one phone's registrations overlap.
        let live = self.live_actor(&phone)?;
        let (ticket, registration) = live.order.take(|| {
            self.inner.writer.send(Register(OwnedDelivery {
                phone: phone.clone(),
                provider_message_id: m.provider_message_id.clone(),
                payload: m.payload.clone(),
                contact_name: m.contact_name.clone(),
                contact_username: m.contact_username.clone(),
                traceparent: traceparent.clone(),
            }))
        });
        // The rest goes on even if the caller stops waiting: once its
        // registration is on its way, a message keeps its place in line
        // (a later one must not be applied first). The caller's wait is
        // bounded like every other wait of a webhook: past it, a 503 — the
        // provider redelivers, and the redelivery finds the message stored.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let guard = InFlightGuard::new(&self.inner.in_flight);
        self.inner.actors.spawn(
            self.inner.life.track(
                async move {
                    let pending = (m.provider_message_id, m.payload, traceparent);
                    let r = this
                        .enqueue_registered(phone, pending, live, ticket, registration, permit)
                        .await;
                    drop(guard);
                    let _ = tx.send(r);
                }
                .instrument(span),
            ),
        );
        // Being stored is bounded by the database's answer (a slow path to
        // it slows acknowledgements down, it does not refuse them); the
        // place in line by the enqueue timeout.
        let queued = Duration::from_millis(self.inner.settings.engine.enqueue_timeout_ms);
        let wait = queued + self.inner.db.answer_timeout();
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Unavailable("the engine is shutting down".into())),
            Err(_) => Err(Error::Unavailable(
                "the message was not stored and queued in time; send it again".into(),
            )),
        }
    }

    /// Waits for a registration, then, in the ticket's turn, puts the
    /// message in its actor's mailbox (unless it was applied already or
    /// another process holds it).
    async fn enqueue_registered(
        &self,
        phone: String,
        (provider_message_id, payload, traceparent): (String, serde_json::Value, Option<String>),
        live: LiveActor,
        ticket: Ticket,
        registration: Request<DbWriter, Register>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Accepted> {
        let reg = registration
            .instrument(tracing::info_span!(target: telemetry::TARGET, "inbox.commit"))
            .await
            .unwrap_or_else(|e| Err(Error::Unavailable(format!("DB writer: {e}"))));
        let reg = match reg {
            Ok(r) => r,
            Err(e) => {
                // Not stored: its place in line is given up.
                self.inner.registry.release(&live, false);
                return Err(e);
            }
        };
        if reg.first {
            self.inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inner.stats.redeliveries.fetch_add(1, Ordering::Relaxed);
        }
        let accepted = Accepted {
            inbox_id: reg.inbox_id,
            first: reg.first,
            delivery_count: reg.delivery_count,
            already_processed: reg.processed,
        };
        if reg.processed || reg.leased_by != self.inner.instance {
            // Applied already; or another process holds it (it accepted the
            // message first and applies it in its order; should it die,
            // resume hands the message to a live process).
            self.inner.registry.release(&live, false);
            return Ok(accepted);
        }
        // Unbounded: every earlier ticket ends (a registration has a retry
        // budget; an enqueue waits for the actor, which answers every message).
        ticket.wait().await;
        let turn = Turn { live, _ticket: ticket };
        // A redelivery of a message not yet applied that this process holds
        // is dispatched again: harmless (the actor skips what it applied),
        // and it makes progress if the first dispatch was lost.
        let pending = PendingInbound {
            id: reg.inbox_id,
            provider_message_id,
            payload,
            traceparent,
        };
        self.post(phone, Apply(pending.clone()), Some(turn), Some(permit), Some(pending))
            .await?;
        Ok(accepted)
    }

    /// Keeps an item of a delivery that cannot be applied (a malformed
    /// message, a sender with neither a phone nor a BSUID, a text over the
    /// limit, another business number) as a dead
    /// letter with its reason, so the rest of its delivery can be
    /// acknowledged; true the first time (a redelivery stores nothing new).
    #[tracing::instrument(skip_all)]
    pub async fn keep_unusable(&self, u: &NewUnusable<'_>) -> Result<bool> {
        self.check_running()?;
        let told = self.inner.webhooks.dead_letter_rows(u.from, "webhook", u.key, u.reason);
        let new = self
            .inner
            .db
            .run("record_unusable", |c| {
                dead_letters::record_unusable(c, u, &told).scope_boxed()
            })
            .await?;
        if new {
            self.inner.stats.unusable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                from = %phone::mask(u.from),
                reason = u.reason,
                "a delivery item could not be applied; kept as a dead letter"
            );
        }
        Ok(new)
    }
}
