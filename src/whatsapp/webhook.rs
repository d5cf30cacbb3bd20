//! WhatsApp Cloud API webhook deliveries: parsing and signatures.
//!
//! A delivery (`object = "whatsapp_business_account"`) holds entries, each
//! with changes; a change's `value` holds `messages` (inbound), `statuses`
//! (of our outbound messages) and `contacts`. Every message is kept as the
//! exact JSON object received; unknown types and fields are carried, never an
//! error. A message or status that cannot be applied is kept whole, with
//! why, as [`Unusable`]: it never fails the rest of its delivery. Reference:
//! Meta's "Webhooks payload examples" for the Cloud API.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One inbound message of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundWa {
    /// The sender's phone (`from`); empty for a contact known only by its
    /// BSUID (a user with a username who does not share the phone).
    pub from: String,
    /// The sender's business-scoped user ID (`from_user_id`, or the
    /// contact's `user_id`), when given.
    pub user_id: Option<String>,
    /// The business number the message was sent to
    /// (`metadata.phone_number_id` of its change).
    pub business_number: Option<String>,
    /// The provider's message id (`wamid…`).
    pub id: String,
    /// `text`, `interactive`, `button`, `image`, … (unknown types kept).
    pub kind: String,
    /// The sender's profile name from `contacts`, if given.
    pub contact_name: Option<String>,
    /// The sender's username (`contacts[].profile.username`), if given.
    pub contact_username: Option<String>,
    /// The message object exactly as received.
    pub raw: Value,
}

/// A delivery status of one of our outbound messages.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWa {
    /// The id of our outbound message (the send API's `messages[0].id`).
    pub id: String,
    /// `recipient_id` (the phone), else `recipient_user_id` (the BSUID).
    pub recipient: String,
    /// The business number that sent it (`metadata.phone_number_id`).
    pub business_number: Option<String>,
    /// `sent`, `delivered`, `read`, `failed` (others kept as given).
    pub status: String,
    /// For `failed`: the errors as received (code, title, details).
    pub errors: Option<Value>,
}

/// A template's new status (`message_template_status_update`: approved,
/// paused, disabled, …).
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateStatusWa {
    pub name: String,
    pub language: String,
    /// `event`: `APPROVED`, `PAUSED`, `DISABLED`, `REJECTED`, …
    pub status: String,
    /// Why, when WhatsApp says (`reason`, absent or `NONE` otherwise).
    pub reason: Option<String>,
}

/// A message or status of a delivery that cannot be applied: kept (as a
/// dead letter) with the reason, so the rest of the delivery goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Unusable {
    /// The sender as given (`from`), possibly empty or not a phone.
    pub from: String,
    /// The item's id, or `sha256:` and the hash of its JSON when it has none.
    pub key: String,
    /// The item exactly as received.
    pub raw: Value,
    pub reason: String,
}

impl Unusable {
    /// Keeps `raw` as it came — but for NUL characters, which PostgreSQL
    /// cannot store in JSON, replaced by U+FFFD — keyed by its id when that
    /// is short enough for an index, else by a hash of the JSON.
    pub fn new(raw: &Value, reason: impl Into<String>) -> Self {
        let key = match str_at(raw, "id") {
            Some(id) if !id.is_empty() && id.len() <= 256 && !id.contains('\0') => id.to_string(),
            _ => format!("sha256:{}", hex::encode(Sha256::digest(raw.to_string().as_bytes()))),
        };
        Self {
            from: str_at(raw, "from")
                .unwrap_or_default()
                .chars()
                .filter(|c| *c != '\0')
                .take(64)
                .collect(),
            key,
            raw: without_nul(raw),
            reason: reason.into(),
        }
    }
}

/// Whether any string of `v` (key or value) holds a NUL character.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(t) => t.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// `v` with every NUL character replaced by U+FFFD.
fn without_nul(v: &Value) -> Value {
    let fix = |t: &str| t.replace('\0', "\u{FFFD}");
    match v {
        Value::String(t) => Value::String(fix(t)),
        Value::Array(a) => Value::Array(a.iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (fix(k), without_nul(v))).collect()),
        other => other.clone(),
    }
}

/// What a delivery carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    pub messages: Vec<InboundWa>,
    pub statuses: Vec<StatusWa>,
    pub templates: Vec<TemplateStatusWa>,
    pub unusable: Vec<Unusable>,
}

/// Why a body is not a delivery we can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("not a WhatsApp Cloud API delivery: {0}")]
    Shape(String),
}

/// One entry of a change's `contacts`: the sender's identifiers and name.
struct Contact<'a> {
    wa_id: Option<&'a str>,
    user_id: Option<&'a str>,
    name: Option<&'a str>,
    username: Option<&'a str>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Parses a delivery body. Only a body that is not a delivery at all (not
