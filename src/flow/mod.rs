//! Conversation flows: declared in TOML ([`definition`]), run by a pure
//! state machine ([`machine`]).

pub mod action;
pub mod definition;
pub mod fire;
mod handoff_by;
pub mod machine;
pub mod per_number;
pub mod time;

pub use action::{after_action, Action, Answer};
pub use definition::{normalize_text, Flow, FlowError, GlobalIntent, Slot, SlotKind, State};
pub use machine::{step, welcome, Needs, Outcome, PendingAction, Reply, StepResult, Understanding, HANDOFF_BY_KEY};
pub use per_number::Flows;
pub use time::{TemplateCall, TimerAction, TimerKind, TimerPlan};
