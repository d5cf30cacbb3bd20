//! `[integrations]`: the team's own systems switchboard tells of what
//! happens — outgoing webhooks signed per the Standard Webhooks
//! specification.

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// The event kinds a webhook may subscribe to.
pub const EVENT_KINDS: [&str; 6] = [
    "message.received",
    "message.queued",
    "outcome.recorded",
    "handoff.requested",
    "handoff.returned",
    "timer.fired",
];

/// `[integrations]` settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrationSettings {
    pub webhooks: Vec<WebhookSettings>,
}

/// One `[[integrations.webhooks]]` endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Names its deliveries (each conversation's in order) and its breaker.
    pub name: String,
    pub url: String,
    /// `whsec_<base64 key>`, as the Standard Webhooks libraries take it.
    pub secret: Secret,
    /// The kinds it receives ([`EVENT_KINDS`]).
    pub events: Vec<String>,
    /// Milliseconds one delivery may take; slower is a failure, retried.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The signing key of a `whsec_<base64>` secret (the prefix optional, as
/// the Standard Webhooks libraries take it).
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(key) if !key.is_empty() => Ok(key),
        Ok(_) => Err("an empty key".into()),
        Err(e) => Err(format!("not base64: {e}")),
    }
}

/// The problems of the webhook list, each with its key.
pub fn problems(s: &IntegrationSettings) -> Vec<String> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, w) in s.webhooks.iter().enumerate() {
        let key = format!("integrations.webhooks[{i}]");
        let ok_name = !w.name.is_empty()
            && w.name.len() <= 40
            && w.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_name {
            out.push(format!("{key}.name: 1 to 40 letters, digits, '-' or '_'"));
        } else if !names.insert(w.name.as_str()) {
            out.push(format!("{key}.name: {:?} is given twice", w.name));
        }
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            out.push(format!("{key}.url: an http:// or https:// URL"));
        }
        if webhook_key(w.secret.expose()).is_err() {
            out.push(format!("{key}.secret: `whsec_` followed by a base64 key"));
        }
        if w.events.is_empty() {
            out.push(format!("{key}.events: at least one of {}", EVENT_KINDS.join(", ")));
        }
        for e in w.events.iter().filter(|e| !EVENT_KINDS.contains(&e.as_str())) {
            out.push(format!(
                "{key}.events: unknown kind {e:?} (known: {})",
                EVENT_KINDS.join(", ")
            ));
        }
        if !(100..=60_000).contains(&w.timeout_ms) {
            out.push(format!("{key}.timeout_ms: from 100 to 60000"));
        }
    }
    out
}
