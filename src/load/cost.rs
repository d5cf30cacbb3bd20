//! What a message costs: CPU of the server process(es), of PostgreSQL (all
//! its processes) and of the generator, WAL bytes, statements, commits and
//! WAL flushes — each per applied message, from samples taken before the
//! sending and after the drain — and resident memory per live conversation.
//! Unlike throughput and latency these do not move with the machine's speed.

use std::path::{Path, PathBuf};

use diesel::sql_types::{BigInt, Nullable};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

/// Where a run's costs are read from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The `serve` processes (none: the server runs in this process, or elsewhere).
    pub server_pids: Vec<i32>,
    /// The harness's own cluster (its postmaster found as the run folder's guard finds it).
    pub pg_data_dir: Option<PathBuf>,
    /// The server runs inside the generator's process: their CPU is one figure.
    pub in_process: bool,
}

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// CPU seconds of this process (the generator, and the server when in process).
    own_s: f64,
    /// Per `serve` pid, its CPU seconds.
    servers_s: Vec<(i32, f64)>,
    /// PostgreSQL's CPU seconds: the postmaster, its live children, and the
    /// children it reaped (their time moves into its own counters).
    postgres_s: Option<f64>,
    db: Option<DbCounters>,
}

#[derive(Debug, Clone, Default, QueryableByName)]
struct DbCounters {
    #[diesel(sql_type = BigInt)]
    wal_bytes: i64,
    #[diesel(sql_type = BigInt)]
    commits: i64,
    #[diesel(sql_type = BigInt)]
    wal_syncs: i64,
    /// `None` when `pg_stat_statements` is not loaded.
    #[diesel(sql_type = Nullable<BigInt>)]
    statements: Option<i64>,
}

/// Per applied message (and per live conversation for memory).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cost {
    /// CPU of the `serve` process(es) (`None` when the server ran inside the
    /// harness's process, or elsewhere).
    pub server_cpu_us: Option<f64>,
    /// CPU of the harness's process: the generator (and, with the server in
    /// process, the server too: `server_in_generator`).
    pub generator_cpu_us: f64,
    pub server_in_generator: bool,
    /// CPU of PostgreSQL's processes (`None` without the harness's cluster).
    pub postgres_cpu_us: Option<f64>,
    pub wal_bytes: Option<f64>,
    /// Statements run (`pg_stat_statements`; transaction control and
    /// session settings left out).
    pub statements: Option<f64>,
    /// Transactions committed (`pg_stat_database.xact_commit`: read-only
    /// ones included — a statement outside a transaction is one).
    pub commits: Option<f64>,
    /// WAL flushes (`pg_stat_wal.wal_sync`).
    pub fsyncs: Option<f64>,
    /// Resident memory of the server process(es) divided by the live
    /// conversations (bytes; the process's own baseline included).
    pub rss_per_live_conversation: Option<f64>,
}

impl Cost {
    /// The report table's lines.
    pub fn lines(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} µs"));
        let n = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        let generator = if self.server_in_generator {
            format!("server + generator {:.0} µs (one process)", self.generator_cpu_us)
        } else {
            format!(
                "server {}, generator {:.0} µs",
                us(self.server_cpu_us),
                self.generator_cpu_us
            )
        };
        format!(
            "  cost/message {generator}, PostgreSQL {}; WAL {} bytes, {} statements, {} commits, {} WAL flushes; {} bytes resident per live conversation\n",
            us(self.postgres_cpu_us),
            n(self.wal_bytes, 0),
            n(self.statements, 2),
            n(self.commits, 2),
            n(self.fsyncs, 2),
            n(self.rss_per_live_conversation, 0),
        )
    }
}

impl Sample {
    /// The counters now; database figures when `url` answers.
    pub async fn take(sources: &Sources, url: Option<&str>) -> Self {
        let db = match url {
            Some(u) => db_counters(u).await.ok(),
            None => None,
        };
        Self {
            own_s: cpu_s(std::process::id() as i32, false).unwrap_or(0.0),
            servers_s: sources
                .server_pids
                .iter()
                .filter_map(|p| cpu_s(*p, false).map(|s| (*p, s)))
                .collect(),
            postgres_s: sources.pg_data_dir.as_deref().and_then(postgres_cpu_s),
            db,
        }
    }
}

