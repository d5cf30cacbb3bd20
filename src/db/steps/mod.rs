//! The step transaction: everything one conversation step changes, written
//! together, for a batch of phones at once (group commit); several steps
//! of one phone go as a chain, each on the version the one before made.
//!
//! One batch = one transaction:
//! 1. lock the batch's session rows in phone order (`FOR UPDATE`, sorted, so
//!    concurrent batches cannot deadlock) and read their versions;
//! 2. drop the writes whose expected version is stale (a conflict) or whose
//!    inbound message is already processed (a duplicate);
//! 3. apply the rest with one statement per table: versioned session
//!    update (once per phone, to its chain's last state), messages, outbox,
//!    outcomes, media jobs, `inbox.processed_at`.
//!
//! Each write gets its own [`WriteOutcome`].

use std::collections::HashMap;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::Serialize;

use super::outbox::Claimed;
use crate::db::error::{DbError, Result};

mod apply;
mod checks;
mod timers;

use checks::Key;

/// A message row to insert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewMessage {
    pub phone: String,
    pub direction: &'static str,
    pub origin: &'static str,
    pub body: String,
    pub inbox_id: Option<i64>,
    pub provider_message_id: Option<String>,
    pub status: &'static str,
    pub outbox_key: Option<String>,
    /// The named agent who wrote it (`api.tokens`); `None` otherwise.
    pub author: Option<String>,
}

/// An outbox row to insert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewOutbox {
    pub phone: String,
    pub kind: &'static str,
    pub payload: serde_json::Value,
    pub idempotency_key: String,
    /// The span that made it (see [`crate::telemetry::trace`]).
    pub traceparent: Option<String>,
}

/// An outcome row to insert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewOutcome {
    pub phone: String,
    pub kind: String,
    pub ticket: String,
    pub data: serde_json::Value,
    pub inbox_id: Option<i64>,
}

/// A media file to fetch: the download job's row (see [`crate::media`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewMedia {
    pub phone: String,
    pub media_id: String,
    pub provider_message_id: String,
    pub kind: String,
    pub mime_type: Option<String>,
    pub sha256: Option<String>,
    pub caption: Option<String>,
}

/// A timer a step sets (see [`crate::flow::time`]): due `delay_ms` after
/// the commit, by the database's clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewTimer {
    pub kind: &'static str,
    pub delay_ms: i64,
    pub action: serde_json::Value,
}

/// The due timer a step applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FiredTimer {
    pub id: i64,
    /// `replied`, `template`, `skipped` or `silent`.
    pub outcome: &'static str,
}

/// What a step does to the conversation's clock: its timers and its
/// customer-service window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTime {
    /// Replaces the conversation's pending timers with these (`None`: they stay).
    pub timers: Option<Vec<NewTimer>>,
    /// The due timer this step applies: marked fired with it; the step is
    /// refused (as already applied) if the timer is no longer pending.
    pub fired: Option<FiredTimer>,
    /// The customer's message's own time: the window runs 24 hours from it.
    pub customer_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Everything one step of one conversation writes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWrite {
    pub phone: String,
    pub expected_version: i64,
    /// With `expected_version` 0: the state to create the session in (at
    /// version 0) if it does not exist yet. A conversation's row is created
    /// by its first step, in the step's transaction: starting one costs no
    /// commit of its own.
    pub create_as: Option<String>,
    pub flow_state: String,
    pub data: serde_json::Value,
    pub handoff: bool,
    /// Whether the flow stepped: the session takes the state above and its
    /// version grows by one. A message only stored (a reaction, a system
    /// notice) writes its rows and marks its inbox row at the same version.
    pub stepped: bool,
    /// The inbound message this step applies (marked processed), if any.
    pub inbox_id: Option<i64>,
    /// For steps without an inbound message (agent sends): an outbox
    /// idempotency key; if it is stored already, the step was applied.
    pub dedupe_key: Option<String>,
    pub messages: Vec<NewMessage>,
    pub outbox: Vec<NewOutbox>,
    pub outcomes: Vec<NewOutcome>,
    /// The media files its inbound message carries, to download.
    pub media: Vec<NewMedia>,
    /// Its timers and the customer's last message time.
    pub time: StepTime,
}

impl StepWrite {
    /// Its outbox rows were made in the span `traceparent` names: their
    /// sends go on that trace.
    pub fn traced(&mut self, traceparent: Option<String>) {
        let Some(traceparent) = traceparent else { return };
        for row in &mut self.outbox {
            row.traceparent.get_or_insert_with(|| traceparent.clone());
        }
    }

    /// The session's version once this write is committed.
    pub fn committed_version(&self) -> i64 {
        self.expected_version + i64::from(self.stepped)
    }
}

/// What happened to one write of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed; the session is now at `version`.
    Committed { version: i64 },
    /// The session was at another version (`None`: it does not exist).
    Conflict { actual: Option<i64> },
    /// The inbound message was already applied (by a restart or another process).
    AlreadyApplied,
    /// A message of the conversation accepted before this write's (inbox
    /// row `earlier`) is not applied yet: nothing was written, so that the
    /// conversation's messages are applied in the order they were accepted
    /// whichever process accepted each (see `actors::session::inbound`).
    Behind { earlier: i64 },
}

