//! The invariant checker: run against the database after a load run.

use diesel::sql_types::{Array, BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::error::Result;

/// One check that found rows breaking it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub count: i64,
    /// A few offending keys (masked phones, ids), for a first look.
    pub examples: Vec<String>,
}

/// What the server acked that the database must show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// The good messages of the deliveries acked (200), each once:
    /// `(conversation key, provider id)`.
    pub acked: Vec<(String, String)>,
    /// The provider ids of the bad messages of acked deliveries: each must
    /// be dead-lettered, never applied.
    pub bad: Vec<String>,
    /// The good messages that shared an acked delivery with a bad one, as
    /// `acked`: each must be applied (or dead-lettered), never lost.
    pub beside_bad: Vec<(String, String)>,
}

impl Expected {
    /// Good messages acked in one delivery each, in conversation `key`.
    pub fn acked_in(key: &str, ids: &[&str]) -> Self {
        Self {
            acked: ids.iter().map(|id| (key.to_string(), id.to_string())).collect(),
            ..Self::default()
        }
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    key: String,
}

/// What a check's parameters are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// None: the database alone.
    Rows,
    /// [`Expected::acked`]: `$1` the conversation keys, `$2` the provider ids.
    Acked,
    /// [`Expected::bad`]: `$1` the provider ids.
    Bad,
    /// [`Expected::beside_bad`]: `$1` the conversation keys, `$2` the provider ids.
    BesideBad,
}

/// The message kinds the flow steps, as an SQL list: those of
/// `whatsapp::kinds::STEPPED` (a unit test keeps them in step).
macro_rules! stepped {
    () => {
        "('text', 'interactive', 'button', 'image', 'audio', 'video', 'document', 'sticker', 'location', 'contacts')"
    };
}

