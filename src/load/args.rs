//! The flags of `switchboard load`, and what the run reads from them (the
//! plan, the loop, the durations), so no other file parses a flag again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::driver::ClosedLoop;
use super::population::Population;
use super::scenario::{self, Options, Planned, Scenario};
use crate::config::PgValue;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// A running server, or several processes of one deployment separated
    /// by commas (each request goes to one at random). Without it, the
    /// harness starts its own (embedded database, fake send API) on
    /// loopback and removes it afterwards.
    #[arg(long)]
    pub target: Option<String>,
    /// Without --target: run this many `switchboard serve` processes on one
    /// database, each request sent to one of them at random.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// With --processes: kill the last process with SIGKILL this many
    /// seconds into the run, and start it again.
    #[arg(long)]
    pub kill_at: Option<u64>,
    /// With several processes: send each phone's requests to one process
    /// (`phone`, as a consistent-hash balancer would) instead of any
    /// (`random`).
    #[arg(long, value_enum, default_value_t = Route::Random)]
    pub route: Route,
    /// Chaos: restart the database this many seconds into the run.
    #[arg(long)]
    pub pg_restart_at: Option<u64>,
    /// How the database stops for --pg-restart-at: `fast` or `immediate` (a crash).
    #[arg(long, default_value = "immediate", value_parser = ["fast", "immediate"])]
    pub pg_restart_mode: String,
    /// Milliseconds the database stays down for --pg-restart-at.
    #[arg(long, default_value_t = 2000)]
    pub pg_down_ms: u64,
    /// Chaos: every this many milliseconds, terminate about half of the
    /// servers' database connections (`pg_terminate_backend`).
    #[arg(long)]
    pub kill_connections_every_ms: Option<u64>,
    /// This many seconds in, restart the processes one after the other: each
    /// stopped with SIGTERM (it drains), started again, ready, then the next.
    #[arg(long)]
    pub rolling_restart_at: Option<u64>,
    /// The binary the restarted processes run (a new release, whose
    /// migrations run while the old processes still serve); default: the same.
    #[arg(long)]
    pub restart_bin: Option<PathBuf>,
    /// Fault: every packet between the processes and the database held
    /// this many milliseconds (`N` or `MIN-MAX`), the whole run.
    #[arg(long, value_parser = latency_range)]
    pub db_delay_ms: Option<LatencyRange>,
    /// Fault: this many seconds in, the path to the database forwards
    /// nothing (no packet, no close) for --db-stall-ms.
    #[arg(long)]
    pub db_stall_at: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub db_stall_ms: u64,
    /// Fault: this many seconds in, every packet of the path to the
    /// database is dropped (nftables in a network namespace of the run's
    /// own: nothing answered, acknowledged or closed) for
    /// --db-black-hole-ms. Needs root, `ip` and `nft`.
    #[arg(long)]
    pub db_black_hole_at: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub db_black_hole_ms: u64,
    /// Fault: this many seconds in, the fake send API takes every send and
    /// answers none for --send-stall-ms.
    #[arg(long)]
    pub send_stall_at: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub send_stall_ms: u64,
    /// The `switchboard` binary the processes run (default: this one). Given,
    /// the server runs in processes of its own even with `--processes 1`:
    /// the cost section then tells the server's CPU from the generator's.
    #[arg(long)]
    pub serve_bin: Option<PathBuf>,
    /// Requests per second (open loop); with --max, the number of workers.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Distinct conversations.
    #[arg(long, default_value_t = 100)]
    pub phones: usize,
    /// Business numbers the conversations are spread over: contact i writes
    /// to number i % N, each delivery naming it in
    /// `metadata.phone_number_id`. The first is the home number
    /// (`whatsapp.phone_number_id`, 1098765432), the others follow it
    /// (1098765433, …): the harness's own server serves them all; a
    /// `--target` must be configured with them (`[[whatsapp.numbers]]`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub numbers: u32,
    /// The share of contacts (0 to 1) that are username-only: known by a
    /// BSUID alone (`user_id`, `from_user_id`, `recipient_user_id`), with
    /// no phone in any delivery. Which contacts is fixed (a hash of each
    /// one's index), spread over every number.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub username_share: f64,
    /// Most deliveries of one message (duplicates scenario).
    #[arg(long, default_value_t = 5)]
    pub max_deliveries: u32,
    /// Zipf exponent of the phone choice (hot scenario).
    #[arg(long, default_value_t = 1.1)]
    pub skew: f64,
    /// Closed loop: `--rate` workers send back to back, to find the ceiling.
    #[arg(long)]
    pub max: bool,
    /// Where to write the JSON report (and the SVG plot beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Database to check invariants on, with --target.
    #[arg(long, env = "SWITCHBOARD_LOAD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// App secret to sign deliveries with, with --target.
    #[arg(long, env = "SWITCHBOARD_LOAD_APP_SECRET")]
    pub app_secret: Option<String>,
    /// API token for the event stream and agent calls, with --target.
    #[arg(long, env = "SWITCHBOARD_LOAD_API_TOKEN")]
    pub api_token: Option<String>,
    /// Open loop: requests on the wire at most (the generator's
    /// connections, as a provider's delivery workers). A request due while
    /// all are busy waits; its latency counts from when it was due. Without
    /// a bound a stall opens a connection per request, until the generator
    /// and its own server run out of file descriptors.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Milliseconds the fake send API takes to answer each reply: `N`, or
    /// `MIN-MAX` for a random time in that range (answers then come back
    /// in any order). The WhatsApp Cloud API answers in about 100–500 ms.
    /// Below the sender's timeout (10 s): a send timed out and retried may
    /// have arrived, and would count as a reply sent twice.
    #[arg(long, default_value = "0", value_parser = latency_range)]
    pub send_latency_ms: LatencyRange,
    /// Sends per second of each business number (`outbox.rate_per_s`),
    /// held by the processes together; the checker counts each number's
    /// sends per second against it.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_rate: u32,
    /// Mid-run, sets this many timers due in the same second, each in a
    /// conversation of its own (the firing benchmark); the report shows
    /// how late they fired.
    #[arg(long, default_value_t = 0)]
    pub timer_wave: u32,
    /// The harness's own server marks no message read (to measure what
    /// the read receipts cost: one more call to the send API per message).
    #[arg(long)]
    pub no_read_receipts: bool,
    /// Before the load, measure the database's own limits for the job on
    /// the run's cluster for this many seconds each (one message per
    /// commit, batched, a bare durable commit at `--rate`) and report the
    /// run against them as ratios.
    #[arg(long, value_parser = positive_seconds)]
    pub limits: Option<f64>,
    /// A soak: every this many seconds, sample each server's memory and
    /// threads, its live conversations, the database's connections, size
    /// and WAL per message (the report's `soak` section).
    #[arg(long, value_parser = positive_seconds)]
    pub sample_every: Option<f64>,
    /// Seconds to wait after the last send for messages to be applied.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// For tests only: the checker is also told of one acked message that
    /// was never sent, so a run ends failed and shows it cleans up as well.
    #[arg(long, hide = true)]
    pub plant_violation: bool,
    /// Extra settings of the harness's own PostgreSQL cluster: `switchboard
    /// load` takes them from the configuration's
    /// `[database.embedded.server_settings]` (to profile a run with
    /// `pg_stat_statements`, say). Not a flag.
    #[arg(skip)]
    pub server_settings: BTreeMap<String, PgValue>,
    /// The harness's own server sends with the configuration's
    /// `outbox.batch` and `outbox.concurrency` (to size them with
    /// `--send-latency-ms`); its rate limit is lifted. Not a flag.
    #[arg(skip)]
    pub outbox_sends: Option<(i64, usize)>,
}

