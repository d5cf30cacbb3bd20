//! The embedded PostgreSQL cluster: `initdb` on first start, reused after,
//! stopped cleanly. Runs the system's PostgreSQL binaries; when switchboard
//! runs as root, the server runs as an unprivileged user (PostgreSQL refuses root).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::unistd::{Gid, Uid, User};
use rand::distr::{Alphanumeric, SampleString};

use crate::config::{EmbeddedSettings, Secret};
use crate::error::{Error, Result};

/// Superuser created by `initdb`; the engine's database has the same name.
pub const SUPERUSER: &str = "switchboard";
pub const DATABASE: &str = "switchboard";
/// File in the data directory holding the generated superuser password.
const PASSWORD_FILE: &str = "switchboard.password";
/// Settings switchboard owns; included from `postgresql.conf`, rewritten each start.
const CONF_FILE: &str = "switchboard.conf";

/// Where the PostgreSQL server binaries are, and who runs them.
#[derive(Debug, Clone)]
struct Runner {
    bin_dir: PathBuf,
    /// `Some` when we are root and must drop to this user.
    user: Option<(Uid, Gid, String)>,
}

impl Runner {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.stdin(Stdio::null()).env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid, _)) = &self.user {
            cmd.uid(uid.as_raw()).gid(gid.as_raw()).current_dir("/");
        }
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| Error::Embedded(format!("cannot run {}: {e}", self.bin_dir.join(program).display())))?;
        Ok(out)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid, _)) = &self.user {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(|e| Error::Embedded(format!("cannot give {} to the server user: {e}", path.display())))?;
        }
        Ok(())
    }
}

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
        let runner = Runner {
            bin_dir: find_bin_dir(settings.bin_dir.as_deref())?,
            user: server_user(&settings.run_as)?,
        };
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

    /// Stops the server (fast shutdown: sessions end, no crash recovery at next start).
    #[tracing::instrument(skip_all)]
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let data = self.data_dir.to_string_lossy().into_owned();
        let timeout = self.timeout.as_secs().max(1).to_string();
        let out = self
            .runner
            .run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "-t", &timeout, "stop"])?;
        if !out.status.success() && self.status_running()? {
            return Err(Error::Embedded(format!("pg_ctl stop failed: {}", output_text(&out))));
        }
        self.running = false;
        tracing::info!("embedded PostgreSQL stopped");
        Ok(())
    }

    /// Stops the server with `mode` (`fast`, or `immediate`: no shutdown
    /// checkpoint, as a crash), leaves it down for `down_for`, starts it
    /// again: a database outage, for fault tests.
    pub fn restart(&mut self, mode: &str, down_for: std::time::Duration) -> Result<()> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let timeout = self.timeout.as_secs().max(1).to_string();
        let out = self
            .runner
            .run("pg_ctl", &["-D", &data, "-m", mode, "-w", "-t", &timeout, "stop"])?;
        if !out.status.success() {
            return Err(Error::Embedded(format!("pg_ctl stop failed: {}", output_text(&out))));
        }
        std::thread::sleep(down_for);
        self.pg_ctl_start()
    }

    fn status_running(&self) -> Result<bool> {
        let data = self.data_dir.to_string_lossy().into_owned();
        // pg_ctl status: 0 running, 3 not running, 4 no data directory.
        Ok(self.runner.run("pg_ctl", &["-D", &data, "status"])?.status.code() == Some(0))
    }

    fn pg_ctl_start(&self) -> Result<()> {
        if self.status_running()? {
            // Left running by a process that was killed: adopt it.
            tracing::warn!("embedded PostgreSQL was already running; reusing it");
            return Ok(());
        }
        let data = self.data_dir.to_string_lossy().into_owned();
        let log = self.data_dir.join("server.log").to_string_lossy().into_owned();
        let timeout = self.timeout.as_secs().max(1).to_string();
        let out = self
            .runner
            .run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", &timeout, "start"])?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log)
                .map(|l| {
                    l.lines()
                        .rev()
                        .take(8)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            return Err(Error::Embedded(format!(
                "the server did not start (port {} in use? a database.embedded.server_settings \
                 entry it refuses?): {}\nlast lines of {log}:\n{tail}",
                self.port,
                output_text(&out)
            )));
        }
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "could not stop embedded PostgreSQL");
        }
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::Embedded(format!("bad data directory {}: {e}", path.display())))
}

const MISSING_BINARIES: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. \
Install them (Debian/Ubuntu: `apt-get install postgresql`), set `database.embedded.bin_dir` \
to their folder, or point `database.url` (SWITCHBOARD__DATABASE__URL) at an existing server.";

/// Finds the folder with `initdb`, `pg_ctl` and `postgres`.
pub fn find_bin_dir(configured: Option<&Path>) -> Result<PathBuf> {
    let has_all = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = configured {
        return if has_all(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(Error::Embedded(format!(
                "database.embedded.bin_dir = {} lacks initdb, pg_ctl or postgres. {MISSING_BINARIES}",
                dir.display()
            )))
        };
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    // Debian keeps server binaries in versioned folders; prefer the newest.
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versioned.sort();
    candidates.extend(versioned.into_iter().rev().map(|(_, p)| p));
    candidates
        .into_iter()
        .find(|d| has_all(d))
        .ok_or_else(|| Error::Embedded(MISSING_BINARIES.into()))
}

/// The user to run the server as: ourselves, or `run_as` when we are root.
fn server_user(run_as: &str) -> Result<Option<(Uid, Gid, String)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name(run_as)
        .map_err(|e| Error::Embedded(format!("cannot look up user `{run_as}`: {e}")))?
        .ok_or_else(|| {
            Error::Embedded(format!(
                "running as root, and PostgreSQL refuses root: the server must run as an \
                 unprivileged user, but user `{run_as}` (database.embedded.run_as) does not exist. \
                 Create it (`useradd --system {run_as}`) or set database.embedded.run_as."
            ))
        })?;
    if user.uid.is_root() {
        return Err(Error::Embedded(format!(
            "database.embedded.run_as = `{run_as}` is root; PostgreSQL refuses root"
        )));
    }
    Ok(Some((user.uid, user.gid, run_as.to_string())))
}

