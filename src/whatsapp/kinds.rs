//! What each kind of inbound WhatsApp message means for the flow: stepped
//! (the flow sees it as input and may answer) or only stored (kept in the
//! conversation and shown, never answered, no flow attempt used).
//!
//! | kind | treatment |
//! |---|---|
//! | `text`, `interactive` (button / list reply), `button` (template reply) | stepped: the text, or the choice the reply's id names |
//! | `image`, `audio`, `video`, `document`, `sticker` | stepped: the caption (if any) is the text |
//! | `location`, `contacts` | stepped (no text) |
//! | `reaction`, `system`, `unsupported`, `errors`, `request_welcome`, `order`, any type not listed here | stored |
//! | any message from a group (`group_id`) | stored: kept out of the bot's 1:1 answers |

use serde_json::Value;

/// Kinds the flow steps; every other kind is stored only.
pub const STEPPED: &[&str] = &[
    "text",
    "interactive",
    "button",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
];

/// Whether the flow steps `payload` (an inbound message object) or only
/// stores it.
pub fn is_stepped(payload: &Value) -> bool {
    if payload.get("group_id").is_some() {
        return false;
    }
    payload
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| STEPPED.contains(&t))
}

/// The text a stored-only message shows in the conversation: the reaction's
/// emoji, a system notice's body, or the kind in brackets.
pub fn stored_body(payload: &Value) -> String {
    let s = |p: &str| payload.pointer(p).and_then(Value::as_str);
    let kind = s("/type").unwrap_or("unknown");
    match kind {
        "reaction" => match s("/reaction/emoji") {
            Some(e) if !e.is_empty() => e.to_string(),
            _ => "[reaction removed]".to_string(),
        },
        "system" => s("/system/body").unwrap_or("[system]").to_string(),
        _ => match crate::events::inbound_text(payload) {
            t if !t.is_empty() => t,
            _ => format!("[{kind}]"),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reactions_system_notices_unknown_kinds_and_group_messages_are_stored_not_stepped() {
        let stepped = |v: Value| is_stepped(&v);
        assert!(stepped(json!({"type": "text", "text": {"body": "hola"}})));
        assert!(stepped(json!({"type": "location", "location": {}})));
        assert!(!stepped(
            json!({"type": "reaction", "reaction": {"message_id": "m", "emoji": "👍"}})
        ));
        assert!(!stepped(json!({"type": "system", "system": {"body": "changed"}})));
        assert!(!stepped(json!({"type": "brand_new_type"})));
        assert!(!stepped(json!({"text": {"body": "no type"}})));
        assert!(!stepped(
            json!({"type": "text", "text": {"body": "hola"}, "group_id": "g1"})
        ));
        assert_eq!(
            stored_body(&json!({"type": "reaction", "reaction": {"emoji": "👍"}})),
            "👍"
        );
        assert_eq!(
            stored_body(&json!({"type": "reaction", "reaction": {"emoji": ""}})),
            "[reaction removed]"
        );
        assert_eq!(stored_body(&json!({"type": "unsupported"})), "[unsupported]");
    }
}
