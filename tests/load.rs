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
    smoke_with(scenario, "").await;
}

/// Every invariant checked and held, every request acknowledged, every reply sent.
fn assert_clean(report: &load::report::Report) {
    assert!(report.invariants_checked);
    assert!(
        report.invariant_violations.is_empty(),
        "{:?}",
        report.invariant_violations
    );
    assert_eq!(report.errors, 0, "{:?}", report.error_samples);
    assert_eq!(report.acked, report.sent);
    assert!(report.outbox_drained_after_s.is_some(), "replies left unsent");
}

/// A smoke run of `scenario` with `more` flags; returns the JSON report.
async fn smoke_with(scenario: &str, more: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let a = args(&format!(
        "--scenario {scenario} --rate 40 --duration 1 --phones 10 --drain 30 --quiet {more} --report {}",
        report_path.display()
    ));
    let report = load::run(a).await.unwrap();
    assert_clean(&report);
    assert_eq!(report.quarantined, 0, "steps kept failing");
    let cost = report.cost.as_ref().expect("a cost section");
    assert!(cost.server_in_generator && cost.generator_cpu_us > 0.0, "{cost:?}");
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
    json
}

#[actix_web::test]
async fn steady_smoke_run_reports_and_holds_every_invariant() {
    smoke("steady").await;
}

