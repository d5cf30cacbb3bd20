//! The embedded cluster and `switchboard serve` on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use diesel_async::RunQueryDsl;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::rows::Rows;
use support::{alive, embedded_settings, free_port, rest_of, scratch_dir, spawn_watchdog};
use switchboard::config::PgValue;
use switchboard::db::{self, EmbeddedPostgres};

async fn start(settings: switchboard::config::EmbeddedSettings) -> EmbeddedPostgres {
    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&settings, support::FAST_SERVER))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn first_start_initializes_second_start_reuses_the_data_and_stop_leaves_no_process() {
    let base = scratch_dir("embedded");
    let data_dir = base.join("data");
    spawn_watchdog(std::process::id(), &data_dir, &base);
    let settings = embedded_settings(&data_dir, free_port());

    let mut pg = start(settings.clone()).await;
    assert!(pg.initialized(), "first start runs initdb");
    let pid = pg.postmaster_pid().unwrap();
    assert!(alive(pid));
    db::create_database_if_missing(pg.url_for("postgres").expose(), db::embedded::DATABASE)
        .await
        .unwrap();
    db::migrations::run_pending(pg.url().expose()).await.unwrap();
    let database = db::Database::connect(pg.url(), &Default::default());
    database
        .load_or_create_session("5215512341234", "inicio")
        .await
        .unwrap();
    drop(database);
    pg.stop().unwrap();
    assert!(!alive(pid), "postmaster {pid} still running after stop");

    // The configuration's server settings reach the server (a quote inside
    // one stays inside it).
    let mut configured = settings.clone();
    configured.server_settings = [
        ("log_min_duration_statement", PgValue::Int(250)),
        ("log_line_prefix", PgValue::Text("%m it's ".into())),
        ("log_checkpoints", PgValue::Bool(true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let pg = start(configured).await;
    assert!(!pg.initialized(), "second start reuses the cluster");
    let database = db::Database::connect(pg.url(), &Default::default());
    let s = database.load_session("5215512341234").await.unwrap();
    assert!(s.is_some(), "data survived the restart");
    assert_eq!(setting(&database, "log_min_duration_statement").await, "250ms");
    assert_eq!(setting(&database, "log_line_prefix").await, "%m it's ");
    assert_eq!(setting(&database, "log_checkpoints").await, "on");
    drop(database);
    let pid = pg.postmaster_pid().unwrap();
    drop(pg); // Drop stops the server too.
    assert!(!alive(pid), "postmaster {pid} still running after drop");

    // A setting the server does not know stops the start with the server's
    // own words naming it.
    let mut wrong = settings;
    wrong.server_settings.insert("no_such_setting".into(), PgValue::Int(1));
    let err = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&wrong, support::FAST_SERVER))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_setting"), "{err}");
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    v: String,
}

async fn setting(database: &db::Database, name: &str) -> String {
    let mut conn = database.pool().get().await.unwrap();
    diesel::sql_query("SELECT current_setting($1) AS v")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Setting>(&mut *conn)
        .await
        .unwrap()
        .v
}

#[test]
fn missing_binaries_give_an_error_that_says_what_to_install_and_how_to_use_a_url() {
    let empty = tempfile::tempdir().unwrap();
    let settings = switchboard::config::EmbeddedSettings {
        bin_dir: Some(empty.path().to_path_buf()),
        data_dir: empty.path().join("data"),
        ..Default::default()
    };
    let err = EmbeddedPostgres::start(&settings, &[]).unwrap_err().to_string();
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(err.contains("database.url"), "{err}");
}

#[test]
fn a_data_directory_the_server_user_cannot_reach_is_refused_with_a_clear_message() {
    if support::server_owner().is_none() {
        // Not root: the server runs as ourselves and can reach what we can.
        return;
    }
    let private = tempfile::tempdir().unwrap(); // mode 0700, owned by root
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let settings = embedded_settings(&private.path().join("pg"), free_port());
    let err = EmbeddedPostgres::start(&settings, &[]).unwrap_err().to_string();
    assert!(err.contains("cannot enter"), "{err}");
    assert!(err.contains("database.embedded.data_dir"), "{err}");
}

/// `switchboard serve` with no database URL: starts its own cluster, applies
/// migrations, stops everything on SIGTERM and exits 0.
#[tokio::test]
async fn serve_runs_on_the_embedded_database_and_stops_cleanly_on_sigterm() {
    let base = scratch_dir("serve");
    let data_dir = base.join("pg");
    spawn_watchdog(std::process::id(), &data_dir, &base);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .current_dir(&base)
        .env("SWITCHBOARD__DATABASE__EMBEDDED__DATA_DIR", &data_dir)
        .env("SWITCHBOARD__DATABASE__EMBEDDED__PORT", port.to_string())
        .env("SWITCHBOARD__SERVER__BIND", "127.0.0.1:0")
        .env("SWITCHBOARD__LOG__FORMAT", "json")
        .env(
            "SWITCHBOARD__FLOW__PATH",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/reporte.toml"),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = support::stderr_lines(&mut child);
    // The engine says when it is ready: no sleeps.
    let seen = support::read_until(&rx, Duration::from_secs(120), "ready line", |l| {
        l.contains("switchboard is ready")
    });
    // The HTTP server answers on the port it logged.
    let ready: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    let http_port = ready["port"].as_u64().unwrap();
    let health = reqwest::get(format!("http://127.0.0.1:{http_port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("http://127.0.0.1:{http_port}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let pg_pid = support::postmaster_pid(&data_dir);
    // The schema is there.
    let pw = std::fs::read_to_string(data_dir.join("switchboard.password")).unwrap();
    let url = format!("postgres://switchboard:{}@127.0.0.1:{port}/switchboard", pw.trim());
    let status = db::migrations::status(&url).await.unwrap();
    assert!(status.iter().all(|m| m.applied), "{status:?}");
    let mut conn = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url)
        .await
        .unwrap();
    diesel::sql_query("SELECT 1 FROM sessions")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "serve exited with {exit}");
    assert!(!alive(pg_pid), "embedded postmaster {pg_pid} outlived serve");
    let logs = rest_of(&rx, std::time::Duration::from_secs(30));
    assert!(
        logs.iter().any(|l| l.contains("embedded PostgreSQL stopped")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn the_embedded_cluster_is_started_again_when_its_postmaster_is_gone() {
    let base = scratch_dir("keep-up");
    let data_dir = base.join("data");
    spawn_watchdog(std::process::id(), &data_dir, &base);
    let settings = switchboard::config::DatabaseSettings {
        embedded: embedded_settings(&data_dir, free_port()),
        ..Default::default()
    };
    let database = db::Database::open(&settings).await.unwrap();
    database
        .load_or_create_session("5215512340001", "inicio")
        .await
        .unwrap();
    // The postmaster ends on its own (SIGQUIT: an immediate shutdown, as
    // when PostgreSQL gives up), with nobody asking switchboard to stop it.
    let pid = support::postmaster_pid(&data_dir);
    kill(Pid::from_raw(pid), Signal::SIGQUIT).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while alive(pid) {
        assert!(std::time::Instant::now() < deadline, "postmaster {pid} did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Started again by the engine's watch: reads and writes go on.
    loop {
        match database.load_session("5215512340001").await {
            Ok(s) => {
                assert!(s.is_some(), "the data survived");
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the cluster was not started again: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = support::postmaster_pid(&data_dir);
    assert_ne!(again, pid, "a new postmaster");
    database
        .load_or_create_session("5215512340002", "inicio")
        .await
        .unwrap();
    drop(database);
    // Dropping the last handle stops it (the watch holds none between looks).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while alive(again) {
        assert!(
            std::time::Instant::now() < deadline,
            "postmaster {again} still running after the drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
