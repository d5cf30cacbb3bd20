//! The agent API under `/api` (bearer token when configured).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, Scope};
use serde::Deserialize;
use serde_json::json;

use super::auth::{authorize, authorize_admin, Caller};
use super::readiness::Readiness;
use super::{conversation_path, media, sse, ApiError, AppState};
use crate::db::read::NumberScope;
use crate::engine::{ConversationSummary, ListFilter};

/// Largest page of the conversation list.
const MAX_PAGE: i64 = 200;
/// Messages returned with one conversation, unless `?limit=` says otherwise.
const RECENT_MESSAGES: i64 = 50;

pub fn scope() -> Scope {
    web::scope("/api")
        .route("/events", web::get().to(sse::all))
        .route("/conversations", web::get().to(list))
        .route("/conversations/{phone}", web::get().to(get))
        .route("/conversations/{phone}/messages", web::post().to(send))
        .route("/conversations/{phone}/template", web::post().to(template))
        .route("/conversations/{phone}/handoff", web::post().to(handoff))
        .route("/conversations/{phone}/events", web::get().to(sse::conversation))
        .route("/conversations/{phone}/media/{media_id}", web::get().to(media::file))
        .route("/admin/dead-letters", web::get().to(dead_letters))
        .route("/admin/dead-letters/{phone}/{id}/replay", web::post().to(replay))
        .route("/admin/breakers", web::get().to(breakers))
        .route("/admin/overview", web::get().to(overview))
        .route("/admin/breakers/{name}", web::post().to(force_breaker))
        .route("/contacts/{phone}", web::delete().to(erase_contact))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Only letters not replayed yet (default true).
    pending: Option<bool>,
    limit: Option<i64>,
}

async fn dead_letters(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<DeadLetterQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &req)?;
    let (pending, limit) = (q.pending.unwrap_or(true), q.limit.unwrap_or(50).clamp(1, MAX_PAGE));
    let rows = state.engine.dead_letters(pending, limit).await?;
    Ok(HttpResponse::Ok().json(json!({"dead_letters": rows})))
}

async fn replay(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &req)?;
    let (phone, id) = path.into_inner();
    // The engine checks the key (a conversation's, or a webhook lane's).
    let replayed = state.engine.replay_dead_letter(&phone, id).await;
    if matches!(replayed, Err(crate::error::Error::InvalidInput(_))) {
        state.metrics.rejected("api_phone");
    }
    replayed?;
    Ok(HttpResponse::Accepted().json(json!({"replayed": id})))
}

async fn breakers(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &req)?;
    Ok(HttpResponse::Ok().json(json!({"breakers": state.engine.breakers().await})))
}

/// Everything the console's operations panel shows, in one answer.
async fn overview(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &req)?;
    let engine = &state.engine;
    let readiness = Readiness::of(&state).await;
    let dead_letters = engine.pending_dead_letters().await;
    let s = engine.stats();
    Ok(HttpResponse::Ok().json(json!({
        "ready": readiness.is_ready(),
        "not_ready_reason": readiness.reason(),
        "breakers": engine.breakers().await,
        "live_sessions": s.live_sessions,
        "mailbox_depth": s.mailbox_depth,
        "in_flight": s.in_flight,
        "accepted": s.accepted,
        "processed": s.processed,
        "conflicts": s.conflicts,
        "outbox_backlog": engine.outbox().backlog().max(0),
        "dead_letters_pending": dead_letters,
        "acks": state.metrics.recent_acks(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceBody {
    /// `open` or `closed`.
    state: String,
}

async fn force_breaker(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<ForceBody>,
) -> Result<HttpResponse, ApiError> {
    authorize_admin(&state, &req)?;
    let open = match body.state.as_str() {
        "open" => true,
        "closed" => false,
        _ => return Err(ApiError::new(StatusCode::BAD_REQUEST, "state is `open` or `closed`")),
    };
    if !state.engine.force_breaker(&path, open).await {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such breaker"));
    }
    Ok(HttpResponse::Ok().json(json!({"breakers": state.engine.breakers().await})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    handoff: Option<bool>,
    phone: Option<String>,
    /// A business number's conversations only.
    number: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let q = q.into_inner();
    if let Some(p) = &q.phone {
        if !p.trim_start_matches('+').bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "phone filter: digits only"));
        }
    }
    let numbers = state.engine.numbers();
    let number = match q.number.as_deref() {
        None => None,
        Some(n) if numbers.get(n).is_none() => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("business number {n} is not served here"),
            ))
        }
        Some(n) if numbers.home().is_some_and(|h| h.id == n) => Some(NumberScope::Home),
        Some(n) => Some(NumberScope::Prefixed(format!("{n}:"))),
    };
    let filter = ListFilter {
        state: q.state,
        handoff: q.handoff,
        phone_prefix: q.phone.map(|p| p.trim_start_matches('+').to_string()),
        number,
        limit: q.limit.unwrap_or(50).clamp(1, MAX_PAGE),
        offset: q.offset.unwrap_or(0).max(0),
    };
    let rows: Vec<serde_json::Value> = state
        .engine
        .list_conversations(&filter)
        .await?
        .into_iter()
        .map(|row| with_number(numbers, row))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"conversations": rows, "limit": filter.limit, "offset": filter.offset})))
}

