//! Who moved a conversation's hand-off: the named agent, kept in its data
//! until someone not named (the flow, a timer) moves it again.

use serde_json::Value;

/// Key in the session data naming the agent who last took or returned the
/// conversation; gone when the flow or a timer moves the hand-off (nobody
/// named did), and never part of an outcome.
pub const HANDOFF_BY_KEY: &str = "_handoff_by";

/// A step's `data` after the flow moved the hand-off from `before` to
/// `now`: moved by nobody named.
pub(super) fn settle(data: &mut Value, before: bool, now: bool) {
    if before != now {
        if let Some(obj) = data.as_object_mut() {
            obj.remove(HANDOFF_BY_KEY);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_name_stays_while_the_hand_off_does_not_move_and_goes_when_the_flow_moves_it() {
        let mut data = json!({HANDOFF_BY_KEY: "Ana", "sap": "1234567890"});
        settle(&mut data, true, true);
        assert_eq!(data[HANDOFF_BY_KEY], "Ana");
        settle(&mut data, true, false);
        assert_eq!(data, json!({"sap": "1234567890"}));
    }
}
