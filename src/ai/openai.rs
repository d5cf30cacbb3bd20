//! The `openai` provider: any OpenAI-compatible chat-completions endpoint,
//! asked for JSON and checked before use (an intent must be one of the
//! candidates; a slot value is validated again by the flow).

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{json, Value};

pub use crate::config::OpenAiSettings;

use super::{IntentRequest, Model, ModelError, SlotRequest};

#[derive(Clone)]
pub struct OpenAiModel {
    client: reqwest::Client,
    url: String,
    model: String,
    key: crate::config::Secret,
}

impl OpenAiModel {
    /// A client whose API key comes from the environment variable named by
    /// `api_key_env`.
    pub fn new(s: &OpenAiSettings) -> Result<Self, ModelError> {
        let key = std::env::var(&s.api_key_env).map_err(|_| {
            ModelError::Unavailable(format!(
                "ai.provider = \"openai\" needs the API key in ${}",
                s.api_key_env
            ))
        })?;
        Self::with_key(s, crate::config::Secret::new(key))
    }

    /// A client with an explicit API key.
    pub fn with_key(s: &OpenAiSettings, key: crate::config::Secret) -> Result<Self, ModelError> {
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| ModelError::Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            url: format!("{}/chat/completions", s.base_url.trim_end_matches('/')),
            model: s.model.clone(),
            key,
        })
    }

    /// Asks for a JSON object and returns it parsed.
    #[tracing::instrument(skip_all, fields(model = %self.model))]
    async fn ask(self, system: String, user: String) -> Result<Value, ModelError> {
        let body = json!({
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        });
        let request = self.client.post(&self.url);
        let resp = crate::telemetry::inject(request)
            .bearer_auth(self.key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| ModelError::Provider(e.without_url().to_string()))?;
        let status = resp.status();
        let value: Value = resp
            .json()
            .await
            .map_err(|e| ModelError::InvalidAnswer(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(ModelError::Provider(format!("HTTP {status}")));
        }
        let content = value
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::InvalidAnswer("no choices[0].message.content".into()))?;
        serde_json::from_str(content).map_err(|e| ModelError::InvalidAnswer(format!("content is not JSON: {e}")))
    }
}

impl Model for OpenAiModel {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn detect_intent(&self, req: Arc<IntentRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        let this = self.clone();
        async move {
            let names: Vec<&str> = req.candidates.iter().map(|c| c.name.as_str()).collect();
            let system = format!(
                "Classify the user's chat message into one of these intents: {}. \
                 Answer with a JSON object {{\"intent\": <one of them or null>}}.",
                serde_json::to_string(&req.candidates).unwrap_or_default()
            );
            let v = this.ask(system, req.text.clone()).await?;
            match v.get("intent") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if names.contains(&s.as_str()) => Ok(Some(s.clone())),
                Some(other) => Err(ModelError::InvalidAnswer(format!("intent {other} is not a candidate"))),
            }
        }
        .boxed()
    }

    fn extract_slot(&self, req: Arc<SlotRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        let this = self.clone();
        async move {
            let system = format!(
                "Extract the value of `{}` from the user's message{}. Answer with a JSON object \
                 {{\"value\": <the value as a string, or null>}}.",
                req.name,
                req.pattern
                    .as_deref()
                    .map(|p| format!(" (it must match the regular expression {p})"))
                    .unwrap_or_default()
            );
            let v = this.ask(system, req.text.clone()).await?;
            match v.get("value") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(other) => Err(ModelError::InvalidAnswer(format!("value {other} is not a string"))),
            }
        }
        .boxed()
    }
}
