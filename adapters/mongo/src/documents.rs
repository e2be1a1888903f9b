//! The documents as stored, and their conversion from and into domain values.
//!
//! Field names are camelCase like the documents of the original Mongoose app. Timestamps are
//! BSON dates, which hold milliseconds: sub-millisecond digits are dropped on the way in
//! (the SQL stores keep microseconds). The API shows milliseconds, so clients see no
//! difference.

use application::ports::{
    name_words, system_json, ChangeRecord, ChangedRecord, ConversationRecord, GroupRecord, MemberRecord,
    MessageRecord, Notice, NoticeRecord, QuoteRecord, RepoError, Revocation, StreamItem, UserRecord,
};
use chrono::{DateTime, Utc};
use domain::{
    Chat, Conversation, ConversationId, Group, Member, Message, MessageChange, Seq, SystemEvent, Timestamp,
    User, UserId,
};
use mongodb::bson;
use serde::{Deserialize, Serialize};

/// A domain instant as a BSON date (milliseconds, rounded down).
pub(crate) fn to_bson(at: Timestamp) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

pub(crate) fn from_bson(at: bson::DateTime) -> Result<Timestamp, RepoError> {
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

/// The `kind` of a direct conversation's document (also what a document without `kind`,
/// stored before groups existed, is).
pub(crate) const DIRECT: &str = "direct";
/// The `kind` of a group's document.
pub(crate) const GROUP: &str = "group";

/// A conversation of either kind. A direct one has `participants` and `pairKey`; a group
/// has `name`, `createdBy` and `membersVersion`. Both have `lastSeq`: the seq of their last
/// entry, which every entry's transaction increments (and so locks the document).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConversationDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// [`DIRECT`] or [`GROUP`]; missing on documents stored before groups, which are direct.
    #[serde(default = "direct")]
    pub kind: String,
    /// The pair in canonical order; a user's direct conversations are found through this
    /// array.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<String>,
    /// [`ParticipantPair::key`], unique among direct conversations: one per pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    pub created_at: bson::DateTime,
    pub updated_at: bson::DateTime,
    /// The id of the newest entry, `""` while there is none: with `updatedAt` and `_id`,
    /// the order of a user's conversation list (`ConversationKey`). An entry moves it
    /// forward; missing only on conversations stored before, until the store's first start.
    #[serde(default)]
    pub last_message_id: String,
    /// Missing only on conversations stored before sequences, until the store's first start.
    #[serde(default)]
    pub last_seq: i64,
    /// A group's membership version: 1 at creation, one more with every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_version: Option<i64>,
}

fn direct() -> String {
    DIRECT.to_owned()
}

impl ConversationDoc {
    /// A group as `create` stores it: its first entry `created` at seq 1.
    pub fn group(group: &Group, created: &Message) -> Self {
        Self {
            id: group.id.as_str().to_owned(),
            kind: GROUP.to_owned(),
            participants: Vec::new(),
            pair_key: None,
            name: Some(group.name.as_str().to_owned()),
            created_by: Some(group.created_by.as_str().to_owned()),
            created_at: to_bson(group.created_at),
            updated_at: to_bson(group.updated_at),
            last_message_id: created.id.as_str().to_owned(),
            last_seq: 1,
            members_version: Some(1),
        }
    }

    /// The fields a new direct conversation is stored with, for an upsert's `$setOnInsert`:
    /// without those the upsert sets otherwise (its filter's `pairKey`; `updatedAt`,
    /// `lastMessageId` and `lastSeq`, which a send moves).
    pub fn direct_on_insert(conversation: &Conversation) -> bson::Document {
        let pair = &conversation.participants;
        bson::doc! {
            "_id": conversation.id.as_str(),
            "kind": DIRECT,
            "participants": [pair.first().as_str(), pair.second().as_str()],
            "createdAt": to_bson(conversation.created_at),
        }
    }

    pub fn is_group(&self) -> bool {
        self.kind == GROUP
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
            last_seq: doc.last_seq,
        }
        .try_into()
    }
}

impl TryFrom<ConversationDoc> for Group {
    type Error = RepoError;
    fn try_from(doc: ConversationDoc) -> Result<Self, RepoError> {
        GroupRecord {
            id: doc.id,
            name: doc.name.ok_or_else(|| RepoError::corrupt("group name", "missing"))?,
            created_by: doc.created_by.ok_or_else(|| RepoError::corrupt("group creator", "missing"))?,
            created_at: from_bson(doc.created_at)?,
            updated_at: from_bson(doc.updated_at)?,
            last_seq: doc.last_seq,
        }
        .try_into()
    }
}

impl TryFrom<ConversationDoc> for Chat {
    type Error = RepoError;
    fn try_from(doc: ConversationDoc) -> Result<Self, RepoError> {
        if doc.is_group() {
            Ok(Chat::Group(doc.try_into()?))
        } else {
            Ok(Chat::Direct(doc.try_into()?))
        }
    }
}

/// A group's membership version as stored.
pub(crate) fn version(stored: Option<i64>) -> Result<u64, RepoError> {
    stored
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| RepoError::corrupt("membership version", format!("{stored:?}")))
}

