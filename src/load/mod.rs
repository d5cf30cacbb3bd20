//! The load-test harness behind `switchboard load`: open-loop scenarios
//! against a server (its own, or `--target`), latency in HdrHistogram
//! measured from each request's intended send time (coordinated omission
//! corrected), and an invariant checker run against the database afterwards.
//!
//! A run: [`LoadArgs`] (`args`) → the servers started (`servers`: the own
//! server of `own_server`, the processes of [`procs`], or `--target`; each
//! folder guarded by `run_dir`) → the [`scenario`]'s plan (the `mixed`
//! one's kinds and bad messages: `mixed`), over the conversations of
//! [`population`] (business numbers × contacts, some username-only) → the
//! [`driver`]'s schedule, sending through `client` the deliveries of
//! [`payloads`], timing through `events` into `measure`, with `chaos`
//! beside → the `verdict` (drain, [`checker`], [`report`]) → the servers
//! stopped.

mod args;
mod chaos;
pub mod checker;
mod client;
pub mod cost;
pub mod driver;
mod events;
pub mod fake_graph;
pub mod limits;
mod listeners;
mod measure;
mod mixed;
pub mod netns;
mod own_server;
pub mod payloads;
pub mod plan;
pub mod population;
pub mod procs;
pub mod proxy;
pub mod report;
mod run_dir;
pub mod scenario;
pub mod send_order;
mod servers;
pub mod soak;
pub mod timer_figures;
mod verdict;

use std::future::Future;

use anyhow::Context;

pub use self::args::{LoadArgs, Route};
use self::report::Report;
use self::servers::Servers;

/// The example flow, built in, so `load` runs from any folder.
pub const EXAMPLE_FLOW: &str = include_str!("../../flows/reporte.toml");

/// Runs a scenario and returns its report (also written to `--report`).
pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    run_until(args, std::future::pending()).await
}

/// [`run`], cut short when `interrupt` completes (Ctrl-C): the sending
/// stops, the harness's own server, processes and database are stopped and
/// their folder removed, and the run ends with an error (no report: its
/// figures would describe a run that did not happen).
pub async fn run_until(args: LoadArgs, interrupt: impl Future<Output = ()>) -> anyhow::Result<Report> {
    let mut servers = Servers::start(&args).await?;
    let outcome = load_and_check(&args, &mut servers, interrupt).await;
    // On every way out: a report, an interruption, a fault or a check that failed.
    servers.stop().await;
    let report = outcome?;
    write_report(&args, &report)?;
    Ok(report)
}

/// The run between start and stop: the load, with any fault beside it,
/// until it ends or `interrupt` completes; then the verdict.
async fn load_and_check(
    args: &LoadArgs,
    servers: &mut Servers,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    let target = servers.target(args);
    let limits = measure_limits(args, servers).await?;
    let before = cost::Sample::take(&servers.cost_sources(), servers.database_url(args).as_deref()).await;
    let wave_on = servers.database_url(args).filter(|_| args.timer_wave > 0);
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampling = soak_samples(
        args,
        (servers.cost_sources(), servers.database_url(args)),
        &target,
        stop_sampling.clone(),
    );
    let sending = async {
        let driving = driver::drive(
            target.clone(),
            args.plan(),
            args.closed_loop(),
            args.connections as usize,
            args.drain_limit(),
            !args.quiet,
        );
        let wave = async {
            let Some(url) = &wave_on else { return Ok(()) };
            let initial = crate::flow::Flow::parse(&args.scenario.flow(), "flow.toml")?.initial;
            let note = timer_figures::wave(url, args.timer_wave, args.run_for() / 2, &initial).await?;
            if !args.quiet {
                eprintln!("{note}");
            }
            anyhow::Ok(())
        };
        // The fault, if any, and the timer wave run beside the load.
        let (measured, chaos, wave) = tokio::join!(driving, chaos::run(args, servers.processes_mut()), wave);
        (measured, chaos.and_then(|c| wave.map(|()| c)))
    };
    let running = async {
        let outcome = tokio::select! {
            pair = sending => Some(pair),
            () = interrupt => None,
        };
        stop_sampling.cancel();
        outcome
    };
    let (outcome, soak) = tokio::join!(running, sampling);
    let Some((measured, chaos)) = outcome else {
        anyhow::bail!("interrupted: the run was stopped and its own servers and database removed");
    };
    let mut report = verdict::report(args, servers, &target, measured, chaos?, before).await?;
    report.limits = limits.map(|l| l.against(&report));
    report.soak = soak;
    Ok(report)
}

/// With `--sample-every`: samples the servers (`from`: their processes
/// and database) until `stop` (see [`soak`]).
async fn soak_samples(
    args: &LoadArgs,
    from: (cost::Sources, Option<String>),
    target: &client::Target,
    stop: tokio_util::sync::CancellationToken,
) -> Option<soak::Soak> {
    let every = std::time::Duration::from_secs_f64(args.sample_every?);
    let (sources, url) = from;
    Some(soak::sample(sources, url, target.bases.clone(), every, stop, !args.quiet).await)
}

/// With `--limits`: the database's own limits for the job, on the run's
/// cluster, before the load (and before the cost's first sample).
async fn measure_limits(args: &LoadArgs, servers: &Servers) -> anyhow::Result<Option<limits::Limits>> {
    let Some(seconds) = args.limits else { return Ok(None) };
    let url = servers
        .database_url(args)
        .context("--limits measures the run's database: the harness's own, or --database-url with --target")?;
    let rate = args.closed_loop().is_none().then_some(args.rate);
    if !args.quiet {
        eprintln!("measuring the database's limits ({seconds} s each)…");
    }
    limits::measure(&url, seconds, args.phones, rate).await.map(Some)
}

/// Writes the report as JSON to `--report`, and its plot (SVG) beside it.
fn write_report(args: &LoadArgs, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::write(path.with_extension("svg"), report.svg())?;
    }
    Ok(())
}
