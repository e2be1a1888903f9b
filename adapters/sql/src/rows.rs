//! Rows as the two engines return them, and their conversion into domain values.

use application::ports::{
    ConversationPage, ConversationRecord, ConversationSummary, GroupRecord, MemberRecord, MessageRecord,
    NoticeRecord, RepoError, StoredMessage, StreamItem, UserRecord,
};
use chrono::{DateTime, Utc};
use domain::{Chat, Conversation, Member, Message, User, UserId};

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    pub id: String,
    pub username: String,
    pub full_name: String,
    pub gender: Option<String>,
    pub avatar: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<UserRow> for User {
    type Error = RepoError;
    fn try_from(row: UserRow) -> Result<Self, RepoError> {
        UserRecord {
            id: row.id,
            username: row.username,
            full_name: row.full_name,
            gender: row.gender,
            avatar: row.avatar,
            password_hash: row.password_hash,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
        .try_into()
    }
}

/// A direct conversation.
#[derive(sqlx::FromRow)]
pub(crate) struct ConversationRow {
    pub id: String,
    pub participant_a: String,
    pub participant_b: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seq: i64,
}

impl TryFrom<ConversationRow> for Conversation {
    type Error = RepoError;
    fn try_from(row: ConversationRow) -> Result<Self, RepoError> {
        ConversationRecord {
            id: row.id,
            participants: [row.participant_a, row.participant_b],
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_seq: row.last_seq,
        }
        .try_into()
    }
}

/// A conversation of either kind (`CHAT_COLUMNS`).
#[derive(sqlx::FromRow)]
pub(crate) struct ChatRow {
    pub id: String,
    pub kind: String,
    pub participant_a: Option<String>,
    pub participant_b: Option<String>,
    pub name: Option<String>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seq: i64,
}

impl TryFrom<ChatRow> for Chat {
    type Error = RepoError;
    fn try_from(row: ChatRow) -> Result<Self, RepoError> {
        match (row.kind.as_str(), row.participant_a, row.participant_b, row.name, row.created_by) {
            ("direct", Some(a), Some(b), _, _) => Ok(Chat::Direct(
                ConversationRecord {
                    id: row.id,
                    participants: [a, b],
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    last_seq: row.last_seq,
                }
                .try_into()?,
            )),
            ("group", _, _, Some(name), Some(created_by)) => Ok(Chat::Group(
                GroupRecord {
                    id: row.id,
                    name,
                    created_by,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    last_seq: row.last_seq,
                }
                .try_into()?,
            )),
            (kind, ..) => {
                Err(RepoError::corrupt("conversation", format!("a {kind} conversation without its fields")))
            }
        }
    }
}

/// A membership (`MEMBER_COLUMNS`).
#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    pub user_id: String,
    pub role: String,
    pub joined_at: DateTime<Utc>,
    pub joined_seq: i64,
    pub read_seq: i64,
    pub last_read_message_id: Option<String>,
}

impl TryFrom<MemberRow> for Member {
    type Error = RepoError;
    fn try_from(row: MemberRow) -> Result<Self, RepoError> {
        MemberRecord {
            user_id: row.user_id,
            role: row.role,
            joined_at: row.joined_at,
            joined_seq: row.joined_seq,
            read_seq: row.read_seq,
            last_read_message_id: row.last_read_message_id,
        }
        .try_into()
    }
}

/// A membership that may be absent (the member columns of a left join).
#[derive(sqlx::FromRow)]
pub(crate) struct OptionalMemberRow {
    pub user_id: Option<String>,
    pub role: Option<String>,
    pub joined_at: Option<DateTime<Utc>>,
    pub joined_seq: Option<i64>,
    pub read_seq: Option<i64>,
    pub last_read_message_id: Option<String>,
}

impl OptionalMemberRow {
    pub fn member(self) -> Result<Option<Member>, RepoError> {
        match (self.user_id, self.role, self.joined_at, self.joined_seq, self.read_seq) {
            (Some(user_id), Some(role), Some(joined_at), Some(joined_seq), Some(read_seq)) => MemberRow {
                user_id,
                role,
                joined_at,
                joined_seq,
                read_seq,
                last_read_message_id: self.last_read_message_id,
            }
            .try_into()
            .map(Some),
            _ => Ok(None),
        }
    }
}

/// A group with one of its members (`groups::STATE`).
#[derive(sqlx::FromRow)]
pub(crate) struct StateRow {
    #[sqlx(flatten)]
    pub group: ChatRow,
    pub members_version: i64,
    #[sqlx(flatten)]
    pub member: OptionalMemberRow,
}

/// An entry of a conversation (`MESSAGE_COLUMNS`).
#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub receiver_id: Option<String>,
    pub body: String,
    pub system: Option<String>,
    pub created_at: DateTime<Utc>,
    pub client_message_id: Option<String>,
}

impl TryFrom<MessageRow> for Message {
    type Error = RepoError;
    fn try_from(row: MessageRow) -> Result<Self, RepoError> {
        MessageRecord {
            reply_to: None,
            changed: None,
            id: row.id,
            conversation_id: row.conversation_id,
            sender_id: row.sender_id,
            receiver_id: row.receiver_id,
            body: row.body,
            system: row.system,
            seq: row.seq,
            created_at: row.created_at,
            client_id: row.client_message_id,
        }
        .try_into()
    }
}

