//! The documents as stored, and their conversion from and into domain values.
//!
//! Field names are camelCase like the documents of the original Mongoose app. Timestamps are
//! BSON dates, which hold milliseconds: sub-millisecond digits are dropped on the way in
//! (the SQL stores keep microseconds). The API shows milliseconds, so clients see no
//! difference.

use application::ports::{
    name_words, ConversationRecord, MessageRecord, RepoError, Revocation, StoredMessage, UserRecord,
};
use chrono::{DateTime, Utc};
use domain::{Conversation, Message, Timestamp, User};
use mongodb::bson;
use serde::{Deserialize, Serialize};

/// A domain instant as a BSON date (milliseconds, rounded down).
pub(crate) fn to_bson(at: Timestamp) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

fn from_bson(at: bson::DateTime) -> Result<Timestamp, RepoError> {
    DateTime::<Utc>::from_timestamp_millis(at.timestamp_millis())
        .ok_or_else(|| RepoError::corrupt("timestamp", "out of range"))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub username: String,
    /// What uniqueness, look-ups, ordering and cursors use.
    pub username_lower: String,
    pub full_name: String,
    pub full_name_lower: String,
    /// What a search matches the start of besides `usernameLower`: [`name_words`], indexed.
    /// Missing only on users stored before searches used it, until the store's first start.
    #[serde(default)]
    pub name_words: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    pub avatar: String,
    pub password_hash: String,
    pub created_at: bson::DateTime,
    pub updated_at: bson::DateTime,
}

impl From<&User> for UserDoc {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.as_str().to_owned(),
            username: user.username.as_str().to_owned(),
            username_lower: user.username.normalized(),
            full_name: user.full_name.as_str().to_owned(),
            full_name_lower: user.full_name.as_str().to_lowercase(),
            name_words: name_words(user.full_name.as_str()),
            gender: user.gender.map(|g| g.as_str().to_owned()),
            avatar: user.avatar.as_str().to_owned(),
            password_hash: user.password_hash.as_str().to_owned(),
            created_at: to_bson(user.created_at),
            updated_at: to_bson(user.updated_at),
        }
    }
}

impl TryFrom<UserDoc> for User {
    type Error = RepoError;
    fn try_from(doc: UserDoc) -> Result<Self, RepoError> {
        UserRecord {
            id: doc.id,
            username: doc.username,
            full_name: doc.full_name,
            gender: doc.gender,
            avatar: doc.avatar,
            password_hash: doc.password_hash,
            created_at: from_bson(doc.created_at)?,
            updated_at: from_bson(doc.updated_at)?,
        }
        .try_into()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConversationDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// The pair in canonical order; a user's conversations are found through this array.
    pub participants: Vec<String>,
    /// [`ParticipantPair::key`], unique: one conversation per pair.
    pub pair_key: String,
    pub created_at: bson::DateTime,
    pub updated_at: bson::DateTime,
    /// The id of the newest message, `""` while there is none: with `updatedAt` and `_id`,
    /// the order of a user's conversation list (`ConversationKey`), indexed. A send moves it
    /// forward; missing only on conversations stored before, until the store's first start.
    #[serde(default)]
    pub last_message_id: String,
}

impl From<&Conversation> for ConversationDoc {
    fn from(conversation: &Conversation) -> Self {
        let pair = &conversation.participants;
        Self {
            id: conversation.id.as_str().to_owned(),
            participants: vec![pair.first().as_str().to_owned(), pair.second().as_str().to_owned()],
            pair_key: pair.key(),
            created_at: to_bson(conversation.created_at),
            updated_at: to_bson(conversation.updated_at),
            last_message_id: String::new(),
        }
    }
}

impl TryFrom<ConversationDoc> for Conversation {
    type Error = RepoError;
    fn try_from(doc: ConversationDoc) -> Result<Self, RepoError> {
        let participants: [String; 2] = doc.participants.try_into().map_err(|p: Vec<String>| {
            RepoError::corrupt("participants", format!("{} instead of 2", p.len()))
        })?;
        ConversationRecord {
            id: doc.id,
            participants,
            created_at: from_bson(doc.created_at)?,
            updated_at: from_bson(doc.updated_at)?,
        }
        .try_into()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageDoc {
    /// UUIDv7 text: sorting by `_id` is sorting by creation.
    #[serde(rename = "_id")]
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    pub receiver_id: String,
    /// The body, named as in the original app's documents.
    pub message: String,
    pub created_at: bson::DateTime,
    /// The sender's idempotency key; absent when the send carried none (a unique partial
    /// index covers only the documents that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// The message's positions in the sender's and the receiver's streams. Every message
    /// stored by `append` has both; documents written before streams existed get them when
    /// the store connects (see `messages::backfill_stream_positions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_position: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_position: Option<i64>,
}

impl MessageDoc {
    /// `message` as stored by `append`: in conversation `conversation_id`, at the given
    /// positions of both streams.
    pub fn stored(
        message: &Message,
        conversation_id: &str,
        sender_position: i64,
        receiver_position: i64,
    ) -> Self {
        Self {
            id: message.id.as_str().to_owned(),
            conversation_id: conversation_id.to_owned(),
            sender_id: message.sender_id.as_str().to_owned(),
            receiver_id: message.receiver_id.as_str().to_owned(),
            message: message.body.as_str().to_owned(),
            created_at: to_bson(message.created_at),
            client_message_id: message.client_id.as_ref().map(|id| id.as_str().to_owned()),
            sender_position: Some(sender_position),
            receiver_position: Some(receiver_position),
        }
    }
}

impl TryFrom<MessageDoc> for Message {
    type Error = RepoError;
    fn try_from(doc: MessageDoc) -> Result<Self, RepoError> {
        MessageRecord {
            id: doc.id,
            conversation_id: doc.conversation_id,
            sender_id: doc.sender_id,
            receiver_id: doc.receiver_id,
            body: doc.message,
            created_at: from_bson(doc.created_at)?,
            client_id: doc.client_message_id,
        }
        .try_into()
    }
}

impl TryFrom<MessageDoc> for StoredMessage {
    type Error = RepoError;
    fn try_from(mut doc: MessageDoc) -> Result<Self, RepoError> {
        let sender_position = position(doc.sender_position.take())?;
        let receiver_position = position(doc.receiver_position.take())?;
        StoredMessage::from_positions(doc.try_into()?, sender_position, receiver_position)
    }
}

/// A stream position every message stored by `append` has.
pub(crate) fn position(stored: Option<i64>) -> Result<i64, RepoError> {
    stored.ok_or_else(|| RepoError::corrupt("stream position", "missing"))
}

/// The last position taken in one user's stream, keyed by the user's id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StreamHeadDoc {
    #[serde(rename = "_id")]
    pub user_id: String,
    pub position: i64,
}

/// A revoked token, by its `jti`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RevokedTokenDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub expires_at: bson::DateTime,
}

impl TryFrom<RevokedTokenDoc> for Revocation {
    type Error = RepoError;
    fn try_from(doc: RevokedTokenDoc) -> Result<Self, RepoError> {
        Ok(Revocation { token_id: doc.id, expires_at: from_bson(doc.expires_at)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_their_milliseconds() {
        let at = DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let back = from_bson(to_bson(at)).unwrap();
        assert_eq!(back.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(back.timestamp_subsec_micros(), 123_000);
    }
}
