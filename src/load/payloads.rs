//! The deliveries the harness sends, in the shapes Meta documents
//! ("Webhooks payload examples" of the Cloud API): each kind of message a
//! plan has, the sender named by its phone or — a username-only user — by
//! its BSUID alone, the business number it was sent to, and delivery
//! statuses addressed the same way.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::plan::{Bad, Kind, Message};
use super::population::{Contact, Peer};

/// The file every image message names: the harness's fake send API serves
/// it for any media id, and the messages carry its sha256, which the
/// server checks the download against.
pub const IMAGE: &[u8] = b"\xFF\xD8\xFF\xE0 switchboard load harness image \xFF\xD9";

/// The image's type.
pub const IMAGE_MIME: &str = "image/jpeg";

/// WhatsApp's limit on a text message, in characters: one over it is a
/// bad message.
const TEXT_LIMIT: usize = 4_096;

/// Every status's `timestamp`.
const STATUS_TIMESTAMP: &str = "1732320001";

/// Every contact's profile name.
const PROFILE_NAME: &str = "Carga";

/// What a location message names besides its coordinates.
const PLACE_NAME: &str = "Zócalo";
const PLACE_ADDRESS: &str = "Plaza de la Constitución, Ciudad de México";

/// A delivery in the shape Meta sends, for `to`'s business number:
/// `messages` from its contact (with the contact's `contacts` entry),
/// `statuses` of messages sent to it.
pub fn delivery_body(to: &Peer, messages: Vec<Value>, statuses: Vec<Value>) -> Vec<u8> {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": to.number},
    });
    if !messages.is_empty() {
        value["contacts"] = json!([contact(&to.contact)]);
        value["messages"] = Value::Array(messages);
    }
    if !statuses.is_empty() {
        value["statuses"] = Value::Array(statuses);
    }
    serde_json::to_vec(&json!({"object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}]}))
    .unwrap_or_default()
}

/// The `contacts` entry of a delivery's sender: its `wa_id`, or a
/// username-only user's `user_id` and username.
fn contact(c: &Contact) -> Value {
    match c {
        Contact::Phone(phone) => json!({"profile": {"name": PROFILE_NAME}, "wa_id": phone}),
        Contact::Username(bsuid) => {
            let tail = &bsuid[bsuid.len().saturating_sub(6)..];
            json!({"profile": {"name": PROFILE_NAME, "username": format!("@carga.{tail}")}, "user_id": bsuid})
        }
    }
}

/// Message `m` from `to`'s contact.
pub fn message(to: &Peer, m: &Message) -> Value {
    // Sent now: the 24-hour window runs from a message's own timestamp.
    let mut v = json!({"id": m.id, "timestamp": chrono::Utc::now().timestamp().to_string()});
    let (field, id) = match (&to.contact, m.kind == Kind::Bad(Bad::Sender)) {
        (Contact::Phone(phone), false) => ("from", phone.as_str()),
        (Contact::Phone(_), true) => ("from", "not-a-phone"),
        (Contact::Username(bsuid), false) => ("from_user_id", bsuid.as_str()),
        (Contact::Username(_), true) => ("from_user_id", "not-a-bsuid"),
    };
    v[field] = json!(id);
    let (kind, body) = match &m.kind {
        Kind::Text(text) => ("text", json!({"body": text})),
        Kind::Reaction { message_id, emoji } => ("reaction", json!({"message_id": message_id, "emoji": emoji})),
        Kind::Image { media_id, caption } => {
            let sha256 = hex::encode(Sha256::digest(IMAGE));
            (
                "image",
                json!({"caption": caption, "mime_type": IMAGE_MIME, "sha256": sha256, "id": media_id}),
            )
        }
        Kind::Location { latitude, longitude } => (
            "location",
            json!({"latitude": latitude, "longitude": longitude, "name": PLACE_NAME, "address": PLACE_ADDRESS}),
        ),
        Kind::Bad(Bad::Sender) => ("text", json!({"body": "hola"})),
        Kind::Bad(Bad::LongText) => ("text", json!({"body": "a".repeat(TEXT_LIMIT + 1)})),
    };
    v["type"] = json!(kind);
    v[kind] = body;
    v
}

/// A delivery status of our message `id` to `to`'s contact: by
/// `recipient_id` (its phone) or `recipient_user_id` (its BSUID).
pub fn status(to: &Peer, id: &str, status: &str) -> Value {
    let mut v = json!({"id": id, "status": status, "timestamp": STATUS_TIMESTAMP});
    match &to.contact {
        Contact::Phone(phone) => v["recipient_id"] = json!(phone),
        Contact::Username(bsuid) => v["recipient_user_id"] = json!(bsuid),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::population::Population;
    use crate::whatsapp::webhook::parse;

    fn peer(username_share: f64) -> Peer {
        Population {
            numbers: 2,
            username_share,
        }
        .peer(1)
    }

    #[test]
    fn the_server_reads_each_kind_from_the_right_sender_and_number() {
        for to in [peer(0.0), peer(1.0)] {
            let kinds = [
                Kind::Text("hola".into()),
                Kind::Reaction {
                    message_id: "wamid.x".into(),
                    emoji: "👍",
                },
                Kind::Image {
                    media_id: "901".into(),
                    caption: "la etiqueta".into(),
                },
                Kind::Location {
                    latitude: 19.4,
                    longitude: -99.1,
                },
            ];
            let messages: Vec<Value> = kinds
                .into_iter()
                .enumerate()
                .map(|(i, kind)| {
                    message(
                        &to,
                        &Message {
                            id: format!("wamid.{i}"),
                            kind,
                        },
                    )
                })
                .collect();
            let d = parse(&delivery_body(&to, messages, Vec::new())).unwrap();
            assert!(d.unusable.is_empty(), "{:?}", d.unusable);
            let kinds: Vec<&str> = d.messages.iter().map(|m| m.kind.as_str()).collect();
            assert_eq!(kinds, ["text", "reaction", "image", "location"]);
            // The checker's count of versions: all but the reaction are stepped.
            let stepped: Vec<bool> = d
                .messages
                .iter()
                .map(|m| crate::whatsapp::kinds::is_stepped(&m.raw))
                .collect();
            assert_eq!(stepped, [true, false, true, true]);
            for m in &d.messages {
                assert_eq!(m.business_number.as_deref(), Some(to.number.as_str()));
                let sender = if m.from.is_empty() {
                    m.user_id.as_deref()
                } else {
                    Some(m.from.as_str())
                };
                assert_eq!(sender, Some(to.contact.id()));
            }
            let media = crate::whatsapp::kinds::media_of(&d.messages[2].raw).unwrap();
            assert_eq!(media.sha256, Some(hex::encode(Sha256::digest(IMAGE))));
            let s = parse(&delivery_body(&to, Vec::new(), vec![status(&to, "wamid.s", "read")])).unwrap();
            assert_eq!(s.statuses[0].recipient, to.contact.id());
        }
    }

    #[test]
    fn a_bad_message_names_an_invalid_sender_or_holds_a_text_over_the_limit() {
        for to in [peer(0.0), peer(1.0)] {
            let bad = message(
                &to,
                &Message {
                    id: "wamid.b".into(),
                    kind: Kind::Bad(Bad::Sender),
                },
            );
            let sender = bad
                .get("from")
                .or_else(|| bad.get("from_user_id"))
                .and_then(Value::as_str);
            assert!(sender.is_some_and(|s| crate::phone::contact_key(s).is_err()), "{bad}");
            let long = message(
                &to,
                &Message {
                    id: "wamid.l".into(),
                    kind: Kind::Bad(Bad::LongText),
                },
            );
            assert_eq!(
                long["text"]["body"].as_str().map(|b| b.chars().count()),
                Some(TEXT_LIMIT + 1)
            );
        }
    }
}