/// A listed conversation with its business number (id and name) and its
/// contact beside the key.
fn with_number(numbers: &crate::numbers::Numbers, row: ConversationSummary) -> serde_json::Value {
    let (number, contact) = numbers.split(&row.phone);
    let name = number.and_then(|n| numbers.get(n)).and_then(|n| n.name.clone());
    let (number, contact) = (number.map(str::to_string), contact.to_string());
    let mut v = serde_json::to_value(row).unwrap_or_default();
    v["number"] = json!(number);
    v["number_name"] = json!(name);
    v["contact"] = json!(contact);
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Read by `conversation_path`.
    #[allow(dead_code)]
    number: Option<String>,
    /// Only messages older than this one (its `id`): the page before it.
    before: Option<i64>,
    /// Messages in the page (1 to 200).
    limit: Option<i64>,
}

/// One conversation with a page of its history: the newest messages, or
/// with `?before=ID` those older than message ID; `older_before` is the id
/// to ask with for the page before this one (`null`: none is older).
async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let phone = conversation_path::named(&state, &req, &path).await?;
    let limit = match q.limit {
        None => RECENT_MESSAGES,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "limit is 1 to 200")),
    };
    // Through the actor when live: the read comes after everything queued before it.
    let Some(session) = state.engine.conversation(&phone).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such conversation"));
    };
    // One more than the page: whether an older page exists, without a count.
    let (mut messages, display) = state.engine.messages_before(&phone, q.before, limit + 1).await?;
    let older = messages.len() as i64 > limit;
    if older {
        messages.remove(0);
    }
    let older_before = older.then(|| messages.first().map(|m| m.id)).flatten();
    let (number, contact) = state.engine.numbers().split(&phone);
    Ok(HttpResponse::Ok().json(json!({
        "session": session,
        "number": number,
        "number_name": number.and_then(|n| state.engine.numbers().get(n)).and_then(|n| n.name.clone()),
        "contact": contact,
        "contact_name": display.name,
        "contact_username": display.username,
        "window": session.window,
        "templates": state.engine.templates_of(&phone),
        "messages": messages,
        "older_before": older_before,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    text: String,
    /// Makes a retried request harmless; generated when absent.
    idempotency_key: Option<String>,
}

async fn send(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<SendBody>,
) -> Result<HttpResponse, ApiError> {
    let (phone, caller) = one_to_one(&state, &req, &path).await?;
    let body = body.into_inner();
    let key = idempotency_key(body.idempotency_key)?;
    let ack = state
        .engine
        .submit_agent_message(&phone, &body.text, &key, caller.name.as_deref())
        .await?;
    Ok(acked(ack))
}

/// The conversation a message is sent to, and who sends it: a 1:1 one (a
/// group's is read-only: 409).
async fn one_to_one(state: &AppState, req: &HttpRequest, path: &str) -> Result<(String, Caller), ApiError> {
    let caller = authorize(state, req)?;
    let phone = conversation_path::named(state, req, path).await?;
    if crate::phone::is_group(state.engine.numbers().split(&phone).1) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a group's conversation is kept to be read; the bot and agents answer in 1:1 conversations",
        ));
    }
    Ok((phone, caller))
}

/// The caller's idempotency key, checked, or a new one.
fn idempotency_key(given: Option<String>) -> Result<String, ApiError> {
    match given {
        Some(k) if !k.is_empty() && k.len() <= 128 => Ok(k),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key has 1 to 128 characters",
        )),
        None => Ok(format!("{:032x}", rand::random::<u128>())),
    }
}

/// 201 for a message stored now, 200 for a key stored before.
fn acked(ack: crate::actors::session::AgentAck) -> HttpResponse {
    let status = if ack.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    HttpResponse::build(status).json(json!({
        "id": format!("agent:{}", ack.idempotency_key),
        "idempotency_key": ack.idempotency_key,
        "version": ack.version,
        "created": ack.created,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    /// A configured template's name (`whatsapp.templates`).
    name: String,
    /// Needed only when the template is configured in several languages.
    language: Option<String>,
    /// Its body parameters, as many as it takes.
    #[serde(default)]
    parameters: Vec<String>,
    idempotency_key: Option<String>,
}

/// Sends a template: the way to reach a customer outside the 24-hour window.
async fn template(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<TemplateBody>,
) -> Result<HttpResponse, ApiError> {
    let (phone, caller) = one_to_one(&state, &req, &path).await?;
    let body = body.into_inner();
    let key = idempotency_key(body.idempotency_key)?;
    let by = caller.name.as_deref();
    let ack = state
        .engine
        .submit_template(&phone, &body.name, body.language.as_deref(), body.parameters, &key, by)
        .await?;
    Ok(acked(ack))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffBody {
    /// True: a human agent takes the conversation; false: back to the bot.
    active: bool,
}

async fn handoff(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<HandoffBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = authorize(&state, &req)?;
    let phone = conversation_path::named(&state, &req, &path).await?;
    let view = state
        .engine
        .set_handoff(&phone, body.active, caller.name.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(json!({"session": view})))
}

/// Erases a contact's personal data everywhere (admin): 200 with what
/// changed per table and the marker that replaced the key.
async fn erase_contact(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = super::auth::authorize_admin(&state, &req)?;
    let phone = conversation_path::named(&state, &req, &path).await?;
    let erased = state.engine.erase_contact(&phone, caller.name.as_deref()).await?;
    Ok(HttpResponse::Ok().json(json!({"erased": erased})))
}
