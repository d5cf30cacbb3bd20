//! The engine's figures as Prometheus families, built at scrape time from
//! the values the engine counts (its atomics, the AI actor's buckets): the
//! figures are defined once, there, and never copied into a registry here.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::{self, MetricFamily, MetricType};

use crate::engine::{CallDurations, StatsSnapshot, CALL_DURATION_BUCKETS};
use crate::media::MediaStats;
use crate::outbox::OutboxStats;
use crate::whatsapp::read_receipts::ReadReceipts;

/// One figure: its metric name, its help, its value.
type Counter = (&'static str, &'static str, u64);

/// The engine's counters, read at scrape time from the atomics that count
/// them (no copy is kept here). One line per metric, as a table (so not
/// formatted).
#[rustfmt::skip]
pub(super) fn engine_counters(s: &StatsSnapshot, o: &OutboxStats, r: &ReadReceipts, m: &MediaStats) -> [Counter; 33] {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    [
        ("switchboard_deliveries_total", "Inbound messages accepted (first deliveries).", s.accepted),
        ("switchboard_duplicate_deliveries_total", "Redeliveries of messages already accepted.", s.redeliveries),
        ("switchboard_messages_processed_total", "Inbound messages applied.", s.processed),
        ("switchboard_version_conflicts_total", "Versioned writes that found another version.", s.conflicts),
        ("switchboard_waits_behind_earlier_total", "Times a message's step found an earlier message of its conversation unapplied (accepted by another process) and went back to apply or wait for it first.", s.waited_behind),
        ("switchboard_retries_total", "Steps retried after a conflict or a transient error.", s.retries),
        ("switchboard_session_crashes_total", "Session actor crashes.", s.crashes),
        ("switchboard_dead_letters_inbound_total", "Inbound messages moved to dead letters.", s.quarantined),
        ("switchboard_dead_letters_unusable_total", "Delivery items that could not be applied (malformed, no sender, over a limit, another number), kept as dead letters.", s.unusable),
        ("switchboard_commit_batches_total", "Group-commit transactions.", s.batches),
        ("switchboard_committed_steps_total", "Steps written by group-commit transactions.", s.batched_writes),
        ("switchboard_registration_batches_total", "Inbox registration statements (each a commit).", s.registration_batches),
        ("switchboard_model_calls_total", "Model calls.", s.ai.calls),
        ("switchboard_model_timeouts_total", "Model calls over their timeout.", s.ai.timeouts),
        ("switchboard_model_errors_total", "Model calls that failed.", s.ai.errors),
        ("switchboard_model_fallbacks_total", "Answers given by the fallback.", s.ai.fallbacks),
        ("switchboard_model_rejected_total", "Model calls refused by the open breaker.", s.ai.rejected),
        ("switchboard_outbound_sent_total", "Outbound messages sent.", l(&o.sent)),
        ("switchboard_outbound_retries_total", "Outbound sends to retry.", l(&o.retried)),
        ("switchboard_outbound_failed_total", "Outbound messages failed permanently.", l(&o.failed)),
        ("switchboard_dead_letters_outbound_total", "Outbound messages moved to dead letters.", l(&o.dead)),
        (
            "switchboard_outbound_throttled_total",
            "Sends the API refused for the number's or the pair's rate (130429, 131056); retried.",
            l(&o.throttled),
        ),
        (
            "switchboard_outbox_resent_after_crash_total",
            "Rows sent again whose earlier attempt's answer was never recorded (its sender died mid-send): each may reach the customer twice.",
            l(&o.resent_after_crash),
        ),
        (
            "switchboard_outbox_given_back_late_total",
            "Claimed rows given back unsent because half their lease went by before their send began (the dispatcher or the number's rate was behind).",
            l(&o.given_back_late),
        ),
        ("switchboard_read_receipts_total", "Inbound messages marked read.", l(&r.sent)),
        (
            "switchboard_read_receipts_failed_total",
            "Read receipts that failed or passed their deadline (best-effort, never retried).",
            l(&r.failed),
        ),
        ("switchboard_media_downloaded_total", "Inbound media files fetched and kept.", l(&m.downloaded)),
        ("switchboard_media_retries_total", "Inbound media fetches to retry.", l(&m.retried)),
        ("switchboard_media_failed_total", "Inbound media files failed for good (over the size limit, refused, out of attempts).", l(&m.failed)),
        ("switchboard_pool_checkout_timeouts_total", "Database pool checkouts that timed out.", s.pool.gets_timed_out),
        ("switchboard_timers_fired_total", "Due timers applied (reminders, escalations, expiries, hand-off timeouts).", s.timers_fired),
        ("switchboard_timers_late_total", "Timers applied over a second after their due time (a process was down or behind): late, not lost.", s.timers_late),
        ("switchboard_timers_moot_total", "Due timers found cancelled or fired when their step committed (nothing done).", s.timers_moot),
    ]
}

