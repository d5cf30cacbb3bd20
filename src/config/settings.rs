//! The typed settings tree. Every key has a default here and is documented in
//! the root `config.toml`; keep the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ai::AiSettings;
use super::database::DatabaseSettings;
use super::engine::EngineSettings;
use super::media::MediaSettings;
use super::outbox::OutboxSettings;
use super::secret::Secret;
use super::timers::TimerSettings;
use super::NumberSettings;

/// The whole configuration of one switchboard process.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub whatsapp: WhatsAppSettings,
    pub api: ApiSettings,
    pub ai: AiSettings,
    pub engine: EngineSettings,
    pub outbox: OutboxSettings,
    pub media: MediaSettings,
    pub timers: TimerSettings,
    pub retention: super::RetentionSettings,
    pub integrations: super::IntegrationSettings,
    pub flow: FlowSettings,
    pub log: LogSettings,
    pub telemetry: super::TelemetrySettings,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the HTTP server listens on. Loopback by default: exposing the
    /// engine is a decision, not an accident.
    pub bind: String,
    /// Seconds given to in-flight work on SIGTERM/SIGINT before the process exits.
    pub shutdown_timeout_s: u64,
    /// Allow a non-loopback `bind` without a WhatsApp app secret and an API
    /// token. Logged as a loud warning; for closed networks only.
    pub insecure: bool,
    /// Open client connections at most (over all workers); past it, new
    /// connections wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// A client has this long to send a request's head (slow clients that
    /// hold a connection without finishing a request are cut off: 408).
    pub request_head_timeout_ms: u64,
    /// Largest total size of a request's header names and values (431).
    pub max_header_bytes: usize,
    /// Milliseconds a webhook delivery may take to be stored; past it, 503
    /// (the provider delivers it again): a database that stopped answering
    /// never holds a request open.
    pub webhook_deadline_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            shutdown_timeout_s: 30,
            insecure: false,
            max_connections: 10_000,
            request_head_timeout_ms: 5_000,
            max_header_bytes: 16 * 1024,
            webhook_deadline_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WhatsAppSettings {
    /// Token echoed in the `GET /webhook` verification handshake.
    pub verify_token: Option<Secret>,
    /// App secret that signs deliveries (`X-Hub-Signature-256`).
    pub app_secret: Option<Secret>,
    /// Bearer token for the send API. Unset: replies go to a log sink.
    pub access_token: Option<Secret>,
    /// The business number of a one-number deployment; with
    /// `numbers`, the home number (its conversations are keyed by the
    /// contact alone, as before there were several).
    pub phone_number_id: Option<String>,
    /// Several business numbers in one deployment.
    pub numbers: Vec<NumberSettings>,
    pub api_base: String,
    pub api_version: String,
    /// Mark each inbound message read when the bot takes it up (each
    /// number may say otherwise). Best-effort: never delays a reply.
    pub read_receipts: bool,
    /// With the read receipt, show the typing indicator until the reply.
    pub typing_indicator: bool,
    /// The message templates the deployment may send (outside the 24-hour
    /// window, from timers and agents); a number may list its own.
    pub templates: Vec<super::TemplateSettings>,
}

impl Default for WhatsAppSettings {
    fn default() -> Self {
        Self {
            verify_token: None,
            app_secret: None,
            access_token: None,
            phone_number_id: None,
            numbers: Vec::new(),
            api_base: "https://graph.facebook.com".into(),
            api_version: "v21.0".into(),
            read_receipts: true,
            typing_indicator: true,
            templates: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Bearer tokens accepted on `/api` (several, for rotation): plain
    /// strings (anonymous admins) or `{ name, token, role }`. Empty: open.
    pub tokens: Vec<super::ApiToken>,
    /// Requests per second per client address on `/api` (then 429 with
    /// Retry-After), with bursts up to `burst`.
    pub rate_per_s: u32,
    pub burst: u32,
    /// Open Server-Sent Event streams at once (then 503).
    pub max_sse_subscribers: usize,
    /// Require the API token on `/metrics` too.
    pub protect_metrics: bool,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            // An agent console polls a few times a second; 50/s with bursts
            // of 100 never slows a person and stops a runaway script.
            rate_per_s: 50,
            burst: 100,
            max_sse_subscribers: 200,
            protect_metrics: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowSettings {
    /// The conversation flow (TOML).
    pub path: PathBuf,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("flows/reporte.toml"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter (`info`, `switchboard=debug,info`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Settings {
    /// Why serving with these settings would expose the engine, if it would:
    /// a non-loopback bind needs signed webhooks and an API token.
    pub fn exposure_problem(&self) -> Option<String> {
        let addr: SocketAddr = self.server.bind.parse().ok()?;
        if addr.ip().is_loopback() {
            return None;
        }
        let mut missing = Vec::new();
        if self.whatsapp.app_secret.as_ref().is_none_or(|s| s.is_empty()) {
            missing.push("whatsapp.app_secret (webhook signatures)");
        }
        if self.api.tokens.is_empty() {
            missing.push("api.tokens (the agent API)");
        }
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "server.bind = {} is reachable from other machines, but {} not configured. \
             Configure them, bind to 127.0.0.1, or set server.insecure = true on a closed network.",
            self.server.bind,
            missing.join(" and ") + if missing.len() > 1 { " are" } else { " is" }
        ))
    }
}
