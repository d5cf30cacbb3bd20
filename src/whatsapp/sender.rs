//! Sending messages: the WhatsApp Cloud API send endpoint, or a log sink
//! when no credentials are configured (so `serve` works out of the box).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{json, Value};

use crate::config::{Secret, WhatsAppSettings};
use crate::events::CHOICE_ID;
use crate::flow::definition::limits;
use crate::numbers::Numbers;
use crate::phone::mask;

/// Budget of one send request.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// WhatsApp error codes worth retrying: throughput limit, pair rate limit,
/// generic/temporary errors. (Meta: "Error codes", Cloud API.)
const RETRYABLE_CODES: &[i64] = &[1, 2, 4, 80007, 131000, 131016, 133004];
/// The number sends faster than its throughput allows.
const NUMBER_THROTTLED: i64 = 130429;
/// Too many messages to one user from this number in a short time.
const PAIR_THROTTLED: i64 = 131056;

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted by the provider, with its message id.
    Sent { provider_id: String },
    /// Try again later (network, 5xx, 429).
    Retry { reason: String },
    /// The provider refused the rate: the number's throughput (130429) or
    /// the pair's (131056, too many messages to one user). Try again
    /// later; the number (or only that conversation) slows down. Not a
    /// fault of the provider: the breaker does not count it.
    Throttled { reason: String, pair: bool },
    /// Will never succeed (outside the 24 h window, undeliverable, invalid).
    Failed { reason: String },
}

/// One outbound message.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// The business number it leaves from (`None`: the home number).
    pub from: Option<String>,
    pub to: String,
    pub text: String,
    /// Choices: up to 3 go as reply buttons (titles cut to 20 characters),
    /// 4 to 10 as a list (rows cut to 24), more as plain text (a validated
    /// flow never has more).
    pub choices: Vec<String>,
    /// The label of the button that opens a list.
    pub list_button: Option<String>,
    /// Sent as `biz_opaque_callback_data`, which WhatsApp echoes in the
    /// message's status webhooks: the outbox row's idempotency key, so a
    /// send can be traced to its row (and a repeated send recognized).
    pub tracking: Option<String>,
}

impl OutboundMessage {
    /// From an outbox payload (`{"text": …, "choices": […]}`).
    pub fn from_outbox(phone: &str, payload: &Value) -> Self {
        Self {
            from: None,
            tracking: None,
            to: phone.to_string(),
            text: payload
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            choices: payload
                .get("choices")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            list_button: payload.get("list_button").and_then(Value::as_str).map(str::to_string),
        }
    }

    /// The send API's JSON body.
    pub fn to_graph_json(&self) -> Value {
        let mut body = self.body_json();
        if let Some(t) = &self.tracking {
            // WhatsApp takes at most 512 characters here.
            body["biz_opaque_callback_data"] = Value::String(t.chars().take(512).collect());
        }
        body
    }

    fn body_json(&self) -> Value {
        let mut body = self.content_json();
        if crate::phone::is_bsuid(&self.to) {
            // A contact known only by its BSUID is addressed as `recipient`.
            if let Some(o) = body.as_object_mut() {
                if let Some(to) = o.remove("to") {
                    o.insert("recipient".into(), to);
                }
            }
        }
        body
    }

    fn content_json(&self) -> Value {
        let interactive = match self.choices.len() {
            0 => None,
            n if n <= limits::BUTTONS => Some(self.buttons()),
            n if n <= limits::LIST_ROWS => Some(self.list()),
            _ => None,
        };
        match interactive {
            Some(interactive) => json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": self.to,
                "type": "interactive",
                "interactive": interactive,
            }),
            None => json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": self.to,
                "type": "text",
                "text": {"preview_url": false, "body": self.text},
            }),
        }
    }

    fn buttons(&self) -> Value {
        let buttons: Vec<Value> = self
            .choices
            .iter()
            .map(|c| json!({"type": "reply", "reply": {"id": choice_id(c), "title": cut(c, limits::BUTTON_TITLE)}}))
            .collect();
        json!({"type": "button", "body": {"text": cut(&self.text, limits::INTERACTIVE_BODY)}, "action": {"buttons": buttons}})
    }

    fn list(&self) -> Value {
        let rows: Vec<Value> = self
            .choices
            .iter()
            .map(|c| json!({"id": choice_id(c), "title": cut(c, limits::LIST_ROW_TITLE)}))
            .collect();
        let button = self.list_button.as_deref().unwrap_or(limits::DEFAULT_LIST_BUTTON);
        json!({
            "type": "list",
            "body": {"text": cut(&self.text, limits::INTERACTIVE_BODY)},
            "action": {"button": cut(button, limits::LIST_BUTTON), "sections": [{"rows": rows}]},
        })
    }
}

