//! What a run measures: counts, and ack and end-to-end latency in
//! HdrHistogram from each request's intended send time (so a stall is not
//! hidden), for the whole run and per second of it.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hdrhistogram::Histogram;

use super::checker::Expected;
use super::scenario::Message;

/// Errors whose text the report keeps, for a first look.
const ERROR_SAMPLES: usize = 10;

/// What a run measured.
pub struct Measured {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub duplicates_sent: u64,
    pub ack_us: Histogram<u64>,
    pub e2e_us: Histogram<u64>,
    /// The messages of the deliveries acked with 200, each once: the good
    /// ones in their conversations, the bad ones and those beside them.
    pub expected: Expected,
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

/// The whole run's: 1 µs .. 10 min, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// `v` without repeats (in no particular order).
fn distinct<T: Eq + Hash>(v: Vec<T>) -> Vec<T> {
    v.into_iter().collect::<HashSet<T>>().into_iter().collect()
}

/// A lock whose holder panicked still holds sound figures: take it anyway.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Microseconds from `from` to `to`, at least 1 (HdrHistogram's lowest value).
fn micros(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_micros().max(1) as u64
}

/// What the request tasks, the event follower and the progress line record
/// and read, all at once.
pub(super) struct Recorder {
    /// The schedule's start: second 0 of the timeline.
    pub(super) start: Instant,
    /// Ack latency of the whole run (µs); a mutex: every request task
    /// records into it, the progress line reads it.
    pub(super) ack: Mutex<Histogram<u64>>,
    /// End-to-end latency of the whole run (µs); a mutex: the follower
    /// records into it while the run goes on.
    pub(super) e2e: Mutex<Histogram<u64>>,
    /// The timeline, one entry per second of intended send time; a mutex:
    /// the request tasks and the follower record into the same entries.
    per_second: Mutex<Vec<Second>>,
    /// The messages of the deliveries acked with 200, repeats included; a
    /// mutex: pushed by the request tasks, read by the drain wait.
    acked_messages: Mutex<Expected>,
    /// Each message sent: its intended send time until it is seen applied,
    /// then `None`. A sharded map: senders and the follower touch many keys
    /// at once, and one key's entry lock orders a send against its event.
    pub(super) waiting: DashMap<String, Option<Instant>>,
    /// Distinct messages seen applied; atomic: counted by the follower
    /// without a lock, read by the progress line.
    pub(super) applied: AtomicU64,
    /// Times the event stream was lost and followed again; atomic: counted
    /// by the follower, read at the end.
    pub(super) event_reconnects: AtomicU64,
    /// When the last message was seen applied; a mutex around one
    /// `Instant`, written by the follower and read at the end.
    last_applied: Mutex<Option<Instant>>,
    /// Requests sent; atomic: counted by the schedule and the closed-loop
    /// workers, read by the progress line.
    pub(super) sent: AtomicU64,
    /// Requests acked; atomic: counted by every request task without a lock.
    acked: AtomicU64,
    /// Requests failed; atomic: counted by every request task without a lock.
    errors: AtomicU64,
    /// The first errors' texts; a mutex: any request task may add one.
    error_samples: Mutex<Vec<String>>,
}

impl Recorder {
    /// An empty record of a run whose schedule starts at `start`.
    pub(super) fn new(start: Instant) -> Self {
        Self {
            start,
            ack: Mutex::new(histogram()),
            e2e: Mutex::new(histogram()),
            per_second: Mutex::new(Vec::new()),
            acked_messages: Mutex::new(Expected::default()),
            waiting: DashMap::new(),
            applied: AtomicU64::new(0),
            event_reconnects: AtomicU64::new(0),
            last_applied: Mutex::new(None),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            error_samples: Mutex::new(Vec::new()),
        }
    }

    /// Updates the second `at` falls in (an instant before the start counts
    /// in second 0).
    fn in_second(&self, at: Instant, f: impl FnOnce(&mut Second)) {
        let sec = at.saturating_duration_since(self.start).as_secs() as usize;
        let mut ps = lock(&self.per_second);
        while ps.len() <= sec {
            ps.push(Second::new());
        }
        f(&mut ps[sec]);
    }

    /// Counts a request going out.
    pub(super) fn count_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a message about to be sent, to time it once it is seen
    /// applied; a redelivery keeps the first copy's time (or, seen already,
    /// waits for nothing).
    pub(super) fn expect(&self, id: &str, intended: Instant) {
        self.waiting.entry(id.to_string()).or_insert(Some(intended));
    }