/// JSON, another `object`, no `entry`) is an error; a message or status that
/// lacks the fields we need (`from`/`id`, `id`/`status`) is [`Unusable`].
pub fn parse(body: &[u8]) -> Result<Delivery, DeliveryError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| DeliveryError::Json(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| DeliveryError::Shape("the body is not a JSON object".into()))?;
    match obj.get("object").and_then(Value::as_str) {
        Some("whatsapp_business_account") => {}
        Some(other) => return Err(DeliveryError::Shape(format!("unexpected object `{other}`"))),
        None => return Err(DeliveryError::Shape("missing `object`".into())),
    }
    let entries = obj
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| DeliveryError::Shape("missing `entry` list".into()))?;
    let mut d = Delivery::default();
    for entry in entries {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            continue;
        };
        for change in changes {
            let Some(value) = change.get("value") else { continue };
            if str_at(change, "field") == Some("message_template_status_update") {
                template_status(value, &mut d);
                continue;
            }
            messages_and_statuses(value, &mut d);
        }
    }
    Ok(d)
}

/// A `messages` change's value: its messages (with their senders'
/// identifiers and names from `contacts`) and the statuses of ours.
fn messages_and_statuses(value: &Value, d: &mut Delivery) {
    let business_number = value.pointer("/metadata/phone_number_id").and_then(Value::as_str);
    let contacts: Vec<Contact> = value
        .get("contacts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| Contact {
            wa_id: str_at(c, "wa_id"),
            user_id: str_at(c, "user_id"),
            name: c.pointer("/profile/name").and_then(Value::as_str),
            username: c.pointer("/profile/username").and_then(Value::as_str),
        })
        .collect();
    for m in value.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let from = str_at(m, "from");
        let contact = contacts.iter().find(|c| from.is_some() && c.wa_id == from).or_else(|| {
            let user = str_at(m, "from_user_id");
            contacts.iter().find(|c| user.is_some() && c.user_id == user)
        });
        let user_id = str_at(m, "from_user_id").or(contact.and_then(|c| c.user_id));
        match (from.or(user_id), str_at(m, "id")) {
            (Some(_), Some(id)) => d.messages.push(InboundWa {
                from: from.unwrap_or_default().to_string(),
                user_id: user_id.map(str::to_string),
                business_number: business_number.map(str::to_string),
                id: id.to_string(),
                kind: str_at(m, "type").unwrap_or("unknown").to_string(),
                contact_name: contact.and_then(|c| c.name).map(str::to_string),
                contact_username: contact.and_then(|c| c.username).map(str::to_string),
                raw: m.clone(),
            }),
            (None, _) => d
                .unusable
                .push(Unusable::new(m, "a message without `from` or `from_user_id`")),
            (_, None) => d.unusable.push(Unusable::new(m, "a message without `id`")),
        }
    }
    for s in value.get("statuses").and_then(Value::as_array).into_iter().flatten() {
        let (Some(id), Some(status)) = (str_at(s, "id"), str_at(s, "status")) else {
            d.unusable.push(Unusable::new(s, "a status without `id` or `status`"));
            continue;
        };
        d.statuses.push(StatusWa {
            id: id.to_string(),
            recipient: str_at(s, "recipient_id")
                .or_else(|| str_at(s, "recipient_user_id"))
                .unwrap_or_default()
                .to_string(),
            business_number: business_number.map(str::to_string),
            status: status.to_string(),
            errors: s.get("errors").cloned(),
        });
    }
}

/// A `message_template_status_update` change's value.
fn template_status(value: &Value, d: &mut Delivery) {
    let name = str_at(value, "message_template_name");
    let language = str_at(value, "message_template_language");
    match (name, language, str_at(value, "event")) {
        (Some(name), Some(language), Some(status)) => d.templates.push(TemplateStatusWa {
            name: name.to_string(),
            language: language.to_string(),
            status: status.to_ascii_uppercase(),
            reason: str_at(value, "reason")
                .filter(|r| !r.is_empty() && *r != "NONE")
                .map(str::to_string),
        }),
        _ => d.unusable.push(Unusable::new(
            value,
            "a template status update without `message_template_name`, `message_template_language` or `event`",
        )),
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` over the exact raw body, in
/// constant time.
pub fn verify_signature(app_secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(app_secret) else {
        return false;
    };
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    expected.as_slice().ct_eq(&given).into()
}

/// The header value a provider would send for `body` (tests, load harness).
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(app_secret) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Constant-time string equality (tokens).
pub fn secure_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_checked_over_the_exact_bytes() {
        let body = "{\"text\":\"¿Qué tal? 😀 / ok\"}".as_bytes();
        let sig = sign(b"secret", body);
        assert!(verify_signature(b"secret", body, Some(&sig)));
        assert!(!verify_signature(b"other", body, Some(&sig)));
        assert!(!verify_signature(b"secret", b"{}", Some(&sig)));
        assert!(!verify_signature(b"secret", body, None));
        assert!(!verify_signature(b"secret", body, Some("sha256=zz")));
        assert!(!verify_signature(
            b"secret",
            body,
            Some(&sig.replace("sha256=", "sha1="))
        ));
    }
}
