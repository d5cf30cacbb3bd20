//! Prometheus metrics: HTTP requests and latency by route and status, and
//! the engine's own figures, read at scrape time. One metric per quantity,
//! its unit in its name; counters end in `_total` (`promtool check metrics`
//! passes on the whole exposition, see `tests/http.rs`).

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::AppState;
use crate::breaker::BreakerState;
use crate::engine::Engine;
use crate::engine::{CallDurations, CALL_DURATION_BUCKETS};

/// A struct of metrics of one kind (`IntCounter`, `IntGauge`), each
/// registered under its name and help.
macro_rules! metric_group {
    ($(#[$doc:meta])* $group:ident: $kind:ident; $($field:ident => $name:literal, $help:literal;)*) => {
        $(#[$doc])*
        struct $group { $($field: $kind,)* }
        impl $group {
            fn new(r: &Registry) -> prometheus::Result<Self> {
                Ok(Self { $($field: {
                    let m = $kind::new($name, $help)?;
                    r.register(Box::new(m.clone()))?;
                    m
                },)* })
            }
        }
    };
}

metric_group! {
    /// Engine counters mirrored at scrape time.
    EngineCounters: IntCounter;
    deliveries => "switchboard_deliveries_total", "Inbound messages accepted (first deliveries).";
    duplicates => "switchboard_duplicate_deliveries_total", "Redeliveries of messages already accepted.";
    processed => "switchboard_messages_processed_total", "Inbound messages applied.";
    conflicts => "switchboard_version_conflicts_total", "Versioned writes that found another version.";
    retries => "switchboard_retries_total", "Steps retried after a conflict or a transient error.";
    crashes => "switchboard_session_crashes_total", "Session actor crashes.";
    quarantined => "switchboard_dead_letters_inbound_total", "Inbound messages moved to dead letters.";
    batches => "switchboard_commit_batches_total", "Group-commit transactions.";
    batched_writes => "switchboard_committed_steps_total", "Steps written by group-commit transactions.";
    registration_batches => "switchboard_registration_batches_total", "Inbox registration statements (each a commit).";
    ai_calls => "switchboard_model_calls_total", "Model calls.";
    ai_timeouts => "switchboard_model_timeouts_total", "Model calls over their timeout.";
    ai_errors => "switchboard_model_errors_total", "Model calls that failed.";
    ai_fallbacks => "switchboard_model_fallbacks_total", "Answers given by the fallback.";
    ai_rejected => "switchboard_model_rejected_total", "Model calls refused by the open breaker.";
    sent => "switchboard_outbound_sent_total", "Outbound messages sent.";
    send_retries => "switchboard_outbound_retries_total", "Outbound sends to retry.";
    send_failed => "switchboard_outbound_failed_total", "Outbound messages failed permanently.";
    send_dead => "switchboard_dead_letters_outbound_total", "Outbound messages moved to dead letters.";
    pool_timeouts => "switchboard_pool_checkout_timeouts_total", "Database pool checkouts that timed out.";
}

metric_group! {
    /// Engine levels, set at scrape time.
    EngineGauges: IntGauge;
    live_sessions => "switchboard_live_sessions", "Session actors alive (conversations held in memory).";
    mailbox => "switchboard_mailbox_messages", "Messages sent to live session actors and not yet answered.";
    in_flight => "switchboard_in_flight_messages", "Accepted messages not yet applied, plus agent actions running.";
    pool_connections => "switchboard_pool_connections", "Database pool connections open, idle or in use.";
    pool_idle => "switchboard_pool_connections_idle", "Database pool connections open and idle.";
    pool_in_use => "switchboard_pool_connections_in_use", "Database pool connections checked out.";
    pool_max => "switchboard_pool_connections_max", "Most connections the database pool opens.";
    pool_waiting => "switchboard_pool_checkouts_waiting", "Database pool checkouts waiting for a connection.";
    outbox_backlog => "switchboard_outbox_backlog", "Outbound messages not yet delivered, as last counted.";
}

/// The model call histogram's name. It is rendered from the AI actor's own
/// buckets: the actor records every call, and the engine's figures reach
/// this registry only as a snapshot.
const MODEL_CALL_DURATION: &str = "switchboard_model_call_duration_seconds";

/// `switchboard_model_call_duration_seconds` from a snapshot's buckets.
fn model_call_duration(d: &CallDurations) -> MetricFamily {
    let buckets: Vec<proto::Bucket> = CALL_DURATION_BUCKETS
        .iter()
        .zip(d.cumulative)
        .map(|(&upper, count)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(upper);
            b.set_cumulative_count(count);
            b
        })
        .collect();
    let mut h = proto::Histogram::default();
    h.set_sample_count(d.count);
    h.set_sample_sum(d.sum_ns as f64 / 1e9);
    h.set_bucket(buckets);
    let mut m = proto::Metric::default();
    m.set_histogram(h);
    let mut f = MetricFamily::default();
    f.set_name(MODEL_CALL_DURATION.to_string());
    f.set_help("Model call duration, bulkhead wait included; a timed-out call counts its timeout.".to_string());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(vec![m]);
    f
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    rejected: IntCounterVec,
    engine: EngineCounters,
    levels: EngineGauges,
    /// Reads the read-replica router sent, by the server that answered.
    routed_reads: IntCounterVec,
    breakers: IntGaugeVec,
    /// Webhook ack latency of the last few seconds, for the console.
    acks: std::sync::Mutex<AckWindow>,
}

/// How long one window of ack latencies lasts; the figure covers the
/// current window and the one before it.
const ACK_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Two rotating HdrHistograms of webhook ack latency (microseconds).
struct AckWindow {
    started: Instant,
    current: hdrhistogram::Histogram<u64>,
    previous: hdrhistogram::Histogram<u64>,
}

impl AckWindow {
    fn new() -> Self {
        let h = || hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).unwrap_or_else(|_| unreachable!());
        Self {
            started: Instant::now(),
            current: h(),
            previous: h(),
        }
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= ACK_WINDOW * 2 {
            self.current.reset();
            self.previous.reset();
            self.started = now;
        } else if age >= ACK_WINDOW {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            self.started += ACK_WINDOW;
        }
    }
}

