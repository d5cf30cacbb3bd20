//! Who may call `/api`: a per-client rate limit, then the bearer token.

use actix_web::http::StatusCode;
use actix_web::HttpRequest;

use super::{ApiError, AppState};
use crate::whatsapp::webhook::secure_eq;

/// Applies the client's rate limit (429), then checks `Authorization:
/// Bearer <token>` against every configured token (several allow rotation),
/// in constant time. No token configured: open.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    if let Some(ip) = req.peer_addr().map(|a| a.ip()) {
        if let Err(wait) = state.limiter.check(ip) {
            state.metrics.rejected("api_rate_limit");
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many requests; slow down");
            e.retry_after = Some(wait);
            return Err(e);
        }
    }
    let tokens = &state.settings.api.tokens;
    if tokens.is_empty() {
        return Ok(());
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare with every token, whatever matches, so timing says nothing.
    let ok = tokens.iter().fold(false, |ok, t| secure_eq(given, t.expose()) | ok);
    if ok {
        Ok(())
    } else {
        state.metrics.rejected("api_token");
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token",
        ))
    }
}
