//! A run's own folder (its embedded database and files): fresh for each
//! run, and removed with whatever still runs in it however the run ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a cluster stopped by the guard may take to exit before it is
/// killed outright: an immediate shutdown takes well under a second.
const CLUSTER_EXIT_WAIT: Duration = Duration::from_secs(10);

/// How often the guard looks whether the cluster has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// The run's folder; dropping it stops a cluster still running in it and
/// removes it (an orderly stop has stopped the cluster already).
pub(super) struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// A fresh folder, enterable by the server user (the embedded cluster
    /// may run as another user).
    pub(super) fn create() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!(
            "switchboard-load-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        // Guarded from here: a failure below still removes the folder.
        let dir = Self { path };
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755))?;
        Ok(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the run's embedded cluster keeps its data.
    pub(super) fn data_dir(&self) -> PathBuf {
        data_dir(&self.path)
    }
}

/// The data folder of the cluster of the run in `run`.
pub(super) fn data_dir(run: &Path) -> PathBuf {
    run.join("pg")
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Removing the files under a running cluster would leave it running.
        stop_leftover_cluster(&self.data_dir());
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Stops a cluster still running on `data_dir` at once (SIGQUIT,
/// PostgreSQL's immediate shutdown: its data is about to be removed).
fn stop_leftover_cluster(data_dir: &Path) {
    let Some(pid) = postmaster(data_dir) else {
        return;
    };
    if kill(Pid::from_raw(pid), Signal::SIGQUIT).is_err() {
        return;
    }
    let deadline = Instant::now() + CLUSTER_EXIT_WAIT;
    while running(pid) {
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return;
        }
        std::thread::sleep(EXIT_POLL);
    }
}

/// The pid in `postmaster.pid`, if that process works in `data_dir` (a
/// stale file may name a pid some other program has since).
pub(super) fn postmaster(data_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (cwd == std::fs::canonicalize(data_dir).ok()?).then_some(pid)
}

/// Whether `pid` still runs; a zombie has exited and only waits to be reaped.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
}
