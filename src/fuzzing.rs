//! The checks behind the fuzz targets (`fuzz/`), one per untrusted input
//! format: webhook deliveries, webhook signatures, flow files,
//! configuration files and the realtime event encoder. Each takes arbitrary
//! bytes and panics if the code under test panics or breaks a property that
//! must hold for every input. The corpus regression tests
//! (`tests/fuzz_corpus.rs`) run the same checks over every stored input, so
//! a crash the fuzzer once found stays fixed. Each returns whether the input
//! was well-formed and went through every check (not just the parser's
//! refusal), so the tests can tell that a corpus reaches the properties.

use serde_json::Value;

use crate::engine::{DeliveryEvent, Event, EventKind, EventMessage};
use crate::flow::{step, Flow, Understanding};
use crate::whatsapp::webhook;

/// Inputs longer than this are cut: the checks are about structure, and
/// long inputs only slow the fuzzer down.
pub const MAX_INPUT: usize = 64 * 1024;

fn cut(data: &[u8]) -> &[u8] {
    &data[..data.len().min(MAX_INPUT)]
}

/// Webhook delivery parsing and the per-message checks the handler makes.
pub fn webhook_delivery(data: &[u8]) -> bool {
    let Ok(d) = webhook::parse(cut(data)) else {
        return false;
    };
    for m in &d.messages {
        let text = crate::engine::inbound_text(&m.raw);
        assert!(text.len() <= data.len(), "the text comes from the body");
        if let Ok(p) = crate::phone::normalize(&m.from) {
            assert!(p.bytes().all(|b| b.is_ascii_digit()) && (8..=15).contains(&p.len()));
            let masked = crate::phone::mask(&p);
            assert!(!masked.contains(&p), "a masked phone never shows the whole number");
        }
        assert!(serde_json::to_vec(&m.raw).is_ok(), "a message is stored as JSON");
    }
    for u in &d.unusable {
        assert!(!u.key.is_empty(), "an unusable item has a key to keep it once");
        assert!(u.from.chars().count() <= 64, "the kept sender is capped");
    }
    for s in &d.statuses {
        if let Some(e) = &s.errors {
            // Stored as the message's error text.
            assert!(serde_json::to_string(e).is_ok());
        }
    }
    true
}

/// Signature verification: never panics, accepts the right signature of
/// any body under any secret, and accepts a given header only if it is that
/// signature.
pub fn webhook_signature(data: &[u8]) -> bool {
    let data = cut(data);
    // secret | header | body, split at the first two 0xFF bytes.
    let mut parts = data.splitn(3, |b| *b == 0xFF);
    let secret = parts.next().unwrap_or_default();
    let header = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    let right = webhook::sign(secret, body);
    assert!(
        webhook::verify_signature(secret, body, Some(&right)),
        "the right signature passes"
    );
    assert!(
        !webhook::verify_signature(secret, body, None),
        "no signature never passes"
    );
    if let Some(h) = header {
        if webhook::verify_signature(secret, body, Some(&h)) {
            let given = h.trim().strip_prefix("sha256=").map(|x| x.trim().to_ascii_lowercase());
            let expected = right.strip_prefix("sha256=").map(str::to_string);
            assert_eq!(given, expected, "only the right signature passes");
        }
    }
    let mut wrong = right.into_bytes();
    if let Some(last) = wrong.last_mut() {
        *last = if *last == b'0' { b'1' } else { b'0' };
    }
    let wrong = String::from_utf8_lossy(&wrong);
    assert!(
        !webhook::verify_signature(secret, body, Some(&wrong)),
        "a changed signature fails"
    );
    true
}

/// Flow files: parsing never panics; a flow that parses can be walked with
/// any message from any of its states and always lands in a declared state.
pub fn flow_file(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(cut(data)) else {
        return false;
    };
    let Ok(flow) = Flow::parse(text, "fuzz.toml") else {
        return false;
    };
    assert!(flow.state(&flow.initial).is_some(), "the initial state exists");
    let intents: Vec<Option<String>> = std::iter::once(None)
        .chain(flow.intents.keys().cloned().map(Some))
        .chain(flow.global.keys().cloned().map(Some))
        .collect();
    let values = [
        None,
        Some(String::new()),
        Some("12345".to_string()),
        Some(text.chars().take(40).collect()),
    ];
    for state in flow.states.keys() {
        let _ = flow.needs(state);
        for intent in &intents {
            for value in &values {
                for handoff in [false, true] {
                    let u = Understanding {
                        intent: intent.clone(),
                        slot_value: value.clone(),
                        ..Default::default()
                    };
                    let r = step(&flow, state, &serde_json::json!({}), handoff, &u, "T1");
                    assert!(flow.state(&r.state).is_some(), "undeclared state {}", r.state);
                    assert!(r.data.is_object(), "session data stays an object");
                    if handoff {
                        assert!(r.replies.is_empty(), "the bot is quiet during a hand-off");
                    }
                }
            }
        }
    }
    true
}

/// Configuration files: parsing never panics; a configuration that parses
/// is valid and prints (secrets redacted) as TOML that parses again.
pub fn config_file(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(cut(data)) else {
        return false;
    };
    let Ok(settings) = crate::config::parse_str(text) else {
        return false;
    };
    assert!(settings.validate().is_empty());
    let shown = crate::config::render_redacted(&settings);
    assert!(
        shown.parse::<toml::Table>().is_ok(),
        "the printed configuration is TOML:\n{shown}"
    );
    for token in &settings.api.tokens {
        let t = token.token.expose();
        // Long, plain and written once: found in the output only if leaked.
        if t.len() >= 12 && t.bytes().all(|b| b.is_ascii_alphanumeric()) && text.matches(t).count() == 1 {
            assert!(!shown.contains(t), "a secret in the printed configuration");
        }
    }
    true
}

/// The realtime event encoder: any event becomes exactly one SSE frame
/// (`event:` line, one `data:` line, blank line) whose data is the event's
/// JSON, whatever the text holds (newlines, `data:`, control characters).
pub fn sse_event(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(cut(data));
    let mut fields = text.split('\u{1}');
    let mut next = || fields.next().unwrap_or_default().to_string();
    let kind = match data.first().map_or(0, |b| b % 4) {
        0 => EventKind::Transition,
        1 => EventKind::AgentMessage,
        2 => EventKind::Handoff,
        _ => EventKind::DeliveryStatus,
    };
    let phone = next();
    let flow_state = next();
    let body = next();
    let status = next();
    let e = Event {
        kind,
        phone,
        version: data.len() as i64,
        flow_state,
        handoff: data.len() % 2 == 0,
        messages: vec![EventMessage {
            origin: "bot".into(),
            body,
            author: None,
        }],
        provider_message_id: Some(next()),
        delivery: (kind == EventKind::DeliveryStatus).then(|| DeliveryEvent {
            provider_message_id: next(),
            status,
            error: Some(next()),
        }),
        breaker: None,
        relayed: false,
    };
    let frame = crate::http::encode_event(&e);
    assert!(frame.ends_with("\n\n"), "a frame ends with a blank line");
    let lines: Vec<&str> = frame.trim_end_matches('\n').split('\n').collect();
    assert_eq!(lines.len(), 2, "one event line and one data line: {frame:?}");
    assert!(lines[0].starts_with("event: "));
    let json = lines[1]
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("a data line: {frame:?}"));
    assert!(!json.contains('\r'), "no carriage return inside the data line");
    let back: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("data is JSON ({e}): {json:?}"));
    assert_eq!(
        back,
        serde_json::to_value(&e).unwrap_or_default(),
        "the data is the event"
    );
    true
}