#[actix_web::test]
async fn a_slow_send_api_answering_in_any_order_gets_every_reply_in_order_within_the_rate() {
    let report = load::run(args(
        "--scenario steady --rate 40 --duration 1 --phones 10 --drain 30 --quiet --send-latency-ms 0-150 --send-rate 30",
    ))
    .await
    .unwrap();
    assert!(
        report.invariant_violations.is_empty(),
        "{:?}",
        report.invariant_violations
    );
    assert_eq!(report.errors, 0);
    assert_eq!((report.send_latency_ms.min, report.send_latency_ms.max), (0, 150));
    // Every message of this flow's first turn gets a reply.
    assert!(report.outbound_requests.unwrap() >= report.applied, "{report:?}");
    assert!(report.outbox_drained_after_s.is_some(), "replies left unsent");
    let cost = report.cost.as_ref().expect("a cost section");
    assert!(cost.server_in_generator && cost.generator_cpu_us > 0.0, "{cost:?}");
    assert!(report.table().contains("answering in 0-150 ms"), "{}", report.table());
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

/// Two business numbers, half the contacts username-only, every kind of
/// message and a bad one among good ones: the invariants hold per
/// conversation, and the bad message is dead-lettered, not lost with the rest.
#[actix_web::test]
async fn mixed_over_two_numbers_and_username_only_contacts_holds_every_invariant() {
    let json = smoke_with("mixed", "--numbers 2 --username-share 0.5").await;
    assert_eq!(
        (json["numbers"].as_u64(), json["username_share"].as_f64()),
        (Some(2), Some(0.5))
    );
}

#[actix_web::test]
async fn the_cost_of_a_message_is_reported_by_process_the_generator_apart_from_the_server() {
    let a = args(&format!(
        "--scenario steady --processes 1 --serve-bin {} --rate 40 --duration 2 --phones 10 --drain 30 --quiet",
        env!("CARGO_BIN_EXE_switchboard")
    ));
    let report = load::run(a).await.unwrap();
    assert!(
        report.invariant_violations.is_empty(),
        "{:?}",
        report.invariant_violations
    );
    let c = report.cost.clone().expect("a cost section");
    assert!(!c.server_in_generator, "the server ran in a process of its own");
    let each = [
        ("server CPU", c.server_cpu_us),
        ("generator CPU", Some(c.generator_cpu_us)),
        ("PostgreSQL CPU", c.postgres_cpu_us),
        ("WAL bytes", c.wal_bytes),
        ("statements", c.statements),
        ("commits", c.commits),
        ("WAL flushes", c.fsyncs),
        ("resident bytes per conversation", c.rss_per_live_conversation),
    ];
    for (what, v) in each {
        assert!(v.is_some_and(|v| v > 0.0), "{what}: {v:?} ({c:?})");
    }
    // Plausible: a message writes rows (some hundreds of WAL bytes at
    // least) and costs the server more than a microsecond, less than a second.
    assert!(c.wal_bytes.unwrap() > 100.0, "{c:?}");
    assert!((1.0..1e6).contains(&c.server_cpu_us.unwrap()), "{c:?}");
    assert!(report.table().contains("cost/message server"), "{}", report.table());
}

/// Three `serve` processes behind the harness's balancer, each stopped
/// with SIGTERM in turn under load (drains, stops, starts, is ready again):
/// no request refused (a refused connection is retried on the next
/// process), every invariant holds.
#[actix_web::test]
async fn three_processes_restarted_in_turn_under_load_refuse_nothing_and_hold_every_invariant() {
    // Time for three restarts of debug builds while other tests run.
    let (at, duration) = (2.0, 30.0);
    let a = args(&format!(
        "--scenario steady --processes 3 --serve-bin {} --rate 40 --duration {duration} --phones 60 \
         --drain 60 --rolling-restart-at {at} --quiet",
        env!("CARGO_BIN_EXE_switchboard")
    ));
    let report = load::run(a).await.unwrap();
    assert_clean(&report);
    let chaos = report.chaos.clone().expect("a chaos note");
    assert!(
        chaos.starts_with("3 processes restarted in turn with SIGTERM"),
        "{chaos}"
    );
    // Every restart fell within the load, not after it.
    let away: f64 = chaos
        .rsplit_once("(each away ")
        .and_then(|(_, s)| s.strip_suffix(" s)"))
        .expect(&chaos)
        .split(" / ")
        .map(|s| s.parse::<f64>().unwrap())
        .sum();
    assert!(
        at + away < duration,
        "the restarts ended {away} s after {at} s: {chaos}"
    );
}

#[actix_web::test]
async fn the_limits_mode_measures_the_databases_ceilings_and_sets_the_run_against_them() {
    let a = args("--scenario steady --rate 40 --duration 2 --phones 10 --drain 30 --limits 1 --quiet");
    let report = load::run(a).await.unwrap();
    assert!(
        report.invariant_violations.is_empty(),
        "{:?}",
        report.invariant_violations
    );
    let l = report.limits.clone().expect("a limits section");
    assert!(l.one_per_commit_msgs_per_s > 0.0 && l.batched_msgs_per_s > 0.0, "{l:?}");
    // Open loop at the run's rate for a second: about 40 bare commits, each timed.
    let bare = l.bare_commit_ms.expect("bare commits at the run's rate");
    assert_eq!((l.bare_commit_rate, bare.count), (Some(40.0), 40), "{l:?}");
    assert!(bare.p50 > 0.0 && bare.p99 >= bare.p50, "{l:?}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(
        l.throughput_vs_one_per_commit * l.one_per_commit_msgs_per_s,
        report.throughput_msgs_per_s
    ));
    assert!(close(
        l.throughput_vs_batched * l.batched_msgs_per_s,
        report.throughput_msgs_per_s
    ));
    assert!(close(
        l.ack_p99_vs_bare_commit_p99.unwrap() * bare.p99,
        report.ack_latency_ms.p99
    ));
    assert!(report.table().contains("1 message/commit"), "{}", report.table());
}

