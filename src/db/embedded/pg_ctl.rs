//! Starting and stopping the server with `pg_ctl`.

use std::path::Path;

use super::runner::output_text;
use super::EmbeddedPostgres;
use crate::db::error::{DbError, Result};

/// Lines of `server.log` quoted when the server does not start.
const LOG_TAIL_LINES: usize = 8;

impl EmbeddedPostgres {
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
            return Err(DbError::Embedded(format!("pg_ctl stop failed: {}", output_text(&out))));
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
            return Err(DbError::Embedded(format!("pg_ctl stop failed: {}", output_text(&out))));
        }
        std::thread::sleep(down_for);
        self.pg_ctl_start()
    }

    fn status_running(&self) -> Result<bool> {
        let data = self.data_dir.to_string_lossy().into_owned();
        // pg_ctl status: 0 running, 3 not running, 4 no data directory.
        Ok(self.runner.run("pg_ctl", &["-D", &data, "status"])?.status.code() == Some(0))
    }

    /// Starts the server and waits for it, or adopts one already running on the data directory.
    pub(super) fn pg_ctl_start(&self) -> Result<()> {
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
            let tail = log_tail(Path::new(&log));
            return Err(DbError::Embedded(format!(
                "the server did not start (port {} in use? a database.embedded.server_settings \
                 entry it refuses?): {}\nlast lines of {log}:\n{tail}",
                self.port,
                output_text(&out)
            )));
        }
        Ok(())
    }
}

/// The end of the server's log, where it says why it refused to start.
fn log_tail(log: &Path) -> String {
    std::fs::read_to_string(log)
        .map(|l| {
            l.lines()
                .rev()
                .take(LOG_TAIL_LINES)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
