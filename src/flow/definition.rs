//! Flow files: the TOML that declares a conversation (`format`), its
//! validation (`validate`), and the validated flow the engine runs.

mod actions;
mod format;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;

use format::FileFlow;

use super::time::{AfterRule, Timing};

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
    /// Expiry and hand-off timeout (see [`super::time`]).
    pub timing: Timing,
    /// The team's backend calls its states run (see [`super::action`]).
    pub actions: BTreeMap<String, super::action::Action>,
    /// Whether a `request_welcome` (a user opening the chat for the first
    /// time) is answered with the conversation's state's prompt — the
    /// initial state's greeting and choices, for a new chat.
    pub welcome: bool,
}

/// WhatsApp's limits on interactive messages: a flow that passes them is
/// refused when it is loaded. Only a prompt that `{slot}` values make longer
/// than the body limit is cut at send time.
pub mod limits {
    /// Reply buttons in one message.
    pub const BUTTONS: usize = 3;
    /// Rows in one list message.
    pub const LIST_ROWS: usize = 10;
    /// Characters of a reply button's title.
    pub const BUTTON_TITLE: usize = 20;
    /// Characters of a list row's title.
    pub const LIST_ROW_TITLE: usize = 24;
    /// Characters of the button that opens a list.
    pub const LIST_BUTTON: usize = 20;
    /// Characters of an interactive message's body.
    pub const INTERACTIVE_BODY: usize = 1024;
    /// The list button's label when the state names none.
    pub const DEFAULT_LIST_BUTTON: &str = "Ver opciones";
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
    /// Choices offered: up to 3 go as reply buttons, 4 to 10 as a list.
    pub choices: Vec<String>,
    /// The label of the button that opens the list (4 to 10 choices).
    pub list_button: String,
    /// Intent → next state.
    pub on: BTreeMap<String, String>,
    pub slot: Option<Slot>,
    /// Where a filled slot leads.
    pub next: Option<String>,
    /// Terminal states record this outcome, then the conversation restarts.
    pub outcome: Option<String>,
    /// Reminders and escalations while the conversation rests here, shortest first.
    pub after: Vec<AfterRule>,
    /// The action run on entering (or, with a slot, once it is filled).
    pub action: Option<String>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
}

impl State {
    pub fn is_terminal(&self) -> bool {
        self.outcome.is_some()
    }
}

/// What a slot asks for: typed text, or a typed input that only a
/// message of its kind carries (see [`crate::whatsapp::kinds::typed_input`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    /// Text, extracted by the model and checked by pattern and length.
    #[default]
    Text,
    /// An image, audio, video, document or sticker: its id, mime type,
    /// sha256 and caption.
    Media,
    /// A shared location: latitude, longitude, name, address.
    Location,
    /// A shared contact card: its name and phones.
    Contacts,
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub kind: SlotKind,
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
        let (states, timing, actions, problems) = validate::validate(&raw, text);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(validate::assemble(raw, states, timing, actions))
    }

    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.get(name)
    }
}
