//! Inbound media files (images, audio, video, documents, stickers): each is
//! fetched from the Graph API by a durable job — a `media` row written in
//! the transaction that applies its message (see [`crate::db::media`]) —
//! so a file is fetched after a crash or a restart as well, by whichever
//! process claims it, retried with backoff, and kept under `media.dir` to
//! be served to the console.
//!
//! - `fetch`: one file through the Graph API, with the size limit;
//! - `store`: where a file is kept.

mod fetch;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scoped_futures::ScopedFutureExt;
use tokio_util::sync::CancellationToken;

pub use fetch::{Graph, Refused};
pub use store::file_name;

use crate::config::{MediaSettings, Secret, Settings};
use crate::db::media::{self as rows, Attempt, MediaJob};
use crate::db::Database;
use crate::numbers::Numbers;
use crate::phone::mask;
use crate::retry::RetryPolicy;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Files kept; atomic: counted by the fetcher, read by `/metrics`.
    pub downloaded: AtomicU64,
    /// Attempts to be made again; atomic: counted by the fetcher, read by `/metrics`.
    pub retried: AtomicU64,
    /// Jobs failed for good; atomic: counted by the fetcher, read by `/metrics`.
    pub failed: AtomicU64,
}

/// What the fetcher works with.
pub struct Fetcher {
    pub db: Database,
    pub graph: Graph,
    pub numbers: Arc<Numbers>,
    /// The token of a deployment that configured no number (`whatsapp.access_token`).
    pub default_token: Option<Secret>,
    pub settings: MediaSettings,
    pub stats: Arc<MediaStats>,
}

/// Fetches due files until `stop`: every due job at once (up to
/// `media.concurrency` at a time), then a pause of `media.poll_interval_ms`.
/// A fetch under way at the stop is dropped (a download may take up to
/// `media.timeout_ms`, longer than a shutdown waits): its job comes due
/// again after its lease.
pub async fn run(fetcher: Fetcher, stop: CancellationToken) {
    let pause = Duration::from_millis(fetcher.settings.poll_interval_ms.max(10));
    loop {
        let busy = tokio::select! {
            _ = stop.cancelled() => return,
            claimed = fetcher.round() => claimed == fetcher.settings.concurrency,
        };
        if busy {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

impl Fetcher {
    /// A fetcher for the deployment `settings` describe.
    pub fn new(db: Database, numbers: Arc<Numbers>, settings: &Settings, stats: Arc<MediaStats>) -> Self {
        let m = &settings.media;
        Self {
            db,
            graph: Graph::new(
                &settings.whatsapp.api_base,
                &settings.whatsapp.api_version,
                m.max_bytes,
                Duration::from_millis(m.timeout_ms),
            ),
            numbers,
            default_token: settings.whatsapp.access_token.clone(),
            settings: m.clone(),
            stats,
        }
    }

    /// Claims the due jobs (at most `concurrency`) and makes one attempt at
    /// each; returns how many it claimed.
    async fn round(&self) -> usize {
        let (limit, lease) = (self.settings.concurrency as i64, self.settings.lease_ms);
        let jobs = match self.db.once(|c| rows::claim(c, limit, lease).scope_boxed()).await {
            Ok(jobs) => jobs,
            Err(e) => {
                // The jobs stay due: the next round claims them.
                tracing::warn!(error = %e, "could not claim media jobs");
                return 0;
            }
        };
        let n = jobs.len();
        futures_util::future::join_all(jobs.into_iter().map(|j| self.attempt(j))).await;
        n
    }

    async fn attempt(&self, job: MediaJob) {
        let attempt = match self.download(&job).await {
            Ok(kept) => kept,
            Err(Refused::Transient(reason)) if job.attempts < self.settings.max_attempts => {
                let policy = RetryPolicy {
                    max_attempts: self.settings.max_attempts as u32,
                    base_delay: Duration::from_millis(self.settings.base_delay_ms),
                    max_delay: Duration::from_millis(self.settings.max_delay_ms),
                };
                let delay = policy.delay(job.attempts.max(1) as u32 - 1, &mut rand::rng());
                Attempt::Retry {
                    delay_ms: delay.as_millis() as i64,
                    reason,
                }
            }
            Err(Refused::Transient(reason)) => Attempt::Failed {
                reason: format!("{reason} (after {} attempts)", job.attempts),
            },
            Err(Refused::Permanent(reason)) => Attempt::Failed { reason },
        };
        let counter = match &attempt {
            Attempt::Downloaded { bytes, .. } => {
                tracing::info!(phone = %mask(&job.phone), media = %job.media_id, bytes, "media kept");
                &self.stats.downloaded
            }
            Attempt::Retry { reason, .. } => {
                tracing::warn!(phone = %mask(&job.phone), media = %job.media_id, %reason, "media fetch to retry");
                &self.stats.retried
            }
            Attempt::Failed { reason } => {
                tracing::warn!(phone = %mask(&job.phone), media = %job.media_id, %reason, "media fetch failed for good");
                &self.stats.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (job_ref, attempt_ref) = (&job, &attempt);
        let recorded = self
            .db
            .run("media_record", |c| rows::record(c, job_ref, attempt_ref).scope_boxed())
            .await;
        if let Err(e) = recorded {
            // The claim's lease makes the job due again; it is fetched again then.
            tracing::warn!(error = %e, media = %job.media_id, "could not record a media attempt");
        }
    }

    /// Fetches and keeps `job`'s file.
    async fn download(&self, job: &MediaJob) -> Result<Attempt, Refused> {
        let token = self
            .numbers
            .of(&job.phone)
            .and_then(|n| n.access_token.clone())
            .or_else(|| self.default_token.clone())
            .ok_or_else(|| Refused::Permanent("no access token for the conversation's business number".into()))?;
        let file = self.graph.fetch(&token, &job.media_id, job.sha256.as_deref()).await?;
        let path = store::keep(&self.settings.dir, &job.media_id, &file.bytes)
            .await
            .map_err(|e| Refused::Transient(format!("keeping the file under {}: {e}", self.settings.dir.display())))?;
        Ok(Attempt::Downloaded {
            path: path.to_string_lossy().into_owned(),
            bytes: file.bytes.len() as i64,
            mime_type: file.mime_type,
        })
    }
}
