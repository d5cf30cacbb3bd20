//! The conversation an API path names: `{contact}` (a phone or a BSUID of
//! the contact) and `?number=<phone_number_id>` (default: the home number).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::error::Error;

#[derive(Debug, Deserialize)]
struct NumberParam {
    number: Option<String>,
}

pub(super) async fn named(state: &AppState, req: &HttpRequest, contact: &str) -> Result<String, ApiError> {
    let number = web::Query::<NumberParam>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().number);
    // A key as listed (`<number>:<contact>`, what the console links to).
    if contact.contains(':') {
        if number.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a conversation key already names its number: leave out ?number=",
            ));
        }
        return listed(state, contact);
    }
    state
        .engine
        .conversation_of(number.as_deref(), contact)
        .await
        .map_err(|e| match e {
            Error::InvalidInput(why) => {
                state.metrics.rejected("api_phone");
                ApiError::new(StatusCode::BAD_REQUEST, format!("invalid phone: {why}"))
            }
            e => e.into(),
        })
}

/// A conversation key as the API lists it (dead letters): the contact,
/// behind its number's id for a number other than the home one.
pub(super) fn listed(state: &AppState, raw: &str) -> Result<String, ApiError> {
    state.engine.numbers().checked_key(raw).map_err(|why| {
        state.metrics.rejected("api_phone");
        ApiError::new(StatusCode::BAD_REQUEST, format!("invalid phone: {why}"))
    })
}
