//! Finding PostgreSQL's server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::db::error::{DbError, Result};

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
            Err(DbError::Embedded(format!(
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
        .ok_or_else(|| DbError::Embedded(MISSING_BINARIES.into()))
}
