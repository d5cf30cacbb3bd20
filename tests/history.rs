//! A conversation's whole history through the API, a page at a time
//! (`?before=ID&limit=N`): every message once, newest pages first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use support::app::{TestApp, APP_SECRET};
use support::TestDb;
use switchboard::config::Secret;
use switchboard::db::schema::messages;

const PHONE: &str = "5215512349876";
const TOKEN: &str = "history-token";

async fn app(db: &TestDb) -> TestApp {
    TestApp::spawn(
        db,
        |s| {
            s.whatsapp.app_secret = Some(Secret::new(APP_SECRET));
            s.api.tokens = vec![Secret::new(TOKEN).into()];
        },
        None,
    )
    .await
}

#[actix_web::test]
async fn history_pages_cover_every_message_once_newest_first() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    // Customer messages with the bot's replies, and agent messages between them.
    for i in 0..12 {
        app.say(
            PHONE,
            &format!("wamid.hist.{i}"),
            if i % 4 == 0 { "hola" } else { "refrigerador" },
        )
        .await;
        if i % 3 == 0 {
            let r = app
                .client
                .post(app.url(&format!("/api/conversations/{PHONE}/messages")))
                .bearer_auth(TOKEN)
                .json(&json!({"text": format!("agente {i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    }
    let stored: Vec<i64> = messages::table
        .filter(messages::phone.eq(PHONE))
        .order(messages::id.asc())
        .select(messages::id)
        .load(&mut db.admin().await)
        .await
        .unwrap();
    assert!(stored.len() >= 20, "{} messages", stored.len());

    let mut seen: Vec<i64> = Vec::new();
    let mut before: Option<i64> = None;
    let mut pages = 0;
    loop {
        let path = match before {
            None => format!("/api/conversations/{PHONE}?limit=7"),
            Some(b) => format!("/api/conversations/{PHONE}?before={b}&limit=7"),
        };
        let page: Value = app.get_json(&path, TOKEN).await;
        let ids: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        assert!(ids.len() <= 7 && !ids.is_empty(), "{path}: {ids:?}");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "oldest first within a page: {ids:?}"
        );
        if let Some(b) = before {
            assert!(ids.iter().all(|id| *id < b), "{path}: only older than {b}: {ids:?}");
        }
        // This page comes before everything seen so far.
        seen.splice(0..0, ids.iter().copied());
        pages += 1;
        match page["older_before"].as_i64() {
            Some(next) => {
                assert_eq!(next, ids[0], "the next page starts before this one's oldest");
                before = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, stored, "every message once, in order");
    assert_eq!(pages, stored.len().div_ceil(7));
    app.stop().await;
}

#[actix_web::test]
async fn a_page_size_out_of_range_is_refused_and_the_default_is_the_newest_fifty() {
    let db = TestDb::migrated().await;
    let app = app(&db).await;
    app.say(PHONE, "wamid.hist.one", "hola").await;
    for bad in ["limit=0", "limit=201", "limit=x", "before=abc", "page=2"] {
        let r = app
            .client
            .get(app.url(&format!("/api/conversations/{PHONE}?{bad}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let page = app.get_json(&format!("/api/conversations/{PHONE}"), TOKEN).await;
    assert_eq!(page["older_before"], Value::Null, "all of a short history fits");
    assert!(!page["messages"].as_array().unwrap().is_empty());
    app.stop().await;
}
