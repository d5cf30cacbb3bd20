//! The cluster's files: `initdb` on first start, the generated password, and
//! the settings switchboard owns, rewritten at every start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::distr::{Alphanumeric, SampleString};

use super::runner::{output_text, Runner};
use super::{ServerSettings, PASSWORD_FILE, SUPERUSER};
use crate::config::Secret;
use crate::db::error::{DbError, Result};

/// Settings switchboard owns; included from `postgresql.conf`, rewritten each start.
const CONF_FILE: &str = "switchboard.conf";

/// Creates the cluster with a generated superuser password, includes our
/// settings file from `postgresql.conf`, and keeps the password beside the data.
pub(super) fn initdb(runner: &Runner, data_dir: &Path) -> Result<()> {
    let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
    run_initdb(runner, data_dir, &password)?;
    include_conf_file(data_dir)?;
    save_password(runner, data_dir, &password)?;
    tracing::info!("initialized a new PostgreSQL cluster");
    Ok(())
}

/// Runs `initdb`, handing it the password in a file only while it runs.
fn run_initdb(runner: &Runner, data_dir: &Path, password: &str) -> Result<()> {
    // initdb reads the password from a file the server user can read; it lives
    // beside the data directory (which must be empty) only while initdb runs.
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    let pwfile = parent.join(format!(".{}.pw", std::process::id()));
    std::fs::write(&pwfile, password)
        .and_then(|()| std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| DbError::Embedded(format!("cannot write {}: {e}", pwfile.display())))?;
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
        return Err(DbError::Embedded(format!("initdb failed: {}", output_text(&out))));
    }
    Ok(())
}

/// Makes `postgresql.conf` include [`CONF_FILE`], so our settings follow its defaults.
fn include_conf_file(data_dir: &Path) -> Result<()> {
    let conf = data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)
        .map_err(|e| DbError::Embedded(format!("cannot read {}: {e}", conf.display())))?;
    text.push_str(&format!(
        "\n# Written by switchboard; rewritten at every start.\ninclude_if_exists = '{CONF_FILE}'\n"
    ));
    std::fs::write(&conf, text).map_err(|e| DbError::Embedded(format!("cannot write {}: {e}", conf.display())))
}

/// Keeps the superuser password in the data directory, readable only by its owner.
fn save_password(runner: &Runner, data_dir: &Path, password: &str) -> Result<()> {
    let pw_path = data_dir.join(PASSWORD_FILE);
    std::fs::write(&pw_path, password)
        .and_then(|()| std::fs::set_permissions(&pw_path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| DbError::Embedded(format!("cannot write {}: {e}", pw_path.display())))?;
    // Every file of the data directory belongs to the server user: a base
    // backup (pg_basebackup, for a replica) reads them all.
    runner.chown(&pw_path)
}

/// The superuser password `initdb` saved: without it, the folder is not a cluster of ours.
pub(super) fn read_password(data_dir: &Path) -> Result<Secret> {
    let path = data_dir.join(PASSWORD_FILE);
    std::fs::read_to_string(&path)
        .map(|p| Secret::new(p.trim()))
        .map_err(|e| {
            DbError::Embedded(format!(
                "{} exists but {} cannot be read ({e}): it was not created by switchboard; \
             choose another database.embedded.data_dir",
                data_dir.display(),
                path.display()
            ))
        })
}

/// Writes the server's settings: switchboard's, then the caller's `extra`,
/// then the configuration's `server_settings` (the last one of a name wins).
pub(super) fn write_conf(
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
    std::fs::write(&path, conf).map_err(|e| DbError::Embedded(format!("cannot write {}: {e}", path.display())))?;
    runner.chown(&path)
}
