//! The actor runtime end to end on a real PostgreSQL: order, the seed-004
//! race, parallelism, conflicts from outside, crashes, passivation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;
use support::rows::{Rows, SessionUpdate};
use support::{engine_settings, example_flow, say, transcript, user_messages, TestDb};
use switchboard::db::schema::{dead_letters, inbox, outbox};
use switchboard::engine::Middleware;
use switchboard::{Engine, InboundMessage};

const PHONE: &str = "5215512341234";

async fn engine(db: &TestDb, adjust: impl FnOnce(&mut switchboard::config::Settings)) -> Engine {
    let mut s = engine_settings(db);
    adjust(&mut s);
    Engine::builder(s)
        .database(db.database())
        .flow(example_flow())
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_thousand_messages_to_one_phone_are_applied_in_order_with_contiguous_versions() {
    let db = TestDb::migrated().await;
    let engine = engine(&db, |_| {}).await;
    for i in 0..1000 {
        say(&engine, PHONE, &format!("wamid.order.{i}"), &format!("mensaje {i}")).await;
    }
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 1000, "one version per message, none lost");
    let inbound = user_messages(&db, PHONE).await;
    let expected: Vec<String> = (0..1000).map(|i| format!("mensaje {i}")).collect();
    assert_eq!(inbound, expected, "applied in the order accepted");
    assert_eq!(db.unprocessed().await, 0);
    let stats = engine.stats();
    assert_eq!(stats.processed, 1000);
    assert_eq!(stats.conflicts, 0);
    engine.shutdown().await.unwrap();
}

/// The rules model, except that a message saying "espera" is understood
/// only once the test opens the gate.
struct Gated(Arc<tokio::sync::Semaphore>);
impl switchboard::ai::Model for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }
    fn detect_intent(
        &self,
        req: Arc<switchboard::ai::IntentRequest>,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<String>, switchboard::ai::ModelError>> {
        let gate = self.0.clone();
        Box::pin(async move {
            if req.text.contains("espera") {
                let _ = gate.acquire().await;
            }
            switchboard::ai::rules::RulesModel.detect_intent(req).await
        })
    }
    fn extract_slot(
        &self,
        req: Arc<switchboard::ai::SlotRequest>,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<String>, switchboard::ai::ModelError>> {
        switchboard::ai::rules::RulesModel.extract_slot(req)
    }
}

#[tokio::test]
async fn messages_that_queue_up_behind_a_busy_conversation_are_applied_as_one_chain_in_order() {
    let db = TestDb::migrated().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut settings = engine_settings(&db);
    settings.ai.intent_timeout_ms = 60_000;
    let engine = Engine::builder(settings)
        .database(db.database())
        .flow(example_flow())
        .model(Arc::new(Gated(gate.clone())))
        .start()
        .await
        .unwrap();
    let mut events = engine.subscribe();
    say(&engine, PHONE, "wamid.q0", "espera").await;
    // While the first message is being understood, twenty more are accepted.
    for i in 1..=20 {
        say(&engine, PHONE, &format!("wamid.q{i}"), &format!("mensaje {i}")).await;
    }
    gate.add_permits(1);
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 21, "one version per message");
    let inbound = user_messages(&db, PHONE).await;
    let expected: Vec<String> = std::iter::once("espera".to_string())
        .chain((1..=20).map(|i| format!("mensaje {i}")))
        .collect();
    assert_eq!(inbound, expected, "applied in the order accepted");
    let st = engine.stats();
    assert_eq!(st.processed, 21);
    assert_eq!(st.conflicts, 0);
    assert_eq!(
        (st.batches, st.batched_writes),
        (2, 21),
        "what was queued when the actor started (the first message, perhaps a few more), \
         then everything that waited behind it: two commits"
    );
    // Every step is published once, with its own version, in order.
    let versions: Vec<i64> = (0..21)
        .map(|_| events.try_recv().expect("an event per step").version)
        .collect();
    assert_eq!(versions, (1..=21).collect::<Vec<i64>>());
    assert_eq!(db.unprocessed().await, 0);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_messages_to_one_phone_share_registration_commits_and_are_applied_in_inbox_order() {
    let db = TestDb::migrated().await;
    let engine = engine(&db, |_| {}).await;
    let ids: Vec<(String, String)> = (0..200)
        .map(|i| (format!("wamid.c{i}"), format!("mensaje {i}")))
        .collect();
    let acks = futures_util::future::join_all(ids.iter().map(|(id, body)| say(&engine, PHONE, id, body))).await;
    assert!(acks.iter().all(|a| a.first));
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 200, "one version per message, none lost");
    // Applied (messages rows are written in step order) in inbox id order.
    let applied: Vec<Option<i64>> = switchboard::db::schema::messages::table
        .filter(switchboard::db::schema::messages::phone.eq(PHONE))
        .filter(switchboard::db::schema::messages::direction.eq("in"))
        .order(switchboard::db::schema::messages::id)
        .select(switchboard::db::schema::messages::inbox_id)
        .load(&mut db.admin().await)
        .await
        .unwrap();
    let mut in_id_order = applied.clone();
    in_id_order.sort();
    assert_eq!(applied.len(), 200);
    assert_eq!(applied, in_id_order, "applied in the order the inbox numbered them");
    let st = engine.stats();
    assert_eq!((st.processed, st.conflicts, st.registrations), (200, 0, 200));
    assert!(
        st.registration_batches < 50,
        "one phone's registrations share commits: {} statements for 200",
        st.registration_batches
    );
    assert_eq!(db.unprocessed().await, 0);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_seed_004_race_two_concurrent_deliveries_both_apply_one_after_the_other() {
    let db = TestDb::migrated().await;
    let engine = engine(&db, |_| {}).await;
    // First contact, then two messages for the same phone at the same time.
    say(&engine, PHONE, "wamid.a0", "hola").await;
    engine.wait_idle().await;
    let (a, b) = tokio::join!(
        say(&engine, PHONE, "wamid.a1", "refrigerador"),
        say(&engine, PHONE, "wamid.a2", "1234567890"),
    );
    assert!(a.first && b.first);
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 3, "both transitions applied");
    // Whichever came first, the second ran on the state the first left.
    let t = transcript(&db, PHONE).await;
    let users: Vec<&str> = t.iter().filter(|(o, _)| o == "user").map(|(_, b)| b.as_str()).collect();
    if users[1] == "refrigerador" {
        assert_eq!(s.flow_state, "refri_confirma", "SAP applied after choosing the fridge");
        assert_eq!(s.data["sap"], "1234567890");
    } else {
        assert_eq!(s.flow_state, "refri_sap");
    }
    engine.shutdown().await.unwrap();
}