#[actix_web::test]
async fn the_limits_write_a_messages_rows_and_leave_no_table_behind() {
    let db = TestDb::migrated().await;
    let l = load::limits::measure(db.url.expose(), 0.3, 20, None).await.unwrap();
    assert!(l.one_per_commit_msgs_per_s > 0.0 && l.batched_msgs_per_s > 0.0, "{l:?}");
    assert_eq!(
        (l.bare_commit_rate, l.bare_commit_ms),
        (None, None),
        "no rate, no bare commits"
    );
    #[derive(diesel::QueryableByName)]
    struct Left {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let left: Left =
        diesel::sql_query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name LIKE 'limits%'")
            .get_result(&mut db.admin().await)
            .await
            .unwrap();
    assert_eq!(left.n, 0, "the scratch tables are dropped");
}

/// A conversation's database that the checker found clean, and what was
/// acked: violations are planted in it.
struct Clean {
    db: TestDb,
    acked: checker::Expected,
    admin: diesel_async::AsyncPgConnection,
}

impl Clean {
    /// `phone` said `lines` (each applied before the next).
    async fn conversation(phone: &str, lines: &[&str]) -> Self {
        let db = TestDb::migrated().await;
        let engine = switchboard::Engine::builder(engine_settings(&db))
            .database(db.database())
            .flow(example_flow())
            .start()
            .await
            .unwrap();
        let ids: Vec<String> = (0..lines.len()).map(|i| format!("wamid.ck.{i}")).collect();
        for (id, t) in ids.iter().zip(lines) {
            say(&engine, phone, id, t).await;
            engine.wait_idle().await;
        }
        engine.shutdown().await.unwrap();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let acked = checker::Expected::acked_in(phone, &ids);
        assert!(
            checker::check(db.url.expose(), &acked).await.unwrap().is_empty(),
            "a clean run holds"
        );
        let admin = db.admin().await;
        Self { db, acked, admin }
    }

    async fn plant(&mut self, sql: &str) {
        diesel::sql_query(sql).execute(&mut self.admin).await.unwrap();
    }

    /// Whether the checker finds `invariant` broken, `expected` acked.
    async fn breaks_with(&self, expected: &checker::Expected, invariant: &str) -> bool {
        let v = checker::check(self.db.url.expose(), expected).await.unwrap();
        v.iter().any(|x| x.invariant == invariant)
    }

    /// Whether the checker finds `invariant` broken, what was said acked.
    async fn breaks(&self, invariant: &str) -> bool {
        self.breaks_with(&self.acked, invariant).await
    }
}

#[actix_web::test]
async fn timers_smoke_run_fires_and_cancels_reminders_and_holds_every_invariant() {
    // A conversation's messages 1.5 s apart on average against a 2 s
    // reminder: some answer first, some are reminded; and a wave of 50
    // timers due in one second.
    let a = args("--scenario timers --rate 20 --duration 4 --phones 30 --drain 30 --quiet --timer-wave 50");
    let report = load::run(a).await.unwrap();
    assert_clean(&report);
    assert_eq!(report.quarantined, 0, "steps kept failing");
    let timers = report.timers.expect("the run set timers");
    assert!(timers.all.fired > 0 && timers.all.cancelled > 0, "{timers:?}");
    let wave = timers.wave.expect("a wave was asked for");
    assert_eq!((wave.set, wave.fired), (50, 50), "{wave:?}");
}

#[tokio::test]
async fn the_checker_catches_a_timer_left_due_fired_after_its_cancelling_message_or_without_its_reply() {
    // Into the SAP number's state (its 10-minute reminder set), then out.
    let mut c = Clean::conversation("5215512341299", &["refrigerador", "1234567890"]).await;
    c.plant("UPDATE timers SET due_at = now() - interval '1 hour' WHERE status = 'pending'")
        .await;
    assert!(c.breaks("every due timer fired or was cancelled").await);
    c.plant("UPDATE timers SET due_at = now() + interval '1 hour' WHERE status = 'pending'")
        .await;

    // A reminder set before the two messages "fires" after them.
    c.plant(
        "INSERT INTO timers (phone, kind, due_at, action, status, set_version, fired_version, fired_at, outcome) \
         VALUES ('5215512341299', 'after', now(), '{}', 'fired', 0, 3, now(), 'silent')",
    )
    .await;
    c.plant("UPDATE sessions SET version = version + 1").await;
    assert!(c.breaks("no timer fired after a message that cancelled it").await);
    assert!(!c.breaks("versions are contiguous and count the applied steps").await);

    c.plant("UPDATE timers SET outcome = 'replied' WHERE status = 'fired'")
        .await;
    assert!(
        c.breaks("a timer's messages are queued once, only if it fired and had something to send")
            .await
    );
}

#[tokio::test]
async fn the_checker_catches_a_version_gap_a_duplicated_reply_and_an_unprocessed_ack() {
    let phone = "5215512341234";
    let mut c = Clean::conversation(phone, &["hola", "refrigerador"]).await;
    c.plant("UPDATE sessions SET version = version + 1").await;
    assert!(c.breaks("versions are contiguous and count the applied steps").await);
    c.plant("UPDATE sessions SET version = version - 1").await;

    c.plant(
        "INSERT INTO messages (phone, direction, origin, body, inbox_id, status, outbox_key) \
         SELECT phone, direction, origin, body, inbox_id, status, outbox_key FROM messages \
         WHERE origin = 'bot' LIMIT 1",
    )
    .await;
    assert!(c.breaks("no inbound message has its replies twice").await);

    let mut more = c.acked.clone();
    more.acked.push((phone.to_string(), "wamid.never-stored".into()));
    assert!(c.breaks_with(&more, "every acked message is registered").await);

    // In its own conversation: the same message under another number is not registered.
    let elsewhere = checker::Expected::acked_in(&format!("1098765433:{phone}"), &["wamid.ck.0"]);
    assert!(c.breaks_with(&elsewhere, "every acked message is registered").await);

    // A bad message that was neither dead-lettered nor applied, and a
    // good one beside it that was lost; then a good one that was applied.
    let lost = checker::Expected {
        bad: vec!["wamid.bad".into()],
        beside_bad: vec![(phone.to_string(), "wamid.never-stored".into())],
        ..checker::Expected::default()
    };
    let bad_kept = "every bad message of a delivery is dead-lettered, not applied";
    let good_kept = "every good message of a delivery with a bad one is applied or dead-lettered";
    assert!(c.breaks_with(&lost, bad_kept).await);
    assert!(c.breaks_with(&lost, good_kept).await);
    let applied = checker::Expected {
        beside_bad: vec![(phone.to_string(), "wamid.ck.0".into())],
        ..checker::Expected::default()
    };
    assert!(!c.breaks_with(&applied, good_kept).await);
    // A bad message applied as if it were good.
    let applied_bad = checker::Expected {
        bad: vec!["wamid.ck.1".into()],
        ..checker::Expected::default()
    };
    assert!(c.breaks_with(&applied_bad, bad_kept).await);

    c.plant("UPDATE inbox SET processed_at = NULL WHERE provider_message_id = 'wamid.ck.1'")
        .await;
    assert!(c.breaks("every acked message is processed").await);
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

/// How long a `switchboard load` child may take to end by itself.
const CHILD_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// How a `switchboard load` child ended, and the folder that was its
/// working folder and its TMPDIR (where the harness makes its run folder).
struct Ended {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: Vec<String>,
    tmp: std::path::PathBuf,
}

/// Runs `switchboard load` with `args` in a fresh folder until it ends
/// (its stderr closes: no sleeps), at most `CHILD_LIMIT`.
fn load_child(tag: &str, args: &[&str]) -> Ended {
    use std::process::{Command, Stdio};
    use std::sync::mpsc::RecvTimeoutError;
    let tmp = support::scratch_dir(tag);
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("load")
        .args(args)
        .current_dir(&tmp)
        .env("TMPDIR", &tmp)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let lines = support::stderr_lines(&mut child);
    let deadline = std::time::Instant::now() + CHILD_LIMIT;
    let mut stderr = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) => stderr.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                clean_up(&tmp, &leftovers(&tmp));
                panic!("the harness did not end; it said:\n{}", stderr.join("\n"));
            }
        }
    }
    let status = child.wait().unwrap();
    Ended {
        status,
        stdout: printed.join().unwrap(),
        stderr,
        tmp,
    }
}

