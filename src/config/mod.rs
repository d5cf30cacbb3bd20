//! Configuration: one TOML file, every key overridable from the environment.
//!
//! Loading order: built-in defaults ← `config.toml` ← `SWITCHBOARD__SECTION__KEY`
//! variables. Unknown keys, wrong types and invalid values are errors that name
//! the key (and, for the file, the line).

mod ai;
mod breaker;
mod database;
mod engine;
mod integrations;
mod media;
mod numbers;
mod outbox;
mod retention;
mod secret;
mod settings;
mod telemetry;
mod templates;
mod timers;
mod tokens;
mod validate;

use std::path::{Path, PathBuf};

pub use ai::{AiProvider, AiSettings, OpenAiSettings, SimulatedSettings};
pub use breaker::BreakerSettings;
pub use database::{DatabaseSettings, EmbeddedSettings, PgValue, RetrySettings, OWNED_SERVER_SETTINGS};
pub use engine::{EngineSettings, GroupCommitSettings};
pub use integrations::{webhook_key, IntegrationSettings, WebhookSettings, EVENT_KINDS};
pub use media::MediaSettings;
pub use numbers::NumberSettings;
pub use outbox::OutboxSettings;
pub use retention::RetentionSettings;
pub use secret::{redact_url, Secret, REDACTED};
pub use settings::*;
pub use telemetry::TelemetrySettings;
pub use templates::TemplateSettings;
pub use timers::TimerSettings;
pub use tokens::{ApiToken, Role};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SWITCHBOARD__";

/// Why a configuration could not be loaded. Each message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var} (key `{key}`): {message}")]
    Env { var: String, key: String, message: String },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Where the settings came from, for `config check`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    /// The file read, if it existed.
    pub file: Option<PathBuf>,
    /// Keys set by environment variables.
    pub env_keys: Vec<String>,
}

/// Loads `path` (if it exists; a missing file means "all defaults" unless
/// `required`) and the process environment.
pub fn load(path: &Path, required: bool) -> Result<Loaded, ConfigError> {
    load_with_env(path, required, std::env::vars())
}

/// [`load`] with an explicit environment, so tests need not touch the
/// process-wide one.
pub fn load_with_env(
    path: &Path,
    required: bool,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file_error = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    // The typed parse of the text alone gives errors with line and column.
    let mut table = match &text {
        Some(text) => {
            toml::from_str::<Settings>(text).map_err(|e| file_error(e.to_string()))?;
            toml::from_str::<toml::Table>(text).map_err(|e| file_error(e.to_string()))?
        }
        None => toml::Table::new(),
    };
    let overrides = env_overrides(env);
    for o in &overrides {
        set_path(&mut table, &o.path, parse_env_value(&o.raw)).map_err(|message| ConfigError::Env {
            var: o.var.clone(),
            key: o.key(),
            message,
        })?;
    }
    let settings = deserialize_with_env(table, &overrides)?;
    let problems = settings.validate();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Loaded {
        settings,
        file: text.map(|_| path.to_path_buf()),
        env_keys: overrides.iter().map(EnvOverride::key).collect(),
    })
}

/// Parses a TOML document alone (no environment), for tests and fuzzing.
pub fn parse_str(text: &str) -> Result<Settings, ConfigError> {
    let settings = toml::from_str::<Settings>(text).map_err(|e| ConfigError::File {
        path: PathBuf::from("<string>"),
        message: e.to_string(),
    })?;
    let problems = settings.validate();
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The effective configuration as TOML, secrets redacted.
pub fn render_redacted(settings: &Settings) -> String {
    let mut shown = settings.clone();
    // URLs keep their host and user (useful), lose their password.
    shown.database.url = shown.database.url.map(|u| Secret::new(redact_url(u.expose())));
    shown.database.read_url = shown.database.read_url.map(|u| Secret::new(redact_url(u.expose())));
    let mut value = match toml::Value::try_from(&shown) {
        Ok(v) => v,
        Err(e) => return format!("# cannot render configuration: {e}\n"),
    };
    // `Secret` serializes as the redaction marker; URLs show their redacted form.
    if let Some(db) = value.get_mut("database").and_then(toml::Value::as_table_mut) {
        for (key, url) in [("url", &shown.database.url), ("read_url", &shown.database.read_url)] {
            if let Some(url) = url {
                db.insert(key.into(), toml::Value::String(url.expose().to_string()));
            }
        }
    }
    toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}

struct EnvOverride {
    var: String,
    path: Vec<String>,
    raw: String,
}

impl EnvOverride {
    fn key(&self) -> String {
        self.path.join(".")
    }
}

fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<EnvOverride> {
    let mut out: Vec<EnvOverride> = env
        .into_iter()
        .filter_map(|(var, raw)| {
            let rest = var.strip_prefix(ENV_PREFIX)?;
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            Some(EnvOverride { var, path, raw })
        })
        .collect();
    // Deterministic order whatever the environment's.
    out.sort_by(|a, b| a.var.cmp(&b.var));
    out
}

/// An environment value is read as a TOML value when it is one (`16`, `true`,
/// `["a", "b"]`), otherwise as a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    if path.iter().any(String::is_empty) {
        return Err("empty key segment (use one `__` between section and key)".into());
    }
    let mut cur = table;
    for seg in parents {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{seg}` is a value, not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Deserializes the merged tree. An environment value that parsed as a
/// number or boolean but lands on a string key (a token `12345`) is retried
/// as the string it was.
fn deserialize_with_env(mut table: toml::Table, overrides: &[EnvOverride]) -> Result<Settings, ConfigError> {
    let mut retried = std::collections::HashSet::new();
    loop {
        let result: Result<Settings, _> = serde_path_to_error::deserialize(toml::Value::Table(table.clone()));
        let err = match result {
            Ok(settings) => return Ok(settings),
            Err(err) => err,
        };
        let key = err.path().to_string();
        // `tokens[0]` → `tokens`: a list set from one variable.
        let base_key = key.split('[').next().unwrap_or(&key).to_string();
        let inner = err.into_inner().to_string();
        let Some(o) = overrides.iter().find(|o| o.key() == base_key) else {
            return Err(ConfigError::Invalid(vec![format!("{key}: {inner}")]));
        };
        let as_string = toml::Value::String(o.raw.clone());
        if !retried.insert(base_key.clone()) || parse_env_value(&o.raw) == as_string {
            return Err(ConfigError::Env {
                var: o.var.clone(),
                key: base_key,
                message: inner,
            });
        }
        set_path(&mut table, &o.path, as_string).map_err(|message| ConfigError::Env {
            var: o.var.clone(),
            key: o.key(),
            message,
        })?;
    }
}
