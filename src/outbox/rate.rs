//! The send rate of each business number, held for the deployment: every
//! process takes its sends of one wall-clock second from a budget shared in
//! PostgreSQL (`send_budget`), a few at a time, and spaces them at `1/rate`.
//!
//! Chosen over an equal share per live process: a share wastes the budget
//! of idle processes and overshoots while a process joins (the others learn
//! of it only at their next look), where the shared budget is exact per
//! second at the cost of one upsert per `rate / TAKES_PER_SECOND` sends.
//! A send is begun only within its budget's second, never in its last
//! [`GUARD`], so a request that takes a moment to reach the provider is not
//! counted in the next second. Wall clocks of the processes must agree
//! (NTP) to within that guard.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scoped_futures::ScopedFutureExt;
use tokio::sync::Mutex;

use crate::db::{send_budget, Database};

/// How many times a second a busy process takes from the budget: each
/// take asks for `rate / TAKES_PER_SECOND` sends.
const TAKES_PER_SECOND: u32 = 10;
/// The end of each second in which no send begins.
const GUARD: Duration = Duration::from_millis(30);
/// Budgets older than this are swept.
const KEEP_SECONDS: i64 = 60;
/// The pause after a throughput error (130429) of the number; doubled by
/// each further one in a row, up to [`MAX_BACK_OFF`] (and a quarter of the
/// rows' lease).
const BACK_OFF: Duration = Duration::from_secs(1);
const MAX_BACK_OFF: Duration = Duration::from_secs(30);

/// The sends this process holds of one number's budget.
struct Bucket {
    /// The Unix second the held sends belong to.
    second: i64,
    held: u32,
    /// When the next send may begin (spacing at `1/rate`).
    next: Instant,
    /// No send before this (the provider said the number sends too fast).
    paused_until: Option<Instant>,
    /// Throughput errors in a row (for the back-off's doubling).
    throttled: u32,
    /// The minute whose old budgets this process last swept.
    swept: i64,
}

/// One business number's rate.
pub(super) struct RateLimit {
    /// The budget's key: the number's id ("" for conversations of no
    /// configured number).
    number: String,
    rate: u32,
    every: Duration,
    /// The longest throttling pause: under the rows' lease, so a claimed
    /// row waiting it out is still ours when it goes.
    max_pause: Duration,
    /// A tokio mutex: held across a take from the budget, so one send of
    /// the number asks the database while the others wait for its answer.
    bucket: Mutex<Bucket>,
}

/// Unix seconds now and how far into that second.
fn wall() -> (i64, Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (
        now.as_secs() as i64,
        Duration::from_nanos(u64::from(now.subsec_nanos())),
    )
}

impl RateLimit {
    fn new(number: &str, rate: u32, max_pause: Duration) -> Self {
        let rate = rate.max(1);
        Self {
            number: number.to_string(),
            rate,
            every: Duration::from_secs_f64(1.0 / f64::from(rate)),
            max_pause: max_pause.clamp(Duration::from_millis(100), MAX_BACK_OFF),
            bucket: Mutex::new(Bucket {
                second: 0,
                held: 0,
                next: Instant::now(),
                paused_until: None,
                throttled: 0,
                swept: 0,
            }),
        }
    }