/// The engine's levels, read at scrape time: name, help, value.
#[rustfmt::skip]
pub(super) fn engine_gauges(s: &StatsSnapshot, outbox_backlog: i64) -> [(&'static str, &'static str, i64); 9] {
    let level = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    let p = &s.pool;
    [
        ("switchboard_live_sessions", "Session actors alive (conversations held in memory).", level(s.live_sessions)),
        ("switchboard_mailbox_messages", "Messages sent to live session actors and not yet answered.", level(s.mailbox_depth)),
        ("switchboard_in_flight_messages", "Accepted messages not yet applied, plus agent actions running.", level(s.in_flight)),
        ("switchboard_pool_connections", "Database pool connections open, idle or in use.", i64::from(p.connections)),
        ("switchboard_pool_connections_idle", "Database pool connections open and idle.", i64::from(p.idle)),
        ("switchboard_pool_connections_in_use", "Database pool connections checked out.", i64::from(p.connections.saturating_sub(p.idle))),
        ("switchboard_pool_connections_max", "Most connections the database pool opens.", i64::from(p.max_size)),
        ("switchboard_pool_checkouts_waiting", "Database pool checkouts waiting for a connection.", i64::try_from(p.waiting).unwrap_or(i64::MAX)),
        ("switchboard_outbox_backlog", "Outbound messages not yet delivered, as last counted.", outbox_backlog.max(0)),
    ]
}

/// One sample, with its labels.
pub(super) fn sample(labels: &[(&str, &str)], set: impl FnOnce(&mut proto::Metric)) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = proto::LabelPair::default();
                l.set_name((*k).to_string());
                l.set_value((*v).to_string());
                l
            })
            .collect(),
    );
    set(&mut m);
    m
}

pub(super) fn counter(labels: &[(&str, &str)], value: u64) -> proto::Metric {
    sample(labels, |m| {
        let mut c = proto::Counter::default();
        c.set_value(value as f64);
        m.set_counter(c);
    })
}

pub(super) fn gauge(labels: &[(&str, &str)], value: i64) -> proto::Metric {
    sample(labels, |m| {
        let mut g = proto::Gauge::default();
        g.set_value(value as f64);
        m.set_gauge(g);
    })
}

pub(super) fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// The model call histogram's name. It is rendered from the AI actor's own
/// buckets: the actor records every call.
const MODEL_CALL_DURATION: &str = "switchboard_model_call_duration_seconds";

/// `switchboard_model_call_duration_seconds` from a snapshot's buckets.
pub(super) fn model_call_duration(d: &CallDurations) -> MetricFamily {
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
    let m = sample(&[], |m| m.set_histogram(h));
    family(
        MODEL_CALL_DURATION,
        "Model call duration, bulkhead wait included; a timed-out call counts its timeout.",
        MetricType::HISTOGRAM,
        vec![m],
    )
}