/// An entry with its positions in both participants' streams (a group entry has none).
#[derive(sqlx::FromRow)]
pub(crate) struct StoredRow {
    #[sqlx(flatten)]
    pub message: MessageRow,
    pub sender_position: Option<i64>,
    pub receiver_position: Option<i64>,
}

impl TryFrom<StoredRow> for StoredMessage {
    type Error = RepoError;
    fn try_from(row: StoredRow) -> Result<Self, RepoError> {
        // A group entry found by its client id where a direct message was sent: it has no
        // positions, and the caller sees that it went elsewhere.
        StoredMessage::from_positions(
            row.message.try_into()?,
            row.sender_position.unwrap_or(0),
            row.receiver_position.unwrap_or(0),
        )
    }
}

/// One position of a user's stream (`STREAM`): a direct message when `notice` is null,
/// otherwise a notice of that kind (`id` is then the message read up to, of a `read` one).
#[derive(sqlx::FromRow)]
pub(crate) struct StreamRow {
    pub position: i64,
    pub notice: Option<String>,
    pub id: Option<String>,
    pub conversation_id: String,
    pub seq: i64,
    pub sender_id: Option<String>,
    pub receiver_id: Option<String>,
    pub body: Option<String>,
    pub created_at: DateTime<Utc>,
    pub client_message_id: Option<String>,
}

impl TryFrom<StreamRow> for StreamItem {
    type Error = RepoError;
    fn try_from(row: StreamRow) -> Result<Self, RepoError> {
        if let Some(kind) = row.notice {
            return NoticeRecord {
                position: row.position,
                kind,
                conversation_id: row.conversation_id,
                seq: row.seq,
                message_id: row.id,
            }
            .try_into();
        }
        let (Some(id), Some(sender_id), Some(body)) = (row.id, row.sender_id, row.body) else {
            return Err(RepoError::corrupt("stream entry", "a message without its fields"));
        };
        let message = MessageRecord {
            reply_to: None,
            changed: None,
            id,
            conversation_id: row.conversation_id,
            sender_id,
            receiver_id: row.receiver_id,
            body,
            system: None,
            seq: row.seq,
            created_at: row.created_at,
            client_id: row.client_message_id,
        };
        StreamItem::at_position(row.position, message.try_into()?)
    }
}

/// The columns of a conversation's last entry, or of one entry of a history page, all null
/// when there is none.
#[derive(sqlx::FromRow)]
pub(crate) struct JoinedMessageRow {
    pub m_id: Option<String>,
    pub m_seq: Option<i64>,
    pub m_sender_id: Option<String>,
    pub m_receiver_id: Option<String>,
    pub m_body: Option<String>,
    pub m_system: Option<String>,
    pub m_created_at: Option<DateTime<Utc>>,
    pub m_client_message_id: Option<String>,
}

impl JoinedMessageRow {
    /// The entry, of the conversation `conversation_id`, if the row has one.
    fn message(self, conversation_id: &str) -> Result<Option<Message>, RepoError> {
        match (self.m_id, self.m_seq, self.m_sender_id, self.m_body, self.m_created_at) {
            (Some(id), Some(seq), Some(sender_id), Some(body), Some(created_at)) => {
                Some(Message::try_from(MessageRecord {
                    reply_to: None,
                    changed: None,
                    id,
                    conversation_id: conversation_id.to_owned(),
                    sender_id,
                    receiver_id: self.m_receiver_id,
                    body,
                    system: self.m_system,
                    seq,
                    created_at,
                    client_id: self.m_client_message_id,
                }))
                .transpose()
            }
            _ => Ok(None),
        }
    }
}

/// A direct conversation joined with one of its messages: one row of a history page.
#[derive(sqlx::FromRow)]
pub(crate) struct ConversationMessageRow {
    #[sqlx(flatten)]
    pub conversation: ConversationRow,
    #[sqlx(flatten)]
    pub message: JoinedMessageRow,
}

/// One conversation of a user's list: the conversation, the user's membership and the
/// conversation's last entry.
#[derive(sqlx::FromRow)]
pub(crate) struct SummaryRow {
    #[sqlx(flatten)]
    pub conversation: ChatRow,
    #[sqlx(flatten)]
    pub me: MemberRow,
    #[sqlx(flatten)]
    pub last: JoinedMessageRow,
}

impl TryFrom<SummaryRow> for ConversationSummary {
    type Error = RepoError;
    fn try_from(row: SummaryRow) -> Result<Self, RepoError> {
        let last_message = row.last.message(&row.conversation.id)?;
        let conversation: Chat = row.conversation.try_into()?;
        let me: Member = row.me.try_into()?;
        let unread = me.unread(conversation.last_seq());
        Ok(ConversationSummary { conversation, last_message, me, unread })
    }
}

/// The rows of a history page as the page: one row per message, oldest first, or a single
/// row without a message when the page is empty; no row at all when the pair has no
/// conversation.
pub(crate) fn conversation_page(
    rows: Vec<ConversationMessageRow>,
) -> Result<Option<ConversationPage>, RepoError> {
    let mut conversation = None;
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        messages.extend(row.message.message(&row.conversation.id)?);
        conversation.get_or_insert(row.conversation);
    }
    conversation
        .map(|columns| Ok(ConversationPage { conversation: columns.try_into()?, messages }))
        .transpose()
}

/// A user id read back from a store.
pub(crate) fn stored_user_id(id: &str) -> Result<UserId, RepoError> {
    UserId::parse(id).map_err(|e| RepoError::corrupt("user id", e))
}
