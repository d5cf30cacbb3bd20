//! The embedded PostgreSQL cluster: `initdb` on first start, reused after,
//! stopped cleanly. Runs the system's PostgreSQL binaries; when switchboard
//! runs as root, the server runs as an unprivileged user (PostgreSQL refuses root).
//!
//! Code map: `binaries` (finding them), `runner` (running them, and as whom),
//! `data_dir` (creating it, checking the server user can reach it), `init`
//! (`initdb`, the password, the settings file), `pg_ctl` (start, stop, restart),
//! `keep_up` (started again when its postmaster is gone).

mod binaries;
mod data_dir;
mod init;
pub mod keep_up;
mod pg_ctl;
mod runner;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use binaries::find_bin_dir;

use crate::config::{EmbeddedSettings, Secret};
use crate::db::error::Result;
use data_dir::{absolute, prepare_data_dir};
use init::{initdb, read_password, write_conf};
use runner::Runner;

/// Superuser created by `initdb`; the engine's database has the same name.
pub const SUPERUSER: &str = "switchboard";
pub const DATABASE: &str = "switchboard";
/// File in the data directory holding the generated superuser password.
const PASSWORD_FILE: &str = "switchboard.password";

/// A running (or stoppable) embedded cluster. Dropping it stops the server
/// if [`EmbeddedPostgres::stop`] was not called.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    runner: Runner,
    data_dir: PathBuf,
    port: u16,
    password: Secret,
    timeout: Duration,
    /// True when this start ran `initdb` (a new cluster).
    initialized: bool,
    running: bool,
}

/// Extra server settings for special uses (the test suite turns `fsync` off).
pub type ServerSettings<'a> = &'a [(&'a str, &'a str)];

impl EmbeddedPostgres {
    /// Initializes the cluster if needed and starts it.
    #[tracing::instrument(skip_all, fields(data_dir = %settings.data_dir.display(), port = settings.port))]
    pub fn start(settings: &EmbeddedSettings, extra: ServerSettings<'_>) -> Result<Self> {
        let runner = Runner::new(settings.bin_dir.as_deref(), &settings.run_as)?;
        let data_dir = absolute(&settings.data_dir)?;
        prepare_data_dir(&runner, &data_dir)?;
        let initialized = !data_dir.join("PG_VERSION").exists();
        if initialized {
            initdb(&runner, &data_dir)?;
        }
        let password = read_password(&data_dir)?;
        let mut pg = Self {
            runner,
            data_dir,
            port: settings.port,
            password,
            timeout: Duration::from_secs(settings.start_timeout_s),
            initialized,
            running: false,
        };
        let own: Vec<(String, String)> = settings
            .server_settings
            .iter()
            .map(|(k, v)| (k.clone(), v.conf_literal()))
            .collect();
        write_conf(&pg.runner, &pg.data_dir, settings.port, extra, &own)?;
        // Clusters initialized by older versions left it to root.
        pg.runner.chown(&pg.data_dir.join(PASSWORD_FILE))?;
        pg.pg_ctl_start()?;
        pg.running = true;
        tracing::info!(initialized, "embedded PostgreSQL is up");
        Ok(pg)
    }

    /// URL of the engine's database on this cluster.
    pub fn url(&self) -> Secret {
        self.url_for(DATABASE)
    }

    /// URL of any database on this cluster, as the superuser.
    pub fn url_for(&self, database: &str) -> Secret {
        Secret::new(format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password.expose(),
            self.port
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this start created the cluster (`initdb` ran).
    pub fn initialized(&self) -> bool {
        self.initialized
    }

    /// PID of the postmaster, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "could not stop embedded PostgreSQL");
        }
    }
}
