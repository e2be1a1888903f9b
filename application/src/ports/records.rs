//! Domain values as the stores keep them (ids, names and bodies as text, positions as
//! integers) and their way back into the domain, written once for every store.
//!
//! A store reads its rows or documents into these records and converts them here, so that
//! every store reads a value back under the same rules: names and bodies under the rules
//! they were written with (`FullName::stored`, `MessageBody::stored`), and a value that does
//! not convert is corrupt data ([`RepoError::corrupt`]), never a client's fault.

use domain::{
    excerpt, Avatar, ChangeKind, Changed, ClientMessageId, Content, Conversation, ConversationId, Cursor,
    Emoji, FullName, Group, GroupName, Member, Message, MessageBody, MessageChange, MessageId,
    ParticipantPair, PasswordHash, QuoteText, Reactions, ReplyQuote, Seq, SystemEvent, Timestamp, Tombstone,
    User, UserId, Username,
};

use super::{Notice, RepoError, RepoResult, StoredMessage, StreamEntry, StreamItem, Update};

/// A stored user.
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub full_name: String,
    pub gender: Option<String>,
    pub avatar: String,
    pub password_hash: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl TryFrom<UserRecord> for User {
    type Error = RepoError;
    fn try_from(record: UserRecord) -> RepoResult<Self> {
        Ok(User {
            id: UserId::parse(&record.id).map_err(|e| RepoError::corrupt("user id", e))?,
            username: Username::parse(&record.username).map_err(|e| RepoError::corrupt("username", e))?,
            full_name: FullName::stored(&record.full_name).map_err(|e| RepoError::corrupt("full name", e))?,
            gender: record
                .gender
                .map(|g| g.parse())
                .transpose()
                .map_err(|e| RepoError::corrupt("gender", e))?,
            avatar: Avatar::stored(&record.avatar).map_err(|e| RepoError::corrupt("avatar", e))?,
            password_hash: PasswordHash::new(record.password_hash),
            created_at: record.created_at,
            updated_at: record.updated_at,
        })
    }
}

/// A stored direct conversation; the participants in any order.
pub struct ConversationRecord {
    pub id: String,
    pub participants: [String; 2],
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_seq: i64,
}

impl TryFrom<ConversationRecord> for Conversation {
    type Error = RepoError;
    fn try_from(record: ConversationRecord) -> RepoResult<Self> {
        let [a, b] = record.participants;
        let a = UserId::parse(&a).map_err(|e| RepoError::corrupt("participant", e))?;
        let b = UserId::parse(&b).map_err(|e| RepoError::corrupt("participant", e))?;
        Ok(Conversation {
            id: ConversationId::parse(&record.id).map_err(|e| RepoError::corrupt("conversation id", e))?,
            participants: ParticipantPair::new(a, b).map_err(|e| RepoError::corrupt("participants", e))?,
            created_at: record.created_at,
            updated_at: record.updated_at,
            last_seq: stored_seq(record.last_seq)?,
        })
    }
}

/// A stored group.
pub struct GroupRecord {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_seq: i64,
}

impl TryFrom<GroupRecord> for Group {
    type Error = RepoError;
    fn try_from(record: GroupRecord) -> RepoResult<Self> {
        Ok(Group {
            id: conversation_id(&record.id)?,
            name: GroupName::stored(&record.name).map_err(|e| RepoError::corrupt("group name", e))?,
            created_by: UserId::parse(&record.created_by)
                .map_err(|e| RepoError::corrupt("group creator", e))?,
            created_at: record.created_at,
            updated_at: record.updated_at,
            last_seq: stored_seq(record.last_seq)?,
        })
    }
}

/// A stored membership.
pub struct MemberRecord {
    pub user_id: String,
    pub role: String,
    pub joined_at: Timestamp,
    pub joined_seq: i64,
    pub read_seq: i64,
    pub last_read_message_id: Option<String>,
}

