//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::auth::authorize;
use super::readiness::Readiness;
use super::{ApiError, AppState};

/// The process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready for traffic: the database answers and the engine is not stopping.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match Readiness::of(&state).await {
        Readiness::Ready => HttpResponse::Ok().json(json!({"status": "ready"})),
        Readiness::Stopping => HttpResponse::ServiceUnavailable().json(json!({"status": "stopping"})),
        Readiness::DatabaseUnavailable(e) => {
            HttpResponse::ServiceUnavailable().json(json!({"status": "database unavailable", "error": e}))
        }
    }
}

/// Prometheus text format (token-protected when `api.protect_metrics`).
pub async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if state.settings.api.protect_metrics {
        authorize(&state, &req)?;
    }
    let body = state.metrics.render(&state.engine).await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}
