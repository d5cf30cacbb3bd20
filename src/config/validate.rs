//! What types alone cannot check: ranges, URL schemes, names. Every problem
//! names its key, so `config check` and a failed start say what to fix.

use std::net::SocketAddr;

use super::database::{DatabaseSettings, PgValue, OWNED_SERVER_SETTINGS};
use super::settings::Settings;

/// Collects "key: why" lines.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, key: &str, why: &str) {
        if !ok {
            self.0.push(format!("{key}: {why}"));
        }
    }
}

impl Settings {
    /// Checks what types alone cannot. Every problem names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Problems::default();
        server(self, &mut p);
        database(&self.database, &mut p);
        embedded(&self.database, &mut p);
        p.check(
            self.whatsapp.api_base.starts_with("http://") || self.whatsapp.api_base.starts_with("https://"),
            "whatsapp.api_base",
            "must be an http:// or https:// URL",
        );
        numbers(&self.whatsapp, &mut p);
        p.0.extend(super::templates::problems(
            "whatsapp.templates",
            &self.whatsapp.templates,
        ));
        for (i, n) in self.whatsapp.numbers.iter().enumerate() {
            if let Some(list) = &n.templates {
                p.0.extend(super::templates::problems(
                    &format!("whatsapp.numbers[{i}].templates"),
                    list,
                ));
            }
        }
        p.check(self.timers.batch >= 1, "timers.batch", "must be at least 1");
        p.check(
            (10..=60_000).contains(&self.timers.poll_interval_ms),
            "timers.poll_interval_ms",
            "must be between 10 and 60000",
        );
        p.check(self.timers.lease_ms >= 1000, "timers.lease_ms", "must be at least 1000");
        p.check(
            self.outbox.lease_ms >= 1000,
            "outbox.lease_ms",
            "must be at least 1000 (a claimed reply's send must begin within half of it)",
        );
        p.check(self.media.max_attempts >= 1, "media.max_attempts", "must be at least 1");
        p.check(self.media.concurrency >= 1, "media.concurrency", "must be at least 1");
        p.check(self.media.max_bytes >= 1, "media.max_bytes", "must be at least 1");
        p.check(
            self.media.lease_ms > 2 * self.media.timeout_ms as i64,
            "media.lease_ms",
            "must exceed twice media.timeout_ms (a fetch is two requests)",
        );
        p.0.extend(super::integrations::problems(&self.integrations, self.outbox.lease_ms));
        p.0.extend(super::retention::problems(&self.retention));
        p.0.extend(super::telemetry::problems(&self.telemetry));
        for why in super::tokens::problems(&self.api.tokens) {
            p.check(false, "api.tokens", &why);
        }
        p.check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            "must be a tracing filter such as `info` or `switchboard=debug,info`",
        );
        p.0
    }
}

fn server(s: &Settings, p: &mut Problems) {
    p.check(
        s.server.bind.parse::<SocketAddr>().is_ok(),
        "server.bind",
        "must be an IP address and port, such as 127.0.0.1:8080",
    );
    p.check(
        s.server.max_connections >= 1,
        "server.max_connections",
        "must be at least 1",
    );
    p.check(
        s.server.request_head_timeout_ms > 0,
        "server.request_head_timeout_ms",
        "must be positive",
    );
    p.check(
        s.server.webhook_deadline_ms > 0,
        "server.webhook_deadline_ms",
        "must be positive",
    );
    p.check(
        (1024..=64 * 1024).contains(&s.server.max_header_bytes),
        "server.max_header_bytes",
        "must be between 1024 and 65536",
    );
}

fn database(db: &DatabaseSettings, p: &mut Problems) {
    p.check(
        db.max_connections >= 1,
        "database.max_connections",
        "must be at least 1",
    );
    p.check(
        db.min_idle <= db.max_connections,
        "database.min_idle",
        "must not exceed database.max_connections",
    );
    p.check(
        db.connect_timeout_ms > 0,
        "database.connect_timeout_ms",
        "must be positive",
    );
    p.check(
        db.acquire_timeout_ms > 0,
        "database.acquire_timeout_ms",
        "must be positive",
    );
    p.check(db.max_lifetime_s > 0, "database.max_lifetime_s", "must be positive");
    p.check(db.idle_timeout_s > 0, "database.idle_timeout_s", "must be positive");
    p.check(
        db.retry.max_attempts >= 1,
        "database.retry.max_attempts",
        "must be at least 1",
    );
    p.check(
        db.retry.base_delay_ms <= db.retry.max_delay_ms,
        "database.retry.base_delay_ms",
        "must not exceed database.retry.max_delay_ms",
    );
    for (key, url) in [("database.url", &db.url), ("database.read_url", &db.read_url)] {
        if let Some(url) = url {
            let u = url.expose();
            p.check(
                u.starts_with("postgres://") || u.starts_with("postgresql://"),
                key,
                "must be a postgres:// or postgresql:// URL",
            );
        }
    }
}

fn embedded(db: &DatabaseSettings, p: &mut Problems) {
    p.check(
        db.embedded.port > 0,
        "database.embedded.port",
        "must be a TCP port (1-65535)",
    );
    p.check(
        !db.embedded.data_dir.as_os_str().is_empty(),
        "database.embedded.data_dir",
        "must not be empty",
    );
    p.check(
        !db.embedded.run_as.is_empty(),
        "database.embedded.run_as",
        "must not be empty",
    );
    for (name, value) in &db.embedded.server_settings {
        let key = format!("database.embedded.server_settings.{name}");
        let well_formed = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        p.check(
            well_formed,
            &key,
            "must be a PostgreSQL setting name (letters, digits, `_`, `.`)",
        );
        p.check(
            !OWNED_SERVER_SETTINGS.contains(&name.to_ascii_lowercase().as_str()),
            &key,
            "is set by switchboard (use database.embedded.port)",
        );
        let text_ok = match value {
            PgValue::Text(t) => !t.chars().any(char::is_control),
            PgValue::Float(f) => f.is_finite(),
            _ => true,
        };
        p.check(
            text_ok,
            &key,
            "must not contain control characters (or be NaN/infinite)",
        );
    }
}

fn numbers(w: &super::WhatsAppSettings, p: &mut Problems) {
    let mut seen = std::collections::HashSet::new();
    for (i, n) in w.numbers.iter().enumerate() {
        p.check(
            !n.phone_number_id.is_empty() && n.phone_number_id.bytes().all(|b| b.is_ascii_digit()),
            &format!("whatsapp.numbers[{i}].phone_number_id"),
            "must be the number's id in the Cloud API (digits)",
        );
        p.check(
            seen.insert(n.phone_number_id.as_str()),
            &format!("whatsapp.numbers[{i}].phone_number_id"),
            "is configured twice",
        );
        p.check(
            n.rate_per_s != Some(0),
            &format!("whatsapp.numbers[{i}].rate_per_s"),
            "must be at least 1",
        );
        p.check(
            n.access_token.as_ref().is_none_or(|t| !t.is_empty()),
            &format!("whatsapp.numbers[{i}].access_token"),
            "must not be empty (leave it out for whatsapp.access_token)",
        );
    }
}