/// Each check selects the keys that break it (an empty result holds).
/// Messages are looked up in their conversation (the key their business
/// number and contact make), as the server files them.
const CHECKS: &[(&str, On, &str)] = &[
    (
        "every acked message is processed",
        On::Acked,
        "SELECT i.phone || ':' || i.provider_message_id AS key \
         FROM unnest($1::text[], $2::text[]) AS a(phone, id) \
         JOIN inbox i ON i.phone = a.phone AND i.provider_message_id = a.id \
         WHERE i.processed_at IS NULL",
    ),
    (
        // In its own conversation: a delivery of another number, or of a
        // username-only contact, filed elsewhere is not registered.
        "every acked message is registered",
        On::Acked,
        "SELECT a.phone || ':' || a.id AS key FROM unnest($1::text[], $2::text[]) AS a(phone, id) \
         WHERE NOT EXISTS (SELECT 1 FROM inbox i WHERE i.phone = a.phone AND i.provider_message_id = a.id)",
    ),
    (
        "each inbound message applied exactly once",
        On::Rows,
        "SELECT i.phone || ':' || i.provider_message_id AS key FROM inbox i \
         LEFT JOIN messages m ON m.phone = i.phone AND m.inbox_id = i.id AND m.origin = 'user' \
         WHERE i.processed_at IS NOT NULL AND NOT EXISTS \
               (SELECT 1 FROM dead_letters d WHERE d.phone = i.phone AND d.source = 'inbox' AND d.source_id = i.id) \
         GROUP BY i.phone, i.provider_message_id HAVING count(m.id) <> 1",
    ),
    (
        "no inbound message has its replies twice",
        On::Rows,
        "SELECT m.phone || ':' || m.inbox_id AS key FROM messages m WHERE m.origin = 'bot' \
         GROUP BY m.phone, m.inbox_id, m.outbox_key HAVING count(*) > 1",
    ),
    (
        "every reply has exactly one outbox row",
        On::Rows,
        "SELECT m.phone || ':' || coalesce(m.outbox_key, '-') AS key FROM messages m \
         WHERE m.direction = 'out' AND m.status <> 'skipped' AND NOT EXISTS \
               (SELECT 1 FROM outbox o WHERE o.phone = m.phone AND o.idempotency_key = m.outbox_key)",
    ),
    (
        // Stepped: the kinds of `whatsapp::kinds::STEPPED`, outside groups
        // (a unit test keeps the list in step); stored-only messages keep
        // the version. A fired timer is a step of its own.
        "versions are contiguous and count the applied steps",
        On::Rows,
        concat!("SELECT s.phone || ' v' || s.version AS key FROM sessions s \
         WHERE s.version <> (SELECT count(*) FROM timers t WHERE t.phone = s.phone AND t.status = 'fired') \
                          + (SELECT count(*) FROM messages m \
                             WHERE m.phone = s.phone AND (m.origin = 'agent' OR (m.origin = 'user' AND EXISTS ( \
                               SELECT 1 FROM inbox i WHERE i.phone = m.phone AND i.id = m.inbox_id \
                                 AND i.payload->'group_id' IS NULL AND i.payload->>'type' IN \
                                 ", stepped!(), "))))"),
    ),
    (
        // In inbox-id order, whichever process accepted each one (the
        // message rows' ids are the apply order).
        "messages of a phone are applied in acceptance order",
        On::Rows,
        "SELECT phone AS key FROM (SELECT m.phone, m.inbox_id, \
                lag(m.inbox_id) OVER (PARTITION BY m.phone ORDER BY m.id) AS prev \
              FROM messages m WHERE m.origin = 'user' AND m.inbox_id IS NOT NULL) t \
         WHERE prev IS NOT NULL AND inbox_id < prev GROUP BY phone",
    ),
    (
        "no outbox row is sent twice",
        On::Rows,
        "SELECT provider_message_id AS key FROM outbox WHERE provider_message_id IS NOT NULL \
         GROUP BY provider_message_id HAVING count(*) > 1",
    ),
    (
        // Kept at the webhook (`dead_letters::UNUSABLE`) with its reason,
        // under its id; the letter's `phone` is the sender as given, which
        // for a bad sender is no conversation at all.
        "every bad message of a delivery is dead-lettered, not applied",
        On::Bad,
        "SELECT b.id AS key FROM unnest($1::text[]) AS b(id) \
         WHERE NOT EXISTS (SELECT 1 FROM dead_letters d \
                           WHERE d.source = 'webhook' AND d.dedupe_key = b.id AND d.reason <> '') \
         UNION SELECT i.provider_message_id AS key FROM inbox i WHERE i.provider_message_id = ANY($1)",
    ),
    (
        // Applied: its inbox row and its message in its conversation; or
        // dead-lettered, from the inbox (poison) or at the webhook.
        "every good message of a delivery with a bad one is applied or dead-lettered",
        On::BesideBad,
        "SELECT a.phone || ':' || a.id AS key FROM unnest($1::text[], $2::text[]) AS a(phone, id) \
         WHERE NOT EXISTS (SELECT 1 FROM inbox i JOIN messages m \
                             ON m.phone = i.phone AND m.inbox_id = i.id AND m.origin = 'user' \
                           WHERE i.phone = a.phone AND i.provider_message_id = a.id) \
           AND NOT EXISTS (SELECT 1 FROM inbox i JOIN dead_letters d \
                             ON d.phone = i.phone AND d.source = 'inbox' AND d.source_id = i.id \
                           WHERE i.phone = a.phone AND i.provider_message_id = a.id) \
           AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.source = 'webhook' AND d.dedupe_key = a.id)",
    ),
    (
        // Left a few seconds: a timer coming due as the run ends.
        "every due timer fired or was cancelled",
        On::Rows,
        "SELECT phone || ':' || id AS key FROM timers \
         WHERE status = 'pending' AND due_at < now() - interval '5 seconds'",
    ),
    (
        "a fired timer's step has a version of its own, after the step that set it",
        On::Rows,
        concat!("SELECT t.phone || ':' || t.id AS key FROM timers t WHERE t.status = 'fired' AND (t.fired_version <= t.set_version \
            OR EXISTS (SELECT 1 FROM timers o WHERE o.phone = t.phone AND o.id <> t.id AND o.fired_version = t.fired_version) \
            OR EXISTS (SELECT 1 FROM inbox i WHERE i.phone = t.phone AND i.version = t.fired_version \
                         AND i.payload->'group_id' IS NULL AND i.payload->>'type' IN \
                         ", stepped!(), "))"),
    ),
    (
        // A stepped message applied between a reminder's setting and its
        // firing replaced it: it must not have fired. (Hand-off timeouts
        // run on while the customer writes; they are not checked here.)
        "no timer fired after a message that cancelled it",
        On::Rows,
        concat!("SELECT t.phone || ':' || t.id AS key FROM timers t WHERE t.status = 'fired' AND t.kind <> 'handoff' \
           AND EXISTS (SELECT 1 FROM inbox i WHERE i.phone = t.phone \
                         AND i.version > t.set_version AND i.version < t.fired_version \
                         AND i.payload->'group_id' IS NULL AND i.payload->>'type' IN \
                         ", stepped!(), ")"),
    ),
    (
        "a timer's messages are queued once, only if it fired and had something to send",
        On::Rows,
        "SELECT t.phone || ':' || t.id AS key FROM timers t \
         WHERE (t.status = 'fired' AND t.outcome IN ('replied', 'template')) \
               <> EXISTS (SELECT 1 FROM outbox o WHERE o.phone = t.phone \
                            AND o.idempotency_key LIKE 'timer:' || t.id || ':%')",
    ),
];

