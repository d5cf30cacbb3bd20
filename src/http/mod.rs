//! The HTTP layer (actix-web): the WhatsApp webhook, the agent API with
//! realtime events, and the operations endpoints.

mod api;
mod auth;
mod console;
mod conversation_path;
mod feed;
mod figures;
pub mod limits;
mod media;
mod metrics;
mod ops;
mod readiness;
mod sse;
mod webhook;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use serde_json::json;

pub use metrics::Metrics;
pub use sse::encode as encode_event;

use crate::config::Settings;
use crate::engine::Engine;
use crate::error::Error;

/// Request bodies of the agent API are small.
pub const API_BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Cancelled when the server begins to stop (a child of the engine's
    /// lifecycle token, cancelled before it): long-lived streams (SSE) end,
    /// so a graceful stop does not wait for them, and readiness turns 503.
    pub closing: tokio_util::sync::CancellationToken,
    /// Per-client request rate on `/api`.
    pub limiter: limits::RateLimiter,
    /// Open event streams.
    pub streams: limits::StreamSlots,
}

/// An error as an HTTP answer: a status and a JSON reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// More of the answer's JSON fields beside `error` (a 409's window).
    pub detail: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            retry_after: None,
            detail: None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        match (self.retry_after, self.status) {
            (Some(s), _) => {
                r.insert_header(("Retry-After", s.to_string()));
            }
            (None, StatusCode::SERVICE_UNAVAILABLE) => {
                r.insert_header(("Retry-After", "1"));
            }
            _ => {}
        }
        let mut body = self.detail.clone().unwrap_or_default();
        body.insert("error".into(), json!(self.reason));
        r.json(body)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        if let Error::OutsideWindow(w) = &e {
            let mut detail = serde_json::Map::new();
            detail.insert("window".into(), json!(w));
            return ApiError {
                detail: Some(detail),
                ..ApiError::new(StatusCode::CONFLICT, e.to_string())
            };
        }
        let status = match &e {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::Refused(_) => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, e.to_string())
    }
}

/// A JSON error for bodies that fail to parse or are too large.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(API_BODY_LIMIT)
        .error_handler(|err, _req: &HttpRequest| {
            let status = match &err {
                actix_web::error::JsonPayloadError::Overflow { .. }
                | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, err.to_string()).into()
        })
}

/// Binds the server (port 0 picks a free port) without running it.
pub fn build_server(state: Arc<AppState>, listener: TcpListener) -> std::io::Result<Server> {
    let server_settings = state.settings.server.clone();
    let data = web::Data::from(state);
    // actix bounds connections per worker: share the total out.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_worker = server_settings.max_connections.div_ceil(workers).max(1);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(json_config())
            // The last `wrap` runs first: every request is counted, the
            // refused ones included.
            .wrap(actix_web::middleware::from_fn(limits::header_size))
            .wrap(actix_web::middleware::from_fn(metrics::track))
            .route("/healthz", web::get().to(ops::healthz))
            .route("/readyz", web::get().to(ops::readyz))
            .route("/metrics", web::get().to(ops::metrics))
            .service(
                web::resource("/webhook")
                    .app_data(web::PayloadConfig::new(webhook::BODY_LIMIT))
                    .route(web::get().to(webhook::verify))
                    .route(web::post().to(webhook::receive)),
            )
            .service(api::scope())
            .service(console::scope())
    })
    // Signals are ours: `serve` stops the server, then the engine, in order.
    .disable_signals()
    // In-flight requests get the configured grace, then the engine drains.
    .shutdown_timeout(server_settings.shutdown_timeout_s)
    .workers(workers)
    .max_connections(per_worker)
    .client_request_timeout(std::time::Duration::from_millis(
        server_settings.request_head_timeout_ms,
    ))
    .listen(listener)?
    .run();
    Ok(server)
}
