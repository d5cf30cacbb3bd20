//! Validation of a parsed flow file: every problem found in one pass, each
//! naming its state and line, then the validated `Flow`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use regex::Regex;

use toml::Spanned;

use super::format::{FileAfter, FileFlow, FileSlot, FileState};
use super::{limits, normalize_text, Flow, GlobalIntent, Slot, SlotKind, State};
use crate::flow::action::Action;
use crate::flow::time::{parse_duration, AfterRule, TemplateCall, Timing};

/// Runs every check in file order, so one error lists every problem; reachability
/// only on an otherwise sound flow, where a bad target cannot fake unreachable states.
pub(super) fn validate(raw: &FileFlow, text: &str) -> Validated {
    let mut check = Check {
        raw,
        text,
        problems: Vec::new(),
    };
    check.initial_declared();
    check.globals();
    let timing = check.timing();
    let (actions, bad_actions) = super::actions::declared(raw, &|span| check.line(span));
    check.problems.extend(bad_actions);
    let states = check.states();
    check.problems.extend(crate::flow::time::timer_loops(&states));
    check.problems.extend(super::actions::loops(raw));
    check.intents_have_keywords();
    if check.problems.is_empty() {
        check.all_reachable(&states);
    }
    (states, timing, actions, check.problems)
}

/// The states, timing and actions built, and every problem found.
type Validated = (BTreeMap<String, State>, Timing, BTreeMap<String, Action>, Vec<String>);

/// The file under validation and the problems found so far.
struct Check<'a> {
    raw: &'a FileFlow,
    text: &'a str,
    problems: Vec<String>,
}

