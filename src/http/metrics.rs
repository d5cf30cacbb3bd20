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
use prometheus::proto::{self, MetricType};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

use super::figures::{counter, engine_counters, engine_gauges, family, gauge, model_call_duration};
use super::AppState;
use crate::breaker::BreakerState;
use crate::engine::Engine;

#[derive(Clone)]
pub struct Metrics {
    /// One registry per server; an `Arc`, so the `track` middleware
    /// clones a handle per request instead of the registry.
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    rejected: IntCounterVec,
    /// Webhook ack latency of the last few seconds, for the console; a
    /// mutex: acks on any worker rotate and record the two histograms as one step.
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
        for c in [&requests, &rejected] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                rejected,
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
        let mut families = self.inner.registry.gather();
        for (name, help, value) in
            engine_counters(&s, &engine.outbox().stats, engine.read_receipts(), engine.media_stats())
        {
            families.push(family(name, help, MetricType::COUNTER, vec![counter(&[], value)]));
        }
        for (name, help, value) in engine_gauges(&s, engine.outbox().backlog()) {
            families.push(family(name, help, MetricType::GAUGE, vec![gauge(&[], value)]));
        }
        if let Some(r) = &s.replica {
            families.push(family(
                "switchboard_routed_reads_total",
                "Reads routed by the read-replica router, by the server that answered (replica or primary).",
                MetricType::COUNTER,
                vec![
                    counter(&[("served_by", "primary")], r.primary_reads),
                    counter(&[("served_by", "replica")], r.replica_reads),
                ],
            ));
        }
        let mut states = engine.breakers().await;
        // Samples in label order, as a registry would gather them.
        states.sort_by(|a, b| a.name.cmp(&b.name));
        let breakers: Vec<proto::Metric> = states
            .iter()
            .map(|b| {
                let state = match b.state {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                gauge(&[("breaker", &b.name)], state)
            })
            .collect();
        if !breakers.is_empty() {
            families.push(family(
                "switchboard_breaker_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                MetricType::GAUGE,
                breakers,
            ));
        }
        let actions: Vec<proto::Metric> = engine
            .action_figures()
            .iter()
            .flat_map(|a| {
                [
                    ("failed", a.failed),
                    ("refused", a.refused),
                    ("rejected", a.rejected),
                    ("succeeded", a.succeeded),
                ]
                .map(|(result, n)| counter(&[("action", &a.action), ("result", result)], n))
            })
            .collect();
        if !actions.is_empty() {
            families.push(family(
                "switchboard_action_calls_total",
                "Flow action calls by action and result: succeeded, refused (the backend said no), failed (after retries), rejected (open breaker).",
                MetricType::COUNTER,
                actions,
            ));
        }
        families.push(family(
            "switchboard_retention_expired_rows_total",
            "Rows whose expired personal data the retention job blanked or deleted.",
            MetricType::COUNTER,
            vec![counter(&[], engine.retention_expired())],
        ));
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
