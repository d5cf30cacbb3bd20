//! Session rows: load, race-free create, and the versioned write.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncConnectionCore, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::sessions;
use crate::error::{Error, Result};
use crate::phone::mask;

/// A conversation's persisted state.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct SessionRecord {
    pub phone: String,
    pub flow_state: String,
    pub data: serde_json::Value,
    /// Number of transitions applied; starts at 0 and grows by exactly 1 per write.
    pub version: i64,
    pub handoff: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The new state a transition writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUpdate<'a> {
    pub flow_state: &'a str,
    pub data: &'a serde_json::Value,
    pub handoff: bool,
}

/// Reads a session, if it exists.
#[tracing::instrument(skip_all, fields(phone = %mask(phone)))]
///
/// Generic over the connection so it can also run pipelined with another
/// read on a shared `&AsyncPgConnection`.
pub async fn load<C>(conn: &mut C, phone: &str) -> Result<Option<SessionRecord>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    Ok(sessions::table
        .find(phone)
        .select(SessionRecord::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Returns the session of `phone`, creating it at version 0 in `initial_state`
/// if it does not exist. Race-free: concurrent callers all get the same row
/// (`INSERT … ON CONFLICT DO NOTHING`, then read).
#[tracing::instrument(skip_all, fields(phone = %mask(phone)))]
pub async fn load_or_create(conn: &mut AsyncPgConnection, phone: &str, initial_state: &str) -> Result<SessionRecord> {
    let inserted = diesel::insert_into(sessions::table)
        .values((sessions::phone.eq(phone), sessions::flow_state.eq(initial_state)))
        .on_conflict_do_nothing()
        .returning(SessionRecord::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    match inserted {
        Some(row) => Ok(row),
        None => load(conn, phone)
            .await?
            .ok_or_else(|| Error::NotFound(format!("session {} vanished after create", mask(phone)))),
    }
}

/// Writes `update` only if the stored version is `expected`, bumping it by
/// one. Zero rows updated is a [`Error::Conflict`] carrying the version found
/// (`None` if the session does not exist).
#[tracing::instrument(skip_all, fields(phone = %mask(phone), expected))]
pub async fn update_versioned(
    conn: &mut AsyncPgConnection,
    phone: &str,
    expected: i64,
    update: &SessionUpdate<'_>,
) -> Result<SessionRecord> {
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
        .optional()?;
    match updated {
        Some(row) => Ok(row),
        None => {
            let actual = sessions::table
                .find(phone)
                .select(sessions::version)
                .first::<i64>(conn)
                .await
                .optional()?;
            Err(Error::Conflict {
                phone: mask(phone),
                expected,
                actual,
            })
        }
    }
}
