//! Typed inputs: a media file, a location, a contact card fill the slots
//! that ask for them; a media file is fetched once from the Graph API by a
//! durable job (retried after a 500) and served to the console.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use support::app::{message, text_message, TestApp};
use support::TestDb;
use switchboard::db::schema::{media, outcomes};
use switchboard::flow::Flow;
use switchboard::load::fake_graph::FakeGraph;

const PHONE: &str = "5215512341234";
const TOKEN: &str = "console-token";
const LABEL: &[u8] = b"\xff\xd8\xff\xe0 a fridge's label, as a JPEG would start";

const FLOW: &str = r#"
name = "fotos"
initial = "inicio"
fallback = "No entendí."
[intents]
foto = ["foto"]
[states.inicio]
prompt = "Escribe foto para reportar."
[states.inicio.on]
foto = "pide_foto"
[states.pide_foto]
prompt = "Manda una foto de la etiqueta del refrigerador."
next = "pide_lugar"
[states.pide_foto.slot]
name = "etiqueta"
kind = "media"
invalid = "Necesito una foto de la etiqueta."
max_attempts = 3
[states.pide_lugar]
prompt = "Comparte la ubicación del refrigerador."
next = "pide_contacto"
[states.pide_lugar.slot]
name = "lugar"
kind = "location"
invalid = "Necesito la ubicación."
[states.pide_contacto]
prompt = "Comparte el contacto del encargado."
next = "listo"
[states.pide_contacto.slot]
name = "encargado"
kind = "contacts"
invalid = "Necesito un contacto."
[states.listo]
prompt = "Gracias, registré el reporte."
outcome = "reporte_foto"
"#;

async fn app(db: &TestDb, fake: &FakeGraph, max_bytes: u64) -> TestApp {
    let whatsapp = fake.settings();
    let dir = support::scratch_dir("media");
    TestApp::spawn_with(
        db,
        |s| {
            s.whatsapp = whatsapp;
            s.api.tokens = vec![switchboard::config::Secret::new(TOKEN).into()];
            s.outbox.poll_interval_ms = 20;
            s.media.dir = dir;
            s.media.max_bytes = max_bytes;
            s.media.poll_interval_ms = 20;
            s.media.base_delay_ms = 10;
            s.media.max_delay_ms = 20;
        },
        |b| b.flow(Flow::parse(FLOW, "fotos.toml").unwrap()),
    )
    .await
}

fn image(id: &str, media_id: &str, caption: &str) -> Value {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(LABEL));
    message(
        PHONE,
        id,
        "image",
        json!({"caption": caption, "mime_type": "image/jpeg", "sha256": sha, "id": media_id}),
    )
}

async fn deliver(app: &TestApp, messages: Vec<Value>) {
    let r = app.deliver_value(messages, vec![]).await;
    assert_eq!(r.status(), 200);
    app.engine.wait_idle().await;
}

