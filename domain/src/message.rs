//! Direct conversations between two users, and the messages of every conversation.

use serde::{Deserialize, Serialize};

use crate::{
    text, ClientMessageId, Content, ConversationId, MessageId, MessageState, Reactions, ReplyQuote, Seq,
    SystemEvent, Timestamp, UserId,
};

/// The text of a message: 1–5000 characters once trimmed, at least one of them visible (a
/// message of zero-width or format characters looks empty), kept exactly as sent (no escaping:
/// rendering safely is the client's job, and the original text must survive a round trip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageBody(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageBodyError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    /// NUL is no text to a reader, and PostgreSQL cannot store it.
    #[error("must not contain NUL characters")]
    Nul,
    #[error("must contain a visible character")]
    Invisible,
}

impl MessageBody {
    pub const MAX: usize = 5000;

    pub fn parse(raw: &str) -> Result<Self, MessageBodyError> {
        let body = Self::stored(raw)?;
        if !body.0.chars().any(text::is_visible) {
            return Err(MessageBodyError::Invisible);
        }
        Ok(body)
    }

    /// A message accepted earlier (read from a store, or from a dump of one), checked by the
    /// rules it was sent under — 1–5000 characters once trimmed, no NUL — but not for a
    /// visible character, a rule of [`MessageBody::parse`] that came later: history kept
    /// from before stays readable and moves between stores.
    pub fn stored(raw: &str) -> Result<Self, MessageBodyError> {
        // Surrounding white space counts against nothing, but a body padded far beyond the
        // limit is refused too: what is stored must stay bounded.
        if raw.len() > Self::MAX * 4 {
            return Err(MessageBodyError::TooLong { max: Self::MAX });
        }
        if raw.contains('\0') {
            return Err(MessageBodyError::Nul);
        }
        match raw.trim().chars().count() {
            0 => Err(MessageBodyError::Empty),
            n if n > Self::MAX => Err(MessageBodyError::TooLong { max: Self::MAX }),
            _ => Ok(Self(raw.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What stands in the `body` of a deleted message, whose text is not kept: never shown
    /// (the text of a message is [`Message::text`]), and no text anyone sent.
    pub fn withdrawn() -> Self {
        Self(Self::WITHDRAWN.to_owned())
    }

    /// The stored text of a deleted message.
    pub const WITHDRAWN: &'static str = "\u{2063}";
}

impl TryFrom<String> for MessageBody {
    type Error = MessageBodyError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<MessageBody> for String {
    fn from(body: MessageBody) -> String {
        body.0
    }
}

/// The two distinct users of a conversation, in a canonical order, so that (a, b) and (b, a)
/// are the same pair and a storage backend can enforce one conversation per pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParticipantPair {
    first: UserId,
    second: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a conversation needs two different users")]
pub struct PairError;

impl ParticipantPair {
    pub fn new(a: UserId, b: UserId) -> Result<Self, PairError> {
        match a.cmp(&b) {
            std::cmp::Ordering::Less => Ok(Self { first: a, second: b }),
            std::cmp::Ordering::Greater => Ok(Self { first: b, second: a }),
            std::cmp::Ordering::Equal => Err(PairError),
        }
    }

    pub fn first(&self) -> &UserId {
        &self.first
    }

    pub fn second(&self) -> &UserId {
        &self.second
    }

    pub fn contains(&self, user: &UserId) -> bool {
        &self.first == user || &self.second == user
    }

    /// The unique key storage indexes: the same for both orders of the pair.
    pub fn key(&self) -> String {
        format!("{}:{}", self.first, self.second)
    }
}

/// A direct conversation: two users, both its members.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: ConversationId,
    pub participants: ParticipantPair,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The sequence number of its last message (0 while it has none).
    pub last_seq: Seq,
}

impl Conversation {
    /// A conversation that starts now between the pair.
    pub fn start(participants: ParticipantPair, now: Timestamp) -> Self {
        Self { id: ConversationId::generate(), participants, created_at: now, updated_at: now, last_seq: 0 }
    }
}

/// A conversation of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Chat {
    Direct(Conversation),
    Group(crate::Group),
}

impl Chat {
    pub fn id(&self) -> &ConversationId {
        match self {
            Chat::Direct(c) => &c.id,
            Chat::Group(g) => &g.id,
        }
    }

    pub fn updated_at(&self) -> Timestamp {
        match self {
            Chat::Direct(c) => c.updated_at,
            Chat::Group(g) => g.updated_at,
        }
    }

    pub fn last_seq(&self) -> Seq {
        match self {
            Chat::Direct(c) => c.last_seq,
            Chat::Group(g) => g.last_seq,
        }
    }
}

/// An entry of a conversation: a message someone sent, or (in groups) a system entry that
/// records a change of the group.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    /// The author; of a system entry, the user who made the change.
    pub sender_id: UserId,
    /// The other user of a direct conversation; `None` in a group.
    pub receiver_id: Option<UserId>,
    /// The text; of a system entry, a sentence that says what changed.
    pub body: MessageBody,
    /// `Some` for a system entry: what changed.
    pub system: Option<SystemEvent>,
    /// The entry's place in its conversation: 1, 2, 3, … in commit order. Assigned by the
    /// store when the entry is appended (0 before).
    pub seq: Seq,
    pub created_at: Timestamp,
    /// The sender's key for this message, when the send carried one.
    pub client_id: Option<ClientMessageId>,
    /// The earlier message of the conversation this one answers, with what it shows of it
    /// as read (a quote follows edits and deletions of the original).
    pub reply_to: Option<ReplyQuote>,
    /// What became of the message after it was sent; `None` while it was never edited,
    /// deleted or reacted to. `body` is the text as sent until then; once it is edited,
    /// [`Message::text`] is what to show, and of a deleted message `body` is only
    /// [`MessageBody::withdrawn`] (the text is not kept).
    pub changed: Option<Box<Changed>>,
}

/// What a message shows after changes: its content now, and the seq of its last change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changed {
    pub content: Content,
    /// The seq of the change entry that made this state.
    pub version: Seq,
}

impl Message {
    /// Whether this message says the same to the same conversation as `other`: what a
    /// retried send with the same client message id must match.
    pub fn same_content(&self, other: &Message) -> bool {
        self.conversation_target() == other.conversation_target() && self.body == other.body
    }

