//! Micro-benchmarks of the pieces on every message's path that need no
//! database: an actor hop (request and answer through an actix mailbox),
//! breaker overhead, a flow transition, the rules model, webhook parsing and
//! the signature check.
//!
//! `cargo bench --bench micro`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use switchboard::ai::{rules, IntentRequest};
use switchboard::breaker::{BreakerSettings, CallResult, CircuitBreaker};
use switchboard::flow::{step, Flow, Understanding};
use switchboard::whatsapp::webhook::{parse, sign, verify_signature};

/// An actor that answers at once: the cost of one hop is the mailbox, the
/// scheduling and the answer channel — what every message pays to reach its
/// session actor and every model call to reach the AI actor.
struct Echo;

impl actix::Actor for Echo {
    type Context = actix::Context<Self>;
}

#[derive(actix::Message)]
#[rtype(result = "u64")]
struct Ping(u64);

impl actix::Handler<Ping> for Echo {
    type Result = u64;
    fn handle(&mut self, m: Ping, _: &mut Self::Context) -> u64 {
        m.0 + 1
    }
}

fn actor_hop(c: &mut Criterion) {
    use actix::Actor;
    let mut g = c.benchmark_group("micro");
    g.throughput(Throughput::Elements(1));
    let sys = actix::System::new();
    let addr = sys.block_on(async { Echo.start() });
    g.bench_function("actor_hop_send_and_answer", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = std::time::Instant::now();
                for i in 0..iters {
                    assert_eq!(addr.send(Ping(i)).await.unwrap(), i + 1);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn micro(c: &mut Criterion) {
    let flow = Flow::parse(switchboard::load::EXAMPLE_FLOW, "reporte.toml").unwrap();
    let mut g = c.benchmark_group("micro");
    g.throughput(Throughput::Elements(1));

    let breaker = CircuitBreaker::new("bench", BreakerSettings::default());
    g.bench_function("breaker_acquire_and_record", |b| {
        b.iter(|| breaker.try_acquire().unwrap().record(CallResult::Success))
    });

    let data = json!({"sap": "1234567890"});
    let u = Understanding {
        intent: Some("si".into()),
        slot_value: None,
        ..Default::default()
    };
    g.bench_function("flow_transition_confirm_to_outcome", |b| {
        b.iter(|| step(&flow, "refri_confirma", &data, false, &u, "R1"))
    });

    let needs = flow.needs("inicio");
    let req = Arc::new(IntentRequest {
        text: "Hola, mi refrigerador no enfría desde ayer".into(),
        candidates: switchboard::ai::candidates(&flow, &needs.intents),
    });
    g.bench_function("rules_detect_intent", |b| b.iter(|| rules::detect(&req)));

    let body = serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1098765432"},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": "5215512341234"}],
        "messages": [{"from": "5215512341234", "id": "wamid.HBgNNTIxNTUxMjM0MTIzNBUCABIYFjNFQjA=", "timestamp": "1732320000",
                      "type": "text", "text": {"body": "Hola, mi refrigerador no enfría ❄️ / urgente"}}]}}]}]}))
    .unwrap();
    let signature = sign(b"app-secret", &body);
    g.bench_function("webhook_verify_signature_and_parse", |b| {
        b.iter(|| {
            assert!(verify_signature(b"app-secret", &body, Some(&signature)));
            parse(&body).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, actor_hop, micro);
criterion_main!(benches);
