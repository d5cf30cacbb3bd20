//! What a human agent does to a conversation: a message (free text inside
//! the 24-hour window, a template any time) and the hand-off — each a
//! versioned write that records which named agent acted.

use super::messages::{AgentAck, AgentContent, AgentSend, ConversationView, SetHandoff};
use super::state::{view, Core};
use super::writes::{retry_conflicts, same_state, Outbound, Written};
use super::SessionDeps;
use crate::db::steps::{StepTime, StepWrite};
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, EventMessage};
use crate::flow::{Reply, HANDOFF_BY_KEY};
use crate::whatsapp::window::Window;

/// Stores and queues an agent's message (no flow step), bumping the
/// version: free-form text only inside the 24-hour window, a template any
/// time. In a hand-off it restarts the hand-off timeout.
pub(super) async fn agent_send(deps: &SessionDeps, phone: &str, core: &mut Core, msg: AgentSend) -> Result<AgentAck> {
    let key = format!("agent:{}", msg.idempotency_key);
    if matches!(msg.content, AgentContent::Text(_)) && !Window::now(core.last_customer_at).open {
        // Another process may have applied the customer's latest message,
        // and a retry of a request stored while the window was open is
        // answered "stored": both are read before refusing.
        if deps.db.outbox_key_exists(phone, &key).await? {
            return Ok(AgentAck {
                version: core.version,
                idempotency_key: msg.idempotency_key,
                created: false,
            });
        }
        *core = super::state::load_core(deps, phone, std::mem::take(&mut core.recent)).await?;
        let window = Window::now(core.last_customer_at);
        if !window.open {
            return Err(Error::OutsideWindow(window));
        }
    }
    let flow = deps.flows.of(phone);
    let written = retry_conflicts(deps, phone, core, |at| {
        let mut w = same_state(phone, &at);
        w.dedupe_key = Some(key.clone());
        if at.handoff {
            w.time.timers = Some(super::time::new_timers(flow.resting_timers(&at.state, true)));
        }
        let out = Outbound {
            phone,
            origin: "agent",
            inbox_id: None,
            key: &key,
            sendable: true,
            author: msg.author.as_deref(),
        };
        match &msg.content {
            AgentContent::Text(body) => {
                let text = Reply {
                    text: body.clone(),
                    choices: Vec::new(),
                    list_button: None,
                };
                out.push_parts(&text, &mut w.messages, &mut w.outbox);
            }
            AgentContent::Template(t) => out.push_template(t, &mut w.messages, &mut w.outbox),
        }
        std::future::ready(Some((w, ())))
    })
    .await?;
    let created = matches!(written, Some(Written::Committed { .. }));
    if let Some(Written::Committed { version, .. }) = written {
        core.stepped_to(version);
        let event = Event::conversation(EventKind::AgentMessage, phone, version, &core.state, core.handoff)
            .with_messages(vec![EventMessage {
                origin: "agent".into(),
                body: match &msg.content {
                    AgentContent::Text(body) => body.clone(),
                    AgentContent::Template(t) => t.transcript(),
                },
                author: msg.author.clone(),
            }]);
        let _ = deps.events.send(event);
    }
    Ok(AgentAck {
        version: core.version,
        idempotency_key: msg.idempotency_key,
        created,
    })
}

/// Hands the conversation to a human agent or back to the bot, naming in
/// its data ([`HANDOFF_BY_KEY`]) the agent who did.
pub(super) async fn set_handoff(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    change: SetHandoff,
) -> Result<ConversationView> {
    let SetHandoff { on, by } = change;
    let flow = deps.flows.of(phone);
    let written = retry_conflicts(deps, phone, core, |at| {
        let write = (at.handoff != on).then(|| {
            let mut w = StepWrite {
                handoff: on,
                time: StepTime {
                    timers: Some(super::time::new_timers(flow.resting_timers(&at.state, on))),
                    ..Default::default()
                },
                ..same_state(phone, &at)
            };
            if let Some(data) = w.data.as_object_mut() {
                match &by {
                    Some(name) => data.insert(HANDOFF_BY_KEY.into(), name.clone().into()),
                    None => data.remove(HANDOFF_BY_KEY),
                };
            }
            w
        });
        // The data written comes back with the commit: it names the agent.
        std::future::ready(write.map(|w| {
            let data = w.data.clone();
            (w, data)
        }))
    })
    .await?;
    if let Some(Written::Committed { version, made }) = written {
        core.stepped_to(version);
        core.handoff = on;
        core.data = made;
        let _ = deps
            .events
            .send(Event::conversation(EventKind::Handoff, phone, version, &core.state, on));
    }
    Ok(view(phone, core))
}
