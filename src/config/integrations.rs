//! `[integrations]`: the team's own systems switchboard tells of what
//! happens — outgoing webhooks signed per the Standard Webhooks
//! specification.

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// The event kinds a webhook may subscribe to (the interface contract's
/// names; an empty list is all of them).
pub const EVENT_KINDS: [&str; 7] = [
    "message.received",
    "message.sent",
    "message.status",
    "outcome",
    "handoff",
    "timer",
    "dead_letter",
];

/// `[integrations]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrationSettings {
    pub webhooks: Vec<WebhookSettings>,
    /// Name → value: what flow actions' `{ secret = "NAME" }` headers and
    /// URLs take (tokens stay out of flow files; `config check` redacts them).
    pub secrets: std::collections::BTreeMap<String, Secret>,
    /// The tuning of each flow action's breaker (`action:<name>`).
    pub action_breaker: super::BreakerSettings,
    /// Seconds the event feed keeps an event (`GET /api/events` with
    /// `Last-Event-ID` replays what is kept); 0: no feed, the streams are
    /// live only.
    pub events_keep_s: u64,
}

impl Default for IntegrationSettings {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            secrets: Default::default(),
            action_breaker: Default::default(),
            // A day: a consumer down overnight still resumes.
            events_keep_s: 86_400,
        }
    }
}

impl IntegrationSettings {
    /// The endpoints with their names given (`webhook<N>` when left out).
    pub fn named(&self) -> Vec<WebhookSettings> {
        let mut named = self.webhooks.clone();
        for (i, w) in named.iter_mut().enumerate().filter(|(_, w)| w.name.is_empty()) {
            w.name = format!("webhook{}", i + 1);
        }
        named
    }
}

impl WebhookSettings {
    /// Whether it receives events of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|k| k == kind)
    }
}

/// One `[[integrations.webhooks]]` endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Names its deliveries (each conversation's in order); default
    /// `webhook<N>`, N its place in the list from 1.
    #[serde(default)]
    pub name: String,
    /// A secret: a URL often carries a token (`config check` shows it redacted).
    pub url: Secret,
    /// `whsec_<base64 key>`, as the Standard Webhooks libraries take it.
    pub secret: Secret,
    /// The kinds it receives ([`EVENT_KINDS`]; empty: all).
    #[serde(default)]
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

/// The problems of the webhook list, each with its key (`lease_ms`: the
/// outbox's, which a delivery's timeout must stay well under, or a slow
/// one would be claimed again and posted twice at once).
pub fn problems(s: &IntegrationSettings, lease_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, w) in s.named().iter().enumerate() {
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
        let url = w.url.expose();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            out.push(format!("{key}.url: an http:// or https:// URL"));
        }
        if webhook_key(w.secret.expose()).is_err() {
            out.push(format!("{key}.secret: `whsec_` followed by a base64 key"));
        }
        for e in w.events.iter().filter(|e| !EVENT_KINDS.contains(&e.as_str())) {
            out.push(format!(
                "{key}.events: unknown kind {e:?} (known: {})",
                EVENT_KINDS.join(", ")
            ));
        }
        if !(100..=60_000).contains(&w.timeout_ms) || w.timeout_ms as i64 * 2 >= lease_ms {
            out.push(format!(
                "{key}.timeout_ms: from 100 to 60000, and under half of outbox.lease_ms"
            ));
        }
    }
    out
}
