//! Erasing a contact's personal data (`DELETE /api/contacts/{contact}`):
//! in one transaction under the conversation's lock, every table's rows of
//! the conversation lose their bodies, payloads, names and identifiers, and
//! the conversation key becomes a marker — the rows stay, so the counts
//! the invariants read (messages, outcomes, dead letters) still add up. An
//! audit row keeps the marker, the time and who asked; a redelivery of a
//! message sent before it is dropped as a duplicate (see
//! [`super::inbox::register_batch`]).

use diesel::sql_types::{Jsonb, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::{DbError, Result};

/// Every table, and what erasure does to it. A test compares this list
/// with the database's tables: a new table must say how it is erased.
pub const TABLES: [(&str, &str); 14] = [
    ("sessions", "deleted (the flow's data holds the slot values)"),
    ("messages", "body, provider id, error blanked; key → marker"),
    ("inbox", "payload, names, provider id blanked; key → marker"),
    (
        "outbox",
        "payload, provider id, error blanked, open rows failed; key → marker (also webhook lanes)",
    ),
    ("outcomes", "data blanked; key → marker"),
    (
        "dead_letters",
        "payload, dedupe key blanked; key → marker (also webhook lanes)",
    ),
    (
        "media",
        "caption, hash, provider id blanked, file deleted; key → marker",
    ),
    ("contact_links", "deleted (phone and BSUID → conversation)"),
    ("timers", "pending deleted; action blanked; key → marker"),
    ("events", "deleted (the feed: subscribers had them)"),
    ("erasures", "the audit row: marker, time, who asked, counts"),
    ("send_budget", "no personal data (a number's sends per second)"),
    ("template_status", "no personal data (WhatsApp's template states)"),
    ("__diesel_schema_migrations", "no personal data"),
];

/// The marker of contact identifier `id` (a phone, a BSUID) in `erasures`:
/// apart from conversation markers, so erasing one number's conversation
/// never reads as another's.
pub fn identifier_marker(id: &str) -> String {
    marker(&format!("identifier\0{id}"))
}

/// The marker that replaces conversation key `key`: `erased:` and a hash.
/// It cannot be read back; whoever knows a key can compute it (that is
/// how a redelivery of an erased message is recognised).
pub fn marker(key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"switchboard erasure\0")
        .chain_update(key.as_bytes())
        .finalize();
    format!("erased:{}", hex::encode(&digest[..16]))
}

/// What an erasure changed, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub marker: String,
    pub sessions: usize,
    pub messages: usize,
    pub inbox: usize,
    pub outbox: usize,
    pub outcomes: usize,
    pub dead_letters: usize,
    pub media: usize,
    pub contact_links: usize,
    pub timers: usize,
    pub events: usize,
    /// Media files kept on disk, to delete once the transaction committed.
    #[serde(skip)]
    pub files: Vec<String>,
}

/// One text column of a row: a media file's path, an identifier.
#[derive(QueryableByName)]
struct FilePath {
    #[diesel(sql_type = Text)]
    path: String,
}

/// One statement of the erasure: its SQL with `$1` the key and `$2` the marker.
async fn run(conn: &mut AsyncPgConnection, sql: &str, key: &str, marker: &str) -> Result<usize> {
    Ok(diesel::sql_query(sql)
        .bind::<Text, _>(key)
        .bind::<Text, _>(marker)
        .execute(conn)
        .await?)
}

/// A `phone` that is the conversation `$1` or one of its webhook lanes
/// (`webhook:<name>:$1`), and the same with `$1` replaced by `$2`.
/// (A webhook's name holds no `:`, so the lane's conversation is all after its second.)
const OF_CONVERSATION: &str =
    "(phone = $1 OR (phone LIKE 'webhook:%' AND substring(phone from '^webhook:[^:]*:(.*)$') = $1))";
const RENAMED: &str = "CASE WHEN phone = $1 THEN $2 ELSE left(phone, length(phone) - length($1)) || $2 END";

/// Erases conversation `key` of contact `contact` (see the module); `by`
/// names who asked.
pub async fn erase(conn: &mut AsyncPgConnection, key: &str, contact: &str, by: Option<&str>) -> Result<Erased> {
    conn.transaction::<_, DbError, _>(async move |conn| erase_in(conn, key, contact, by).await)
        .await
}

