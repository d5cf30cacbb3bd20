//! One file through the Graph API: `GET /{media-id}` names its URL (valid a
//! few minutes), then `GET` that URL, both with the number's token. The body
//! is read chunk by chunk and refused once past the size limit, so a large
//! file never sits whole in memory beyond `media.max_bytes`.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// A file as fetched, before it is kept.
#[derive(Debug)]
pub struct File {
    pub bytes: Vec<u8>,
    pub mime_type: Option<String>,
}

/// Why a fetch did not bring a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Worth another attempt (network, 5xx, 429, a body that did not match its sha256).
    Transient(String),
    /// Never to be fetched (over the limit, the media id refused).
    Permanent(String),
}

/// The Graph API's media endpoints.
#[derive(Clone)]
pub struct Graph {
    client: reqwest::Client,
    /// `{api_base}/{api_version}`.
    base: String,
    max_bytes: u64,
}

impl Graph {
    pub fn new(api_base: &str, api_version: &str, max_bytes: u64, timeout: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            base: format!("{}/{}", api_base.trim_end_matches('/'), api_version),
            max_bytes,
        }
    }

    /// Fetches `media_id`'s file; checks it against `sha256` (hex, as the
    /// webhook gave it) when there is one.
    pub async fn fetch(&self, token: &Secret, media_id: &str, sha256: Option<&str>) -> Result<File, Refused> {
        let meta = self.get(&format!("{}/{media_id}", self.base), token).await?;
        let meta: Value = meta.json().await.map_err(|e| transient("media URL answer", e))?;
        if let Some(size) = meta.get("file_size").and_then(Value::as_u64) {
            self.within_limit(size)?;
        }
        let url = meta
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Refused::Transient("the media URL answer named no url".into()))?;
        let mut resp = self.get(url, token).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transient("media body", e))? {
            bytes.extend_from_slice(&chunk);
            self.within_limit(bytes.len() as u64)?;
        }
        if let Some(want) = sha256 {
            let got = hex::encode(Sha256::digest(&bytes));
            if !got.eq_ignore_ascii_case(want) {
                return Err(Refused::Transient(format!("sha256 {got} is not the webhook's {want}")));
            }
        }
        Ok(File {
            bytes,
            mime_type: meta.get("mime_type").and_then(Value::as_str).map(str::to_string),
        })
    }

    async fn get(&self, url: &str, token: &Secret) -> Result<reqwest::Response, Refused> {
        let resp = self
            .client
            .get(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| transient("network", e.without_url()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let why = format!("HTTP {} from the Graph API", status.as_u16());
        // 401/403 too: a token being rotated works again on a later attempt.
        Err(
            if status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 429) {
                Refused::Transient(why)
            } else {
                Refused::Permanent(why)
            },
        )
    }

    fn within_limit(&self, size: u64) -> Result<(), Refused> {
        if size > self.max_bytes {
            return Err(Refused::Permanent(format!(
                "file of {size} bytes or more is over media.max_bytes ({})",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

fn transient(what: &str, e: impl std::fmt::Display) -> Refused {
    Refused::Transient(format!("{what}: {e}"))
}
