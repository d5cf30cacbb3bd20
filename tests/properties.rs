//! Property tests: the breaker state machine, the flow engine and the retry
//! policy under arbitrary sequences.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use switchboard::breaker::{BreakerSettings, BreakerState, CallResult, CircuitBreaker, ManualClock};
use switchboard::flow::{step, Flow, Understanding};
use switchboard::retry::RetryPolicy;

#[derive(Debug, Clone)]
enum Op {
    Success,
    Failure,
    Slow,
    Abandon,
    Advance(u64),
    ForceOpen,
    ForceClose,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Success),
        4 => Just(Op::Failure),
        1 => Just(Op::Slow),
        1 => Just(Op::Abandon),
        3 => (0u64..3_000).prop_map(Op::Advance),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::ForceClose),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// No illegal transition: open never admits a call; half-open admits at
    /// most its probes; counters are clean after every (re)open; closing
    /// needs an admitted probe to succeed (or an operator).
    #[test]
    fn the_breaker_never_makes_an_illegal_transition(ops in proptest::collection::vec(op(), 1..120)) {
        let clock = ManualClock::default();
        let settings = BreakerSettings {
            failure_threshold: 3, window: 8, min_calls: 4, failure_rate: 0.5, slow_call_rate: 0.5,
            slow_call_ms: 1_000, open_ms: 500, max_open_ms: 4_000, half_open_probes: 1,
            half_open_successes: 1, probe_deadline_ms: 800,
        };
        let b = CircuitBreaker::with_clock("p", settings, Arc::new(clock.clone()));
        for op in ops {
            let before = b.state();
            let opened_before = b.snapshot().counters.opened;
            match op {
                Op::Success | Op::Failure | Op::Slow | Op::Abandon => {
                    let permit = b.try_acquire();
                    if before == BreakerState::Open {
                        prop_assert!(permit.is_err(), "an open breaker admitted a call");
                    }
                    if let Ok(p) = permit {
                        if before == BreakerState::HalfOpen {
                            prop_assert!(b.try_acquire().is_err(), "two probes at once");
                        }
                        match op {
                            Op::Success => p.record(CallResult::Success),
                            Op::Failure => p.record(CallResult::Failure),
                            Op::Slow => { clock.advance(Duration::from_millis(1_500)); p.record(CallResult::Success) }
                            _ => drop(p),
                        }
                    }
                }
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::ForceOpen => b.force_open(),
                Op::ForceClose => b.force_close(),
            }
            let snap = b.snapshot();
            if snap.counters.opened > opened_before {
                prop_assert_eq!(snap.consecutive_failures, 0, "counters reset on open");
                prop_assert_eq!(snap.window_calls, 0);
            }
            if before == BreakerState::Open && snap.state == BreakerState::Closed {
                prop_assert!(matches!(op, Op::ForceClose), "open went straight to closed without a probe");
            }
        }
    }

    /// Any sequence of messages leaves the conversation in a declared state,
    /// with data an object and attempts never past a slot's limit.
    #[test]
    fn any_message_sequence_leaves_the_session_in_a_declared_state(
        inputs in proptest::collection::vec((proptest::option::of(0usize..12), proptest::option::of("[0-9a-z ]{0,14}")), 1..60)
    ) {
        let flow = Flow::parse(switchboard::load::EXAMPLE_FLOW, "reporte.toml").unwrap();
        let intents: Vec<String> = flow.intents.keys().cloned().collect();
        let (mut state, mut data, mut handoff) = (flow.initial.clone(), serde_json::json!({}), false);
        for (i, (intent, slot)) in inputs.into_iter().enumerate() {
            let u = Understanding { intent: intent.map(|k| intents[k % intents.len()].clone()), slot_value: slot, ..Default::default() };
            let r = step(&flow, &state, &data, handoff, &u, &format!("R{i}"));
            prop_assert!(flow.state(&r.state).is_some(), "undeclared state {}", r.state);
            prop_assert!(r.data.is_object());
            let attempts = r.data.get("_attempts").and_then(|a| a.as_u64()).unwrap_or(0);
            let limit = flow.state(&r.state).and_then(|s| s.slot.as_ref()).map(|s| u64::from(s.max_attempts)).unwrap_or(1);
            prop_assert!(attempts < limit.max(1), "attempts {} over the limit {}", attempts, limit);
            if handoff {
                prop_assert!(r.replies.is_empty(), "the bot spoke during a hand-off");
            }
            state = r.state;
            data = r.data;
            handoff = r.handoff;
        }
    }

    /// Backoff delays stay within [0, min(max, base·2ⁿ)], whatever the numbers.
    #[test]
    fn retry_delays_stay_within_their_bounds(base in 0u64..5_000, max in 0u64..60_000, retry in 0u32..100, seed in any::<u64>()) {
        use rand::SeedableRng;
        let p = RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(base), max_delay: Duration::from_millis(max) };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let d = p.delay(retry, &mut rng);
        prop_assert!(d <= p.ceiling(retry));
        prop_assert!(p.ceiling(retry) <= Duration::from_millis(max));
    }
}
