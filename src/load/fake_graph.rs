//! A local fake of the WhatsApp Cloud API send endpoint, for the load
//! harness (which must not send real messages) and the tests. Answers from
//! a script, then with success; counts what it receives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    script: VecDeque<(u16, Value)>,
    requests: Vec<Value>,
    /// Beside each request: the number in its path and its bearer token.
    senders: Vec<(String, String)>,
    /// The tracking data (`biz_opaque_callback_data`) of every send it accepted.
    accepted: Vec<String>,
    down: bool,
    next_id: u64,
    /// Recipients whose sends are not answered until released.
    held: Vec<String>,
    /// Sends waiting for their recipient's release.
    waiting: usize,
    /// How long each answer takes: a random time in this range.
    latency: (std::time::Duration, std::time::Duration),
    /// Every message send, in arrival order, with when it was answered.
    log: Vec<Arrival>,
    /// The read receipts received (their bodies), apart from the sends.
    receipts: Vec<Value>,
    /// While set, read receipts get no answer (a provider hanging on them).
    hold_receipts: bool,
    /// Media files by id: their bytes and mime type.
    media: std::collections::HashMap<String, (Vec<u8>, String)>,
    /// The file served for any other media id, if any (the load harness's
    /// images).
    any_media: Option<(Vec<u8>, String)>,
    /// The next answers to media URL requests (then success again).
    media_script: VecDeque<u16>,
    /// Each media file served whole, by id, with the bearer token it was asked with.
    media_served: Vec<(String, String)>,
}

/// One message send as the fake saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The business number in the path.
    pub number: String,
    /// The recipient (`to`, or `recipient` for a BSUID).
    pub to: String,
    /// Its outbox row's key (`biz_opaque_callback_data`).
    pub tracking: String,
    /// When it arrived, wall clock (for the per-second rate).
    pub arrived_at: std::time::SystemTime,
    /// When it arrived and when it was answered (for overlaps).
    pub arrived: std::time::Instant,
    pub answered: Option<std::time::Instant>,
    /// Whether the answer accepted it.
    pub accepted: bool,
    /// Its `traceparent` header, if it had one.
    pub traceparent: Option<String>,
}

/// The recipient that holds (and releases) every send.
pub const ALL: &str = "*";

/// The fake; cheap to clone.
#[derive(Clone)]
pub struct FakeGraph {
    pub base: String,
    /// Shared with the server's handlers; a mutex: an answer takes the
    /// script's next entry and records the send in one step.
    state: Arc<Mutex<State>>,
    /// Wakes the sends held for a recipient when it is released; a
    /// `Notify`, as any number of held sends wait on it.
    released: Arc<tokio::sync::Notify>,
}

impl FakeGraph {
    /// Starts the fake on a free loopback port, on the current actix runtime.
    pub fn start() -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let released = Arc::new(tokio::sync::Notify::new());
        let (s, r) = (state.clone(), released.clone());
        let server = HttpServer::new(move || {
            let (s, r) = (s.clone(), r.clone());
            let (files, urls) = (s.clone(), s.clone());
            App::new()
                .route(
                    "/files/{id}",
                    web::get().to(move |id: web::Path<String>, req: actix_web::HttpRequest| {
                        let s = files.clone();
                        async move { media_file(&s, &id, bearer(&req)) }
                    }),
                )
                .route(
                    "/{version}/{media_id}",
                    web::get().to(move |path: web::Path<(String, String)>, req: actix_web::HttpRequest| {
                        let s = urls.clone();
                        async move { media_url(&s, &path.1, &req) }
                    }),
                )
                .route(
                    "/{version}/{number}/messages",
                    web::post().to(
                        move |path: web::Path<(String, String)>,
                              req: actix_web::HttpRequest,
                              body: web::Json<Value>| {
                            let (s, r) = (s.clone(), r.clone());
                            let token = bearer(&req);
                            let trace = req.headers().get("traceparent").and_then(|h| h.to_str().ok());
                            let sender = (path.into_inner().1, token, trace.map(str::to_string));
                            async move { message(&s, &r, body.into_inner(), sender).await }
                        },
                    ),
                )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))?;
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        Ok(Self {
            base: format!("http://{addr}"),
            state,
            released,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next answers, in order (then success again).
    pub fn script(&self, answers: impl IntoIterator<Item = (u16, Value)>) {
        self.lock().script.extend(answers);
    }

    /// Every answer takes `latency` (the real API answers in 100–500 ms).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().latency = (latency, latency);
    }

    /// Each answer takes a random time between `min` and `max`: answers
    /// to sends made at once come back in any order.
    pub fn set_latency_range(&self, min: std::time::Duration, max: std::time::Duration) {
        self.lock().latency = (min, max.max(min));
    }

    /// Every message send, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.lock().log.clone()
    }

