//! Contact identifiers (phones, BSUIDs) and the conversation each leads to.
//! The identifier is the table's `phone` column: every table is distributed
//! by a contact key.

use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::sql::Cached;
use crate::db::error::Result;

#[derive(diesel::QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    contact: String,
}

/// The conversation key of a contact known by `ids` (in order of
/// preference: its phone, then its BSUID, then any new identifier it
/// announced): the key an earlier identifier was linked to, else `fresh`.
/// Every identifier not linked yet is linked to that key, in the same
/// statement. `fresh` is a function of the message (its phone, else its
/// BSUID), so two processes racing on a new contact pick the same key.
///
/// The statement commits without waiting for its flush
/// (`synchronous_commit = off`, for it alone): the message it was made for
/// is registered next with a synchronous commit, whose flush covers this
/// earlier WAL too, so no link of an acknowledged message can be lost —
/// and a new contact's first message does not pay a second disk flush.
pub async fn conversation_key(conn: &mut AsyncPgConnection, ids: &[&str], fresh: &str) -> Result<String> {
    let key: Key = Cached::new("WITH ids AS (SELECT u.identifier, u.ord FROM unnest(")
        .bind::<Array<Text>, _>(ids)
        .sql(
            "::text[]) WITH ORDINALITY AS u(identifier, ord)), \
             found AS (SELECT c.contact FROM contact_links c JOIN ids ON ids.identifier = c.phone \
                       ORDER BY ids.ord LIMIT 1), \
             cfg AS (SELECT set_config('synchronous_commit', 'off', true)), \
             chosen AS (SELECT coalesce((SELECT contact FROM found), ",
        )
        .bind::<Text, _>(fresh)
        .sql(
            "::text) AS contact FROM cfg), \
             linked AS (INSERT INTO contact_links (phone, contact) \
                        SELECT ids.identifier, chosen.contact FROM ids, chosen ORDER BY ids.identifier \
                        ON CONFLICT (phone) DO NOTHING) \
             SELECT contact FROM chosen",
        )
        .get_result(conn)
        .await?;
    Ok(key.contact)
}

/// The conversation key `identifier` is linked to, if it is.
pub async fn linked(conn: &mut AsyncPgConnection, identifier: &str) -> Result<Option<String>> {
    use diesel::{OptionalExtension, QueryDsl};

    use crate::db::schema::contact_links;
    Ok(contact_links::table
        .find(identifier)
        .select(contact_links::contact)
        .first(conn)
        .await
        .optional()?)
}
