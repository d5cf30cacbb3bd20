//! Flow actions: calls to the team's backend that a state runs, declared
//! in the flow (`[actions.NAME]`), and how the flow goes on with their
//! answer. Pure, like the machine: the session actor makes the call (see
//! `crate::actions`) between [`super::step`] and [`after_action`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::definition::Flow;
use super::machine::{arrive, enter, PendingAction, StepResult};

/// A value in an action's declaration: written in the flow, or a secret
/// named in `[integrations.secrets]` (tokens stay out of flow files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Text {
    Plain(String),
    Secret { secret: String },
}

/// One declared action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub url: Text,
    pub method: reqwest::Method,
    pub headers: BTreeMap<String, Text>,
    pub timeout: Duration,
    pub retries: u32,
    pub concurrency: usize,
}

impl Action {
    /// The secrets it names, for the check against the configuration.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.url)
            .chain(self.headers.values())
            .filter_map(|t| match t {
                Text::Secret { secret } => Some(secret.as_str()),
                Text::Plain(_) => None,
            })
    }

    /// The longest a call may take: every attempt at its timeout, plus
    /// the pauses between them.
    pub fn longest(&self) -> Duration {
        let attempts = self.retries + 1;
        self.timeout * attempts + (0..self.retries).map(retry_pause).sum::<Duration>()
    }
}

/// The pause before retry `n` (from 0): 100 ms, doubling, at most 1 s.
pub fn retry_pause(n: u32) -> Duration {
    Duration::from_millis((100u64 << n.min(4)).min(1_000))
}

/// What an action's call came to: the fields of the backend's JSON answer,
/// or a failure (after its retries, or refused by its breaker).
pub type Answer = Result<Map<String, Value>, String>;

/// The slot values an action sends: the conversation's data without the
/// engine's own keys (those starting with `_`).
pub fn slot_values(data: &Value) -> Map<String, Value> {
    data.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Goes on after `pending`'s call: on success its answer's fields become
/// slot values and the flow moves on — to `on_success`, else the slot's
/// `next`, else stays in the state (prompting it, recording its outcome if
/// it is terminal); on failure it goes to `on_failure`. The result may stop
/// at another action.
pub fn after_action(flow: &Flow, out: &mut StepResult, pending: &PendingAction, answer: Answer, ticket: &str) {
    let Some(state) = flow.state(&pending.state) else {
        return;
    };
    match answer {
        Ok(fields) => {
            if let Some(data) = out.data.as_object_mut() {
                // The engine's own keys are not the backend's to set.
                data.extend(fields.into_iter().filter(|(k, _)| !k.starts_with('_')));
            }
            if state.slot.is_some() {
                let next = state.on_success.as_ref().or(state.next.as_ref()).cloned();
                enter(flow, &next.unwrap_or_else(|| flow.initial.clone()), out, ticket);
            } else {
                arrive(flow, state, out, ticket);
                if let (Some(next), None) = (&state.on_success, &state.outcome) {
                    enter(flow, next, out, ticket);
                }
            }
        }
        Err(_) => {
            let target = state.on_failure.clone().unwrap_or_else(|| flow.initial.clone());
            enter(flow, &target, out, ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::flow::{step, Understanding};

    const FLOW: &str = r#"
name = "t"
initial = "a"
[intents]
go = ["go"]
[actions.check]
url = "http://crm/sap/{sap}"
method = "GET"
[actions.create]
url = "http://crm/tickets"
headers = { Authorization = { secret = "crm" } }
[states.a]
prompt = "A"
[states.a.on]
go = "ask"
[states.ask]
prompt = "Your SAP number?"
next = "done"
action = "check"
on_failure = "unknown"
[states.ask.slot]
name = "sap"
[states.unknown]
prompt = "No such number. Another?"
[states.unknown.on]
go = "ask"
[states.done]
prompt = "Ticket {ticket_number} for {owner}"
outcome = "report"
action = "create"
on_failure = "sorry"
[states.sorry]
prompt = "Could not file it now"
[states.sorry.on]
go = "a"
"#;

    fn filled(v: &str) -> Understanding {
        Understanding {
            slot_value: Some(v.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_filled_slot_stops_at_its_action_and_the_answer_leads_on() {
        let flow = Flow::parse(FLOW, "t.toml").unwrap();
        let r = step(&flow, "ask", &json!({}), false, &filled("12345"), "R1");
        let pending = r.action.clone().unwrap();
        assert_eq!((pending.state.as_str(), pending.action.as_str()), ("ask", "check"));
        assert!(r.replies.is_empty(), "nothing said before the backend answers");
        let mut ok = r.clone();
        let fields = json!({"owner": "Tienda 7", "_attempts": 9})
            .as_object()
            .cloned()
            .unwrap();
        after_action(&flow, &mut ok, &pending, Ok(fields), "R1");
        // `done` runs its own action before its prompt.
        assert_eq!(ok.action.as_ref().map(|p| p.action.as_str()), Some("create"));
        let next = ok.action.take().unwrap();
        let ticket = json!({"ticket_number": "SAP-4711"}).as_object().cloned().unwrap();
        after_action(&flow, &mut ok, &next, Ok(ticket), "R1");
        assert_eq!(ok.replies[0].text, "Ticket SAP-4711 for Tienda 7");
        let outcome = ok.outcome.unwrap();
        assert_eq!(outcome.data["ticket_number"], "SAP-4711");
        assert_eq!(outcome.data["sap"], "12345");
        assert!(
            outcome.data.get("_attempts").is_none(),
            "the backend sets no engine key"
        );
        assert_eq!(ok.state, "a");
        let mut failed = r;
        after_action(&flow, &mut failed, &pending, Err("404".into()), "R1");
        assert_eq!(
            (failed.state.as_str(), failed.replies[0].text.as_str()),
            ("unknown", "No such number. Another?")
        );
    }

    #[test]
    fn the_body_holds_the_slot_values_only() {
        let v = slot_values(&json!({"sap": "1", "_referral": {"x": 1}, "_attempts": 2}));
        assert_eq!(Value::Object(v), json!({"sap": "1"}));
    }

    #[test]
    fn a_call_lasts_at_most_its_attempts_and_pauses() {
        let flow = Flow::parse(FLOW, "t.toml").unwrap();
        let a = &flow.actions["check"];
        assert_eq!(a.longest(), Duration::from_millis(5_000 * 2 + 100));
        assert_eq!(flow.actions["create"].secrets().collect::<Vec<_>>(), ["crm"]);
    }
}
