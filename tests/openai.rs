//! The `openai` provider against a local fake of an OpenAI-compatible
//! chat-completions endpoint (real HTTP on loopback).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};
use switchboard::ai::openai::{OpenAiModel, OpenAiSettings};
use switchboard::ai::{IntentCandidate, IntentRequest, Model, ModelError, SlotRequest};

/// Answers with `content` as the assistant message; records the requests.
async fn fake(content: &'static str, status: u16) -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let server = HttpServer::new(move || {
        let recorded = recorded.clone();
        App::new().route(
            "/v1/chat/completions",
            web::post().to(move |req: actix_web::HttpRequest, body: web::Json<Value>| {
                let recorded = recorded.clone();
                async move {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("");
                    let mut b = body.into_inner();
                    b["_auth"] = json!(auth);
                    recorded.lock().unwrap().push(b);
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]}))
                }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    (format!("http://{addr}/v1"), seen)
}

fn model(base_url: String) -> OpenAiModel {
    OpenAiModel::with_key(
        &OpenAiSettings {
            base_url,
            model: "test-model".into(),
            ..Default::default()
        },
        switchboard::config::Secret::new("sk-test-key"),
    )
    .unwrap()
}

fn intents() -> Arc<IntentRequest> {
    Arc::new(IntentRequest {
        text: "se me descompuso la nevera".into(),
        candidates: vec![
            IntentCandidate {
                name: "refrigerador".into(),
                keywords: vec!["refri".into()],
            },
            IntentCandidate {
                name: "vehiculo".into(),
                keywords: vec!["carro".into()],
            },
        ],
    })
}

#[actix_web::test]
async fn an_intent_answer_in_json_is_used_and_the_request_asks_for_json() {
    let (url, seen) = fake(r#"{"intent": "refrigerador"}"#, 200).await;
    let m = model(url);
    assert_eq!(
        m.detect_intent(intents()).await.unwrap().as_deref(),
        Some("refrigerador")
    );
    let req = seen.lock().unwrap()[0].clone();
    assert_eq!(req["model"], "test-model");
    assert_eq!(req["response_format"]["type"], "json_object");
    assert_eq!(req["_auth"], "Bearer sk-test-key");
    assert_eq!(req["messages"][1]["content"], "se me descompuso la nevera");
}

#[actix_web::test]
async fn an_intent_that_is_not_a_candidate_is_an_invalid_answer() {
    let (url, _) = fake(r#"{"intent": "pizza"}"#, 200).await;
    assert!(matches!(
        model(url).detect_intent(intents()).await,
        Err(ModelError::InvalidAnswer(_))
    ));
}

#[actix_web::test]
async fn content_that_is_not_json_is_an_invalid_answer_and_http_errors_are_provider_errors() {
    let (url, _) = fake("claro, es un refrigerador", 200).await;
    assert!(matches!(
        model(url).detect_intent(intents()).await,
        Err(ModelError::InvalidAnswer(_))
    ));
    let (url, _) = fake(r#"{"intent": null}"#, 503).await;
    assert!(matches!(
        model(url).detect_intent(intents()).await,
        Err(ModelError::Provider(_))
    ));
}

#[actix_web::test]
async fn a_slot_value_is_extracted_and_numbers_become_strings() {
    let (url, _) = fake(r#"{"value": 1234567890}"#, 200).await;
    let v = model(url)
        .extract_slot(Arc::new(SlotRequest {
            text: "el sap es 1234567890".into(),
            name: "sap".into(),
            pattern: Some("^[0-9]{10}$".into()),
            min_len: 10,
            max_len: 10,
        }))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("1234567890"));
}

#[test]
fn a_missing_api_key_is_a_clear_error() {
    let e = OpenAiModel::new(&OpenAiSettings {
        api_key_env: "SWITCHBOARD_TEST_NO_SUCH_KEY".into(),
        ..Default::default()
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("SWITCHBOARD_TEST_NO_SUCH_KEY"), "{e}");
}
