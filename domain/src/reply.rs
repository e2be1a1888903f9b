//! Replies: a message may name an earlier message of the same conversation it answers, and
//! is shown with a short quote of it.

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use crate::{Content, ConversationId, Message, MessageId, Seq, UserId};

/// Why a message cannot be replied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the message replied to belongs to another conversation")]
    OtherConversation,
    /// In a group, a message from before the replying member joined: it is not theirs to see.
    #[error("the message replied to is not visible to the sender")]
    NotVisible,
    #[error("a system entry cannot be replied to")]
    SystemEntry,
    #[error("the message replied to is deleted")]
    Deleted,
}

/// Whether a message to `conversation`, sent by a member who sees its entries from seq
/// `visible_from` on (1 in a direct conversation), may reply to `target`, whose content is now
/// `content`.
pub fn check_reply_target(
    conversation: &ConversationId,
    visible_from: Seq,
    target: &Message,
    content: &Content,
) -> Result<(), ReplyError> {
    if &target.conversation_id != conversation {
        return Err(ReplyError::OtherConversation);
    }
    if target.seq < visible_from {
        return Err(ReplyError::NotVisible);
    }
    if !target.is_text() {
        return Err(ReplyError::SystemEntry);
    }
    if content.tombstone().is_some() {
        return Err(ReplyError::Deleted);
    }
    Ok(())
}

/// What a reply shows of the message it answers: its author and the start of its text as it
/// is now, or that it is deleted. Made when the reply is read, so it follows edits and
/// deletions of the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyQuote {
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub text: QuoteText,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuoteText {
    /// The first [`ReplyQuote::GRAPHEMES`] user-perceived characters of the text, trimmed;
    /// `truncated` when the text goes on.
    Excerpt {
        text: String,
        truncated: bool,
    },
    Deleted,
}

impl ReplyQuote {
    /// User-perceived characters (grapheme clusters) a quote shows: an emoji sequence or a
    /// letter with its accents is one, and never cut in half.
    pub const GRAPHEMES: usize = 100;

    /// The quote of `original`, whose content is now `content`.
    pub fn of(original: &Message, content: &Content) -> Self {
        let text = match content.body() {
            Some(body) => {
                let (text, truncated) = excerpt(body.as_str(), Self::GRAPHEMES);
                QuoteText::Excerpt { text, truncated }
            }
            None => QuoteText::Deleted,
        };
        Self { message_id: original.id.clone(), sender_id: original.sender_id.clone(), text }
    }
}

/// The first `max` grapheme clusters of `text` once trimmed, and whether anything was cut.
pub fn excerpt(text: &str, max: usize) -> (String, bool) {
    let trimmed = text.trim();
    match trimmed.grapheme_indices(true).nth(max) {
        Some((end, _)) => (trimmed[..end].trim_end().to_owned(), true),
        None => (trimmed.to_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GroupName, MessageBody, Reactions, SystemEvent, Tombstone};
    use chrono::Utc;
    use proptest::prelude::*;

    fn message(conversation: &ConversationId, seq: Seq, text: &str) -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: conversation.clone(),
            sender_id: UserId::generate(),
            receiver_id: None,
            body: MessageBody::parse(text).unwrap(),
            system: None,
            seq,
            created_at: Utc::now(),
            client_id: None,
        }
    }

    fn live(message: &Message) -> Content {
        Content::Live { body: message.body.clone(), edited_at: None, reactions: Reactions::new() }
    }

    fn deleted() -> Content {
        Content::Deleted(Tombstone { deleted_at: Utc::now(), deleted_by: UserId::generate() })
    }

    #[test]
    fn a_visible_message_of_the_same_conversation_can_be_replied_to() {
        let group = ConversationId::generate();
        let original = message(&group, 5, "hi");
        assert_eq!(check_reply_target(&group, 5, &original, &live(&original)), Ok(()));
    }

    #[test]
    fn other_conversations_earlier_entries_system_entries_and_deleted_messages_are_refused() {
        let group = ConversationId::generate();
        let elsewhere = message(&ConversationId::generate(), 5, "hi");
        assert_eq!(
            check_reply_target(&group, 1, &elsewhere, &live(&elsewhere)),
            Err(ReplyError::OtherConversation)
        );
        let before_joining = message(&group, 4, "hi");
        assert_eq!(
            check_reply_target(&group, 5, &before_joining, &live(&before_joining)),
            Err(ReplyError::NotVisible)
        );
        let mut system = message(&group, 6, "Alice renamed the group");
        system.system = Some(SystemEvent::Renamed {
            actor: system.sender_id.clone(),
            name: GroupName::parse("x").unwrap(),
        });
        assert_eq!(check_reply_target(&group, 1, &system, &live(&system)), Err(ReplyError::SystemEntry));
        let gone = message(&group, 7, "hi");
        assert_eq!(check_reply_target(&group, 1, &gone, &deleted()), Err(ReplyError::Deleted));
    }

    #[test]
    fn a_quote_names_the_author_and_shows_the_text_as_it_is_now() {
        let original = message(&ConversationId::generate(), 1, "  see you at 5  ");
        let quote = ReplyQuote::of(&original, &live(&original));
        assert_eq!(quote.sender_id, original.sender_id);
        assert_eq!(quote.message_id, original.id);
        assert_eq!(quote.text, QuoteText::Excerpt { text: "see you at 5".to_owned(), truncated: false });
        assert_eq!(ReplyQuote::of(&original, &deleted()).text, QuoteText::Deleted);
    }

    #[test]
    fn a_quote_keeps_the_first_100_graphemes_without_splitting_one() {
        let family = "👩\u{200D}👩\u{200D}👧";
        let text = format!("{}{}", "e\u{301}".repeat(99), family.repeat(2));
        let (quoted, truncated) = excerpt(&text, ReplyQuote::GRAPHEMES);
        assert!(truncated);
        assert_eq!(quoted, format!("{}{}", "e\u{301}".repeat(99), family));
        assert_eq!(excerpt(&"a".repeat(100), 100), ("a".repeat(100), false));
        assert_eq!(excerpt(&"a".repeat(101), 100), ("a".repeat(100), true));
    }

    proptest! {
        #[test]
        fn an_excerpt_is_a_prefix_of_the_trimmed_text_of_at_most_max_graphemes(
            text in "[ a\u{301}👩\u{200D}é\n]{0,40}", max in 0usize..12
        ) {
            let (quoted, truncated) = excerpt(&text, max);
            prop_assert!(text.trim().starts_with(&quoted));
            prop_assert!(quoted.graphemes(true).count() <= max);
            prop_assert_eq!(truncated, text.trim().graphemes(true).count() > max);
        }
    }
}
