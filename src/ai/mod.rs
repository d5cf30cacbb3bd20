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
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerSettings;
use crate::config::AiProvider;
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

/// `[ai]`: the provider and what wraps every call to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiSettings {
    pub provider: AiProvider,
    /// Budget of one intent detection, waiting for the bulkhead included.
    pub intent_timeout_ms: u64,
    /// Budget of one slot extraction.
    pub extract_timeout_ms: u64,
    /// Bulkhead: model calls in flight at once.
    pub max_concurrent: u32,
    /// On timeout, error or open breaker, answer with the rules provider
    /// (`true`) or with "not understood" (`false`).
    pub fallback_to_rules: bool,
    pub breaker: BreakerSettings,
    pub openai: openai::OpenAiSettings,
    pub simulated: simulated::SimulatedSettings,
}

impl Default for AiSettings {
    fn default() -> Self {
        Self {
            provider: AiProvider::Rules,
            // The seed's budgets: 3 s for intents, 4 s for extraction.
            intent_timeout_ms: 3_000,
            extract_timeout_ms: 4_000,
            max_concurrent: 64,
            fallback_to_rules: true,
            breaker: BreakerSettings::default(),
            openai: openai::OpenAiSettings::default(),
            simulated: simulated::SimulatedSettings::default(),
        }
    }
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
