//! Micro-benchmarks of the pieces on every message's path that need no
//! database: breaker overhead, a flow transition, the rules model, webhook
//! parsing and the signature check.
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

criterion_group!(benches, micro);
criterion_main!(benches);
