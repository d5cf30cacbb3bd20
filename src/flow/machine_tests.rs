//! Unit tests of the flow engine's step function.

use serde_json::json;

use super::*;

const FLOW: &str = r#"
name = "t"
initial = "a"
[intents]
go = ["go"]
[states.a]
prompt = "A"
[states.a.on]
go = "photo"
[states.photo]
prompt = "Send a photo"
next = "done"
[states.photo.slot]
name = "label"
kind = "media"
invalid = "A photo, please."
[states.done]
prompt = "Thanks {ticket}"
outcome = "report"
"#;

fn said(intent: Option<&str>) -> Understanding {
    Understanding {
        intent: intent.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn a_typed_slot_takes_the_input_not_the_text() {
    let flow = Flow::parse(FLOW, "t.toml").unwrap();
    let text = Understanding {
        slot_value: Some("a photo".into()),
        ..Default::default()
    };
    let r = step(&flow, "photo", &json!({}), false, &text, "R1");
    assert_eq!((r.state.as_str(), &r.data[ATTEMPTS_KEY]), ("photo", &json!(1)));
    let photo = Understanding {
        input: Some(json!({"kind": "image", "id": "m1"})),
        ..Default::default()
    };
    let r = step(&flow, "photo", &r.data, false, &photo, "R2");
    let outcome = r.outcome.unwrap();
    assert_eq!(outcome.data["label"]["id"], "m1");
    assert!(outcome.data.get(ATTEMPTS_KEY).is_none());
}

#[test]
fn an_agents_name_never_reaches_an_outcome() {
    let flow = Flow::parse(FLOW, "t.toml").unwrap();
    let photo = Understanding {
        input: Some(json!({"id": "m1"})),
        ..said(None)
    };
    let done = step(&flow, "photo", &json!({HANDOFF_BY_KEY: "Ana"}), false, &photo, "R2");
    assert!(done.outcome.unwrap().data.get(HANDOFF_BY_KEY).is_none());
}

#[test]
fn the_ad_that_opened_the_chat_reaches_the_outcome_and_a_reply_to_lasts_one_step() {
    let flow = Flow::parse(FLOW, "t.toml").unwrap();
    let from_ad = Understanding {
        referral: Some(json!({"source_id": "120200", "source_type": "ad"})),
        reply_to: Some("wamid.bot.1".into()),
        ..said(Some("go"))
    };
    let r = step(&flow, "a", &json!({}), false, &from_ad, "R1");
    assert_eq!(
        (
            r.data[REFERRAL_KEY]["source_id"].as_str(),
            r.data[REPLY_TO_KEY].as_str()
        ),
        (Some("120200"), Some("wamid.bot.1"))
    );
    let next = step(&flow, "photo", &r.data, false, &said(None), "R1b");
    assert_eq!(next.state, "photo", "not terminal: the data is kept");
    assert!(
        next.data.get(REPLY_TO_KEY).is_none(),
        "the next message replies to nothing"
    );
    assert_eq!(next.data[REFERRAL_KEY]["source_id"], "120200");
    let photo = Understanding {
        input: Some(json!({"id": "m1"})),
        ..said(None)
    };
    let r = step(&flow, "photo", &r.data, false, &photo, "R2");
    let outcome = r.outcome.unwrap();
    assert_eq!(
        outcome.data[REFERRAL_KEY]["source_id"], "120200",
        "attributed to its ad"
    );
    assert!(outcome.data.get(REPLY_TO_KEY).is_none(), "no longer the last message's");
}

#[test]
fn a_welcome_is_the_state_s_prompt_only_when_the_flow_asks_and_no_agent_holds_it() {
    let silent = Flow::parse(FLOW, "t.toml").unwrap();
    let data = json!({"ticket": "R7"});
    assert!(
        welcome(&silent, "a", &data, false).is_none(),
        "off unless the flow says welcome"
    );
    let flow = Flow::parse(&format!("welcome = true\n{FLOW}"), "t.toml").unwrap();
    assert_eq!(welcome(&flow, "a", &data, false).map(|r| r.text), Some("A".into()));
    assert_eq!(
        welcome(&flow, "done", &data, false).map(|r| r.text),
        Some("Thanks R7".into()),
        "the prompt of the state the conversation is in, filled"
    );
    assert_eq!(
        welcome(&flow, "renamed", &data, false).map(|r| r.text),
        Some("A".into()),
        "a state the flow no longer has: the initial one's, as a step does"
    );
    assert!(welcome(&flow, "a", &data, true).is_none(), "an agent holds it");
}
