//! After the sending: the servers drained, the invariants checked on the
//! database, and the report assembled from what was measured and found.

use std::time::Instant;

use super::args::LoadArgs;
use super::checker::{self, Expected, Violation};
use super::client::{metric_sum, Target};
use super::fake_graph::FakeGraph;
use super::measure::Measured;
use super::report::{Percentiles, Report, TimelinePoint};
use super::send_order;
use super::servers::Servers;

/// The provider id `--plant-violation` adds to the acked ones (in the
/// first contact's conversation on the home number): never sent, so the
/// checker finds it never registered.
const PLANTED_ID: &str = "wamid.planted-never-sent";

/// Repeated sends named in the report, for a first look.
const REPEAT_EXAMPLES: usize = 5;

/// What the checker found.
struct Checked {
    /// Whether a database was reachable to check.
    checked: bool,
    violations: Vec<Violation>,
    synchronous_commit: String,
    resent_after_crash: u64,
    timers: Option<super::timer_figures::Timers>,
}

/// What the servers said after the run.
struct Served {
    target: String,
    chaos: Option<String>,
    conflicts: u64,
    retries: u64,
    waits_behind_earlier: u64,
    quarantined: u64,
    outbound_requests: Option<u64>,
    drained_after_s: Option<f64>,
}

/// Waits for the servers to drain, checks the invariants and assembles
/// the report (the servers still up: their counters are read too).
pub(super) async fn report(
    args: &LoadArgs,
    servers: &Servers,
    target: &Target,
    mut measured: Measured,
    chaos: Option<String>,
    before: super::cost::Sample,
) -> anyhow::Result<Report> {
    if let Some(url) = servers.database_url(args).filter(|_| args.timer_wave > 0) {
        super::timer_figures::wait_wave(&url, args.drain_limit()).await?;
    }
    let drain_from = Instant::now();
    let drained_after_s = servers
        .drain(args.drain_limit())
        .await
        .then(|| drain_from.elapsed().as_secs_f64());
    // Before the checker's own statements.
    let cost = measure_cost(args, servers, target, &before, measured.applied).await;
    if args.plant_violation {
        let key = super::population::phone(0);
        measured.expected.acked.push((key, PLANTED_ID.to_string()));
    }
    let checked = match servers.database_url(args) {
        Some(url) => {
            let mut c = check(&url, &measured.expected, servers.graph(), args.send_rate).await?;
            c.timers = super::timer_figures::figures(&url, args.timer_wave > 0).await?;
            c
        }
        None => Checked {
            checked: false,
            violations: Vec::new(),
            synchronous_commit: "unknown".to_string(),
            resent_after_crash: 0,
            timers: None,
        },
    };
    let served = Served {
        target: servers.describe(args, target),
        chaos,
        conflicts: metric_sum(&target.bases, "switchboard_version_conflicts_total").await,
        retries: metric_sum(&target.bases, "switchboard_retries_total").await,
        waits_behind_earlier: metric_sum(&target.bases, "switchboard_waits_behind_earlier_total").await,
        quarantined: metric_sum(&target.bases, "switchboard_dead_letters_inbound_total").await,
        outbound_requests: servers.graph().map(|g| g.request_count() as u64),
        drained_after_s,
    };
    let mut report = assemble(args, target, measured, served, checked);
    report.cost = Some(cost);
    Ok(report)
}

/// The run's cost per applied message, from `before` to now.
async fn measure_cost(
    args: &LoadArgs,
    servers: &Servers,
    target: &Target,
    before: &super::cost::Sample,
    applied: u64,
) -> super::cost::Cost {
    let sources = servers.cost_sources();
    let after = super::cost::Sample::take(&sources, servers.database_url(args).as_deref()).await;
    let rss: Option<f64> = match (sources.in_process, sources.server_pids.is_empty()) {
        (true, _) => super::cost::rss_bytes(std::process::id() as i32),
        (false, false) => Some(
            sources
                .server_pids
                .iter()
                .filter_map(|p| super::cost::rss_bytes(*p))
                .sum(),
        ),
        (false, true) => None,
    };
    let live = metric_sum(&target.bases, "switchboard_live_sessions").await as f64;
    super::cost::between(before, &after, applied, rss, Some(live), sources.in_process)
}

