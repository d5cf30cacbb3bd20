//! The `rules` provider: keywords and patterns from the flow. Deterministic,
//! instant, no network — the default and the fallback of every other provider.

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};

use super::{IntentRequest, Model, ModelError, SlotRequest};
use crate::flow::normalize_text;

#[derive(Debug, Clone, Copy, Default)]
pub struct RulesModel;

/// Words of a normalized text (letters and digits).
fn words(text: &str) -> Vec<String> {
    normalize_text(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The first candidate one of whose keywords (a word sequence) occurs in `text`.
pub fn detect(req: &IntentRequest) -> Option<String> {
    let text = words(&req.text);
    req.candidates
        .iter()
        .find(|c| {
            c.keywords.iter().any(|k| {
                let k = words(k);
                !k.is_empty() && text.windows(k.len()).any(|w| w == k.as_slice())
            })
        })
        .map(|c| c.name.clone())
}

/// The whole text, or else its first word, that satisfies the slot's
/// pattern and length; without a pattern, the trimmed text.
pub fn extract(req: &SlotRequest) -> Option<String> {
    let pattern = match req.pattern.as_deref().map(regex::Regex::new) {
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return None,
        None => None,
    };
    let fits = |v: &str| {
        let n = v.chars().count();
        n >= req.min_len && n <= req.max_len && pattern.as_ref().is_none_or(|p| p.is_match(v))
    };
    let whole = req.text.trim();
    if fits(whole) {
        return Some(whole.to_string());
    }
    pattern.as_ref()?;
    req.text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|w| fits(w))
        .map(str::to_string)
}

impl Model for RulesModel {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn detect_intent(&self, req: Arc<IntentRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        futures_util::future::ready(Ok(detect(&req))).boxed()
    }

    fn extract_slot(&self, req: Arc<SlotRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        futures_util::future::ready(Ok(extract(&req))).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::IntentCandidate;

    fn cand(name: &str, kws: &[&str]) -> IntentCandidate {
        IntentCandidate {
            name: name.into(),
            keywords: kws.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn keywords_match_whole_words_without_accents_or_case() {
        let req = IntentRequest {
            text: "Mi REFRI no enfría!".into(),
            candidates: vec![cand("vehiculo", &["carro"]), cand("refrigerador", &["refri"])],
        };
        assert_eq!(detect(&req).as_deref(), Some("refrigerador"));
        let req = IntentRequest {
            text: "refrigeración".into(),
            candidates: vec![cand("refrigerador", &["refri"])],
        };
        assert_eq!(detect(&req), None, "a keyword is a whole word");
        let req = IntentRequest {
            text: "¿Sí, está bien".into(),
            candidates: vec![cand("si", &["si", "esta bien"])],
        };
        assert_eq!(detect(&req).as_deref(), Some("si"));
    }

    #[test]
    fn slot_values_are_found_in_the_text_and_checked() {
        let req = SlotRequest {
            text: "mi SAP es 1234567890.".into(),
            name: "sap".into(),
            pattern: Some("^[0-9]{10}$".into()),
            min_len: 10,
            max_len: 10,
        };
        assert_eq!(extract(&req).as_deref(), Some("1234567890"));
        let req = SlotRequest {
            text: "12345".into(),
            ..req
        };
        assert_eq!(extract(&req), None);
    }
}
