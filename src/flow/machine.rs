//! The flow engine: one inbound message + what the model understood →
//! the next state, the replies, and any outcome. Pure: no I/O, no clock.

use serde::Serialize;
use serde_json::{Map, Value};

use super::definition::{Flow, GlobalIntent, Slot, SlotKind, State};

/// Key in the session data counting invalid answers to the current slot.
pub const ATTEMPTS_KEY: &str = "_attempts";
/// Key in the session data holding the ad that opened the chat (the
/// webhook's `referral`), kept to the conversation's outcome: which ad a
/// report came from.
pub const REFERRAL_KEY: &str = "_referral";
/// Key in the session data holding the id of the message the customer's
/// last message replies to (`context.id`), while it is the last one.
pub const REPLY_TO_KEY: &str = "_reply_to";
pub use super::handoff_by::HANDOFF_BY_KEY;

/// What the model understood of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Understanding {
    /// A recognized intent (one of the candidates asked for).
    pub intent: Option<String>,
    /// A value for the state's slot, if one was extracted.
    pub slot_value: Option<String>,
    /// The typed input the message carries (media, a location, a contact
    /// card), when its kind is the one the state's slot asks for.
    pub input: Option<Value>,
    /// The ad that opened the chat, if the message says (`referral`).
    pub referral: Option<Value>,
    /// The message this one replies to (`context.id`).
    pub reply_to: Option<String>,
}

/// What the session actor must ask the model before calling [`step`].
#[derive(Debug, Clone)]
pub struct Needs<'a> {
    /// Intents to detect: the global ones, then the state's transitions.
    pub intents: Vec<&'a str>,
    /// The slot to extract if no global intent matched.
    pub slot: Option<&'a Slot>,
}

/// One message out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub text: String,
    /// The state's choices: reply buttons (up to 3) or a list.
    pub choices: Vec<String>,
    /// The label of the button that opens a list (more than 3 choices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_button: Option<String>,
}

/// A terminal state's record (a report, a ticket).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub kind: String,
    pub ticket: String,
    pub data: Value,
}

/// An action a step stopped at: the state that runs it. The actor calls it
/// and hands the answer to [`super::action::after_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAction {
    pub state: String,
    pub action: String,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub state: String,
    pub data: Value,
    pub handoff: bool,
    pub replies: Vec<Reply>,
    pub outcome: Option<Outcome>,
    /// An action the step stopped at: its call's answer decides the rest
    /// (see [`super::action::after_action`]).
    pub action: Option<PendingAction>,
}

impl Flow {
    /// The state to use for `name`; an unknown name (a flow changed under a
    /// live conversation) falls back to the initial state.
    pub(crate) fn current<'a>(&'a self, name: &str) -> &'a State {
        match self.state(name).or_else(|| self.state(&self.initial)) {
            Some(s) => s,
            // `Flow::parse` guarantees the initial state exists.
            None => unreachable!("validated flow without its initial state"),
        }
    }

    /// What to ask the model in state `name`.
    pub fn needs(&self, name: &str) -> Needs<'_> {
        let state = self.current(name);
        let mut intents: Vec<&str> = self.global.keys().map(String::as_str).collect();
        intents.extend(state.on.keys().map(String::as_str));
        Needs {
            intents,
            slot: state.slot.as_ref(),
        }
    }
}

/// Applies one inbound message. `ticket` names the outcome if a terminal
/// state is reached (the caller derives it from the message, so a retried
/// step produces the same ticket).
pub fn step(flow: &Flow, state: &str, data: &Value, handoff: bool, u: &Understanding, ticket: &str) -> StepResult {
    let mut out = unchanged(flow, state, data, handoff);
    if handoff {
        // A human agent holds the conversation: the bot stays silent.
        return out;
    }
    remember_context(&mut out.data, u);
    let current = flow.current(state);
    if let Some(g) = u.intent.as_deref().and_then(|i| flow.global.get(i)) {
        on_global(flow, current, g, &mut out, ticket);
    } else if let Some(slot) = &current.slot {
        match slot_value(slot, u) {
            Some(v) => on_slot_filled(flow, current, slot, v, &mut out, ticket),
            None => on_slot_invalid(flow, current, slot, &mut out, ticket),
        }
    } else {
        on_transition(flow, current, u.intent.as_deref(), &mut out, ticket);
    }
    super::handoff_by::settle(&mut out.data, handoff, out.handoff);
    out
}

