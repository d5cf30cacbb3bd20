//! Sends a plan open-loop (each request at its intended time, whatever the
//! answers) or closed-loop (`--max`), and measures ack and end-to-end
//! latency from the intended send time into HdrHistogram.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::scenario::{Action, Planned, SCRIPT};
use crate::config::Secret;
use crate::whatsapp::webhook::sign;

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

/// Requests in flight at most (the generator's own memory bound).
const MAX_IN_FLIGHT: usize = 20_000;

/// What a run measured.
pub struct Measured {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub duplicates_sent: u64,
    pub ack_us: Histogram<u64>,
    pub e2e_us: Histogram<u64>,
    /// Provider ids acked with 200.
    pub acked_ids: Vec<String>,
    /// Distinct messages seen applied (through the event stream).
    pub applied: u64,
    /// Times the event stream was lost (the subscriber fell behind) and
    /// followed again: messages applied in between have no end-to-end time.
    pub event_reconnects: u64,
    /// From the first intended send to the last message seen applied (or acked).
    pub elapsed: Duration,
    /// Per second of intended send time.
    pub timeline: Vec<Second>,
    pub error_samples: Vec<String>,
}

/// What one second of intended send time saw.
pub struct Second {
    pub sent: u64,
    pub acked: u64,
    /// Ack latency of the requests acked (µs).
    pub ack: Histogram<u32>,
    /// End-to-end latency of the messages seen applied (µs).
    pub e2e: Histogram<u32>,
}

impl Second {
    fn new() -> Self {
        Self {
            sent: 0,
            acked: 0,
            ack: second_histogram(),
            e2e: second_histogram(),
        }
    }
}

/// Two of these per second of a run: 1 µs .. 60 s (longer waits count as
/// 60 s), 2 significant digits, 32-bit counts — about 10 KB each, where the
/// whole run's histograms take about 170 KB each.
fn second_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

struct Shared {
    client: reqwest::Client,
    target: Target,
    ack: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
    per_second: Mutex<Vec<Second>>,
    acked_ids: Mutex<Vec<String>>,
    /// Each message sent: its intended send time until it is seen applied,
    /// then `None` (a redelivery sent after that waits for nothing; it used
    /// to wait, unseen, until the drain ran out).
    waiting: DashMap<String, Option<Instant>>,
    applied: AtomicU64,
    /// Times the event stream was lost and followed again.
    event_reconnects: AtomicU64,
    last_applied: Mutex<Option<Instant>>,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
    in_flight: AtomicU64,
    /// Requests on the wire at most (the generator's connections); the
    /// others wait their turn, their latency counted from the intended
    /// send time all the same.
    wire: tokio::sync::Semaphore,
    start: Instant,
}

impl Shared {
    fn new(target: Target, connections: usize) -> Self {
        Self {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(connections)
                // Below actix-web's 5 s keep-alive: a connection the server
                // is closing is not picked for the next request (5 of
                // 120,000 requests of one 2,000 msg/s run failed with
                // "error sending request", the keep-alive race's symptom).
                .pool_idle_timeout(Duration::from_secs(4))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            target,
            ack: Mutex::new(histogram()),
            e2e: Mutex::new(histogram()),
            per_second: Mutex::new(Vec::new()),
            acked_ids: Mutex::new(Vec::new()),
            waiting: DashMap::new(),
            applied: AtomicU64::new(0),
            event_reconnects: AtomicU64::new(0),
            last_applied: Mutex::new(None),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            error_samples: Mutex::new(Vec::new()),
            in_flight: AtomicU64::new(0),
            wire: tokio::sync::Semaphore::new(connections),
            start: Instant::now() + Duration::from_millis(200),
        }
    }

