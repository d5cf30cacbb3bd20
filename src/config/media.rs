//! `[media]`: how inbound media files (images, audio, video, documents,
//! stickers) are fetched from the Graph API and kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[media]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSettings {
    /// Fetch the files at all (the job rows are written either way).
    pub download: bool,
    /// Where the files are kept, one per media id.
    pub dir: PathBuf,
    /// A file larger than this is not kept: its job fails with the reason.
    /// WhatsApp's own ceiling is 100 MB (documents).
    pub max_bytes: u64,
    /// Attempts before a job fails for good.
    pub max_attempts: i32,
    /// Retry backoff: doubles from `base_delay_ms` up to `max_delay_ms`.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// A claimed job not recorded within this is claimed again (its process died).
    pub lease_ms: i64,
    /// Longest pause between looks for due jobs when no step wakes the fetcher.
    pub poll_interval_ms: u64,
    /// Files fetched at once.
    pub concurrency: usize,
    /// Budget of one file's two requests (its URL, then its bytes).
    pub timeout_ms: u64,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            download: true,
            dir: PathBuf::from("var/media"),
            max_bytes: 100 * 1024 * 1024,
            max_attempts: 6,
            base_delay_ms: 1_000,
            max_delay_ms: 300_000,
            lease_ms: 150_000,
            poll_interval_ms: 1_000,
            concurrency: 4,
            timeout_ms: 60_000,
        }
    }
}
