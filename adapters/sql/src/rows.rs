//! Rows as the two engines return them, and their conversion into domain values.

use application::ports::{
    ConversationPage, ConversationRecord, ConversationSummary, MessageRecord, RepoError, StoredMessage,
    StreamItem, UserRecord,
};
use chrono::{DateTime, Utc};
use domain::{Conversation, Message, User};

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
        ConversationRecord {
            id: row.id,
            participants: [row.participant_a, row.participant_b],
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
        .try_into()
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
        MessageRecord {
            id: row.id,
            conversation_id: row.conversation_id,
            sender_id: row.sender_id,
            receiver_id: row.receiver_id,
            body: row.body,
            created_at: row.created_at,
            client_id: row.client_message_id,
        }
        .try_into()
    }
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
        StoredMessage::from_positions(row.message.try_into()?, row.sender_position, row.receiver_position)
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
        StreamItem::at_position(row.position, row.message.try_into()?)
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
        let message = match (self.m_id, self.m_sender_id, self.m_receiver_id, self.m_body, self.m_created_at)
        {
            (Some(id), Some(sender_id), Some(receiver_id), Some(body), Some(created_at)) => {
                Some(Message::try_from(MessageRecord {
                    id,
                    conversation_id: self.conversation.id.clone(),
                    sender_id,
                    receiver_id,
                    body,
                    created_at,
                    client_id: self.m_client_message_id,
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
