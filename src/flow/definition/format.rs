//! The flow file as written: TOML shapes with their defaults, before validation.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// Spans are kept where errors must name a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFlow {
    pub(super) name: String,
    pub(super) initial: Spanned<String>,
    #[serde(default = "default_fallback")]
    pub(super) fallback: String,
    #[serde(default)]
    pub(super) intents: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(super) global: BTreeMap<String, Spanned<FileGlobal>>,
    pub(super) states: BTreeMap<String, Spanned<FileState>>,
    /// An idle conversation starts over after this long (`"24h"`).
    pub(super) expire_after: Option<Spanned<String>>,
    pub(super) expire_reply: Option<String>,
    /// A hand-off returns to the bot when no agent wrote for this long.
    pub(super) handoff_timeout: Option<Spanned<String>>,
    pub(super) handoff_timeout_reply: Option<String>,
    /// The team's backend calls states may run (`[actions.NAME]`).
    #[serde(default)]
    pub(super) actions: BTreeMap<String, Spanned<FileAction>>,
    /// Answer WhatsApp's `request_welcome` with the state's prompt.
    #[serde(default)]
    pub(super) welcome: bool,
}

fn default_fallback() -> String {
    "Perdón, no te entendí.".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileGlobal {
    pub(super) reply: String,
    pub(super) target: Option<String>,
    #[serde(default)]
    pub(super) handoff: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileState {
    pub(super) prompt: String,
    #[serde(default)]
    pub(super) choices: Vec<String>,
    /// The label of the button that opens a list of 4 to 10 choices.
    pub(super) list_button: Option<String>,
    #[serde(default)]
    pub(super) on: BTreeMap<String, String>,
    pub(super) slot: Option<FileSlot>,
    pub(super) next: Option<String>,
    pub(super) outcome: Option<String>,
    /// Duration (`"10m"`) → what happens if the customer has not answered by then.
    #[serde(default)]
    pub(super) after: BTreeMap<String, Spanned<FileAfter>>,
    /// An action run on entering the state (or, in a state with a slot,
    /// when the slot is filled).
    pub(super) action: Option<String>,
    /// Where a successful action leads (default: stay, or the slot's `next`).
    pub(super) on_success: Option<String>,
    /// Where a failed action leads (required with `action`).
    pub(super) on_failure: Option<String>,
}

/// `[actions.NAME]`: one call to the team's backend.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAction {
    /// `{slot}` placeholders are filled (percent-encoded).
    pub(super) url: super::super::action::Text,
    #[serde(default = "default_method")]
    pub(super) method: String,
    /// Header name → value, plain or `{ secret = "NAME" }` from `[integrations.secrets]`.
    #[serde(default)]
    pub(super) headers: BTreeMap<String, super::super::action::Text>,
    #[serde(default = "default_action_timeout")]
    pub(super) timeout_ms: u64,
    /// Further attempts after a failure that may pass (timeout, 5xx, 408, 429, no connection).
    #[serde(default = "one_u32")]
    pub(super) retries: u32,
    /// Calls of this action in flight at once (the bulkhead).
    #[serde(default = "default_concurrency")]
    pub(super) concurrency: usize,
}

fn default_method() -> String {
    "POST".into()
}
fn default_action_timeout() -> u64 {
    5_000
}
fn one_u32() -> u32 {
    1
}
fn default_concurrency() -> usize {
    16
}

/// A reminder or escalation of a state.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAfter {
    pub(super) reply: Option<String>,
    pub(super) target: Option<String>,
    #[serde(default)]
    pub(super) handoff: bool,
    /// A configured template (`whatsapp.templates`): sent when the 24-hour
    /// window has closed (or always, without a `reply`).
    pub(super) template: Option<String>,
    /// The template's language, when it is configured in several.
    pub(super) language: Option<String>,
    /// The template's body parameters; `{slot}` placeholders are filled.
    #[serde(default)]
    pub(super) parameters: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSlot {
    pub(super) name: String,
    #[serde(default)]
    pub(super) kind: super::SlotKind,
    pub(super) pattern: Option<String>,
    #[serde(default = "one")]
    pub(super) min_len: usize,
    #[serde(default = "default_max_len")]
    pub(super) max_len: usize,
    #[serde(default = "default_invalid")]
    pub(super) invalid: String,
    #[serde(default = "default_attempts")]
    pub(super) max_attempts: u32,
    #[serde(default = "default_exhausted")]
    pub(super) exhausted_reply: String,
    pub(super) exhausted_target: Option<String>,
    #[serde(default)]
    pub(super) exhausted_handoff: bool,
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
