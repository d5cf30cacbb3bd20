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
use super::population::Population;
use super::scenario::{Action, Kind, Message, Planned, SCRIPT};

// Public through `load::driver` too, the paths callers import them by.
pub use super::client::Target;
pub use super::measure::{Measured, Second};
pub use super::payloads::delivery_body;

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

/// `--max`: workers sending back to back, each its contacts' next line as
/// soon as the last one is answered.
#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    pub workers: usize,
    pub duration: Duration,
    pub phones: usize,
    /// Whose conversations, on which numbers.
    pub population: Population,
}

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
    /// against its intended send time. A delivery's good messages are
    /// waited for to be applied; its bad ones, dead-lettered, never are.
    async fn execute(self: Arc<Self>, action: Action, intended: Instant) {
        // Held until the answer is read: one connection per request on the wire.
        let _wire = self.wire.acquire().await;
        if let Action::Webhook { messages, .. } = &action {
            for m in messages.iter().filter(|m| !m.is_bad()) {
                self.rec.expect(&m.id, intended);
            }
        }
        let answer = self.client.send(&action).await;
        if answer.is_ok() {
            if let Action::Webhook { to, messages } = &action {
                self.rec.acked_delivery(&to.key(), messages);
            }
        }
        self.rec.record(intended, answer);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `plan` open-loop over at most `connections` requests on the wire
/// at once (as wrk2 does: a request due while all are busy waits, and its
/// latency counts from when it was due); or, with `closed_workers`, their
/// workers sending back-to-back for their duration. Waits up to `drain`
/// after the last send for messages to be applied.
pub async fn drive(
    target: Target,
    plan: Vec<Planned>,
    closed_workers: Option<ClosedLoop>,
    connections: usize,
    drain: Duration,
    progress: bool,
) -> Measured {
    // Closed loop: each worker has its connection.
    let connections = closed_workers
        .map_or(connections, |c| c.workers.max(connections))
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
        Some(closed) => closed_loop(&run, closed).await,
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

/// Starts the workers sending back to back from second 0 for their
/// duration (the ceiling, `--max`); returns their tasks.
async fn closed_loop(run: &Arc<Run>, closed: ClosedLoop) -> Vec<JoinHandle<()>> {
    tokio::time::sleep_until(run.rec.start.into()).await;
    let end = run.rec.start + closed.duration;
    (0..closed.workers)
        .map(|w| actix_web::rt::spawn(closed_worker(run.clone(), w, closed, end)))
        .collect()
}

/// One closed-loop worker (`w`): its contacts' next message as soon as the
/// last one is answered, until `end`.
async fn closed_worker(run: Arc<Run>, w: usize, closed: ClosedLoop, end: Instant) {
    let (workers, phones) = (closed.workers, closed.phones.max(1));
    let mut n = 0usize;
    while Instant::now() < end {
        let p = (w + n * workers) % phones;
        let text = SCRIPT[(n / phones) % SCRIPT.len()].to_string();
        let action = Action::Webhook {
            to: closed.population.peer(p),
            messages: vec![Message {
                id: format!("wamid.max.{w}.{n}"),
                kind: Kind::Text(text),
            }],
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
