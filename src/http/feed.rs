//! The SSE streams read from the event feed: every event has an `id` (its
//! feed position); a subscriber that reconnects with `Last-Event-ID` (or
//! `?after=ID`) first receives exactly what it missed — from any process,
//! whoever produced it — then goes on live. The stream polls the log when
//! this process publishes anything and at least every quarter second (the
//! events of other processes, also while the presence connection is down).
//! Breaker changes, which are not conversation events, come live without an id.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use tokio::sync::broadcast;

use super::ApiError;
use crate::db::events::{FeedEvent, Position};
use crate::engine::{Engine, Event, EventKind};

/// How often the log is read when nothing here woke the stream.
const POLL: Duration = Duration::from_millis(250);
/// The least time between two reads of one stream: a busy process wakes
/// every stream on every event, and each read takes a pooled connection.
const MIN_GAP: Duration = Duration::from_millis(100);
/// Events read per query.
const PAGE: i64 = 500;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Where a subscriber resumes: `Last-Event-ID`, else `?after=`; `None` starts at the head.
pub fn resume_from(req: &HttpRequest) -> Result<Option<Position>, ApiError> {
    let header = req.headers().get("last-event-id").and_then(|v| v.to_str().ok());
    let query = web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("after").cloned());
    match header.map(str::to_string).or(query) {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => Position::decode(&s).map(Some).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID / after: not an event id of this feed",
            )
        }),
    }
}

/// One subscriber's reading of the feed.
pub struct Reader {
    engine: Engine,
    only: Option<String>,
    at: Position,
    /// Anything this process publishes wakes the reader.
    wake: broadcast::Receiver<Event>,
    ready: VecDeque<String>,
    last_sent: Instant,
    last_read: Instant,
}

impl Reader {
    /// A reader from `from` (the head when `None`): a dead database is an error now, not a hang later.
    pub async fn open(engine: Engine, only: Option<String>, from: Option<Position>) -> Result<Self, ApiError> {
        let wake = engine.subscribe();
        let at = match from {
            Some(p) => p,
            None => engine.feed_head().await.map_err(ApiError::from)?,
        };
        // The position first: a subscriber that drops before any event
        // resumes from here and misses nothing released since.
        let ready = VecDeque::from([format!("id: {}\n\n", at.encode())]);
        Ok(Self {
            engine,
            only,
            at,
            wake,
            ready,
            last_sent: Instant::now(),
            last_read: Instant::now() - MIN_GAP,
        })
    }

    /// The next frame to send; `None` ends the stream (the database failed:
    /// the subscriber reconnects with its last id and loses nothing).
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                self.last_sent = Instant::now();
                return Some(frame);
            }
            let since = self.last_read.elapsed();
            if since < MIN_GAP {
                tokio::time::sleep(MIN_GAP - since).await;
            }
            self.last_read = Instant::now();
            match self.engine.feed_after(self.at, self.only.as_deref(), PAGE).await {
                Ok(events) if !events.is_empty() => {
                    for e in events {
                        self.at = e.position();
                        self.ready.push_back(frame(&e));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "event feed read failed; the stream ends");
                    return None;
                }
            }
            if self.last_sent.elapsed() >= KEEPALIVE {
                self.last_sent = Instant::now();
                return Some(": keepalive\n\n".into());
            }
            self.wait().await;
        }
    }

    /// Until this process publishes something of the stream's
    /// conversations or the poll period passes; a breaker change is queued
    /// to send as it is.
    async fn wait(&mut self) {
        let until = tokio::time::Instant::now() + POLL;
        while let Ok(woke) = tokio::time::timeout_at(until, self.wake.recv()).await {
            let Ok(e) = woke else { return };
            if e.kind == EventKind::BreakerState && self.only.is_none() {
                self.ready.push_back(super::sse::encode(&e));
                return;
            }
            if self.only.as_ref().is_none_or(|c| *c == e.phone) {
                return;
            }
        }
    }
}

/// One feed event in the SSE wire format (its payload is one line of JSON).
fn frame(e: &FeedEvent) -> String {
    let data = serde_json::to_string(&e.payload).unwrap_or_else(|_| "{}".into());
    format!("id: {}\nevent: {}\ndata: {data}\n\n", e.position().encode(), e.kind)
}
