//! Test support: one real PostgreSQL cluster per test binary, a fresh
//! database per test.
//!
//! The cluster lives in a temporary folder, runs with `fsync = off` (tests
//! measure correctness, not durability) and is stopped and removed by a
//! watchdog process when the test binary exits, whatever way it exits.
//! Set `TEST_LOG=1` to see the engine's logs.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod rows;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use switchboard::config::{DatabaseSettings, EmbeddedSettings, Secret};
use switchboard::db::{self, Database, EmbeddedPostgres};
use tokio::sync::OnceCell;

/// Settings that make a throw-away cluster fast.
pub const FAST_SERVER: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "300"),
];

const TEMPLATE: &str = "switchboard_template";

pub struct TestCluster {
    pub pg: EmbeddedPostgres,
    pub base: PathBuf,
}

static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        switchboard::telemetry::init(&switchboard::config::LogSettings {
            format: switchboard::config::LogFormat::Text,
            level: "debug".into(),
        });
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The UID/GID the cluster's files must belong to (the `postgres` user when
/// we are root, ourselves otherwise).
pub fn server_owner() -> Option<(u32, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("user postgres");
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// A temporary folder the server user can enter and write.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some((uid, gid)) = server_owner() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    dir
}

/// Whether `pid` is a running process. A zombie has exited (it only waits
/// for its parent, here init, to reap it), so it does not count.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// The lines a child writes to its stderr (piped), as they come.
pub fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Reads lines until one satisfies `done` (the child says it is ready: no
/// sleeps), within `within`; returns the lines read, that one last.
pub fn read_until(
    lines: &std::sync::mpsc::Receiver<String>,
    within: std::time::Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| panic!("no {what}; output:\n{}", seen.join("\n")));
        let found = done(&line);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

/// The lines a child printed until its stderr closed (at most `within`).
/// After `wait()` the reader thread may not have passed the last lines on
/// yet: `try_iter` would race it.
pub fn rest_of(lines: &std::sync::mpsc::Receiver<String>, within: std::time::Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
        seen.push(line);
    }
    seen
}

/// The pid of the postmaster running on `data_dir`.
pub fn postmaster_pid(data_dir: &Path) -> i32 {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn embedded_settings(data_dir: &Path, port: u16) -> EmbeddedSettings {
    EmbeddedSettings {
        data_dir: data_dir.to_path_buf(),
        port,
        ..EmbeddedSettings::default()
    }
}

/// Stops the cluster in `data_dir` and removes `base` once process `pid` is gone.
pub fn spawn_watchdog(pid: u32, data_dir: &Path, base: &Path) {
    let bin = db::embedded::find_bin_dir(None).unwrap();
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 0.2; done; \
         '{}' -D '{}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{}'",
        bin.join("pg_ctl").display(),
        data_dir.display(),
        base.display()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    if let Some((uid, gid)) = server_owner() {
        cmd.uid(uid).gid(gid);
    }
    // A new process group: Ctrl-C on the test run must not kill the watchdog first.
    cmd.process_group(0);
    // Deliberately not waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    let _watchdog = cmd.spawn().unwrap();
}

/// The test binary's cluster, started on first use, with a migrated template database.
pub async fn cluster() -> &'static TestCluster {
    CLUSTER
        .get_or_init(|| async {
            init_logs();
            let base = scratch_dir("tests");
            let data_dir = base.join("data");
            let settings = embedded_settings(&data_dir, free_port());
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&settings, FAST_SERVER))
                .await
                .unwrap()
                .expect("start the test cluster");
            spawn_watchdog(std::process::id(), &data_dir, &base);
            db::create_database_if_missing(pg.url_for("postgres").expose(), TEMPLATE)
                .await
                .unwrap();
            db::migrations::run_pending(pg.url_for(TEMPLATE).expose())
                .await
                .unwrap();
            TestCluster { pg, base }
        })
        .await
}

/// A fresh database for one test.
pub struct TestDb {
    pub name: String,
    pub url: Secret,
}

impl TestDb {
    /// A new database with every migration applied (copied from the template).
    pub async fn migrated() -> Self {
        Self::create(Some(TEMPLATE)).await
    }

    /// A new, empty database (no migrations).
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    /// A new migrated database whose tables live in `tablespace`, made at
    /// `location` (an empty folder the server's user owns).
    pub async fn migrated_in(tablespace: &str, location: &Path) -> Self {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        let cluster = cluster().await;
        let name = format!("t_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let mut conn = AsyncPgConnection::establish(cluster.pg.url_for("postgres").expose())
            .await
            .unwrap();
        let made = format!("CREATE TABLESPACE {tablespace} LOCATION '{}'", location.display());
        diesel::sql_query(made).execute(&mut conn).await.unwrap();
        let sql = format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE} TABLESPACE {tablespace}");
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
        let url = cluster.pg.url_for(&name);
        Self { name, url }
    }

