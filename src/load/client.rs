//! The generator's HTTP side: where each request goes ([`Target`]), the
//! requests themselves (signed deliveries, agent API calls) and the
//! servers' counters read from `/metrics`.

use std::time::Duration;

use reqwest::RequestBuilder;
use serde_json::{json, Value};

use super::scenario::Action;
use crate::config::Secret;
use crate::whatsapp::webhook::sign;

/// Below actix-web's 5 s keep-alive: a connection the server is closing is
/// not picked for the next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A request's whole time at most; past it, it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to send, and the credentials it wants.
#[derive(Debug, Clone)]
pub struct Target {
    /// One server, or several processes of one deployment: each request
    /// goes to one of them at random (not by phone).
    pub bases: Vec<String>,
    pub app_secret: Option<Secret>,
    pub api_token: Option<Secret>,
    /// Send each phone's requests to one process (a hash of the phone), as
    /// a consistent-hash load balancer in front of the processes would.
    pub by_phone: bool,
}

impl Target {
    /// A base URL for the next request about `phone`.
    pub fn pick(&self, phone: &str) -> &str {
        use std::hash::{Hash, Hasher};
        match self.bases.len() {
            0 => "",
            1 => &self.bases[0],
            n if self.by_phone => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                phone.hash(&mut h);
                &self.bases[h.finish() as usize % n]
            }
            n => &self.bases[rand::random::<u64>() as usize % n],
        }
    }
}

/// The generator's HTTP client, and where it sends.
pub(super) struct Client {
    http: reqwest::Client,
    target: Target,
}

impl Client {
    /// A client that keeps up to `connections` idle connections per server,
    /// so the requests on the wire reuse them.
    pub(super) fn new(target: Target, connections: usize) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { http, target }
    }

    /// Sends one action: `Ok` when the server took it (a read of an unknown
    /// conversation too), else what went wrong, for the error samples.
    pub(super) async fn send(&self, action: &Action) -> Result<(), String> {
        match self.request(action).send().await {
            Ok(r) if r.status().is_success() || (matches!(action, Action::Read { .. }) && r.status() == 404) => Ok(()),
            Ok(r) => {
                let status = r.status();
                Err(format!("HTTP {status}: {}", r.text().await.unwrap_or_default()))
            }
            Err(e) => Err(format!("request failed: {e}")),
        }
    }

    /// The request an action makes, to the server [`Target::pick`] chooses.
    fn request(&self, action: &Action) -> RequestBuilder {
        let t = &self.target;
        match action {
            Action::Webhook { phone, id, text } => {
                let body = delivery_body(
                    json!([{"from": phone, "id": id, "timestamp": "1732320000", "type": "text", "text": {"body": text}}]),
                    json!([]),
                    phone,
                );
                self.webhook(phone, body)
            }
            Action::Status { phone, id, status } => {
                let body = delivery_body(
                    json!([]),
                    json!([{"id": id, "status": status, "timestamp": "1732320001", "recipient_id": phone}]),
                    phone,
                );
                self.webhook(phone, body)
            }
            Action::Agent { phone, text } => self.api(
                self.http
                    .post(format!("{}/api/conversations/{phone}/messages", t.pick(phone)))
                    .json(&json!({"text": text})),
            ),
            Action::Read { phone } => self.api(self.http.get(format!("{}/api/conversations/{phone}", t.pick(phone)))),
        }
    }

    /// A delivery to `/webhook`, signed as Meta signs it when the target
    /// has an app secret.
    fn webhook(&self, phone: &str, body: Vec<u8>) -> RequestBuilder {
        let mut r = self
            .http
            .post(format!("{}/webhook", self.target.pick(phone)))
            .header("content-type", "application/json");
        if let Some(s) = &self.target.app_secret {
            r = r.header("x-hub-signature-256", sign(s.expose().as_bytes(), &body));
        }
        r.body(body)
    }

    /// An agent API call, with the target's token when it has one.
    fn api(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.target.api_token {
            Some(tok) => r.bearer_auth(tok.expose()),
            None => r,
        }
    }
}

/// A delivery in the shape Meta sends.
pub fn delivery_body(messages: Value, statuses: Value, phone: &str) -> Vec<u8> {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1098765432"},
    });
    if messages.as_array().is_some_and(|m| !m.is_empty()) {
        value["contacts"] = json!([{"profile": {"name": "Carga"}, "wa_id": phone}]);
        value["messages"] = messages;
    }
    if statuses.as_array().is_some_and(|s| !s.is_empty()) {
        value["statuses"] = statuses;
    }
    serde_json::to_vec(&json!({"object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}]}))
    .unwrap_or_default()
}

/// Sums a counter over the servers' `/metrics` (0 for a server that does
/// not answer: the report still comes).
pub(super) async fn metric_sum(bases: &[String], name: &str) -> u64 {
    let mut total = 0;
    for b in bases {
        total += metric(b, name).await;
    }
    total
}

/// Reads a counter from one server's `/metrics`.
async fn metric(base: &str, name: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("{base}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}
