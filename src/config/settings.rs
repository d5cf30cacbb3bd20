//! The typed settings tree. Every key has a default here and is documented in
//! the root `config.toml`; keep the two in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::Secret;
pub use crate::ai::AiSettings;
pub use crate::engine::EngineSettings;
pub use crate::outbox::OutboxSettings;

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
    pub flow: FlowSettings,
    pub log: LogSettings,
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
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// PostgreSQL server to use. Unset: the engine runs its own cluster
    /// (`[database.embedded]`).
    pub url: Option<Secret>,
    /// Optional read replica for conversation reads (fenced by LSN).
    pub read_url: Option<Secret>,
    /// Pool size: the most connections this process ever holds.
    pub max_connections: u32,
    /// Connections kept open while idle, so a burst does not pay for connects.
    pub min_idle: u32,
    /// Budget for opening one connection (TCP + auth + session set-up).
    pub connect_timeout_ms: u64,
    /// How long a caller waits for a pooled connection before it gets a
    /// retryable pool-timeout error. Short: a full pool must fail fast, not hang.
    pub acquire_timeout_ms: u64,
    /// Idle connections above `min_idle` are closed after this long.
    pub idle_timeout_s: u64,
    /// Connections are recycled after this long, whatever their use.
    pub max_lifetime_s: u64,
    /// Check a connection on checkout, so one the server closed is replaced
    /// before a caller sees it: the client's view of its socket and
    /// transaction, no round trip (see `checkout_query`).
    pub test_on_checkout: bool,
    /// With `test_on_checkout`: also run `SELECT 1`, a round trip per
    /// checkout, for networks that drop connections without closing them.
    pub checkout_query: bool,
    /// Per-connection `statement_timeout`: no statement runs longer.
    pub statement_timeout_ms: u64,
    /// Per-connection `idle_in_transaction_session_timeout`: a transaction left
    /// open by a stuck task is killed, releasing its locks.
    pub idle_in_transaction_timeout_ms: u64,
    pub retry: RetrySettings,
    pub embedded: EmbeddedSettings,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            read_url: None,
            // 2 cores: PostgreSQL saturates near 2-4 x cores active backends;
            // group commit, not connection count, is the throughput lever.
            max_connections: 16,
            min_idle: 2,
            connect_timeout_ms: 5_000,
            acquire_timeout_ms: 2_000,
            idle_timeout_s: 600,
            max_lifetime_s: 1_800,
            test_on_checkout: true,
            checkout_query: false,
            statement_timeout_ms: 10_000,
            idle_in_transaction_timeout_ms: 15_000,
            retry: RetrySettings::default(),
            embedded: EmbeddedSettings::default(),
        }
    }
}

impl DatabaseSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

/// Retries of retryable database errors (lost connection, pool timeout,
/// serialization failure, deadlock): exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Ceiling of the first backoff; doubles each retry (50 → 100 → 200 ms).
    pub base_delay_ms: u64,
    /// No backoff ceiling grows past this.
    pub max_delay_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay_ms: 50,
            max_delay_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSettings {
    /// Cluster directory; relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// Loopback TCP port of the embedded server.
    pub port: u16,
    /// Folder with `initdb`, `pg_ctl` and `postgres`. Empty: found on PATH,
    /// through `pg_config --bindir`, or under `/usr/lib/postgresql/*/bin`.
    pub bin_dir: Option<PathBuf>,
    /// Unprivileged system user that runs the server when switchboard runs as
    /// root (PostgreSQL refuses root).
    pub run_as: String,
    /// Seconds to wait for the server to start or stop.
    pub start_timeout_s: u64,
    /// Extra `postgresql.conf` settings of the embedded server (a profile's
    /// `shared_preload_libraries`, `log_min_duration_statement`, ...), written
    /// after switchboard's own; the ones it owns (port, addresses, sockets)
    /// are refused.
    pub server_settings: BTreeMap<String, PgValue>,
}

/// A `postgresql.conf` value as TOML gives it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum PgValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl PgValue {
    /// The value as a quoted `postgresql.conf` string (every setting takes
    /// one): `'` doubled, so it cannot end early.
    pub fn conf_literal(&self) -> String {
        let raw = match self {
            PgValue::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            PgValue::Int(i) => i.to_string(),
            PgValue::Float(f) => f.to_string(),
            PgValue::Text(t) => t.clone(),
        };
        format!("'{}'", raw.replace('\'', "''"))
    }
}

/// Settings of the embedded server that switchboard writes itself.
pub const OWNED_SERVER_SETTINGS: &[&str] = &["listen_addresses", "port", "unix_socket_directories"];

