//! One webhook delivery over HTTP: the row's event as the body, signed,
//! within the endpoint's timeout. Any answer but 2xx, and any failure to
//! get one, is retried by the outbox (with backoff, then dead-lettered).
//! Webhook posts hold at most a quarter of the dispatcher's sends at once,
//! so endpoints that hang never take the slots customers' replies need.

use std::time::Duration;

use serde_json::Value;

use super::signature::Key;
use super::Webhooks;
use crate::db::outbox::Claimed;
use crate::whatsapp::sender::SendOutcome;

/// Posts webhook rows to their endpoints.
pub struct Poster {
    /// What the endpoints want (the sends' marks tell `message.sent`).
    pub webhooks: std::sync::Arc<Webhooks>,
    client: reqwest::Client,
    /// Each endpoint's name, URL, key, timeout and posts in flight at most
    /// (its share of the quarter: one slow endpoint never takes another's).
    endpoints: Vec<(String, String, Key, Duration, tokio::sync::Semaphore)>,
}

impl Poster {
    /// Every configured endpoint's URL, key and timeout (their secrets
    /// were checked when the configuration loaded); `sends`: the
    /// dispatcher's concurrent sends (`outbox.concurrency`).
    pub fn new(webhooks: &std::sync::Arc<Webhooks>, sends: usize) -> Self {
        let share = (sends / 4 / webhooks.endpoints().len().max(1)).max(1);
        let endpoints = webhooks
            .endpoints()
            .iter()
            .filter_map(|e| {
                let key = Key::parse(e.secret.expose()).ok()?;
                let slots = tokio::sync::Semaphore::new(share);
                Some((
                    e.name.clone(),
                    e.url.expose().to_string(),
                    key,
                    Duration::from_millis(e.timeout_ms),
                    slots,
                ))
            })
            .collect();
        // A redirect would turn the POST into a GET without its body.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            webhooks: webhooks.clone(),
            client,
            endpoints,
        }
    }

    /// Delivers `row`: `Sent` on a 2xx, `Retry` otherwise — also for a row
    /// whose endpoint is no longer configured, so it ends in the dead
    /// letters, to replay once it is again. `None`: every slot of its
    /// endpoint is busy; the row waits, its attempt uncounted.
    pub async fn post(&self, row: &Claimed) -> Option<SendOutcome> {
        let name = row.payload.get("webhook").and_then(Value::as_str).unwrap_or_default();
        let Some((_, url, key, timeout, slots)) = self.endpoints.iter().find(|(n, ..)| n == name) else {
            return Some(SendOutcome::Retry {
                reason: format!("webhook {name:?} is not configured"),
            });
        };
        let _slot = slots.try_acquire().ok()?;
        let mut event = row.payload.clone();
        if let Some(o) = event.as_object_mut() {
            o.remove("webhook");
        }
        let body = serde_json::to_vec(&event).unwrap_or_default();
        // The attempt's own time: a consumer refuses one over 5 minutes off.
        let at = chrono::Utc::now().timestamp();
        let sent = crate::telemetry::inject(self.client.post(url))
            .timeout(*timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &row.idempotency_key)
            .header("webhook-timestamp", at.to_string())
            .header("webhook-signature", key.sign(&row.idempotency_key, at, &body))
            .body(body)
            .send()
            .await;
        Some(match sent {
            // The "provider id": the event's own, with the answer.
            Ok(r) if r.status().is_success() => SendOutcome::Sent {
                provider_id: format!("{} {}", row.idempotency_key, r.status().as_u16()),
            },
            Ok(r) => SendOutcome::Retry {
                reason: format!("webhook {name} answered {}", r.status()),
            },
            Err(e) => SendOutcome::Retry {
                // Without the URL: it may hold a credential.
                reason: format!("webhook {name}: {}", e.without_url()),
            },
        })
    }
}
