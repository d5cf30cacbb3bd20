//! The data directory: created private to the server user, and checked to be
//! reachable by it before `initdb` or the server fail on it less clearly.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::runner::Runner;
use crate::db::error::{DbError, Result};

/// The data directory as an absolute path: the server user's programs run from `/`.
pub(super) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| DbError::Embedded(format!("bad data directory {}: {e}", path.display())))
}

/// Creates the data directory (owned by the server user) and checks that the
/// server user can reach it: every parent folder needs the execute bit for it.
pub(super) fn prepare_data_dir(runner: &Runner, data_dir: &Path) -> Result<()> {
    let parent = data_dir
        .parent()
        .ok_or_else(|| DbError::Embedded("the data directory cannot be /".into()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| DbError::Embedded(format!("cannot create {}: {e}", parent.display())))?;
    if let Some((uid, gid, name)) = &runner.user {
        check_reachable(parent, data_dir, *uid, *gid, name)?;
    }
    if !data_dir.exists() {
        std::fs::create_dir(data_dir)
            .map_err(|e| DbError::Embedded(format!("cannot create {}: {e}", data_dir.display())))?;
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| DbError::Embedded(format!("cannot set mode of {}: {e}", data_dir.display())))?;
    runner.chown(data_dir)
}

/// Fails, naming the folder and the fix, when the server user `name` cannot
/// enter `parent` or one of its ancestors (as under a private home directory).
fn check_reachable(parent: &Path, data_dir: &Path, uid: Uid, gid: Gid, name: &str) -> Result<()> {
    for dir in parent.ancestors() {
        let meta =
            std::fs::metadata(dir).map_err(|e| DbError::Embedded(format!("cannot inspect {}: {e}", dir.display())))?;
        let mode = meta.permissions().mode();
        let reachable = if meta.uid() == uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !reachable {
            return Err(DbError::Embedded(format!(
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
    Ok(())
}