/// The download job of `media_id`, once it is no longer pending.
async fn settled(db: &TestDb, media_id: &str) -> (String, Option<String>, i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row: (String, Option<String>, i32) = media::table
            .filter(media::media_id.eq(media_id))
            .select((media::status, media::last_error, media::attempts))
            .first(&mut db.admin().await)
            .await
            .unwrap();
        if row.0 != "pending" {
            return row;
        }
        assert!(Instant::now() < deadline, "media {media_id} still pending: {row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn typed_inputs_fill_their_slots_and_a_photo_is_fetched_once_after_a_500() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.add_media("1037543291543636", LABEL, "image/jpeg");
    fake.script_media([500]);
    let app = app(&db, &fake, 1024 * 1024).await;
    deliver(&app, vec![text_message(PHONE, "wamid.f1", "foto")]).await;
    assert_eq!(app.state(PHONE).await, "pide_foto");
    // Text where a photo is asked for: one attempt used, the slot waits.
    deliver(&app, vec![text_message(PHONE, "wamid.f2", "ahí va")]).await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!((s.flow_state.as_str(), &s.data["_attempts"]), ("pide_foto", &json!(1)));
    // The photo with its caption fills the slot.
    deliver(
        &app,
        vec![image("wamid.f3", "1037543291543636", "etiqueta de la puerta")],
    )
    .await;
    let s = app.engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.flow_state, "pide_lugar");
    assert_eq!(
        s.data["etiqueta"],
        json!({"kind": "image", "id": "1037543291543636", "mime_type": "image/jpeg",
               "sha256": image("x", "y", "z")["image"]["sha256"], "caption": "etiqueta de la puerta"})
    );
    // A location fills the location slot, a contact card the contact slot.
    let place = message(
        PHONE,
        "wamid.f4",
        "location",
        json!({"latitude": 19.4326, "longitude": -99.1332, "name": "Tienda 12", "address": "Av. Reforma 1"}),
    );
    deliver(&app, vec![place]).await;
    assert_eq!(app.state(PHONE).await, "pide_contacto");
    let card = message(
        PHONE,
        "wamid.f5",
        "contacts",
        json!([{"name": {"formatted_name": "Luis Gómez", "first_name": "Luis"},
                "phones": [{"phone": "+52 55 1111 2222", "type": "CELL", "wa_id": "5215511112222"}]}]),
    );
    // `contacts` is an array: `message` puts the part under the kind's key.
    deliver(&app, vec![card]).await;
    assert_eq!(
        app.state(PHONE).await,
        "inicio",
        "the outcome state returns to the start"
    );
    let data: Value = outcomes::table
        .filter(outcomes::phone.eq(PHONE))
        .select(outcomes::data)
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(data["lugar"]["latitude"], 19.4326, "{data}");
    assert_eq!(data["encargado"]["phones"], json!(["5215511112222"]), "{data}");
    assert_eq!(data["etiqueta"]["id"], "1037543291543636", "{data}");

    // The file: fetched after one 500, once, with the number's token.
    let (status, error, attempts) = settled(&db, "1037543291543636").await;
    assert_eq!((status.as_str(), error, attempts), ("downloaded", None, 2));
    assert_eq!(
        fake.media_served(),
        [("1037543291543636".to_string(), "EAAG-fake-token".to_string())]
    );
    let client = reqwest::Client::new();
    let got = client
        .get(app.url(&format!("/api/conversations/{PHONE}/media/1037543291543636")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(got.bytes().await.unwrap().as_ref(), LABEL);
    // The transcript shows the photo beside its message.
    let convo = app.get_json(&format!("/api/conversations/{PHONE}"), TOKEN).await;
    let photo = convo["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["provider_message_id"] == "wamid.f3")
        .unwrap();
    assert_eq!(photo["body"], "etiqueta de la puerta");
    assert_eq!(
        (photo["media"]["id"].as_str(), photo["media"]["status"].as_str()),
        (Some("1037543291543636"), Some("downloaded")),
        "{photo}"
    );
    // Another conversation cannot read it.
    let other = client
        .get(app.url("/api/conversations/5215599999999/media/1037543291543636"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    app.stop().await;
}

#[actix_web::test]
async fn a_file_over_the_size_limit_fails_for_good_with_its_reason() {
    let db = TestDb::migrated().await;
    let fake = FakeGraph::start().unwrap();
    fake.add_media("555", &[7u8; 4096], "application/pdf");
    let app = app(&db, &fake, 1024).await;
    deliver(&app, vec![text_message(PHONE, "wamid.g1", "foto")]).await;
    let doc = message(
        PHONE,
        "wamid.g2",
        "document",
        json!({"filename": "factura.pdf", "mime_type": "application/pdf", "id": "555"}),
    );
    deliver(&app, vec![doc]).await;
    assert_eq!(app.state(PHONE).await, "pide_lugar", "a document is media too");
    let (status, error, attempts) = settled(&db, "555").await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(
        error.as_deref().unwrap_or_default().contains("media.max_bytes"),
        "{error:?}"
    );
    assert!(fake.media_served().is_empty(), "refused from its announced size");
    let got = reqwest::Client::new()
        .get(app.url(&format!("/api/conversations/{PHONE}/media/555")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 410);
    app.stop().await;
}
