//! The generator's HTTP side: where each request goes ([`Target`]), the
//! requests themselves (signed deliveries shaped by `payloads`, agent API
//! calls naming the conversation's contact and number) and the servers'
//! counters read from `/metrics`.

use std::time::Duration;

use reqwest::RequestBuilder;
use serde_json::json;

use super::payloads;
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
    /// Send each conversation's requests to one process (a hash of its
    /// key), as a consistent-hash load balancer in front of the processes
    /// would.
    pub by_phone: bool,
}

impl Target {
    /// Where the next request about conversation `key` goes first: its
    /// process (by phone) or any.
    fn slot(&self, key: &str) -> usize {
        use std::hash::{Hash, Hasher};
        if self.by_phone {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            h.finish() as usize
        } else {
            rand::random::<u64>() as usize
        }
    }

    /// The base URL of try `nth` from `slot`: the next process after one
    /// that refused the connection, as a balancer retries elsewhere.
    fn base(&self, slot: usize, nth: usize) -> &str {
        match self.bases.len() {
            0 => "",
            n => &self.bases[slot.wrapping_add(nth) % n],
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
    /// A refused connection (a process stopping or starting) is tried on
    /// the next process, as a balancer in front of them would; so is a
    /// delivery whose connection a stopping process closed under it (the
    /// provider delivers again; the inbox dedupes).
    pub(super) async fn send(&self, action: &Action) -> Result<(), String> {
        let slot = self.target.slot(&action_key(action));
        let tries = self.target.bases.len().max(1);
        for nth in 0..tries {
            let answer = self.request(action, self.target.base(slot, nth)).send().await;
            return match answer {
                Ok(r) if r.status().is_success() || (matches!(action, Action::Read { .. }) && r.status() == 404) => {
                    Ok(())
                }
                Ok(r) => {
                    let status = r.status();
                    Err(format!("HTTP {status}: {}", r.text().await.unwrap_or_default()))
                }
                Err(e) if retried_elsewhere(action, &e) && nth + 1 < tries => continue,
                Err(e) => Err(format!("request failed: {e}")),
            };
        }
        Err("no server to send to".into())
    }

    /// The request an action makes, to `base` (see [`Target::base`]).
    fn request(&self, action: &Action, base: &str) -> RequestBuilder {
        match action {
            Action::Webhook { to, messages } => {
                let messages = messages.iter().map(|m| payloads::message(to, m)).collect();
                self.webhook(base, payloads::delivery_body(to, messages, Vec::new()))
            }
            Action::Status { to, id, status } => {
                let statuses = vec![payloads::status(to, id, status)];
                self.webhook(base, payloads::delivery_body(to, Vec::new(), statuses))
            }
            Action::Agent { to, text } => self.api(
                self.http
                    .post(format!(
                        "{}/api/conversations/{}/messages{}",
                        base,
                        to.contact.id(),
                        to.query()
                    ))
                    .json(&json!({"text": text})),
            ),
            Action::Read { to } => {
                self.api(
                    self.http
                        .get(format!("{}/api/conversations/{}{}", base, to.contact.id(), to.query())),
                )
            }
        }
    }

    /// A delivery to `base`'s `/webhook`, signed as Meta signs it when the
    /// target has an app secret.
    fn webhook(&self, base: &str, body: Vec<u8>) -> RequestBuilder {
        let mut r = self
            .http
            .post(format!("{base}/webhook"))
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

/// The conversation an action is about (what a balancer by phone hashes).
fn action_key(action: &Action) -> String {
    match action {
        Action::Webhook { to, .. } | Action::Status { to, .. } | Action::Agent { to, .. } | Action::Read { to } => {
            to.key()
        }
    }
}

/// Whether a failed request goes to the next process: a refused connection
/// always; a delivery (webhooks are idempotent) also when its connection
/// was closed before the answer — not when it timed out.
fn retried_elsewhere(action: &Action, e: &reqwest::Error) -> bool {
    let delivery = matches!(action, Action::Webhook { .. } | Action::Status { .. });
    e.is_connect() || (delivery && e.is_request() && !e.is_timeout())
}