/// What the message says beyond its content, kept in the data for prompts,
/// outcomes and the flow's next steps: the ad that opened the chat (until
/// the conversation starts over) and what this message replies to.
fn remember_context(data: &mut Value, u: &Understanding) {
    let Some(obj) = data.as_object_mut() else {
        return;
    };
    if let Some(r) = &u.referral {
        obj.insert(REFERRAL_KEY.into(), r.clone());
    }
    match &u.reply_to {
        Some(id) => obj.insert(REPLY_TO_KEY.into(), Value::String(id.clone())),
        None => obj.remove(REPLY_TO_KEY),
    };
}

/// The result before this message acts: same state, data as an object (it may be null).
pub(super) fn unchanged(flow: &Flow, state: &str, data: &Value, handoff: bool) -> StepResult {
    StepResult {
        state: flow.current(state).name.clone(),
        data: if data.is_object() {
            data.clone()
        } else {
            Value::Object(Map::new())
        },
        handoff,
        replies: Vec::new(),
        outcome: None,
        action: None,
    }
}

/// A global intent wins in every state: reply, then hand off, move, or re-prompt.
fn on_global(flow: &Flow, current: &State, g: &GlobalIntent, out: &mut StepResult, ticket: &str) {
    out.replies.push(text(&g.reply));
    set_attempts(&mut out.data, 0);
    if g.handoff {
        out.handoff = true;
    }
    match &g.target {
        Some(t) => {
            if t == &flow.initial {
                out.data = Value::Object(Map::new());
            }
            enter(flow, t, out, ticket);
        }
        None if !g.handoff => out.replies.push(prompt(current, &out.data)),
        None => {}
    }
}

/// The slot's value in what the message brought: accepted text for a text
/// slot, the typed input of the slot's kind for any other.
fn slot_value(slot: &Slot, u: &Understanding) -> Option<Value> {
    match slot.kind {
        SlotKind::Text => u
            .slot_value
            .as_deref()
            .map(str::trim)
            .filter(|v| slot.accepts(v))
            .map(|v| Value::String(v.to_string())),
        _ => u.input.clone(),
    }
}

/// An accepted value is stored under the slot's name and the flow moves on to `next`.
fn on_slot_filled(flow: &Flow, current: &State, slot: &Slot, value: Value, out: &mut StepResult, ticket: &str) {
    if let Some(obj) = out.data.as_object_mut() {
        obj.insert(slot.name.clone(), value);
    }
    set_attempts(&mut out.data, 0);
    if let Some(action) = &current.action {
        // The backend judges the value first.
        out.action = Some(PendingAction {
            state: current.name.clone(),
            action: action.clone(),
        });
        return;
    }
    let next = current.next.clone().unwrap_or_else(|| flow.initial.clone());
    enter(flow, &next, out, ticket);
}

/// A missing or invalid value asks again, until the attempts run out.
fn on_slot_invalid(flow: &Flow, current: &State, slot: &Slot, out: &mut StepResult, ticket: &str) {
    let attempts = attempts(&out.data) + 1;
    if attempts >= slot.max_attempts {
        on_slot_exhausted(flow, slot, out, ticket);
    } else {
        set_attempts(&mut out.data, attempts);
        out.replies.push(text(&slot.invalid));
        out.replies.push(prompt(current, &out.data));
    }
}

/// Out of attempts: say so, then hand off or go to the exhausted target (a restart by default).
fn on_slot_exhausted(flow: &Flow, slot: &Slot, out: &mut StepResult, ticket: &str) {
    set_attempts(&mut out.data, 0);
    out.replies.push(text(&slot.exhausted_reply));
    if slot.exhausted_handoff {
        out.handoff = true;
    } else {
        let target = slot.exhausted_target.clone().unwrap_or_else(|| flow.initial.clone());
        if target == flow.initial {
            out.data = Value::Object(Map::new());
        }
        enter(flow, &target, out, ticket);
    }
}

