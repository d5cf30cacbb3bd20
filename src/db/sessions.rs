//! Session rows as stored, and their load. (The versioned write is part of
//! the step transaction, `db::steps`.)

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncConnectionCore, RunQueryDsl};
use serde::Serialize;

use super::schema::sessions;
use crate::db::error::Result;
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
    /// When the customer last wrote (that message's own timestamp): the
    /// 24-hour window runs from here. `None`: never.
    pub last_customer_at: Option<DateTime<Utc>>,
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
