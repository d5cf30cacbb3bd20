//! A soak's figures (`--sample-every SECS`): every period while the load
//! runs, each server process's resident memory and threads, the live
//! conversations it holds, the database's open connections, its size, and
//! the WAL and messages applied since the last sample — so a leak shows as
//! a slope, not as one number at the end. The report's `soak` section ends
//! with the memory growth over the run's last part (after warm-up).

use std::time::{Duration, Instant};

use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::cost::{rss_bytes, Sources};

/// One moment of a soak.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SoakSample {
    /// Seconds since the load began.
    pub t_s: f64,
    /// Per `serve` process (by pid), resident bytes.
    pub rss_bytes: Vec<(i32, u64)>,
    /// Per `serve` process, its threads.
    pub threads: Vec<(i32, u64)>,
    /// Session actors alive, over every server (`switchboard_live_sessions`).
    pub live_conversations: Option<u64>,
    pub db_connections: Option<i64>,
    pub db_bytes: Option<i64>,
    /// Messages applied (inbox rows processed) so far.
    pub applied: Option<i64>,
    /// WAL written since the previous sample, per message applied in between.
    pub wal_bytes_per_message: Option<f64>,
    #[serde(skip)]
    wal_lsn: Option<i64>,
}

/// The soak section of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Soak {
    pub every_s: f64,
    pub samples: Vec<SoakSample>,
    /// Over the window below, the largest growth of a process's resident
    /// memory, percent (the goal: under 5).
    pub rss_growth_pct: Option<f64>,
    /// The window judged: the last 20 minutes of a run of 30 or more, else
    /// the last two thirds (the first third is warm-up).
    pub window_s: f64,
}

#[derive(QueryableByName)]
struct DbNow {
    #[diesel(sql_type = BigInt)]
    connections: i64,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
    #[diesel(sql_type = BigInt)]
    lsn: i64,
    #[diesel(sql_type = BigInt)]
    applied: i64,
}

/// Samples every `every` until `stop` completes; `bases` are the servers' URLs.
pub async fn sample(
    sources: Sources,
    url: Option<String>,
    bases: Vec<String>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
    print: bool,
) -> Soak {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut samples: Vec<SoakSample> = Vec::new();
    loop {
        let mut s = take(&sources, url.as_deref(), &bases, &client).await;
        s.t_s = started.elapsed().as_secs_f64();
        if let (Some(prev), Some(lsn), Some(applied)) = (samples.last(), s.wal_lsn, s.applied) {
            if let (Some(p_lsn), Some(p_applied)) = (prev.wal_lsn, prev.applied) {
                let n = applied - p_applied;
                s.wal_bytes_per_message = (n > 0).then(|| (lsn - p_lsn) as f64 / n as f64);
            }
        }
        if print {
            eprintln!("{}", line(&s));
        }
        samples.push(s);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    judge(every, samples)
}

/// The samples with their verdict: growth over the window after warm-up.
fn judge(every: Duration, samples: Vec<SoakSample>) -> Soak {
    let end = samples.last().map_or(0.0, |s| s.t_s);
    let window_s = if end >= 30.0 * 60.0 {
        20.0 * 60.0
    } else {
        end * 2.0 / 3.0
    };
    let from = samples.iter().find(|s| s.t_s >= end - window_s);
    let last = samples.last();
    let rss_growth_pct = from.zip(last).and_then(|(a, b)| {
        b.rss_bytes
            .iter()
            .filter_map(|(pid, end)| {
                let start = a.rss_bytes.iter().find(|(p, _)| p == pid)?.1;
                (start > 0).then(|| (*end as f64 - start as f64) / start as f64 * 100.0)
            })
            .reduce(f64::max)
    });
    Soak {
        every_s: every.as_secs_f64(),
        samples,
        rss_growth_pct,
        window_s,
    }
}

async fn take(sources: &Sources, url: Option<&str>, bases: &[String], client: &reqwest::Client) -> SoakSample {
    let db = match url {
        Some(u) => db_now(u).await.ok(),
        None => None,
    };
    let mut live = None;
    for base in bases {
        if let Some(n) = live_sessions(client, base).await {
            live = Some(live.unwrap_or(0) + n);
        }
    }
    // The processes serving now (one restarted has a new pid).
    let pids: Vec<i32> = match sources.server_pids.is_empty() {
        true => Vec::new(),
        false => bases
            .iter()
            .filter_map(|b| b.rsplit(':').next()?.parse::<u16>().ok())
            .filter_map(super::listeners::pid_listening_on)
            .collect(),
    };
    SoakSample {
        rss_bytes: pids
            .iter()
            .filter_map(|p| rss_bytes(*p).map(|r| (*p, r as u64)))
            .collect(),
        threads: pids.iter().filter_map(|p| threads(*p).map(|t| (*p, t))).collect(),
        live_conversations: live,
        db_connections: db.as_ref().map(|d| d.connections),
        db_bytes: db.as_ref().map(|d| d.bytes),
        applied: db.as_ref().map(|d| d.applied),
        wal_lsn: db.as_ref().map(|d| d.lsn),
        ..SoakSample::default()
    }
}

async fn db_now(url: &str) -> anyhow::Result<DbNow> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    Ok(diesel::sql_query(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()) AS connections, \
                pg_database_size(current_database()) AS bytes, \
                (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 AS lsn, \
                (SELECT count(*) FROM inbox WHERE processed_at IS NOT NULL) AS applied",
    )
    .get_result(&mut conn)
    .await?)
}

/// `switchboard_live_sessions` from a server's `/metrics`.
async fn live_sessions(client: &reqwest::Client, base: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_live_sessions "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn threads(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

fn line(s: &SoakSample) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rss: Vec<String> = s.rss_bytes.iter().map(|(_, b)| format!("{:.1}", mib(*b))).collect();
    format!(
        "soak t={:>6.0}s rss_mib=[{}] live={} db_conns={} db_mib={:.1} applied={} wal/msg={}",
        s.t_s,
        rss.join(","),
        s.live_conversations.map_or("-".into(), |v| v.to_string()),
        s.db_connections.map_or("-".into(), |v| v.to_string()),
        s.db_bytes.map_or(0.0, |b| b as f64 / (1024.0 * 1024.0)),
        s.applied.map_or("-".into(), |v| v.to_string()),
        s.wal_bytes_per_message.map_or("-".into(), |v| format!("{v:.0}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_s: f64, rss: u64) -> SoakSample {
        SoakSample {
            t_s,
            rss_bytes: vec![(7, rss)],
            ..SoakSample::default()
        }
    }

    #[test]
    fn growth_is_judged_after_warm_up_over_the_last_twenty_minutes() {
        let every = Duration::from_secs(60);
        // Warm-up doubles memory; then it stays within 2 %.
        let mut samples: Vec<SoakSample> = (0..=10).map(|m| at(m as f64 * 60.0, 100 + m * 10)).collect();
        samples.extend((11..=35).map(|m| at(m as f64 * 60.0, 200 + (m % 2) * 4)));
        let soak = judge(every, samples);
        assert_eq!(soak.window_s, 1200.0);
        let g = soak.rss_growth_pct.unwrap();
        assert!(g.abs() < 3.0, "{g}");
    }
}
