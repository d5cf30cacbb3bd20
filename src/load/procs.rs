//! Several `switchboard serve` processes on one database, for the load
//! harness (`--processes N`): the harness starts an embedded PostgreSQL and
//! a fake send API, writes one configuration per process, starts them, and
//! can kill one with SIGKILL and start it again in the middle of a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::fake_graph::FakeGraph;
use super::payloads::{IMAGE, IMAGE_MIME};
use super::population::other_numbers;
use super::scenario::Scenario;
use crate::config::{DatabaseSettings, PgValue, Secret};
use crate::db::Database;

/// One `serve` process.
struct Proc {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Child,
}

/// The processes' database: its server settings, and whether they reach it
/// through the harness's proxy (for the faults of that path), listening in
/// a network namespace of its own (to black-hole the path).
pub struct Cluster<'a> {
    pub server_settings: &'a BTreeMap<String, PgValue>,
    pub via_proxy: bool,
    pub in_namespace: bool,
    /// The processes' `outbox.lease_ms`: a claimed reply must begin its
    /// send within half of it, so a slow path needs a longer one.
    pub outbox_lease_ms: u64,
}

/// The processes, their database and the fake send API.
pub struct Processes {
    pub graph: FakeGraph,
    pub app_secret: Secret,
    pub db: Database,
    /// Between the processes and the database, for the faults of its path.
    pub proxy: Option<crate::load::proxy::Proxy>,
    /// Where the proxy listens, to drop its packets.
    pub netns: Option<crate::load::netns::Netns>,
    bin: PathBuf,
    procs: Vec<Proc>,
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// TOML's basic string: quotes and backslashes escaped.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Processes {
    /// Starts the database, the fake API and `n` processes of `bin`, each
    /// serving `numbers` business numbers; returns once each answers `/readyz`.
    pub async fn start(
        n: usize,
        bin: &Path,
        scenario: Scenario,
        numbers: usize,
        send_rate: u32,
        dir: &Path,
        cluster: Cluster<'_>,
    ) -> anyhow::Result<Self> {
        let Cluster {
            server_settings,
            via_proxy,
            in_namespace,
            outbox_lease_ms,
        } = cluster;
        let graph = FakeGraph::start()?;
        graph.serve_any_media(IMAGE, IMAGE_MIME);
        let app_secret = Secret::new(format!("{:032x}", rand::random::<u128>()));
        let mut db_settings = DatabaseSettings::default();
        db_settings.embedded.data_dir = super::run_dir::data_dir(dir);
        db_settings.embedded.port = free_port()?;
        db_settings.embedded.server_settings = server_settings.clone();
        db_settings.max_connections = 8;
        let db = Database::open(&db_settings).await.context("starting the database")?;
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], db_settings.embedded.port));
        let netns = match in_namespace {
            true => Some(crate::load::netns::Netns::create().context("a network namespace for the black hole")?),
            false => None,
        };
        let proxy = match (&netns, via_proxy) {
            (Some(ns), _) => Some(crate::load::proxy::Proxy::start_on(ns.listen()?, target)?),
            (None, true) => Some(crate::load::proxy::Proxy::start(target).await?),
            (None, false) => None,
        };
        let mut me = Self {
            graph,
            app_secret,
            db,
            proxy,
            netns,
            bin: bin.to_path_buf(),
            procs: Vec::new(),
            dir: dir.to_path_buf(),
        };
        std::fs::write(dir.join("flow.toml"), scenario.flow())?;
        for i in 0..n {
            let port = free_port()?;
            let config = dir.join(format!("serve-{i}.toml"));
            let outbox = (send_rate, outbox_lease_ms);
            std::fs::write(&config, me.config_text(port, scenario, numbers, outbox))?;
            let log = dir.join(format!("serve-{i}.log"));
            let child = me.spawn(&config, &log)?;
            me.procs.push(Proc {
                port,
                config,
                log,
                child,
            });
        }
        for i in 0..n {
            me.wait_ready(i).await?;
        }
        Ok(me)
    }

    /// A process's configuration: its port, the shared database, flow and
    /// media folder, and the business numbers (the home one, then
    /// `[[whatsapp.numbers]]`).
    /// `outbox`: its rate per second and lease.
    fn config_text(&self, port: u16, scenario: Scenario, numbers: usize, outbox: (u32, u64)) -> String {
        let (send_rate, outbox_lease_ms) = outbox;
        let wa = self.graph.settings();
        let others: String = other_numbers(numbers)
            .iter()
            .map(|n| {
                format!(
                    "[[whatsapp.numbers]]\nphone_number_id = {}\n",
                    quoted(&n.phone_number_id)
                )
            })
            .collect();
        let ai = if scenario == Scenario::AiSlow {
            "[ai]\nprovider = \"simulated\"\nintent_timeout_ms = 500\nextract_timeout_ms = 500\n\
             [ai.simulated]\nlatency_ms = 100\njitter_ms = 150\nerror_rate = 0.05\nhang_rate = 0.01\n"
        } else {
            ""
        };
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\nshutdown_timeout_s = 10\n\
             [database]\nurl = {url}\nmax_connections = 16\n\
             [whatsapp]\napp_secret = {secret}\naccess_token = {token}\nphone_number_id = {pnid}\napi_base = {base}\n\
             {others}\
             [api]\nrate_per_s = 1000000\nburst = 1000000\n\
             [engine]\nshare_events = true\nresume_interval_s = 1\ninbox_lease_ms = 5000\n\
             [outbox]\nrate_per_s = {send_rate}\nlease_ms = {outbox_lease_ms}\n\
             [flow]\npath = {flow}\n\
             [media]\ndir = {media}\n\
             [log]\nlevel = \"warn\"\n{ai}",
            url = quoted(&match &self.proxy {
                Some(p) => p.route(self.db.url().expose()),
                None => self.db.url().expose().to_string(),
            }),
            secret = quoted(self.app_secret.expose()),
            token = quoted(wa.access_token.as_ref().map(Secret::expose).unwrap_or_default()),
            pnid = quoted(wa.phone_number_id.as_deref().unwrap_or_default()),
            base = quoted(&wa.api_base),
            flow = quoted(&self.dir.join("flow.toml").display().to_string()),
            media = quoted(&self.dir.join("media").display().to_string()),
        )
    }

    fn spawn(&self, config: &Path, log: &Path) -> anyhow::Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new(&self.bin)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))
    }

    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.procs[i].port);
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(&url).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.procs[i].child.try_wait() {
                let log = std::fs::read_to_string(&self.procs[i].log).unwrap_or_default();
                anyhow::bail!("serve process {i} exited ({status}):\n{log}");
            }
            if Instant::now() > deadline {
                anyhow::bail!("serve process {i} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The processes' base URLs.
    /// The `serve` processes' pids.
    pub fn pids(&self) -> Vec<i32> {
        self.procs.iter().map(|p| p.child.id() as i32).collect()
    }

    /// The shared cluster's data folder.
    pub fn data_dir(&self) -> PathBuf {
        super::run_dir::data_dir(&self.dir)
    }

    pub fn bases(&self) -> Vec<String> {
        self.procs
            .iter()
            .map(|p| format!("http://127.0.0.1:{}", p.port))
            .collect()
    }

    /// Kills process `i` with SIGKILL (no shutdown of any kind), then
    /// starts it again on the same port and waits until it is ready.
    pub async fn kill_and_restart(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &mut self.procs[i];
        p.child.kill()?;
        p.child.wait()?;
        let (config, log) = (p.config.clone(), p.log.clone());
        self.procs[i].child = self.spawn(&config, &log)?;
        self.wait_ready(i).await
    }

    /// Stops process `i` with SIGTERM (it drains and exits), starts it
    /// again — running `bin` from now on, if given (a new release) — and
    /// waits until it is ready. Returns how long it was away.
    pub async fn terminate_and_restart(&mut self, i: usize, bin: Option<&Path>) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.procs[i].child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = started + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.procs[i].child.try_wait()? {
                break status;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "serve process {i} still runs 60 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // SIGTERM is an orderly stop: anything but success is a defect.
        anyhow::ensure!(
            status.success(),
            "serve process {i} ended with {status} after SIGTERM (its log: {})",
            self.procs[i].log.display()
        );
        if let Some(bin) = bin {
            self.bin = bin.to_path_buf();
        }
        let (config, log) = (self.procs[i].config.clone(), self.procs[i].log.clone());
        self.procs[i].child = self.spawn(&config, &log)?;
        self.wait_ready(i).await?;
        Ok(started.elapsed())
    }

    /// Restarts the database (`fast` or `immediate`), down for `down_for`.
    pub async fn restart_database(&self, mode: &'static str, down_for: Duration) -> anyhow::Result<()> {
        Ok(self.db.restart_embedded(mode, down_for).await?)
    }

    /// Terminates about half of the processes' database connections (a
    /// network blip, a proxy, an administrator), every `every` until `until`.
    /// Returns how many were killed.
    pub async fn kill_connections(&self, every: Duration, until: Instant) -> anyhow::Result<u64> {
        let url = self.db.url().expose().to_string();
        let mut killed = 0;
        while Instant::now() < until {
            tokio::time::sleep(every).await;
            killed += super::checker::count(
                &url,
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND backend_type = 'client backend' AND random() < 0.5",
            )
            .await
            .unwrap_or(0) as u64;
        }
        Ok(killed)
    }

    /// Waits until every accepted message is applied and every outbound
    /// one sent (or given up), at most `limit`; `false` at `limit`.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let url = self.db.url().expose().to_string();
        while Instant::now() < deadline {
            let left = super::checker::count(
                &url,
                "SELECT (SELECT count(*) FROM inbox WHERE processed_at IS NULL) \
                      + (SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')) AS n",
            )
            .await
            .unwrap_or(1);
            if left == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Stops every process with SIGTERM (an orderly stop), then the database.
    pub async fn stop(mut self) {
        for p in &mut self.procs {
            let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).status();
        }
        for p in &mut self.procs {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        let _ = self.db.shutdown().await;
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // Never leave processes behind, whatever happened.
        for p in &mut self.procs {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}
