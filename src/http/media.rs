//! `GET /api/conversations/{contact}/media/{media_id}`: an inbound media
//! file as kept by the fetcher, for the console (which fetches it with its
//! bearer token and shows it). Only a file of that conversation is served.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::authorize;
use super::{conversation_path, ApiError, AppState};

pub(super) async fn file(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (contact, media_id) = path.into_inner();
    let phone = conversation_path::named(&state, &req, &contact).await?;
    let Some(m) = state.engine.media_file(&phone, &media_id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such media file in this conversation",
        ));
    };
    let kept = match (m.status.as_str(), m.path.as_deref()) {
        ("downloaded", Some(kept)) => kept,
        ("failed", _) => {
            let why = m.error.unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::GONE,
                format!("the file could not be fetched: {why}"),
            ));
        }
        _ => {
            let mut e = ApiError::new(StatusCode::NOT_FOUND, "the file is not downloaded yet");
            e.retry_after = Some(1);
            return Err(e);
        }
    };
    let bytes = tokio::fs::read(kept)
        .await
        .map_err(|e| ApiError::new(StatusCode::GONE, format!("the kept file cannot be read: {e}")))?;
    let mime = m
        .mime_type
        .filter(|t| t.contains('/') && header::HeaderValue::from_str(t).is_ok())
        .unwrap_or_else(|| "application/octet-stream".into());
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, mime))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "private, max-age=3600"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", crate::media::file_name(&media_id)),
        ))
        .body(bytes))
}