/// A state without a slot follows the intent's transition, or replies the fallback and re-prompts.
fn on_transition(flow: &Flow, current: &State, intent: Option<&str>, out: &mut StepResult, ticket: &str) {
    match intent.and_then(|i| current.on.get(i)) {
        Some(target) => enter(flow, target, out, ticket),
        None => {
            out.replies.push(text(&flow.fallback));
            out.replies.push(prompt(current, &out.data));
        }
    }
}

/// Moves to `target`: stops at its action if it runs one on entering,
/// else [`arrive`]s.
pub(super) fn enter(flow: &Flow, target: &str, out: &mut StepResult, ticket: &str) {
    let state = flow.current(target);
    match &state.action {
        Some(action) if state.slot.is_none() => {
            out.state = state.name.clone();
            out.action = Some(PendingAction {
                state: state.name.clone(),
                action: action.clone(),
            });
        }
        _ => arrive(flow, state, out, ticket),
    }
}

/// Prompts in `state`; a terminal state records its outcome and returns
/// the conversation to the initial state with empty data.
pub(super) fn arrive(flow: &Flow, state: &State, out: &mut StepResult, ticket: &str) {
    if let Some(kind) = &state.outcome {
        let mut data = out.data.clone();
        if let Some(obj) = data.as_object_mut() {
            obj.remove(ATTEMPTS_KEY);
            obj.remove(REPLY_TO_KEY);
            obj.remove(HANDOFF_BY_KEY);
            obj.insert("ticket".into(), Value::String(ticket.to_string()));
        }
        out.replies.push(prompt(state, &data));
        data.as_object_mut().map(|o| o.remove("ticket"));
        out.outcome = Some(Outcome {
            kind: kind.clone(),
            ticket: ticket.to_string(),
            data,
        });
        out.state = flow.initial.clone();
        out.data = Value::Object(Map::new());
    } else {
        out.replies.push(prompt(state, &out.data));
        out.state = state.name.clone();
    }
}

pub(super) fn text(s: &str) -> Reply {
    Reply {
        text: s.to_string(),
        choices: Vec::new(),
        list_button: None,
    }
}

/// What the bot answers a user who opens the chat for the first time
/// (WhatsApp's `request_welcome`), when the flow says to: the state's prompt,
/// as on entering it (a state the flow no longer has: the initial one's).
/// Nothing while a human agent has the conversation.
pub fn welcome(flow: &Flow, state: &str, data: &Value, handoff: bool) -> Option<Reply> {
    (flow.welcome && !handoff).then(|| prompt(flow.current(state), data))
}

/// The state's prompt with `{slot}` placeholders filled from `data`.
fn prompt(state: &State, data: &Value) -> Reply {
    Reply {
        text: fill(&state.prompt, data),
        choices: state.choices.clone(),
        list_button: (state.choices.len() > crate::flow::definition::limits::BUTTONS)
            .then(|| state.list_button.clone()),
    }
}

/// `text` with `{slot}` placeholders filled from `data`.
pub(super) fn fill(text: &str, data: &Value) -> String {
    let mut t = text.to_string();
    if let Some(obj) = data.as_object() {
        for (k, v) in obj {
            let shown = match v {
                Value::String(s) => s.clone(),
                // A backend's ticket number may be a JSON number.
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            t = t.replace(&format!("{{{k}}}"), &shown);
        }
    }
    t
}

fn attempts(data: &Value) -> u32 {
    data.get(ATTEMPTS_KEY).and_then(Value::as_u64).unwrap_or(0) as u32
}

fn set_attempts(data: &mut Value, n: u32) {
    if let Some(obj) = data.as_object_mut() {
        if n == 0 {
            obj.remove(ATTEMPTS_KEY);
        } else {
            obj.insert(ATTEMPTS_KEY.into(), Value::from(n));
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
