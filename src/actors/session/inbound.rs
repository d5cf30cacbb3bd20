//! The step pipeline of inbound messages: understand, step the flow, commit —
//! several queued messages as one chain, one at a time after a failure, and a
//! crash handed to the supervisor.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::panic_text;
use super::state::{fetch_unprocessed, fetch_waiting_before, load_core, load_core_and_unprocessed, Core, RESUME_BATCH};
use super::step::{apply_chain, apply_inbound, Applied};
use super::{Inbound, SessionDeps};
use crate::actors::supervisor::{CrashDecision, Crashed};
use crate::db::resume::PendingInbound;
use crate::error::{Error, Result};
use crate::phone::mask;

/// The bot takes up `items`: each message it steps is marked read (with
/// the typing indicator), once, unless a person has the conversation.
fn mark_read(deps: &SessionDeps, phone: &str, core: &Core, items: &[PendingInbound], receipted: &mut HashSet<i64>) {
    for m in items {
        if !receipted.insert(m.id) {
            continue;
        }
        if !core.handoff && crate::whatsapp::kinds::is_stepped(&m.payload) {
            deps.receipts.taken_up(phone, &m.provider_message_id);
        }
    }
}

/// Applies `first` (if any), the messages waiting in `inbound`, and, after
/// a (re)start, every unprocessed inbox row of the phone — in acceptance
/// order, several at a time as one chain when they queue up. Crashes
/// restart from the database.
pub(super) async fn run_inbound(
    deps: &SessionDeps,
    phone: &str,
    core: Option<Core>,
    first: Option<PendingInbound>,
    inbound: &Inbound,
) -> (Option<Core>, Result<()>) {
    let (mut core, mut queue) = match gather(deps, phone, core, first, inbound).await {
        Ok(gathered) => gathered,
        Err((core, e)) => return (core, Err(e)),
    };
    let chain_max = deps.settings.group_commit.max_batch.max(1);
    // Messages at the front to apply one at a time (after a chain stopped
    // on a conflict, a duplicate or a crash).
    let mut singles = 0usize;
    // The messages marked read: one retried after a conflict, or put back
    // behind earlier ones, is not marked twice.
    let mut receipted = HashSet::new();
    while !queue.is_empty() {
        let step = if singles == 0 && queue.len() > 1 && chain_max > 1 {
            let chain: Vec<PendingInbound> = queue.drain(..queue.len().min(chain_max)).collect();
            mark_read(deps, phone, &core, &chain, &mut receipted);
            try_chain(deps, phone, &mut core, chain, &mut queue, &mut singles).await
        } else {
            singles = singles.saturating_sub(1);
            let Some(item) = queue.pop_front() else { break };
            mark_read(deps, phone, &core, std::slice::from_ref(&item), &mut receipted);
            try_single(deps, phone, &mut core, item).await
        };
        let (id, reason) = match step {
            Step::Next => continue,
            Step::Behind { msg, earlier } => {
                deps.stats.waited_behind.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = wait_for_earlier(deps, phone, msg, earlier, &mut queue).await {
                    // Stopped like any failed step: what waits is read from
                    // the inbox first by the next activation.
                    return (None, Err(e));
                }
                singles = 0;
                continue;
            }
            Step::Crashed { id, reason } => (id, reason),
            // The state is dropped: what stays in the inbox is read first
            // by the next activation (see `try_chain`).
            Step::Stop { error } => return (None, Err(error)),
        };
        match restart_after_crash(deps, phone, core, id, reason).await {
            Ok((restarted, rows)) => {
                core = restarted;
                queue = rows.into();
                singles = 0;
            }
            Err(e) => return (None, Err(e)),
        }
    }
    (Some(core), Ok(()))
}

/// What one try at the front of the queue left.
enum Step {
    /// Go on with the queue.
    Next,
    /// Message `id` crashed: the supervisor decides.
    Crashed { id: i64, reason: String },
    /// Stop with `error`, dropping the state.
    Stop { error: Error },
    /// `msg` was not applied: inbox row `earlier` waits before it.
    Behind { msg: PendingInbound, earlier: i64 },
}

