//! The load-test harness behind `switchboard load`: open-loop scenarios
//! against a server (its own, or `--target`), latency in HdrHistogram
//! measured from each request's intended send time (coordinated omission
//! corrected), and an invariant checker run against the database afterwards.

pub mod checker;
pub mod driver;
pub mod fake_graph;
pub mod procs;
pub mod report;
pub mod scenario;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use self::driver::Target;
use self::fake_graph::FakeGraph;
use self::report::{Percentiles, Report, TimelinePoint};
use self::scenario::{Options, Scenario};
use crate::config::{AiProvider, PgValue, Secret, Settings};
use crate::engine::Engine;
use crate::flow::Flow;
use crate::startup::Application;

/// The example flow, built in, so `load` runs from any folder.
pub const EXAMPLE_FLOW: &str = include_str!("../../flows/reporte.toml");

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
    /// The `switchboard` binary the processes run (default: this one).
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
    /// a bound a stall opens a connection per request: at 5,000 req/s that
    /// was 12,000 sockets, and the generator and its own server ran out of
    /// file descriptors.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Milliseconds the fake send API takes to answer each reply (the
    /// WhatsApp Cloud API answers in about 100–500 ms), to size the
    /// outbox's `concurrency` against `rate_per_s`. Below the sender's
    /// timeout (10 s): a send timed out and retried may have arrived, and
    /// would count as a reply sent twice.
    #[arg(
        long,
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..crate::whatsapp::sender::SEND_TIMEOUT.as_millis() as u64)
    )]
    pub send_latency_ms: u64,
    /// Seconds to wait after the last send for messages to be applied.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
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

/// How requests are spread over several processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    Random,
    Phone,
}

