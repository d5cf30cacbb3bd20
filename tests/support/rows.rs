//! One-row persistence paths the product does not take (it writes in
//! group-committed step batches and registers deliveries in batches), kept
//! for the tests and benchmarks that check and measure the primitives one
//! row at a time: the versioned UPDATE, race-free create, atomic dedupe.

#![allow(dead_code)]

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use scoped_futures::ScopedFutureExt;
use switchboard::db::schema::{inbox, sessions};
use switchboard::db::steps::{commit_batch_claiming, StepWrite, WriteOutcome};
use switchboard::db::{sessions as session_rows, Database, DbError, NewDelivery, Registration, SessionRecord};

/// The new state a versioned write sets.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUpdate<'a> {
    pub flow_state: &'a str,
    pub data: &'a serde_json::Value,
    pub handoff: bool,
}

/// A versioned write that found another version (`actual`: `None` when the
/// session does not exist), or failed otherwise.
#[derive(Debug)]
pub enum Versioned {
    Conflict { expected: i64, actual: Option<i64> },
    Failed(DbError),
}

impl From<DbError> for Versioned {
    fn from(e: DbError) -> Self {
        Versioned::Failed(e)
    }
}

/// The one-row paths, on a test's [`Database`].
#[allow(async_fn_in_trait)]
pub trait Rows {
    /// Atomic dedupe of one delivery (`INSERT … ON CONFLICT DO UPDATE … RETURNING`).
    async fn register_delivery(&self, d: &NewDelivery<'_>) -> Result<Registration, DbError>;
    /// The session of `phone`, created at version 0 if missing; race-free.
    async fn load_or_create_session(&self, phone: &str, initial_state: &str) -> Result<SessionRecord, DbError>;
    /// Writes `update` only if the stored version is `expected`.
    async fn update_session(
        &self,
        phone: &str,
        expected: i64,
        update: &SessionUpdate<'_>,
    ) -> Result<SessionRecord, Versioned>;
}

impl Rows for Database {
    async fn register_delivery(&self, d: &NewDelivery<'_>) -> Result<Registration, DbError> {
        self.run("register_delivery", |c| register(c, d).scope_boxed()).await
    }

    async fn load_or_create_session(&self, phone: &str, initial_state: &str) -> Result<SessionRecord, DbError> {
        self.run("load_or_create_session", |c| {
            load_or_create(c, phone, initial_state).scope_boxed()
        })
        .await
    }

    async fn update_session(
        &self,
        phone: &str,
        expected: i64,
        update: &SessionUpdate<'_>,
    ) -> Result<SessionRecord, Versioned> {
        let mut conn = self.pool().get().await?;
        update_versioned(&mut conn, phone, expected, update).await
    }
}

/// Commits a batch of step writes (nothing claimed for a dispatcher).
pub async fn commit_batch(conn: &mut AsyncPgConnection, writes: &[StepWrite]) -> Result<Vec<WriteOutcome>, DbError> {
    Ok(commit_batch_claiming(conn, writes, None).await?.0)
}

async fn register(conn: &mut AsyncPgConnection, d: &NewDelivery<'_>) -> Result<Registration, DbError> {
    use chrono::{DateTime, Utc};
    let (inbox_id, delivery_count, processed_at, leased_by) = diesel::insert_into(inbox::table)
        .values(d)
        .on_conflict((inbox::phone, inbox::provider_message_id))
        .do_update()
        .set((
            inbox::delivery_count.eq(inbox::delivery_count + 1),
            inbox::last_delivery_at.eq(diesel::dsl::now),
        ))
        .returning((inbox::id, inbox::delivery_count, inbox::processed_at, inbox::leased_by))
        .get_result::<(i64, i32, Option<DateTime<Utc>>, i64)>(conn)
        .await?;
    Ok(Registration {
        inbox_id,
        // The row lock serializes the upserts; only the insert sees count 1.
        first: delivery_count == 1,
        delivery_count,
        processed: processed_at.is_some(),
        leased_by,
    })
}

async fn load_or_create(
    conn: &mut AsyncPgConnection,
    phone: &str,
    initial_state: &str,
) -> Result<SessionRecord, DbError> {
    let inserted = diesel::insert_into(sessions::table)
        .values((sessions::phone.eq(phone), sessions::flow_state.eq(initial_state)))
        .on_conflict_do_nothing()
        .returning(SessionRecord::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    match inserted {
        Some(row) => Ok(row),
        None => session_rows::load(conn, phone)
            .await?
            .ok_or_else(|| DbError::NotFound("session vanished after create".into())),
    }
}

async fn update_versioned(
    conn: &mut AsyncPgConnection,
    phone: &str,
    expected: i64,
    update: &SessionUpdate<'_>,
) -> Result<SessionRecord, Versioned> {
    let updated = diesel::update(sessions::table)
        .filter(sessions::phone.eq(phone))
        .filter(sessions::version.eq(expected))
        .set((
            sessions::flow_state.eq(update.flow_state),
            sessions::data.eq(update.data),
            sessions::handoff.eq(update.handoff),
            sessions::version.eq(sessions::version + 1),
            sessions::updated_at.eq(diesel::dsl::now),
        ))
        .returning(SessionRecord::as_returning())
        .get_result(conn)
        .await
        .optional()
        .map_err(DbError::from)?;
    match updated {
        Some(row) => Ok(row),
        None => {
            let actual = sessions::table
                .find(phone)
                .select(sessions::version)
                .first::<i64>(conn)
                .await
                .optional()
                .map_err(DbError::from)?;
            Err(Versioned::Conflict { expected, actual })
        }
    }
}