/// The cost per applied message between `before` and `after`; `rss` and
/// `live` the servers' resident bytes and live conversations at the end.
pub fn between(
    before: &Sample,
    after: &Sample,
    applied: u64,
    rss: Option<f64>,
    live: Option<f64>,
    in_process: bool,
) -> Cost {
    let per = |v: f64| v / applied.max(1) as f64;
    // A process restarted mid-run (`--kill-at`) is left out: its counters started over.
    let servers: f64 = after
        .servers_s
        .iter()
        .filter_map(|(p, s)| before.servers_s.iter().find(|(q, _)| q == p).map(|(_, b)| s - b))
        .sum();
    let db = before.db.as_ref().zip(after.db.as_ref());
    let d = |f: fn(&DbCounters) -> i64| db.map(|(b, a)| per((f(a) - f(b)) as f64));
    Cost {
        server_cpu_us: (!after.servers_s.is_empty()).then(|| per(servers * 1e6)),
        generator_cpu_us: per((after.own_s - before.own_s) * 1e6),
        server_in_generator: in_process,
        postgres_cpu_us: before.postgres_s.zip(after.postgres_s).map(|(b, a)| per((a - b) * 1e6)),
        wal_bytes: d(|c| c.wal_bytes),
        statements: db.and_then(|(b, a)| Some(per((a.statements? - b.statements?) as f64))),
        commits: d(|c| c.commits),
        fsyncs: d(|c| c.wal_syncs),
        rss_per_live_conversation: rss.zip(live).filter(|(_, l)| *l > 0.0).map(|(r, l)| r / l),
    }
}

/// Resident bytes of `pid` (`VmRSS`).
pub fn rss_bytes(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces): `[0]` state, `[1]` ppid, `[11]` utime, `[12]` stime, `[13]`
/// cutime, `[14]` cstime (clock ticks).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds of `pid` (with `reaped`: and of its children it waited for).
fn cpu_s(pid: i32, reaped: bool) -> Option<f64> {
    let f = stat_fields(pid)?;
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = tick(11) + tick(12) + if reaped { tick(13) + tick(14) } else { 0.0 };
    Some(ticks / USER_HZ)
}

/// Linux reports process times in `/proc` in USER_HZ ticks, 100 a second
/// whatever the kernel's own tick.
const USER_HZ: f64 = 100.0;

/// PostgreSQL's CPU seconds: the postmaster (its reaped children included)
/// and every live child of it.
fn postgres_cpu_s(data_dir: &Path) -> Option<f64> {
    let pid = super::run_dir::postmaster(data_dir)?;
    let mut total = cpu_s(pid, true)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let parent = stat_fields(child).and_then(|f| f.get(1).and_then(|p| p.parse::<i32>().ok()));
        if parent == Some(pid) {
            total += cpu_s(child, false).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The database's cumulative WAL position, commits, WAL flushes and
/// statements (`pg_stat_statements`, when loaded; the extension is created
/// on first use).
async fn db_counters(url: &str) -> crate::Result<DbCounters> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    let loaded = diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut conn)
        .await
        .is_ok();
    let statements = if loaded {
        "(SELECT sum(calls)::int8 FROM pg_stat_statements \
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
            AND query !~* '^\\s*(BEGIN|COMMIT|ROLLBACK|SET|SHOW|SAVEPOINT|RELEASE|CREATE EXTENSION)')"
    } else {
        "NULL::int8"
    };
    Ok(diesel::sql_query(format!(
        "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 AS wal_bytes, \
                (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits, \
                (SELECT wal_sync FROM pg_stat_wal) AS wal_syncs, \
                {statements} AS statements"
    ))
    .get_result(&mut conn)
    .await?)
}
