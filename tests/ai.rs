//! The AI actor inside the engine: timeouts with fallbacks, the breaker,
//! and the session actor's one-message-at-a-time handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use support::{engine_settings, example_flow, say, TestDb};
use switchboard::ai::simulated::{SimulatedModel, SimulatedSettings};
use switchboard::ai::{IntentRequest, Model, ModelError, SlotRequest};
use switchboard::breaker::BreakerState;
use switchboard::Engine;

async fn engine_with(
    db: &TestDb,
    model: Arc<dyn Model>,
    adjust: impl FnOnce(&mut switchboard::config::Settings),
) -> Engine {
    let mut s = engine_settings(db);
    adjust(&mut s);
    Engine::builder(s)
        .database(db.database())
        .flow(example_flow())
        .model(model)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_hung_model_falls_back_to_the_rules_within_its_timeout() {
    let db = TestDb::migrated().await;
    let hung = SimulatedModel::new(SimulatedSettings {
        hang_rate: 1.0,
        ..Default::default()
    });
    let timeout = Duration::from_millis(300);
    let engine = engine_with(&db, Arc::new(hung), |s| {
        s.ai.intent_timeout_ms = timeout.as_millis() as u64;
        s.ai.breaker.failure_threshold = 100;
    })
    .await;
    let mut events = engine.subscribe();
    let started = Instant::now();
    say(&engine, "5215512341234", "wamid.h1", "mi refri no enfría").await;
    let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(e.flow_state, "refri_sap", "the rules fallback understood the message");
    assert!(took >= timeout, "answered before the timeout: {took:?}");
    // Generous margin: this is "bounded", not a latency target.
    assert!(
        took < timeout + Duration::from_secs(3),
        "the hung call held the message: {took:?}"
    );
    let ai = engine.stats().ai;
    assert_eq!((ai.timeouts, ai.fallbacks), (1, 1));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_breaker_opens_on_failures_fails_fast_and_closes_when_the_model_recovers() {
    let db = TestDb::migrated().await;
    let model = SimulatedModel::new(SimulatedSettings {
        latency_ms: 1,
        jitter_ms: 0,
        error_rate: 1.0,
        ..Default::default()
    });
    let engine = engine_with(&db, Arc::new(model.clone()), |s| {
        s.ai.breaker.failure_threshold = 3;
        s.ai.breaker.open_ms = 200;
        s.ai.breaker.max_open_ms = 200;
    })
    .await;
    let mut events = engine.subscribe();
    for i in 0..3 {
        say(&engine, &format!("52155300000{i:02}"), &format!("wamid.b{i}"), "hola").await;
        engine.wait_idle().await;
    }
    // The transition is published (SSE subscribers see it).
    let opened = loop {
        let e = events.try_recv().expect("a breaker event was published");
        if let Some(b) = e.breaker {
            break b;
        }
    };
    assert_eq!((opened.name, opened.state), ("ai", BreakerState::Open));
    let ai = |e: &Engine| e.stats().ai;
    assert_eq!(ai(&engine).errors, 3);
    let b = &engine.breakers().await[0];
    assert_eq!((b.name.as_str(), b.state), ("ai", BreakerState::Open));
    // Open: the model is not called; the fallback answers at once.
    say(&engine, "5215530000099", "wamid.b-open", "vehiculo").await;
    engine.wait_idle().await;
    assert_eq!(ai(&engine).rejected, 1);
    assert_eq!(ai(&engine).calls, 3, "no call reached the failing model");
    let s = engine.conversation("5215530000099").await.unwrap().unwrap();
    assert_eq!(s.flow_state, "vehiculo_empleado");
    // The model recovers; after the open period a probe succeeds and closes it.
    model.set(SimulatedSettings {
        latency_ms: 1,
        jitter_ms: 0,
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(250)).await; // the breaker's own open period
    assert_eq!(engine.breakers().await[0].state, BreakerState::HalfOpen);
    say(&engine, "5215530000098", "wamid.b-probe", "hola").await;
    engine.wait_idle().await;
    assert_eq!(engine.breakers().await[0].state, BreakerState::Closed);
    // Operators can force it.
    assert!(engine.force_breaker("ai", true).await);
    assert_eq!(engine.breakers().await[0].state, BreakerState::Open);
    assert!(!engine.force_breaker("nope", true).await);
    engine.shutdown().await.unwrap();
}

/// Records, per message text prefix (the phone tag), how many calls ran at once.
#[derive(Default)]
struct Overlap {
    running: Mutex<std::collections::HashMap<String, usize>>,
    max_same_phone: AtomicUsize,
    max_total: AtomicUsize,
    total: AtomicUsize,
}

struct Watching(Arc<Overlap>);

impl Model for Watching {
    fn name(&self) -> &'static str {
        "watching"
    }
    fn detect_intent(&self, req: Arc<IntentRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        let o = self.0.clone();
        async move {
            let tag = req.text.split(':').next().unwrap_or_default().to_string();
            {
                let mut r = o.running.lock().unwrap();
                let n = r.entry(tag.clone()).or_default();
                *n += 1;
                o.max_same_phone.fetch_max(*n, Ordering::SeqCst);
            }
            let t = o.total.fetch_add(1, Ordering::SeqCst) + 1;
            o.max_total.fetch_max(t, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            o.total.fetch_sub(1, Ordering::SeqCst);
            *o.running.lock().unwrap().get_mut(&tag).unwrap() -= 1;
            Ok(None)
        }
        .boxed()
    }
    fn extract_slot(&self, _: Arc<SlotRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        async { Ok(None) }.boxed()
    }
}

#[tokio::test]
async fn a_session_actor_handles_one_message_at_a_time_across_its_awaits() {
    let db = TestDb::migrated().await;
    let overlap = Arc::new(Overlap::default());
    let engine = engine_with(&db, Arc::new(Watching(overlap.clone())), |_| {}).await;
    let mut tasks = Vec::new();
    for p in 0..4 {
        for i in 0..10 {
            let e = engine.clone();
            tasks.push(tokio::spawn(async move {
                say(
                    &e,
                    &format!("52155400000{p:02}"),
                    &format!("wamid.o.{p}.{i}"),
                    &format!("p{p}:{i}"),
                )
                .await;
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    engine.wait_idle().await;
    assert_eq!(
        overlap.max_same_phone.load(Ordering::SeqCst),
        1,
        "two messages of one phone overlapped"
    );
    assert!(
        overlap.max_total.load(Ordering::SeqCst) > 1,
        "different phones should run in parallel"
    );
    for p in 0..4 {
        let s = engine
            .conversation(&format!("52155400000{p:02}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.version, 10);
    }
    engine.shutdown().await.unwrap();
}
