//! Rows as the two engines return them, and their conversion into domain values.

use application::ports::{
    stored_cursor, ChangeRecord, ChangedRecord, ConversationPage, ConversationRecord, ConversationSummary,
    GroupEntry, GroupRecord, MemberRecord, MessageRecord, NoticeRecord, QuoteRecord, RepoError,
    StoredMessage, StreamEntry, StreamItem, Update, UserRecord,
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

/// An entry of a conversation as it stands now (`message_columns!`): its columns, the
/// message it answers (`reply_*`, null when none) and what became of it (null while it never
/// changed).
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
    #[sqlx(flatten)]
    pub now: CurrentColumns,
}

/// What a read of a message adds to its columns as sent: the message it answers, as it stands
/// now, and its own changed state. Prefixed `m_` where a message is joined to other rows.
#[derive(sqlx::FromRow)]
pub(crate) struct CurrentColumns {
    pub reply_to: Option<String>,
    pub reply_sender_id: Option<String>,
    pub reply_body: Option<String>,
    pub reply_deleted_at: Option<DateTime<Utc>>,
    pub version: Option<i64>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub deleted_by: Option<String>,
    pub reactions: Option<String>,
}

impl CurrentColumns {
    /// The quote of the message answered. A reply whose original is missing (never the case
    /// for messages stored by this crate: messages are never removed) reads without its quote.
    fn quote(&self) -> Option<QuoteRecord> {
        match (&self.reply_to, &self.reply_sender_id, &self.reply_body) {
            (Some(id), Some(sender), Some(body)) => Some(QuoteRecord {
                message_id: id.clone(),
                sender_id: sender.clone(),
                body: body.clone(),
                deleted: self.reply_deleted_at.is_some(),
            }),
            _ => None,
        }
    }

    /// The message's changed state, `None` while it never changed.
    fn changed(self) -> Result<Option<ChangedRecord>, RepoError> {
        let Some(version) = self.version else { return Ok(None) };
        let deleted = match (self.deleted_at, self.deleted_by) {
            (Some(at), Some(by)) => Some((at, by)),
            (None, None) => None,
            _ => return Err(RepoError::corrupt("tombstone", "a deletion without its time or author")),
        };
        let reactions = match self.reactions.as_deref() {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| RepoError::corrupt("reactions", e))?,
        };
        Ok(Some(ChangedRecord { version, edited_at: self.edited_at, deleted, reactions }))
    }

    /// The record of the message with these columns.
    #[allow(clippy::too_many_arguments)]
    fn record(
        self,
        id: String,
        conversation_id: String,
        seq: i64,
        sender_id: String,
        receiver_id: Option<String>,
        body: String,
        system: Option<String>,
        created_at: DateTime<Utc>,
        client_id: Option<String>,
    ) -> Result<MessageRecord, RepoError> {
        Ok(MessageRecord {
            reply_to: self.quote(),
            changed: self.changed()?,
            id,
            conversation_id,
            sender_id,
            receiver_id,
            body,
            system,
            seq,
            created_at,
            client_id,
        })
    }
}

/// [`CurrentColumns`] of a joined message (`m_`-prefixed, all null when there is none).
#[derive(sqlx::FromRow)]
pub(crate) struct JoinedCurrentColumns {
    pub m_reply_to: Option<String>,
    pub m_reply_sender_id: Option<String>,
    pub m_reply_body: Option<String>,
    pub m_reply_deleted_at: Option<DateTime<Utc>>,
    pub m_version: Option<i64>,
    pub m_edited_at: Option<DateTime<Utc>>,
    pub m_deleted_at: Option<DateTime<Utc>>,
    pub m_deleted_by: Option<String>,
    pub m_reactions: Option<String>,
}

impl From<JoinedCurrentColumns> for CurrentColumns {
    fn from(c: JoinedCurrentColumns) -> Self {
        Self {
            reply_to: c.m_reply_to,
            reply_sender_id: c.m_reply_sender_id,
            reply_body: c.m_reply_body,
            reply_deleted_at: c.m_reply_deleted_at,
            version: c.m_version,
            edited_at: c.m_edited_at,
            deleted_at: c.m_deleted_at,
            deleted_by: c.m_deleted_by,
            reactions: c.m_reactions,
        }
    }
}