    /// Notes a delivery the server acked, for the checker and the drain
    /// wait: its good messages (to be applied, in conversation `key`) and,
    /// when it held any, its bad ones (to be dead-lettered) and the good
    /// ones beside them.
    pub(super) fn acked_delivery(&self, key: &str, messages: &[Message]) {
        let (bad, good): (Vec<&Message>, Vec<&Message>) = messages.iter().partition(|m| m.is_bad());
        let good: Vec<(String, String)> = good.iter().map(|m| (key.to_string(), m.id.clone())).collect();
        let mut acked = lock(&self.acked_messages);
        if !bad.is_empty() {
            acked.bad.extend(bad.iter().map(|m| m.id.clone()));
            acked.beside_bad.extend(good.iter().cloned());
        }
        acked.acked.extend(good);
    }

    /// Records a request's answer by its intended send time: its ack
    /// latency if the server took it, else a sample of what went wrong.
    pub(super) fn record(&self, intended: Instant, answer: Result<(), String>) {
        let us = micros(intended, Instant::now());
        let ok = answer.is_ok();
        self.in_second(intended, |s| {
            s.sent += 1;
            if ok {
                s.acked += 1;
                s.ack.saturating_record(us);
            }
        });
        match answer {
            Ok(()) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                let _ = lock(&self.ack).record(us);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut samples = lock(&self.error_samples);
                if samples.len() < ERROR_SAMPLES {
                    samples.push(e);
                }
            }
        }
    }

    /// Records message `id` seen applied: its end-to-end latency the first
    /// time only (a redelivery's event adds nothing).
    pub(super) fn seen_applied(&self, id: &str) {
        // Marked seen whatever comes later (one lock on the key: no race
        // with a redelivery being sent).
        let intended = self.waiting.entry(id.to_string()).or_insert(None).take();
        let Some(intended) = intended else {
            return;
        };
        let now = Instant::now();
        let us = micros(intended, now);
        let _ = lock(&self.e2e).record(us);
        self.in_second(intended, |s| s.e2e.saturating_record(us));
        self.applied.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_applied) = Some(now);
    }

    /// Whether every message acked so far has been seen applied.
    pub(super) fn all_acked_seen(&self) -> bool {
        // A copy: the senders are not held up while the map is read.
        let acked: Vec<String> = lock(&self.acked_messages)
            .acked
            .iter()
            .map(|(_, id)| id.clone())
            .collect();
        acked.iter().all(|id| self.waiting.get(id).is_none_or(|w| w.is_none()))
    }

    /// The progress line: elapsed, this second's rate, in flight, ack p99
    /// so far, messages applied, errors.
    pub(super) fn progress_line(&self, rate: u64, in_flight: u64) -> String {
        let p99 = lock(&self.ack).value_at_quantile(0.99);
        format!(
            "t={:>4}s  rate={:>6}/s  in-flight={:>5}  ack p99={:>8.2} ms  applied={:>7}  errors={}",
            Instant::now().saturating_duration_since(self.start).as_secs(),
            rate,
            in_flight,
            p99 as f64 / 1000.0,
            self.applied.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// What the run measured, once the sending and the wait for messages
    /// to be applied are over (`sends_done`: when the last answer came).
    pub(super) fn finish(&self, duplicates_sent: u64, sends_done: Instant) -> Measured {
        let last = lock(&self.last_applied).unwrap_or(sends_done);
        let timeline = std::mem::take(&mut *lock(&self.per_second));
        // Distinct: a redelivered message is acked more than once.
        let acked = std::mem::take(&mut *lock(&self.acked_messages));
        let expected = Expected {
            acked: distinct(acked.acked),
            bad: distinct(acked.bad),
            beside_bad: distinct(acked.beside_bad),
        };
        let ack_us = lock(&self.ack).clone();
        let e2e_us = lock(&self.e2e).clone();
        let error_samples = lock(&self.error_samples).clone();
        Measured {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            duplicates_sent,
            ack_us,
            e2e_us,
            applied: self.applied.load(Ordering::Relaxed),
            event_reconnects: self.event_reconnects.load(Ordering::Relaxed),
            elapsed: last.max(sends_done).saturating_duration_since(self.start),
            expected,
            timeline,
            error_samples,
        }
    }
}