    /// Where a send went: the receiver of a direct message, the group of a group message
    /// (the conversation id of a direct message is only known once it is stored).
    fn conversation_target(&self) -> (Option<&UserId>, Option<&ConversationId>) {
        match &self.receiver_id {
            Some(receiver) => (Some(receiver), None),
            None => (None, Some(&self.conversation_id)),
        }
    }

    /// Whether this is a message a user sent (not a system entry).
    pub fn is_text(&self) -> bool {
        self.system.is_none()
    }

    /// What the message shows now: its text (edited or as sent), when it was edited, its
    /// reactions — or its tombstone.
    pub fn content(&self) -> Content {
        match &self.changed {
            Some(changed) => changed.content.clone(),
            None => Content::Live { body: self.body.clone(), edited_at: None, reactions: Reactions::new() },
        }
    }

    /// The text shown now; `None` once deleted.
    pub fn text(&self) -> Option<&MessageBody> {
        match &self.changed {
            Some(changed) => changed.content.body(),
            None => Some(&self.body),
        }
    }

    /// The seq of its last change, its own seq if it never changed: of two copies of one
    /// message, the one with the greater version is the newer.
    pub fn version(&self) -> Seq {
        self.changed.as_ref().map_or(self.seq, |changed| changed.version)
    }

    /// The message as shown to a former member of its group whose membership ended with the
    /// entry at `end`: as it is when it did not change after that; otherwise withheld — without
    /// its text and reactions, since what it showed at `end` is not kept and what changed later
    /// is not theirs to see — and with its own seq as `version`, so that a device that had it
    /// keeps its copy.
    pub fn as_seen_until(self, end: Seq) -> Self {
        if self.version() <= end {
            return self;
        }
        let content =
            Content::Live { body: MessageBody::withdrawn(), edited_at: None, reactions: Reactions::new() };
        Self {
            body: MessageBody::withdrawn(),
            changed: Some(Box::new(Changed { content, version: self.seq })),
            ..self
        }
    }

    /// Whether this is a message withheld from a former member (see [`Message::as_seen_until`]).
    pub fn is_withheld(&self) -> bool {
        matches!(&self.changed, Some(changed) if matches!(&changed.content,
            Content::Live { body, .. } if body.as_str() == MessageBody::WITHDRAWN))
    }

    /// The message as the change rules see it.
    pub fn state(&self) -> MessageState {
        MessageState {
            sender_id: self.sender_id.clone(),
            sent_at: self.created_at,
            system: !self.is_text(),
            content: self.content(),
            version: self.version(),
        }
    }

