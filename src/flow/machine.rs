//! The flow engine: one inbound message + what the model understood →
//! the next state, the replies, and any outcome. Pure: no I/O, no clock.

use serde::Serialize;
use serde_json::{Map, Value};

use super::definition::{Flow, Slot, State};

/// Key in the session data counting invalid answers to the current slot.
pub const ATTEMPTS_KEY: &str = "_attempts";

/// What the model understood of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Understanding {
    /// A recognized intent (one of the candidates asked for).
    pub intent: Option<String>,
    /// A value for the state's slot, if one was extracted.
    pub slot_value: Option<String>,
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
    /// Reply buttons, when the state offers choices.
    pub choices: Vec<String>,
}

/// A terminal state's record (a report, a ticket).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub kind: String,
    pub ticket: String,
    pub data: Value,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub state: String,
    pub data: Value,
    pub handoff: bool,
    pub replies: Vec<Reply>,
    pub outcome: Option<Outcome>,
}

impl Flow {
    /// The state to use for `name`; an unknown name (a flow changed under a
    /// live conversation) falls back to the initial state.
    fn current<'a>(&'a self, name: &str) -> &'a State {
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
    let mut out = StepResult {
        state: flow.current(state).name.clone(),
        data: if data.is_object() {
            data.clone()
        } else {
            Value::Object(Map::new())
        },
        handoff,
        replies: Vec::new(),
        outcome: None,
    };
    if handoff {
        // A human agent holds the conversation: the bot stays silent.
        return out;
    }
    let current = flow.current(state);
    if let Some(g) = u.intent.as_deref().and_then(|i| flow.global.get(i)) {
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
                enter(flow, t, &mut out, ticket);
            }
            None if !g.handoff => out.replies.push(prompt(current, &out.data)),
            None => {}
        }
        return out;
    }
    if let Some(slot) = &current.slot {
        let value = u.slot_value.as_deref().map(str::trim).filter(|v| slot.accepts(v));
        match value {
            Some(v) => {
                if let Some(obj) = out.data.as_object_mut() {
                    obj.insert(slot.name.clone(), Value::String(v.to_string()));
                }
                set_attempts(&mut out.data, 0);
                let next = current.next.clone().unwrap_or_else(|| flow.initial.clone());
                enter(flow, &next, &mut out, ticket);
            }
            None => {
                let attempts = attempts(&out.data) + 1;
                if attempts >= slot.max_attempts {
                    set_attempts(&mut out.data, 0);
                    out.replies.push(text(&slot.exhausted_reply));
                    if slot.exhausted_handoff {
                        out.handoff = true;
                    } else {
                        let target = slot.exhausted_target.clone().unwrap_or_else(|| flow.initial.clone());
                        if target == flow.initial {
                            out.data = Value::Object(Map::new());
                        }
                        enter(flow, &target, &mut out, ticket);
                    }
                } else {
                    set_attempts(&mut out.data, attempts);
                    out.replies.push(text(&slot.invalid));
                    out.replies.push(prompt(current, &out.data));
                }
            }
        }
        return out;
    }
    match u.intent.as_deref().and_then(|i| current.on.get(i)) {
        Some(target) => {
            let target = target.clone();
            enter(flow, &target, &mut out, ticket);
        }
        None => {
            out.replies.push(text(&flow.fallback));
            out.replies.push(prompt(current, &out.data));
        }
    }
    out
}

/// Moves to `target`, prompting there; a terminal state records its outcome
/// and returns the conversation to the initial state with empty data.
fn enter(flow: &Flow, target: &str, out: &mut StepResult, ticket: &str) {
    let state = flow.current(target);
    if let Some(kind) = &state.outcome {
        let mut data = out.data.clone();
        if let Some(obj) = data.as_object_mut() {
            obj.remove(ATTEMPTS_KEY);
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

fn text(s: &str) -> Reply {
    Reply {
        text: s.to_string(),
        choices: Vec::new(),
    }
}

/// The state's prompt with `{slot}` placeholders filled from `data`.
fn prompt(state: &State, data: &Value) -> Reply {
    let mut t = state.prompt.clone();
    if let Some(obj) = data.as_object() {
        for (k, v) in obj {
            if let Some(s) = v.as_str() {
                t = t.replace(&format!("{{{k}}}"), s);
            }
        }
    }
    Reply {
        text: t,
        choices: state.choices.clone(),
    }
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