fn cut(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

/// A reply button's id: the choice itself behind [`CHOICE_ID`] (at most
/// 256 bytes, WhatsApp's limit), so the reply names the choice even when
/// its title was cut to 20 characters or the flow's wording changed.
fn choice_id(choice: &str) -> String {
    let mut id = format!("{CHOICE_ID}{choice}");
    let mut end = id.len().min(256);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id.truncate(end);
    id
}

/// Something that delivers outbound messages.
pub trait Sender: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn send(&self, msg: OutboundMessage) -> BoxFuture<'static, SendOutcome>;
    /// Marks the inbound message `message_id` read, from business number
    /// `from` (`None`: the home number), with the typing indicator when
    /// `typing` (shown until the reply or 25 seconds). Best-effort: the
    /// caller bounds it with a deadline and never retries it.
    fn mark_read(&self, from: Option<&str>, message_id: &str, typing: bool) -> BoxFuture<'static, Result<(), String>> {
        let _ = (from, message_id, typing);
        futures_util::future::ready(Err(format!("{} cannot mark messages read", self.name()))).boxed()
    }
}

/// The body that marks `message_id` read (Cloud API: "Mark messages as
/// read", with `typing_indicator`).
pub fn read_receipt_json(message_id: &str, typing: bool) -> Value {
    let mut body = json!({"messaging_product": "whatsapp", "status": "read", "message_id": message_id});
    if typing {
        body["typing_indicator"] = json!({"type": "text"});
    }
    body
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

/// Prints replies to the log instead of sending them.
#[derive(Debug, Clone, Copy)]
pub struct LogSink;

impl Sender for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn send(&self, msg: OutboundMessage) -> BoxFuture<'static, SendOutcome> {
        tracing::info!(to = %mask(&msg.to), chars = msg.text.chars().count(), "reply (log sink; no WhatsApp credentials)");
        tracing::debug!(body = %msg.text, "reply body");
        let id = format!("log.{}", rand::random::<u64>());
        futures_util::future::ready(SendOutcome::Sent { provider_id: id }).boxed()
    }

    fn mark_read(
        &self,
        _from: Option<&str>,
        _message_id: &str,
        _typing: bool,
    ) -> BoxFuture<'static, Result<(), String>> {
        futures_util::future::ready(Ok(())).boxed()
    }
}

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
            let resp = this
                .client
                .post(&this.url)
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

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_contact_known_only_by_its_bsuid_is_addressed_as_recipient() {
        let m = OutboundMessage {
            to: "US.13491208655302741918".into(),
            text: "hola".into(),
            choices: Vec::new(),
            list_button: None,
            tracking: None,
            from: None,
        };
        let j = m.to_graph_json();
        assert_eq!(j["recipient"], "US.13491208655302741918");
        assert!(j.get("to").is_none());
    }

    #[test]
    fn four_to_ten_choices_become_a_list_whose_rows_name_their_choice() {
        let choices: Vec<String> = (1..=5)
            .map(|i| format!("Opción número {i} con un texto largo"))
            .collect();
        let m = OutboundMessage {
            to: "521".into(),
            text: "¿Cuál?".into(),
            choices,
            list_button: Some("Elige".into()),
            tracking: None,
            from: None,
        };
        let j = m.to_graph_json();
        assert_eq!(j["interactive"]["type"], "list");
        assert_eq!(j["interactive"]["action"]["button"], "Elige");
        let rows = j["interactive"]["action"]["sections"][0]["rows"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(rows.len(), 5);
        assert_eq!(
            rows[0]["title"].as_str().unwrap().chars().count(),
            24,
            "cut to WhatsApp's limit"
        );
        assert_eq!(
            rows[0]["id"], "choice:Opción número 1 con un texto largo",
            "the id keeps the whole choice"
        );
    }

    #[test]
    fn choices_become_reply_buttons() {
        let m = OutboundMessage {
            to: "521".into(),
            text: "¿Es correcto?".into(),
            choices: vec!["Sí".into(), "No".into()],
            list_button: None,
            tracking: Some("out:1".into()),
            from: None,
        };
        let j = m.to_graph_json();
        assert_eq!(j["type"], "interactive");
        assert_eq!(j["interactive"]["action"]["buttons"][1]["reply"]["title"], "No");
        assert_eq!(j["interactive"]["action"]["buttons"][1]["reply"]["id"], "choice:No");
        assert_eq!(j["biz_opaque_callback_data"], "out:1");
    }
}
