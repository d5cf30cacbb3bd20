//! Phone numbers: the conversation key, and personal data.

/// Masks a phone for logs: keeps a leading `+` and country-code-sized prefix
/// and the last four digits (`+52******1234`). Short inputs are masked whole.
pub fn mask(phone: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_prefix_and_last_four() {
        assert_eq!(mask("5215512341234"), "+52*******1234");
        assert_eq!(mask("+525512341234"), "+52******1234");
        assert_eq!(mask("123"), "****");
    }

    #[test]
    fn normalize_accepts_e164_and_refuses_the_rest() {
        assert_eq!(normalize("+5215512341234").as_deref(), Ok("5215512341234"));
        assert!(normalize("12").is_err());
        assert!(normalize("52155abc1234").is_err());
        assert!(normalize("0521551234123").is_err());
        assert!(normalize("1234567890123456").is_err());
    }
}
