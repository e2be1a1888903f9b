//! Which characters a reader sees: the rules that keep names from being spoofed and
//! messages from looking empty.
//!
//! `char` knows white space and control characters but not Unicode's format characters
//! (general category `Cf`) nor `Default_Ignorable_Code_Point`, the characters a renderer
//! draws as nothing. They are listed here (Unicode 15.1), in two groups: [`JOINERS`], which
//! shape the visible characters next to them (emoji sequences such as 👩‍👩‍👧, Persian and
//! Indic joining, variation selectors), and [`HIDDEN`], the rest: text-direction controls
//! that reorder what is shown, zero-width spaces, invisible operators, tag and filler
//! characters, blanks that are letters. The lists are public so that documentation
//! (the OpenAPI patterns) states the same sets.

use std::ops::RangeInclusive;

/// Invisible characters that take part in what visible ones show: allowed inside names.
pub const JOINERS: &[RangeInclusive<char>] = &[
    '\u{180B}'..='\u{180D}', // Mongolian free variation selectors
    '\u{180F}'..='\u{180F}',
    '\u{200C}'..='\u{200D}',   // zero-width non-joiner and joiner
    '\u{FE00}'..='\u{FE0F}',   // variation selectors (emoji presentation)
    '\u{E0100}'..='\u{E01EF}', // ideographic variation selectors
];

/// Invisible characters that are refused in names and don't make a message visible.
pub const HIDDEN: &[RangeInclusive<char>] = &[
    '\u{00AD}'..='\u{00AD}', // soft hyphen
    '\u{034F}'..='\u{034F}', // combining grapheme joiner
    '\u{0600}'..='\u{0605}', // prepended concatenation marks
    '\u{061C}'..='\u{061C}', // Arabic letter mark
    '\u{06DD}'..='\u{06DD}',
    '\u{070F}'..='\u{070F}',
    '\u{0890}'..='\u{0891}',
    '\u{08E2}'..='\u{08E2}',
    '\u{115F}'..='\u{1160}', // Hangul fillers
    '\u{17B4}'..='\u{17B5}',
    '\u{180E}'..='\u{180E}',
    '\u{200B}'..='\u{200B}', // zero-width space
    '\u{200E}'..='\u{200F}', // left-to-right and right-to-left marks
    '\u{202A}'..='\u{202E}', // embeddings and overrides
    '\u{2060}'..='\u{206F}', // word joiner, invisible operators, isolates, deprecated formats
    '\u{2800}'..='\u{2800}', // braille blank
    '\u{3164}'..='\u{3164}', // Hangul filler
    '\u{FEFF}'..='\u{FEFF}', // zero-width no-break space
    '\u{FFA0}'..='\u{FFA0}', // halfwidth Hangul filler
    '\u{FFF0}'..='\u{FFFB}', // interlinear annotations
    '\u{110BD}'..='\u{110BD}',
    '\u{110CD}'..='\u{110CD}',
    '\u{13430}'..='\u{1343F}', // Egyptian hieroglyph format controls
    '\u{1BCA0}'..='\u{1BCA3}', // shorthand format controls
    '\u{1D173}'..='\u{1D17A}', // musical symbol formats
    // Tags: besides three subdivision flags (🏴 England, Scotland, Wales) they serve only to
    // smuggle invisible ASCII, so names lose those flags rather than gain a hiding place.
    '\u{E0000}'..='\u{E00FF}',
    '\u{E01F0}'..='\u{E0FFF}',
];

fn listed(ranges: &[RangeInclusive<char>], c: char) -> bool {
    ranges.iter().any(|r| r.contains(&c))
}

/// A character of [`JOINERS`].
pub fn is_joiner(c: char) -> bool {
    listed(JOINERS, c)
}

/// A character of [`HIDDEN`].
pub fn is_hidden(c: char) -> bool {
    listed(HIDDEN, c)
}

/// Whether `c` shows something by itself: not white space, not a control character, not a
/// joiner nor a hidden one.
pub fn is_visible(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !is_joiner(c) && !is_hidden(c)
}

