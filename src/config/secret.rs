//! A string that must never reach a log line, a `Debug` dump or `config check`.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret prints as everywhere.
pub const REDACTED: &str = "[redacted]";

/// A secret configuration value (tokens, app secrets, passwords, URLs with
/// credentials). `Debug`, `Display`-free and `Serialize` all print [`REDACTED`];
/// the value is zeroed on drop (by `secrecy`). Read it with [`Secret::expose`].
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The clear value. Call it only where the secret is used (a header, a
    /// connection), never to format a message.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// A PostgreSQL URL with its password replaced by [`REDACTED`], for logs and
/// `config check`. Anything that does not parse as a URL is redacted whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        // No credentials in the authority; a password may still hide in the query.
        if tail.contains("password=") {
            return format!("{scheme}://{authority}{}", redact_query_password(tail));
        }
        return url.to_string();
    };
    let user = userinfo.split(':').next().unwrap_or_default();
    let userinfo = if userinfo.contains(':') {
        format!("{user}:{REDACTED}")
    } else {
        user.to_string()
    };
    format!("{scheme}://{userinfo}@{host}{}", redact_query_password(tail))
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => format!("password={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_never_show_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).ok().as_deref(), Some("\"[redacted]\""));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn urls_lose_their_password_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/chat?sslmode=require"),
            "postgres://app:[redacted]@db:5432/chat?sslmode=require"
        );
        assert_eq!(redact_url("postgres://app@db/chat"), "postgres://app@db/chat");
        assert_eq!(
            redact_url("postgres://db/chat?user=a&password=x"),
            "postgres://db/chat?user=a&password=[redacted]"
        );
        assert_eq!(redact_url("not a url"), REDACTED);
    }
}