/// One user's membership of one conversation (of either kind), unique per pair of ids.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MemberDoc {
    pub conversation_id: String,
    pub user_id: String,
    /// The conversation's kind, so that a user's groups are found without their direct
    /// conversations.
    pub kind: String,
    pub role: String,
    pub joined_at: bson::DateTime,
    pub joined_seq: i64,
    pub read_seq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_message_id: Option<String>,
}

impl MemberDoc {
    pub fn new(conversation: &ConversationId, kind: &str, member: &Member) -> Self {
        Self {
            conversation_id: conversation.as_str().to_owned(),
            user_id: member.user_id.as_str().to_owned(),
            kind: kind.to_owned(),
            role: member.role.as_str().to_owned(),
            joined_at: to_bson(member.joined_at),
            joined_seq: seq_to_i64(member.joined_seq),
            read_seq: seq_to_i64(member.read_seq),
            last_read_message_id: member.last_read_message_id.as_ref().map(|id| id.as_str().to_owned()),
        }
    }
}

impl TryFrom<MemberDoc> for Member {
    type Error = RepoError;
    fn try_from(doc: MemberDoc) -> Result<Self, RepoError> {
        MemberRecord {
            user_id: doc.user_id,
            role: doc.role,
            joined_at: from_bson(doc.joined_at)?,
            joined_seq: doc.joined_seq,
            read_seq: doc.read_seq,
            last_read_message_id: doc.last_read_message_id,
        }
        .try_into()
    }
}

/// A seq as stored: every seq a store hands out fits (it counts entries).
pub(crate) fn seq_to_i64(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A notice in one user's stream, unique per (user, position).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NoticeDoc {
    pub user_id: String,
    pub position: i64,
    /// `joined`, `left` or `read` ([`NoticeRecord::kind_of`]), or `updated`
    /// ([`NoticeRecord::UPDATED`]: the change entry `<conversationId>:<seq>` of the direct
    /// message `messageId`).
    pub kind: String,
    pub conversation_id: String,
    pub seq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub created_at: bson::DateTime,
}

impl NoticeDoc {
    pub fn new(user: &UserId, position: i64, notice: &Notice) -> Self {
        let (conversation, seq, message_id) = match notice {
            Notice::Joined { group, seq } | Notice::Left { group, seq } => (group, *seq, None),
            Notice::Read { conversation, seq, message_id } => {
                (conversation, *seq, Some(message_id.as_str().to_owned()))
            }
        };
        Self {
            user_id: user.as_str().to_owned(),
            position,
            kind: NoticeRecord::kind_of(notice).to_owned(),
            conversation_id: conversation.as_str().to_owned(),
            seq: seq_to_i64(seq),
            message_id,
            created_at: bson::DateTime::now(),
        }
    }

    /// The notice that places `change` (of a direct message) at `position` of `user`'s
    /// stream.
    pub fn updated(user: &UserId, position: i64, change: &MessageChange) -> Self {
        Self {
            user_id: user.as_str().to_owned(),
            position,
            kind: NoticeRecord::UPDATED.to_owned(),
            conversation_id: change.conversation_id.as_str().to_owned(),
            seq: seq_to_i64(change.seq),
            message_id: Some(change.message_id.as_str().to_owned()),
            created_at: bson::DateTime::now(),
        }
    }

    pub fn is_updated(&self) -> bool {
        self.kind == NoticeRecord::UPDATED
    }
}