/// The fake send API's answer time, in milliseconds: from `min` to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LatencyRange {
    pub min: u64,
    pub max: u64,
}

impl LatencyRange {
    pub fn min(&self) -> Duration {
        Duration::from_millis(self.min)
    }

    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max)
    }
}

impl std::fmt::Display for LatencyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// `N` or `MIN-MAX` milliseconds, each below the send timeout.
fn latency_range(value: &str) -> Result<LatencyRange, String> {
    let limit = crate::whatsapp::sender::SEND_TIMEOUT.as_millis() as u64;
    let ms = |v: &str| -> Result<u64, String> {
        let n: u64 = v.trim().parse().map_err(|e| format!("{v:?}: {e}"))?;
        (n < limit)
            .then_some(n)
            .ok_or_else(|| format!("{n} ms is not below the send timeout ({limit} ms)"))
    };
    let (min, max) = match value.split_once('-') {
        Some((a, b)) => (ms(a)?, ms(b)?),
        None => (ms(value)?, ms(value)?),
    };
    if min > max {
        return Err(format!("{min}-{max}: the minimum is above the maximum"));
    }
    Ok(LatencyRange { min, max })
}

/// A share, 0 to 1 (`--username-share`).
fn share(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err("a share is from 0 to 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Seconds, more than 0 and at most an hour (`--limits`).
fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        Ok(_) => Err("seconds from more than 0 to 3600".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// How requests are spread over several processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    Random,
    Phone,
}

impl LoadArgs {
    /// Whether a fault is asked for: each needs processes and a database
    /// the harness can kill or restart.
    fn chaos_asked(&self) -> bool {
        self.kill_at.is_some()
            || self.pg_restart_at.is_some()
            || self.kill_connections_every_ms.is_some()
            || self.db_path_faults()
            || self.send_stall_at.is_some()
            || self.rolling_restart_at.is_some()
    }

    /// Whether the processes reach the database through the harness's proxy.
    pub(super) fn db_path_faults(&self) -> bool {
        self.db_delay_ms.is_some() || self.db_stall_at.is_some() || self.db_black_hole_at.is_some()
    }

    /// Whether the harness runs `serve` processes of its own (several, or
    /// for a fault) instead of one server inside this process.
    pub(super) fn wants_processes(&self) -> bool {
        self.target.is_none() && (self.processes > 1 || self.chaos_asked() || self.serve_bin.is_some())
    }

    /// The `--target` servers' base URLs, as the requests are built from
    /// them: trimmed, no trailing slash, no empty entry.
    pub(super) fn target_bases(&self) -> Vec<String> {
        self.target
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect()
    }

    /// The open-loop plan; empty with `--max`, whose workers make their own.
    pub(super) fn plan(&self) -> Vec<Planned> {
        if self.max {
            return Vec::new();
        }
        scenario::plan(&Options {
            scenario: self.scenario,
            rate: self.rate,
            duration: self.run_for(),
            phones: self.phones,
            max_deliveries: self.max_deliveries,
            skew: self.skew,
            seed: self.seed,
            population: self.population(),
        })
    }

    /// Who writes: over which numbers, how many username-only.
    pub(super) fn population(&self) -> Population {
        Population {
            numbers: self.numbers as usize,
            username_share: self.username_share,
        }
    }

    /// With `--max`: how many workers, for how long, over how many phones.
    pub(super) fn closed_loop(&self) -> Option<ClosedLoop> {
        self.max.then(|| ClosedLoop {
            workers: self.rate.max(1.0) as usize,
            duration: self.run_for(),
            phones: self.phones,
            population: self.population(),
        })
    }

    /// How long the sending lasts (`--duration`).
    pub(super) fn run_for(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    /// The harness's own cluster's settings: the configuration's, with
    /// `pg_stat_statements` loaded unless they load libraries of their own
    /// (the cost section counts statements with it).
    pub(super) fn cluster_settings(&self) -> BTreeMap<String, PgValue> {
        let mut s = self.server_settings.clone();
        s.entry("shared_preload_libraries".into())
            .or_insert_with(|| PgValue::Text("pg_stat_statements".into()));
        s
    }

    /// How long each wait after the sending may take (`--drain`).
    pub(super) fn drain_limit(&self) -> Duration {
        Duration::from_secs(self.drain)
    }
}
