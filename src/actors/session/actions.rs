//! The flow's actions inside a step: a step that stops at an action has it
//! called, and goes on with the answer — until it stops at none. Calls run
//! here, in the conversation's actor, before the step's write: outside
//! every transaction and pooled connection, each bounded by its action's
//! timeout and retries; the result is committed with the step.

use super::SessionDeps;
use crate::flow::{after_action, Flow, StepResult};
use crate::phone::mask;

/// Calls `result`'s pending actions in turn. `applying` names the input
/// (the inbound message's provider id): with the action's name it is the
/// call's idempotency key, so a step repeated after a crash or a conflict
/// repeats the call with the same key and the backend can drop it.
pub(super) async fn run(
    deps: &SessionDeps,
    phone: &str,
    flow: &Flow,
    result: &mut StepResult,
    applying: &str,
    ticket: &str,
) {
    // Validation refuses loops of actions; the bound only guards a flow
    // changed under a live conversation.
    let mut called: Vec<&str> = Vec::new();
    for _ in 0..flow.actions.len().max(1) * 2 {
        let Some(pending) = result.action.take() else {
            return;
        };
        // One action reached twice in one step (from two states): the
        // second call is another request, with a key of its own.
        let nth = called.iter().filter(|a| **a == pending.action).count();
        let key = match nth {
            0 => format!("{applying}:{}", pending.action),
            n => format!("{applying}:{}:{}", pending.action, n + 1),
        };
        if let Some(a) = flow.actions.get(&pending.action) {
            called.push(a.name.as_str());
        }
        let answer = deps.actions.call(&pending.action, phone, &result.data, &key).await;
        if let Err(why) = &answer {
            tracing::info!(phone = %mask(phone), action = %pending.action, reason = %why, "action failed: the flow takes on_failure");
        }
        after_action(flow, result, &pending, answer, ticket);
    }
    result.action = None;
}
