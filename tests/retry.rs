//! The retry helper: backoff bounds, attempt limits, and what is never retried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use switchboard::db::DbError;
use switchboard::retry::RetryPolicy;
use switchboard::Error;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(2_000),
    }
}

#[test]
fn the_default_backoff_ceilings_double_from_fifty_milliseconds_up_to_the_maximum() {
    let p = RetryPolicy::default();
    let ceilings: Vec<u64> = (0..8).map(|i| p.ceiling(i).as_millis() as u64).collect();
    assert_eq!(ceilings, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    assert_eq!(p.ceiling(u32::MAX), Duration::from_millis(2_000), "no overflow");
}

#[test]
fn jittered_delays_stay_within_zero_and_the_ceiling_and_spread_out() {
    let p = policy();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for retry in 0..6 {
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(retry, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= p.ceiling(retry)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "full jitter spreads retries out");
    }
}

#[tokio::test(start_paused = true)]
async fn a_retryable_error_is_retried_until_the_attempt_limit_then_returned() {
    let calls = AtomicU32::new(0);
    let started = tokio::time::Instant::now();
    let result: Result<(), DbError> = policy()
        .run("test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(DbError::PoolTimeout(Duration::from_millis(1)))
        })
        .await;
    assert!(matches!(result, Err(DbError::PoolTimeout(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // Three sleeps, each at most its ceiling: 50 + 100 + 200 ms.
    assert!(started.elapsed() <= Duration::from_millis(350));
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_error_is_returned_after_one_attempt() {
    for err in [
        || Error::InvalidInput("bad".into()),
        || Error::Processing("a step failed".into()),
        || Error::NotFound("x".into()),
    ] {
        let calls = AtomicU32::new(0);
        let result: Result<(), Error> = policy()
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err())
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_followed_by_success_succeeds() {
    let calls = AtomicU32::new(0);
    let result = policy()
        .run("test", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(DbError::Connection("reset".into()))
            } else {
                Ok(42)
            }
        })
        .await;
    assert_eq!(result.unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
