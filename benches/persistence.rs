//! Cost of the persistence primitives on a real, durable PostgreSQL
//! (`fsync` and `synchronous_commit` on, as in production).
//!
//! `cargo bench --bench persistence`

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use support::rows::{Rows, SessionUpdate};
use switchboard::db::{Database, EmbeddedPostgres, NewDelivery};

struct Bench {
    db: Database,
    _pg: EmbeddedPostgres,
}

fn setup(rt: &tokio::runtime::Runtime) -> Bench {
    let pg = support::durable_cluster(rt, "bench");
    // The pool spawns its reaper task: build it inside the runtime.
    let _guard = rt.enter();
    let db = Database::connect(pg.url(), &Default::default());
    Bench { db, _pg: pg }
}

fn persistence(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bench = setup(&rt);
    let db = &bench.db;
    let phone = "5215512341234";
    rt.block_on(db.load_or_create_session(phone, "inicio")).unwrap();
    let version = AtomicU64::new(0);
    let data = json!({"sap": "100234", "n": 1});

    let mut g = c.benchmark_group("persistence");
    g.throughput(Throughput::Elements(1));
    g.bench_function("versioned_write_1_client", |b| {
        b.to_async(&rt).iter(|| async {
            let v = version.load(Ordering::Relaxed) as i64;
            let s = db
                .update_session(
                    phone,
                    v,
                    &SessionUpdate {
                        flow_state: "pide_sap",
                        data: &data,
                        handoff: false,
                    },
                )
                .await
                .unwrap();
            version.store(s.version as u64, Ordering::Relaxed);
        })
    });
    let seq = AtomicU64::new(0);
    let payload = json!({"type": "text", "text": {"body": "mi refrigerador no enfría"}});
    g.bench_function("register_delivery_new_1_client", |b| {
        b.to_async(&rt).iter(|| async {
            let id = format!("wamid.bench.{}", seq.fetch_add(1, Ordering::Relaxed));
            db.register_delivery(&NewDelivery {
                phone,
                provider_message_id: &id,
                payload: &payload,
                contact_name: None,
                contact_username: None,
            })
            .await
            .unwrap();
        })
    });
    g.bench_function("register_delivery_duplicate_1_client", |b| {
        b.to_async(&rt).iter(|| async {
            db.register_delivery(&NewDelivery {
                phone,
                provider_message_id: "wamid.bench.dup",
                payload: &payload,
                contact_name: None,
                contact_username: None,
            })
            .await
            .unwrap();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = persistence
}
criterion_main!(benches);
