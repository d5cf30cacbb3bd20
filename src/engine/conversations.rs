//! What agents and the provider do to a conversation besides its inbound
//! messages: agent messages, hand-offs, reads, delivery statuses, replays.
use scoped_futures::ScopedFutureExt;

use super::mailbox::InFlightGuard;
use super::Engine;
use crate::actors::session::{AgentAck, AgentContent, AgentSend, ConversationView, Read, SetHandoff, Wake};
use crate::error::{Error, Result};
use crate::events::{DeliveryEvent, Event};

/// The longest agent message: four of WhatsApp's texts, sent as ordered
/// parts (a longer one is more likely a paste gone wrong).
pub const MAX_AGENT_CHARS: usize = 4 * crate::whatsapp::split::TEXT_BODY;

impl Engine {
    /// Stores and queues a human agent's message (written `by` a named
    /// agent, or anonymously); returns after the commit.
    pub async fn submit_agent_message(
        &self,
        phone: &str,
        body: &str,
        idempotency_key: &str,
        by: Option<&str>,
    ) -> Result<AgentAck> {
        self.check_running()?;
        let phone = self.inner.numbers.checked_key(phone).map_err(Error::InvalidInput)?;
        if idempotency_key.contains('#') {
            // `#` names the parts of a long message (`key#p1`, …).
            return Err(Error::InvalidInput("an idempotency key has no '#'".into()));
        }
        if body.trim().is_empty() || body.chars().count() > MAX_AGENT_CHARS {
            return Err(Error::InvalidInput(format!(
                "a message has 1 to {MAX_AGENT_CHARS} characters (over 4,096 it goes in ordered parts)"
            )));
        }
        let _guard = InFlightGuard::new(&self.inner.in_flight);
        self.call(
            &phone,
            AgentSend {
                content: AgentContent::Text(body.to_string()),
                idempotency_key: idempotency_key.to_string(),
                author: by.map(str::to_string),
            },
        )
        .await?
    }

    /// Stores and queues a template message (any time: templates are what
    /// may go outside the 24-hour window); returns after the commit. An
    /// unknown template or a wrong parameter count is invalid input; one
    /// WhatsApp paused or disabled is refused with its status.
    pub async fn submit_template(
        &self,
        phone: &str,
        name: &str,
        language: Option<&str>,
        parameters: Vec<String>,
        idempotency_key: &str,
        by: Option<&str>,
    ) -> Result<AgentAck> {
        self.check_running()?;
        let phone = self.inner.numbers.checked_key(phone).map_err(Error::InvalidInput)?;
        if idempotency_key.contains('#') {
            return Err(Error::InvalidInput("an idempotency key has no '#'".into()));
        }
        let template = self
            .inner
            .templates
            .call(&phone, name, language, parameters)
            .map_err(Error::InvalidInput)?;
        // A retry of a request stored before is answered "stored", whatever
        // WhatsApp said of the template since.
        let db = &self.inner.db;
        let stored = db
            .outbox_key_exists(&phone, &format!("agent:{idempotency_key}"))
            .await?;
        let status = match stored {
            true => None,
            false => db.template_status(&template.name, &template.language).await?,
        };
        if let Some(s) = status {
            if crate::whatsapp::templates::is_stopped(&s.status) {
                return Err(Error::Refused(format!(
                    "template `{}` ({}) is {} at WhatsApp{}; it cannot be sent until it is approved again",
                    template.name,
                    template.language,
                    s.status,
                    s.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                )));
            }
        }
        let _guard = InFlightGuard::new(&self.inner.in_flight);
        self.call(
            &phone,
            AgentSend {
                content: AgentContent::Template(template),
                idempotency_key: idempotency_key.to_string(),
                author: by.map(str::to_string),
            },
        )
        .await?
    }

    /// The templates conversation `phone` may send (its business number's).
    pub fn templates_of(&self, phone: &str) -> &[crate::config::TemplateSettings] {
        self.inner.templates.of(phone)
    }

