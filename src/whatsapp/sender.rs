//! Sending messages: the WhatsApp Cloud API send endpoint, or a log sink
//! when no credentials are configured (so `serve` works out of the box).

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{json, Value};

use crate::events::CHOICE_ID;
use crate::flow::definition::limits;
use crate::phone::mask;
use crate::whatsapp::templates::TemplateMessage;

/// Budget of one send request.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A template message (then `text` and `choices` are not sent).
    pub template: Option<TemplateMessage>,
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
            template: TemplateMessage::of_payload(payload),
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
        if let Some(t) = &self.template {
            return json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": self.to,
                "type": "template",
                "template": t.graph_json(),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_known_only_by_its_bsuid_is_addressed_as_recipient() {
        let m = OutboundMessage {
            to: "US.13491208655302741918".into(),
            text: "hola".into(),
            choices: Vec::new(),
            list_button: None,
            tracking: None,
            from: None,
            template: None,
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
            template: None,
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
            template: None,
        };
        let j = m.to_graph_json();
        assert_eq!(j["type"], "interactive");
        assert_eq!(j["interactive"]["action"]["buttons"][1]["reply"]["title"], "No");
        assert_eq!(j["interactive"]["action"]["buttons"][1]["reply"]["id"], "choice:No");
        assert_eq!(j["biz_opaque_callback_data"], "out:1");
    }
}
