//! A due timer applied to the conversation: the pure half of a timer's
//! step (the actor commits it with the timer's `fired` mark).

use serde_json::{Map, Value};

use super::machine::{enter, fill, text, unchanged};
use super::time::{TemplateCall, TimerAction, TimerKind};
use super::{Flow, StepResult};

/// What a timer's step does.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The conversation after it (free-form replies only while the window is open).
    pub result: StepResult,
    /// A template to send, its parameters filled.
    pub template: Option<TemplateCall>,
    /// The state or the hand-off changed: the conversation's timers are
    /// replaced by those of where it now rests.
    pub replace_timers: bool,
    /// For the timer's row: `replied`, `template`, `skipped` or `silent`.
    pub outcome: &'static str,
}

/// Applies a due timer of `kind` doing `action` to the conversation in
/// `state`. `window_open`: the customer wrote in the last 24 hours, so
/// free-form replies may go; otherwise its template goes, if it has one,
/// and its replies are skipped. `ticket` names an outcome a target reaches.
#[allow(clippy::too_many_arguments)]
pub fn fire(
    flow: &Flow,
    state: &str,
    data: &Value,
    handoff: bool,
    kind: TimerKind,
    action: &TimerAction,
    window_open: bool,
    ticket: &str,
) -> Fired {
    let mut out = unchanged(flow, state, data, handoff);
    let mut replace = false;
    let applies = match kind {
        TimerKind::After => !handoff && action.state.as_deref() == Some(out.state.as_str()),
        TimerKind::Expire => !handoff,
        TimerKind::Handoff => handoff,
    };
    if !applies {
        // Moot (a set-up that changed under it): nothing happens.
        return Fired {
            result: out,
            template: None,
            replace_timers: false,
            outcome: "silent",
        };
    }
    if let Some(r) = &action.reply {
        out.replies.push(text(r));
    }
    match kind {
        TimerKind::After => {
            if action.handoff {
                out.handoff = true;
                replace = true;
            }
            if let Some(t) = &action.target {
                if t == &flow.initial {
                    out.data = Value::Object(Map::new());
                }
                enter(flow, t, &mut out, ticket);
                replace = true;
            }
        }
        TimerKind::Expire => {
            out.state = flow.initial.clone();
            out.data = Value::Object(Map::new());
            replace = true;
        }
        TimerKind::Handoff => {
            out.handoff = false;
            replace = true;
        }
    }
    let template = action.template.as_ref().map(|t| TemplateCall {
        name: t.name.clone(),
        language: t.language.clone(),
        parameters: t.parameters.iter().map(|p| fill(p, data)).collect(),
    });
    let (template, outcome) = match (window_open, out.replies.is_empty(), template) {
        (true, false, _) => (None, "replied"),
        (_, _, Some(t)) => {
            out.replies.clear();
            (Some(t), "template")
        }
        (false, false, None) => {
            out.replies.clear();
            (None, "skipped")
        }
        (_, true, None) => (None, "silent"),
    };
    super::handoff_by::settle(&mut out.data, handoff, out.handoff);
    Fired {
        result: out,
        template,
        replace_timers: replace,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const FLOW: &str = r#"
name = "t"
initial = "a"
expire_after = "1h"
expire_reply = "Empecemos de nuevo."
[intents]
go = ["go"]
[states.a]
prompt = "A"
[states.a.on]
go = "b"
[states.b]
prompt = "B {name}"
[states.b.on]
go = "a"
[states.b.after."10m"]
reply = "¿Sigues ahí?"
template = "recordatorio"
parameters = ["{name}"]
[states.b.after."1h"]
target = "a"
"#;

    fn after(flow: &Flow, label: &str) -> TimerAction {
        let plans = flow.resting_timers("b", false);
        plans
            .into_iter()
            .find(|p| p.action.after.as_deref() == Some(label))
            .unwrap()
            .action
    }

    #[test]
    fn a_reminder_replies_inside_the_window_and_sends_its_template_outside() {
        let flow = Flow::parse(FLOW, "t.toml").unwrap();
        let data = json!({"name": "Ana"});
        let a = after(&flow, "10m");
        let open = fire(&flow, "b", &data, false, TimerKind::After, &a, true, "T1");
        assert_eq!(
            (open.outcome, open.result.replies.len(), open.replace_timers),
            ("replied", 1, false)
        );
        let closed = fire(&flow, "b", &data, false, TimerKind::After, &a, false, "T1");
        assert_eq!(closed.outcome, "template");
        assert!(closed.result.replies.is_empty());
        assert_eq!(closed.template.unwrap().parameters, vec!["Ana".to_string()]);
    }

    #[test]
    fn an_escalation_moves_and_expiry_starts_over_and_moot_timers_do_nothing() {
        let flow = Flow::parse(FLOW, "t.toml").unwrap();
        let data = json!({"name": "Ana"});
        let moved = fire(
            &flow,
            "b",
            &data,
            false,
            TimerKind::After,
            &after(&flow, "1h"),
            true,
            "T2",
        );
        assert_eq!((moved.result.state.as_str(), moved.replace_timers), ("a", true));
        let plans = flow.resting_timers("b", false);
        assert_eq!(plans.len(), 3, "two reminders and the expiry");
        let expire = plans.iter().find(|p| p.kind == TimerKind::Expire).unwrap();
        let expired = fire(&flow, "b", &data, false, TimerKind::Expire, &expire.action, false, "T3");
        assert_eq!((expired.result.state.as_str(), expired.outcome), ("a", "skipped"));
        assert_eq!(expired.result.data, json!({}));
        let moot = fire(
            &flow,
            "a",
            &data,
            false,
            TimerKind::After,
            &after(&flow, "10m"),
            true,
            "T4",
        );
        assert_eq!((moot.outcome, moot.replace_timers), ("silent", false));
        assert!(flow.resting_timers("a", false).is_empty(), "no expiry at the start");
    }
}
