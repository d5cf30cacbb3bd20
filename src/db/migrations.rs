//! Embedded diesel migrations, run through diesel-async's connection wrapper.

use diesel::Connection;
use diesel::RunQueryDsl;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use serde::Serialize;

use crate::db::error::{DbError, Result};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key held while migrating, so processes starting together
/// migrate one at a time ("swbd" in ASCII).
const MIGRATION_LOCK: i64 = 0x7377_6264;

type SyncConn = AsyncConnectionWrapper<AsyncPgConnection>;

/// One migration and whether it is applied.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigrationState {
    pub version: String,
    pub applied: bool,
}

/// Applies every pending migration; returns the versions applied.
#[tracing::instrument(skip_all)]
pub async fn run_pending(url: &str) -> Result<Vec<String>> {
    with_conn(url, |conn| {
        conn.run_pending_migrations(MIGRATIONS)
            .map(|v| v.into_iter().map(|m| m.to_string()).collect())
    })
    .await
}

/// Reverts the newest applied migration; returns its version.
#[tracing::instrument(skip_all)]
pub async fn revert_last(url: &str) -> Result<String> {
    with_conn(url, |conn| {
        conn.revert_last_migration(MIGRATIONS).map(|v| v.to_string())
    })
    .await
}

/// Reverts every applied migration, newest first.
#[tracing::instrument(skip_all)]
pub async fn revert_all(url: &str) -> Result<Vec<String>> {
    with_conn(url, |conn| {
        conn.revert_all_migrations(MIGRATIONS)
            .map(|v| v.into_iter().map(|m| m.to_string()).collect())
    })
    .await
}

/// Every known migration, oldest first, with its state.
#[tracing::instrument(skip_all)]
pub async fn status(url: &str) -> Result<Vec<MigrationState>> {
    with_conn(url, |conn| {
        let applied: Vec<String> = conn.applied_migrations()?.into_iter().map(|v| v.to_string()).collect();
        let mut all: Vec<MigrationState> =
            diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)?
                .iter()
                .map(|m| {
                    let version = m.name().version().to_string();
                    MigrationState {
                        applied: applied.contains(&version),
                        version,
                    }
                })
                .collect();
        all.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(all)
    })
    .await
}

/// Runs `f` on a dedicated (not pooled) connection under the migration lock.
/// The wrapper is synchronous, so it runs on a blocking thread.
async fn with_conn<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut SyncConn) -> diesel::migration::Result<T> + Send + 'static,
) -> Result<T> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut conn = SyncConn::establish(&url)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).execute(&mut conn)?;
        let result = f(&mut conn).map_err(|e| DbError::Migration(e.to_string()));
        let unlock = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).execute(&mut conn);
        let value = result?;
        unlock?;
        Ok(value)
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}
