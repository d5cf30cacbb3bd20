//! Engine throughput with and without group commit, side by side, on a
//! durable PostgreSQL (`fsync` and `synchronous_commit` on).
//!
//! Each iteration accepts 2,000 messages spread over 200 phones
//! (concurrently, 10 per phone) and waits until all are applied.
//!
//! `cargo bench --bench engine`

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard::{Engine, InboundMessage};

const PHONES: usize = 200;
const PER_PHONE: usize = 10;

fn engine(rt: &tokio::runtime::Runtime, url: &switchboard::config::Secret, max_batch: usize) -> Engine {
    rt.block_on(support::bench_engine(url, |s| {
        s.database.max_connections = 16;
        s.engine.group_commit.max_batch = max_batch;
    }))
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = support::durable_cluster(&rt, "bench-engine");
    let url = pg.url();
    let seq = AtomicU64::new(0);

    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements((PHONES * PER_PHONE) as u64));
    for (name, max_batch) in [("group_commit_64", 64), ("one_write_per_tx", 1)] {
        let engine = engine(&rt, &url, max_batch);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let round = seq.fetch_add(1, Ordering::Relaxed);
                        let start = Instant::now();
                        let mut tasks = Vec::with_capacity(PHONES);
                        for p in 0..PHONES {
                            let e = engine.clone();
                            tasks.push(tokio::spawn(async move {
                                for i in 0..PER_PHONE {
                                    e.submit_inbound(InboundMessage {
                                        user_id: None,
                                        business_number: None,
                                        phone: format!("5215560{p:06}"),
                                        provider_message_id: format!("wamid.bench.{round}.{p}.{i}"),
                                        payload: support::text("hola"),
                                        contact_name: None,
                                        contact_username: None,
                                    })
                                    .await
                                    .unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                        engine.wait_idle().await;
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
        let st = engine.stats();
        eprintln!(
            "{name}: batches={} writes={} avg_batch={:.1} largest={}",
            st.batches,
            st.batched_writes,
            st.batched_writes as f64 / st.batches.max(1) as f64,
            st.largest_batch
        );
        rt.block_on(engine.shutdown()).unwrap();
    }
    g.finish();
    drop(pg);
}

criterion_group!(benches, throughput);
criterion_main!(benches);
