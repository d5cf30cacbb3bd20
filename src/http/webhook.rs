//! `GET /webhook` (verification handshake) and `POST /webhook` (deliveries).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::{ApiError, AppState};
use crate::engine::{InboundMessage, NewUnusable};
use crate::error::Error;
use crate::numbers::Numbers;
use crate::phone;
use crate::telemetry;
use crate::whatsapp::webhook::{
    has_nul, parse, secure_eq, verify_signature, InboundWa, StatusWa, TemplateStatusWa, Unusable,
};

/// Largest delivery accepted (Meta sends up to 3 MB).
pub const BODY_LIMIT: usize = 3 * 1024 * 1024;
/// Most messages and statuses in one delivery (Meta batches far fewer).
pub const MAX_ITEMS: usize = 1_000;
/// WhatsApp's limit on a text message, in characters.
pub const MAX_TEXT_CHARS: usize = 4_096;
/// Characters kept of a sender's profile name.
pub const MAX_PROFILE_NAME: usize = 128;

#[derive(Debug, Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Echoes `hub.challenge` when the mode is `subscribe` and the token matches.
pub async fn verify(state: web::Data<AppState>, q: web::Query<Handshake>) -> HttpResponse {
    let expected = state.settings.whatsapp.verify_token.as_ref().map(|t| t.expose());
    match (q.mode.as_deref(), q.token.as_deref(), expected, q.challenge.as_deref()) {
        (Some("subscribe"), Some(given), Some(expected), Some(challenge)) if secure_eq(given, expected) => {
            HttpResponse::Ok()
                .content_type("text/plain")
                .body(challenge.to_string())
        }
        _ => HttpResponse::Forbidden().json(json!({"error": "verification failed"})),
    }
}

/// Registers every message of the delivery durably — in the inbox, or as a
/// dead letter with its reason when it cannot be applied — then answers
/// 200. Statuses update our outbound messages. The whole delivery is
/// refused only when it is not a delivery at all (400), too large or too
/// many items (413), or badly signed (401); 503 when the database could not
/// store an item (the provider redelivers; dedupe makes that harmless).
pub async fn receive(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    if let Some(secret) = &state.settings.whatsapp.app_secret {
        let header = req.headers().get("x-hub-signature-256").and_then(|h| h.to_str().ok());
        if !verify_signature(secret.expose().as_bytes(), &body, header) {
            state.metrics.rejected("webhook_signature");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or invalid X-Hub-Signature-256",
            ));
        }
    }
    let delivery = parse(&body).map_err(|e| {
        state.metrics.rejected("webhook_malformed");
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    if delivery.messages.len() + delivery.statuses.len() + delivery.unusable.len() > MAX_ITEMS {
        state.metrics.rejected("webhook_too_many");
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a delivery holds at most {MAX_ITEMS} messages and statuses"),
        ));
    }
    // A message that cannot be applied is kept as a dead letter with its
    // reason; the others go on. The delivery is acknowledged once every
    // item is durable, one way or the other.
    let mut unusable = delivery.unusable;
    let mut usable = Vec::with_capacity(delivery.messages.len());
    let numbers = state.engine.numbers();
    for m in delivery.messages {
        match check(&m, numbers) {
            Ok(()) => usable.push(m),
            Err(reason) => unusable.push(filed(&m, numbers, Unusable::new(&m.raw, reason))),
        }
    }
    // Bounded: a database that stopped answering gets the provider a 503
    // (it redelivers) within the deadline, never a hung request.
    let deadline = std::time::Duration::from_millis(state.settings.server.webhook_deadline_ms);
    // Each message's trace starts here (or under the caller's, if it sent
    // one and `telemetry.trust_traceparent` says to follow it).
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "webhook",
        messages = usable.len(),
        statuses = delivery.statuses.len()
    );
    let caller = req
        .headers()
        .get("traceparent")
        .filter(|_| state.settings.telemetry.trust_traceparent)
        .and_then(|h| h.to_str().ok());
    telemetry::continue_from(&span, caller);
    let stored = store(&state.engine, unusable, usable, &delivery.statuses, &delivery.templates).instrument(span);
    match tokio::time::timeout(deadline, stored).await {
        Ok(answer) => answer,
        Err(_) => {
            state.metrics.rejected("webhook_deadline");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery was not stored in time; deliver it again",
            ))
        }
    }
}

