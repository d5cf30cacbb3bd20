//! Models: intent detection and slot extraction behind one trait, with three
//! providers — [`rules`] (default, deterministic, no network), [`openai`]
//! (any OpenAI-compatible chat-completions endpoint) and [`simulated`]
//! (latency, errors and hangs, for load and fault tests).
//!
//! Timeouts, fallbacks, the bulkhead and the circuit breaker are not here:
//! they wrap every provider in the AI actor (`crate::actors::ai`).

pub mod openai;
pub mod rules;
pub mod simulated;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::config::AiProvider;
pub use crate::config::AiSettings;
use crate::flow::Flow;

/// An intent the model may answer with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntentCandidate {
    pub name: String,
    /// Keywords (normalized) that express it.
    pub keywords: Vec<String>,
}

/// Which of `candidates` does `text` express, if any?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRequest {
    pub text: String,
    pub candidates: Vec<IntentCandidate>,
}

/// Find a value for slot `name` in `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    pub text: String,
    pub name: String,
    /// A regular expression the value must match, if any.
    pub pattern: Option<String>,
    pub min_len: usize,
    pub max_len: usize,
}

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("model call timed out after {0} ms")]
    Timeout(u64),
    #[error("model provider error: {0}")]
    Provider(String),
    #[error("model answer invalid: {0}")]
    InvalidAnswer(String),
    #[error("model unavailable: {0}")]
    Unavailable(String),
}

/// An intent and slot model. Calls are independent and may run concurrently.
pub trait Model: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn detect_intent(&self, req: Arc<IntentRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>>;
    fn extract_slot(&self, req: Arc<SlotRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>>;
}

/// Builds the configured provider.
pub fn build_model(tuning: &AiSettings) -> Result<Arc<dyn Model>, ModelError> {
    Ok(match tuning.provider {
        AiProvider::Rules => Arc::new(rules::RulesModel),
        AiProvider::Simulated => Arc::new(simulated::SimulatedModel::new(tuning.simulated.clone())),
        AiProvider::Openai => Arc::new(openai::OpenAiModel::new(&tuning.openai)?),
    })
}

/// The candidates for a flow state's intents, keywords included.
pub fn candidates(flow: &Flow, names: &[&str]) -> Vec<IntentCandidate> {
    names
        .iter()
        .map(|n| IntentCandidate {
            name: n.to_string(),
            keywords: flow.intents.get(*n).cloned().unwrap_or_default(),
        })
        .collect()
}