impl Default for EmbeddedSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("var/postgres"),
            port: 54329,
            bin_dir: None,
            run_as: "postgres".into(),
            start_timeout_s: 60,
            server_settings: BTreeMap::new(),
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
    pub phone_number_id: Option<String>,
    pub api_base: String,
    pub api_version: String,
}

impl Default for WhatsAppSettings {
    fn default() -> Self {
        Self {
            verify_token: None,
            app_secret: None,
            access_token: None,
            phone_number_id: None,
            api_base: "https://graph.facebook.com".into(),
            api_version: "v21.0".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Bearer tokens accepted on `/api` (several, for rotation). Empty: open.
    pub tokens: Vec<Secret>,
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

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AiProvider {
    /// Keywords and patterns from the flow; deterministic, no network.
    #[default]
    Rules,
    /// An OpenAI-compatible chat-completions endpoint.
    Openai,
    /// Configurable latency, errors and hangs, for load and fault tests.
    Simulated,
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

    /// Checks what types alone cannot. Every problem names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, why: &str| {
            if !ok {
                problems.push(format!("{key}: {why}"));
            }
        };
        check(
            self.server.bind.parse::<SocketAddr>().is_ok(),
            "server.bind",
            "must be an IP address and port, such as 127.0.0.1:8080",
        );
        check(
            self.server.max_connections >= 1,
            "server.max_connections",
            "must be at least 1",
        );
        check(
            self.server.request_head_timeout_ms > 0,
            "server.request_head_timeout_ms",
            "must be positive",
        );
        check(
            (1024..=64 * 1024).contains(&self.server.max_header_bytes),
            "server.max_header_bytes",
            "must be between 1024 and 65536",
        );
        let db = &self.database;
        check(
            db.max_connections >= 1,
            "database.max_connections",
            "must be at least 1",
        );
        check(
            db.min_idle <= db.max_connections,
            "database.min_idle",
            "must not exceed database.max_connections",
        );
        check(
            db.connect_timeout_ms > 0,
            "database.connect_timeout_ms",
            "must be positive",
        );
        check(
            db.acquire_timeout_ms > 0,
            "database.acquire_timeout_ms",
            "must be positive",
        );
        check(db.max_lifetime_s > 0, "database.max_lifetime_s", "must be positive");
        check(db.idle_timeout_s > 0, "database.idle_timeout_s", "must be positive");
        check(
            db.retry.max_attempts >= 1,
            "database.retry.max_attempts",
            "must be at least 1",
        );
        check(
            db.retry.base_delay_ms <= db.retry.max_delay_ms,
            "database.retry.base_delay_ms",
            "must not exceed database.retry.max_delay_ms",
        );
        for (key, url) in [("database.url", &db.url), ("database.read_url", &db.read_url)] {
            if let Some(url) = url {
                let u = url.expose();
                check(
                    u.starts_with("postgres://") || u.starts_with("postgresql://"),
                    key,
                    "must be a postgres:// or postgresql:// URL",
                );
            }
        }
        check(
            db.embedded.port > 0,
            "database.embedded.port",
            "must be a TCP port (1-65535)",
        );
        check(
            !db.embedded.data_dir.as_os_str().is_empty(),
            "database.embedded.data_dir",
            "must not be empty",
        );
        check(
            !db.embedded.run_as.is_empty(),
            "database.embedded.run_as",
            "must not be empty",
        );
        for (name, value) in &db.embedded.server_settings {
            let key = format!("database.embedded.server_settings.{name}");
            let well_formed = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            check(
                well_formed,
                &key,
                "must be a PostgreSQL setting name (letters, digits, `_`, `.`)",
            );
            check(
                !OWNED_SERVER_SETTINGS.contains(&name.to_ascii_lowercase().as_str()),
                &key,
                "is set by switchboard (use database.embedded.port)",
            );
            let text_ok = match value {
                PgValue::Text(t) => !t.chars().any(char::is_control),
                PgValue::Float(f) => f.is_finite(),
                _ => true,
            };
            check(
                text_ok,
                &key,
                "must not contain control characters (or be NaN/infinite)",
            );
        }
        check(
            self.whatsapp.api_base.starts_with("http://") || self.whatsapp.api_base.starts_with("https://"),
            "whatsapp.api_base",
            "must be an http:// or https:// URL",
        );
        check(
            self.api.tokens.iter().all(|t| !t.is_empty()),
            "api.tokens",
            "must not contain an empty token",
        );
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            "must be a tracing filter such as `info` or `switchboard=debug,info`",
        );
        problems
    }
}