impl TryFrom<MemberRecord> for Member {
    type Error = RepoError;
    fn try_from(record: MemberRecord) -> RepoResult<Self> {
        Ok(Member {
            user_id: UserId::parse(&record.user_id).map_err(|e| RepoError::corrupt("member id", e))?,
            role: record.role.parse().map_err(|e| RepoError::corrupt("member role", e))?,
            joined_at: record.joined_at,
            joined_seq: stored_seq(record.joined_seq)?,
            read_seq: stored_seq(record.read_seq)?,
            last_read_message_id: record
                .last_read_message_id
                .as_deref()
                .map(MessageId::parse)
                .transpose()
                .map_err(|e| RepoError::corrupt("last read message id", e))?,
        })
    }
}

/// A stored message or system entry.
pub struct MessageRecord {
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    /// `None` in groups.
    pub receiver_id: Option<String>,
    pub body: String,
    /// A system entry's [`SystemEvent`] as JSON.
    pub system: Option<String>,
    pub seq: i64,
    pub created_at: Timestamp,
    pub client_id: Option<String>,
    /// The message it answers, read with it.
    pub reply_to: Option<QuoteRecord>,
    /// What became of it after it was sent; `None` while it never changed.
    pub changed: Option<ChangedRecord>,
}

/// What a reply shows of the message it answers, as stored now.
pub struct QuoteRecord {
    pub message_id: String,
    pub sender_id: String,
    /// Its text now; ignored when `deleted`.
    pub body: String,
    pub deleted: bool,
}

/// The stored state of a changed message (its `body` is its text now).
pub struct ChangedRecord {
    /// The seq of its last change.
    pub version: i64,
    pub edited_at: Option<Timestamp>,
    /// When and by whom it was deleted.
    pub deleted: Option<(Timestamp, String)>,
    /// Every reaction as `(emoji, user id)`, in the order they were made.
    pub reactions: Vec<(String, String)>,
}

impl MessageRecord {
    /// Whether this entry is a message whose stored state is more than its text as sent.
    pub fn is_changed(version: i64, seq: i64) -> bool {
        version > seq
    }
}

fn quote(record: QuoteRecord) -> RepoResult<ReplyQuote> {
    Ok(ReplyQuote {
        message_id: MessageId::parse(&record.message_id).map_err(|e| RepoError::corrupt("reply id", e))?,
        sender_id: UserId::parse(&record.sender_id).map_err(|e| RepoError::corrupt("reply sender id", e))?,
        text: match record.deleted {
            true => QuoteText::Deleted,
            false => {
                let (text, truncated) = excerpt(&record.body, ReplyQuote::GRAPHEMES);
                QuoteText::Excerpt { text, truncated }
            }
        },
    })
}

fn content(body: &MessageBody, record: ChangedRecord) -> RepoResult<Changed> {
    let content = match record.deleted {
        Some((deleted_at, deleted_by)) => Content::Deleted(Tombstone {
            deleted_at,
            deleted_by: UserId::parse(&deleted_by).map_err(|e| RepoError::corrupt("deleted by", e))?,
        }),
        None => Content::Live {
            body: body.clone(),
            edited_at: record.edited_at,
            reactions: Reactions::from_stored(
                record
                    .reactions
                    .into_iter()
                    .map(|(emoji, user)| {
                        Ok((
                            Emoji::stored(&emoji).map_err(|e| RepoError::corrupt("reaction emoji", e))?,
                            UserId::parse(&user).map_err(|e| RepoError::corrupt("reaction user", e))?,
                        ))
                    })
                    .collect::<RepoResult<Vec<_>>>()?,
            ),
        },
    };
    Ok(Changed { content, version: stored_seq(record.version)? })
}