/// The erasure's statements, inside its transaction.
async fn erase_in(conn: &mut AsyncPgConnection, key: &str, contact: &str, by: Option<&str>) -> Result<Erased> {
    let marker = marker(key);
    let m = marker.as_str();
    // The conversation's lock: no step of it commits meanwhile.
    run(
        conn,
        "SELECT 1 FROM sessions WHERE phone = $1 AND $2 = $2 FOR UPDATE",
        key,
        m,
    )
    .await?;
    let files: Vec<FilePath> = diesel::sql_query("SELECT path FROM media WHERE phone = $1 AND path IS NOT NULL")
        .bind::<Text, _>(key)
        .load(conn)
        .await?;
    let mut e = Erased {
        marker: marker.clone(),
        files: files.into_iter().map(|f| f.path).collect(),
        ..Erased::default()
    };
    blank_rows(conn, key, m, &mut e).await?;
    // The contact's identifiers (phone, BSUID), once no conversation of it
    // is left (another number's keeps them): each gets an audit row of its
    // own, by which a redelivery is not linked again.
    let ids: Vec<FilePath> = diesel::sql_query(
        "DELETE FROM contact_links WHERE contact = $1 AND NOT EXISTS \
         (SELECT 1 FROM sessions WHERE phone = $1 OR phone LIKE '%:' || $1) RETURNING phone AS path",
    )
    .bind::<Text, _>(contact)
    .load(conn)
    .await?;
    e.contact_links = ids.len();
    let id_markers: Vec<String> = ids.iter().map(|i| identifier_marker(&i.path)).collect();
    diesel::sql_query(
        "INSERT INTO erasures (phone, requested_by, counts) SELECT m, $2, '{}' FROM unnest($1::text[]) AS m \
         ON CONFLICT (phone) DO UPDATE SET erased_at = now()",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(&id_markers)
    .bind::<Nullable<Text>, _>(by)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO erasures (phone, requested_by, counts) VALUES ($1, $2, $3) \
         ON CONFLICT (phone) DO UPDATE SET erased_at = now(), requested_by = EXCLUDED.requested_by, \
         counts = EXCLUDED.counts",
    )
    .bind::<Text, _>(m)
    .bind::<Nullable<Text>, _>(by)
    .bind::<Jsonb, _>(serde_json::to_value(&e).unwrap_or_default())
    .execute(conn)
    .await?;
    Ok(e)
}

/// The conversation's rows in every table: blanked and moved to marker
/// `m`, or deleted; counted in `e`.
async fn blank_rows(conn: &mut AsyncPgConnection, key: &str, m: &str, e: &mut Erased) -> Result<()> {
    e.sessions = run(conn, "DELETE FROM sessions WHERE phone = $1 AND $2 = $2", key, m).await?;
    e.messages = run(
        conn,
        "UPDATE messages SET phone = $2, body = '', provider_message_id = NULL, error = NULL WHERE phone = $1",
        key,
        m,
    )
    .await?;
    e.inbox = run(
        conn,
        "UPDATE inbox SET phone = $2, payload = '{}', provider_message_id = 'erased:' || id, \
         contact_name = NULL, contact_username = NULL, last_error = NULL, \
         processed_at = coalesce(processed_at, now()) WHERE phone = $1",
        key,
        m,
    )
    .await?;
    let outbox = format!(
        "UPDATE outbox SET phone = {RENAMED}, payload = '{{}}', provider_message_id = NULL, last_error = NULL, \
         status = CASE WHEN status IN ('pending', 'sending') THEN 'failed' ELSE status END WHERE {OF_CONVERSATION}"
    );
    e.outbox = run(conn, &outbox, key, m).await?;
    e.outcomes = run(
        conn,
        "UPDATE outcomes SET phone = $2, data = '{}' WHERE phone = $1",
        key,
        m,
    )
    .await?;
    let dead = format!(
        "UPDATE dead_letters SET phone = {RENAMED}, payload = '{{}}', dedupe_key = NULL WHERE {OF_CONVERSATION}"
    );
    e.dead_letters = run(conn, &dead, key, m).await?;
    e.media = run(
        conn,
        "UPDATE media SET phone = $2, caption = NULL, sha256 = NULL, path = NULL, \
         media_id = 'erased:' || md5(media_id), status = CASE WHEN status = 'pending' THEN 'failed' ELSE status END, \
         provider_message_id = 'erased', last_error = NULL WHERE phone = $1",
        key,
        m,
    )
    .await?;
    e.timers = run(
        conn,
        "DELETE FROM timers WHERE phone = $1 AND status = 'pending' AND $2 = $2",
        key,
        m,
    )
    .await?;
    e.timers += run(
        conn,
        "UPDATE timers SET phone = $2, action = '{}' WHERE phone = $1",
        key,
        m,
    )
    .await?;
    e.events = run(conn, "DELETE FROM events WHERE phone = $1 AND $2 = $2", key, m).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_marker_is_stable_and_names_no_key() {
        let m = super::marker("5215512345678");
        assert_eq!(m, super::marker("5215512345678"));
        assert!(m.starts_with("erased:") && !m.contains("5215512345678"));
        assert_ne!(m, super::marker("5215512345679"));
    }
}