/// What a run left under `tmp`: its run folders, and the processes that
/// work in a folder under it or name one (a PostgreSQL server and its
/// backends work in their data folder; `postgres -D` names it).
struct Leftovers {
    folders: Vec<std::path::PathBuf>,
    processes: Vec<i32>,
}

fn leftovers(tmp: &std::path::Path) -> Leftovers {
    let folders = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("switchboard-load-")
        })
        .collect();
    let roots = [tmp.to_path_buf(), std::fs::canonicalize(tmp).unwrap()];
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| support::alive(pid) && works_under(pid, &roots))
        .collect();
    Leftovers { folders, processes }
}

/// Whether process `pid` works in a folder under one of `roots`, or names
/// one on its command line.
fn works_under(pid: i32, roots: &[std::path::PathBuf]) -> bool {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    roots.iter().any(|root| {
        cwd.as_ref().is_some_and(|c| c.starts_with(root)) || cmdline.contains(&format!("{}/", root.display()))
    })
}

/// Stops what a run left (its clusters once this test process exits, as
/// the other tests' are) and removes `tmp`.
fn clean_up(tmp: &std::path::Path, left: &Leftovers) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for pid in &left.processes {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGQUIT);
    }
    for folder in &left.folders {
        support::spawn_watchdog(std::process::id(), &folder.join("pg"), tmp);
    }
    if left.folders.is_empty() {
        let _ = std::fs::remove_dir_all(tmp);
    }
}

