//! Validation of a flow's actions: each declaration sound, each state's
//! `action`, `on_success` and `on_failure` pointing somewhere real, and no
//! state entered by a path that would call the backend without a customer
//! message behind it (timers) or forever (a loop of actions).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::format::{FileAction, FileFlow};
use crate::flow::action::{Action, Text};

/// The most an action's timeout may be: a step holds its conversation
/// while the backend answers.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// The declared actions, validated; problems name the action and its line.
pub(super) fn declared(
    raw: &FileFlow,
    line: &dyn Fn(Range<usize>) -> usize,
) -> (BTreeMap<String, Action>, Vec<String>) {
    let mut problems = Vec::new();
    let mut actions = BTreeMap::new();
    for (name, spanned) in &raw.actions {
        let at = line(spanned.span());
        let mut bad = |w: String| problems.push(format!("action `{name}` (line {at}): {w}"));
        let a: &FileAction = spanned.get_ref();
        let method = match a.method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => reqwest::Method::from_bytes(m.as_bytes()).ok(),
            other => {
                bad(format!("method `{other}`: use GET, POST, PUT, PATCH or DELETE"));
                None
            }
        };
        if let Text::Plain(url) = &a.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bad(format!("url `{url}` is not http(s)"));
            }
        }
        let timeout = Duration::from_millis(a.timeout_ms);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            bad(format!("timeout_ms is 1 to {}", MAX_TIMEOUT.as_millis()));
        }
        if a.retries > 5 {
            bad("retries is at most 5".into());
        }
        if a.concurrency == 0 {
            bad("concurrency is at least 1".into());
        }
        for h in a.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                bad(format!("`{h}` is not a header name"));
            }
        }
        actions.insert(
            name.clone(),
            Action {
                name: name.clone(),
                url: a.url.clone(),
                method: method.unwrap_or(reqwest::Method::POST),
                headers: a.headers.clone(),
                timeout,
                retries: a.retries,
                concurrency: a.concurrency.max(1),
            },
        );
    }
    (actions, problems)
}

/// A state's action keys; `why` collects its problems.
pub(super) fn state_problems(raw: &FileFlow, name: &str, why: &mut Vec<String>) {
    let s = raw.states[name].get_ref();
    let known = |t: &str| raw.states.contains_key(t);
    match &s.action {
        Some(a) => {
            if !raw.actions.contains_key(a) {
                why.push(format!("unknown action `{a}` (declare it under [actions.{a}])"));
            }
            if s.on_failure.is_none() {
                why.push(format!(
                    "action `{a}` needs `on_failure`: where the flow goes when the backend fails"
                ));
            }
            if name == raw.initial.get_ref() {
                why.push("the initial state runs no action (conversations start and restart there)".into());
            }
            if s.on_success.is_some() && s.outcome.is_some() {
                why.push("a terminal state ends the conversation: no `on_success`".into());
            }
        }
        None if s.on_success.is_some() || s.on_failure.is_some() => {
            why.push("`on_success` or `on_failure` without an `action`".into());
        }
        None => {}
    }
    for t in [&s.on_success, &s.on_failure].into_iter().flatten() {
        if !known(t) {
            why.push(format!("action target goes to unknown state `{t}`"));
        }
    }
    for (label, rule) in &s.after {
        if let Some(t) = rule.get_ref().target.as_deref().filter(|t| runs_on_entering(raw, t)) {
            why.push(format!(
                "after \"{label}\": a timer may not enter `{t}`, which calls the backend on entering \
                 (actions run for a customer's message)"
            ));
        }
    }
}

/// Whether entering `state` calls its action (one without a slot).
fn runs_on_entering(raw: &FileFlow, state: &str) -> bool {
    raw.states
        .get(state)
        .map(Spanned::get_ref)
        .is_some_and(|s| s.action.is_some() && s.slot.is_none())
}

/// Actions that lead, whatever they answer, to actions forever: a loop of
/// states entered one from the other without a customer message between.
pub(super) fn loops(raw: &FileFlow) -> Vec<String> {
    let edges = |s: &str| -> Vec<String> {
        let st = raw.states[s].get_ref();
        [&st.on_success, &st.on_failure]
            .into_iter()
            .flatten()
            .filter(|t| runs_on_entering(raw, t))
            .cloned()
            .collect()
    };
    let mut problems = Vec::new();
    let mut done = BTreeSet::new();
    for start in raw.states.keys().filter(|s| runs_on_entering(raw, s)) {
        let mut path = vec![start.clone()];
        if let Some(cycle) = find_cycle(&edges, &mut path, &mut done) {
            problems.push(format!("actions call each other in a loop: {}", cycle.join(" → ")));
        }
    }
    problems
}

fn find_cycle(
    edges: &dyn Fn(&str) -> Vec<String>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let last = path.last()?.clone();
    if done.contains(&last) {
        return None;
    }
    for next in edges(&last) {
        if let Some(i) = path.iter().position(|p| p == &next) {
            let mut cycle = path[i..].to_vec();
            cycle.push(next);
            return Some(cycle);
        }
        path.push(next);
        let found = find_cycle(edges, path, done);
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    done.insert(last);
    None
}