impl TryFrom<MessageRecord> for Message {
    type Error = RepoError;
    fn try_from(record: MessageRecord) -> RepoResult<Self> {
        let body = MessageBody::stored(&record.body).map_err(|e| RepoError::corrupt("message body", e))?;
        Ok(Message {
            id: MessageId::parse(&record.id).map_err(|e| RepoError::corrupt("message id", e))?,
            conversation_id: conversation_id(&record.conversation_id)?,
            sender_id: UserId::parse(&record.sender_id).map_err(|e| RepoError::corrupt("sender id", e))?,
            receiver_id: record
                .receiver_id
                .as_deref()
                .map(UserId::parse)
                .transpose()
                .map_err(|e| RepoError::corrupt("receiver id", e))?,
            body: body.clone(),
            system: record
                .system
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| RepoError::corrupt("system entry", e))?,
            seq: stored_seq(record.seq)?,
            created_at: record.created_at,
            client_id: record
                .client_id
                .as_deref()
                .map(ClientMessageId::parse)
                .transpose()
                .map_err(|e| RepoError::corrupt("client message id", e))?,
            reply_to: record.reply_to.map(quote).transpose()?,
            changed: record.changed.map(|changed| content(&body, changed).map(Box::new)).transpose()?,
        })
    }
}

/// A stored change entry, with the message it changed as read with it.
pub struct ChangeRecord {
    pub conversation_id: String,
    pub seq: i64,
    pub message_id: String,
    pub actor_id: String,
    /// `edited`, `deleted`, `reactionAdded` or `reactionRemoved` ([`ChangeKind::as_str`]).
    pub kind: String,
    /// Of a reaction change.
    pub emoji: Option<String>,
    pub created_at: Timestamp,
    pub message: MessageRecord,
}

impl TryFrom<ChangeRecord> for Update {
    type Error = RepoError;
    fn try_from(record: ChangeRecord) -> RepoResult<Self> {
        let emoji = || -> RepoResult<Emoji> {
            let raw =
                record.emoji.as_deref().ok_or_else(|| RepoError::corrupt("reaction change", "no emoji"))?;
            Emoji::stored(raw).map_err(|e| RepoError::corrupt("reaction emoji", e))
        };
        let kind = match record.kind.as_str() {
            "edited" => ChangeKind::Edited,
            "deleted" => ChangeKind::Deleted,
            "reactionAdded" => ChangeKind::ReactionAdded { emoji: emoji()? },
            "reactionRemoved" => ChangeKind::ReactionRemoved { emoji: emoji()? },
            other => return Err(RepoError::corrupt("change kind", other)),
        };
        Ok(Update {
            change: MessageChange {
                conversation_id: conversation_id(&record.conversation_id)?,
                message_id: MessageId::parse(&record.message_id)
                    .map_err(|e| RepoError::corrupt("changed message id", e))?,
                actor: UserId::parse(&record.actor_id).map_err(|e| RepoError::corrupt("change actor", e))?,
                kind,
                at: record.created_at,
                seq: stored_seq(record.seq)?,
            },
            message: record.message.try_into()?,
        })
    }
}

fn conversation_id(stored: &str) -> RepoResult<ConversationId> {
    ConversationId::parse(stored).map_err(|e| RepoError::corrupt("conversation id", e))
}

/// A stored stream position as a cursor.
pub fn stored_cursor(position: i64) -> RepoResult<Cursor> {
    Cursor::try_from(position).map_err(|e| RepoError::corrupt("stream position", e))
}

/// A stored conversation sequence number.
pub fn stored_seq(seq: i64) -> RepoResult<Seq> {
    u64::try_from(seq).map_err(|e| RepoError::corrupt("sequence number", e))
}

/// A [`SystemEvent`] as stores keep it: JSON text.
pub fn system_json(event: &SystemEvent) -> String {
    serde_json::to_string(event).expect("a system event serializes")
}

/// A stored notice of a user's stream.
pub struct NoticeRecord {
    pub position: i64,
    /// `joined`, `left`, `read` or `updated` (which is read as the change entry it names, with
    /// [`ChangeRecord`]).
    pub kind: String,
    pub conversation_id: String,
    pub seq: i64,
    /// Of a `read` notice.
    pub message_id: Option<String>,
}