    /// This message in `state` (after a change): its content and version, and `body` as
    /// [`Message::changed`] says.
    pub fn with_state(mut self, state: MessageState) -> Self {
        self.body = match state.content.body() {
            Some(body) => body.clone(),
            None => MessageBody::withdrawn(),
        };
        self.changed = Some(Box::new(Changed { content: state.content, version: state.version }));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_former_member_sees_a_message_changed_after_they_left_withheld_and_no_newer_than_its_seq() {
        let sent = Message {
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: None,
            body: MessageBody::parse("hello").unwrap(),
            system: None,
            seq: 3,
            created_at: chrono::Utc::now(),
            client_id: None,
            reply_to: None,
            changed: None,
        };
        let edited_at = chrono::Utc::now();
        let edited = |version| Message {
            changed: Some(Box::new(Changed {
                content: Content::Live {
                    body: MessageBody::parse("hello!").unwrap(),
                    edited_at: Some(edited_at),
                    reactions: Reactions::new(),
                },
                version,
            })),
            ..sent.clone()
        };
        assert_eq!(sent.clone().as_seen_until(3), sent, "never changed");
        assert_eq!(edited(5).as_seen_until(5), edited(5), "changed while a member");
        let withheld = edited(6).as_seen_until(5);
        assert!(withheld.is_withheld() && !edited(6).is_withheld() && !sent.is_withheld());
        assert_eq!(withheld.version(), 3);
        assert!(withheld.text().is_some_and(|text| text.as_str() == MessageBody::WITHDRAWN));
        assert!(matches!(withheld.content(), Content::Live { reactions, .. } if reactions.is_empty()));
    }

    #[test]
    fn body_is_stored_exactly_as_sent() {
        let raw = "  <b>hi</b> & bye \n";
        assert_eq!(MessageBody::parse(raw).unwrap().as_str(), raw);
    }

    #[test]
    fn blank_bodies_are_rejected() {
        assert_eq!(MessageBody::parse(""), Err(MessageBodyError::Empty));
        assert_eq!(MessageBody::parse(" \n\t "), Err(MessageBodyError::Empty));
    }

    #[test]
    fn bodies_without_a_visible_character_are_rejected() {
        for raw in [
            "\u{200B}",
            " \u{200B}\u{200D}\u{FEFF} ",
            "\u{202E}\u{2066}",
            "\u{1}\u{7f}",
            "\u{E0041}",
            "\u{2800}\u{3164}",
        ] {
            assert_eq!(MessageBody::parse(raw), Err(MessageBodyError::Invisible), "{raw:?}");
        }
    }

    #[test]
    fn a_stored_body_need_not_be_visible() {
        assert_eq!(MessageBody::stored("\u{200B}").map(String::from), Ok("\u{200B}".to_owned()));
        assert_eq!(MessageBody::stored(" "), Err(MessageBodyError::Empty));
        assert_eq!(MessageBody::stored("a\0"), Err(MessageBodyError::Nul));
    }

    #[test]
    fn bodies_with_emoji_sequences_and_any_script_are_kept() {
        for raw in
            ["👩\u{200D}👩\u{200D}👧", "❤\u{FE0F}", "\u{200F}שלום", "می\u{200C}خواهم", "日本語", "ok\u{200B}"]
        {
            assert_eq!(MessageBody::parse(raw).map(String::from), Ok(raw.to_owned()), "{raw:?}");
        }
    }

    #[test]
    fn bodies_with_a_nul_character_are_rejected() {
        assert_eq!(MessageBody::parse("a\0b"), Err(MessageBodyError::Nul));
    }

    #[test]
    fn body_limit_counts_characters_after_trimming() {
        assert!(MessageBody::parse(&format!("  {}  ", "ü".repeat(5000))).is_ok());
        assert_eq!(MessageBody::parse(&"a".repeat(5001)), Err(MessageBodyError::TooLong { max: 5000 }));
    }

    #[test]
    fn pair_is_the_same_in_both_orders() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let ab = ParticipantPair::new(a.clone(), b.clone()).unwrap();
        let ba = ParticipantPair::new(b.clone(), a.clone()).unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab.key(), ba.key());
        assert!(ab.contains(&a) && ab.contains(&b));
    }

    #[test]
    fn pair_with_oneself_is_refused() {
        let a = UserId::generate();
        assert_eq!(ParticipantPair::new(a.clone(), a), Err(PairError));
    }

    proptest! {
        #[test]
        fn body_parse_accepts_exactly_1_to_5000_trimmed_characters_with_one_visible(
            raw in "\\PC{0,6}|[ \u{200B}-\u{200F}\u{2066}\u{FE0F}a👩]{0,6}"
        ) {
            let n = raw.trim().chars().count();
            let visible = raw.chars().any(text::is_visible);
            prop_assert_eq!(MessageBody::parse(&raw).is_ok(), (1..=5000).contains(&n) && visible);
        }
    }
}
