//! `api.tokens`: who may call the agent API, under which name and role.
//! A plain string stays valid (an anonymous admin, as before names); a
//! table `{ name, token, role }` names an agent, whose messages and
//! hand-offs then carry that name.

use serde::{Deserialize, Deserializer, Serialize};

use super::secret::Secret;

/// What a token may do: `agent` — the conversations (read, write, hand
/// off); `admin` — that and operations (dead letters, breakers, the
/// overview, erasure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Admin,
}

/// One accepted bearer token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiToken {
    /// Who acts with it (`None`: a plain token, anonymous).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub token: Secret,
    pub role: Role,
}

impl From<Secret> for ApiToken {
    /// A plain token: anonymous, admin (what every token was before names).
    fn from(token: Secret) -> Self {
        Self {
            name: None,
            token,
            role: Role::Admin,
        }
    }
}

impl ApiToken {
    /// A named token.
    pub fn named(name: &str, token: &str, role: Role) -> Self {
        Self {
            name: Some(name.to_string()),
            token: Secret::new(token),
            role,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
    token: Secret,
    role: Role,
}

impl<'de> Deserialize<'de> for ApiToken {
    /// A string, or `{ name, token, role }` — with an error that says which
    /// field is wrong, not serde's "matched no variant".
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(d)?;
        match value {
            toml::Value::String(s) => Ok(Secret::new(s).into()),
            toml::Value::Table(t) => {
                let n: Named = toml::Value::Table(t).try_into().map_err(serde::de::Error::custom)?;
                Ok(Self {
                    name: Some(n.name),
                    token: n.token,
                    role: n.role,
                })
            }
            other => Err(serde::de::Error::custom(format!(
                "a token is a string or {{ name, token, role }}, not {}",
                other.type_str()
            ))),
        }
    }
}

/// The problems of a token list: empty tokens, empty or repeated names,
/// a token given twice (it would have two names).
pub fn problems(tokens: &[ApiToken]) -> Vec<String> {
    let mut out = Vec::new();
    if tokens.iter().any(|t| t.token.is_empty()) {
        out.push("must not contain an empty token".to_string());
    }
    let mut names = std::collections::HashSet::new();
    for name in tokens.iter().filter_map(|t| t.name.as_deref()) {
        if name.trim().is_empty() || name.chars().count() > 64 {
            out.push(format!("name {name:?}: 1 to 64 characters"));
        } else if !names.insert(name) {
            out.push(format!("name {name:?} is given twice"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if tokens.iter().any(|t| !seen.insert(t.token.expose())) {
        out.push("a token is given twice".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Api {
        tokens: Vec<ApiToken>,
    }

    fn parse(toml_text: &str) -> Result<Vec<ApiToken>, String> {
        toml::from_str::<Api>(toml_text)
            .map(|a| a.tokens)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn plain_strings_are_anonymous_admins_and_tables_name_an_agent() {
        let t = parse(r#"tokens = ["old", { name = "Ana", token = "t-ana", role = "agent" }]"#).unwrap();
        assert_eq!(t[0], ApiToken::from(Secret::new("old")));
        assert_eq!(t[1], ApiToken::named("Ana", "t-ana", Role::Agent));
        assert!(problems(&t).is_empty());
    }

    #[test]
    fn a_bad_entry_says_what_is_wrong() {
        let e = parse(r#"tokens = [{ name = "Ana", token = "t", role = "boss" }]"#).unwrap_err();
        assert!(e.contains("boss") && e.contains("agent"), "{e}");
        let e = parse(r#"tokens = [{ name = "Ana", token = "t", rol = "agent" }]"#).unwrap_err();
        assert!(e.contains("rol"), "{e}");
        let e = parse("tokens = [3]").unwrap_err();
        assert!(e.contains("a token is a string or"), "{e}");
    }

    #[test]
    fn repeated_names_and_tokens_and_empty_ones_are_problems() {
        let t = vec![
            ApiToken::named("Ana", "a", Role::Agent),
            ApiToken::named("Ana", "b", Role::Admin),
            ApiToken::named(" ", "a", Role::Agent),
            Secret::new("").into(),
        ];
        let p = problems(&t).join("; ");
        for part in ["given twice", "1 to 64", "empty token", "a token is given twice"] {
            assert!(p.contains(part), "{p}");
        }
    }
}
