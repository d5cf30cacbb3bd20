//! Flow files: the TOML that declares a conversation, and its validation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

/// A validated conversation flow.
#[derive(Debug, Clone)]
pub struct Flow {
    pub name: String,
    pub initial: String,
    pub fallback: String,
    /// Intent name → keywords (normalized: lowercase, no accents).
    pub intents: BTreeMap<String, Vec<String>>,
    /// Global intents, recognized in every state.
    pub global: BTreeMap<String, GlobalIntent>,
    pub states: BTreeMap<String, State>,
}

#[derive(Debug, Clone)]
pub struct GlobalIntent {
    pub reply: String,
    /// State to go to; `None` stays (and re-prompts).
    pub target: Option<String>,
    /// Hands the conversation to a human agent.
    pub handoff: bool,
}

#[derive(Debug, Clone)]
pub struct State {
    pub name: String,
    pub prompt: String,
    /// Choices offered (interactive reply buttons where the channel has them).
    pub choices: Vec<String>,
    /// Intent → next state.
    pub on: BTreeMap<String, String>,
    pub slot: Option<Slot>,
    /// Where a filled slot leads.
    pub next: Option<String>,
    /// Terminal states record this outcome, then the conversation restarts.
    pub outcome: Option<String>,
}

impl State {
    pub fn is_terminal(&self) -> bool {
        self.outcome.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub pattern: Option<Regex>,
    pub min_len: usize,
    pub max_len: usize,
    /// Reply to an invalid value (followed by the prompt again).
    pub invalid: String,
    /// Invalid answers allowed before giving up.
    pub max_attempts: u32,
    pub exhausted_reply: String,
    pub exhausted_target: Option<String>,
    pub exhausted_handoff: bool,
}

impl Slot {
    /// Whether `value` is acceptable: length in bounds (in characters) and,
    /// if a pattern is set, matching it.
    pub fn accepts(&self, value: &str) -> bool {
        let n = value.chars().count();
        n >= self.min_len && n <= self.max_len && self.pattern.as_ref().is_none_or(|p| p.is_match(value))
    }
}

/// A flow file that cannot be used. The message names the state (and line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow {file}: {}", .problems.join("; "))]
pub struct FlowError {
    pub file: String,
    pub problems: Vec<String>,
}

// ---- the file format ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFlow {
    name: String,
    initial: Spanned<String>,
    #[serde(default = "default_fallback")]
    fallback: String,
    #[serde(default)]
    intents: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    global: BTreeMap<String, Spanned<FileGlobal>>,
    states: BTreeMap<String, Spanned<FileState>>,
}

