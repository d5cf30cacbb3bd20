//! The database's own limits for the run's job (`--limits SECS`), measured
//! on the run's cluster just before the load, so switchboard can be set
//! against them as ratios that do not move with the machine's speed:
//!
//! - **one message per commit**: clients each committing the rows one
//!   message writes, one message per transaction;
//! - **batched**: the same rows, [`BATCH`] messages per transaction;
//! - **bare commit**: a durable one-row `INSERT`, autocommitted, open loop
//!   at the run's rate (latency from each commit's intended start) — the
//!   floor under "ack = durable".
//!
//! The rows go to scratch copies of the real tables (`LIKE … INCLUDING
//! ALL`: the same columns, defaults and indexes), dropped afterwards, so
//! the checker and the run never see them. Each client owns its share of
//! the run's conversations: no lock waits, the ceiling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_postgres::{Client, Statement};

use super::report::{Percentiles, Report};

/// Clients of the two ceilings (the server's pool is of this order).
const CLIENTS: usize = 16;
/// Messages per transaction of the batched ceiling.
const BATCH: usize = 100;
/// Connections the bare commits are spread over (a commit due while all
/// are busy waits; its latency counts from when it was due).
const BARE_CONNECTIONS: usize = 64;

/// The scratch tables, each a copy of the table it is named after.
const TABLES: [&str; 4] = ["sessions", "inbox", "messages", "outbox"];

/// What one message writes, for `n` messages at once (arrays of `n`):
/// its inbox row; its session's step (data, state, version, the window);
/// its inbound and outbound transcript rows; its reply's outbox row; the
/// inbox row's processed mark; the reply's sent marks on the outbox and
/// the transcript.
const STEPS: [&str; 7] = [
    "INSERT INTO limits_inbox (id, phone, provider_message_id, payload) \
     SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[]::jsonb[])",
    "UPDATE limits_sessions s SET data = u.data, flow_state = 'pedir_datos', version = s.version + 1, \
     updated_at = now(), last_customer_at = now() \
     FROM unnest($1::text[], $2::text[]::jsonb[]) AS u(phone, data) WHERE s.phone = u.phone",
    "INSERT INTO limits_messages (id, phone, direction, origin, body, inbox_id, provider_message_id, outbox_key) \
     SELECT m.id * 2, m.phone, 'in', 'user', 'hola', m.id, m.pmid, NULL FROM unnest($1::int8[], $2::text[], $3::text[]) AS m(id, phone, pmid) \
     UNION ALL SELECT m.id * 2 + 1, m.phone, 'out', 'bot', $4::text, NULL, NULL, 'reply:' || m.pmid FROM unnest($1::int8[], $2::text[], $3::text[]) AS m(id, phone, pmid)",
    "INSERT INTO limits_outbox (id, phone, kind, payload, idempotency_key) \
     SELECT m.id, m.phone, 'text', jsonb_build_object('to', m.phone, 'type', 'text', 'text', jsonb_build_object('body', $4::text)), 'reply:' || m.pmid \
     FROM unnest($1::int8[], $2::text[], $3::text[]) AS m(id, phone, pmid)",
    "UPDATE limits_inbox i SET processed_at = now(), version = i.id \
     FROM unnest($1::text[], $2::int8[]) AS u(phone, id) WHERE (i.phone, i.id) = (u.phone, u.id)",
    "UPDATE limits_outbox o SET status = 'sent', attempts = 1, provider_message_id = 'wamid.out.' || o.id, updated_at = now() \
     FROM unnest($1::text[], $2::int8[]) AS u(phone, id) WHERE (o.phone, o.id) = (u.phone, u.id)",
    "UPDATE limits_messages m SET status = 'sent', provider_message_id = 'wamid.out.' || u.id, updated_at = now() \
     FROM unnest($1::text[], $2::int8[]) AS u(phone, id) WHERE (m.phone, m.id) = (u.phone, u.id * 2 + 1)",
];

