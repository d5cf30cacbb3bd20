//! The circuit breaker as a state machine, on a clock moved by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use switchboard::breaker::{BreakerSettings, BreakerState, CallResult, CircuitBreaker, ManualClock};

fn breaker(s: BreakerSettings) -> (CircuitBreaker, ManualClock) {
    let clock = ManualClock::default();
    (CircuitBreaker::with_clock("test", s, Arc::new(clock.clone())), clock)
}

fn settings() -> BreakerSettings {
    BreakerSettings {
        failure_threshold: 3,
        window: 10,
        min_calls: 10,
        failure_rate: 0.5,
        slow_call_rate: 1.0,
        slow_call_ms: 1_000,
        open_ms: 1_000,
        max_open_ms: 8_000,
        half_open_probes: 1,
        half_open_successes: 2,
        probe_deadline_ms: 500,
    }
}

fn call(b: &CircuitBreaker, r: CallResult) {
    b.try_acquire().unwrap().record(r);
}

#[test]
fn consecutive_failures_open_it_and_a_success_resets_the_count() {
    let (b, _) = breaker(settings());
    call(&b, CallResult::Failure);
    call(&b, CallResult::Failure);
    call(&b, CallResult::Success);
    call(&b, CallResult::Failure);
    call(&b, CallResult::Failure);
    assert_eq!(b.state(), BreakerState::Closed, "a success reset the count");
    call(&b, CallResult::Failure);
    assert_eq!(b.state(), BreakerState::Open);
    assert!(b.try_acquire().is_err(), "open fails fast");
    assert_eq!(b.snapshot().counters.rejected, 1);
}

#[test]
fn the_failure_rate_over_the_window_opens_it_once_enough_calls_are_seen() {
    let (b, _) = breaker(BreakerSettings {
        failure_threshold: 100,
        ..settings()
    });
    for i in 0..9 {
        call(
            &b,
            if i % 2 == 0 {
                CallResult::Failure
            } else {
                CallResult::Success
            },
        );
    }
    assert_eq!(b.state(), BreakerState::Closed, "fewer than min_calls: not judged yet");
    call(&b, CallResult::Failure); // 6 of 10 failed
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn slow_calls_open_it_when_the_slow_rate_passes_the_threshold() {
    let (b, clock) = breaker(BreakerSettings {
        slow_call_rate: 0.5,
        failure_threshold: 100,
        ..settings()
    });
    for _ in 0..10 {
        let p = b.try_acquire().unwrap();
        clock.advance(Duration::from_millis(1_500));
        p.record(CallResult::Success);
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn after_the_open_period_one_probe_is_admitted_and_successes_close_it() {
    let (b, clock) = breaker(settings());
    for _ in 0..3 {
        call(&b, CallResult::Failure);
    }
    clock.advance(Duration::from_millis(1_100)); // open period + max jitter (10%)
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err(), "one probe at a time");
    probe.record(CallResult::Success);
    assert_eq!(b.state(), BreakerState::HalfOpen, "two successes needed");
    call(&b, CallResult::Success);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_half_open_probe_failure_re_opens_with_counters_reset_and_a_longer_period() {
    let (b, clock) = breaker(settings());
    for _ in 0..3 {
        call(&b, CallResult::Failure);
    }
    clock.advance(Duration::from_millis(1_100));
    call(&b, CallResult::Failure); // the probe fails
    assert_eq!(b.state(), BreakerState::Open);
    let snap = b.snapshot();
    assert_eq!(snap.consecutive_failures, 0, "seed 004: counters reset on re-open");
    assert_eq!(snap.window_calls, 0);
    clock.advance(Duration::from_millis(1_100));
    assert_eq!(b.state(), BreakerState::Open, "the second open period is doubled");
    clock.advance(Duration::from_millis(1_200)); // 2,000 ms + up to 10 % jitter
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // Closing after recovery starts from clean counters: one failure does not re-open.
    call(&b, CallResult::Success);
    call(&b, CallResult::Success);
    assert_eq!(b.state(), BreakerState::Closed);
    call(&b, CallResult::Failure);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_probe_that_never_answers_fails_at_its_deadline() {
    let (b, clock) = breaker(settings());
    for _ in 0..3 {
        call(&b, CallResult::Failure);
    }
    clock.advance(Duration::from_millis(1_100));
    let hung = b.try_acquire().unwrap();
    clock.advance(Duration::from_millis(600));
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "the hung probe re-opened it (resilience4j #903)"
    );
    hung.record(CallResult::Success); // a late answer changes nothing
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn a_permit_dropped_without_a_result_counts_as_a_failure() {
    let (b, _) = breaker(settings());
    for _ in 0..3 {
        drop(b.try_acquire().unwrap());
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn it_can_be_forced_open_and_closed() {
    let (b, _) = breaker(settings());
    b.force_open();
    assert_eq!(b.state(), BreakerState::Open);
    b.force_close();
    assert_eq!(b.state(), BreakerState::Closed);
    let c = b.snapshot().counters;
    assert_eq!((c.opened, c.closed), (1, 1));
}