impl TryFrom<NoticeDoc> for StreamItem {
    type Error = RepoError;
    fn try_from(doc: NoticeDoc) -> Result<Self, RepoError> {
        NoticeRecord {
            position: doc.position,
            kind: doc.kind,
            conversation_id: doc.conversation_id,
            seq: doc.seq,
            message_id: doc.message_id,
        }
        .try_into()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageDoc {
    /// UUIDv7 text: sorting by `_id` is sorting by creation.
    #[serde(rename = "_id")]
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    /// `null` in groups.
    #[serde(default)]
    pub receiver_id: Option<String>,
    /// The body, named as in the original app's documents: the text now (the last edit's),
    /// [`MessageBody::WITHDRAWN`](domain::MessageBody::WITHDRAWN) once deleted.
    pub message: String,
    /// A system entry's [`SystemEvent`], as a subdocument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<bson::Document>,
    /// The entry's place in its conversation. Every entry stored by this version has one;
    /// documents written before sequences existed get theirs when the store connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub created_at: bson::DateTime,
    /// The sender's idempotency key; absent when the send carried none (a unique partial
    /// index covers only the documents that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// A direct message's positions in the sender's and the receiver's streams (a group
    /// entry has none). Every direct message stored by `append` has both; documents written
    /// before streams existed get them when the store connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_position: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_position: Option<i64>,
    /// The id of the message of the same conversation this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The seq of the message's last change; missing (as on every document stored before
    /// changes existed) while it never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// When it was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<bson::DateTime>,
    /// When and by whom it was deleted (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<bson::DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<String>,
    /// Its reactions in the order its state lists them (see `changes`); none on a deleted
    /// message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionDoc>,
}

/// One user's reaction with one emoji, an element of a message's `reactions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReactionDoc {
    /// The fully-qualified emoji.
    pub emoji: String,
    pub user_id: String,
    pub at: bson::DateTime,
}

impl MessageDoc {
    /// `message` as stored at `seq` of its conversation (`message.conversation_id`), with its
    /// positions in both streams when it is a direct message, and the id of the message it
    /// answers. Stored as sent: a new entry has no changes.
    pub fn stored(message: &Message, seq: Seq, positions: Option<(i64, i64)>) -> Result<Self, RepoError> {
        let system =
            message.system.as_ref().map(bson::to_document).transpose().map_err(|e| {
                RepoError::Unexpected(anyhow::Error::new(e).context("encoding a system entry"))
            })?;
        Ok(Self {
            id: message.id.as_str().to_owned(),
            conversation_id: message.conversation_id.as_str().to_owned(),
            sender_id: message.sender_id.as_str().to_owned(),
            receiver_id: message.receiver_id.as_ref().map(|id| id.as_str().to_owned()),
            message: message.body.as_str().to_owned(),
            system,
            seq: Some(seq_to_i64(seq)),
            created_at: to_bson(message.created_at),
            client_message_id: message.client_id.as_ref().map(|id| id.as_str().to_owned()),
            sender_position: positions.map(|(sender, _)| sender),
            receiver_position: positions.map(|(_, receiver)| receiver),
            reply_to: message.reply_to.as_ref().map(|quote| quote.message_id.as_str().to_owned()),
            version: None,
            edited_at: None,
            deleted_at: None,
            deleted_by: None,
            reactions: Vec::new(),
        })
    }

    /// The stored entry, as it stands now, with `quote`: what its reply shows of the
    /// message it answers (`None` when it answers none, or the original is gone).
    pub fn record(self, quote: Option<QuoteRecord>) -> Result<MessageRecord, RepoError> {
        let system = self
            .system
            .map(bson::from_document::<SystemEvent>)
            .transpose()
            .map_err(|e| RepoError::corrupt("system entry", e))?;
        let seq = self.seq.ok_or_else(|| RepoError::corrupt("sequence number", "missing"))?;
        let changed = match self.version {
            Some(version) if MessageRecord::is_changed(version, seq) => Some(ChangedRecord {
                version,
                edited_at: self.edited_at.map(from_bson).transpose()?,
                deleted: match (self.deleted_at, self.deleted_by) {
                    (Some(at), Some(by)) => Some((from_bson(at)?, by)),
                    (None, _) => None,
                    (Some(_), None) => return Err(RepoError::corrupt("deletion", "without its deleter")),
                },
                reactions: self.reactions.into_iter().map(|r| (r.emoji, r.user_id)).collect(),
            }),
            _ => None,
        };
        Ok(MessageRecord {
            reply_to: quote,
            changed,
            id: self.id,
            conversation_id: self.conversation_id,
            sender_id: self.sender_id,
            receiver_id: self.receiver_id,
            body: self.message,
            system: system.as_ref().map(system_json),
            seq,
            created_at: from_bson(self.created_at)?,
            client_id: self.client_message_id,
        })
    }
}

/// A change entry of a conversation: an edit, a deletion, a reaction added or taken back, at
/// the conversation's seq it took. `_id` is `<conversationId>:<seq>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChangeDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub message_id: String,
    /// The changed message's own seq: of a deletion, what the unread count of a member
    /// who had not read up to it leaves out.
    pub message_seq: i64,
    pub actor_id: String,
    /// [`ChangeKind::as_str`](domain::ChangeKind::as_str).
    pub kind: String,
    /// Of a reaction change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    pub created_at: bson::DateTime,
}

impl ChangeDoc {
    /// The `_id` of the change entry at `seq` of `conversation`.
    pub fn id_of(conversation: &str, seq: i64) -> String {
        format!("{conversation}:{seq}")
    }

    /// `change` as stored, changing the message at `message_seq`.
    pub fn new(change: &MessageChange, message_seq: i64) -> Self {
        let conversation = change.conversation_id.as_str();
        let seq = seq_to_i64(change.seq);
        Self {
            id: Self::id_of(conversation, seq),
            conversation_id: conversation.to_owned(),
            seq,
            message_id: change.message_id.as_str().to_owned(),
            message_seq,
            actor_id: change.actor.as_str().to_owned(),
            kind: change.kind.as_str().to_owned(),
            emoji: change.kind.emoji().map(|emoji| emoji.as_str().to_owned()),
            created_at: to_bson(change.at),
        }
    }

    /// The stored change entry with `message`, the message it changed as read with it.
    pub fn record(self, message: MessageRecord) -> Result<ChangeRecord, RepoError> {
        Ok(ChangeRecord {
            conversation_id: self.conversation_id,
            seq: self.seq,
            message_id: self.message_id,
            actor_id: self.actor_id,
            kind: self.kind,
            emoji: self.emoji,
            created_at: from_bson(self.created_at)?,
            message,
        })
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
