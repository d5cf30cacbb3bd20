//! Persistence on PostgreSQL: the embedded cluster, the pool, migrations, and
//! the primitives every contract rests on (versioned write, atomic dedupe).
//!
//! [`Database`] is the handle the rest of the engine uses: one pool per
//! process and a retry policy for transient errors.

pub mod contacts;
pub mod dead_letters;
pub mod embedded;
pub mod erasure;
pub mod error;
pub mod events;
pub mod inbox;
pub mod media;
pub mod migrations;
pub mod outbox;
pub mod pipelined;
pub mod pool;
pub mod read;
pub mod replica;
pub mod resume;
pub mod retention;
pub mod send_budget;
#[rustfmt::skip]
pub mod schema;
pub mod sessions;
pub mod sql;
pub mod steps;
pub mod tcp;
pub mod templates;
pub mod timers;
pub mod told;

use std::sync::{Arc, Mutex};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use scoped_futures::{ScopedBoxFuture, ScopedFutureExt};

pub use embedded::EmbeddedPostgres;
pub use error::DbError;
pub use inbox::{InboxRecord, NewDelivery, Registration};
pub use pool::{Conn, DbPool, PoolStats};
pub use sessions::SessionRecord;

use crate::config::{DatabaseSettings, Secret};
use crate::retry::RetryPolicy;
use error::Result;

/// The database of one process: its pool, its retry policy and, when
/// embedded, the cluster it runs (stopped when the last clone is dropped or
/// [`Database::shutdown`] is called).
#[derive(Clone)]
pub struct Database {
    pool: DbPool,
    retry: RetryPolicy,
    url: Secret,
    embedded: Option<Arc<Mutex<EmbeddedPostgres>>>,
    /// The streaming replica for conversation reads, if configured.
    replica: Option<Arc<replica::Replica>>,
    /// The longest one attempt waits for the server's answer.
    answer_timeout: std::time::Duration,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &crate::config::redact_url(self.url.expose()))
            .field("embedded", &self.embedded.is_some())
            .finish()
    }
}

