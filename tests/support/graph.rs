//! A local fake of the WhatsApp Cloud API send endpoint (real HTTP on
//! loopback). Answers from a script, then with success; records requests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    script: VecDeque<(u16, Value)>,
    requests: Vec<Value>,
    down: bool,
    next_id: u64,
}

#[derive(Clone)]
pub struct FakeGraph {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl FakeGraph {
    /// Starts the fake on a free loopback port (inside the current runtime).
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let server = HttpServer::new(move || {
            let s = s.clone();
            App::new().route(
                "/{version}/{number}/messages",
                web::post().to(move |body: web::Json<Value>| {
                    let s = s.clone();
                    async move {
                        let mut st = s.lock().unwrap();
                        if st.down {
                            return HttpResponse::ServiceUnavailable().json(json!({"error": {"code": 1, "message": "down"}}));
                        }
                        st.requests.push(body.into_inner());
                        let (status, body) = st.script.pop_front().unwrap_or_else(|| {
                            (200, json!({"messaging_product": "whatsapp", "messages": [{"id": "auto"}]}))
                        });
                        let body = if body.pointer("/messages/0/id") == Some(&json!("auto")) {
                            st.next_id += 1;
                            json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.fake.{}", st.next_id)}]})
                        } else {
                            body
                        };
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(body)
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        Self {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// The next answers, in order (then success again).
    pub fn script(&self, answers: impl IntoIterator<Item = (u16, Value)>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Requests received (while up).
    pub fn requests(&self) -> Vec<Value> {
        self.state.lock().unwrap().requests.clone()
    }

    /// `[whatsapp]` settings pointing at this fake.
    pub fn settings(&self) -> switchboard::config::WhatsAppSettings {
        switchboard::config::WhatsAppSettings {
            access_token: Some(switchboard::config::Secret::new("EAAG-test-token")),
            phone_number_id: Some("1098765432".into()),
            api_base: self.base.clone(),
            ..Default::default()
        }
    }
}

/// A WhatsApp error answer.
pub fn wa_error(status: u16, code: i64) -> (u16, Value) {
    (
        status,
        json!({"error": {"message": "fake", "type": "OAuthException", "code": code}}),
    )
}
