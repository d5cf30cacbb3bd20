//! This process's presence on the shared database, on one dedicated
//! connection (outside the pool):
//!
//! - **Liveness.** The connection holds a session advisory lock keyed by the
//!   engine instance id. Inbox rows leased by an instance whose lock is not
//!   held (the process died: its connection closed) are resumable by any
//!   other process at once, without waiting for the lease to run out.
//! - **Shared events** (`engine.share_events`). Conversation events made
//!   here are sent with `NOTIFY`; events other processes send are received
//!   with `LISTEN` and go to this process's subscribers, so a subscriber
//!   connected to any process sees every conversation.
//!
//! The connection is re-opened with backoff when it breaks (a database
//! restart); meanwhile other processes may resume this one's rows, which
//! stays exactly-once (the step transaction checks `processed_at`).

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::events::{Event, EventKind};

/// The `NOTIFY` channel of shared events.
pub const CHANNEL: &str = "switchboard_events";
/// PostgreSQL refuses `NOTIFY` payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;
/// Events sent in one round of pipelined `NOTIFY`s.
const NOTIFY_BATCH: usize = 256;

#[derive(Serialize, Deserialize)]
struct Shared {
    /// The sending instance: a process ignores its own events.
    from: i64,
    event: Event,
}

/// Keeps the presence connection until `stop` is cancelled.
pub async fn run(url: Secret, instance: i64, events: broadcast::Sender<Event>, share: bool, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = session(&url, instance, &events, share, &stop);
        match session.await {
            Ok(()) => return,
            Err(why) => tracing::warn!(error = %why, "presence connection lost; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: `Ok` when asked to stop, `Err` when it broke.
async fn session(
    url: &Secret,
    instance: i64,
    events: &broadcast::Sender<Event>,
    share: bool,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut conn = Connection::open(url, instance, share).await?;
    tracing::debug!(instance, share, "presence connection open");
    let mut local = events.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            note = conn.notes.recv() => {
                let Some(payload) = note else {
                    // The driver ended: the connection is gone.
                    return Err((&mut conn.driver).await.unwrap_or_else(|e| e.to_string()));
                };
                deliver(instance, events, &payload);
            }
            got = local.recv(), if share => {
                let first = match got {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "shared events fell behind; some were not relayed");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                let batch = take_batch(first, &mut local);
                notify(&conn.client, instance, batch).await?;
            }
        }
    }
}

/// The presence connection, with the task that drives it.
struct Connection {
    /// Ends the driver however the session ends (a dropped `JoinHandle` would not);
    /// declared first, so it drops first.
    _abort: AbortOnDrop,
    /// The driver task: it answers why the connection ended.
    driver: tokio::task::JoinHandle<String>,
    /// `NOTIFY` payloads from the driver; unbounded so the driver never waits and keeps the connection polled.
    notes: mpsc::UnboundedReceiver<String>,
    client: tokio_postgres::Client,
}

impl Connection {
    /// Connects, takes the instance's advisory lock (the liveness signal) and, when sharing, `LISTEN`s.
    async fn open(url: &Secret, instance: i64, share: bool) -> Result<Self, String> {
        let e = |e: tokio_postgres::Error| e.to_string();
        let (client, mut conn) = tokio_postgres::connect(url.expose(), tokio_postgres::NoTls)
            .await
            .map_err(e)?;
        let (notes_tx, notes) = mpsc::unbounded_channel();
        // The connection is driven here; notifications come out of it.
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = notes_tx.send(n.payload().to_string());
                    }
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            }
            "the server closed the connection".to_string()
        });
        let abort = AbortOnDrop(driver.abort_handle());
        client
            .execute("SELECT pg_advisory_lock($1)", &[&instance])
            .await
            .map_err(e)?;
        if share {
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(e)?;
        }
        Ok(Self {
            _abort: abort,
            driver,
            notes,
            client,
        })
    }
}

/// Hands another process's event to this process's subscribers, marked relayed so it is not sent back.
fn deliver(instance: i64, events: &broadcast::Sender<Event>, payload: &str) {
    match serde_json::from_str::<Shared>(payload) {
        Ok(s) if s.from != instance => {
            let mut e = s.event;
            e.relayed = true;
            let _ = events.send(e);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "an unreadable shared event was ignored"),
    }
}

/// `first` and the events already waiting behind it, up to [`NOTIFY_BATCH`], to share one round trip.
fn take_batch(first: Event, local: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut batch = vec![first];
    while batch.len() < NOTIFY_BATCH {
        match local.try_recv() {
            Ok(e) => batch.push(e),
            Err(_) => break,
        }
    }
    batch
}

/// Sends this process's own events (not relayed ones, not breaker states) to the other processes.
async fn notify(client: &tokio_postgres::Client, instance: i64, batch: Vec<Event>) -> Result<(), String> {
    let payloads: Vec<String> = batch
        .into_iter()
        .filter(|e| !e.relayed && e.kind != EventKind::BreakerState)
        .filter_map(|e| payload(instance, e))
        .collect();
    if payloads.is_empty() {
        return Ok(());
    }
    // One statement, one transaction for the batch: each NOTIFY on its own
    // was a commit of its own, one per message. Delivered at commit in
    // order; PostgreSQL folds identical payloads of one transaction into
    // one, which only identical events (a status redelivered) can be.
    client
        .execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            &[&CHANNEL, &payloads],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The event as a `NOTIFY` payload; message bodies are dropped when the
/// whole would be too long (a subscriber re-reads the conversation).
fn payload(instance: i64, mut event: Event) -> Option<String> {
    let text = |e: &Event| {
        serde_json::to_string(&Shared {
            from: instance,
            event: e.clone(),
        })
        .unwrap_or_default()
    };
    let full = text(&event);
    if full.len() <= MAX_PAYLOAD {
        return Some(full);
    }
    for m in &mut event.messages {
        m.body.clear();
    }
    let short = text(&event);
    (short.len() <= MAX_PAYLOAD).then_some(short)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
