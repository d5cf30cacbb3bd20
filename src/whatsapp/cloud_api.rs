//! The WhatsApp Cloud API send endpoint: one number's messages and read
//! receipts, and how its answers are classified; the configured sender
//! (each number through its own).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;

use super::sender::{read_receipt_json, LogSink, OutboundMessage, SendOutcome, Sender, SEND_TIMEOUT};
use crate::config::{Secret, WhatsAppSettings};
use crate::numbers::Numbers;

/// WhatsApp error codes worth retrying: generic and temporary errors.
/// (Meta: "Error codes", Cloud API.)
const RETRYABLE_CODES: &[i64] = &[1, 2, 4, 80007, 131000, 131016, 133004];
/// The number sends faster than its throughput allows.
const NUMBER_THROTTLED: i64 = 130429;
/// Too many messages to one user from this number in a short time.
const PAIR_THROTTLED: i64 = 131056;

/// The WhatsApp Cloud API send endpoint.
#[derive(Clone)]
pub struct CloudApi {
    client: reqwest::Client,
    url: String,
    token: Secret,
}

impl CloudApi {
    pub fn new(s: &WhatsAppSettings, token: Secret, phone_number_id: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(SEND_TIMEOUT)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            url: format!(
                "{}/{}/{}/messages",
                s.api_base.trim_end_matches('/'),
                s.api_version,
                phone_number_id
            ),
            token,
        }
    }
}

/// Classifies a send API answer.
pub fn classify(status: u16, body: &Value) -> SendOutcome {
    if (200..300).contains(&status) {
        return match body.pointer("/messages/0/id").and_then(Value::as_str) {
            Some(id) => SendOutcome::Sent {
                provider_id: id.to_string(),
            },
            None => SendOutcome::Retry {
                reason: "accepted without a message id".into(),
            },
        };
    }
    let code = body.pointer("/error/code").and_then(Value::as_i64);
    let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
    let reason = format!(
        "HTTP {status}, code {}: {message}",
        code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
    );
    if let Some(c @ (NUMBER_THROTTLED | PAIR_THROTTLED)) = code {
        return SendOutcome::Throttled {
            reason,
            pair: c == PAIR_THROTTLED,
        };
    }
    if status >= 500 || status == 429 || code.is_some_and(|c| RETRYABLE_CODES.contains(&c)) {
        SendOutcome::Retry { reason }
    } else {
        SendOutcome::Failed { reason }
    }
}

impl Sender for CloudApi {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn send(&self, msg: OutboundMessage) -> BoxFuture<'static, SendOutcome> {
        let this = self.clone();
        async move {
            let request = this.client.post(&this.url);
            let resp = crate::telemetry::inject(request)
                .bearer_auth(this.token.expose())
                .json(&msg.to_graph_json())
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    return SendOutcome::Retry {
                        reason: format!("network: {}", e.without_url()),
                    }
                }
            };
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            classify(status, &body)
        }
        .boxed()
    }

    fn mark_read(&self, _from: Option<&str>, message_id: &str, typing: bool) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        let body = read_receipt_json(message_id, typing);
        async move {
            let resp = this
                .client
                .post(&this.url)
                .bearer_auth(this.token.expose())
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("network: {}", e.without_url()))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", resp.status().as_u16()))
            }
        }
        .boxed()
    }
}

/// Builds the configured sender: each configured number sends through the
/// Cloud API with its own token on its own path; without credentials, the
/// log sink.
pub fn build(s: &WhatsAppSettings, numbers: &Numbers) -> Arc<dyn Sender> {
    let apis: HashMap<String, CloudApi> = numbers
        .all()
        .iter()
        .filter_map(|n| {
            let token = n.access_token.as_ref().filter(|t| !t.is_empty())?;
            Some((n.id.clone(), CloudApi::new(s, token.clone(), &n.id)))
        })
        .collect();
    if apis.is_empty() {
        return Arc::new(LogSink);
    }
    Arc::new(ByNumber {
        home: numbers.home().map(|h| h.id.clone()),
        apis,
    })
}

/// Sends each message from its own business number.
struct ByNumber {
    home: Option<String>,
    apis: HashMap<String, CloudApi>,
}

impl Sender for ByNumber {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn send(&self, msg: OutboundMessage) -> BoxFuture<'static, SendOutcome> {
        let from = msg.from.as_ref().or(self.home.as_ref());
        match from.and_then(|id| self.apis.get(id)) {
            Some(api) => api.send(msg),
            // A number without a token (none of its own, no default).
            None => futures_util::future::ready(SendOutcome::Failed {
                reason: format!(
                    "business number {} has no access token",
                    from.map(String::as_str).unwrap_or("(home)")
                ),
            })
            .boxed(),
        }
    }

    fn mark_read(&self, from: Option<&str>, message_id: &str, typing: bool) -> BoxFuture<'static, Result<(), String>> {
        let from = from.map(str::to_string).or_else(|| self.home.clone());
        match from.as_ref().and_then(|id| self.apis.get(id)) {
            Some(api) => api.mark_read(None, message_id, typing),
            None => futures_util::future::ready(Err("no access token for the number".to_string())).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_are_classified_as_meta_documents_them() {
        let ok = json!({"messages": [{"id": "wamid.X"}]});
        assert_eq!(
            classify(200, &ok),
            SendOutcome::Sent {
                provider_id: "wamid.X".into()
            }
        );
        let err = |code: i64| json!({"error": {"code": code, "message": "m"}});
        assert!(matches!(
            classify(400, &err(130429)),
            SendOutcome::Throttled { pair: false, .. }
        ));
        assert!(matches!(
            classify(400, &err(131056)),
            SendOutcome::Throttled { pair: true, .. }
        ));
        assert!(matches!(classify(400, &err(131047)), SendOutcome::Failed { .. }));
        assert!(matches!(classify(400, &err(131026)), SendOutcome::Failed { .. }));
        assert!(matches!(classify(400, &err(100)), SendOutcome::Failed { .. }));
        assert!(matches!(classify(500, &Value::Null), SendOutcome::Retry { .. }));
        assert!(matches!(classify(429, &Value::Null), SendOutcome::Retry { .. }));
    }
}