/// The reply every message gets (about the example flow's first reply).
const REPLY: &str = "¡Hola! Soy el asistente de reportes. ¿Cuál es tu número de cliente SAP?";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Limits {
    /// Seconds each of the three ran.
    pub seconds: f64,
    pub clients: usize,
    pub one_per_commit_msgs_per_s: f64,
    pub batch: usize,
    pub batched_msgs_per_s: f64,
    /// The bare commits' rate (the run's, open loop; `None` with `--max`).
    pub bare_commit_rate: Option<f64>,
    pub bare_commit_ms: Option<Percentiles>,
    /// The run's throughput ÷ the one-message-per-commit ceiling.
    pub throughput_vs_one_per_commit: f64,
    /// The run's throughput ÷ the batched ceiling.
    pub throughput_vs_batched: f64,
    /// The run's ack p99 ÷ the bare commit's p99 at the same rate.
    pub ack_p99_vs_bare_commit_p99: Option<f64>,
}

impl Limits {
    /// The ratios of `report`'s run to these limits.
    pub fn against(mut self, report: &Report) -> Self {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        self.throughput_vs_one_per_commit = ratio(report.throughput_msgs_per_s, self.one_per_commit_msgs_per_s);
        self.throughput_vs_batched = ratio(report.throughput_msgs_per_s, self.batched_msgs_per_s);
        self.ack_p99_vs_bare_commit_p99 = self.bare_commit_ms.map(|b| ratio(report.ack_latency_ms.p99, b.p99));
        self
    }

    /// The report table's lines.
    pub fn lines(&self) -> String {
        let mut t = format!(
            "  limits ({CLIENTS} clients, {:.0} s each): 1 message/commit {:.0} msg/s (run {:.2}×), {} per commit {:.0} msg/s (run {:.2}×)\n",
            self.seconds,
            self.one_per_commit_msgs_per_s,
            self.throughput_vs_one_per_commit,
            self.batch,
            self.batched_msgs_per_s,
            self.throughput_vs_batched,
        );
        if let (Some(rate), Some(p), Some(r)) = (
            self.bare_commit_rate,
            self.bare_commit_ms,
            self.ack_p99_vs_bare_commit_p99,
        ) {
            t.push_str(&format!(
                "  bare durable commit at {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms (run's ack p99 {r:.2}×)\n",
                p.p50, p.p99
            ));
        }
        t
    }
}

/// Measures the three on the database at `url`: `seconds` each, over
/// `phones` conversations, the bare commits at `rate` (none when `None`).
pub async fn measure(url: &str, seconds: f64, phones: usize, rate: Option<f64>) -> anyhow::Result<Limits> {
    let setup = connect(url).await?;
    let made = scratch(&setup, phones).await;
    let measured = async {
        made?;
        let run = Duration::from_secs_f64(seconds);
        let one = ceiling(url, run, phones, 1, 0).await?;
        // The batched rows' ids after any the first could have used.
        let batched = ceiling(url, run, phones, BATCH, 1 << 40).await?;
        let bare = match rate {
            Some(r) => Some(bare_commits(url, run, r).await?),
            None => None,
        };
        anyhow::Ok((one, batched, bare))
    }
    .await;
    // On every way out: the scratch tables go.
    let dropped = setup.batch_execute(&drop_all()).await;
    let (one, batched, bare) = measured?;
    dropped.context("dropping the limits' scratch tables")?;
    Ok(Limits {
        seconds,
        clients: CLIENTS,
        one_per_commit_msgs_per_s: one,
        batch: BATCH,
        batched_msgs_per_s: batched,
        bare_commit_rate: rate.filter(|_| bare.is_some()),
        bare_commit_ms: bare,
        ..Limits::default()
    })
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to measure the limits")?;
    tokio::spawn(conn);
    Ok(client)
}

fn drop_all() -> String {
    let mut sql: String = TABLES
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS limits_{t};"))
        .collect();
    sql.push_str("DROP TABLE IF EXISTS limits_commits;");
    sql
}

/// The scratch tables, a session row per conversation.
async fn scratch(c: &Client, phones: usize) -> anyhow::Result<()> {
    let mut sql = drop_all();
    for t in TABLES {
        sql.push_str(&format!("CREATE TABLE limits_{t} (LIKE {t} INCLUDING ALL);"));
    }
    sql.push_str("CREATE TABLE limits_commits (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());");
    sql.push_str(&format!(
        "INSERT INTO limits_sessions (phone, flow_state, data) \
         SELECT 'limits.' || i, 'inicio', '{{}}' FROM generate_series(0, {}) AS i;",
        phones.max(CLIENTS) - 1
    ));
    c.batch_execute(&sql).await.context("making the limits' scratch tables")
}

