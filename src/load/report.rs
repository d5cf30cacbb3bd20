//! The load report: JSON (the interface contract's fields), a table for the
//! terminal, and a latency-over-time plot (SVG).

use hdrhistogram::Histogram;
use serde::Serialize;

use super::checker::Violation;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    /// From a histogram in microseconds, in milliseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

/// One second of the run, by intended send time.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct TimelinePoint {
    pub sent: u64,
    pub acked: u64,
    /// Ack latency p99 of the requests of this second (ms; 0 when none was acked).
    pub ack_p99_ms: f64,
    /// End-to-end latency p99 of this second's messages seen applied (ms; 0 when none).
    pub e2e_p99_ms: f64,
}

impl TimelinePoint {
    pub fn from_second(s: &super::measure::Second) -> Self {
        let p99 = |h: &Histogram<u32>| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.99) as f64 / 1000.0
            }
        };
        Self {
            sent: s.sent,
            acked: s.acked,
            ack_p99_ms: p99(&s.ack),
            e2e_p99_ms: p99(&s.e2e),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    /// Server processes the requests were spread over.
    pub processes: usize,
    /// The fault injected during the run, if any.
    pub chaos: Option<String>,
    /// Outbound messages sent again because the process sending them died
    /// between the API's accept and its record of it (the send API has no
    /// idempotency key). Not a violation; any other repeat is.
    pub resent_after_crash: u64,
    pub mode: &'static str,
    pub rate: f64,
    /// Open loop: requests on the wire at most (`--connections`).
    pub connections: usize,
    pub duration_s: f64,
    pub phones: usize,
    /// Business numbers the conversations were spread over (`--numbers`).
    pub numbers: usize,
    /// The share of contacts known by their BSUID alone (`--username-share`).
    pub username_share: f64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub duplicates_sent: u64,
    /// Distinct messages seen applied per second of the run.
    pub throughput_msgs_per_s: f64,
    pub applied: u64,
    /// Times the harness lost the event stream (it fell behind and the
    /// server dropped it) and followed it again; the messages applied in
    /// between are not in `applied` or the end-to-end latencies.
    pub event_reconnects: u64,
    pub ack_latency_ms: Percentiles,
    pub e2e_latency_ms: Percentiles,
    pub conflicts: u64,
    pub retries: u64,
    /// Times a step went back for an earlier message of its phone that
    /// another process had accepted and not yet applied (a phone's messages
    /// taking turns between processes).
    pub waits_behind_earlier: u64,
    /// Inbound messages that kept crashing their step and were moved to
    /// dead letters (applied never, lost never: a load run should have none).
    pub quarantined: u64,
    pub outbound_requests: Option<u64>,
    /// Seconds from the last message seen applied until the outbox had
    /// nothing pending or being sent (own server or processes; `None` when
    /// not drained within `--drain`).
    pub outbox_drained_after_s: Option<f64>,
    /// The fake send API's answer time (`--send-latency-ms`).
    pub send_latency_ms: super::args::LatencyRange,
    pub invariant_violations: Vec<Violation>,
    /// `false` when no database was reachable to check.
    pub invariants_checked: bool,
    pub error_samples: Vec<String>,
    /// Per second of intended send time (the first entry is second 0).
    pub timeline: Vec<TimelinePoint>,
    pub synchronous_commit: String,
    /// What the run's timers did (`None`: it set none), and the
    /// `--timer-wave`'s apart.
    pub timers: Option<super::timer_figures::Timers>,
    /// What an applied message cost (CPU by process, WAL, statements,
    /// commits, flushes; memory per live conversation).
    pub cost: Option<super::cost::Cost>,
    /// With `--limits`: the database's own limits for the job, and the run
    /// against them.
    pub limits: Option<super::limits::Limits>,
    /// With `--sample-every`: the soak's samples and its memory verdict.
    pub soak: Option<super::soak::Soak>,
}

