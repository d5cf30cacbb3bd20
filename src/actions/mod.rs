//! Flow actions at run time: each declared action (see
//! [`crate::flow::action`]) with its resolved URL and headers, its circuit
//! breaker (`action:<name>`, listed and forced with the others) and its
//! bulkhead. Called by the session actor like the model: outside every
//! transaction and pooled connection, within the action's timeout.
//!
//! - `call`: one call — attempts, retries, what an answer means.

mod call;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::config::IntegrationSettings;
use crate::flow::action::{Action, Text};
use crate::flow::Flows;

/// Every flow's actions, by name.
#[derive(Default)]
pub struct Actions {
    by_name: HashMap<String, Runtime>,
    client: reqwest::Client,
    /// Splits a conversation's key into its number and contact (sent as headers).
    numbers: Arc<crate::numbers::Numbers>,
}

/// One action, ready to call.
struct Runtime {
    action: Action,
    /// With its secret resolved; `{slot}` placeholders left for each call.
    url: String,
    headers: HeaderMap,
    breaker: CircuitBreaker,
    /// `concurrency` permits; an `Arc`, as each attempt takes an owned one.
    bulkhead: Arc<Semaphore>,
    counts: Counts,
}

/// An action's calls so far; atomic: counted by the calls, read by `/metrics`.
#[derive(Default)]
struct Counts {
    succeeded: AtomicU64,
    /// The backend answered no (4xx) or something unusable.
    refused: AtomicU64,
    /// Failed after its retries (timeouts, 5xx, no connection).
    failed: AtomicU64,
    /// Refused by the open breaker, without a request.
    rejected: AtomicU64,
}

/// One action's figures, for `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActionFigures {
    pub action: String,
    pub succeeded: u64,
    pub refused: u64,
    pub failed: u64,
    pub rejected: u64,
}

impl Actions {
    /// Every action of every flow, its secrets taken from `[integrations.secrets]`.
    /// Refused: a secret not configured, one name declared differently by two
    /// flows, or an action that could outlast half of `lease_ms` (another
    /// process would take the message over while it runs).
    pub fn new(flows: &Flows, settings: &IntegrationSettings, lease_ms: u64) -> Result<Self, String> {
        let mut by_name: HashMap<String, Runtime> = HashMap::new();
        for flow in flows.all() {
            for a in flow.actions.values() {
                if let Some(seen) = by_name.get(&a.name) {
                    if seen.action != *a {
                        return Err(format!("action `{}` is declared differently by two flows", a.name));
                    }
                    continue;
                }
                if a.longest().as_millis() as u64 * 2 > lease_ms {
                    return Err(format!(
                        "action `{}` may take {} ms (timeout × attempts): keep it under half of engine.inbox_lease_ms ({lease_ms})",
                        a.name,
                        a.longest().as_millis()
                    ));
                }
                by_name.insert(a.name.clone(), runtime(a, settings)?);
            }
        }
        // A redirect would turn a POST into a GET without its body.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client for actions: {e}"))?;
        Ok(Self {
            by_name,
            client,
            numbers: flows.numbers().clone(),
        })
    }

    /// Each action's breaker (clones sharing state).
    pub fn breakers(&self) -> Vec<CircuitBreaker> {
        self.by_name.values().map(|r| r.breaker.clone()).collect()
    }

    /// Each action's calls so far, by name.
    pub fn figures(&self) -> Vec<ActionFigures> {
        let mut all: Vec<ActionFigures> = self
            .by_name
            .values()
            .map(|r| ActionFigures {
                action: r.action.name.clone(),
                succeeded: r.counts.succeeded.load(Ordering::Relaxed),
                refused: r.counts.refused.load(Ordering::Relaxed),
                failed: r.counts.failed.load(Ordering::Relaxed),
                rejected: r.counts.rejected.load(Ordering::Relaxed),
            })
            .collect();
        all.sort_by(|a, b| a.action.cmp(&b.action));
        all
    }
}

/// `a` with its secrets resolved and its breaker made.
fn runtime(a: &Action, settings: &IntegrationSettings) -> Result<Runtime, String> {
    let resolve = |t: &Text| match t {
        Text::Plain(v) => Ok(v.clone()),
        Text::Secret { secret } => settings
            .secrets
            .get(secret)
            .map(|s| s.expose().to_string())
            .ok_or_else(|| {
                format!(
                    "action `{}` names secret `{secret}`, missing from [integrations.secrets]",
                    a.name
                )
            }),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &a.headers {
        let value = resolve(value)?;
        let bad = |e: String| format!("action `{}`: header `{name}`: {e}", a.name);
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let mut value = HeaderValue::from_str(&value).map_err(|e| bad(e.to_string()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    // Breaker names are static: one per action, made once at start.
    let name: &'static str = Box::leak(format!("action:{}", a.name).into_boxed_str());
    let settings: BreakerSettings = settings.action_breaker.clone();
    Ok(Runtime {
        action: a.clone(),
        url: resolve(&a.url)?,
        headers,
        breaker: CircuitBreaker::new(name, settings),
        bulkhead: Arc::new(Semaphore::new(a.concurrency)),
        counts: Counts::default(),
    })
}
