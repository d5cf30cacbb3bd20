//! The team's webhook rows written beside a change that is not a step — a
//! delivery status, a send's mark — in its transaction, under the lock of
//! each conversation they are told of (as a step inserts its rows), so a
//! lane's rows keep their conversation's order.

use diesel::sql_types::{Array, Jsonb, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::error::Result;
use super::steps::NewOutbox;

/// What makes the webhook rows of a delivery status in a conversation.
pub type StatusRows<'a> = &'a (dyn Fn(&str) -> Vec<NewOutbox> + Sync);

/// What makes the webhook rows of the messages just marked sent.
pub type SentRows<'a> = &'a (dyn Fn(&[SentMessage]) -> Vec<NewOutbox> + Sync);

/// An outbound message just marked sent, as its `message.sent` event tells it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct SentMessage {
    #[diesel(sql_type = Text)]
    pub phone: String,
    #[diesel(sql_type = Text)]
    pub origin: String,
    #[diesel(sql_type = Text)]
    pub body: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub author: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub provider_message_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub outbox_key: Option<String>,
}

/// The messages of the rows `(phones[i], keys[i])` (outbox keys).
pub async fn sent_messages(conn: &mut AsyncPgConnection, phones: &[&str], keys: &[&str]) -> Result<Vec<SentMessage>> {
    Ok(diesel::sql_query(
        "SELECT m.phone, m.origin, m.body, m.author, m.provider_message_id, m.outbox_key \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(phone, key, ord) \
         JOIN messages m ON m.phone = u.phone AND m.outbox_key = u.key ORDER BY u.ord",
    )
    .bind::<Array<Text>, _>(phones)
    .bind::<Array<Text>, _>(keys)
    .load(conn)
    .await?)
}

/// Inserts `rows` (webhook lanes of the conversations `of` names), each
/// conversation locked first, in order; a row already there stays.
pub async fn insert(conn: &mut AsyncPgConnection, rows: &[NewOutbox], of: impl Fn(&str) -> &str) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (rows, feed) = super::events::split(rows);
    let mut conversations: Vec<&str> = rows.iter().chain(&feed).map(|r| of(&r.phone)).collect();
    conversations.sort_unstable();
    conversations.dedup();
    diesel::sql_query("SELECT 1 FROM sessions WHERE phone = ANY($1) ORDER BY phone FOR UPDATE")
        .bind::<Array<Text>, _>(&conversations)
        .execute(conn)
        .await?;
    super::events::insert(conn, &feed).await?;
    if rows.is_empty() {
        return Ok(());
    }
    // One statement, the rows in their order (their ids: each lane's order).
    diesel::sql_query(
        "INSERT INTO outbox (phone, kind, payload, idempotency_key) \
         SELECT u.phone, u.kind, u.payload, u.key \
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[]) WITH ORDINALITY AS u(phone, kind, payload, key, ord) \
         ORDER BY u.ord ON CONFLICT DO NOTHING",
    )
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.phone.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(rows.iter().map(|r| &r.payload).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(rows.iter().map(|r| r.idempotency_key.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