/// What is wrong with a display name (a user's full name, a group's name). Each name type
/// has an error of its own with these variants, so that an edge can tell which field it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameProblem {
    Empty,
    TooLong { max: usize },
    ControlCharacter,
    InvisibleCharacter,
    InvisibleStart,
}

/// A display name as it was accepted when names were first checked (read back from a store
/// or a dump): trimmed, 1 to `max` characters, no control characters.
pub(crate) fn stored_name(raw: &str, max: usize) -> Result<&str, NameProblem> {
    let trimmed = raw.trim();
    if trimmed.chars().any(char::is_control) {
        return Err(NameProblem::ControlCharacter);
    }
    match trimmed.chars().count() {
        0 => Err(NameProblem::Empty),
        n if n > max => Err(NameProblem::TooLong { max }),
        _ => Ok(trimmed),
    }
}

/// A display name given now: [`stored_name`]'s rules, no hidden characters, and a visible
/// first character.
pub(crate) fn new_name(raw: &str, max: usize) -> Result<&str, NameProblem> {
    let name = stored_name(raw, max)?;
    if name.chars().any(is_hidden) {
        return Err(NameProblem::InvisibleCharacter);
    }
    // A joiner first would make a name of nothing but joiners possible.
    if name.chars().next().is_some_and(|c| !is_visible(c)) {
        return Err(NameProblem::InvisibleStart);
    }
    Ok(name)
}

/// Declares the error type of a display name, `$error`: the variants of [`NameProblem`],
/// worded for clients (`"fullName must not be empty"`).
macro_rules! name_error {
    ($(#[$attr:meta])* $error:ident) => {
        $(#[$attr])*
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum $error {
            #[error("must not be empty")]
            Empty,
            #[error("must be at most {max} characters")]
            TooLong { max: usize },
            #[error("must not contain control characters")]
            ControlCharacter,
            #[error("must not contain invisible or text-direction characters")]
            InvisibleCharacter,
            #[error("must start with a visible character")]
            InvisibleStart,
        }

        impl From<$crate::text::NameProblem> for $error {
            fn from(problem: $crate::text::NameProblem) -> Self {
                use $crate::text::NameProblem;
                match problem {
                    NameProblem::Empty => Self::Empty,
                    NameProblem::TooLong { max } => Self::TooLong { max },
                    NameProblem::ControlCharacter => Self::ControlCharacter,
                    NameProblem::InvisibleCharacter => Self::InvisibleCharacter,
                    NameProblem::InvisibleStart => Self::InvisibleStart,
                }
            }
        }
    };
}
pub(crate) use name_error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_marks_and_emoji_are_visible() {
        for c in ['a', 'é', 'ß', 'ж', 'ع', 'א', '中', 'ü', '\u{0301}', '👩', '🏽', '❤'] {
            assert!(is_visible(c), "{c:?}");
        }
    }

    #[test]
    fn space_controls_and_format_characters_are_not() {
        for c in [
            ' ',
            '\u{3000}',
            '\0',
            '\u{7}',
            '\u{85}',
            '\u{200B}',
            '\u{200D}',
            '\u{202E}',
            '\u{2066}',
            '\u{FEFF}',
            '\u{E0041}',
            '\u{2800}',
            '\u{3164}',
        ] {
            assert!(!is_visible(c), "{c:?}");
        }
    }

    #[test]
    fn the_lists_are_sorted_disjoint_and_free_of_white_space_and_controls() {
        let mut all: Vec<&RangeInclusive<char>> = JOINERS.iter().chain(HIDDEN).collect();
        all.sort_by_key(|r| *r.start());
        for pair in all.windows(2) {
            assert!(pair[0].end() < pair[1].start(), "{pair:?}");
        }
        for range in all {
            assert!(range.start() <= range.end(), "{range:?}");
            assert!(range.clone().all(|c| !c.is_whitespace() && !c.is_control()), "{range:?}");
        }
    }

    #[test]
    fn every_text_direction_control_is_hidden() {
        let bidi = ['\u{061C}', '\u{200E}', '\u{200F}']
            .into_iter()
            .chain('\u{202A}'..='\u{202E}')
            .chain('\u{2066}'..='\u{2069}');
        for c in bidi {
            assert!(is_hidden(c), "{c:?}");
        }
    }
}
