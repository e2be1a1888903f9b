//! Each user's message stream: every message the user sent or received, numbered in the
//! order it was stored, so that a client can resume exactly where it stopped.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{ConversationId, Seq};

/// A position in one user's message stream: the n-th message stored for that user.
///
/// Positions of a user are 1, 2, 3, … with no holes, and a message becomes readable only
/// after every message before it in the same stream is readable. So a client that keeps the
/// last cursor it processed and asks for what comes after it never misses a message and
/// never sees one twice. `Cursor::START` is the position before the first message.
///
/// On the wire a cursor is the decimal text of the position (`"0"`, `"42"`): clients treat
/// it as opaque and only hand it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cursor(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a valid cursor")]
pub struct CursorError;

impl Cursor {
    /// Before the first message of every stream.
    pub const START: Self = Self(0);

    /// Positions are stored as signed 64-bit integers by every backend.
    const MAX: u64 = i64::MAX as u64;

    pub fn new(position: u64) -> Result<Self, CursorError> {
        if position <= Self::MAX {
            Ok(Self(position))
        } else {
            Err(CursorError)
        }
    }

    /// Parses a cursor a client handed back: only the canonical decimal spelling, so one
    /// position has one spelling (no sign, no leading zeros, no spaces).
    pub fn parse(raw: &str) -> Result<Self, CursorError> {
        let canonical = !raw.is_empty()
            && raw.len() <= 19
            && raw.bytes().all(|b| b.is_ascii_digit())
            && (raw == "0" || !raw.starts_with('0'));
        if !canonical {
            return Err(CursorError);
        }
        raw.parse::<u64>().map_err(|_| CursorError).and_then(Self::new)
    }

    /// Parses the resume point a client may leave out (`since` of `/ws`, Socket.IO and
    /// sync): absent or empty text is no cursor, since a query string can't tell an empty
    /// value from none; anything else must be a cursor. Every transport reads `since` here,
    /// so they all agree on what resumes and what is refused.
    pub fn parse_optional(raw: Option<&str>) -> Result<Option<Self>, CursorError> {
        raw.filter(|raw| !raw.is_empty()).map(Self::parse).transpose()
    }

    pub fn position(self) -> u64 {
        self.0
    }

    /// The position right after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<String> for Cursor {
    type Error = CursorError;
    fn try_from(raw: String) -> Result<Self, CursorError> {
        Self::parse(&raw)
    }
}

impl From<Cursor> for String {
    fn from(cursor: Cursor) -> String {
        cursor.to_string()
    }
}

impl TryFrom<i64> for Cursor {
    type Error = CursorError;
    fn try_from(stored: i64) -> Result<Self, CursorError> {
        u64::try_from(stored).map_err(|_| CursorError).and_then(Self::new)
    }
}

impl From<Cursor> for i64 {
    fn from(cursor: Cursor) -> i64 {
        // `new` keeps every cursor within i64.
        cursor.0 as i64
    }
}

/// Where a client stands in everything it follows: its own stream (direct messages and the
/// notices about its groups and reads) and, for each group it is a member of at that point of
/// its stream, the last entry of the group it has had.
///
/// On the wire: the stream's cursor alone (`"42"`, the form every cursor had before groups
/// existed, and still the form of a user in no group), or followed by one `~<group id>.<seq>`
/// per group, in group id order (`"42~0190…-…-…-….7"`). Clients treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SyncCursor {
    pub stream: Cursor,
    pub groups: BTreeMap<ConversationId, Seq>,
}

impl SyncCursor {
    /// Before everything.
    pub const START: Self = Self { stream: Cursor::START, groups: BTreeMap::new() };

    /// Longest text accepted: about 2,000 groups.
    const MAX_TEXT: usize = 128 * 1024;

    /// A cursor at `stream` in a user's stream who is in no group.
    pub fn at(stream: Cursor) -> Self {
        Self { stream, groups: BTreeMap::new() }
    }

    /// Parses a cursor a client handed back, canonical spelling only (groups in id order, each
    /// once, numbers without leading zeros).
    pub fn parse(raw: &str) -> Result<Self, CursorError> {
        if raw.len() > Self::MAX_TEXT {
            return Err(CursorError);
        }
        let mut parts = raw.split('~');
        let stream = Cursor::parse(parts.next().unwrap_or_default())?;
        let mut groups = BTreeMap::new();
        let mut previous: Option<ConversationId> = None;
        for part in parts {
            let (id, seq) = part.rsplit_once('.').ok_or(CursorError)?;
            let id = ConversationId::parse(id).map_err(|_| CursorError)?;
            let seq = Cursor::parse(seq)?.position();
            if previous.as_ref().is_some_and(|p| p >= &id) {
                return Err(CursorError);
            }
            previous = Some(id.clone());
            groups.insert(id, seq);
        }
        Ok(Self { stream, groups })
    }

    /// Absent or empty text is no cursor (see [`Cursor::parse_optional`]).
    pub fn parse_optional(raw: Option<&str>) -> Result<Option<Self>, CursorError> {
        raw.filter(|raw| !raw.is_empty()).map(Self::parse).transpose()
    }
}

impl fmt::Display for SyncCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.stream)?;
        for (group, seq) in &self.groups {
            write!(f, "~{group}.{seq}")?;
        }
        Ok(())
    }
}