impl Check<'_> {
    /// The 1-based line a span starts on: errors name lines, not byte offsets.
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].matches('\n').count() + 1
    }

    fn known(&self, state: &str) -> bool {
        self.raw.states.contains_key(state)
    }

    /// Whether `intent` is declared under `[intents]`: the model cannot detect it otherwise.
    fn has_keywords(&self, intent: &str) -> bool {
        self.raw.intents.contains_key(intent)
    }

    /// The conversation starts in `initial`, so it must exist.
    fn initial_declared(&mut self) {
        let initial = &self.raw.initial;
        if !self.known(initial.get_ref()) {
            let at = self.line(initial.span());
            self.problems.push(format!(
                "initial state `{}` (line {at}) is not declared",
                initial.get_ref()
            ));
        }
    }

    /// Global intents apply in every state: each needs keywords and a real target.
    fn globals(&mut self) {
        for (name, g) in &self.raw.global {
            let at = self.line(g.span());
            if let Some(t) = &g.get_ref().target {
                if !self.known(t) {
                    self.problems.push(format!(
                        "global intent `{name}` (line {at}): unknown target state `{t}`"
                    ));
                }
            }
            if !self.has_keywords(name) {
                self.problems.push(format!(
                    "global intent `{name}` (line {at}): no keywords under [intents]"
                ));
            }
        }
    }

    /// A flow-level duration, checked; a problem names the key and its line.
    fn duration(&mut self, key: &str, value: Option<&Spanned<String>>) -> Option<std::time::Duration> {
        let v = value?;
        match parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                let at = self.line(v.span());
                self.problems.push(format!("`{key}` (line {at}): {e}"));
                None
            }
        }
    }

    /// `expire_after` and `handoff_timeout`, with their replies.
    fn timing(&mut self) -> Timing {
        Timing {
            expire_after: self.duration("expire_after", self.raw.expire_after.as_ref()),
            expire_reply: self.raw.expire_reply.clone(),
            handoff_timeout: self.duration("handoff_timeout", self.raw.handoff_timeout.as_ref()),
            handoff_timeout_reply: self.raw.handoff_timeout_reply.clone(),
        }
    }

    /// A state's `[states.X.after]` rules: durations parse, targets exist,
    /// each does something. Shortest first.
    fn after(&self, s: &FileState, why: &mut Vec<String>) -> Vec<AfterRule> {
        let mut rules = Vec::new();
        for (label, rule) in &s.after {
            let at = self.line(rule.span());
            let r: &FileAfter = rule.get_ref();
            let mut bad = |w: String| why.push(format!("after \"{label}\" (line {at}): {w}"));
            let delay = match parse_duration(label) {
                Ok(d) => d,
                Err(e) => {
                    bad(e);
                    continue;
                }
            };
            if let Some(t) = r.target.as_deref().filter(|t| !self.known(t)) {
                bad(format!("unknown target state `{t}`"));
            }
            if r.reply.is_none() && r.target.is_none() && !r.handoff && r.template.is_none() {
                bad("does nothing: give a reply, a target, handoff or a template".into());
            }
            if r.template.is_none() && (!r.parameters.is_empty() || r.language.is_some()) {
                bad("`parameters` or `language` without a `template`".into());
            }
            if r.handoff && r.target.is_some() {
                bad("a hand-off stays in the state: no `target` with `handoff`".into());
            }
            rules.push(AfterRule {
                label: label.clone(),
                delay,
                reply: r.reply.clone(),
                target: r.target.clone(),
                handoff: r.handoff,
                template: r.template.clone().map(|name| TemplateCall {
                    name,
                    language: r.language.clone(),
                    parameters: r.parameters.clone(),
                }),
            });
        }
        rules.sort_by_key(|r| r.delay);
        rules
    }

    /// Checks and builds every state; a state's problems name it and its line.
    fn states(&mut self) -> BTreeMap<String, State> {
        let mut states = BTreeMap::new();
        for (name, spanned) in &self.raw.states {
            let at = self.line(spanned.span());
            let mut why = Vec::new();
            let state = self.state(name, spanned.get_ref(), &mut why);
            super::actions::state_problems(self.raw, name, &mut why);
            self.problems
                .extend(why.into_iter().map(|w| format!("state `{name}` (line {at}): {w}")));
            states.insert(name.clone(), state);
        }
        states
    }

    /// One state: its transitions, its shape, then its slot.
    fn state(&self, name: &str, s: &FileState, why: &mut Vec<String>) -> State {
        self.transitions(s, why);
        shape(s, why);
        interactive(s, why);
        State {
            name: name.to_string(),
            prompt: s.prompt.clone(),
            choices: s.choices.clone(),
            list_button: s
                .list_button
                .clone()
                .unwrap_or_else(|| limits::DEFAULT_LIST_BUTTON.into()),
            on: s.on.clone(),
            slot: s.slot.as_ref().map(|fs| self.slot(fs, why)),
            next: s.next.clone(),
            outcome: s.outcome.clone(),
            after: self.after(s, why),
            action: s.action.clone(),
            on_success: s.on_success.clone(),
            on_failure: s.on_failure.clone(),
        }
    }

    /// Every way out of a state must lead to a declared state, on a detectable intent.
    fn transitions(&self, s: &FileState, why: &mut Vec<String>) {
        for (intent, target) in &s.on {
            if !self.known(target) {
                why.push(format!("transition `{intent}` goes to unknown state `{target}`"));
            }
            if !self.has_keywords(intent) {
                why.push(format!(
                    "transition on intent `{intent}`, which has no keywords under [intents]"
                ));
            }
        }
        if let Some(n) = &s.next {
            if !self.known(n) {
                why.push(format!("`next` goes to unknown state `{n}`"));
            }
        }
    }

    /// A slot's pattern must compile, its bounds make sense, its fallback exist.
    fn slot(&self, fs: &FileSlot, why: &mut Vec<String>) -> Slot {
        let pattern = match &fs.pattern {
            None => None,
            Some(p) => match Regex::new(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    why.push(format!("slot `{}`: invalid pattern: {e}", fs.name));
                    None
                }
            },
        };
        if fs.min_len > fs.max_len {
            why.push(format!("slot `{}`: min_len exceeds max_len", fs.name));
        }
        if fs.kind != SlotKind::Text && fs.pattern.is_some() {
            why.push(format!("slot `{}`: a pattern applies to text slots only", fs.name));
        }
        if let Some(t) = &fs.exhausted_target {
            if !self.known(t) {
                why.push(format!("slot `{}`: unknown exhausted_target `{t}`", fs.name));
            }
        }
        Slot {
            name: fs.name.clone(),
            kind: fs.kind,
            pattern,
            min_len: fs.min_len,
            max_len: fs.max_len,
            invalid: fs.invalid.clone(),
            max_attempts: fs.max_attempts.max(1),
            exhausted_reply: fs.exhausted_reply.clone(),
            exhausted_target: fs.exhausted_target.clone(),
            exhausted_handoff: fs.exhausted_handoff,
        }
    }

    /// An intent whose keywords are all blank could never be recognized.
    fn intents_have_keywords(&mut self) {
        for (name, kws) in &self.raw.intents {
            if kws.iter().all(|k| k.trim().is_empty()) {
                self.problems.push(format!("intent `{name}` has no keywords"));
            }
        }
    }

    /// Every state must be reachable (global targets included): an unreachable one is a typo elsewhere.
    fn all_reachable(&mut self, states: &BTreeMap<String, State>) {
        let seen = reachable(self.raw, states);
        for (name, spanned) in &self.raw.states {
            if !seen.contains(name) {
                let at = self.line(spanned.span());
                self.problems.push(format!(
                    "state `{name}` (line {at}) is unreachable from `{}`",
                    self.raw.initial.get_ref()
                ));
            }
        }
    }
}