impl NoticeRecord {
    /// The kind of `notice` as stored.
    pub fn kind_of(notice: &Notice) -> &'static str {
        match notice {
            Notice::Joined { .. } => "joined",
            Notice::Left { .. } => "left",
            Notice::Read { .. } => "read",
        }
    }

    /// The kind of a notice that places a change of a direct message in a user's stream.
    pub const UPDATED: &'static str = "updated";
}

impl TryFrom<NoticeRecord> for StreamItem {
    type Error = RepoError;
    fn try_from(record: NoticeRecord) -> RepoResult<Self> {
        let conversation = conversation_id(&record.conversation_id)?;
        let seq = stored_seq(record.seq)?;
        let notice = match (record.kind.as_str(), record.message_id) {
            ("joined", _) => Notice::Joined { group: conversation, seq },
            ("left", _) => Notice::Left { group: conversation, seq },
            ("read", Some(message_id)) => Notice::Read {
                conversation,
                seq,
                message_id: MessageId::parse(&message_id)
                    .map_err(|e| RepoError::corrupt("read message id", e))?,
            },
            (kind, _) => return Err(RepoError::corrupt("notice", kind)),
        };
        Ok(StreamItem { cursor: stored_cursor(record.position)?, entry: StreamEntry::Notice(notice) })
    }
}

impl StoredMessage {
    /// A message read back with its stored positions in the sender's and the receiver's
    /// streams.
    pub fn from_positions(
        message: Message,
        sender_position: i64,
        receiver_position: i64,
    ) -> RepoResult<Self> {
        Ok(Self {
            message,
            sender_cursor: stored_cursor(sender_position)?,
            receiver_cursor: stored_cursor(receiver_position)?,
        })
    }

    /// `message` as an append just stored it: in the pair's conversation `conversation_id`
    /// (the candidate's, or the one the pair already had), at the positions it took.
    pub fn placed(
        message: &Message,
        conversation_id: &str,
        sender_position: i64,
        receiver_position: i64,
    ) -> RepoResult<Self> {
        let message = Message { conversation_id: self::conversation_id(conversation_id)?, ..message.clone() };
        Self::from_positions(message, sender_position, receiver_position)
    }
}

impl StreamItem {
    /// A direct message read back at its stored position in one user's stream.
    pub fn at_position(position: i64, message: Message) -> RepoResult<Self> {
        Ok(Self { cursor: stored_cursor(position)?, entry: StreamEntry::Message(message) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MessageRecord {
        MessageRecord {
            id: MessageId::generate().as_str().to_owned(),
            conversation_id: ConversationId::generate().as_str().to_owned(),
            sender_id: UserId::generate().as_str().to_owned(),
            receiver_id: Some(UserId::generate().as_str().to_owned()),
            body: "hi".into(),
            system: None,
            seq: 1,
            created_at: chrono::Utc::now(),
            client_id: None,
            reply_to: None,
            changed: None,
        }
    }

    #[test]
    fn a_value_that_does_not_parse_back_is_corrupt_data_naming_the_field() {
        let error =
            Message::try_from(MessageRecord { sender_id: "not-an-id".into(), ..record() }).unwrap_err();
        assert!(matches!(&error, RepoError::Unexpected(_)), "{error:?}");
        assert!(error.to_string().contains("stored sender id is invalid"), "{error}");
    }

    #[test]
    fn a_placed_message_joins_the_given_conversation_at_its_positions() {
        let message = Message::try_from(record()).unwrap();
        let conversation = ConversationId::generate();
        let placed = StoredMessage::placed(&message, conversation.as_str(), 3, 7).unwrap();
        assert_eq!(placed.message, Message { conversation_id: conversation, ..message.clone() });
        assert_eq!((placed.sender_cursor.position(), placed.receiver_cursor.position()), (3, 7));
        assert!(StoredMessage::placed(&message, "nope", 1, 1).is_err());
        assert!(StoredMessage::from_positions(message, -1, 1).is_err(), "no position is negative");
    }
}
