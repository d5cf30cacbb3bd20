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
}

impl Reader {
    /// A reader from `from` (the head when `None`): a dead database is an error now, not a hang later.
    pub async fn open(engine: Engine, only: Option<String>, from: Option<Position>) -> Result<Self, ApiError> {
        let wake = engine.subscribe();
        let at = match from {
            Some(p) => p,
            None => engine.feed_head().await.map_err(ApiError::from)?,
        };
        Ok(Self {
            engine,
            only,
            at,
            wake,
            ready: VecDeque::new(),
            last_sent: Instant::now(),
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

    /// Until this process publishes something or the poll period passes;
    /// a breaker change is queued to send as it is.
    async fn wait(&mut self) {
        let woke = tokio::time::timeout(POLL, self.wake.recv()).await;
        if let Ok(Ok(e)) = woke {
            if e.kind == EventKind::BreakerState && self.only.is_none() {
                self.ready.push_back(super::sse::encode(&e));
            }
        }
    }
}

/// One feed event in the SSE wire format (its payload is one line of JSON).
fn frame(e: &FeedEvent) -> String {
    let data = serde_json::to_string(&e.payload).unwrap_or_else(|_| "{}".into());
    format!("id: {}\nevent: {}\ndata: {data}\n\n", e.position().encode(), e.kind)
}