/// No process of the run and no run folder is left under `tmp`.
fn assert_nothing_left(tmp: &std::path::Path) {
    let left = leftovers(tmp);
    clean_up(tmp, &left);
    assert!(
        left.processes.is_empty(),
        "processes of the run outlived it: {:?}",
        left.processes
    );
    assert!(
        left.folders.is_empty(),
        "the run's folder is left behind: {:?}",
        left.folders
    );
}

/// A run whose checker finds a violation exits non-zero, and stops and
/// removes its own server and database as a passing run does.
/// `--plant-violation` (hidden, for tests) tells the checker of one acked
/// message that was never sent.
#[test]
fn a_run_with_a_violated_invariant_fails_and_leaves_no_database_or_folder_behind() {
    let ended = load_child(
        "load-violation",
        &[
            "--scenario",
            "steady",
            "--rate",
            "20",
            "--duration",
            "1",
            "--phones",
            "2",
            "--drain",
            "30",
            "--quiet",
            "--plant-violation",
        ],
    );
    assert!(!ended.status.success(), "a run with a violation is not a passing run");
    // It ran against its own server, and the checker found the planted
    // violation and no other.
    assert!(
        ended.stdout.contains("against own server (embedded PostgreSQL)"),
        "{}",
        ended.stdout
    );
    assert!(
        ended.stdout.contains("VIOLATION every acked message is registered"),
        "{}",
        ended.stdout
    );
    assert!(
        ended.stderr.iter().any(|l| l.contains("1 invariant(s) violated")),
        "{:?}",
        ended.stderr
    );
    assert_nothing_left(&ended.tmp);
}

/// A flag refused as the command line is read: the run ends before its
/// server or database starts, and leaves nothing behind.
#[test]
fn a_refused_flag_ends_the_run_before_anything_starts_and_leaves_nothing_behind() {
    let ended = load_child("load-refused", &["--scenario", "steady", "--connections", "0"]);
    assert_eq!(ended.status.code(), Some(2), "a usage error");
    assert!(
        ended.stderr.iter().any(|l| l.contains("--connections")),
        "{:?}",
        ended.stderr
    );
    assert_nothing_left(&ended.tmp);
}

/// A `--serve-bin` that cannot run is found only once the processes'
/// database is up: the run fails, and stops and removes that database.
#[test]
fn a_serve_binary_that_cannot_start_fails_the_run_and_leaves_no_database_or_folder_behind() {
    let ended = load_child(
        "load-bad-bin",
        &[
            "--scenario",
            "steady",
            "--processes",
            "2",
            "--serve-bin",
            "/nonexistent/switchboard",
            "--duration",
            "1",
            "--quiet",
        ],
    );
    assert!(
        !ended.status.success(),
        "a run that could not start is not a passing run"
    );
    assert!(
        ended
            .stderr
            .iter()
            .any(|l| l.contains("starting /nonexistent/switchboard")),
        "{:?}",
        ended.stderr
    );
    assert_nothing_left(&ended.tmp);
}
