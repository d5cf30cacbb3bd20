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
    /// A sharded map: every `/api` request checks its bucket from any
    /// worker thread, and one entry's lock makes refill-and-take atomic.
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

/// Counts open event streams; a place is given back when its guard drops.
#[derive(Clone)]
pub struct StreamSlots {
    /// Streams open now; an `Arc`, shared with each place's guard that gives
    /// it back on drop; atomic, so opens and drops on any worker take no lock.
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

/// Middleware: refuses a request whose header names and values add up to
/// more than `server.max_header_bytes` — 431 with a JSON reason, counted —
/// before any handler runs. (The HTTP parser's own hard limits, 96 headers
/// and a 128 KiB head, sit above this.)
pub async fn header_size(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    use actix_web::ResponseError;
    let state = req.app_data::<actix_web::web::Data<super::AppState>>().cloned();
    if let Some(state) = state {
        let limit = state.settings.server.max_header_bytes;
        let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        if size > limit {
            state.metrics.rejected("header_size");
            let e = super::ApiError::new(
                actix_web::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request headers hold {size} bytes; at most {limit} are accepted"),
            );
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
    }
    next.call(req).await.map(|r| r.map_into_left_body())
}