impl Report {
    pub fn table(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "  {name:<12} p50 {:>8.2}  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2} ms  (n={})\n",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            )
        };
        let mut t = self.heading();
        t.push_str(&row("ack", &self.ack_latency_ms));
        t.push_str(&row("end-to-end", &self.e2e_latency_ms));
        if let Some(n) = self.outbound_requests {
            t.push_str(&format!(
                "  replies: {n} sends to the fake API (answering in {} ms), {}\n",
                self.send_latency_ms,
                match self.outbox_drained_after_s {
                    Some(s) => format!("all sent {s:.1} s after the last message was applied"),
                    None => "NOT all sent within --drain".into(),
                }
            ));
        }
        if let Some(cost) = &self.cost {
            t.push_str(&cost.lines());
        }
        if let Some(limits) = &self.limits {
            t.push_str(&limits.lines());
        }
        if let Some(timers) = &self.timers {
            t.push_str(&timers.lines());
        }
        if self.quarantined > 0 {
            t.push_str(&format!(
                "  QUARANTINED {} inbound messages (their steps kept failing): see the dead letters\n",
                self.quarantined
            ));
        }
        if self.event_reconnects > 0 {
            t.push_str(&format!(
                "  event stream lost {} times and followed again: the messages applied meanwhile are not timed\n",
                self.event_reconnects
            ));
        }
        t.push_str(&self.verdict_lines());
        t
    }

    /// The run's first lines: what ran against what, and the counts.
    fn heading(&self) -> String {
        let mode = if self.mode == "open-loop" {
            format!(
                "open-loop, {} connection{}",
                self.connections,
                if self.connections == 1 { "" } else { "s" }
            )
        } else {
            self.mode.to_string()
        };
        let mut t = format!(
            "scenario {} ({}) against {}\n  sent {}  acked {}  errors {}  duplicates sent {}\n  applied {}  throughput {:.1} msg/s  conflicts {}  retries {}\n",
            self.scenario,
            mode,
            self.target,
            self.sent,
            self.acked,
            self.errors,
            self.duplicates_sent,
            self.applied,
            self.throughput_msgs_per_s,
            self.conflicts,
            self.retries
        );
        if self.waits_behind_earlier > 0 {
            t.push_str(&format!(
                "  {} times behind an earlier message another process accepted\n",
                self.waits_behind_earlier
            ));
        }
        if self.numbers > 1 || self.username_share > 0.0 {
            t.push_str(&format!(
                "  {} contacts over {} business number{}, {:.0}% of them username-only\n",
                self.phones,
                self.numbers,
                if self.numbers == 1 { "" } else { "s" },
                self.username_share * 100.0
            ));
        }
        t
    }

    /// The checker's verdict, for the table.
    fn verdict_lines(&self) -> String {
        if !self.invariants_checked {
            return "  invariants: NOT CHECKED (no database URL)\n".into();
        }
        if self.invariant_violations.is_empty() {
            return "  invariants: all hold\n".into();
        }
        self.invariant_violations
            .iter()
            .map(|v| format!("  VIOLATION {}: {} (e.g. {:?})\n", v.invariant, v.count, v.examples))
            .collect()
    }

    /// Ack and end-to-end p99 per second of the run, as an SVG line chart
    /// (one scale, so the two compare at a glance).
    pub fn svg(&self) -> String {
        let (w, h, pad) = (720.0, 300.0, 40.0);
        let max_ms = self
            .timeline
            .iter()
            .map(|t| t.ack_p99_ms.max(t.e2e_p99_ms))
            .fold(1.0_f64, f64::max);
        let n = self.timeline.len().max(2) as f64;
        let line = |value: fn(&TimelinePoint) -> f64| -> String {
            self.timeline
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let x = pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
                    let y = h - pad - (h - 2.0 * pad) * value(t) / max_ms;
                    format!("{x:.1},{y:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
             <text x=\"{pad}\" y=\"20\">switchboard load: {} — p99 per second: <tspan fill=\"#c0392b\">ack</tspan>, <tspan fill=\"#2471a3\">end-to-end</tspan> (max {max_ms:.1} ms)</text>\
             <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>\
             <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#888\"/>\
             <text x=\"{}\" y=\"{}\">time (s)</text><text x=\"4\" y=\"{pad}\">{max_ms:.0} ms</text>\
             <polyline fill=\"none\" stroke=\"#2471a3\" stroke-width=\"1.5\" points=\"{}\"/>\
             <polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\" points=\"{}\"/></svg>\n",
            self.scenario,
            h - pad,
            w - pad,
            h - pad,
            h - pad,
            w / 2.0,
            h - 8.0,
            line(|t| t.e2e_p99_ms),
            line(|t| t.ack_p99_ms)
        )
    }
}
