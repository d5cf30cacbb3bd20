//! The faults injected beside the load (`--kill-connections-every-ms`,
//! `--pg-restart-at`, `--kill-at`; and those that close nothing:
//! `--db-delay-ms`, `--db-stall-at`, `--db-black-hole-at`, `--send-stall-at`), on the harness's
//! own processes: the checker then shows whether every invariant survived
//! them.

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
    let (kills, restart, paths) = tokio::join!(
        kill_connections(args, &*p, started),
        restart_database(args, &*p),
        silent_faults(args, &*p, started)
    );
    notes.extend(kills?);
    notes.extend(restart?);
    notes.extend(paths);
    if let Some(at) = args.kill_at {
        notes.push(kill_last_process(p, at, started).await?);
    }
    if let Some(at) = args.rolling_restart_at {
        notes.push(rolling_restart(p, at, args.restart_bin.as_deref(), started).await?);
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

/// The faults that close nothing: a slow path to the database (the whole
/// run), a stalled one, a stalled send API.
async fn silent_faults(args: &LoadArgs, p: &Processes, started: Instant) -> Vec<String> {
    let mut notes = Vec::new();
    if let (Some(delay), Some(proxy)) = (args.db_delay_ms, &p.proxy) {
        proxy.slow(delay.min(), delay.max());
        notes.push(format!("every packet to and from the database held {delay} ms"));
    }
    let db_stall = async {
        let (Some(at), Some(proxy)) = (args.db_stall_at, &p.proxy) else {
            return None;
        };
        tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
        proxy.stall();
        tokio::time::sleep(Duration::from_millis(args.db_stall_ms)).await;
        proxy.heal();
        Some(format!(
            "the database path stalled (nothing forwarded, nothing closed) at {at} s for {} ms",
            args.db_stall_ms
        ))
    };
    let db_black_hole = async {
        let (Some(at), Some(proxy), Some(ns)) = (args.db_black_hole_at, &p.proxy, &p.netns) else {
            return None;
        };
        tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
        if let Err(e) = ns.black_hole(proxy.port) {
            return Some(format!("the database path could not be black-holed: {e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(args.db_black_hole_ms)).await;
        if let Err(e) = ns.heal() {
            return Some(format!("the black-holed database path could not be healed: {e:#}"));
        }
        Some(format!(
            "the database path black-holed (every packet dropped, nothing closed) at {at} s for {} ms",
            args.db_black_hole_ms
        ))
    };
    let send_stall = async {
        let at = args.send_stall_at?;
        tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
        p.graph.hold(crate::load::fake_graph::ALL);
        tokio::time::sleep(Duration::from_millis(args.send_stall_ms)).await;
        p.graph.release(crate::load::fake_graph::ALL);
        Some(format!(
            "the send API answered nothing at {at} s for {} ms",
            args.send_stall_ms
        ))
    };
    let (db, hole, send) = tokio::join!(db_stall, db_black_hole, send_stall);
    notes.extend(db);
    notes.extend(hole);
    notes.extend(send);
    notes
}

/// Restarts every process in turn with SIGTERM, `at` seconds in.
async fn rolling_restart(
    p: &mut Processes,
    at: u64,
    bin: Option<&std::path::Path>,
    started: Instant,
) -> anyhow::Result<String> {
    tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
    let mut away = Vec::new();
    for i in 0..p.bases().len() {
        let took = p.terminate_and_restart(i, bin).await?;
        away.push(format!("{:.1}", took.as_secs_f64()));
    }
    let release = match bin {
        Some(b) => format!(" onto {}", b.display()),
        None => String::new(),
    };
    Ok(format!(
        "{} processes restarted in turn with SIGTERM{release} from {at} s (each away {} s)",
        away.len(),
        away.join(" / ")
    ))
}

/// Kills the last process with SIGKILL `at` seconds in, and starts it again.
async fn kill_last_process(p: &mut Processes, at: u64, started: Instant) -> anyhow::Result<String> {
    tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
    let last = p.bases().len() - 1;
    p.kill_and_restart(last).await?;
    Ok(format!("process {last} killed (SIGKILL) at {at} s and restarted"))
}
