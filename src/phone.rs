//! Contact keys: a phone (E.164 digits) or, for a contact known only by it,
//! a business-scoped user ID (BSUID, `US.13491208655302741918`). Both are
//! personal data: masked in logs.

/// Masks a contact key for logs: a phone keeps a leading `+`, a
/// country-code-sized prefix and its last four digits (`+52******1234`); a
/// BSUID its country and last four (`US.****1918`). Short inputs are masked
/// whole.
pub fn mask(phone: &str) -> String {
    // A conversation key of another business number: the number's id names
    // no person, its contact is masked.
    if let Some((number, contact)) = phone
        .split_once(':')
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return format!("{number}:{}", mask(contact));
    }
    if is_group(phone) {
        // A group's id names no person.
        return phone.to_string();
    }
    if is_bsuid(phone) {
        let (country, rest) = phone.split_once('.').unwrap_or_default();
        let tail: String = rest.chars().skip(rest.chars().count().saturating_sub(4)).collect();
        return format!("{country}.****{tail}");
    }
    let digits: Vec<char> = phone.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 7 {
        return "*".repeat(digits.len().max(4));
    }
    let head: String = digits[..2].iter().collect();
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("+{head}{}{tail}", "*".repeat(digits.len() - 6))
}

/// Checks a phone in the form WhatsApp uses as the conversation key: E.164
/// digits without `+` (a leading `+` is accepted and removed), 8 to 15 digits.
pub fn normalize(phone: &str) -> Result<String, String> {
    let p = phone.strip_prefix('+').unwrap_or(phone);
    if !(8..=15).contains(&p.len()) {
        return Err("a phone number has 8 to 15 digits (E.164)".into());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) || p.starts_with('0') {
        return Err("a phone number is digits only, without a leading 0 (E.164)".into());
    }
    Ok(p.to_string())
}

/// Whether `key` is a BSUID: `<ISO country>.<1 to 128 alphanumerics>`, or a
/// parent one, `<country>.ENT.<alphanumerics>`.
pub fn is_bsuid(key: &str) -> bool {
    let Some((country, rest)) = key.split_once('.') else {
        return false;
    };
    let id = rest.strip_prefix("ENT.").unwrap_or(rest);
    country.len() == 2
        && country.bytes().all(|b| b.is_ascii_uppercase())
        && (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Before a group's id in the key of its conversation: neither a phone
/// (digits) nor a BSUID (two capitals before the dot) starts so.
pub const GROUP_PREFIX: &str = "g.";

/// The key of a group's conversation (`g.` + its `group_id`): messages from
/// a group are kept there, out of the sender's 1:1 conversation.
pub fn group_key(group_id: &str) -> Result<String, String> {
    let key = format!("{GROUP_PREFIX}{group_id}");
    if is_group(&key) {
        Ok(key)
    } else {
        Err("a group id has 1 to 128 letters, digits, `-` or `_`".into())
    }
}

/// Whether `key` is a group conversation's contact (see [`group_key`]).
pub fn is_group(key: &str) -> bool {
    key.strip_prefix(GROUP_PREFIX).is_some_and(|id| {
        (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Checks a conversation's contact as a caller names it: a phone (see
/// [`normalize`]), a BSUID, or a group's key.
pub fn contact_key(key: &str) -> Result<String, String> {
    if is_bsuid(key) || is_group(key) {
        return Ok(key.to_string());
    }
    normalize(key).map_err(|why| format!("{why}, or a BSUID (`US.1349…`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_prefix_and_last_four() {
        assert_eq!(mask("5215512341234"), "+52*******1234");
        assert_eq!(mask("+525512341234"), "+52******1234");
        assert_eq!(mask("123"), "****");
        assert_eq!(mask("1098765433:5215512341234"), "1098765433:+52*******1234");
        assert_eq!(mask("200:US.13491208655302741918"), "200:US.****1918");
    }

    #[test]
    fn normalize_accepts_e164_and_refuses_the_rest() {
        assert_eq!(normalize("+5215512341234").as_deref(), Ok("5215512341234"));
        assert!(normalize("12").is_err());
        assert!(normalize("52155abc1234").is_err());
        assert!(normalize("0521551234123").is_err());
        assert!(normalize("1234567890123456").is_err());
    }

    #[test]
    fn a_group_has_a_key_of_its_own() {
        assert_eq!(group_key("120363012345678901").as_deref(), Ok("g.120363012345678901"));
        assert!(group_key("a/b").is_err() && group_key("").is_err());
        assert_eq!(contact_key("g.120363").as_deref(), Ok("g.120363"));
        assert!(!is_bsuid("g.120363") && normalize("g.120363").is_err());
        assert_eq!(mask("g.120363"), "g.120363");
    }

    #[test]
    fn a_bsuid_is_a_contact_key_and_is_masked_too() {
        assert!(is_bsuid("US.13491208655302741918"));
        assert!(is_bsuid("US.ENT.11815799212886844830"));
        assert!(!is_bsuid("us.1349"));
        assert!(!is_bsuid("US."));
        assert!(!is_bsuid("5215512341234"));
        assert_eq!(
            contact_key("US.13491208655302741918").as_deref(),
            Ok("US.13491208655302741918")
        );
        assert_eq!(contact_key("+5215512341234").as_deref(), Ok("5215512341234"));
        assert!(contact_key("12x").is_err());
        assert_eq!(mask("US.13491208655302741918"), "US.****1918");
    }
}