impl TryFrom<MessageRow> for Message {
    type Error = RepoError;
    fn try_from(row: MessageRow) -> Result<Self, RepoError> {
        row.now
            .record(
                row.id,
                row.conversation_id,
                row.seq,
                row.sender_id,
                row.receiver_id,
                row.body,
                row.system,
                row.created_at,
                row.client_message_id,
            )?
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
/// otherwise a notice of that kind (`message_id` is then the message read up to, of a `read`
/// one, or the changed message, of an `updated` one, which comes with its change entry's
/// columns). The message, of a message or an `updated` notice, in the `m_` columns.
#[derive(sqlx::FromRow)]
pub(crate) struct StreamRow {
    pub position: i64,
    pub notice: Option<String>,
    pub conversation_id: String,
    pub seq: i64,
    pub message_id: Option<String>,
    #[sqlx(flatten)]
    pub change: ChangeColumns,
    #[sqlx(flatten)]
    pub message: JoinedMessageRow,
}

/// The columns of a change entry joined to a row (`x_`-prefixed, all null when there is none).
#[derive(sqlx::FromRow)]
pub(crate) struct ChangeColumns {
    pub x_actor_id: Option<String>,
    pub x_kind: Option<String>,
    pub x_emoji: Option<String>,
    pub x_created_at: Option<DateTime<Utc>>,
}

impl ChangeColumns {
    /// The update at `seq` of `conversation_id`, if the row has a change entry.
    fn update(
        self,
        conversation_id: &str,
        seq: i64,
        message: JoinedMessageRow,
    ) -> Result<Option<Update>, RepoError> {
        let (Some(actor_id), Some(kind), Some(created_at)) =
            (self.x_actor_id, self.x_kind, self.x_created_at)
        else {
            return Ok(None);
        };
        let Some(message) = message.record(conversation_id)? else {
            return Err(RepoError::corrupt("change entry", "a change without its message"));
        };
        let record = ChangeRecord {
            conversation_id: conversation_id.to_owned(),
            seq,
            message_id: message.id.clone(),
            actor_id,
            kind,
            emoji: self.x_emoji,
            created_at,
            message,
        };
        Update::try_from(record).map(Some)
    }
}

impl TryFrom<StreamRow> for StreamItem {
    type Error = RepoError;
    fn try_from(row: StreamRow) -> Result<Self, RepoError> {
        match row.notice.as_deref() {
            Some(NoticeRecord::UPDATED) => {
                let Some(update) = row.change.update(&row.conversation_id, row.seq, row.message)? else {
                    return Err(RepoError::corrupt("stream entry", "an updated notice without its change"));
                };
                Ok(StreamItem { cursor: stored_cursor(row.position)?, entry: StreamEntry::Update(update) })
            }
            Some(_) => NoticeRecord {
                position: row.position,
                kind: row.notice.unwrap_or_default(),
                conversation_id: row.conversation_id,
                seq: row.seq,
                message_id: row.message_id,
            }
            .try_into(),
            None => {
                let Some(message) = row.message.message(&row.conversation_id)? else {
                    return Err(RepoError::corrupt("stream entry", "a message without its fields"));
                };
                StreamItem::at_position(row.position, message)
            }
        }
    }
}

/// One entry of a conversation (`ENTRIES`): a message, or a change entry (its `x_` columns)
/// with the message it changed; either way the message in the `m_` columns.
#[derive(sqlx::FromRow)]
pub(crate) struct EntryRow {
    pub entry_seq: i64,
    #[sqlx(flatten)]
    pub change: ChangeColumns,
    #[sqlx(flatten)]
    pub message: JoinedMessageRow,
}

impl EntryRow {
    /// The entry, of the conversation `conversation_id`.
    pub fn entry(self, conversation_id: &str) -> Result<GroupEntry, RepoError> {
        if self.change.x_kind.is_some() {
            return match self.change.update(conversation_id, self.entry_seq, self.message)? {
                Some(update) => Ok(GroupEntry::Update(update)),
                None => Err(RepoError::corrupt("change entry", "a change without its fields")),
            };
        }
        match self.message.message(conversation_id)? {
            Some(message) => Ok(GroupEntry::Message(message)),
            None => Err(RepoError::corrupt("conversation entry", "a message without its fields")),
        }
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
    #[sqlx(flatten)]
    pub now: JoinedCurrentColumns,
}

impl JoinedMessageRow {
    /// The entry's record, of the conversation `conversation_id`, if the row has one.
    fn record(self, conversation_id: &str) -> Result<Option<MessageRecord>, RepoError> {
        match (self.m_id, self.m_seq, self.m_sender_id, self.m_body, self.m_created_at) {
            (Some(id), Some(seq), Some(sender_id), Some(body), Some(created_at)) => {
                CurrentColumns::from(self.now)
                    .record(
                        id,
                        conversation_id.to_owned(),
                        seq,
                        sender_id,
                        self.m_receiver_id,
                        body,
                        self.m_system,
                        created_at,
                        self.m_client_message_id,
                    )
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The entry, of the conversation `conversation_id`, if the row has one.
    fn message(self, conversation_id: &str) -> Result<Option<Message>, RepoError> {
        self.record(conversation_id)?.map(Message::try_from).transpose()
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
    /// Entries after my read position that are neither change entries nor deleted messages.
    pub unread: i64,
}

impl TryFrom<SummaryRow> for ConversationSummary {
    type Error = RepoError;
    fn try_from(row: SummaryRow) -> Result<Self, RepoError> {
        let last_message = row.last.message(&row.conversation.id)?;
        let conversation: Chat = row.conversation.try_into()?;
        let me: Member = row.me.try_into()?;
        // Never below 0, whatever a racing change did between the counts (one snapshot:
        // none can).
        let unread = u64::try_from(row.unread).unwrap_or(0);
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
