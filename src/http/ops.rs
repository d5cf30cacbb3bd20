//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::api::authorize;
use super::{ApiError, AppState};

/// The process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready for traffic: the database answers and the engine is not stopping.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.engine.is_stopping() {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "stopping"}));
    }
    match state.engine.database().ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(json!({"status": "database unavailable", "error": e.to_string()}))
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
