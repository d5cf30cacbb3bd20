//! Who may call `/api`: a per-client rate limit, then the bearer token.

use actix_web::http::StatusCode;
use actix_web::HttpRequest;

use super::{ApiError, AppState};
use crate::config::Role;
use crate::whatsapp::webhook::secure_eq;

/// Who called `/api`: the token's name (a plain token: anonymous) and role.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub name: Option<String>,
    pub role: Role,
}

/// Applies the client's rate limit (429), then checks `Authorization:
/// Bearer <token>` against every configured token (several allow rotation),
/// in constant time, and says who called. No token configured: open, an
/// anonymous admin.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<Caller, ApiError> {
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
        return Ok(Caller {
            name: None,
            role: Role::Admin,
        });
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare with every token, whatever matches, so timing says nothing.
    let mut found = None;
    for t in tokens {
        if secure_eq(given, t.token.expose()) {
            found = found.or(Some(t));
        }
    }
    match found {
        Some(t) => Ok(Caller {
            name: t.name.clone(),
            role: t.role,
        }),
        None => {
            state.metrics.rejected("api_token");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token",
            ))
        }
    }
}

/// [`authorize`], and the caller must be an admin (403 for an agent).
pub fn authorize_admin(state: &AppState, req: &HttpRequest) -> Result<Caller, ApiError> {
    let caller = authorize(state, req)?;
    if caller.role != Role::Admin {
        state.metrics.rejected("api_role");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this is an admin operation; an agent token may use the conversations only",
        ));
    }
    Ok(caller)
}