/// Creates the data directory (owned by the server user) and checks that the
/// server user can reach it: every parent folder needs the execute bit for it.
fn prepare_data_dir(runner: &Runner, data_dir: &Path) -> Result<()> {
    let parent = data_dir
        .parent()
        .ok_or_else(|| Error::Embedded("the data directory cannot be /".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::Embedded(format!("cannot create {}: {e}", parent.display())))?;
    if let Some((uid, gid, name)) = &runner.user {
        for dir in parent.ancestors() {
            let meta = std::fs::metadata(dir)
                .map_err(|e| Error::Embedded(format!("cannot inspect {}: {e}", dir.display())))?;
            let mode = meta.permissions().mode();
            let reachable = if meta.uid() == uid.as_raw() {
                mode & 0o100 != 0
            } else if meta.gid() == gid.as_raw() {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !reachable {
                return Err(Error::Embedded(format!(
                    "the PostgreSQL server runs as `{name}` (we are root), and `{name}` cannot enter {} \
                     (mode {:o}), a parent of the data directory {}. Set database.embedded.data_dir \
                     (SWITCHBOARD__DATABASE__EMBEDDED__DATA_DIR) to a reachable place such as \
                     /var/lib/switchboard/postgres, or run `chmod o+x {}`.",
                    dir.display(),
                    mode & 0o777,
                    data_dir.display(),
                    dir.display()
                )));
            }
        }
    }
    if !data_dir.exists() {
        std::fs::create_dir(data_dir)
            .map_err(|e| Error::Embedded(format!("cannot create {}: {e}", data_dir.display())))?;
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::Embedded(format!("cannot set mode of {}: {e}", data_dir.display())))?;
    runner.chown(data_dir)
}

fn initdb(runner: &Runner, data_dir: &Path) -> Result<()> {
    let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
    // initdb reads the password from a file the server user can read; it lives
    // beside the data directory (which must be empty) only while initdb runs.
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    let pwfile = parent.join(format!(".{}.pw", std::process::id()));
    std::fs::write(&pwfile, &password)
        .and_then(|()| std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| Error::Embedded(format!("cannot write {}: {e}", pwfile.display())))?;
    runner.chown(&pwfile)?;
    let data = data_dir.to_string_lossy().into_owned();
    let pw = pwfile.to_string_lossy().into_owned();
    let result = runner.run(
        "initdb",
        &[
            "-D",
            &data,
            "-U",
            SUPERUSER,
            "--pwfile",
            &pw,
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ],
    );
    let _ = std::fs::remove_file(&pwfile);
    let out = result?;
    if !out.status.success() {
        return Err(Error::Embedded(format!("initdb failed: {}", output_text(&out))));
    }
    let conf = data_dir.join("postgresql.conf");
    let mut text =
        std::fs::read_to_string(&conf).map_err(|e| Error::Embedded(format!("cannot read {}: {e}", conf.display())))?;
    text.push_str(&format!(
        "\n# Written by switchboard; rewritten at every start.\ninclude_if_exists = '{CONF_FILE}'\n"
    ));
    std::fs::write(&conf, text).map_err(|e| Error::Embedded(format!("cannot write {}: {e}", conf.display())))?;
    let pw_path = data_dir.join(PASSWORD_FILE);
    std::fs::write(&pw_path, &password)
        .and_then(|()| std::fs::set_permissions(&pw_path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| Error::Embedded(format!("cannot write {}: {e}", pw_path.display())))?;
    // Every file of the data directory belongs to the server user: a base
    // backup (pg_basebackup, for a replica) reads them all.
    runner.chown(&pw_path)?;
    tracing::info!("initialized a new PostgreSQL cluster");
    Ok(())
}

fn read_password(data_dir: &Path) -> Result<Secret> {
    let path = data_dir.join(PASSWORD_FILE);
    std::fs::read_to_string(&path)
        .map(|p| Secret::new(p.trim()))
        .map_err(|e| {
            Error::Embedded(format!(
                "{} exists but {} cannot be read ({e}): it was not created by switchboard; \
             choose another database.embedded.data_dir",
                data_dir.display(),
                path.display()
            ))
        })
}

/// Writes the server's settings: switchboard's, then the caller's `extra`,
/// then the configuration's `server_settings` (the last one of a name wins).
fn write_conf(
    runner: &Runner,
    data_dir: &Path,
    port: u16,
    extra: ServerSettings<'_>,
    configured: &[(String, String)],
) -> Result<()> {
    let mut conf = format!(
        "# Written by switchboard at start; edit config.toml instead.\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = ''\n\
         max_connections = 200\n\
         lc_messages = 'C'\n"
    );
    for (k, v) in extra {
        conf.push_str(&format!("{k} = {v}\n"));
    }
    if !configured.is_empty() {
        conf.push_str("# [database.embedded.server_settings]\n");
    }
    for (k, v) in configured {
        conf.push_str(&format!("{k} = {v}\n"));
    }
    let path = data_dir.join(CONF_FILE);
    std::fs::write(&path, conf).map_err(|e| Error::Embedded(format!("cannot write {}: {e}", path.display())))?;
    runner.chown(&path)
}