    fn second(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.start).as_secs() as usize
    }

    /// Updates the second `at` falls in.
    fn in_second(&self, at: Instant, f: impl FnOnce(&mut Second)) {
        let sec = self.second(at);
        let mut ps = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
        while ps.len() <= sec {
            ps.push(Second::new());
        }
        f(&mut ps[sec]);
    }

    fn record(&self, intended: Instant, ok: bool, err: Option<String>) {
        let now = Instant::now();
        let us = now.saturating_duration_since(intended).as_micros().max(1) as u64;
        self.in_second(intended, |s| {
            s.sent += 1;
            if ok {
                s.acked += 1;
                s.ack.saturating_record(us);
            }
        });
        if ok {
            self.acked.fetch_add(1, Ordering::Relaxed);
            let _ = self.ack.lock().unwrap_or_else(|p| p.into_inner()).record(us);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let mut s = self.error_samples.lock().unwrap_or_else(|p| p.into_inner());
            if s.len() < 10 {
                s.push(err.unwrap_or_default());
            }
        }
    }

    async fn execute(self: Arc<Self>, action: Action, intended: Instant) {
        // Held until the answer is read: one connection per request on the wire.
        let _wire = self.wire.acquire().await;
        let t = &self.target;
        let result = match &action {
            Action::Webhook { phone, id, text } => {
                self.waiting.entry(id.clone()).or_insert(Some(intended));
                let body = delivery_body(
                    json!([{"from": phone, "id": id, "timestamp": "1732320000", "type": "text", "text": {"body": text}}]),
                    json!([]),
                    phone,
                );
                self.post_webhook(phone, body).await
            }
            Action::Status { phone, id, status } => {
                let body = delivery_body(
                    json!([]),
                    json!([{"id": id, "status": status, "timestamp": "1732320001", "recipient_id": phone}]),
                    phone,
                );
                self.post_webhook(phone, body).await
            }
            Action::Agent { phone, text } => {
                let mut r = self
                    .client
                    .post(format!("{}/api/conversations/{phone}/messages", t.pick(phone)))
                    .json(&json!({"text": text}));
                if let Some(tok) = &t.api_token {
                    r = r.bearer_auth(tok.expose());
                }
                r.send().await
            }
            Action::Read { phone } => {
                let mut r = self.client.get(format!("{}/api/conversations/{phone}", t.pick(phone)));
                if let Some(tok) = &t.api_token {
                    r = r.bearer_auth(tok.expose());
                }
                r.send().await
            }
        };
        let (ok, err) = match result {
            Ok(r) if r.status().is_success() || (matches!(action, Action::Read { .. }) && r.status() == 404) => {
                (true, None)
            }
            Ok(r) => {
                let status = r.status();
                (
                    false,
                    Some(format!("HTTP {status}: {}", r.text().await.unwrap_or_default())),
                )
            }
            Err(e) => (false, Some(format!("request failed: {e}"))),
        };
        if ok {
            if let Action::Webhook { id, .. } = &action {
                self.acked_ids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(id.clone());
            }
        }
        self.record(intended, ok, err);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    async fn post_webhook(&self, phone: &str, body: Vec<u8>) -> reqwest::Result<reqwest::Response> {
        let mut r = self
            .client
            .post(format!("{}/webhook", self.target.pick(phone)))
            .header("content-type", "application/json");
        if let Some(s) = &self.target.app_secret {
            r = r.header("x-hub-signature-256", sign(s.expose().as_bytes(), &body));
        }
        r.body(body).send().await
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

/// Follows `/api/events`, recording each message's end-to-end latency when
/// its transition is published (the reply is committed by then). The server
/// drops a subscriber that falls behind; the follower then connects again
/// at once (the messages applied meanwhile are not timed; the checker still
/// counts them) and counts the reconnection.
async fn follow_events(shared: Arc<Shared>) {
    // Its own client: the request timeout of the others would cut the stream.
    let client = reqwest::Client::new();
    // With several processes, the first one relays every process's events.
    let base = shared.target.bases.first().cloned().unwrap_or_default();
    let mut connected_once = false;
    loop {
        let mut req = client.get(format!("{base}/api/events"));
        if let Some(t) = &shared.target.api_token {
            req = req.bearer_auth(t.expose());
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                if connected_once {
                    shared.event_reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_once = true;
                read_events(&shared, resp).await;
            }
            _ => {}
        }
        // Lost (or not yet up): try again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_events(shared: &Shared, mut resp: reqwest::Response) {
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let Some(id) = event.get("provider_message_id").and_then(Value::as_str) else {
                continue;
            };
            // Marked seen whatever comes later (one lock on the key: no race
            // with a redelivery being sent).
            let intended = shared.waiting.entry(id.to_string()).or_insert(None).take();
            if let Some(intended) = intended {
                let now = Instant::now();
                let us = now.saturating_duration_since(intended).as_micros().max(1) as u64;
                let _ = shared.e2e.lock().unwrap_or_else(|p| p.into_inner()).record(us);
                shared.in_second(intended, |s| s.e2e.saturating_record(us));
                shared.applied.fetch_add(1, Ordering::Relaxed);
                *shared.last_applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            }
        }
    }
}

/// Runs `plan` open-loop over at most `connections` requests on the wire
/// at once (as wrk2 does: a request due while all are busy waits, and its
/// latency counts from when it was due); or, with `closed_workers`, that
/// many workers sending back-to-back for `duration`. Waits up to `drain`
/// after the last send for messages to be applied.
pub async fn drive(
    target: Target,
    plan: Vec<Planned>,
    closed_workers: Option<(usize, Duration, usize)>,
    connections: usize,
    drain: Duration,
    progress: bool,
) -> Measured {
    // Closed loop: each worker has its connection.
    let connections = closed_workers
        .map_or(connections, |(w, _, _)| w.max(connections))
        .max(1);
    let shared = Arc::new(Shared::new(target, connections));
    let events = actix_web::rt::spawn(follow_events(shared.clone()));
    let reporter = progress.then(|| actix_web::rt::spawn(report_progress(shared.clone())));
    let duplicates = plan.iter().filter(|p| p.duplicate).count() as u64;
    let mut tasks = Vec::new();
    match closed_workers {
        None => {
            for p in plan {
                let intended = shared.start + p.at;
                tokio::time::sleep_until(intended.into()).await;
                while shared.in_flight.load(Ordering::Relaxed) as usize >= MAX_IN_FLIGHT {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                shared.sent.fetch_add(1, Ordering::Relaxed);
                shared.in_flight.fetch_add(1, Ordering::Relaxed);
                tasks.push(actix_web::rt::spawn(shared.clone().execute(p.action, intended)));
            }
        }
        Some((workers, duration, phones)) => {
            tokio::time::sleep_until(shared.start.into()).await;
            let end = shared.start + duration;
            for w in 0..workers {
                let shared = shared.clone();
                tasks.push(actix_web::rt::spawn(async move {
                    let mut n = 0usize;
                    while Instant::now() < end {
                        let p = (w + n * workers) % phones.max(1);
                        let action = Action::Webhook {
                            phone: super::scenario::phone(p),
                            id: format!("wamid.max.{w}.{n}"),
                            text: SCRIPT[(n / phones.max(1)) % SCRIPT.len()].to_string(),
                        };
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        shared.in_flight.fetch_add(1, Ordering::Relaxed);
                        shared.clone().execute(action, Instant::now()).await;
                        n += 1;
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let sends_done = Instant::now();
    // Wait for acked messages to show up applied (bounded).
    let deadline = sends_done + drain;
    while Instant::now() < deadline {
        let acked: Vec<String> = shared.acked_ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if acked
            .iter()
            .all(|id| shared.waiting.get(id).is_none_or(|w| w.is_none()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    events.abort();
    if let Some(r) = reporter {
        r.abort();
    }
    let last = shared
        .last_applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(sends_done);
    let timeline = std::mem::take(&mut *shared.per_second.lock().unwrap_or_else(|p| p.into_inner()));
    // Distinct: a redelivered message is acked more than once.
    let acked_ids: HashSet<String> = shared
        .acked_ids
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let ack_us = shared.ack.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let e2e_us = shared.e2e.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let error_samples = shared.error_samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Measured {
        sent: shared.sent.load(Ordering::Relaxed),
        acked: shared.acked.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        duplicates_sent: duplicates,
        ack_us,
        e2e_us,
        applied: shared.applied.load(Ordering::Relaxed),
        event_reconnects: shared.event_reconnects.load(Ordering::Relaxed),
        elapsed: last.max(sends_done).saturating_duration_since(shared.start),
        acked_ids: acked_ids.into_iter().collect(),
        timeline,
        error_samples,
    }
}

/// One line a second on stderr: elapsed, rate, in flight, p99 so far, errors.
async fn report_progress(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_sent = 0;
    loop {
        tick.tick().await;
        let sent = shared.sent.load(Ordering::Relaxed);
        let p99 = shared
            .ack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .value_at_quantile(0.99);
        eprintln!(
            "t={:>4}s  rate={:>6}/s  in-flight={:>5}  ack p99={:>8.2} ms  applied={:>7}  errors={}",
            Instant::now().saturating_duration_since(shared.start).as_secs(),
            sent - last_sent,
            shared.in_flight.load(Ordering::Relaxed),
            p99 as f64 / 1000.0,
            shared.applied.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
        last_sent = sent;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server whose event stream ends after one event (as the real one
    /// drops a subscriber that falls behind): the follower connects again
    /// and times the messages announced on the new stream.
    #[tokio::test]
    async fn the_event_follower_connects_again_when_the_stream_is_lost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (third_tx, third_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            for id in ["wamid.a", "wamid.b"] {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut req = [0u8; 4096];
                let _ = sock.read(&mut req).await.unwrap();
                let body = format!("event: transition\ndata: {{\"provider_message_id\":\"{id}\"}}\n\n");
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                sock.write_all(format!("{head}{body}").as_bytes()).await.unwrap();
                // Closing ends the stream.
            }
            // A third connection comes after the second stream was read
            // to its end; it is left unanswered.
            let (sock, _) = listener.accept().await.unwrap();
            let _ = third_tx.send(sock);
        });
        let target = Target {
            bases: vec![base],
            app_secret: None,
            api_token: None,
            by_phone: false,
        };
        let shared = Arc::new(Shared::new(target, 1));
        for id in ["wamid.a", "wamid.b"] {
            shared.waiting.insert(id.to_string(), Some(Instant::now()));
        }
        let follower = tokio::spawn(follow_events(shared.clone()));
        let _held = tokio::time::timeout(Duration::from_secs(30), third_rx)
            .await
            .expect("the follower came back a second time")
            .unwrap();
        follower.abort();
        assert_eq!(shared.applied.load(Ordering::Relaxed), 2);
        assert!(shared.waiting.iter().all(|w| w.is_none()), "both seen applied");
        assert_eq!(shared.event_reconnects.load(Ordering::Relaxed), 1);
        assert_eq!(shared.e2e.lock().unwrap().len(), 2);
    }
}