/// Stores a delivery's items: unusable ones as dead letters, messages in
/// the inbox, then its reports; the answer says how many of each.
async fn store(
    engine: &crate::engine::Engine,
    unusable: Vec<Unusable>,
    usable: Vec<InboundWa>,
    statuses: &[StatusWa],
    templates: &[TemplateStatusWa],
) -> Result<HttpResponse, ApiError> {
    let mut dead_lettered = 0;
    for u in &unusable {
        let letter = NewUnusable {
            from: &u.from,
            key: &u.key,
            payload: &u.raw,
            reason: &u.reason,
        };
        engine.keep_unusable(&letter).await.map_err(unstored)?;
        dead_lettered += 1;
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for m in usable {
        if engine.submit_inbound(inbound(m)).await.map_err(unstored)?.first {
            accepted += 1;
        } else {
            duplicates += 1;
        }
    }
    let statuses = apply_reports(engine, statuses, templates).await?;
    Ok(HttpResponse::Ok().json(json!({
        "accepted": accepted,
        "duplicates": duplicates,
        "statuses": statuses,
        "templates": templates.len(),
        "dead_lettered": dead_lettered,
    })))
}

/// Applies a delivery's reports: the statuses of our messages (returns how
/// many matched one) and the templates' new statuses.
async fn apply_reports(
    engine: &crate::engine::Engine,
    reports: &[StatusWa],
    templates: &[TemplateStatusWa],
) -> Result<usize, ApiError> {
    let mut statuses = 0;
    for s in reports {
        let error = s.errors.as_ref().map(|e| e.to_string());
        let recipient = (!s.recipient.is_empty()).then_some(s.recipient.as_str());
        if engine
            .apply_status(
                s.business_number.as_deref(),
                recipient,
                &s.id,
                &s.status,
                error.as_deref(),
            )
            .await
            .map_err(unstored)?
        {
            statuses += 1;
        }
    }
    for t in templates {
        engine
            .record_template_status(&t.name, &t.language, &t.status, t.reason.as_deref())
            .await
            .map_err(unstored)?;
        tracing::info!(template = %t.name, language = %t.language, status = %t.status, "template status reported");
    }
    Ok(statuses)
}

/// The engine's message for a usable one: a contact known only by its BSUID
/// is keyed by it.
fn inbound(m: InboundWa) -> InboundMessage {
    InboundMessage {
        phone: if m.from.is_empty() {
            m.user_id.clone().unwrap_or_default()
        } else {
            m.from
        },
        user_id: m.user_id,
        business_number: m.business_number,
        provider_message_id: m.id,
        payload: m.raw,
        // Free text from the sender: capped.
        contact_name: m.contact_name.map(|n| n.chars().take(MAX_PROFILE_NAME).collect()),
        contact_username: m.contact_username.map(|n| n.chars().take(MAX_PROFILE_NAME).collect()),
    }
}

/// A letter of a message whose sender is a contact (its text was over the
/// limit, its number is not served) is filed under the conversation it was
/// meant for — `<phone_number_id>:<contact>` for a number other than the
/// home one, the BSUID of a username-only sender — not its bare `from`.
fn filed(m: &InboundWa, numbers: &Numbers, mut letter: Unusable) -> Unusable {
    let contact = match crate::whatsapp::kinds::group_of(&m.raw) {
        Some(group) => phone::group_key(group).ok(),
        None if m.from.is_empty() => m.user_id.clone().filter(|u| phone::is_bsuid(u)),
        None => phone::normalize(&m.from).ok(),
    };
    if let Some(contact) = contact {
        letter.from = numbers.conversation(m.business_number.as_deref(), &contact);
    }
    letter
}

/// Why a message cannot be applied, if it cannot: sent to a business number
/// this deployment does not serve (when numbers are configured), a text over
/// WhatsApp's limit, a sender that is not a phone or a BSUID, an id out of
/// bounds.
fn check(m: &InboundWa, numbers: &Numbers) -> Result<(), String> {
    if let Some(why) = numbers.refuses(m.business_number.as_deref()) {
        return Err(why);
    }
    if has_nul(&m.raw) {
        return Err("a NUL character, which cannot be stored as sent".into());
    }
    if crate::engine::inbound_text(&m.raw).chars().count() > MAX_TEXT_CHARS {
        return Err(format!("text over {MAX_TEXT_CHARS} characters"));
    }
    if m.from.is_empty() {
        // A contact known only by its BSUID.
        if !m.user_id.as_deref().is_some_and(phone::is_bsuid) {
            return Err("invalid sender: no phone and no valid BSUID".into());
        }
    } else {
        phone::normalize(&m.from).map_err(|why| format!("invalid phone: {why}"))?;
    }
    if m.user_id.as_deref().is_some_and(|u| !phone::is_bsuid(u)) {
        return Err("invalid BSUID".into());
    }
    if m.id.is_empty() || m.id.len() > 256 {
        return Err("a provider message id has 1 to 256 characters".into());
    }
    if let Some(group) = m.raw.get("group_id") {
        let id = group.as_str().ok_or("invalid group: `group_id` is not a string")?;
        phone::group_key(id).map_err(|why| format!("invalid group: {why}"))?;
    }
    // The media id goes into a Graph API path and a key: plain, bounded.
    if let Some(media) = crate::whatsapp::kinds::media_of(&m.raw) {
        if crate::media::file_name(&media.id) != media.id {
            return Err("invalid media id: 1 to 128 letters, digits, `-` or `_`".into());
        }
    }
    Ok(())
}

/// A message that could not be stored: 400 only when the message itself is
/// bad; anything else is this server's fault, so 503 — the provider
/// redelivers later and nothing was acknowledged (a 400 would tell it to
/// drop the delivery).
fn unstored(e: Error) -> ApiError {
    match e {
        Error::InvalidInput(_) => e.into(),
        e => {
            tracing::error!(error = %e, "a webhook message could not be stored; answering 503");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
