//! Resident memory with 100,000 live session actors.
//!
//! Starts an engine (durable cluster, rules model, example flow, log sink),
//! sends one message to each of 100,000 phones (so each gets a live actor
//! with its state), waits until all are applied, and prints the process's
//! resident memory before and after. The PostgreSQL server runs in its own
//! processes and is not counted.
//!
//! `cargo bench --bench memory`

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

/// The allocator `switchboard serve` runs with (src/main.rs), so the figure
/// is the served process's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PHONES: usize = 100_000;
const CLIENTS: usize = 64;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = support::durable_cluster(&rt, "bench-memory");
    let url = pg.url();
    rt.block_on(async {
        let engine = support::bench_engine(&url, |s| {
            s.database.max_connections = 32;
            s.engine.max_live_sessions = PHONES;
        })
        .await;
        let before = rss_mib();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let e = engine.clone();
            tasks.push(tokio::spawn(async move {
                for p in (c..PHONES).step_by(CLIENTS) {
                    support::say(&e, &format!("5215{:09}", 200_000_000 + p), &format!("wamid.mem.{p}"), "hola").await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        engine.wait_idle().await;
        let secs = start.elapsed().as_secs_f64();
        let st = engine.stats();
        let after = rss_mib();
        println!(
            "live actors {}  applied {}  in {secs:.1} s ({:.0} msg/s)\nRSS before {before:.0} MiB, after {after:.0} MiB, {:.2} KiB per live conversation",
            st.live_sessions,
            st.processed,
            st.processed as f64 / secs,
            (after - before) * 1024.0 / st.live_sessions.max(1) as f64
        );
        engine.outbox().wait_drained().await;
        engine.shutdown().await.unwrap();
    });
}
