//! `[database]`: the server, the pool, retries and the embedded cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::Secret;

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
    /// Seconds after which a connection whose server stopped answering is
    /// closed by the kernel (`tcp_user_timeout`, with keepalives); 0 leaves
    /// the system's defaults (minutes). See `db::tcp`.
    pub tcp_user_timeout_s: u64,
    /// Milliseconds a caller waits for the server's answer to one attempt,
    /// beyond `statement_timeout_ms` (which the server enforces — if it is
    /// still there): past it the attempt fails, retryably, never hangs.
    pub answer_grace_ms: u64,
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
            tcp_user_timeout_s: 10,
            answer_grace_ms: 2_000,
            retry: RetrySettings::default(),
            embedded: EmbeddedSettings::default(),
        }
    }
}

impl DatabaseSettings {
    /// The longest one attempt of an operation waits for the server.
    pub fn answer_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms + self.answer_grace_ms)
    }

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
