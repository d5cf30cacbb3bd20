//! Long texts as WhatsApp takes them: a text message holds at most 4,096
//! characters and an interactive body 1,024, so a longer reply goes as
//! ordered parts, cut at the best boundary that fits — a paragraph, a line,
//! a sentence, a word — and only where there is none, inside a word.

use crate::flow::definition::limits::INTERACTIVE_BODY;

/// Characters of a text message's body.
pub const TEXT_BODY: usize = 4096;

/// Boundaries to cut after, best first.
const BOUNDARIES: &[&str] = &["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " "];

/// The parts of a reply, in order. With choices, the last part carries
/// them and fits an interactive body; the parts before it are plain texts.
pub fn reply_parts(text: &str, with_choices: bool) -> Vec<String> {
    let mut parts = split(text, TEXT_BODY);
    if with_choices {
        if let Some(last) = parts.pop() {
            parts.extend(split(&last, INTERACTIVE_BODY));
        }
    }
    parts
}

/// `text` in parts of at most `max` characters, each cut after the best
/// boundary in its window; trimmed parts, none empty (an empty text is one
/// empty part).
pub fn split(text: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        // The byte end of the window of `max` characters.
        let window_end = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..window_end];
        let cut = BOUNDARIES
            .iter()
            .find_map(|b| {
                window
                    .rfind(b)
                    .map(|i| i + b.len())
                    // A boundary in the first quarter would leave a stub.
                    .filter(|&end| window[..end].chars().count() > max / 4)
            })
            .unwrap_or(window_end);
        let part = rest[..cut].trim();
        if !part.is_empty() {
            parts.push(part.to_string());
        }
        rest = rest[cut..].trim_start();
    }
    let last = rest.trim_end();
    if !last.is_empty() || parts.is_empty() {
        parts.push(last.to_string());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_text_is_one_part_untouched() {
        assert_eq!(split("hola", 10), vec!["hola"]);
        assert_eq!(split("", 10), vec![""]);
    }

    #[test]
    fn nine_thousand_characters_of_paragraphs_are_three_ordered_parts_cut_between_paragraphs() {
        let paragraph = |i: usize| format!("Párrafo {i}. {}", "palabra ".repeat(120).trim_end());
        let text: String = (0..9).map(paragraph).collect::<Vec<_>>().join("\n\n");
        assert!(text.chars().count() > 8_000);
        let parts = split(&text, TEXT_BODY);
        assert_eq!(
            parts.len(),
            3,
            "{:?}",
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>()
        );
        for p in &parts {
            assert!(p.chars().count() <= TEXT_BODY);
            assert!(p.starts_with("Párrafo"), "cut between paragraphs: {}", &p[..20]);
        }
        assert_eq!(parts.join("\n\n"), text, "nothing lost, nothing reordered");
    }

    #[test]
    fn without_paragraphs_it_cuts_after_a_sentence_then_a_word() {
        let text = "Una frase corta. Otra frase más larga que la primera.";
        let parts = split(text, 30);
        assert_eq!(parts[0], "Una frase corta.");
        assert!(parts.iter().all(|p| p.chars().count() <= 30));
        let words = "aaaa bbbb cccc dddd";
        assert_eq!(split(words, 10), vec!["aaaa bbbb", "cccc dddd"]);
    }

    #[test]
    fn a_text_without_boundaries_is_cut_on_character_boundaries() {
        let text = "ñ".repeat(25);
        let parts = split(&text, 10);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
    }

    #[test]
    fn with_choices_the_last_part_fits_an_interactive_body() {
        let text = "x ".repeat(1500);
        let parts = reply_parts(&text, true);
        assert!(parts.len() >= 2);
        assert!(parts.last().unwrap().chars().count() <= INTERACTIVE_BODY);
    }
}
