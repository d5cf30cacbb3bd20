//! Short smoke runs of every load scenario (seconds, not minutes), and the
//! invariant checker catching planted violations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use clap::Parser;
use diesel_async::RunQueryDsl;
use support::{engine_settings, example_flow, say, TestDb};
use switchboard::load::{self, checker, LoadArgs};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
}

fn args(line: &str) -> LoadArgs {
    Args::parse_from(std::iter::once("load").chain(line.split_whitespace())).load
}

async fn smoke(scenario: &str) {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let a = args(&format!(
        "--scenario {scenario} --rate 40 --duration 1 --phones 10 --drain 30 --quiet --report {}",
        report_path.display()
    ));
    let report = load::run(a).await.unwrap();
    assert!(report.invariants_checked);
    assert!(
        report.invariant_violations.is_empty(),
        "{:?}",
        report.invariant_violations
    );
    assert_eq!(report.errors, 0, "{:?}", report.error_samples);
    assert_eq!(report.acked, report.sent);
    assert!(report.outbox_drained_after_s.is_some(), "replies left unsent");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    for field in [
        "scenario",
        "sent",
        "acked",
        "errors",
        "throughput_msgs_per_s",
        "ack_latency_ms",
        "e2e_latency_ms",
        "duplicates_sent",
        "conflicts",
        "retries",
        "invariant_violations",
    ] {
        assert!(json.get(field).is_some(), "report lacks {field}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["ack_latency_ms"].get(p).is_some() && json["e2e_latency_ms"].get(p).is_some());
    }
    // The timeline splits the run by second: every request in one, and the
    // latencies of the seconds that had them.
    assert_eq!(report.timeline.iter().map(|t| t.sent).sum::<u64>(), report.sent);
    assert_eq!(report.timeline.iter().map(|t| t.acked).sum::<u64>(), report.acked);
    assert!(report.timeline.iter().any(|t| t.ack_p99_ms > 0.0));
    if report.e2e_latency_ms.count > 0 {
        assert!(report.timeline.iter().any(|t| t.e2e_p99_ms > 0.0));
    }
    assert!(json["timeline"][0].get("e2e_p99_ms").is_some());
    let svg = std::fs::read_to_string(report_path.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 2);
}

#[actix_web::test]
async fn steady_smoke_run_reports_and_holds_every_invariant() {
    smoke("steady").await;
}

#[actix_web::test]
async fn a_slow_send_api_still_gets_every_reply_and_the_report_says_when() {
    let report = load::run(args(
        "--scenario steady --rate 40 --duration 1 --phones 10 --drain 30 --quiet --send-latency-ms 100",
    ))
    .await
    .unwrap();
    assert!(
        report.invariant_violations.is_empty(),
        "{:?}",
        report.invariant_violations
    );
    assert_eq!((report.errors, report.send_latency_ms), (0, 100));
    // Every message of this flow's first turn gets a reply.
    assert!(report.outbound_requests.unwrap() >= report.applied, "{report:?}");
    assert!(report.outbox_drained_after_s.is_some(), "replies left unsent");
    assert!(report.table().contains("answering in 100 ms"));
}

#[actix_web::test]
async fn burst_smoke_run_reports_and_holds_every_invariant() {
    smoke("burst").await;
}

#[actix_web::test]
async fn duplicates_smoke_run_reports_and_holds_every_invariant() {
    smoke("duplicates").await;
}

#[actix_web::test]
async fn hot_smoke_run_reports_and_holds_every_invariant() {
    smoke("hot").await;
}

#[actix_web::test]
async fn ai_slow_smoke_run_reports_and_holds_every_invariant() {
    smoke("ai-slow").await;
}

#[actix_web::test]
async fn mixed_smoke_run_reports_and_holds_every_invariant() {
    smoke("mixed").await;
}

#[tokio::test]
async fn the_checker_catches_a_version_gap_a_duplicated_reply_and_an_unprocessed_ack() {
    let db = TestDb::migrated().await;
    let engine = switchboard::Engine::builder(engine_settings(&db))
        .database(db.database())
        .flow(example_flow())
        .start()
        .await
        .unwrap();
    let phone = "5215512341234";
    for (i, t) in ["hola", "refrigerador"].iter().enumerate() {
        say(&engine, phone, &format!("wamid.ck.{i}"), t).await;
    }
    engine.wait_idle().await;
    engine.shutdown().await.unwrap();
    let acked = vec!["wamid.ck.0".to_string(), "wamid.ck.1".to_string()];
    let url = db.url.expose();
    assert!(
        checker::check(url, &acked).await.unwrap().is_empty(),
        "a clean run holds"
    );

    let mut admin = db.admin().await;
    let mut plant = async |sql: &str| {
        diesel::sql_query(sql).execute(&mut admin).await.unwrap();
    };
    let found = |v: Vec<checker::Violation>, name: &str| v.iter().any(|x| x.invariant == name);

    plant("UPDATE sessions SET version = version + 1").await;
    let v = checker::check(url, &acked).await.unwrap();
    assert!(found(v, "versions are contiguous and count the applied steps"));
    plant("UPDATE sessions SET version = version - 1").await;

    plant(
        "INSERT INTO messages (phone, direction, origin, body, inbox_id, status, outbox_key) \
         SELECT phone, direction, origin, body, inbox_id, status, outbox_key FROM messages \
         WHERE origin = 'bot' LIMIT 1",
    )
    .await;
    let v = checker::check(url, &acked).await.unwrap();
    assert!(found(v, "no inbound message has its replies twice"));

    let mut more = acked.clone();
    more.push("wamid.never-stored".into());
    let v = checker::check(url, &more).await.unwrap();
    assert!(found(v, "every acked message is registered"));

    plant("UPDATE inbox SET processed_at = NULL WHERE provider_message_id = 'wamid.ck.1'").await;
    let v = checker::check(url, &acked).await.unwrap();
    assert!(found(v, "every acked message is processed"));
}

#[actix_web::test]
async fn requests_beyond_the_connection_bound_wait_their_turn_and_none_fails() {
    // The burst sends 100 messages of one phone at once; over one
    // connection they go one after another, and every one is acked.
    let a = args("--scenario burst --connections 1 --drain 30 --quiet");
    let report = load::run(a).await.unwrap();
    assert_eq!(report.connections, 1);
    assert_eq!(report.errors, 0, "{:?}", report.error_samples);
    assert_eq!((report.sent, report.acked), (100, 100));
    assert!(report.invariants_checked && report.invariant_violations.is_empty());
    assert!(report.table().contains("open-loop, 1 connection)"));
}

/// The flag's value is refused with an error naming the flag.
fn refused(flag: &str, value: &str) {
    let e = Args::try_parse_from(["load", "--scenario", "steady", flag, value])
        .err()
        .expect("refused");
    assert!(e.to_string().contains(flag), "{e}");
}

#[test]
fn a_connection_bound_of_zero_is_refused() {
    refused("--connections", "0");
}

#[test]
fn a_send_latency_past_the_send_timeout_is_refused() {
    refused("--send-latency-ms", "10000");
    assert!(Args::try_parse_from(["load", "--scenario", "steady", "--send-latency-ms", "9999"]).is_ok());
}

/// Ctrl-C during a run: the harness stops sending, stops its own server and
/// database, removes their folder and exits with an error.
#[test]
fn ctrl_c_ends_the_run_and_leaves_no_server_or_database_behind() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let tmp = support::scratch_dir("load-interrupt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "load",
            "--scenario",
            "steady",
            "--rate",
            "20",
            "--duration",
            "600",
            "--phones",
            "5",
        ])
        .current_dir(&tmp)
        .env("TMPDIR", &tmp)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = support::stderr_lines(&mut child);
    // The progress line says the run is sending.
    support::read_until(&rx, Duration::from_secs(120), "progress line", |l| l.starts_with("t="));
    let run_dir = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("switchboard-load-")
        })
        .expect("the run's folder");
    let data_dir = run_dir.join("pg");
    // Should the harness fail to, the cluster is stopped when this test ends.
    support::spawn_watchdog(std::process::id(), &data_dir, &tmp);
    let pg_pid = support::postmaster_pid(&data_dir);
    assert!(support::alive(pg_pid));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let exit = child.wait().unwrap();
    assert!(!exit.success(), "an interrupted run is not a passing run");
    let output = support::rest_of(&rx, Duration::from_secs(30));
    assert!(output.iter().any(|l| l.contains("interrupted")), "{output:?}");
    assert!(!support::alive(pg_pid), "the harness's PostgreSQL outlived it");
    assert!(!run_dir.exists(), "the run's folder is left behind");
}