/// Messages a second committed by [`CLIENTS`] clients, `batch` messages per
/// transaction, for `run` (the rows' ids from `base`).
async fn ceiling(url: &str, run: Duration, phones: usize, batch: usize, base: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        let client = connect(url).await?;
        clients.spawn(async move {
            let steps = prepare(&client).await?;
            // Conversations k, k + CLIENTS, …: this client's own.
            let own: Vec<usize> = (k..phones.max(CLIENTS)).step_by(CLIENTS).collect();
            let mut done = 0usize;
            while started.elapsed() < run {
                let ids: Vec<i64> = (0..batch).map(|i| base + (k + (done + i) * CLIENTS) as i64).collect();
                let phones: Vec<String> = (0..batch)
                    .map(|i| format!("limits.{}", own[(done + i) % own.len()]))
                    .collect();
                commit(&client, &steps, &ids, &phones).await?;
                done += batch;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(done) = clients.join_next().await {
        total += done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn prepare(c: &Client) -> anyhow::Result<Vec<Statement>> {
    let mut steps = Vec::new();
    for sql in STEPS {
        steps.push(c.prepare(sql).await.context("preparing a limits statement")?);
    }
    Ok(steps)
}

/// One transaction writing the rows of the messages `ids` (in `phones`).
async fn commit(c: &Client, s: &[Statement], ids: &[i64], phones: &[String]) -> anyhow::Result<()> {
    let pmids: Vec<String> = ids.iter().map(|i| format!("wamid.limits.{i}")).collect();
    let payloads: Vec<String> = ids
        .iter()
        .zip(phones)
        .map(|(i, p)| {
            serde_json::json!({"from": p, "id": format!("wamid.limits.{i}"), "timestamp": "1764960000",
                "type": "text", "text": {"body": "hola"}})
            .to_string()
        })
        .collect();
    let data: Vec<String> = ids.iter().map(|i| format!(r#"{{"seen": {i}}}"#)).collect();
    c.batch_execute("BEGIN").await?;
    c.execute(&s[0], &[&ids, &phones, &pmids, &payloads]).await?;
    c.execute(&s[1], &[&phones, &data]).await?;
    c.execute(&s[2], &[&ids, &phones, &pmids, &REPLY]).await?;
    c.execute(&s[3], &[&ids, &phones, &pmids, &REPLY]).await?;
    for mark in &s[4..] {
        c.execute(mark, &[&phones, &ids]).await?;
    }
    c.batch_execute("COMMIT").await?;
    Ok(())
}

/// Latency of a durable one-row autocommitted `INSERT`, open loop at
/// `rate` for `run`, from each commit's intended start.
async fn bare_commits(url: &str, run: Duration, rate: f64) -> anyhow::Result<Percentiles> {
    let (due_tx, due_rx) = due_queue(BARE_CONNECTIONS);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..BARE_CONNECTIONS {
        let client = connect(url).await?;
        let due = due_rx.clone();
        workers.spawn(async move {
            let insert = client.prepare("INSERT INTO limits_commits DEFAULT VALUES").await?;
            let mut h = Histogram::<u64>::new(3).context("histogram")?;
            while let Some(at) = next_due(&due).await {
                client.execute(&insert, &[]).await?;
                h.saturating_record(at.elapsed().as_micros() as u64);
            }
            anyhow::Ok(h)
        });
    }
    let start = tokio::time::Instant::now();
    let every = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let count = (run.as_secs_f64() * rate).round() as u64;
    for i in 0..count {
        let at = start + every.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        if due_tx.send(at.into_std()).await.is_err() {
            break;
        }
    }
    drop(due_tx);
    let mut all = Histogram::<u64>::new(3).context("histogram")?;
    while let Some(h) = workers.join_next().await {
        all.add(h??).context("histogram")?;
    }
    Ok(Percentiles::from_us(&all))
}

type Due = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>;

/// A queue of due commits shared by the workers (each takes the next).
fn due_queue(bound: usize) -> (tokio::sync::mpsc::Sender<Instant>, Due) {
    let (tx, rx) = tokio::sync::mpsc::channel(bound);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

async fn next_due(due: &Due) -> Option<Instant> {
    due.lock().await.recv().await
}