/// Runs every check against what the run sent and the server acked.
pub async fn check(database_url: &str, expected: &Expected) -> Result<Vec<Violation>> {
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    let mut out = Vec::new();
    for (name, on, sql) in CHECKS {
        let rows = offending(&mut conn, *on, sql, expected).await?;
        if !rows.is_empty() {
            out.push(Violation {
                invariant: name,
                count: rows.len() as i64,
                examples: rows.into_iter().take(5).map(|r| r.key).collect(),
            });
        }
    }
    Ok(out)
}

/// The rows breaking one check, run with the parameters it is `on`.
async fn offending(conn: &mut AsyncPgConnection, on: On, sql: &str, e: &Expected) -> Result<Vec<Row>> {
    let q = diesel::sql_query(sql);
    let pairs = match on {
        On::Rows => return Ok(q.load(conn).await?),
        On::Bad => return Ok(q.bind::<Array<Text>, _>(e.bad.as_slice()).load(conn).await?),
        On::Acked => &e.acked,
        On::BesideBad => &e.beside_bad,
    };
    let (keys, ids): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    Ok(q.bind::<Array<Text>, _>(keys.as_slice())
        .bind::<Array<Text>, _>(ids.as_slice())
        .load(conn)
        .await?)
}

/// Outbox rows the send API accepted more than once, from the keys of the
/// sends it accepted (one entry per acceptance): `(real, after_crash)`. A
/// row claimed again after its sender died mid-send (`attempts` > 1) can be
/// sent again — WhatsApp's send API has no idempotency key — and is
/// counted apart; any other repeat is a bug.
pub async fn repeated_sends(database_url: &str, accepted: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    #[derive(QueryableByName)]
    struct Attempts {
        #[diesel(sql_type = Text)]
        key: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        attempts: i32,
    }
    let mut seen = std::collections::HashMap::<&str, u32>::new();
    for k in accepted {
        *seen.entry(k.as_str()).or_default() += 1;
    }
    let twice: Vec<String> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k.to_string())
        .collect();
    if twice.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    let rows: Vec<Attempts> =
        diesel::sql_query("SELECT idempotency_key AS key, attempts FROM outbox WHERE idempotency_key = ANY($1)")
            .bind::<Array<Text>, _>(&twice)
            .load(&mut conn)
            .await?;
    let retried: std::collections::HashSet<String> =
        rows.into_iter().filter(|r| r.attempts > 1).map(|r| r.key).collect();
    Ok(twice.into_iter().partition(|k| !retried.contains(k)))
}

/// Rows in `table` (for reports).
pub async fn count(database_url: &str, sql: &str) -> Result<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    let r: N = diesel::sql_query(sql).get_result(&mut conn).await?;
    Ok(r.n)
}

/// A server setting (`SHOW name`).
pub async fn setting(database_url: &str, name: &str) -> Result<String> {
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        v: String,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    let r: S = diesel::sql_query(format!("SELECT current_setting('{}') AS v", name.replace('\'', "")))
        .get_result(&mut conn)
        .await?;
    Ok(r.v)
}

#[cfg(test)]
mod tests {
    use crate::whatsapp::kinds::STEPPED;

    #[test]
    fn the_version_check_counts_exactly_the_kinds_the_flow_steps() {
        let sql = stepped!();
        let listed = sql.matches("', '").count() + 1;
        assert_eq!(listed, STEPPED.len(), "{sql}");
        for kind in STEPPED {
            assert!(sql.contains(&format!("'{kind}'")), "{kind} missing from {sql}");
        }
    }
}
