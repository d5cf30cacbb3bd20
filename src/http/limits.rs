//! Per-client request rate limits (token buckets keyed by address) and the
//! bound on open event streams.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

/// Buckets kept before idle ones are swept (bounds memory under many clients).
const MAX_BUCKETS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, one per client address.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: DashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_s.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: DashMap::new(),
        }
    }

    /// `Ok` to go ahead, or the seconds to wait before the next request.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        if self.buckets.len() > MAX_BUCKETS {
            let burst = self.burst;
            let rate = self.rate;
            self.buckets
                .retain(|_, b| b.tokens + b.at.elapsed().as_secs_f64() * rate < burst);
        }
        let now = Instant::now();
        let mut b = self.buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Counts open event streams; a slot is given back when its guard drops.
#[derive(Clone)]
pub struct StreamSlots {
    open: Arc<AtomicUsize>,
    max: usize,
}

pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StreamSlots {
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    pub fn try_open(&self) -> Option<StreamSlot> {
        let prev = self.open.fetch_add(1, Ordering::SeqCst);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(StreamSlot(self.open.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}