/// Recent webhook acks, as the console shows them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RecentAcks {
    /// Acks counted (the last 5 to 10 seconds).
    pub count: u64,
    /// Their 99th percentile, milliseconds; none without acks.
    pub p99_ms: Option<f64>,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchboard_http_requests_total",
                "HTTP requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_http_request_duration_seconds",
                "HTTP request latency by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new("switchboard_rejected_requests_total", "Requests refused, by reason."),
            &["reason"],
        )?;
        let routed_reads = IntCounterVec::new(
            Opts::new(
                "switchboard_routed_reads_total",
                "Reads routed by the read-replica router, by the server that answered (replica or primary).",
            ),
            &["served_by"],
        )?;
        let breakers = IntGaugeVec::new(
            Opts::new(
                "switchboard_breaker_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ),
            &["breaker"],
        )?;
        for c in [&requests, &rejected, &routed_reads] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(breakers.clone()))?;
        let engine = EngineCounters::new(&registry)?;
        let levels = EngineGauges::new(&registry)?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                rejected,
                engine,
                levels,
                routed_reads,
                breakers,
                acks: std::sync::Mutex::new(AckWindow::new()),
            }),
        })
    }

    /// Counts a refused request.
    pub fn rejected(&self, reason: &str) {
        self.inner.rejected.with_label_values(&[reason]).inc();
    }

    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.inner
            .requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.inner.latency.with_label_values(&[route]).observe(seconds);
        if route == "/webhook" && method == "POST" && status < 300 {
            if let Ok(mut w) = self.inner.acks.lock() {
                w.rotate(Instant::now());
                let _ = w.current.record(((seconds * 1e6) as u64).max(1));
            }
        }
    }

    /// Webhook acks of the last seconds and their p99.
    pub fn recent_acks(&self) -> RecentAcks {
        let Ok(mut w) = self.inner.acks.lock() else {
            return RecentAcks { count: 0, p99_ms: None };
        };
        w.rotate(Instant::now());
        let mut all = w.previous.clone();
        let _ = all.add(&w.current);
        let count = all.len();
        RecentAcks {
            count,
            p99_ms: (count > 0).then(|| all.value_at_quantile(0.99) as f64 / 1000.0),
        }
    }

    /// The text exposition, with the engine's figures read now.
    pub async fn render(&self, engine: &Engine) -> String {
        let s = engine.stats();
        let e = &self.inner.engine;
        let sync = |c: &IntCounter, v: u64| {
            let now = c.get();
            if v > now {
                c.inc_by(v - now);
            }
        };
        sync(&e.deliveries, s.accepted);
        sync(&e.duplicates, s.redeliveries);
        sync(&e.processed, s.processed);
        sync(&e.conflicts, s.conflicts);
        sync(&e.retries, s.retries);
        sync(&e.crashes, s.crashes);
        sync(&e.quarantined, s.quarantined);
        sync(&e.batches, s.batches);
        sync(&e.batched_writes, s.batched_writes);
        sync(&e.registration_batches, s.registration_batches);
        sync(&e.ai_calls, s.ai.calls);
        sync(&e.ai_timeouts, s.ai.timeouts);
        sync(&e.ai_errors, s.ai.errors);
        sync(&e.ai_fallbacks, s.ai.fallbacks);
        sync(&e.ai_rejected, s.ai.rejected);
        let o = &engine.outbox().stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        sync(&e.sent, l(&o.sent));
        sync(&e.send_retries, l(&o.retried));
        sync(&e.send_failed, l(&o.failed));
        sync(&e.send_dead, l(&o.dead));
        sync(&e.pool_timeouts, s.pool.gets_timed_out);
        if let Some(r) = s.replica {
            let routed = &self.inner.routed_reads;
            sync(&routed.with_label_values(&["replica"]), r.replica_reads);
            sync(&routed.with_label_values(&["primary"]), r.primary_reads);
        }
        let g = &self.inner.levels;
        let level = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        g.live_sessions.set(level(s.live_sessions));
        g.mailbox.set(level(s.mailbox_depth));
        g.in_flight.set(level(s.in_flight));
        g.pool_connections.set(i64::from(s.pool.connections));
        g.pool_idle.set(i64::from(s.pool.idle));
        let in_use = s.pool.connections.saturating_sub(s.pool.idle);
        g.pool_in_use.set(i64::from(in_use));
        g.pool_max.set(i64::from(s.pool.max_size));
        g.pool_waiting.set(i64::try_from(s.pool.waiting).unwrap_or(i64::MAX));
        g.outbox_backlog.set(engine.outbox().backlog().max(0));
        for b in engine.breakers().await {
            let v = match b.state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            self.inner.breakers.with_label_values(&[&b.name]).set(v);
        }
        let mut families = self.inner.registry.gather();
        families.push(model_call_duration(&s.ai.call_duration));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Middleware: counts and times every request by its route pattern (not
/// its path: phones never become label values).
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().to_string();
    let metrics = req.app_data::<web::Data<AppState>>().map(|s| s.metrics.clone());
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
        m.observe(&route, &method, res.status().as_u16(), start.elapsed().as_secs_f64());
    }
    Ok(res)
}