    /// The read receipts received (their bodies).
    pub fn read_receipts(&self) -> Vec<Value> {
        self.lock().receipts.clone()
    }

    /// While `hold`, read receipts are never answered.
    pub fn hold_read_receipts(&self, hold: bool) {
        self.lock().hold_receipts = hold;
    }

    /// Sends to `to` (every send for [`ALL`]) get no answer until
    /// [`FakeGraph::release`] (a provider hanging on its requests).
    pub fn hold(&self, to: &str) {
        self.lock().held.push(to.to_string());
    }

    /// Answers the held sends to `to`, and later ones at once.
    pub fn release(&self, to: &str) {
        self.lock().held.retain(|h| h != to);
        self.released.notify_waiters();
    }

    /// Sends received and not answered, held for their recipient.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// While down, every request gets 503 (and is not recorded).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Requests received while up.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// The tracking data of each accepted send, one entry per acceptance:
    /// a key that shows up twice is a message sent twice.
    pub fn accepted_tracking(&self) -> Vec<String> {
        self.lock().accepted.clone()
    }

    /// The business number (from the path) and the bearer token of each
    /// request, in the order of [`Self::requests`].
    pub fn senders(&self) -> Vec<(String, String)> {
        self.lock().senders.clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Serves `bytes` as media `id` of `mime_type` (through `GET /{version}/{id}`
    /// naming its URL, then that URL, as the Graph API does).
    pub fn add_media(&self, id: &str, bytes: &[u8], mime_type: &str) {
        self.lock()
            .media
            .insert(id.to_string(), (bytes.to_vec(), mime_type.to_string()));
    }

    /// Serves `bytes` of `mime_type` for every media id not added with
    /// [`Self::add_media`] (the load harness names a new id per image).
    pub fn serve_any_media(&self, bytes: &[u8], mime_type: &str) {
        self.lock().any_media = Some((bytes.to_vec(), mime_type.to_string()));
    }

    /// The next answers to media URL requests, by status (then success again).
    pub fn script_media(&self, statuses: impl IntoIterator<Item = u16>) {
        self.lock().media_script.extend(statuses);
    }

    /// Each media file served whole: its id and the bearer token it was asked with.
    pub fn media_served(&self) -> Vec<(String, String)> {
        self.lock().media_served.clone()
    }

    /// `[whatsapp]` settings pointing at this fake.
    pub fn settings(&self) -> crate::config::WhatsAppSettings {
        crate::config::WhatsAppSettings {
            access_token: Some(crate::config::Secret::new("EAAG-fake-token")),
            phone_number_id: Some(super::population::number_id(0)),
            api_base: self.base.clone(),
            ..Default::default()
        }
    }
}

fn bearer(req: &actix_web::HttpRequest) -> String {
    req.headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

/// `GET /{version}/{media-id}`: the file's URL and what it is, as Meta answers.
fn media_url(state: &Mutex<State>, id: &str, req: &actix_web::HttpRequest) -> HttpResponse {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(status) = st.media_script.pop_front() {
        let status = actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK);
        return HttpResponse::build(status).json(json!({"error": {"code": 1, "message": "scripted"}}));
    }
    let Some((bytes, mime)) = st.media.get(id).or(st.any_media.as_ref()) else {
        return HttpResponse::NotFound().json(json!({"error": {"code": 100, "message": "unknown media id"}}));
    };
    let info = req.connection_info();
    use sha2::Digest;
    HttpResponse::Ok().json(json!({
        "messaging_product": "whatsapp",
        "url": format!("{}://{}/files/{id}", info.scheme(), info.host()),
        "mime_type": mime,
        "sha256": hex::encode(sha2::Sha256::digest(bytes)),
        "file_size": bytes.len(),
        "id": id,
    }))
}

/// `GET /files/{id}`: the file's bytes.
fn media_file(state: &Mutex<State>, id: &str, token: String) -> HttpResponse {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let Some((bytes, mime)) = st.media.get(id).or(st.any_media.as_ref()).cloned() else {
        return HttpResponse::NotFound().finish();
    };
    st.media_served.push((id.to_string(), token));
    HttpResponse::Ok().content_type(mime).body(bytes)
}

/// Waits while sends to `to` are held.
async fn hold(state: &Mutex<State>, released: &tokio::sync::Notify, to: &str) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let mut counted = false;
    loop {
        // Registered before the check, so a release in between is not missed.
        let notified = released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = lock();
            if !st.held.iter().any(|h| h == to || h == ALL) {
                if counted {
                    st.waiting -= 1;
                }
                return;
            }
            if !counted {
                st.waiting += 1;
                counted = true;
            }
        }
        notified.await;
    }
}

