//! Time in a flow: a state's reminders and escalations (`[states.X.after]`),
//! the expiry of an idle conversation (`expire_after`) and the hand-off
//! timeout (`handoff_timeout`) — and which timers a conversation resting in
//! a state has. Pure: the clock is the database's, when the timers are written.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::collections::BTreeMap;

use super::{Flow, State};

/// What sets a timer, as stored in its row's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimerKind {
    /// A state's reminder or escalation.
    After,
    /// An idle conversation starts over.
    Expire,
    /// No agent wrote for `handoff_timeout`: back to the bot.
    Handoff,
}

impl TimerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimerKind::After => "after",
            TimerKind::Expire => "expire",
            TimerKind::Handoff => "handoff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "after" => Some(TimerKind::After),
            "expire" => Some(TimerKind::Expire),
            "handoff" => Some(TimerKind::Handoff),
            _ => None,
        }
    }
}

/// A template a flow sends: its name and body parameters (`{slot}`
/// placeholders filled when it is sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateCall {
    pub name: String,
    /// Needed when the template is configured in several languages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default)]
    pub parameters: Vec<String>,
}

/// What a timer does when it fires, resolved from the flow when it is set
/// (stored in its row, so a changed flow cannot make it mean something else).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerAction {
    /// The state it was set in and its duration key (`"10m"`), for `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub handoff: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateCall>,
}

impl TimerAction {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The stored action; an unreadable one does nothing.
    pub fn from_json(v: &Value) -> Self {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }
}

/// One rule of `[states.X.after]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AfterRule {
    /// As written (`"10m"`): names the rule in errors and in the timer row.
    pub label: String,
    pub delay: Duration,
    pub reply: Option<String>,
    pub target: Option<String>,
    pub handoff: bool,
    pub template: Option<TemplateCall>,
}

/// The flow-level timers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timing {
    pub expire_after: Option<Duration>,
    pub expire_reply: Option<String>,
    pub handoff_timeout: Option<Duration>,
    pub handoff_timeout_reply: Option<String>,
}

/// A timer to set: its kind, its delay from the commit, what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerPlan {
    pub kind: TimerKind,
    pub delay: Duration,
    pub action: TimerAction,
}

/// The longest timer: a year (a due time past it is a typo, and would
/// overflow the database's interval arithmetic).
const MAX_SECS: u64 = 365 * 86_400;

/// Parses `"90s"`, `"10m"`, `"2h"`, `"1d"` (a positive whole number and a
/// unit), up to a year.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("duration `{s}`: a whole number and a unit (s, m, h, d), like \"90s\" or \"10m\""))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3_600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("duration `{s}`: the unit is s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("duration `{s}` must be positive"));
    }
    if secs > MAX_SECS {
        return Err(format!("duration `{s}`: at most 365d"));
    }
    Ok(Duration::from_secs(secs))
}

impl Flow {
    /// The timers of a conversation resting in `state`: in a hand-off only
    /// the hand-off timeout; otherwise the state's reminders and, away from
    /// the initial state, the expiry.
    pub fn resting_timers(&self, state: &str, handoff: bool) -> Vec<TimerPlan> {
        if handoff {
            return self
                .timing
                .handoff_timeout
                .map(|delay| TimerPlan {
                    kind: TimerKind::Handoff,
                    delay,
                    action: TimerAction {
                        reply: self.timing.handoff_timeout_reply.clone(),
                        ..Default::default()
                    },
                })
                .into_iter()
                .collect();
        }
        let mut plans: Vec<TimerPlan> = self
            .state(state)
            .map(|s| {
                s.after
                    .iter()
                    .map(|r| TimerPlan {
                        kind: TimerKind::After,
                        delay: r.delay,
                        action: TimerAction {
                            state: Some(s.name.clone()),
                            after: Some(r.label.clone()),
                            reply: r.reply.clone(),
                            target: r.target.clone(),
                            handoff: r.handoff,
                            template: r.template.clone(),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(delay) = self.timing.expire_after.filter(|_| state != self.initial) {
            plans.push(TimerPlan {
                kind: TimerKind::Expire,
                delay,
                action: TimerAction {
                    reply: self.timing.expire_reply.clone(),
                    ..Default::default()
                },
            });
        }
        plans
    }

    /// The templates the flow names (to check against `whatsapp.templates`),
    /// with the state and rule that names each.
    pub fn templates_named(&self) -> Vec<(String, &TemplateCall)> {
        self.states
            .values()
            .flat_map(|s| {
                s.after.iter().filter_map(move |r| {
                    r.template
                        .as_ref()
                        .map(|t| (format!("state `{}`, after \"{}\"", s.name, r.label), t))
                })
            })
            .collect()
    }
}

/// States from which timers alone loop forever, the customer silent (a
/// reminder's target leading back to it): each turn would send a message (a
/// paid template, outside the window). One problem per loop, naming its
/// states. (A hand-off cannot loop: back from its timeout, the state's
/// reminders are not set again until the customer writes.)
pub(crate) fn timer_loops(states: &BTreeMap<String, State>) -> Vec<String> {
    let next = |s: &State| -> Vec<String> { s.after.iter().filter_map(|r| r.target.clone()).collect() };
    let mut problems = Vec::new();
    let mut reported: std::collections::BTreeSet<String> = Default::default();
    for start in states.keys() {
        // Depth-first along timer edges from `start`, looking for `start`.
        let mut stack = vec![vec![start.clone()]];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(path) = stack.pop() {
            let Some(last) = path.last().and_then(|l| states.get(l)) else {
                continue;
            };
            for t in next(last) {
                if &t == start {
                    if path.iter().all(|p| reported.insert(p.clone())) {
                        problems.push(format!(
                            "timers alone loop through {} with nobody writing: give the loop a way to stop",
                            path.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(" → ")
                        ));
                    }
                } else if seen.insert(t.clone()) {
                    let mut longer = path.clone();
                    longer.push(t);
                    stack.push(longer);
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "",
            "10",
            "m",
            "1.5h",
            "0s",
            "-1m",
            "10 minutes",
            "366d",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