/// The shapes a state may have: a way on (slot, transitions) or an end, `next` only with a slot.
fn shape(s: &FileState, why: &mut Vec<String>) {
    if s.slot.is_some() && s.next.is_none() {
        why.push("a state with a slot needs `next`".into());
    }
    if s.slot.is_none() && s.next.is_some() {
        why.push("`next` without a slot: use `on` transitions".into());
    }
    if s.outcome.is_some() && (s.slot.is_some() || !s.on.is_empty()) {
        why.push("a terminal state (with `outcome`) has no slot and no transitions".into());
    }
    if s.outcome.is_none() && s.slot.is_none() && s.on.is_empty() && s.on_success.is_none() {
        why.push("a dead end: no transitions, no slot, no outcome".into());
    }
}

/// Choices must fit WhatsApp's interactive messages: up to 3 reply buttons
/// (titles ≤ 20 characters) or a list of 4 to 10 rows (titles ≤ 24, button
/// label ≤ 20), with a body of at most 1,024 characters.
fn interactive(s: &FileState, why: &mut Vec<String>) {
    let n = s.choices.len();
    let chars = |t: &str| t.chars().count();
    if n > limits::LIST_ROWS {
        why.push(format!("{n} choices: WhatsApp shows at most {}", limits::LIST_ROWS));
    }
    let (title_max, what) = if n <= limits::BUTTONS {
        (limits::BUTTON_TITLE, "a reply button's title")
    } else {
        (limits::LIST_ROW_TITLE, "a list row's title")
    };
    for c in s.choices.iter().filter(|c| chars(c) > title_max) {
        why.push(format!("choice `{c}`: {what} has at most {title_max} characters"));
    }
    if let Some(b) = s.list_button.as_deref() {
        if n <= limits::BUTTONS {
            why.push("`list_button` without a list (4 to 10 choices)".into());
        } else if chars(b) > limits::LIST_BUTTON || b.trim().is_empty() {
            why.push(format!("`list_button` has 1 to {} characters", limits::LIST_BUTTON));
        }
    }
    if n > 0 && chars(&s.prompt) > limits::INTERACTIVE_BODY {
        why.push(format!(
            "a prompt with choices has at most {} characters",
            limits::INTERACTIVE_BODY
        ));
    }
}

/// States reached from the initial state and global targets, over every kind of edge.
fn reachable(raw: &FileFlow, states: &BTreeMap<String, State>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<&str> = VecDeque::from([raw.initial.get_ref().as_str()]);
    queue.extend(raw.global.values().filter_map(|g| g.get_ref().target.as_deref()));
    while let Some(s) = queue.pop_front() {
        if !seen.insert(s.to_string()) {
            continue;
        }
        if let Some(st) = states.get(s) {
            queue.extend(st.on.values().map(String::as_str));
            queue.extend(st.next.as_deref());
            queue.extend(st.slot.as_ref().and_then(|sl| sl.exhausted_target.as_deref()));
            queue.extend(st.after.iter().filter_map(|r| r.target.as_deref()));
            queue.extend(st.on_success.as_deref());
            queue.extend(st.on_failure.as_deref());
        }
    }
    seen
}

/// The validated flow, with keywords normalized once here rather than per message.
pub(super) fn assemble(
    raw: FileFlow,
    states: BTreeMap<String, State>,
    timing: Timing,
    actions: BTreeMap<String, Action>,
) -> Flow {
    Flow {
        name: raw.name,
        initial: raw.initial.into_inner(),
        fallback: raw.fallback,
        intents: raw
            .intents
            .into_iter()
            .map(|(k, v)| (k, v.iter().map(|w| normalize_text(w.trim())).collect()))
            .collect(),
        global: raw
            .global
            .into_iter()
            .map(|(k, g)| {
                let g = g.into_inner();
                (
                    k,
                    GlobalIntent {
                        reply: g.reply,
                        target: g.target,
                        handoff: g.handoff,
                    },
                )
            })
            .collect(),
        states,
        timing,
        actions,
        welcome: raw.welcome,
    }
}