/// A sender's own key for one message, so that a retried send is stored once: the same key
/// from the same sender always means the same message. 1–255 visible ASCII characters
/// (a UUID is a good choice).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientMessageId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientMessageIdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must contain only visible ASCII characters")]
    Charset,
}

impl ClientMessageId {
    pub const MAX: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, ClientMessageIdError> {
        if raw.is_empty() {
            return Err(ClientMessageIdError::Empty);
        }
        if raw.len() > Self::MAX {
            return Err(ClientMessageIdError::TooLong { max: Self::MAX });
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientMessageIdError::Charset);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientMessageId {
    type Error = ClientMessageIdError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<ClientMessageId> for String {
    fn from(id: ClientMessageId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cursor_spellings_other_than_the_canonical_one_are_refused() {
        for raw in
            ["", "-1", "+1", "01", " 1", "1 ", "1.0", "0x1", "9223372036854775808", "99999999999999999999"]
        {
            assert_eq!(Cursor::parse(raw), Err(CursorError), "{raw:?}");
        }
        assert_eq!(Cursor::parse("0"), Ok(Cursor::START));
        assert_eq!(Cursor::parse("9223372036854775807").map(Cursor::position), Ok(i64::MAX as u64));
    }

    #[test]
    fn a_sync_cursor_without_groups_is_a_plain_cursor() {
        assert_eq!(SyncCursor::parse("42").unwrap(), SyncCursor::at(Cursor::new(42).unwrap()));
        assert_eq!(SyncCursor::at(Cursor::new(42).unwrap()).to_string(), "42");
        assert_eq!(SyncCursor::parse_optional(Some("")), Ok(None));
    }

    #[test]
    fn a_sync_cursor_round_trips_with_its_groups_in_id_order() {
        let (a, b) = (ConversationId::generate(), ConversationId::generate());
        let cursor =
            SyncCursor { stream: Cursor::new(7).unwrap(), groups: [(a.clone(), 3), (b.clone(), 0)].into() };
        let text = cursor.to_string();
        assert_eq!(text, format!("7~{a}.3~{b}.0"));
        assert_eq!(SyncCursor::parse(&text), Ok(cursor));
        for raw in [
            format!("7~{b}.0~{a}.3"),
            format!("7~{a}.3~{a}.4"),
            format!("7~{a}.03"),
            format!("7~{a}"),
            format!("7~{a}.-1"),
            "7~nope.1".to_owned(),
            "~".to_owned(),
            format!("x~{a}.1"),
        ] {
            assert_eq!(SyncCursor::parse(&raw), Err(CursorError), "{raw:?}");
        }
    }

    #[test]
    fn a_cursor_left_out_or_empty_is_none_and_anything_else_must_parse() {
        assert_eq!(Cursor::parse_optional(None), Ok(None));
        assert_eq!(Cursor::parse_optional(Some("")), Ok(None));
        assert_eq!(Cursor::parse_optional(Some("42")), Ok(Some(Cursor(42))));
        for raw in [" ", "01", "-1", "abc"] {
            assert_eq!(Cursor::parse_optional(Some(raw)), Err(CursorError), "{raw:?}");
        }
    }

    #[test]
    fn stored_positions_must_be_non_negative() {
        assert_eq!(Cursor::try_from(-1_i64), Err(CursorError));
        assert_eq!(Cursor::try_from(7_i64).map(i64::from), Ok(7));
    }

    #[test]
    fn client_message_ids_are_visible_ascii_of_bounded_length() {
        assert!(ClientMessageId::parse("0b7e6d3c-5f0e-4d53-9f4e-3d2c1b0a9e8f").is_ok());
        assert_eq!(ClientMessageId::parse(""), Err(ClientMessageIdError::Empty));
        assert_eq!(ClientMessageId::parse("a b"), Err(ClientMessageIdError::Charset));
        assert_eq!(ClientMessageId::parse("é"), Err(ClientMessageIdError::Charset));
        assert_eq!(ClientMessageId::parse(&"k".repeat(256)), Err(ClientMessageIdError::TooLong { max: 255 }));
        assert!(ClientMessageId::parse(&"k".repeat(255)).is_ok());
    }

    proptest! {
        #[test]
        fn cursor_text_round_trips(position in 0..=i64::MAX as u64) {
            let cursor = Cursor::new(position).unwrap();
            prop_assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
        }

        #[test]
        fn cursor_order_is_position_order(a in 0..=i64::MAX as u64, b in 0..=i64::MAX as u64) {
            let (ca, cb) = (Cursor::new(a).unwrap(), Cursor::new(b).unwrap());
            prop_assert_eq!(ca.cmp(&cb), a.cmp(&b));
        }

        #[test]
        fn cursor_parse_never_panics_and_accepts_only_canonical_text(raw in "\\PC{0,24}") {
            if let Ok(cursor) = Cursor::parse(&raw) {
                prop_assert_eq!(cursor.to_string(), raw);
            }
        }

        #[test]
        fn client_message_id_parse_never_panics(raw in "\\PC{0,300}") {
            if let Ok(id) = ClientMessageId::parse(&raw) {
                prop_assert_eq!(id.as_str(), raw.as_str());
            }
        }
    }
}
