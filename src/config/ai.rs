//! `[ai]`: the model provider and what wraps every call to it.

use serde::{Deserialize, Serialize};

use super::breaker::BreakerSettings;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AiProvider {
    /// Keywords and patterns from the flow; deterministic, no network.
    #[default]
    Rules,
    /// An OpenAI-compatible chat-completions endpoint.
    Openai,
    /// Configurable latency, errors and hangs, for load and fault tests.
    Simulated,
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
    pub openai: OpenAiSettings,
    pub simulated: SimulatedSettings,
}

impl Default for AiSettings {
    fn default() -> Self {
        Self {
            provider: AiProvider::Rules,
            // The specified budgets: 3 s for intents, 4 s for extraction.
            intent_timeout_ms: 3_000,
            extract_timeout_ms: 4_000,
            max_concurrent: 64,
            fallback_to_rules: true,
            breaker: BreakerSettings::default(),
            openai: OpenAiSettings::default(),
            simulated: SimulatedSettings::default(),
        }
    }
}

/// `[ai.openai]`: an OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSettings {
    /// Base URL; `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// Environment variable holding the API key (never the key itself).
    pub api_key_env: String,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
        }
    }
}

/// `[ai.simulated]`: latency, errors and hangs for load and fault tests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedSettings {
    /// Minimum latency of a call.
    pub latency_ms: u64,
    /// Extra latency, uniform in `[0, jitter_ms]`.
    pub jitter_ms: u64,
    /// Share of calls (0..=1) that fail with a provider error.
    pub error_rate: f64,
    /// Share of calls (0..=1) that never answer.
    pub hang_rate: f64,
}

impl Default for SimulatedSettings {
    fn default() -> Self {
        Self {
            latency_ms: 50,
            jitter_ms: 50,
            error_rate: 0.0,
            hang_rate: 0.0,
        }
    }
}