    /// Records a template's status as WhatsApp reported it
    /// (`message_template_status_update`).
    pub async fn record_template_status(
        &self,
        name: &str,
        language: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        Ok(self
            .inner
            .db
            .record_template_status(name, language, status, reason)
            .await?)
    }

    /// Hands the conversation to a human agent (`true`) or back to the bot,
    /// `by` a named agent or anonymously.
    pub async fn set_handoff(&self, phone: &str, on: bool, by: Option<&str>) -> Result<ConversationView> {
        self.check_running()?;
        let phone = self.inner.numbers.checked_key(phone).map_err(Error::InvalidInput)?;
        let _guard = InFlightGuard::new(&self.inner.in_flight);
        let by = by.map(str::to_string);
        self.call(&phone, SetHandoff { on, by }).await?
    }

    /// Reads a conversation. Through its actor when it is live (so the read
    /// comes after every message accepted before it), else from the primary.
    pub async fn conversation(&self, phone: &str) -> Result<Option<ConversationView>> {
        let phone = self.inner.numbers.checked_key(phone).map_err(Error::InvalidInput)?;
        if self.inner.registry.is_live(&phone) {
            return self.call(&phone, Read).await?.map(Some);
        }
        Ok(self.inner.db.load_session(&phone).await?.map(|s| ConversationView {
            phone: s.phone,
            flow_state: s.flow_state,
            data: s.data,
            version: s.version,
            handoff: s.handoff,
            window: crate::whatsapp::window::Window::now(s.last_customer_at),
        }))
    }

    /// Applies a delivery status report (`sent`, `delivered`, `read`,
    /// `failed`) to the outbound message with that provider id (sent to
    /// `recipient`, when given: a phone or BSUID of the contact, from
    /// business `number`); publishes it.
    /// Returns false when no such message is known.
    pub async fn apply_status(
        &self,
        number: Option<&str>,
        recipient: Option<&str>,
        provider_id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<bool> {
        let db = &self.inner.db;
        // The recipient (a phone or a BSUID) leads to the conversation's
        // key; an unknown one only costs the index.
        let recipient = match recipient {
            Some(r) => self
                .recipient_key(r)
                .await?
                .map(|contact| self.inner.numbers.conversation(number, &contact)),
            None => None,
        };
        let webhooks = &self.inner.webhooks;
        let told = webhooks
            .wanted("message.status")
            .then_some(|phone: &str| webhooks.status_rows(phone, provider_id, status, error));
        let (phone, queued) = db
            .run("apply_status", |c| {
                let told = told.as_ref().map(|t| t as _);
                crate::db::outbox::apply_status(c, recipient.as_deref(), provider_id, status, error, told).scope_boxed()
            })
            .await?;
        let Some(phone) = phone else { return Ok(false) };
        if queued {
            self.inner.dispatcher.wake();
        }
        let delivery = DeliveryEvent {
            provider_message_id: provider_id.to_string(),
            status: status.to_string(),
            error: error.map(str::to_string),
        };
        let _ = self.inner.events.send(Event::delivery(phone, delivery));
        Ok(true)
    }

    /// Replays a dead letter through the normal path (see
    /// [`crate::db::dead_letters::replay`]) and wakes whatever must act on it.
    pub async fn replay_dead_letter(&self, phone: &str, id: i64) -> Result<()> {
        self.check_running()?;
        // A webhook delivery's lane (`webhook:<name>:<conversation>`) is no
        // phone; its conversation's key must be one.
        let conversation = crate::db::outbox::conversation_of(phone);
        let checked = self
            .inner
            .numbers
            .checked_key(conversation)
            .map_err(Error::InvalidInput)?;
        let phone = match conversation.len() == phone.len() {
            true => checked,
            false => phone.to_string(),
        };
        let db = &self.inner.db;
        let (phone, source) = db
            .run("replay_dead_letter", |c| {
                crate::db::dead_letters::replay(c, &phone, id).scope_boxed()
            })
            .await?;
        if source == "inbox" {
            self.post(phone, Wake, None, None, None).await?;
        } else {
            self.inner.dispatcher.wake();
        }
        Ok(())
    }
}