    /// Waits until this process may begin one send of the number, if that
    /// is before `begin_by`; `false` (and no send of the budget taken) when
    /// it is not. While the database cannot be asked, waits — up to
    /// `begin_by` (a send now could not be recorded either).
    pub(super) async fn wait(&self, db: &Database, begin_by: Instant) -> bool {
        // Sleeps `d`, unless that ends at or past `begin_by`.
        let sleep_within = |d: Duration| async move {
            let until = Instant::now() + d;
            if until >= begin_by {
                return false;
            }
            tokio::time::sleep_until(until.into()).await;
            true
        };
        loop {
            let Ok(mut b) = tokio::time::timeout_at(begin_by.into(), self.bucket.lock()).await else {
                return false;
            };
            if let Some(until) = b.paused_until.filter(|u| *u > Instant::now()) {
                drop(b);
                if !sleep_within(until - Instant::now()).await {
                    return false;
                }
                continue;
            }
            let (second, into) = wall();
            if into + GUARD >= Duration::from_secs(1) {
                drop(b);
                if !sleep_within(Duration::from_secs(1) - into).await {
                    return false;
                }
                continue;
            }
            if b.second != second {
                b.second = second;
                b.held = 0;
            }
            if b.held == 0 {
                b.held = self.take(db, second).await;
                if b.swept != second / KEEP_SECONDS {
                    b.swept = second / KEEP_SECONDS;
                    let _ = db
                        .once(|c| send_budget::sweep(c, second - KEEP_SECONDS).scope_boxed())
                        .await;
                }
                if b.held == 0 {
                    // Spent for this second (by this process or others).
                    drop(b);
                    if !sleep_within(Duration::from_secs(1).saturating_sub(wall().1)).await {
                        return false;
                    }
                    continue;
                }
            }
            let now = Instant::now();
            let at = b.next.max(now);
            let (still, into) = wall();
            // The take crossed into the next second, or the spacing would
            // begin this send there (or in its guard): the sends held of
            // this second lapse, and none is taken again before the next.
            if still != b.second || at.saturating_duration_since(now) + into + GUARD >= Duration::from_secs(1) {
                b.held = 0;
                b.next = at;
                drop(b);
                if !sleep_within(Duration::from_secs(1).saturating_sub(wall().1)).await {
                    return false;
                }
                continue;
            }
            if at >= begin_by {
                // Its turn comes too late: left to the sends behind it.
                return false;
            }
            b.held -= 1;
            b.next = at + self.every;
            drop(b);
            tokio::time::sleep_until(at.into()).await;
            return true;
        }
    }

    /// Takes a share of `second`'s budget; 0 when spent or when the
    /// database cannot be asked (after a short pause, to ask again).
    async fn take(&self, db: &Database, second: i64) -> u32 {
        let want = (self.rate / TAKES_PER_SECOND).max(1) as i32;
        let (number, rate) = (self.number.as_str(), self.rate as i32);
        let taken = db
            .once(|c| send_budget::take(c, number, second, want, rate).scope_boxed())
            .await;
        match taken {
            Ok(n) => n.max(0) as u32,
            Err(e) => {
                tracing::warn!(error = %e, "could not take from the send budget");
                tokio::time::sleep(Duration::from_millis(100)).await;
                0
            }
        }
    }

    /// The provider said the number sends too fast (130429): no send of it
    /// from this process for a while, longer each time in a row.
    pub(super) async fn throttled(&self) {
        let mut b = self.bucket.lock().await;
        if b.paused_until.is_some_and(|u| u > Instant::now()) {
            // One throttling answered to several sends in flight: one step.
            return;
        }
        let pause = (BACK_OFF * 2u32.saturating_pow(b.throttled.min(5))).min(self.max_pause);
        b.throttled += 1;
        b.paused_until = Some(Instant::now() + pause);
        b.held = 0;
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "the send API throttled a number; pausing its sends"
        );
    }

    /// A send was accepted: the throttling is over.
    pub(super) async fn accepted(&self) {
        let mut b = self.bucket.lock().await;
        if b.throttled > 0 && b.paused_until.is_none_or(|u| u <= Instant::now()) {
            b.throttled = 0;
        }
    }
}

/// Each business number's rate (numbers without a rate of their own, and
/// conversations of an unconfigured number, share the default).
pub(super) struct Rates {
    default: RateLimit,
    own: HashMap<String, RateLimit>,
}

impl Rates {
    /// `lease`: the rows' lease (throttling pauses stay under a quarter of it).
    pub(super) fn new(default: u32, numbers: &crate::numbers::Numbers, lease: Duration) -> Self {
        let max_pause = lease / 4;
        Self {
            default: RateLimit::new("", default, max_pause),
            own: numbers
                .all()
                .iter()
                .map(|n| (n.id.clone(), RateLimit::new(&n.id, n.rate_per_s, max_pause)))
                .collect(),
        }
    }

    /// The rate of `number` (as `Numbers::split` names it: the home
    /// number's id for its conversations).
    pub(super) fn of(&self, number: Option<&str>) -> &RateLimit {
        number.and_then(|n| self.own.get(n)).unwrap_or(&self.default)
    }
}
