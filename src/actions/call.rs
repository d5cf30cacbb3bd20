//! One action call: attempts through the breaker and the bulkhead, each
//! within the action's timeout, retried while a retry may pass. A 2xx
//! answer's JSON object fields are the result; a 4xx is the backend's no
//! (not retried, and a healthy backend for the breaker).

use std::sync::atomic::Ordering;

use serde_json::{Map, Value};

use super::{Actions, Runtime};
use crate::breaker::CallResult;
use crate::flow::action::{retry_pause, slot_values, Answer};

/// How one attempt ended.
enum Attempt {
    Answered(Map<String, Value>),
    /// Not worth repeating: the backend said no, or answered nonsense.
    Refused(String, CallResult),
    /// May pass on a later attempt.
    Failed(String),
}

impl Actions {
    /// Calls action `name` for conversation `conversation` with its slot
    /// values from `data`; `key` is its `Idempotency-Key` (the same for
    /// every attempt, and for a repeat after a crash).
    pub async fn call(&self, name: &str, conversation: &str, data: &Value, key: &str) -> Answer {
        use tracing::Instrument;
        let span = tracing::info_span!(target: crate::telemetry::TARGET, "action", action = name);
        self.attempts(name, conversation, data, key).instrument(span).await
    }

    /// [`Actions::call`]'s attempts, within its retries.
    async fn attempts(&self, name: &str, conversation: &str, data: &Value, key: &str) -> Answer {
        let Some(rt) = self.by_name.get(name) else {
            return Err(format!("action `{name}` is not declared"));
        };
        let url = fill_url(&rt.url, data)?;
        let body = Value::Object(slot_values(data));
        let mut last = String::new();
        for attempt in 0..=rt.action.retries {
            if attempt > 0 {
                tokio::time::sleep(retry_pause(attempt - 1)).await;
            }
            let Ok(permit) = rt.breaker.try_acquire() else {
                rt.counts.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(format!("breaker of action `{name}` is open"));
            };
            match self.attempt(rt, &url, &body, key, conversation).await {
                Attempt::Answered(fields) => {
                    permit.record(CallResult::Success);
                    rt.counts.succeeded.fetch_add(1, Ordering::Relaxed);
                    return Ok(fields);
                }
                Attempt::Refused(why, health) => {
                    permit.record(health);
                    rt.counts.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(action = name, reason = %why, "action refused");
                    return Err(why);
                }
                Attempt::Failed(why) => {
                    permit.record(CallResult::Failure);
                    tracing::warn!(action = name, attempt, reason = %why, "action attempt failed");
                    last = why;
                }
            }
        }
        rt.counts.failed.fetch_add(1, Ordering::Relaxed);
        Err(last)
    }

    async fn attempt(&self, rt: &Runtime, url: &str, body: &Value, key: &str, conversation: &str) -> Attempt {
        // Who the call is about, beside the slot values.
        let (number, contact) = self.numbers.split(conversation);
        let mut req = crate::telemetry::inject(self.client.request(rt.action.method.clone(), url))
            .headers(rt.headers.clone())
            .header("Idempotency-Key", key)
            .header("Switchboard-Contact", contact);
        if let Some(n) = number {
            req = req.header("Switchboard-Number", n);
        }
        if !matches!(rt.action.method, reqwest::Method::GET | reqwest::Method::DELETE) {
            req = req.json(body);
        }
        let bulkhead = rt.bulkhead.clone();
        let sent = tokio::time::timeout(rt.action.timeout, async move {
            // The wait for a place counts against the timeout.
            let _place = bulkhead.acquire_owned().await;
            let resp = req.send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        })
        .await;
        let (status, bytes) = match sent {
            Err(_) => return Attempt::Failed(format!("no answer within {} ms", rt.action.timeout.as_millis())),
            // Without the URL: it may hold a secret or the customer's values.
            Ok(Err(e)) => return Attempt::Failed(format!("request failed: {}", e.without_url())),
            Ok(Ok(answer)) => answer,
        };
        let code = status.as_u16();
        if status.is_server_error() || code == 408 || code == 429 {
            return Attempt::Failed(format!("answered {status}"));
        }
        if !status.is_success() {
            return Attempt::Refused(format!("answered {status}"), CallResult::Success);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Attempt::Answered(Map::new());
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(fields)) => Attempt::Answered(fields),
            _ => Attempt::Refused(format!("answered {status} without a JSON object"), CallResult::Failure),
        }
    }
}

/// `url` with `{slot}` placeholders filled from `data`, percent-encoded. A
/// value of dots alone is refused: in a path it would climb (`..`), and
/// URL parsers read `%2e%2e` as `..` too.
fn fill_url(url: &str, data: &Value) -> Result<String, String> {
    let mut out = url.to_string();
    for (k, v) in slot_values(data) {
        let placeholder = format!("{{{k}}}");
        if !out.contains(&placeholder) {
            continue;
        }
        let shown = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        if !shown.is_empty() && shown.chars().all(|c| c == '.') {
            return Err(format!("slot `{k}` is only dots: not placed in a URL"));
        }
        out = out.replace(&placeholder, &encode(&shown));
    }
    Ok(out)
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn slot_values_fill_the_url_encoded() {
        let data = json!({"sap": "12 34/5", "n": 7, "_x": "no"});
        assert_eq!(
            super::fill_url("http://crm/sap/{sap}?n={n}&x={_x}", &data).unwrap(),
            "http://crm/sap/12%2034%2F5?n=7&x={_x}"
        );
        let climbing = json!({"id": ".."});
        assert!(super::fill_url("http://crm/tickets/{id}/close", &climbing).is_err());
    }
}
