//! The faults injected beside the load (`--kill-connections-every-ms`,
//! `--pg-restart-at`, `--kill-at`), on the harness's own processes: the
//! checker then shows whether every invariant survived them.

use std::time::{Duration, Instant};

use super::args::LoadArgs;
use super::procs::Processes;

/// The shortest period between connection kills: each round opens a
/// connection of its own to kill the others.
const MIN_KILL_EVERY: Duration = Duration::from_millis(10);

/// Injects the faults asked for while the load runs, and says what was
/// done for the report (`None`: nothing, or no processes to do it on).
pub(super) async fn run(args: &LoadArgs, procs: Option<&mut Processes>) -> anyhow::Result<Option<String>> {
    let Some(p) = procs else {
        return Ok(None);
    };
    let started = Instant::now();
    let mut notes = Vec::new();
    let (kills, restart) = tokio::join!(kill_connections(args, &*p, started), restart_database(args, &*p));
    notes.extend(kills?);
    notes.extend(restart?);
    if let Some(at) = args.kill_at {
        notes.push(kill_last_process(p, at, started).await?);
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// Terminates about half of the database connections every
/// `--kill-connections-every-ms`, until the sending ends.
async fn kill_connections(args: &LoadArgs, p: &Processes, started: Instant) -> anyhow::Result<Option<String>> {
    let Some(ms) = args.kill_connections_every_ms else {
        return Ok(None);
    };
    let n = p
        .kill_connections(Duration::from_millis(ms).max(MIN_KILL_EVERY), started + args.run_for())
        .await?;
    Ok(Some(format!("{n} database connections terminated, every {ms} ms")))
}

/// Stops the database `--pg-restart-at` seconds in, for `--pg-down-ms`,
/// and starts it again.
async fn restart_database(args: &LoadArgs, p: &Processes) -> anyhow::Result<Option<String>> {
    let Some(at) = args.pg_restart_at else {
        return Ok(None);
    };
    tokio::time::sleep(Duration::from_secs(at)).await;
    let mode: &'static str = if args.pg_restart_mode == "fast" {
        "fast"
    } else {
        "immediate"
    };
    p.restart_database(mode, Duration::from_millis(args.pg_down_ms)).await?;
    Ok(Some(format!(
        "PostgreSQL stopped ({mode}) at {at} s for {} ms",
        args.pg_down_ms
    )))
}

/// Kills the last process with SIGKILL `at` seconds in, and starts it again.
async fn kill_last_process(p: &mut Processes, at: u64, started: Instant) -> anyhow::Result<String> {
    tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
    let last = p.bases().len() - 1;
    p.kill_and_restart(last).await?;
    Ok(format!("process {last} killed (SIGKILL) at {at} s and restarted"))
}
