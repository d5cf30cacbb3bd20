//! A message template the deployment may send (`whatsapp.templates`, or a
//! number's own): approved in WhatsApp Manager beforehand, named here with
//! its language and how many body parameters it takes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// The template's name in WhatsApp Manager (lowercase, digits, `_`).
    pub name: String,
    /// Its language code (`es`, `es_MX`, `en_US`).
    pub language: String,
    /// How many body parameters (`{{1}}`, `{{2}}`, …) it takes.
    #[serde(default)]
    pub parameters: usize,
}

/// Problems of a list of templates, each naming its key (`at` is the list's).
pub(super) fn problems(at: &str, list: &[TemplateSettings]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, t) in list.iter().enumerate() {
        let key = format!("{at}[{i}]");
        let name_ok = !t.name.is_empty()
            && t.name.len() <= 512
            && t.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            out.push(format!(
                "{key}.name: lowercase letters, digits and `_` (as WhatsApp names templates)"
            ));
        }
        let lang_ok =
            (2..=16).contains(&t.language.len()) && t.language.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_');
        if !lang_ok {
            out.push(format!("{key}.language: a language code such as `es` or `en_US`"));
        }
        if !seen.insert((t.name.as_str(), t.language.as_str())) {
            out.push(format!("{key}: `{}` in `{}` is configured twice", t.name, t.language));
        }
    }
    out
}