fn default_fallback() -> String {
    "Perdón, no te entendí.".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGlobal {
    reply: String,
    target: Option<String>,
    #[serde(default)]
    handoff: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileState {
    prompt: String,
    #[serde(default)]
    choices: Vec<String>,
    #[serde(default)]
    on: BTreeMap<String, String>,
    slot: Option<FileSlot>,
    next: Option<String>,
    outcome: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSlot {
    name: String,
    pattern: Option<String>,
    #[serde(default = "one")]
    min_len: usize,
    #[serde(default = "default_max_len")]
    max_len: usize,
    #[serde(default = "default_invalid")]
    invalid: String,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_exhausted")]
    exhausted_reply: String,
    exhausted_target: Option<String>,
    #[serde(default)]
    exhausted_handoff: bool,
}

fn one() -> usize {
    1
}
fn default_max_len() -> usize {
    // WhatsApp's text limit.
    4096
}
fn default_invalid() -> String {
    "Ese dato no es válido.".into()
}
fn default_attempts() -> u32 {
    3
}
fn default_exhausted() -> String {
    "No pude validar el dato. Empecemos de nuevo.".into()
}

/// Lowercases and strips Spanish accents, for keyword matching.
pub fn normalize_text(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'á' | 'à' | 'ä' | 'â' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ñ' => 'n',
            c => c,
        })
        .collect()
}

impl Flow {
    /// Reads and validates a flow file.
    pub fn load(path: &Path) -> Result<Flow, FlowError> {
        let text = std::fs::read_to_string(path).map_err(|e| FlowError {
            file: path.display().to_string(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Flow::parse(&text, &path.display().to_string())
    }

    /// Parses and validates flow text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Flow, FlowError> {
        let fail = |problems: Vec<String>| FlowError {
            file: file.to_string(),
            problems,
        };
        let raw: FileFlow = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
        let line = |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
        let mut problems = Vec::new();

        if !raw.states.contains_key(raw.initial.get_ref()) {
            problems.push(format!(
                "initial state `{}` (line {}) is not declared",
                raw.initial.get_ref(),
                line(raw.initial.span())
            ));
        }
        let known = |s: &str| raw.states.contains_key(s);
        let intents: BTreeSet<&str> = raw.intents.keys().map(String::as_str).collect();
        for (name, g) in &raw.global {
            let at = line(g.span());
            if let Some(t) = &g.get_ref().target {
                if !known(t) {
                    problems.push(format!(
                        "global intent `{name}` (line {at}): unknown target state `{t}`"
                    ));
                }
            }
            if !intents.contains(name.as_str()) {
                problems.push(format!(
                    "global intent `{name}` (line {at}): no keywords under [intents]"
                ));
            }
        }
        let mut states = BTreeMap::new();
        for (name, spanned) in &raw.states {
            let at = line(spanned.span());
            let s = spanned.get_ref();
            let mut bad = |why: String| problems.push(format!("state `{name}` (line {at}): {why}"));
            for (intent, target) in &s.on {
                if !known(target) {
                    bad(format!("transition `{intent}` goes to unknown state `{target}`"));
                }
                if !intents.contains(intent.as_str()) {
                    bad(format!(
                        "transition on intent `{intent}`, which has no keywords under [intents]"
                    ));
                }
            }
            if let Some(n) = &s.next {
                if !known(n) {
                    bad(format!("`next` goes to unknown state `{n}`"));
                }
            }
            if s.slot.is_some() && s.next.is_none() {
                bad("a state with a slot needs `next`".into());
            }
            if s.slot.is_none() && s.next.is_some() {
                bad("`next` without a slot: use `on` transitions".into());
            }
            if s.outcome.is_some() && (s.slot.is_some() || !s.on.is_empty()) {
                bad("a terminal state (with `outcome`) has no slot and no transitions".into());
            }
            if s.outcome.is_none() && s.slot.is_none() && s.on.is_empty() {
                bad("a dead end: no transitions, no slot, no outcome".into());
            }
            let slot = match &s.slot {
                None => None,
                Some(fs) => {
                    let pattern = match &fs.pattern {
                        None => None,
                        Some(p) => match Regex::new(p) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                bad(format!("slot `{}`: invalid pattern: {e}", fs.name));
                                None
                            }
                        },
                    };
                    if fs.min_len > fs.max_len {
                        bad(format!("slot `{}`: min_len exceeds max_len", fs.name));
                    }
                    if let Some(t) = &fs.exhausted_target {
                        if !known(t) {
                            bad(format!("slot `{}`: unknown exhausted_target `{t}`", fs.name));
                        }
                    }
                    Some(Slot {
                        name: fs.name.clone(),
                        pattern,
                        min_len: fs.min_len,
                        max_len: fs.max_len,
                        invalid: fs.invalid.clone(),
                        max_attempts: fs.max_attempts.max(1),
                        exhausted_reply: fs.exhausted_reply.clone(),
                        exhausted_target: fs.exhausted_target.clone(),
                        exhausted_handoff: fs.exhausted_handoff,
                    })
                }
            };
            states.insert(
                name.clone(),
                State {
                    name: name.clone(),
                    prompt: s.prompt.clone(),
                    choices: s.choices.clone(),
                    on: s.on.clone(),
                    slot,
                    next: s.next.clone(),
                    outcome: s.outcome.clone(),
                },
            );
        }
        for (name, kws) in &raw.intents {
            if kws.iter().all(|k| k.trim().is_empty()) {
                problems.push(format!("intent `{name}` has no keywords"));
            }
        }
        if problems.is_empty() {
            // Reachability from the initial state, global targets included.
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
                }
            }
            for (name, spanned) in &raw.states {
                if !seen.contains(name) {
                    problems.push(format!(
                        "state `{name}` (line {}) is unreachable from `{}`",
                        line(spanned.span()),
                        raw.initial.get_ref()
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(Flow {
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
        })
    }

    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.get(name)
    }
}
