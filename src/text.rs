//! Characters that change how text around them reads without showing themselves.

/// Format characters a reader does not see but that change what is shown: bidi embeddings,
/// overrides and isolates (which reorder the rest of a line: `abc\u{202E}fdp.exe`), zero-width
/// characters and joiners, the byte-order mark, and the line and paragraph separators. Control
/// characters (`char::is_control`) are not included; callers check those too.
pub fn is_invisible_or_reordering(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_and_zero_width_characters_are_caught_and_letters_are_not() {
        for c in [
            '\u{202E}', '\u{2066}', '\u{200B}', '\u{200F}', '\u{FEFF}', '\u{2028}',
        ] {
            assert!(is_invisible_or_reordering(c), "{c:?}");
        }
        for c in ['a', 'é', 'ж', '中', ' ', '-', '\u{00A0}'] {
            assert!(!is_invisible_or_reordering(c), "{c:?}");
        }
    }
}
