//! Contact identifiers (phones, BSUIDs) and the conversation each leads to.
//! The identifier is the table's `phone` column: every table is distributed
//! by a contact key.

use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::sql::Cached;
use crate::db::error::Result;

#[derive(diesel::QueryableByName)]
struct Link {
    #[diesel(sql_type = Text)]
    phone: String,
    #[diesel(sql_type = Text)]
    contact: String,
}

/// Links every identifier of `ids` (in order of preference: the phone,
/// then the BSUID, then any new identifier the message announced) that is
/// not linked yet to the key an earlier identifier of the list leads to,
/// else to `fresh` (the message's phone, else its BSUID); returns each
/// identifier's link as stored. An identifier already linked (by this or a
/// concurrent process, which the conflict waits for) keeps its link, and
/// the no-op update makes the statement return it: one round trip.
///
/// The linking statement commits without waiting for its flush
/// (`synchronous_commit = off`, for it alone): the message it was made for
/// is registered next with a synchronous commit, whose flush covers this
/// earlier WAL too, so no link of an acknowledged message can be lost —
/// and a new contact's first message does not pay a second disk flush.
///
/// An identifier erased after the message was sent (`sent_at`, Unix
/// seconds) is not linked again: the message is a redelivery of erased data.
pub async fn link(
    conn: &mut AsyncPgConnection,
    ids: &[&str],
    fresh: &str,
    sent_at: Option<i64>,
) -> Result<Vec<(String, String)>> {
    let markers: Vec<String> = ids.iter().map(|id| super::erasure::identifier_marker(id)).collect();
    // All or nothing: one identifier erased after the message was sent
    // makes it a redelivery of erased data, and nothing is linked.
    let rows: Vec<Link> = Cached::new("WITH u AS (SELECT * FROM unnest(")
        .bind::<Array<Text>, _>(ids)
        .sql("::text[], ")
        .bind::<Array<Text>, _>(markers)
        .sql(
            "::text[]) WITH ORDINALITY AS u(identifier, marker, ord)), \
             erased AS (SELECT 1 FROM u JOIN erasures e ON e.phone = u.marker AND e.erased_at >= to_timestamp(",
        )
        .bind::<Nullable<BigInt>, _>(sent_at)
        .sql(
            "::int8)), \
             ids AS (SELECT identifier, ord FROM u WHERE NOT EXISTS (SELECT 1 FROM erased)), \
             found AS (SELECT c.contact FROM contact_links c JOIN ids ON ids.identifier = c.phone \
                       ORDER BY ids.ord LIMIT 1), \
             cfg AS (SELECT set_config('synchronous_commit', 'off', true)), \
             chosen AS (SELECT coalesce((SELECT contact FROM found), ",
        )
        .bind::<Text, _>(fresh)
        .sql(
            "::text) AS contact FROM cfg) \
             INSERT INTO contact_links (phone, contact) \
             SELECT ids.identifier, chosen.contact FROM ids, chosen ORDER BY ids.identifier \
             ON CONFLICT (phone) DO UPDATE SET contact = contact_links.contact \
             RETURNING phone, contact",
        )
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.phone, r.contact)).collect())
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
