//! The event feed's log (`events`): rows written beside the webhook rows
//! of the same events, in the causing transaction under the conversation's
//! lock, and read in (release, id) order by the SSE streams of any process
//! (see the migration `2026-12-05-000006_events` for why nothing committed
//! later can sort before what a reader has passed).

use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::error::Result;
use super::sql::Cached;
use super::steps::NewOutbox;

/// The row kind that marks a [`NewOutbox`] as a feed event, not a delivery.
pub const FEED_ROW: &str = "feed";

/// A place in the feed: after every event at or before (`release`, `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub release: i64,
    pub id: i64,
}

impl Position {
    /// The SSE `id`: 32 hex digits, so ids compare as strings and numbers alike.
    pub fn encode(self) -> String {
        format!("{:016x}{:016x}", self.release, self.id)
    }

    /// A position from its SSE `id`; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let release = i64::from_str_radix(&s[..16], 16).ok()?;
        let id = i64::from_str_radix(&s[16..], 16).ok()?;
        (release >= 0 && id >= 0).then_some(Self { release, id })
    }
}

/// One event read from the feed.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct FeedEvent {
    #[diesel(sql_type = BigInt)]
    pub release: i64,
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub phone: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub event_key: String,
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
}

impl FeedEvent {
    pub fn position(&self) -> Position {
        Position {
            release: self.release,
            id: self.id,
        }
    }
}

/// Splits `rows` into deliveries and feed events.
pub fn split(rows: &[NewOutbox]) -> (Vec<&NewOutbox>, Vec<&NewOutbox>) {
    rows.iter().partition(|r| r.kind != FEED_ROW)
}

/// The statement inserting feed rows (their conversations' locks held):
/// a row's release is one more than its transaction's id, or its
/// conversation's last event's release if that is larger.
pub fn insert_statement<'r>(rows: &[&'r NewOutbox]) -> Cached<'r> {
    Cached::new("INSERT INTO events (phone, kind, event_key, payload, release) \
         SELECT u.phone, u.kind, u.key, u.payload, \
                GREATEST(pg_current_xact_id()::text::int8 + 1, \
                         COALESCE((SELECT e.release FROM events e WHERE e.phone = u.phone ORDER BY e.id DESC LIMIT 1), 0)) \
         FROM unnest(")
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.phone.as_str()).collect::<Vec<_>>())
    .sql("::text[], ")
    .bind::<Array<Text>, _>(
        rows.iter()
            .map(|r| r.payload.get("type").and_then(|t| t.as_str()).unwrap_or("event"))
            .collect::<Vec<_>>(),
    )
    .sql("::text[], ")
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.idempotency_key.as_str()).collect::<Vec<_>>())
    .sql("::text[], ")
    .bind::<Array<Jsonb>, _>(rows.iter().map(|r| &r.payload).collect::<Vec<_>>())
    .sql(
        "::jsonb[]) WITH ORDINALITY AS u(phone, kind, key, payload, ord) \
         ORDER BY u.ord ON CONFLICT (phone, event_key) DO NOTHING",
    )
}

/// Inserts feed rows (the conversations' locks held by the caller).
pub async fn insert(conn: &mut AsyncPgConnection, rows: &[&NewOutbox]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    insert_statement(rows).execute(conn).await?;
    Ok(())
}

/// Up to `limit` events after `from` that every reader can take for good
/// (released: their transactions and their conversations' earlier ones
/// have ended), of conversation `only` if given, in feed order.
pub async fn after(
    conn: &mut AsyncPgConnection,
    from: Position,
    only: Option<&str>,
    limit: i64,
) -> Result<Vec<FeedEvent>> {
    Ok(diesel::sql_query(
        "SELECT release, id, phone, kind, event_key, payload FROM events \
         WHERE (release, id) > ($1, $2) \
           AND release <= pg_snapshot_xmin(pg_current_snapshot())::text::int8 \
           AND ($3::text IS NULL OR phone = $3) \
         ORDER BY release, id LIMIT $4",
    )
    .bind::<BigInt, _>(from.release)
    .bind::<BigInt, _>(from.id)
    .bind::<Nullable<Text>, _>(only)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?)
}

#[derive(QueryableByName)]
struct Head {
    #[diesel(sql_type = BigInt)]
    release: i64,
}

/// The position after every event a reader can take now: a subscriber
/// that starts here hears what is released from now on.
pub async fn head(conn: &mut AsyncPgConnection) -> Result<Position> {
    let h: Head = diesel::sql_query("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS release")
        .get_result(conn)
        .await?;
    Ok(Position {
        release: h.release,
        id: i64::MAX,
    })
}

/// Deletes up to `batch` events older than `keep_s` seconds; returns how many.
pub async fn prune(conn: &mut AsyncPgConnection, keep_s: i64, batch: i64) -> Result<usize> {
    Ok(diesel::sql_query(
        "DELETE FROM events WHERE (phone, id) IN \
         (SELECT phone, id FROM events WHERE created_at < now() - $1 * interval '1 second' \
          ORDER BY created_at LIMIT $2)",
    )
    .bind::<BigInt, _>(keep_s)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn positions_round_trip_and_sort_as_strings() {
        let a = Position { release: 9, id: 300 };
        let b = Position { release: 10, id: 2 };
        assert_eq!(Position::decode(&a.encode()), Some(a));
        assert!(a.encode() < b.encode() && a < b);
        assert_eq!(Position::decode("12"), None);
        assert_eq!(Position::decode("zz"), None);
    }
}