/// Runs the checker on `url`: the invariants, the server's
/// `synchronous_commit`, and, when the fake send API saw the sends, what
/// it saw: no row accepted twice (but after a crash, counted apart), each
/// recipient's replies in commit order and one at a time, each number
/// within its rate.
async fn check(url: &str, expected: &Expected, graph: Option<&FakeGraph>, send_rate: u32) -> anyhow::Result<Checked> {
    let mut violations = checker::check(url, expected).await?;
    let synchronous_commit = checker::setting(url, "synchronous_commit").await.unwrap_or_default();
    let mut resent_after_crash = 0;
    if let Some(graph) = graph {
        // Every send names its outbox row (its tracking data).
        let (twice, after_crash) = checker::repeated_sends(url, &graph.accepted_tracking()).await?;
        violations.extend(violation("no outbox row is sent twice", twice));
        resent_after_crash = after_crash.len() as u64;
        let arrivals = graph.arrivals();
        let order = send_order::commit_order(url).await?;
        let home = super::population::number_id(0);
        let (disordered, overlapped) = send_order::order_violations(&arrivals, &order, |number, to| {
            if number == home {
                to.to_string()
            } else {
                format!("{number}:{to}")
            }
        });
        violations.extend(violation("replies of one recipient arrive in commit order", disordered));
        violations.extend(violation("replies of one recipient never overlap", overlapped));
        let over = send_order::over_rate(&arrivals, |_| send_rate);
        violations.extend(violation("sends per number per second within its rate", over));
    }
    Ok(Checked {
        checked: true,
        violations,
        synchronous_commit,
        resent_after_crash,
        timers: None,
    })
}

/// A violation of `invariant` by `offenders`, if any.
fn violation(invariant: &'static str, offenders: Vec<String>) -> Option<Violation> {
    (!offenders.is_empty()).then(|| Violation {
        invariant,
        count: offenders.len() as i64,
        examples: offenders.into_iter().take(REPEAT_EXAMPLES).collect(),
    })
}

/// The report's fields, from the flags, the measures and the findings.
fn assemble(args: &LoadArgs, target: &Target, m: Measured, served: Served, checked: Checked) -> Report {
    let secs = m.elapsed.as_secs_f64().max(0.001);
    Report {
        scenario: args.scenario.name().to_string(),
        target: served.target,
        processes: target.bases.len(),
        chaos: served.chaos,
        resent_after_crash: checked.resent_after_crash,
        mode: if args.max { "closed-loop" } else { "open-loop" },
        rate: args.rate,
        connections: args.connections as usize,
        duration_s: args.duration as f64,
        phones: args.phones,
        numbers: args.numbers as usize,
        username_share: args.username_share,
        sent: m.sent,
        acked: m.acked,
        errors: m.errors,
        duplicates_sent: m.duplicates_sent,
        throughput_msgs_per_s: m.applied as f64 / secs,
        applied: m.applied,
        event_reconnects: m.event_reconnects,
        ack_latency_ms: Percentiles::from_us(&m.ack_us),
        e2e_latency_ms: Percentiles::from_us(&m.e2e_us),
        conflicts: served.conflicts,
        retries: served.retries,
        waits_behind_earlier: served.waits_behind_earlier,
        quarantined: served.quarantined,
        outbound_requests: served.outbound_requests,
        outbox_drained_after_s: served.drained_after_s,
        send_latency_ms: args.send_latency_ms,
        invariants_checked: checked.checked,
        invariant_violations: checked.violations,
        error_samples: m.error_samples,
        timeline: m.timeline.iter().map(TimelinePoint::from_second).collect(),
        synchronous_commit: checked.synchronous_commit,
        timers: checked.timers,
        cost: None,
        limits: None,
        soak: None,
    }
}
