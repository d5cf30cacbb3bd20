//! The media download jobs (table `media`): claimed by one process at a time
//! with `FOR UPDATE SKIP LOCKED`, a claim moving `next_attempt_at` one lease
//! ahead (a job whose process died comes due again then), and recorded as
//! downloaded, due again later, or failed for good.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Int4, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::schema::media;
use super::sql::Cached;
use crate::db::error::Result;

/// A claimed job: what the fetcher needs to download one file.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct MediaJob {
    #[diesel(sql_type = Text)]
    pub phone: String,
    #[diesel(sql_type = Text)]
    pub media_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub sha256: Option<String>,
    /// This attempt's number, from 1.
    #[diesel(sql_type = Int4)]
    pub attempts: i32,
}

/// Claims up to `limit` due jobs for `lease_ms`.
pub async fn claim(conn: &mut AsyncPgConnection, limit: i64, lease_ms: i64) -> Result<Vec<MediaJob>> {
    Ok(Cached::new(
        "WITH due AS (SELECT phone, media_id FROM media \
                      WHERE status = 'pending' AND next_attempt_at <= now() \
                      ORDER BY next_attempt_at LIMIT ",
    )
    .bind::<BigInt, _>(limit)
    .sql(
        " FOR UPDATE SKIP LOCKED) \
         UPDATE media AS m SET attempts = m.attempts + 1, updated_at = now(), \
                next_attempt_at = now() + ",
    )
    .bind::<BigInt, _>(lease_ms)
    .sql(
        " * interval '1 millisecond' \
         FROM due WHERE m.phone = due.phone AND m.media_id = due.media_id \
         RETURNING m.phone, m.media_id, m.sha256, m.attempts",
    )
    .load(conn)
    .await?)
}

/// How one attempt ended, to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// Kept at `path`: `bytes` long, of `mime_type` as the Graph API named it.
    Downloaded {
        path: String,
        bytes: i64,
        mime_type: Option<String>,
    },
    /// Due again after `delay_ms`.
    Retry { delay_ms: i64, reason: String },
    /// Never to be fetched (over the size limit, refused, out of attempts).
    Failed { reason: String },
}

/// Records how `job`'s attempt ended.
pub async fn record(conn: &mut AsyncPgConnection, job: &MediaJob, attempt: &Attempt) -> Result<()> {
    // Only while this claim holds: a claim taken over after its lease
    // (another process, one more attempt) is not overwritten by a late record.
    let row = media::table
        .find((&job.phone, &job.media_id))
        .filter(media::status.eq("pending"))
        .filter(media::attempts.eq(job.attempts));
    let now = diesel::dsl::now;
    match attempt {
        Attempt::Downloaded { path, bytes, mime_type } => {
            diesel::update(row)
                .set((
                    media::status.eq("downloaded"),
                    media::path.eq(path),
                    media::bytes.eq(bytes),
                    media::mime_type.eq(diesel::dsl::sql::<Nullable<Text>>("coalesce(")
                        .bind::<Nullable<Text>, _>(mime_type.as_deref())
                        .sql(", mime_type)")),
                    media::last_error.eq(None::<String>),
                    media::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
        }
        Attempt::Retry { delay_ms, reason } => {
            diesel::update(row)
                .set((
                    media::next_attempt_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>("now() + ")
                        .bind::<BigInt, _>(delay_ms)
                        .sql(" * interval '1 millisecond'")),
                    media::last_error.eq(reason),
                    media::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
        }
        Attempt::Failed { reason } => {
            diesel::update(row)
                .set((
                    media::status.eq("failed"),
                    media::last_error.eq(reason),
                    media::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// A media file as the API shows it beside its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = media, check_for_backend(diesel::pg::Pg))]
pub struct MediaInfo {
    #[serde(skip)]
    pub provider_message_id: String,
    #[diesel(column_name = media_id)]
    pub id: String,
    pub kind: String,
    pub mime_type: Option<String>,
    pub caption: Option<String>,
    /// `pending`, `downloaded` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[diesel(column_name = last_error)]
    pub error: Option<String>,
    #[serde(skip)]
    pub path: Option<String>,
}

/// The media files of a conversation's messages `provider_ids`.
pub async fn of_messages(conn: &mut AsyncPgConnection, phone: &str, provider_ids: &[&str]) -> Result<Vec<MediaInfo>> {
    if provider_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(media::table
        .filter(media::phone.eq(phone))
        .filter(media::provider_message_id.eq_any(provider_ids))
        .select(MediaInfo::as_select())
        .load(conn)
        .await?)
}

/// One media file of a conversation.
pub async fn get(conn: &mut AsyncPgConnection, phone: &str, media_id: &str) -> Result<Option<MediaInfo>> {
    Ok(media::table
        .find((phone, media_id))
        .select(MediaInfo::as_select())
        .first(conn)
        .await
        .optional()?)
}
