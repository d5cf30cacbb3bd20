//! The embedded cluster kept up: when its postmaster is gone (a full disk
//! under the WAL stops PostgreSQL for good; an operator's `pg_ctl stop`), it
//! is started again — looked at every [`EVERY`], tried until it starts —
//! instead of leaving the engine answering 503 until `serve` restarts. A
//! restart asked for (`restart`) holds the cluster's lock and a stop clears
//! `running`: both are left alone.

use std::sync::{Mutex, Weak};
use std::time::Duration;

use super::EmbeddedPostgres;
use crate::db::error::Result;

/// How often the postmaster is looked at (a null signal to its pid).
pub const EVERY: Duration = Duration::from_secs(2);

impl EmbeddedPostgres {
    /// Whether the postmaster answers a null signal.
    fn postmaster_alive(&self) -> bool {
        self.postmaster_pid()
            .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
    }

    /// Starts the server again if it should run and its postmaster is
    /// gone; `true` when it did.
    pub fn keep_up(&mut self) -> Result<bool> {
        if !self.running || self.postmaster_alive() {
            return Ok(false);
        }
        tracing::warn!("embedded PostgreSQL stopped on its own; starting it again");
        self.pg_ctl_start()?;
        tracing::info!("embedded PostgreSQL is up again");
        Ok(true)
    }
}

/// Keeps `pg` up until it is dropped.
pub async fn watch(pg: Weak<Mutex<EmbeddedPostgres>>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(pg) = pg.upgrade() else { break };
        let looked = tokio::task::spawn_blocking(move || {
            // Locked: a restart or a stop is under way.
            let Ok(mut pg) = pg.try_lock() else { return Ok(false) };
            pg.keep_up()
        })
        .await;
        match looked {
            Ok(Err(e)) => tracing::warn!(error = %e, "embedded PostgreSQL could not be started again; will try again"),
            Err(e) => tracing::warn!(error = %e, "the embedded PostgreSQL watch failed"),
            Ok(Ok(_)) => {}
        }
    }
}