impl Database {
    /// Starts the embedded cluster if no URL is configured, applies pending
    /// migrations, and builds the pool.
    #[tracing::instrument(skip_all)]
    pub async fn open(settings: &DatabaseSettings) -> Result<Self> {
        let (url, embedded) = match &settings.url {
            Some(url) => (url.clone(), None),
            None => {
                let s = settings.embedded.clone();
                let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&s, &[]))
                    .await
                    .map_err(|e| DbError::Embedded(format!("start task failed: {e}")))??;
                create_database_if_missing(pg.url_for("postgres").expose(), embedded::DATABASE).await?;
                let url = pg.url();
                let pg = Arc::new(Mutex::new(pg));
                // Started again if its postmaster goes (see `keep_up`).
                tokio::spawn(embedded::keep_up::watch(Arc::downgrade(&pg)));
                (url, Some(pg))
            }
        };
        let applied = migrations::run_pending(url.expose()).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied migrations");
        }
        Ok(Self::with_url(url, settings, embedded))
    }

    /// A handle on an already migrated database (no embedded cluster).
    /// Call it inside a tokio runtime: the pool spawns its maintenance task.
    pub fn connect(url: Secret, settings: &DatabaseSettings) -> Self {
        Self::with_url(url, settings, None)
    }

    fn with_url(url: Secret, settings: &DatabaseSettings, embedded: Option<Arc<Mutex<EmbeddedPostgres>>>) -> Self {
        Self {
            pool: DbPool::build(url.expose(), settings),
            retry: (&settings.retry).into(),
            answer_timeout: settings.answer_timeout(),
            url,
            embedded,
            replica: settings
                .read_url
                .as_ref()
                .map(|r| Arc::new(replica::Replica::new(DbPool::build(r.expose(), settings)))),
        }
    }

    /// Restarts the embedded cluster (see [`EmbeddedPostgres::restart`]);
    /// for fault injection. An error without an embedded cluster.
    pub async fn restart_embedded(&self, mode: &'static str, down_for: std::time::Duration) -> Result<()> {
        let Some(pg) = self.embedded.clone() else {
            return Err(DbError::Embedded("no embedded cluster to restart".into()));
        };
        tokio::task::spawn_blocking(move || pg.lock().unwrap_or_else(|p| p.into_inner()).restart(mode, down_for))
            .await
            .map_err(|e| DbError::Embedded(format!("restart task failed: {e}")))?
    }

    /// The replica handle, when `database.read_url` is set.
    pub fn replica(&self) -> Option<&replica::Replica> {
        self.replica.as_deref()
    }

    /// A connection to read `phone`'s conversation (or, with `None`, lists)
    /// from: the replica when it has replayed this process's last write of
    /// it (see [`replica`]), else the primary. `true` when on the replica.
    pub async fn read_conn(&self, phone: Option<&str>) -> Result<(Conn<'_>, bool)> {
        let Some(r) = self.replica.as_deref() else {
            return Ok((self.pool.get().await?, false));
        };
        let need = match r.fence(phone) {
            Some(lsn) => lsn,
            None => replica::primary_lsn(&mut *self.pool.get().await?).await?,
        };
        if need != replica::ALWAYS_PRIMARY {
            // A replica that is down or behind costs a fallback, not an error.
            if let Ok(mut conn) = r.pool.get().await {
                if let Ok(Some(replayed)) = replica::replay_lsn(&mut conn).await {
                    if replayed >= need {
                        r.counted(true);
                        return Ok((conn, true));
                    }
                }
            }
        }
        r.counted(false);
        Ok((self.pool.get().await?, false))
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The longest one attempt waits for the server's answer.
    pub fn answer_timeout(&self) -> std::time::Duration {
        self.answer_timeout
    }

    /// Runs `op` on a pooled connection, retrying transient errors (a lost
    /// connection, a pool timeout, a deadlock) on a fresh one: the one way
    /// callers reach the pool for a statement or a short transaction.
    /// The closure answers a scoped boxed future (`async move { … }.scope_boxed()`):
    /// it may borrow the connection and the caller's data, and stays `Send`.
    pub async fn run<'a, T, F>(&self, what: &'static str, mut op: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut AsyncPgConnection) -> ScopedBoxFuture<'a, 'c, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let mut attempt = 1;
        loop {
            let result = match self.pool.get().await {
                Ok(mut conn) => self.answered(op(&mut conn)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) => tokio::time::sleep(self.retry.after(what, attempt, e)?).await,
            }
            attempt += 1;
        }
    }

    /// Runs `op` once on a pooled connection, without retrying: for callers
    /// that have a fallback of their own (an operations figure, a replica
    /// position, the next dispatcher round), where a retry would only delay it.
    pub async fn once<'a, T, F>(&self, op: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> ScopedBoxFuture<'a, 'c, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let mut conn = self.pool.get().await?;
        self.answered(op(&mut conn)).await
    }

    /// `attempt`, or a retryable error once the server has not answered
    /// within the answer timeout (it stopped answering without closing).
    async fn answered<T>(&self, attempt: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.answer_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(DbError::Connection(format!(
                    "no answer from the database within {:?}",
                    self.answer_timeout
                )))
            })
    }

    /// The URL in use (a secret: it may carry a password).
    pub fn url(&self) -> &Secret {
        &self.url
    }

    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Reads a session, retrying transient errors.
    pub async fn load_session(&self, phone: &str) -> Result<Option<SessionRecord>> {
        self.run("load_session", |c| sessions::load(c, phone).scope_boxed())
            .await
    }

    /// A conversation's activation: its session and the inbox rows waiting
    /// for it that `holder` may resume (at most `limit`), read on one
    /// connection in one round trip — the two statements are pipelined.
    /// Thousands of conversations activate at once after a start: this
    /// halves their checkouts and round trips (no latency difference was
    /// measurable on the project's 2-core machine; BENCHMARKS.md).
    pub async fn load_session_and_unprocessed(
        &self,
        phone: &str,
        holder: i64,
        limit: i64,
    ) -> Result<(Option<SessionRecord>, Vec<resume::PendingInbound>)> {
        self.run("load_session_and_unprocessed", |conn| {
            async move {
                let (mut first, mut second): (&AsyncPgConnection, &AsyncPgConnection) = (conn, conn);
                futures_util::try_join!(
                    sessions::load(&mut first, phone),
                    resume::unprocessed(&mut second, phone, holder, limit)
                )
            }
            .scope_boxed()
        })
        .await
    }

    /// Whether the database answers now (for readiness).
    pub async fn ping(&self) -> Result<()> {
        // A readiness probe: a server silent for two seconds is not ready.
        let within = self.answer_timeout.min(std::time::Duration::from_secs(2));
        let mut conn = self.pool.get().await?;
        match tokio::time::timeout(within, diesel::sql_query("SELECT 1").execute(&mut *conn)).await {
            Ok(answer) => answer.map(|_| ()).map_err(DbError::from),
            Err(_) => Err(DbError::Connection(format!("no answer to a ping within {within:?}"))),
        }
    }

    /// Stops the embedded cluster, if this process runs one. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(pg) = self.embedded.clone() {
            tokio::task::spawn_blocking(move || match pg.lock() {
                Ok(mut pg) => pg.stop(),
                Err(poisoned) => poisoned.into_inner().stop(),
            })
            .await
            .map_err(|e| DbError::Embedded(format!("stop task failed: {e}")))??;
        }
        Ok(())
    }
}

/// Creates `name` on the server at `admin_url` unless it exists. Two
/// processes racing here both succeed.
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> Result<()> {
    use diesel::sql_types::Text;
    let mut conn = AsyncPgConnection::establish(admin_url).await?;
    let exists: i64 =
        diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT count(*) FROM pg_database WHERE datname = ")
            .bind::<Text, _>(name)
            .get_result(&mut conn)
            .await?;
    if exists == 0 {
        let quoted = name.replace('"', "\"\"");
        match diesel::sql_query(format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Created meanwhile by another process.
            Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {}
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