/// `msg` was found behind unapplied messages accepted before it (inbox row
/// `earlier` the first). Takes up those before the first one a live
/// process holds (this process's own, or a dead one's, or past their
/// lease: see `db::resume::waiting_before`); with none, waits while that
/// process applies it. Puts them and `msg` back at the front of `queue`
/// in acceptance order (no copy left further back). So a phone's messages
/// are applied in the order they were accepted even when a balancer
/// spreads them over processes. Bounded: a held row is free once its
/// lease runs out.
async fn wait_for_earlier(
    deps: &SessionDeps,
    phone: &str,
    msg: PendingInbound,
    earlier: i64,
    queue: &mut VecDeque<PendingInbound>,
) -> Result<()> {
    let (id, lease) = (msg.id, Duration::from_millis(deps.settings.inbox_lease_ms));
    let started = Instant::now();
    // Its holder is one commit from done, typically; each look is a query,
    // so the looks space out (many phones waiting on a slow path).
    let mut pause = Duration::from_millis(25);
    queue.push_front(msg);
    loop {
        let waiting = fetch_waiting_before(deps, phone, id, RESUME_BATCH).await?;
        let held = waiting.iter().any(|w| !w.free);
        let free: Vec<PendingInbound> = waiting
            .into_iter()
            .take_while(|w| w.free)
            .map(|w| w.into_row())
            .collect();
        if !free.is_empty() || !held {
            tracing::debug!(phone = %mask(phone), inbox_id = id, earlier, taken = free.len(), waited_ms = started.elapsed().as_millis() as u64, "behind earlier messages: applying them first");
            queue.retain(|q| !free.iter().any(|f| f.id == q.id));
            for row in free.into_iter().rev() {
                queue.push_front(row);
            }
            return Ok(());
        }
        if started.elapsed() > lease * 2 {
            return Err(Error::Unavailable(format!(
                "inbox row {id} still waits behind row {earlier}, held by a live process, after {} ms",
                started.elapsed().as_millis()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The state to step on and the messages to apply, in order: `first`, the
/// unprocessed inbox rows (on activation or a wake-up), and everything else
/// waiting in the mailbox (its `Apply` messages will find it applied). On
/// failure, the state still good, if any.
async fn gather(
    deps: &SessionDeps,
    phone: &str,
    core: Option<Core>,
    first: Option<PendingInbound>,
    inbound: &Inbound,
) -> std::result::Result<(Core, VecDeque<PendingInbound>), (Option<Core>, Error)> {
    let mut queue: VecDeque<PendingInbound> = VecDeque::new();
    let core = match core {
        Some(c) => match first {
            // A mailbox copy of a row this actor already applied (in a
            // chain, or while resuming): nothing to do but what waits.
            Some(f) if c.recent.contains(&f.id) => c,
            Some(f) => {
                queue.push_back(f);
                c
            }
            // A wake-up (resume sweep, replayed dead letter): look for work.
            None => match fetch_unprocessed(deps, phone).await {
                Ok(rows) => {
                    queue.extend(rows);
                    c
                }
                Err(e) => return Err((Some(c), e)),
            },
        },
        None => {
            // Activation: load, and resume whatever is waiting (it includes `first`).
            let (c, rows) = load_core_and_unprocessed(deps, phone, VecDeque::new())
                .await
                .map_err(|e| (None, e))?;
            queue.extend(rows);
            if let Some(f) = first {
                if !queue.iter().any(|p| p.id == f.id) {
                    queue.push_back(f);
                }
            }
            c
        }
    };
    // Rows read from the inbox are unprocessed by definition; the rest
    // needs the check.
    let waiting: Vec<PendingInbound> = inbound.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default();
    for p in waiting {
        if !core.recent.contains(&p.id) && !queue.iter().any(|q| q.id == p.id) {
            queue.push_back(p);
        }
    }
    Ok((core, queue))
}

/// Applies `chain` as one; what it did not commit goes back to the front
/// of `queue`, its first to be applied alone (`singles`) — or, when the
/// commit itself failed, all of it, one at a time.
async fn try_chain(
    deps: &SessionDeps,
    phone: &str,
    core: &mut Core,
    chain: Vec<PendingInbound>,
    queue: &mut VecDeque<PendingInbound>,
    singles: &mut usize,
) -> Step {
    let outcome = std::panic::AssertUnwindSafe(apply_chain(deps, phone, core, chain.clone()))
        .catch_unwind()
        .await;
    match outcome {
        Ok(Ok(mut end)) => {
            if let Some(earlier) = end.behind.filter(|_| !end.rest.is_empty()) {
                // Nothing after the first not committed was either: it
                // waits for the earlier ones, the rest behind it.
                let msg = end.rest.remove(0);
                for p in end.rest.into_iter().rev() {
                    queue.push_front(p);
                }
                return Step::Behind { msg, earlier };
            }
            let crashed = end.crash.and_then(|reason| end.rest.first().map(|m| (m.id, reason)));
            // The first one not committed goes the careful way.
            *singles = usize::from(!end.rest.is_empty());
            for p in end.rest.into_iter().rev() {
                queue.push_front(p);
            }
            match crashed {
                Some((id, reason)) => Step::Crashed { id, reason },
                None => Step::Next,
            }
        }
        // Left in the inbox (resumed later) with the messages after it: the
        // state is dropped, so the next message re-activates and reads
        // them from the inbox first, in acceptance order — kept, the next
        // message would be applied before them.
        Ok(Err(e)) if e.is_retryable() => Step::Stop { error: e },
        _ => {
            // The commit itself failed: find which message fails, one at a
            // time, from the database's state.
            match load_core(deps, phone, std::mem::take(&mut core.recent)).await {
                Ok(c) => *core = c,
                Err(e) => return Step::Stop { error: e },
            }
            *singles = chain.len();
            for p in chain.into_iter().rev() {
                queue.push_front(p);
            }
            Step::Next
        }
    }
}

/// Applies one message alone.
async fn try_single(deps: &SessionDeps, phone: &str, core: &mut Core, item: PendingInbound) -> Step {
    let id = item.id;
    let outcome = std::panic::AssertUnwindSafe(apply_inbound(deps, phone, core, item))
        .catch_unwind()
        .await;
    match outcome {
        Ok(Ok(Applied::Done)) => Step::Next,
        Ok(Ok(Applied::Behind { msg, earlier })) => Step::Behind { msg, earlier },
        // The database is unreachable beyond the retry budget: leave the row
        // in the inbox (resumed later) and report it; the state is dropped
        // so the next message is applied after it (see `try_chain`).
        Ok(Err(e)) if e.is_retryable() => Step::Stop { error: e },
        Ok(Err(e)) => Step::Crashed {
            id,
            reason: e.to_string(),
        },
        Err(panic) => Step::Crashed {
            id,
            reason: panic_text(panic.as_ref()),
        },
    }
}

/// A crash: the supervisor decides (retry, or quarantine after too many),
/// then the conversation restarts from the database with what is waiting.
async fn restart_after_crash(
    deps: &SessionDeps,
    phone: &str,
    mut core: Core,
    id: i64,
    reason: String,
) -> Result<(Core, Vec<PendingInbound>)> {
    let decision = deps
        .supervisor
        .send(Crashed {
            phone: phone.to_string(),
            inbox_id: id,
            reason,
        })
        .await
        .map_err(|e| Error::Unavailable(format!("supervisor: {e}")))??;
    let quarantined = matches!(decision, CrashDecision::Quarantined);
    let (mut core, rows) = load_core_and_unprocessed(deps, phone, std::mem::take(&mut core.recent)).await?;
    if quarantined {
        // Its mailbox copy, if any, must not crash the actor again.
        core.remember(id);
    }
    Ok((core, rows))
}
