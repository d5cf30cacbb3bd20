//! Running PostgreSQL's programs: as ourselves, or, when we are root, as an
//! unprivileged user (PostgreSQL refuses root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::unistd::{Gid, Uid, User};

use super::binaries::find_bin_dir;
use crate::db::error::{DbError, Result};

/// Where the PostgreSQL server binaries are, and who runs them.
#[derive(Debug, Clone)]
pub(super) struct Runner {
    bin_dir: PathBuf,
    /// `Some` when we are root and must drop to this user.
    pub(super) user: Option<(Uid, Gid, String)>,
}

impl Runner {
    /// Finds the binaries, then the user to run them as.
    pub(super) fn new(bin_dir: Option<&Path>, run_as: &str) -> Result<Self> {
        Ok(Self {
            bin_dir: find_bin_dir(bin_dir)?,
            user: server_user(run_as)?,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.stdin(Stdio::null()).env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid, _)) = &self.user {
            cmd.uid(uid.as_raw()).gid(gid.as_raw()).current_dir("/");
        }
        cmd
    }

    pub(super) fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| DbError::Embedded(format!("cannot run {}: {e}", self.bin_dir.join(program).display())))?;
        Ok(out)
    }

    pub(super) fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid, _)) = &self.user {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(|e| DbError::Embedded(format!("cannot give {} to the server user: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// The user to run the server as: ourselves, or `run_as` when we are root.
fn server_user(run_as: &str) -> Result<Option<(Uid, Gid, String)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name(run_as)
        .map_err(|e| DbError::Embedded(format!("cannot look up user `{run_as}`: {e}")))?
        .ok_or_else(|| {
            DbError::Embedded(format!(
                "running as root, and PostgreSQL refuses root: the server must run as an \
                 unprivileged user, but user `{run_as}` (database.embedded.run_as) does not exist. \
                 Create it (`useradd --system {run_as}`) or set database.embedded.run_as."
            ))
        })?;
    if user.uid.is_root() {
        return Err(DbError::Embedded(format!(
            "database.embedded.run_as = `{run_as}` is root; PostgreSQL refuses root"
        )));
    }
    Ok(Some((user.uid, user.gid, run_as.to_string())))
}

/// A program's stdout and stderr together, for error messages.
pub(super) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}
