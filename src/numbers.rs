//! The business numbers a deployment serves, and the conversation key: one
//! business number × one contact, in the one column every table is keyed
//! (and could be distributed) by.
//!
//! The home number (`whatsapp.phone_number_id`, else the first of
//! `whatsapp.numbers`) keys its conversations by the contact alone — as
//! every conversation was keyed before a deployment could serve several
//! numbers, so that data stays where it is. Any other number's are
//! `<phone_number_id>:<contact>`; a contact (digits or a BSUID) never holds
//! a `:`. With no number configured, every delivery is the home number's.

use std::path::PathBuf;

use crate::config::{Secret, Settings};

/// Between a number's id and the contact in a conversation key.
const SEPARATOR: char = ':';

/// One business number, its settings' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    pub id: String,
    pub name: Option<String>,
    pub access_token: Option<Secret>,
    pub flow: PathBuf,
    pub rate_per_s: u32,
    /// Marks inbound messages read (and shows typing with `typing_indicator`).
    pub read_receipts: bool,
    pub typing_indicator: bool,
    /// The templates this number may send.
    pub templates: Vec<crate::config::TemplateSettings>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Numbers {
    list: Vec<Number>,
}

impl Numbers {
    pub fn from_settings(s: &Settings) -> Self {
        let w = &s.whatsapp;
        let number = |id: &str, n: Option<&crate::config::NumberSettings>| Number {
            id: id.to_string(),
            name: n.and_then(|n| n.name.clone()),
            access_token: n
                .and_then(|n| n.access_token.clone())
                .or_else(|| w.access_token.clone()),
            flow: n.and_then(|n| n.flow.clone()).unwrap_or_else(|| s.flow.path.clone()),
            rate_per_s: n.and_then(|n| n.rate_per_s).unwrap_or(s.outbox.rate_per_s),
            read_receipts: n.and_then(|n| n.read_receipts).unwrap_or(w.read_receipts),
            typing_indicator: n.and_then(|n| n.typing_indicator).unwrap_or(w.typing_indicator),
            templates: n
                .and_then(|n| n.templates.clone())
                .unwrap_or_else(|| w.templates.clone()),
        };
        let mut list = Vec::new();
        if let Some(home) = w.phone_number_id.as_deref().filter(|id| !id.is_empty()) {
            list.push(number(home, w.numbers.iter().find(|n| n.phone_number_id == home)));
        }
        for n in &w.numbers {
            if !list.iter().any(|l| l.id == n.phone_number_id) {
                list.push(number(&n.phone_number_id, Some(n)));
            }
        }
        Self { list }
    }

    /// Every configured number, the home number first.
    pub fn all(&self) -> &[Number] {
        &self.list
    }

    pub fn get(&self, id: &str) -> Option<&Number> {
        self.list.iter().find(|n| n.id == id)
    }

    pub fn home(&self) -> Option<&Number> {
        self.list.first()
    }

    /// Why a delivery to `to` (its `metadata.phone_number_id`) is not
    /// served here, if it is not: a number that is not configured. With no
    /// number configured, every one is (it goes to the home conversations).
    pub fn refuses(&self, to: Option<&str>) -> Option<String> {
        match to {
            Some(to) if !self.list.is_empty() && self.get(to).is_none() => Some(format!(
                "sent to business number {to}, which this deployment does not serve"
            )),
            _ => None,
        }
    }

    /// The conversation of `contact` with business number `number` (none
    /// given: the home number).
    pub fn conversation(&self, number: Option<&str>, contact: &str) -> String {
        match number {
            Some(n) if self.home().is_some_and(|h| h.id != n) => format!("{n}{SEPARATOR}{contact}"),
            _ => contact.to_string(),
        }
    }

    /// A conversation key's business number (`None`: the home number of a
    /// deployment with none configured) and contact.
    pub fn split<'k>(&'k self, key: &'k str) -> (Option<&'k str>, &'k str) {
        match key.split_once(SEPARATOR) {
            Some((number, contact)) => (Some(number), contact),
            None => (self.home().map(|h| h.id.as_str()), key),
        }
    }

    /// A conversation key as given by a caller, checked and normalized: its
    /// contact a phone or a BSUID, its number (if any) digits.
    pub fn checked_key(&self, key: &str) -> Result<String, String> {
        let Some((number, contact)) = key.split_once(SEPARATOR) else {
            return crate::phone::contact_key(key);
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a business number's id is digits".into());
        }
        let contact = crate::phone::contact_key(contact)?;
        // Kept behind its number unless that is the home one (a key of a
        // number no longer configured still names its own conversation).
        Ok(match self.home() {
            Some(h) if h.id == number => contact,
            _ => format!("{number}{SEPARATOR}{contact}"),
        })
    }

    /// The number a conversation key belongs to, when configured.
    pub fn of(&self, key: &str) -> Option<&Number> {
        self.split(key).0.and_then(|id| self.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NumberSettings;

    fn two() -> Numbers {
        let mut s = Settings::default();
        s.whatsapp.phone_number_id = Some("100".into());
        s.whatsapp.numbers = vec![NumberSettings {
            phone_number_id: "200".into(),
            access_token: None,
            flow: None,
            rate_per_s: Some(5),
            name: Some("Soporte".into()),
            ..Default::default()
        }];
        Numbers::from_settings(&s)
    }

    #[test]
    fn the_home_number_keys_by_contact_others_by_number_and_contact() {
        let n = two();
        assert_eq!(n.conversation(Some("100"), "5491112345678"), "5491112345678");
        assert_eq!(n.conversation(None, "5491112345678"), "5491112345678");
        assert_eq!(n.conversation(Some("200"), "US.1234567890"), "200:US.1234567890");
        assert_eq!(n.split("200:US.1234567890"), (Some("200"), "US.1234567890"));
        assert_eq!(n.split("5491112345678"), (Some("100"), "5491112345678"));
        assert_eq!(n.of("200:1").and_then(|n| n.name.as_deref()), Some("Soporte"));
        assert_eq!(n.of("200:1").map(|n| n.rate_per_s), Some(5));
        assert_eq!(n.checked_key("100:+5491112345678").as_deref(), Ok("5491112345678"));
        assert_eq!(n.checked_key("300:5491112345678").as_deref(), Ok("300:5491112345678"));
        assert!(n.checked_key("x:5491112345678").is_err());
    }

    #[test]
    fn an_unconfigured_number_is_refused_only_when_numbers_are_configured() {
        assert!(two().refuses(Some("300")).is_some_and(|r| r.contains("300")));
        assert_eq!(two().refuses(Some("200")), None);
        assert_eq!(Numbers::default().refuses(Some("300")), None);
        assert_eq!(Numbers::default().conversation(Some("300"), "1"), "1");
    }
}