/// `POST /{version}/{number}/messages`: a read receipt, or a message send
/// (held while its recipient is, answered after the latency, logged).
async fn message(
    state: &Mutex<State>,
    released: &tokio::sync::Notify,
    body: Value,
    sender: (String, String, Option<String>),
) -> HttpResponse {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    if body["status"] == "read" {
        let hold = {
            let mut st = lock();
            st.receipts.push(body);
            st.hold_receipts
        };
        if hold {
            std::future::pending::<()>().await;
        }
        return HttpResponse::Ok().json(json!({"success": true}));
    }
    let to = body["to"]
        .as_str()
        .or_else(|| body["recipient"].as_str())
        .unwrap_or_default()
        .to_string();
    let (arrived, arrived_at) = (std::time::Instant::now(), std::time::SystemTime::now());
    let entry = {
        let mut st = lock();
        st.log.push(Arrival {
            number: sender.0.clone(),
            to: to.clone(),
            tracking: body["biz_opaque_callback_data"]
                .as_str()
                .unwrap_or("untracked")
                .to_string(),
            arrived_at,
            arrived,
            answered: None,
            accepted: false,
            traceparent: sender.2.clone(),
        });
        st.log.len() - 1
    };
    // Answered when this handler ends, even when the client gave up and it
    // was dropped mid-wait: the sender sends again only after that.
    let _answered = AnsweredOnDrop { state, entry };
    hold(state, released, &to).await;
    let (min, max) = lock().latency;
    let latency = if max > min {
        min + (max - min).mul_f64(rand::random::<f64>())
    } else {
        min
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = answer(state, body, (sender.0, sender.1));
    lock().log[entry].accepted = resp.status().is_success();
    resp
}

/// Marks a logged send answered when its handler ends.
struct AnsweredOnDrop<'a> {
    state: &'a Mutex<State>,
    entry: usize,
}

impl Drop for AnsweredOnDrop<'_> {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.log[self.entry].answered = Some(std::time::Instant::now());
    }
}

fn answer(state: &Mutex<State>, body: Value, sender: (String, String)) -> HttpResponse {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if st.down {
        return HttpResponse::ServiceUnavailable().json(json!({"error": {"code": 1, "message": "down"}}));
    }
    let tracking = body["biz_opaque_callback_data"]
        .as_str()
        .unwrap_or("untracked")
        .to_string();
    st.requests.push(body);
    st.senders.push(sender);
    let (status, body) = match st.script.pop_front() {
        Some(a) => a,
        None => {
            st.next_id += 1;
            (
                200,
                json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.fake.{}", st.next_id)}]}),
            )
        }
    };
    let status = actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK);
    if status.is_success() {
        st.accepted.push(tracking);
    }
    HttpResponse::build(status).json(body)
}

/// A WhatsApp error answer.
pub fn wa_error(status: u16, code: i64) -> (u16, Value) {
    (
        status,
        json!({"error": {"message": "fake", "type": "OAuthException", "code": code}}),
    )
}