/// Commits a batch of writes in one transaction. Several writes of one
/// phone form a chain: they apply in the order given, each expecting the
/// version the one before it commits (per-phone batching). Returns one
/// outcome per write, in the input order; once a write of a chain is not
/// committed, the rest of its chain is reported as a conflict (it was
/// computed on a state that did not happen). A database error fails the
/// whole batch (nothing is committed) and is returned to all.
///
/// With `claim_ms` the outbox rows it inserts are claimed for this
/// process's dispatcher at once (status `sending`, one
/// attempt counted, leased for `claim_ms`), as its claim query would:
/// they are returned, to be handed to the dispatcher in memory, and no
/// other process takes them before the lease runs out. Saves the claim
/// statement (and its commit) on the way of every reply.
#[tracing::instrument(skip_all, fields(batch = writes.len()))]
pub async fn commit_batch_claiming(
    conn: &mut AsyncPgConnection,
    writes: &[StepWrite],
    claim_ms: Option<i64>,
) -> Result<(Vec<WriteOutcome>, Vec<Claimed>)> {
    if writes.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut phones: Vec<&str> = writes.iter().map(|w| w.phone.as_str()).collect();
    phones.sort_unstable();
    phones.dedup();
    conn.transaction::<_, DbError, _>(async move |conn| {
        // The creation, the locks and the two "already applied" checks go
        // out pipelined, in one round trip. PostgreSQL still runs them one
        // after the other, each on a snapshot taken when it starts (read
        // committed): the checks see every commit made before the locks
        // were granted, as when each waited for the one before.
        let shared: &AsyncPgConnection = conn;
        let (mut c1, mut c2, mut c3, mut c4) = (shared, shared, shared, shared);
        let (mut c5, mut c6) = (shared, shared);
        let (created, versions, processed, keys, moot, waiting) = futures_util::join!(
            checks::create_sessions(&mut c1, writes),
            checks::lock_sessions(&mut c2, &phones),
            checks::processed_inbox(&mut c3, writes),
            checks::existing_keys(&mut c4, writes),
            checks::moot_timers(&mut c5, writes),
            checks::waiting_before(&mut c6, writes),
        );
        use crate::db::pipelined::both;
        let ((((((), versions), mut processed), keys), moot), waiting) = both(
            both(both(both(both(created, versions), processed), keys), moot),
            waiting,
        )?;
        processed.extend(keys);
        processed.extend(moot);
        let (results, valid) = judge(writes, &versions, &processed, &waiting);
        let claimed = if valid.is_empty() {
            Vec::new()
        } else {
            apply::apply(conn, &valid, claim_ms).await?
        };
        Ok((results, claimed))
    })
    .await
}

/// Decides each write's outcome from the versions read under the locks,
/// the keys already applied and the messages waiting before the batch's;
/// returns the outcomes in input order and the writes to apply.
fn judge<'w>(
    writes: &'w [StepWrite],
    versions: &HashMap<String, i64>,
    processed: &std::collections::HashSet<(String, Key)>,
    waiting: &HashMap<String, i64>,
) -> (Vec<WriteOutcome>, Vec<&'w StepWrite>) {
    // Per phone: the version its chain has reached, and whether it broke.
    let mut reached: HashMap<&str, (Option<i64>, bool)> = HashMap::new();
    let mut results = Vec::with_capacity(writes.len());
    let mut valid = Vec::with_capacity(writes.len());
    // Inbound messages applied by this batch's writes before: a second
    // write of one is a duplicate too.
    let mut applying: std::collections::HashSet<(&str, i64)> = std::collections::HashSet::new();
    for w in writes {
        let actual = versions.get(w.phone.as_str()).copied();
        let (at, broken) = reached.entry(w.phone.as_str()).or_insert((actual, false));
        let applied = w.inbox_id.is_some_and(|id| {
            processed.contains(&(w.phone.clone(), Key::Inbox(id))) || applying.contains(&(w.phone.as_str(), id))
        }) || w
            .dedupe_key
            .as_ref()
            .is_some_and(|k| processed.contains(&(w.phone.clone(), Key::Outbox(k.clone()))))
            || w.time
                .fired
                .is_some_and(|f| processed.contains(&(w.phone.clone(), Key::Timer(f.id))));
        let outcome = if *broken {
            WriteOutcome::Conflict { actual }
        } else if applied {
            *broken = true;
            WriteOutcome::AlreadyApplied
        } else if *at != Some(w.expected_version) {
            *broken = true;
            WriteOutcome::Conflict { actual }
        } else if let Some(&earlier) = waiting
            .get(w.phone.as_str())
            .filter(|e| w.inbox_id.is_some_and(|id| **e < id))
        {
            *broken = true;
            WriteOutcome::Behind { earlier }
        } else {
            valid.push(w);
            if let Some(id) = w.inbox_id {
                applying.insert((w.phone.as_str(), id));
            }
            let version = w.expected_version + i64::from(w.stepped);
            *at = Some(version);
            WriteOutcome::Committed { version }
        };
        results.push(outcome);
    }
    (results, valid)
}