    async fn create(template: Option<&str>) -> Self {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        let cluster = cluster().await;
        let name = format!("t_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let mut conn = AsyncPgConnection::establish(cluster.pg.url_for("postgres").expose())
            .await
            .unwrap();
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
        let url = cluster.pg.url_for(&name);
        Self { name, url }
    }

    /// Settings for a pool on this database (defaults, with this URL).
    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: Some(self.url.clone()),
            ..DatabaseSettings::default()
        }
    }

    /// A handle with default settings.
    pub fn database(&self) -> Database {
        Database::connect(self.url.clone(), &self.settings())
    }

    /// A handle with adjusted settings.
    pub fn database_with(&self, adjust: impl FnOnce(&mut DatabaseSettings)) -> Database {
        let mut s = self.settings();
        adjust(&mut s);
        Database::connect(self.url.clone(), &s)
    }

    /// A direct (not pooled) connection, for checks from outside the engine.
    pub async fn admin(&self) -> diesel_async::AsyncPgConnection {
        use diesel_async::AsyncConnection;
        diesel_async::AsyncPgConnection::establish(self.url.expose())
            .await
            .unwrap()
    }

    /// Inbox rows not yet processed.
    pub async fn unprocessed(&self) -> i64 {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use switchboard::db::schema::inbox;
        inbox::table
            .filter(inbox::processed_at.is_null())
            .count()
            .get_result(&mut self.admin().await)
            .await
            .unwrap()
    }
}

/// The shipped example flow.
pub fn example_flow() -> switchboard::flow::Flow {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/reporte.toml");
    switchboard::flow::Flow::load(&path).expect("the example flow is valid")
}

/// Settings for an engine on `db` (defaults, quick resume sweep off).
pub fn engine_settings(db: &TestDb) -> switchboard::config::Settings {
    let mut s = switchboard::config::Settings {
        database: db.settings(),
        ..Default::default()
    };
    s.engine.resume_interval_s = 0;
    s.server.shutdown_timeout_s = 10;
    s
}

/// A text message payload as WhatsApp sends it.
pub fn text(body: &str) -> serde_json::Value {
    serde_json::json!({"type": "text", "text": {"body": body}})
}

/// Submits one text message.
pub async fn say(engine: &switchboard::Engine, phone: &str, id: &str, body: &str) -> switchboard::engine::Accepted {
    submit(engine, phone, id, text(body)).await
}

/// Submits one inbound message object of any kind from `phone`.
pub async fn submit(
    engine: &switchboard::Engine,
    phone: &str,
    id: &str,
    payload: serde_json::Value,
) -> switchboard::engine::Accepted {
    engine
        .submit_inbound(switchboard::InboundMessage {
            user_id: None,
            business_number: None,
            phone: phone.into(),
            provider_message_id: id.into(),
            payload,
            contact_name: None,
            contact_username: None,
        })
        .await
        .unwrap()
}

/// The conversation's messages as (origin, body), oldest first.
pub async fn transcript(db: &TestDb, phone: &str) -> Vec<(String, String)> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use switchboard::db::schema::messages;
    messages::table
        .filter(messages::phone.eq(phone))
        .order(messages::id)
        .select((messages::origin, messages::body))
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

/// The customer's messages of a conversation, in the order they were applied.
pub async fn user_messages(db: &TestDb, phone: &str) -> Vec<String> {
    transcript(db, phone)
        .await
        .into_iter()
        .filter(|(o, _)| o == "user")
        .map(|(_, b)| b)
        .collect()
}

/// A cluster with durable settings (`fsync`, `synchronous_commit` on) and the
/// migrated engine database, for benchmarks. Stopped on drop.
pub fn durable_cluster(rt: &tokio::runtime::Runtime, tag: &str) -> EmbeddedPostgres {
    let base = scratch_dir(tag);
    let data_dir = base.join("pg");
    spawn_watchdog(std::process::id(), &data_dir, &base);
    let pg = EmbeddedPostgres::start(&embedded_settings(&data_dir, free_port()), &[]).unwrap();
    rt.block_on(async {
        db::create_database_if_missing(pg.url_for("postgres").expose(), db::embedded::DATABASE)
            .await
            .unwrap();
        db::migrations::run_pending(pg.url().expose()).await.unwrap();
    });
    pg
}

/// An engine on `url` for benchmarks: example flow, log sink, no resume
/// sweep, an unthrottled outbox; `adjust` edits the rest.
pub async fn bench_engine(
    url: &switchboard::config::Secret,
    adjust: impl FnOnce(&mut switchboard::config::Settings),
) -> switchboard::Engine {
    let mut s = switchboard::config::Settings::default();
    s.database.url = Some(url.clone());
    s.engine.resume_interval_s = 0;
    s.outbox.rate_per_s = 1_000_000;
    adjust(&mut s);
    switchboard::Engine::builder(s)
        .flow(example_flow())
        .sender(std::sync::Arc::new(switchboard::whatsapp::sender::LogSink))
        .start()
        .await
        .unwrap()
}

/// An engine on `db` sending through `fake`, with quick retries and looks
/// at the outbox, then `adjust`ed.
pub async fn engine_with_fake(
    db: &TestDb,
    fake: &switchboard::load::fake_graph::FakeGraph,
    adjust: impl FnOnce(&mut switchboard::config::Settings),
) -> switchboard::Engine {
    let mut s = engine_settings(db);
    s.whatsapp = fake.settings();
    s.outbox.base_delay_ms = 10;
    s.outbox.max_delay_ms = 20;
    s.outbox.poll_interval_ms = 20;
    adjust(&mut s);
    switchboard::Engine::builder(s)
        .database(db.database())
        .flow(example_flow())
        .start()
        .await
        .unwrap()
}

/// `switchboard serve` on `db`, its config in `dir`; returns the child and its HTTP port.
pub fn serve(dir: &std::path::Path) -> (std::process::Child, u16) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config"])
        .arg(dir.join("config.toml"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let seen = read_until(&rx, std::time::Duration::from_secs(60), "ready line", |l| {
        l.contains("switchboard is ready")
    });
    let ready: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (child, ready["port"].as_u64().unwrap() as u16)
}
