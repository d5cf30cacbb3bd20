//! The engine's contracts per conversation when one customer writes to two
//! business numbers of one deployment at once: each number × contact is its
//! own conversation — applied in order, once each, with contiguous versions,
//! redeliveries counted, resumed after a crash — and neither sees the
//! other's messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use support::rows::Rows;
use support::{engine_settings, example_flow, text, user_messages, TestDb};
use switchboard::config::NumberSettings;
use switchboard::db::schema::{inbox, outbox};
use switchboard::{Engine, InboundMessage};

const PHONE: &str = "5215512341234";
const SALES: &str = "100";
const SUPPORT: &str = "200";
/// The conversation keys: the home number's by contact alone.
const KEYS: [&str; 2] = [PHONE, "200:5215512341234"];

async fn engine(db: &TestDb) -> Engine {
    let mut s = engine_settings(db);
    s.whatsapp.phone_number_id = Some(SALES.into());
    s.whatsapp.numbers = vec![NumberSettings {
        phone_number_id: SUPPORT.into(),
        access_token: None,
        flow: None,
        rate_per_s: None,
        name: Some("Soporte".into()),
        ..Default::default()
    }];
    Engine::builder(s)
        .database(db.database())
        .flow(example_flow())
        .start()
        .await
        .unwrap()
}

fn to(number: &str, id: String, body: &str) -> InboundMessage {
    InboundMessage {
        phone: PHONE.into(),
        user_id: None,
        business_number: Some(number.into()),
        provider_message_id: id,
        payload: text(body),
        contact_name: None,
        contact_username: None,
    }
}

#[tokio::test]
async fn one_customer_on_two_numbers_gets_two_ordered_exactly_once_conversations() {
    const N: usize = 200;
    let db = TestDb::migrated().await;
    let engine = engine(&db).await;
    for i in 0..N {
        // Both numbers' message i at once (the seed-004 race, per number),
        // each with a redelivery of the number's message before it.
        let (sales, support) = (format!("sales {i}"), format!("soporte {i}"));
        let mut batch = vec![
            engine.submit_inbound(to(SALES, format!("wamid.s.{i}"), &sales)),
            engine.submit_inbound(to(SUPPORT, format!("wamid.t.{i}"), &support)),
        ];
        if i > 0 {
            let (s, t) = (format!("sales {}", i - 1), format!("soporte {}", i - 1));
            batch.push(engine.submit_inbound(to(SALES, format!("wamid.s.{}", i - 1), &s)));
            batch.push(engine.submit_inbound(to(SUPPORT, format!("wamid.t.{}", i - 1), &t)));
        }
        for accepted in futures_util::future::join_all(batch).await {
            accepted.unwrap();
        }
    }
    engine.wait_idle().await;
    for (key, prefix) in KEYS.iter().zip(["sales", "soporte"]) {
        let s = engine.conversation(key).await.unwrap().unwrap();
        assert_eq!(s.version, N as i64, "{key}: one version per message, none lost");
        let expected: Vec<String> = (0..N).map(|i| format!("{prefix} {i}")).collect();
        assert_eq!(user_messages(&db, key).await, expected, "{key}: its own, in order");
        let counts: Vec<i32> = inbox::table
            .filter(inbox::phone.eq(key))
            .order(inbox::id)
            .select(inbox::delivery_count)
            .load(&mut db.admin().await)
            .await
            .unwrap();
        assert_eq!(counts.len(), N, "{key}: one inbox row per message");
        assert!(counts[..N - 1].iter().all(|&c| c == 2), "{key}: redeliveries counted");
        let unprocessed: i64 = inbox::table
            .filter(inbox::phone.eq(key))
            .filter(inbox::processed_at.is_null())
            .count()
            .get_result(&mut db.admin().await)
            .await
            .unwrap();
        assert_eq!(unprocessed, 0);
    }
    let replies = |key: &'static str| {
        let db = &db;
        async move {
            outbox::table
                .filter(outbox::phone.eq(key))
                .count()
                .get_result::<i64>(&mut db.admin().await)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        replies(KEYS[0]).await,
        replies(KEYS[1]).await,
        "the same replies, once each"
    );
    let stats = engine.stats();
    assert_eq!(stats.processed, 2 * N as u64);
    assert_eq!(stats.redeliveries, 2 * (N as u64 - 1));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn both_numbers_conversations_are_resumed_after_a_crash() {
    let db = TestDb::migrated().await;
    // Accepted by a process that died before applying them.
    let database = db.database();
    for key in KEYS {
        for (i, body) in ["hola", "vehiculo", "12345"].iter().enumerate() {
            database
                .register_delivery(&switchboard::db::NewDelivery {
                    phone: key,
                    provider_message_id: &format!("wamid.{key}.{i}"),
                    payload: &text(body),
                    contact_name: None,
                    contact_username: None,
                })
                .await
                .unwrap();
        }
    }
    let engine = engine(&db).await;
    engine.wait_idle().await;
    for key in KEYS {
        let s = engine.conversation(key).await.unwrap().unwrap();
        assert_eq!((s.version, s.flow_state.as_str()), (3, "vehiculo_problema"), "{key}");
    }
    engine.shutdown().await.unwrap();
}
