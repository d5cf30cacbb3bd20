//! The schedule: sends a plan open-loop (each request at its intended time,
//! whatever the answers) or closed-loop (`--max`), then waits for the
//! messages acked to be seen applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::rt::task::JoinHandle;

use super::client::Client;
use super::events::follow_events;
use super::measure::Recorder;
use super::scenario::{self, Action, Planned, SCRIPT};

// Public through `load::driver` too, the paths callers import them by.
pub use super::client::{delivery_body, Target};
pub use super::measure::{Measured, Second};

/// Requests in flight at most (the generator's own memory bound).
const MAX_IN_FLIGHT: usize = 20_000;

/// From the call to the schedule's second 0: the event follower and the
/// progress line start first, so the first requests are not late already.
const START_DELAY: Duration = Duration::from_millis(200);

/// How often the open loop looks again while `MAX_IN_FLIGHT` requests are out.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(1);

/// How often the drain wait looks whether the acked messages were seen applied.
const APPLIED_POLL: Duration = Duration::from_millis(20);

/// The progress line's period.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the request tasks share.
struct Run {
    client: Client,
    /// Where the answers are recorded; an `Arc`, shared with the event
    /// follower that records the end-to-end times.
    rec: Arc<Recorder>,
    /// Requests spawned and not answered; atomic: counted up by the
    /// schedule, down by each task, read by the progress line.
    in_flight: AtomicU64,
    /// Requests on the wire at most (the generator's connections); a
    /// semaphore: the others wait their turn, their latency counted from
    /// the intended send time all the same.
    wire: tokio::sync::Semaphore,
}

impl Run {
    /// Counts a request out, before its task is spawned.
    fn count_out(&self) {
        self.rec.count_sent();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one action once a connection is free, and records the answer
    /// against its intended send time.
    async fn execute(self: Arc<Self>, action: Action, intended: Instant) {
        // Held until the answer is read: one connection per request on the wire.
        let _wire = self.wire.acquire().await;
        if let Action::Webhook { id, .. } = &action {
            self.rec.expect(id, intended);
        }
        let answer = self.client.send(&action).await;
        if answer.is_ok() {
            if let Action::Webhook { id, .. } = &action {
                self.rec.acked_id(id);
            }
        }
        self.rec.record(intended, answer);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    let rec = Arc::new(Recorder::new(Instant::now() + START_DELAY));
    let events = actix_web::rt::spawn(follow_events(target.clone(), rec.clone()));
    let run = Arc::new(Run {
        client: Client::new(target, connections),
        rec: rec.clone(),
        in_flight: AtomicU64::new(0),
        wire: tokio::sync::Semaphore::new(connections),
    });
    let reporter = progress.then(|| actix_web::rt::spawn(report_progress(run.clone())));
    let duplicates = plan.iter().filter(|p| p.duplicate).count() as u64;
    let tasks = match closed_workers {
        None => open_loop(&run, plan).await,
        Some((workers, duration, phones)) => closed_loop(&run, workers, duration, phones).await,
    };
    for t in tasks {
        let _ = t.await;
    }
    let sends_done = Instant::now();
    wait_applied(&rec, sends_done + drain).await;
    events.abort();
    if let Some(r) = reporter {
        r.abort();
    }
    rec.finish(duplicates, sends_done)
}

/// Sends each planned request at its intended time whatever the answers,
/// with at most `MAX_IN_FLIGHT` out; returns the requests' tasks.
async fn open_loop(run: &Arc<Run>, plan: Vec<Planned>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(plan.len());
    for p in plan {
        let intended = run.rec.start + p.at;
        tokio::time::sleep_until(intended.into()).await;
        while run.in_flight.load(Ordering::Relaxed) as usize >= MAX_IN_FLIGHT {
            tokio::time::sleep(IN_FLIGHT_POLL).await;
        }
        run.count_out();
        tasks.push(actix_web::rt::spawn(run.clone().execute(p.action, intended)));
    }
    tasks
}

/// Starts `workers` workers sending back to back from second 0 for
/// `duration` (the ceiling, `--max`); returns their tasks.
async fn closed_loop(run: &Arc<Run>, workers: usize, duration: Duration, phones: usize) -> Vec<JoinHandle<()>> {
    tokio::time::sleep_until(run.rec.start.into()).await;
    let end = run.rec.start + duration;
    (0..workers)
        .map(|w| actix_web::rt::spawn(closed_worker(run.clone(), w, workers, phones, end)))
        .collect()
}

/// One closed-loop worker: its phones' next message as soon as the last
/// one is answered, until `end`.
async fn closed_worker(run: Arc<Run>, w: usize, workers: usize, phones: usize, end: Instant) {
    let mut n = 0usize;
    while Instant::now() < end {
        let p = (w + n * workers) % phones.max(1);
        let action = Action::Webhook {
            phone: scenario::phone(p),
            id: format!("wamid.max.{w}.{n}"),
            text: SCRIPT[(n / phones.max(1)) % SCRIPT.len()].to_string(),
        };
        run.count_out();
        run.clone().execute(action, Instant::now()).await;
        n += 1;
    }
}

/// Waits, until `deadline` at most, for every acked message to be seen
/// applied: the end-to-end times come through the event stream.
async fn wait_applied(rec: &Recorder, deadline: Instant) {
    while Instant::now() < deadline && !rec.all_acked_seen() {
        tokio::time::sleep(APPLIED_POLL).await;
    }
}

/// One line a second on stderr, so a long run shows how it goes.
async fn report_progress(run: Arc<Run>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut last_sent = 0;
    loop {
        tick.tick().await;
        let sent = run.rec.sent.load(Ordering::Relaxed);
        eprintln!(
            "{}",
            run.rec
                .progress_line(sent - last_sent, run.in_flight.load(Ordering::Relaxed))
        );
        last_sent = sent;
    }
}
