//! Named agents: `api.tokens` entries `{ name, token, role }`. Their
//! messages and hand-offs carry their names; an `agent` token keeps to the
//! conversations, an `admin` (or a plain, anonymous token) may operate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::app::{TestApp, APP_SECRET};
use support::TestDb;
use switchboard::config::{ApiToken, Role, Secret};

const PHONE: &str = "5215512345566";
const ANA: &str = "token-ana";
const LUIS: &str = "token-luis";
const ROOT: &str = "token-root";

async fn app(db: &TestDb) -> TestApp {
    TestApp::spawn(
        db,
        |s| {
            s.whatsapp.app_secret = Some(Secret::new(APP_SECRET));
            s.api.tokens = vec![
                ApiToken::named("Ana", ANA, Role::Agent),
                ApiToken::named("Luis", LUIS, Role::Admin),
                Secret::new(ROOT).into(),
            ];
        },
        None,
    )
    .await
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn status_of_get(app: &TestApp, path: &str, token: &str) -> u16 {
    let r = app.client.get(app.url(path)).bearer_auth(token).send().await.unwrap();
    r.status().as_u16()
}

#[actix_web::test]
async fn an_agent_token_keeps_to_the_conversations_and_admins_operate() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    app.say(PHONE, "wamid.agents.1", "hola").await;
    for path in ["/api/admin/dead-letters", "/api/admin/breakers", "/api/admin/overview"] {
        assert_eq!(status_of_get(&app, path, ANA).await, 403, "{path}");
        assert_eq!(status_of_get(&app, path, LUIS).await, 200, "{path}");
        assert_eq!(
            status_of_get(&app, path, ROOT).await,
            200,
            "{path}: a plain token is an admin"
        );
    }
    let r = post(&app, "/api/admin/breakers/ai", ANA, json!({"state": "open"})).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("admin operation"));
    let r = post(&app, "/api/admin/dead-letters/5215512345566/1/replay", ANA, json!({})).await;
    assert_eq!(r.status(), 403);
    // The conversations are the agent's.
    assert_eq!(status_of_get(&app, "/api/conversations", ANA).await, 200);
    assert_eq!(
        status_of_get(&app, &format!("/api/conversations/{PHONE}"), ANA).await,
        200
    );
    assert_eq!(status_of_get(&app, "/api/conversations", "nobody").await, 401);
    app.stop().await;
}

#[actix_web::test]
async fn agent_messages_and_hand_offs_carry_the_agents_names() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    app.say(PHONE, "wamid.agents.2", "hola").await;
    let conv = format!("/api/conversations/{PHONE}");
    let r = post(&app, &format!("{conv}/handoff"), ANA, json!({"active": true})).await;
    assert_eq!(r.status(), 200);
    let taken: Value = r.json().await.unwrap();
    assert_eq!(taken["session"]["data"]["_handoff_by"], "Ana");
    for (token, text) in [
        (ANA, "Hola, soy Ana."),
        (LUIS, "Soy Luis, su supervisor."),
        (ROOT, "Aviso del sistema."),
    ] {
        let r = post(&app, &format!("{conv}/messages"), token, json!({"text": text})).await;
        assert_eq!(r.status(), 201, "{text}");
    }
    let got = app.get_json(&conv, ANA).await;
    let by_body = |body: &str| -> Value {
        got["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["body"] == body)
            .unwrap_or_else(|| panic!("{body} in {got}"))
            .clone()
    };
    assert_eq!(by_body("Hola, soy Ana.")["name"], "Ana");
    assert_eq!(by_body("Soy Luis, su supervisor.")["name"], "Luis");
    let anonymous = by_body("Aviso del sistema.");
    assert_eq!(
        (anonymous["origin"].as_str(), anonymous.get("name")),
        (Some("agent"), None)
    );
    assert_eq!(by_body("hola").get("name"), None, "the customer has no agent name");
    // Luis returns it to the bot; an anonymous token clears the name.
    let r = post(&app, &format!("{conv}/handoff"), LUIS, json!({"active": false})).await;
    let back: Value = r.json().await.unwrap();
    assert_eq!(back["session"]["data"]["_handoff_by"], "Luis");
    let r = post(&app, &format!("{conv}/handoff"), ROOT, json!({"active": true})).await;
    let anon: Value = r.json().await.unwrap();
    assert_eq!(anon["session"]["handoff"], true);
    assert_eq!(anon["session"]["data"].get("_handoff_by"), None);
    app.stop().await;
}
