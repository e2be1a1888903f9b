//! Rows as the two engines return them, and their conversion into domain values.

use application::ports::{ConversationPage, ConversationSummary, RepoError, StoredMessage, StreamItem};
use chrono::{DateTime, Utc};
use domain::{
    Avatar, ClientMessageId, Conversation, ConversationId, Cursor, FullName, Message, MessageBody,
    MessageId, ParticipantPair, PasswordHash, User, UserId, Username,
};

use crate::error::corrupt;

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
        Ok(User {
            id: UserId::parse(&row.id).map_err(|e| corrupt("user id", e))?,
            username: Username::parse(&row.username).map_err(|e| corrupt("username", e))?,
            full_name: FullName::stored(&row.full_name).map_err(|e| corrupt("full name", e))?,
            gender: row
                .gender
                .map(|g| g.parse())
                .transpose()
                .map_err(|e| corrupt("gender", e))?,
            avatar: Avatar::parse(&row.avatar).map_err(|e| corrupt("avatar", e))?,
            password_hash: PasswordHash::new(row.password_hash),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ConversationRow {
    pub id: String,
    pub participant_a: String,
    pub participant_b: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<ConversationRow> for Conversation {
    type Error = RepoError;
    fn try_from(row: ConversationRow) -> Result<Self, RepoError> {
        let a = UserId::parse(&row.participant_a).map_err(|e| corrupt("participant", e))?;
        let b = UserId::parse(&row.participant_b).map_err(|e| corrupt("participant", e))?;
        Ok(Conversation {
            id: ConversationId::parse(&row.id).map_err(|e| corrupt("conversation id", e))?,
            participants: ParticipantPair::new(a, b).map_err(|e| corrupt("participants", e))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    pub receiver_id: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub client_message_id: Option<String>,
}

impl TryFrom<MessageRow> for Message {
    type Error = RepoError;
    fn try_from(row: MessageRow) -> Result<Self, RepoError> {
        Ok(Message {
            id: MessageId::parse(&row.id).map_err(|e| corrupt("message id", e))?,
            conversation_id: ConversationId::parse(&row.conversation_id)
                .map_err(|e| corrupt("conversation id", e))?,
            sender_id: UserId::parse(&row.sender_id).map_err(|e| corrupt("sender id", e))?,
            receiver_id: UserId::parse(&row.receiver_id).map_err(|e| corrupt("receiver id", e))?,
            body: MessageBody::stored(&row.body).map_err(|e| corrupt("message body", e))?,
            created_at: row.created_at,
            client_id: row
                .client_message_id
                .map(|id| ClientMessageId::parse(&id))
                .transpose()
                .map_err(|e| corrupt("client message id", e))?,
        })
    }
}

fn cursor(position: i64) -> Result<Cursor, RepoError> {
    Cursor::try_from(position).map_err(|e| corrupt("stream position", e))
}

/// `message` as just stored in `conversation_id`, at the given stream positions.
pub(crate) fn stored_message(
    message: &Message,
    conversation_id: &str,
    sender_position: i64,
    receiver_position: i64,
) -> Result<StoredMessage, RepoError> {
    let mut stored = message.clone();
    stored.conversation_id =
        ConversationId::parse(conversation_id).map_err(|e| corrupt("conversation id", e))?;
    Ok(StoredMessage {
        message: stored,
        sender_cursor: cursor(sender_position)?,
        receiver_cursor: cursor(receiver_position)?,
    })
}

/// A message with its positions in both participants' streams.
#[derive(sqlx::FromRow)]
pub(crate) struct StoredRow {
    #[sqlx(flatten)]
    pub message: MessageRow,
    pub sender_position: i64,
    pub receiver_position: i64,
}

impl TryFrom<StoredRow> for StoredMessage {
    type Error = RepoError;
    fn try_from(row: StoredRow) -> Result<Self, RepoError> {
        Ok(StoredMessage {
            message: row.message.try_into()?,
            sender_cursor: cursor(row.sender_position)?,
            receiver_cursor: cursor(row.receiver_position)?,
        })
    }
}

/// A message at its position in one user's stream.
#[derive(sqlx::FromRow)]
pub(crate) struct StreamRow {
    #[sqlx(flatten)]
    pub message: MessageRow,
    pub position: i64,
}

impl TryFrom<StreamRow> for StreamItem {
    type Error = RepoError;
    fn try_from(row: StreamRow) -> Result<Self, RepoError> {
        Ok(StreamItem { cursor: cursor(row.position)?, message: row.message.try_into()? })
    }
}

/// A conversation joined with one of its messages, all message columns null when there is
/// none: a conversation with its last message, or one row of a history page.
#[derive(sqlx::FromRow)]
pub(crate) struct ConversationMessageRow {
    #[sqlx(flatten)]
    pub conversation: ConversationRow,
    pub m_id: Option<String>,
    pub m_sender_id: Option<String>,
    pub m_receiver_id: Option<String>,
    pub m_body: Option<String>,
    pub m_created_at: Option<DateTime<Utc>>,
    pub m_client_message_id: Option<String>,
}

impl ConversationMessageRow {
    /// The conversation's columns, and the message if the row has one.
    fn split(self) -> Result<(ConversationRow, Option<Message>), RepoError> {
        let message = match (self.m_id, self.m_sender_id, self.m_receiver_id, self.m_body, self.m_created_at) {
            (Some(id), Some(sender_id), Some(receiver_id), Some(body), Some(created_at)) => {
                Some(Message::try_from(MessageRow {
                    id,
                    conversation_id: self.conversation.id.clone(),
                    sender_id,
                    receiver_id,
                    body,
                    created_at,
                    client_message_id: self.m_client_message_id,
                })?)
            }
            _ => None,
        };
        Ok((self.conversation, message))
    }
}

impl TryFrom<ConversationMessageRow> for ConversationSummary {
    type Error = RepoError;
    fn try_from(row: ConversationMessageRow) -> Result<Self, RepoError> {
        let (conversation, last_message) = row.split()?;
        Ok(ConversationSummary { conversation: conversation.try_into()?, last_message })
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
        let (columns, message) = row.split()?;
        conversation.get_or_insert(columns);
        messages.extend(message);
    }
    conversation
        .map(|columns| Ok(ConversationPage { conversation: columns.try_into()?, messages }))
        .transpose()
}