/// The seeds' original code: read, decide, write without a version check.
/// Two concurrent handlers lose one update. (Test-only code.)
#[tokio::test]
async fn a_naive_read_modify_write_loses_an_update_in_the_same_race() {
    let test = TestDb::migrated().await;
    let db = test.database();
    db.load_or_create_session(PHONE, "inicio").await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let handler = |slot: &'static str, value: &'static str| {
        let url = test.url.clone();
        let barrier = barrier.clone();
        async move {
            use diesel_async::AsyncConnection;
            use switchboard::db::schema::sessions;
            let mut conn = diesel_async::AsyncPgConnection::establish(url.expose()).await.unwrap();
            let mut data: serde_json::Value = sessions::table
                .find(PHONE)
                .select(sessions::data)
                .first(&mut conn)
                .await
                .unwrap();
            barrier.wait().await; // both have read before either writes
            data[slot] = json!(value);
            diesel::update(sessions::table.find(PHONE))
                .set(sessions::data.eq(&data))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    };
    tokio::join!(handler("sap", "1234567890"), handler("empleado", "12345"));
    let s = db.load_session(PHONE).await.unwrap().unwrap();
    let kept = ["sap", "empleado"].iter().filter(|k| s.data.get(**k).is_some()).count();
    assert_eq!(kept, 1, "the naive write lost one of the two updates: {}", s.data);
}

#[tokio::test]
async fn many_phones_run_in_parallel_and_a_slow_conversation_does_not_delay_others() {
    use switchboard::ai::simulated::{SimulatedModel, SimulatedSettings};
    struct SlowFor(SimulatedModel, switchboard::ai::rules::RulesModel);
    impl switchboard::ai::Model for SlowFor {
        fn name(&self) -> &'static str {
            "slow-for-one"
        }
        fn detect_intent(
            &self,
            req: Arc<switchboard::ai::IntentRequest>,
        ) -> futures_util::future::BoxFuture<'static, Result<Option<String>, switchboard::ai::ModelError>> {
            if req.text.contains("lento") {
                self.0.detect_intent(req)
            } else {
                self.1.detect_intent(req)
            }
        }
        fn extract_slot(
            &self,
            req: Arc<switchboard::ai::SlotRequest>,
        ) -> futures_util::future::BoxFuture<'static, Result<Option<String>, switchboard::ai::ModelError>> {
            self.1.extract_slot(req)
        }
    }
    let db = TestDb::migrated().await;
    let slow = SimulatedModel::new(SimulatedSettings {
        latency_ms: 5_000,
        jitter_ms: 0,
        ..Default::default()
    });
    let mut settings = engine_settings(&db);
    settings.ai.intent_timeout_ms = 10_000;
    let engine = Engine::builder(settings)
        .database(db.database())
        .flow(example_flow())
        .model(Arc::new(SlowFor(slow, switchboard::ai::rules::RulesModel)))
        .start()
        .await
        .unwrap();
    say(&engine, "5215500000001", "wamid.slow", "lento").await;
    let started = std::time::Instant::now();
    let mut events = engine.subscribe();
    for p in 0..50 {
        say(&engine, &format!("52155100{p:05}"), &format!("wamid.fast.{p}"), "hola").await;
    }
    // All 50 fast conversations finish while the slow one is still thinking.
    let mut done = std::collections::HashSet::new();
    while done.len() < 50 {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap()
            .unwrap();
        if e.phone != "5215500000001" {
            done.insert(e.phone);
        }
    }
    let fast = started.elapsed();
    assert!(
        engine.conversation("5215500000001").await.unwrap().is_some(),
        "the slow conversation exists"
    );
    assert!(
        fast < Duration::from_millis(5_000),
        "fast conversations waited for the slow one: {fast:?}"
    );
    engine.wait_idle().await;
    assert_eq!(engine.stats().processed, 51);
    assert!(engine.stats().live_sessions >= 51);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_write_from_outside_the_actor_is_caught_and_the_transition_re_run_on_fresh_state() {
    let test = TestDb::migrated().await;
    let engine = engine(&test, |_| {}).await;
    say(&engine, PHONE, "wamid.x1", "hola").await;
    engine.wait_idle().await;
    let live = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!((live.version, live.flow_state.as_str()), (1, "inicio"));
    // Another process (or an old admin tool) moves the conversation on.
    let data = json!({});
    test.database()
        .update_session(
            PHONE,
            1,
            &SessionUpdate {
                flow_state: "vehiculo_empleado",
                data: &data,
                handoff: false,
            },
        )
        .await
        .unwrap();
    // The actor still believes version 1 / "inicio"; its write conflicts, it
    // reloads, and applies the message to "vehiculo_empleado".
    say(&engine, PHONE, "wamid.x2", "54321").await;
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 3, "the outside write was not overwritten");
    assert_eq!(s.flow_state, "vehiculo_problema");
    assert_eq!(s.data["empleado"], "54321");
    assert!(engine.stats().conflicts >= 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn redeliveries_are_counted_and_applied_once() {
    let db = TestDb::migrated().await;
    let engine = engine(&db, |_| {}).await;
    let mut firsts = 0;
    for _ in 0..5 {
        firsts += usize::from(say(&engine, PHONE, "wamid.dup", "hola").await.first);
    }
    engine.wait_idle().await;
    let again = say(&engine, PHONE, "wamid.dup", "hola").await;
    assert!(again.already_processed && again.delivery_count == 6);
    assert_eq!(firsts, 1);
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.version, 1);
    let replies: i64 = outbox::table
        .filter(outbox::phone.eq(PHONE))
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(replies, 1, "one greeting, not six");
    engine.shutdown().await.unwrap();
}

