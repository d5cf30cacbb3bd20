//! What each kind of inbound WhatsApp message means for the flow: stepped
//! (the flow sees it as input and may answer) or only stored (kept in the
//! conversation and shown, no flow attempt used, never answered — but a
//! welcome request, when the flow says `welcome = true`).
//!
//! | kind | treatment |
//! |---|---|
//! | `text`, `interactive` (button / list reply), `button` (template reply) | stepped: the text, or the choice the reply's id names |
//! | `image`, `audio`, `video`, `document`, `sticker` | stepped: the caption (if any) is the text |
//! | `location`, `contacts` | stepped (no text) |
//! | `request_welcome` (a user opened the chat for the first time) | stored; answered with the state's prompt when the flow says `welcome = true` |
//! | `reaction`, `system`, `unsupported`, `errors`, `order`, any type not listed here | stored |
//! | any message from a group (`group_id`) | stored in the group's own conversation (`g.<group_id>`), out of the sender's 1:1 one; never answered |
//!
//! A slot of kind `media`, `location` or `contacts` is filled by the typed
//! input of a message of its kind ([`typed_input`]); a media message's file
//! is fetched by the download job ([`media_of`] names it).

use serde_json::{json, Value};

use crate::flow::SlotKind;

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

/// The group a message was sent in (`group_id`), if it was.
pub fn group_of(payload: &Value) -> Option<&str> {
    payload.get("group_id").and_then(Value::as_str)
}

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

/// Whether `payload` is WhatsApp's `request_welcome`: a user opened the
/// chat for the first time (stored; answered when the flow says `welcome`).
pub fn asks_welcome(payload: &Value) -> bool {
    payload.get("type").and_then(Value::as_str) == Some("request_welcome") && group_of(payload).is_none()
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

/// The kinds that carry a media file (its id, mime type, sha256, caption).
pub const MEDIA: &[&str] = &["image", "audio", "video", "document", "sticker"];

/// A media file a message carries, as the webhook names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    /// `image`, `audio`, `video`, `document` or `sticker`.
    pub kind: String,
    /// The Graph API's media id (to download it with).
    pub id: String,
    pub mime_type: Option<String>,
    pub sha256: Option<String>,
    pub caption: Option<String>,
}

/// The media file of a message, if it carries one (with an id).
pub fn media_of(payload: &Value) -> Option<MediaRef> {
    let kind = payload.get("type").and_then(Value::as_str)?;
    if !MEDIA.contains(&kind) {
        return None;
    }
    let part = payload.get(kind)?;
    let s = |k: &str| part.get(k).and_then(Value::as_str).map(str::to_string);
    Some(MediaRef {
        kind: kind.to_string(),
        id: s("id").filter(|id| !id.is_empty())?,
        mime_type: s("mime_type"),
        sha256: s("sha256"),
        caption: s("caption"),
    })
}

/// The value a slot of `kind` takes from `payload`: what a media message,
/// a location or a contact card carries, when the message is of that kind
/// (`None` for text slots, and for a message of another kind).
pub fn typed_input(payload: &Value, kind: SlotKind) -> Option<Value> {
    match kind {
        SlotKind::Text => None,
        SlotKind::Media => media_of(payload).map(
            |m| json!({"kind": m.kind, "id": m.id, "mime_type": m.mime_type, "sha256": m.sha256, "caption": m.caption}),
        ),
        SlotKind::Location => {
            let l = payload.get("location").filter(|_| kind_is(payload, "location"))?;
            let (lat, long) = (l.get("latitude")?.as_f64()?, l.get("longitude")?.as_f64()?);
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&long) {
                return None;
            }
            Some(json!({"latitude": lat, "longitude": long, "name": l.get("name"), "address": l.get("address")}))
        }
        SlotKind::Contacts => {
            let card = payload
                .get("contacts")
                .filter(|_| kind_is(payload, "contacts"))?
                .as_array()?
                .first()?;
            let phones: Vec<&str> = card
                .get("phones")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("wa_id").or_else(|| p.get("phone")).and_then(Value::as_str))
                .collect();
            let name = card.pointer("/name/formatted_name").and_then(Value::as_str);
            (!phones.is_empty() || name.is_some()).then(|| json!({"name": name, "phones": phones}))
        }
    }
}

fn kind_is(payload: &Value, kind: &str) -> bool {
    payload.get("type").and_then(Value::as_str) == Some(kind)
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

    #[test]
    fn a_slot_takes_only_the_typed_input_of_its_kind() {
        let image = json!({"type": "image", "image": {"id": "m1", "mime_type": "image/jpeg", "sha256": "h", "caption": "etiqueta"}});
        let location =
            json!({"type": "location", "location": {"latitude": 19.43, "longitude": -99.13, "name": "Casa"}});
        let card = json!({"type": "contacts", "contacts": [{"name": {"formatted_name": "Luis"}, "phones": [{"phone": "+52 55 1111 2222", "wa_id": "5215511112222"}]}]});
        assert_eq!(typed_input(&image, SlotKind::Media).unwrap()["caption"], "etiqueta");
        assert_eq!(typed_input(&image, SlotKind::Location), None);
        assert_eq!(typed_input(&location, SlotKind::Location).unwrap()["latitude"], 19.43);
        assert_eq!(typed_input(&location, SlotKind::Media), None);
        assert_eq!(
            typed_input(&card, SlotKind::Contacts).unwrap(),
            json!({"name": "Luis", "phones": ["5215511112222"]})
        );
        let off_the_map = json!({"type": "location", "location": {"latitude": 91.0, "longitude": 0.0}});
        assert_eq!(typed_input(&off_the_map, SlotKind::Location), None);
        assert_eq!(media_of(&json!({"type": "sticker", "sticker": {"id": ""}})), None);
    }
}