/// A server the harness started for itself.
struct OwnServer {
    base: String,
    db_url: Secret,
    engine: Engine,
    graph: FakeGraph,
    app_secret: Secret,
    stop: tokio::sync::oneshot::Sender<()>,
    done: actix_web::rt::task::JoinHandle<crate::Result<()>>,
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh folder for a run's database and files, enterable by the server
/// user (the embedded cluster may run as another user).
fn run_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "switchboard-load-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

async fn start_own(args: &LoadArgs) -> anyhow::Result<OwnServer> {
    let dir = run_dir()?;
    let graph = FakeGraph::start()?;
    graph.set_latency(Duration::from_millis(args.send_latency_ms));
    let app_secret = Secret::new(format!("{:032x}", rand::random::<u128>()));
    let mut s = Settings::default();
    s.database.embedded.data_dir = dir.join("pg");
    s.database.embedded.port = free_port()?;
    s.database.embedded.server_settings = args.server_settings.clone();
    s.database.max_connections = 32;
    s.server.bind = "127.0.0.1:0".into();
    s.whatsapp = graph.settings();
    s.whatsapp.app_secret = Some(app_secret.clone());
    // The fake API takes any rate; WhatsApp's 80/s tier would only measure itself.
    s.outbox.rate_per_s = 100_000;
    if let Some((batch, concurrency)) = args.outbox_sends {
        (s.outbox.batch, s.outbox.concurrency) = (batch, concurrency);
    }
    // The generator is one client address: lift the per-client API limit.
    s.api.rate_per_s = 1_000_000;
    s.api.burst = 1_000_000;
    if args.scenario == Scenario::AiSlow {
        s.ai.provider = AiProvider::Simulated;
        s.ai.simulated.latency_ms = 100;
        s.ai.simulated.jitter_ms = 150;
        s.ai.simulated.error_rate = 0.05;
        s.ai.simulated.hang_rate = 0.01;
        s.ai.intent_timeout_ms = 500;
        s.ai.extract_timeout_ms = 500;
    }
    let flow = Flow::parse(EXAMPLE_FLOW, "flows/reporte.toml")?;
    let engine = Engine::builder(s.clone())
        .flow(flow)
        .start()
        .await
        .context("starting the server")?;
    let db_url = engine.database().url().clone();
    let app = Application::with_engine(engine.clone(), s)?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let done = actix_web::rt::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    Ok(OwnServer {
        base,
        db_url,
        engine,
        graph,
        app_secret,
        stop,
        done,
        dir,
    })
}

/// Reads a counter from the server's `/metrics`.
async fn metric(base: &str, name: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("{base}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Sums a counter over the servers' `/metrics`.
async fn metric_sum(bases: &[String], name: &str) -> u64 {
    let mut total = 0;
    for b in bases {
        total += metric(b, name).await;
    }
    total
}

/// Stops the harness's own server or processes, then their database, and
/// removes their folder.
async fn teardown(own: Option<OwnServer>, procs: Option<(procs::Processes, PathBuf)>) {
    if let Some(o) = own {
        let _ = o.stop.send(());
        let _ = o.done.await;
        let _ = std::fs::remove_dir_all(&o.dir);
    }
    if let Some((p, dir)) = procs {
        p.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs a scenario and returns its report (also written to `--report`).
pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    run_until(args, std::future::pending()).await
}

/// [`run`], cut short when `interrupt` completes (Ctrl-C): the sending
/// stops, the harness's own server, processes and database are stopped and
/// their folder removed, and the run ends with an error (no report: its
/// figures would describe a run that did not happen).
pub async fn run_until(args: LoadArgs, interrupt: impl std::future::Future<Output = ()>) -> anyhow::Result<Report> {
    let chaos_asked =
        args.kill_at.is_some() || args.pg_restart_at.is_some() || args.kill_connections_every_ms.is_some();
    let multi = args.target.is_none() && (args.processes > 1 || chaos_asked);
    let own = match (&args.target, multi) {
        (None, false) => Some(start_own(&args).await?),
        _ => None,
    };
    let mut procs = if multi {
        let dir = run_dir()?;
        let bin = match &args.serve_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?,
        };
        Some((
            procs::Processes::start(args.processes.max(1), &bin, args.scenario, &dir, &args.server_settings).await?,
            dir,
        ))
    } else {
        None
    };
    if let Some((p, _)) = &procs {
        p.graph.set_latency(Duration::from_millis(args.send_latency_ms));
    }
    let target = match (&own, &procs, &args.target) {
        (Some(o), _, _) => Target {
            bases: vec![o.base.clone()],
            app_secret: Some(o.app_secret.clone()),
            api_token: None,
            by_phone: false,
        },
        (None, Some((p, _)), _) => Target {
            bases: p.bases(),
            app_secret: Some(p.app_secret.clone()),
            api_token: None,
            by_phone: args.route == Route::Phone,
        },
        (None, None, Some(t)) => Target {
            bases: t
                .split(',')
                .map(|b| b.trim().trim_end_matches('/').to_string())
                .filter(|b| !b.is_empty())
                .collect(),
            app_secret: args.app_secret.clone().map(Secret::new),
            api_token: args.api_token.clone().map(Secret::new),
            by_phone: args.route == Route::Phone,
        },
        (None, None, None) => unreachable!("one of the three is set"),
    };
    let options = Options {
        scenario: args.scenario,
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        phones: args.phones,
        max_deliveries: args.max_deliveries,
        skew: args.skew,
        seed: args.seed,
    };
    let plan = if args.max { Vec::new() } else { scenario::plan(&options) };
    let closed = args.max.then(|| {
        (
            args.rate.max(1.0) as usize,
            Duration::from_secs(args.duration),
            args.phones,
        )
    });
    let driving = driver::drive(
        target.clone(),
        plan,
        closed,
        args.connections as usize,
        Duration::from_secs(args.drain),
        !args.quiet,
    );
    // The chaos, if any, runs beside the load.
    let run_for = Duration::from_secs(args.duration);
    let chaos = async {
        let Some((p, _)) = procs.as_mut() else {
            return Ok::<_, anyhow::Error>(None);
        };
        let started = std::time::Instant::now();
        let mut notes = Vec::new();
        {
            let p = &*p;
            let conn_kills = async {
                match args.kill_connections_every_ms {
                    Some(ms) => p
                        .kill_connections(Duration::from_millis(ms.max(10)), started + run_for)
                        .await
                        .map(|n| Some(format!("{n} database connections terminated, every {ms} ms"))),
                    None => Ok(None),
                }
            };
            let restart = async {
                match args.pg_restart_at {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_secs(at)).await;
                        let mode: &'static str = if args.pg_restart_mode == "fast" {
                            "fast"
                        } else {
                            "immediate"
                        };
                        p.restart_database(mode, Duration::from_millis(args.pg_down_ms))
                            .await
                            .map(|()| {
                                Some(format!(
                                    "PostgreSQL stopped ({mode}) at {at} s for {} ms",
                                    args.pg_down_ms
                                ))
                            })
                    }
                    None => Ok(None),
                }
            };
            let (kills, restart) = tokio::join!(conn_kills, restart);
            notes.extend(kills?);
            notes.extend(restart?);
        }
        if let Some(at) = args.kill_at {
            tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
            let last = p.bases().len() - 1;
            p.kill_and_restart(last).await?;
            notes.push(format!("process {last} killed (SIGKILL) at {at} s and restarted"));
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    };
    let outcome = tokio::select! {
        pair = async { tokio::join!(driving, chaos) } => Some(pair),
        () = interrupt => None,
    };
    let Some((measured, chaos)) = outcome else {
        teardown(own, procs).await;
        anyhow::bail!("interrupted: the run was stopped and its own servers and database removed");
    };
    let chaos = chaos?;

    let db_url = own
        .as_ref()
        .map(|o| o.db_url.expose().to_string())
        .or_else(|| procs.as_ref().map(|(p, _)| p.db.url().expose().to_string()))
        .or(args.database_url.clone());
    let mut violations = Vec::new();
    let mut synchronous_commit = "unknown".to_string();
    let mut resent_after_crash = 0;
    let drain_from = std::time::Instant::now();
    let mut drained = None;
    if let Some(o) = &own {
        let _ = tokio::time::timeout(Duration::from_secs(args.drain), o.engine.wait_idle()).await;
        if tokio::time::timeout(Duration::from_secs(args.drain), o.engine.outbox().wait_drained())
            .await
            .is_ok()
        {
            drained = Some(drain_from.elapsed().as_secs_f64());
        }
    }
    if let Some((p, _)) = &procs {
        if p.drain(Duration::from_secs(args.drain)).await {
            drained = Some(drain_from.elapsed().as_secs_f64());
        }
    }
    let graph = own.as_ref().map(|o| &o.graph).or(procs.as_ref().map(|(p, _)| &p.graph));
    if let Some(url) = &db_url {
        violations = checker::check(url, &measured.acked_ids).await?;
        synchronous_commit = checker::setting(url, "synchronous_commit").await.unwrap_or_default();
        if let Some(graph) = graph {
            // Every send names its outbox row (its tracking data).
            let (twice, after_crash) = checker::repeated_sends(url, &graph.accepted_tracking()).await?;
            if !twice.is_empty() {
                violations.push(checker::Violation {
                    invariant: "no outbox row is sent twice",
                    count: twice.len() as i64,
                    examples: twice.into_iter().take(5).collect(),
                });
            }
            resent_after_crash = after_crash.len() as u64;
        }
    }
    let secs = measured.elapsed.as_secs_f64().max(0.001);
    let report = Report {
        scenario: args.scenario.name().to_string(),
        target: match (&args.target, &procs) {
            (Some(t), _) => t.clone(),
            (None, Some(_)) => format!(
                "{} serve processes, {} routing (embedded PostgreSQL)",
                target.bases.len(),
                if target.by_phone { "by-phone" } else { "random" }
            ),
            (None, None) => "own server (embedded PostgreSQL)".into(),
        },
        processes: target.bases.len(),
        chaos,
        resent_after_crash,
        mode: if args.max { "closed-loop" } else { "open-loop" },
        rate: args.rate,
        connections: args.connections as usize,
        duration_s: args.duration as f64,
        phones: args.phones,
        sent: measured.sent,
        acked: measured.acked,
        errors: measured.errors,
        duplicates_sent: measured.duplicates_sent,
        throughput_msgs_per_s: measured.applied as f64 / secs,
        applied: measured.applied,
        event_reconnects: measured.event_reconnects,
        ack_latency_ms: Percentiles::from_us(&measured.ack_us),
        e2e_latency_ms: Percentiles::from_us(&measured.e2e_us),
        conflicts: metric_sum(&target.bases, "switchboard_version_conflicts_total").await,
        retries: metric_sum(&target.bases, "switchboard_retries_total").await,
        outbound_requests: graph.map(|g| g.request_count() as u64),
        outbox_drained_after_s: drained,
        send_latency_ms: args.send_latency_ms,
        invariants_checked: db_url.is_some(),
        invariant_violations: violations,
        error_samples: measured.error_samples,
        timeline: measured.timeline.iter().map(TimelinePoint::from_second).collect(),
        synchronous_commit,
    };
    teardown(own, procs).await;
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::write(path.with_extension("svg"), report.svg())?;
    }
    Ok(report)
}
