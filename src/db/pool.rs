//! The one connection pool of a process. Every limit is explicit here.

use std::time::{Duration, Instant};

use diesel::IntoSql;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolableConnection, RecyclingMethod, SetupCallback,
};
use diesel_async::RunQueryDsl;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;
use serde::Serialize;

use crate::config::DatabaseSettings;
use crate::db::error::{DbError, Result};

/// How often the pool closes idle and aged connections. bb8's reaper task
/// holds its pool weakly and ends at its first tick after the pool is gone:
/// at bb8's default (30 s) it outlived every stopped engine by up to that.
const REAPER_RATE: Duration = Duration::from_secs(1);

/// `application_name` of every pooled connection, so operators (and the
/// connection-kill tests) can find the engine's backends in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "switchboard";

/// A pooled connection, borrowed from [`DbPool`].
pub type Conn<'a> = PooledConnection<'a, AsyncPgConnection>;

/// The pool plus the acquire timeout it was built with (bb8 does not report it).
#[derive(Clone)]
pub struct DbPool {
    /// Shared by every clone: bb8 keeps the connections behind an `Arc`.
    pool: Pool<AsyncPgConnection>,
    acquire_timeout: Duration,
}

/// Pool figures for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PoolStats {
    pub max_size: u32,
    pub connections: u32,
    pub idle: u32,
    pub gets: u64,
    pub gets_waited: u64,
    pub gets_timed_out: u64,
    /// Callers waiting for a connection right now.
    pub waiting: u64,
    pub wait_time_ms: u64,
    pub created: u64,
    pub closed_broken: u64,
    pub closed_invalid: u64,
}

impl DbPool {
    /// Builds the pool. Connections are opened lazily (up to `min_idle` in the
    /// background), so building never fails because the server is down: the
    /// first `get` reports it as a retryable error instead.
    pub fn build(url: &str, s: &DatabaseSettings) -> Self {
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        config.custom_setup = session_setup(s);
        config.recycling_method = checkout_test(s.checkout_query);
        let url = super::tcp::with_dead_peer_detection(url, s.tcp_user_timeout_s);
        let manager = AsyncDieselConnectionManager::new_with_config(url, config);
        let pool = Pool::builder()
            .max_size(s.max_connections)
            .min_idle(Some(s.min_idle))
            .connection_timeout(s.acquire_timeout())
            .idle_timeout(Some(Duration::from_secs(s.idle_timeout_s)))
            .max_lifetime(Some(Duration::from_secs(s.max_lifetime_s)))
            .reaper_rate(REAPER_RATE)
            .test_on_check_out(s.test_on_checkout)
            // Connect errors are retried inside the acquire timeout; callers
            // see one pool-timeout error, not a storm of connect errors.
            .retry_connection(true)
            .error_sink(Box::new(LogErrorSink))
            .build_unchecked(manager);
        Self {
            pool,
            acquire_timeout: s.acquire_timeout(),
        }
    }

    /// Borrows a connection, waiting at most the acquire timeout.
    pub async fn get(&self) -> Result<Conn<'_>> {
        let start = Instant::now();
        self.pool.get().await.map_err(|e| match DbError::from(e) {
            DbError::PoolTimeout(_) => DbError::PoolTimeout(start.elapsed().max(self.acquire_timeout)),
            other => other,
        })
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.pool.state();
        let st = state.statistics;
        PoolStats {
            max_size: self.pool.config().max_size,
            connections: state.connections,
            idle: state.idle_connections,
            gets: st.get_direct + st.get_waited + st.get_timed_out,
            gets_waited: st.get_waited,
            gets_timed_out: st.get_timed_out,
            waiting: st.pending_gets(),
            wait_time_ms: st.get_wait_time.as_millis() as u64,
            created: st.connections_created,
            closed_broken: st.connections_closed_broken,
            closed_invalid: st.connections_closed_invalid,
        }
    }
}

/// How each new connection is opened: within the connect timeout, then set up by [`session_settings`].
fn session_setup(s: &DatabaseSettings) -> SetupCallback<AsyncPgConnection> {
    let settings = session_settings(s);
    let connect_timeout = s.connect_timeout();
    Box::new(move |url| {
        let url = url.to_string();
        let settings = settings.clone();
        async move {
            let mut conn = tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(&url))
                .await
                .map_err(|_| {
                    diesel::ConnectionError::BadConnection(format!("connect timed out after {connect_timeout:?}"))
                })??;
            conn.batch_execute(&settings)
                .await
                .map_err(|e| diesel::ConnectionError::BadConnection(format!("session set-up failed: {e}")))?;
            Ok(conn)
        }
        .boxed()
    })
}

/// The `SET`s every connection starts with: its name (for `pg_stat_activity`), its timeouts, the planner.
fn session_settings(s: &DatabaseSettings) -> String {
    // Prepared statements may keep a generic plan made while a table was small (a sequential scan);
    // the hot statements read by key, where an index nested loop is right at any size.
    let statement_timeout = s.statement_timeout_ms;
    let idle_tx_timeout = s.idle_in_transaction_timeout_ms;
    format!(
        "SET application_name = '{APPLICATION_NAME}'; \
         SET statement_timeout = {statement_timeout}; \
         SET idle_in_transaction_session_timeout = {idle_tx_timeout}; \
         SET plan_cache_mode = auto; \
         SET enable_seqscan = off; \
         SET enable_hashjoin = off; \
         SET enable_mergejoin = off;"
    )
}

/// bb8's checkout test (`test_on_checkout`): the client's own view of the
/// connection, without a round trip, unless `query` adds a `SELECT 1`.
fn checkout_test(query: bool) -> RecyclingMethod<AsyncPgConnection> {
    // No round trip by default: one per checkout through a busy server costs more than a connection
    // that died unseen, which fails its first statement retryably so the retry gets another.
    RecyclingMethod::CustomFunction(Box::new(move |conn| {
        async move {
            if query {
                diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                    .get_result::<i32>(&mut *conn)
                    .await?;
            }
            if PoolableConnection::is_broken(conn) {
                return Err(diesel::result::Error::BrokenTransactionManager);
            }
            Ok(())
        }
        .boxed()
    }))
}

#[derive(Debug, Clone, Copy)]
struct LogErrorSink;

impl bb8::ErrorSink<diesel_async::pooled_connection::PoolError> for LogErrorSink {
    fn sink(&self, e: diesel_async::pooled_connection::PoolError) {
        tracing::warn!(error = %e, "database connection failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<diesel_async::pooled_connection::PoolError>> {
        Box::new(*self)
    }
}
