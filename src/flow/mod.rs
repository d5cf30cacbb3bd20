//! Conversation flows: declared in TOML ([`definition`]), run by a pure
//! state machine ([`machine`]).

pub mod definition;
pub mod machine;

pub use definition::{normalize_text, Flow, FlowError, GlobalIntent, Slot, State};
pub use machine::{step, Needs, Outcome, Reply, StepResult, Understanding};