struct Poison;
impl Middleware for Poison {
    fn before_step(&self, _phone: &str, text: &str) -> Result<(), String> {
        if text.contains("veneno") {
            panic!("cannot digest this message");
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_poison_message_goes_to_dead_letters_and_the_next_message_is_still_processed() {
    let db = TestDb::migrated().await;
    let mut settings = engine_settings(&db);
    settings.engine.max_crashes = 3;
    let engine = Engine::builder(settings)
        .database(db.database())
        .flow(example_flow())
        .middleware(Arc::new(Poison))
        .start()
        .await
        .unwrap();
    say(&engine, PHONE, "wamid.p1", "hola").await;
    say(&engine, PHONE, "wamid.p2", "veneno").await;
    say(&engine, PHONE, "wamid.p3", "refrigerador").await;
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(
        s.flow_state, "refri_sap",
        "the message after the poison one was applied"
    );
    assert_eq!(s.version, 2, "the poison message changed nothing");
    let (reason, source): (String, String) = dead_letters::table
        .filter(dead_letters::phone.eq(PHONE))
        .select((dead_letters::reason, dead_letters::source))
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert!(reason.contains("cannot digest"), "{reason}");
    assert_eq!(source, "inbox");
    let attempts: i32 = inbox::table
        .filter(inbox::provider_message_id.eq("wamid.p2"))
        .select(inbox::attempts)
        .first(&mut db.admin().await)
        .await
        .unwrap();
    assert_eq!(attempts, 3);
    let st = engine.stats();
    assert_eq!((st.crashes, st.restarts, st.quarantined), (3, 2, 1));
    assert_eq!(db.unprocessed().await, 0);
    engine.shutdown().await.unwrap();
}

struct FailOnce(std::sync::atomic::AtomicBool);
impl Middleware for FailOnce {
    fn before_step(&self, _phone: &str, text: &str) -> Result<(), String> {
        if text.contains("1234567890") && !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err("transient bug".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_crashed_actor_restarts_with_its_state_from_the_database() {
    let db = TestDb::migrated().await;
    let engine = Engine::builder(engine_settings(&db))
        .database(db.database())
        .flow(example_flow())
        .middleware(Arc::new(FailOnce(Default::default())))
        .start()
        .await
        .unwrap();
    say(&engine, PHONE, "wamid.c1", "refrigerador").await;
    say(&engine, PHONE, "wamid.c2", "1234567890").await;
    say(&engine, PHONE, "wamid.c3", "si").await;
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!(s.flow_state, "inicio", "report completed after the restart");
    assert_eq!(s.version, 3);
    let st = engine.stats();
    assert_eq!((st.crashes, st.restarts, st.quarantined), (1, 1, 0));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn passivation_and_eviction_under_a_small_cap_lose_no_queued_message() {
    let db = TestDb::migrated().await;
    let engine = engine(&db, |s| {
        s.engine.max_live_sessions = 3;
        s.engine.idle_ttl_s = 1;
        s.engine.mailbox_capacity = 4;
        s.engine.enqueue_timeout_ms = 30_000;
    })
    .await;
    let phones: Vec<String> = (0..12).map(|p| format!("52155200{p:05}")).collect();
    let mut tasks = Vec::new();
    for round in 0..10 {
        for p in &phones {
            let e = engine.clone();
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                say(&e, &p, &format!("wamid.ev.{p}.{round}"), &format!("m{round}")).await;
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    engine.wait_idle().await;
    assert_eq!(db.unprocessed().await, 0, "every accepted message was applied");
    for p in &phones {
        let s = engine.conversation(p).await.unwrap().unwrap();
        assert_eq!(s.version, 10, "{p}");
    }
    let st = engine.stats();
    assert!(st.evictions > 0, "the cap forced evictions: {st:?}");
    // Passivation: wait (on the engine's own figure) until idle actors go.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while engine.stats().live_sessions > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle actors were never passivated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(engine.stats().passivations > 0);
    // A passivated conversation comes back with its state.
    say(&engine, &phones[0], "wamid.ev.back", "hola").await;
    engine.wait_idle().await;
    assert_eq!(engine.conversation(&phones[0]).await.unwrap().unwrap().version, 11);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn messages_accepted_but_not_applied_are_resumed_at_start() {
    let db = TestDb::migrated().await;
    // Accepted by a process that died before applying them.
    let database = db.database();
    for i in 0..3 {
        database
            .register_delivery(&switchboard::db::NewDelivery {
                phone: PHONE,
                provider_message_id: &format!("wamid.r{i}"),
                payload: &support::text(["hola", "vehiculo", "12345"][i]),
                contact_name: None,
                contact_username: None,
            })
            .await
            .unwrap();
    }
    let engine = engine(&db, |_| {}).await;
    engine.wait_idle().await;
    let s = engine.conversation(PHONE).await.unwrap().unwrap();
    assert_eq!((s.version, s.flow_state.as_str()), (3, "vehiculo_problema"));
    assert_eq!(db.unprocessed().await, 0);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_phone_is_refused_and_nothing_is_stored() {
    let db = TestDb::migrated().await;
    let engine = engine(&db, |_| {}).await;
    let err = engine
        .submit_inbound(InboundMessage {
            user_id: None,
            business_number: None,
            phone: "12ab".into(),
            provider_message_id: "wamid.bad".into(),
            payload: support::text("hola"),
            contact_name: None,
            contact_username: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, switchboard::Error::InvalidInput(_)), "{err:?}");
    let rows: i64 = inbox::table.count().get_result(&mut db.admin().await).await.unwrap();
    assert_eq!(rows, 0);
    engine.shutdown().await.unwrap();
}
