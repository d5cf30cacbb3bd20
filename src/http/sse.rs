//! Server-Sent Events: `GET /api/events` and `GET /api/conversations/{phone}/events`.
//!
//! With the event feed on (the default) they read the feed: ids, and
//! `Last-Event-ID` resumes (see [`super::feed`]). Without it each subscriber
//! reads from the engine's broadcast channel with its own bounded buffer;
//! one that falls behind is disconnected (it can reconnect and re-read
//! state) — processing never waits for a subscriber.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream, IntervalStream};

use super::auth::authorize;
use super::{ApiError, AppState};
use crate::engine::Event;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Formats one event in the SSE wire format.
pub fn encode(e: &Event) -> String {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "event".into());
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    // JSON has no raw newlines, so one `data:` line is enough.
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A place among the open streams, or 503.
fn place(state: &AppState) -> Result<super::limits::StreamSlot, ApiError> {
    state.streams.try_open().ok_or_else(|| {
        state.metrics.rejected("sse_subscribers");
        ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open",
        )
    })
}

/// A stream of `only`'s events (every conversation's when `None`): from the
/// feed when it is on, else live.
async fn open(state: &AppState, req: &HttpRequest, only: Option<String>) -> Result<HttpResponse, ApiError> {
    if !state.engine.feed_enabled() {
        return stream(state, only);
    }
    let from = super::feed::resume_from(req)?;
    let place = place(state)?;
    let reader = super::feed::Reader::open(state.engine.clone(), only, from).await?;
    let closed = state.closing.clone().cancelled_owned();
    let body = futures_util::stream::unfold(reader, |mut r| async move { r.next().await.map(|f| (f, r)) })
        .take_until(closed)
        .map(move |frame| {
            // The place is held as long as the stream.
            let _held = &place;
            Ok::<_, actix_web::Error>(web::Bytes::from(frame))
        });
    Ok(events_response(body))
}

fn events_response(
    body: impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

fn stream(state: &AppState, only: Option<String>) -> Result<HttpResponse, ApiError> {
    let place = place(state)?;
    let events = BroadcastStream::new(state.engine.subscribe())
        .take_while(|r| std::future::ready(!matches!(r, Err(BroadcastStreamRecvError::Lagged(_)))))
        .filter_map(move |r| {
            let keep = match (&r, &only) {
                (Ok(e), Some(p)) => &e.phone == p,
                (Ok(_), None) => true,
                (Err(_), _) => false,
            };
            std::future::ready(match r {
                Ok(e) if keep => Some(encode(&e)),
                _ => None,
            })
        });
    let keepalive = IntervalStream::new(tokio::time::interval(KEEPALIVE)).map(|_| ": keepalive\n\n".to_string());
    let closed = state.closing.clone().cancelled_owned();
    // Ends when the event stream ends (a lagging subscriber is dropped) or
    // the server begins to stop.
    let body = futures_util::stream::select(
        events.map(Some).chain(futures_util::stream::once(async { None })),
        keepalive.map(Some),
    )
    .take_while(|x| std::future::ready(x.is_some()))
    .take_until(closed)
    .filter_map(move |x| {
        // The place is held as long as the stream.
        let _held = &place;
        std::future::ready(x.map(|s| Ok::<_, actix_web::Error>(web::Bytes::from(s))))
    });
    Ok(events_response(body))
}

pub async fn all(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    open(&state, &req, None).await
}

pub async fn conversation(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let p = super::conversation_path::named(&state, &req, &path).await?;
    open(&state, &req, Some(p)).await
}
