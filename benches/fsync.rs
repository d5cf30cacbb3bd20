//! The disk's flush latency, which bounds every durable ack: one writer
//! appends 8 KiB and calls `fdatasync` at a steady pace, as PostgreSQL's WAL
//! writer does at each group commit. Run: `cargo bench --bench fsync`
//! (optional arguments: seconds, default 30; flushes per second, default
//! 500, about the commit rate of a 2,000 msg/s run; directory, default the
//! system temp dir, where the load harness puts its cluster).
//!
//! Besides the percentiles it prints the share of time a commit arriving at
//! a random moment would wait more than 15 ms for its flush alone: with
//! stalls, no durable design can ack faster than the disk flushes.

#![allow(clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(30);
    let rate: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500).max(1);
    let dir = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let every = Duration::from_secs(1) / rate;
    let path = dir.join(format!("switchboard-fsync-probe-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("create the probe file");
    let block = vec![0x5a_u8; 8192];
    let mut lat: Vec<Duration> = Vec::new();
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(secs) {
        // Paced, not back to back: a stall delays the flushes behind it
        // (they start late), as it delays the commits queued behind it.
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
        // A 16 MiB file, like a WAL segment, rewritten from the start.
        if lat.len() % 2048 == 0 {
            use std::io::Seek;
            file.rewind().expect("rewind");
        }
    }
    let total = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    let over = |ms: u64| lat.iter().filter(|l| **l > Duration::from_millis(ms)).count();
    let (over15, over50, over100) = (over(15), over(50), over(100));
    // A commit arriving during a flush of length L waits out its rest: the
    // share of time it waits over x is the sum of max(0, L - x) over the run.
    let share_over = |x: Duration| -> f64 {
        lat.iter().map(|l| l.saturating_sub(x)).sum::<Duration>().as_secs_f64() / total.as_secs_f64()
    };
    let share15 = share_over(Duration::from_millis(15));
    // The wait exceeded by 1 % of arrivals: a floor under any durable ack's p99.
    let (mut lo, mut hi) = (Duration::ZERO, lat.iter().copied().max().unwrap_or_default());
    while hi - lo > Duration::from_micros(100) {
        let mid = (lo + hi) / 2;
        if share_over(mid) > 0.01 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "fsync probe, {:.0} s in {}: {} flushes ({:.0}/s asked, {:.0}/s done)\n  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.1} ms\n  \
         stalls over 15 ms: {}, over 50 ms: {}, over 100 ms: {}\n  \
         a commit arriving at random waits over 15 ms for the flush alone {:.2} % of the time;\n  \
         1 % of arrivals wait over {:.1} ms for it (a floor under any durable ack's p99)",
        total.as_secs_f64(),
        dir.display(),
        lat.len(),
        rate,
        lat.len() as f64 / total.as_secs_f64(),
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0),
        over15,
        over50,
        over100,
        100.0 * share15,
        hi.as_secs_f64() * 1e3
    );
}
