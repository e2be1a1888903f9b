//! The ports: what the use cases need from storage, crypto, time and delivery.
//!
//! Every port is object safe, `Send + Sync`, and held as `Arc<dyn Port>` by the services.

use async_trait::async_trait;
use domain::{
    Chat, Conversation, ConversationId, Cursor, Group, Member, Message, MessageChange, MessageId,
    ParticipantPair, Password, PasswordHash, Seq, SystemEvent, Timestamp, User, UserId, Username,
};

/// What a repository call can end in besides success.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A uniqueness rule was hit (a taken username, an existing id).
    #[error("the record conflicts with an existing one")]
    Conflict,
    /// The store could not be reached or did not answer in time; retrying later may work.
    #[error("storage is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else: a bug or corrupt data.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl RepoError {
    /// A stored value that does not parse back into the domain (`what` names it): corrupt
    /// data, never a client's fault.
    pub fn corrupt(what: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Unexpected(anyhow::anyhow!("stored {what} is invalid: {error}"))
    }
}

pub type RepoResult<T> = Result<T, RepoError>;

mod changes;
mod groups;
mod records;
#[cfg(any(test, feature = "mocks"))]
pub use changes::MockMessageChangeRepository;
pub use changes::{ChangeOutcome, ChangeRequest, MessageChangeRepository, StoredChange, StreamPosition};
#[cfg(any(test, feature = "mocks"))]
pub use groups::MockGroupRepository;
pub use groups::{Changed, GroupChange, GroupPosition, GroupRepository, GroupState, MembersPreview, Noticed};
pub use records::{
    stored_cursor, stored_seq, system_json, ChangeRecord, ChangedRecord, ConversationRecord, GroupRecord,
    MemberRecord, MessageRecord, NoticeRecord, QuoteRecord, UserRecord,
};

/// Which users a listing returns: everyone but `exclude`, ordered by lower-cased username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserQuery {
    pub exclude: UserId,
    /// Only users whose lower-cased username, or one of whose [`name_words`], starts with it.
    pub search: Option<SearchPrefix>,
    /// Only users whose lower-cased username sorts after this one.
    pub after_username: Option<String>,
    pub limit: u32,
}

/// A lower-cased search text, matched as a prefix: as the range `[from, to)` of the strings
/// that start with it (in code point order, which is byte order in UTF-8), so that a store
/// answers it with a range scan of an index instead of a scan of every user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPrefix {
    pub from: String,
    /// The least string above every string that starts with `from`; `None` when there is
    /// none (every character of `from` is the last code point).
    pub to: Option<String>,
}

impl SearchPrefix {
    /// The prefix `text`, lower-cased.
    pub fn new(text: &str) -> Self {
        let from = text.to_lowercase();
        // The successor of the prefix: its last character that can grow, grown by one.
        let mut to: Vec<char> = from.chars().collect();
        let to = loop {
            match to.pop() {
                None => break None,
                Some(last) => {
                    let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
                    if let Some(next) = next {
                        to.push(next);
                        break Some(to.into_iter().collect());
                    }
                }
            }
        };
        Self { from, to }
    }

    /// Whether `text` (lower-cased already) starts with the prefix.
    pub fn matches(&self, text: &str) -> bool {
        text.starts_with(&self.from)
    }
}

/// What of a full name a search matches the start of, lower-cased: the whole name and each
/// of its words (separated by spaces), each once. Stores index them (SQL: the
/// `user_name_words` table, MongoDB: the `nameWords` array), so that "dra" and "bobbie d"
/// both find "Bobbie Draper".
pub fn name_words(full_name: &str) -> Vec<String> {
    let lower = full_name.to_lowercase();
    let mut words = vec![lower.clone()];
    for word in lower.split(' ').filter(|w| !w.is_empty()) {
        if !words.iter().any(|w| w == word) {
            words.push(word.to_owned());
        }
    }
    words
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Stores a new user. Returns `Conflict` if the username is taken, compared
    /// case-insensitively (also when two inserts race), or if the id exists.
    async fn insert(&self, user: &User) -> RepoResult<()>;

    async fn find_by_id(&self, id: &UserId) -> RepoResult<Option<User>>;

    /// The users among `ids` that exist, each once, in no particular order; ids that name
    /// no user are left out. One round trip for the whole list (up to a group's largest
    /// size), so that checking a thousand ids costs one query, not a thousand.
    async fn find_many(&self, ids: &[UserId]) -> RepoResult<Vec<User>>;

    /// Looks a user up by username, case-insensitively.
    async fn find_by_username(&self, username: &Username) -> RepoResult<Option<User>>;

    /// One page of users, see [`UserQuery`].
    async fn list(&self, query: &UserQuery) -> RepoResult<Vec<User>>;
}

/// A conversation with its most recent entry and the reader's membership (role and read
/// position), for the conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSummary {
    pub conversation: Chat,
    /// The last message or system entry, as it stands now (a tombstone once deleted).
    pub last_message: Option<Message>,
    pub me: Member,
    /// Messages and system entries after my read position that are not deleted: changes
    /// (edits, deletions, reactions) count for nothing, and deleting an unread message takes
    /// it off (docs/MESSAGE_CHANGES.md §2). My own sends move my read position past them.
    pub unread: u64,
}

impl ConversationSummary {
    pub fn unread(&self) -> u64 {
        self.unread
    }
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ConversationRepository: Send + Sync {
    /// Returns the pair's conversation, storing `candidate` first if the pair has none.
    /// Exactly one conversation per pair ever exists, also when both users race to create it:
    /// the loser gets the winner's conversation back.
    async fn find_or_insert(&self, candidate: &Conversation) -> RepoResult<Conversation>;

    async fn find_by_participants(&self, pair: &ParticipantPair) -> RepoResult<Option<Conversation>>;

    /// The conversation (of either kind) with this id.
    async fn find(&self, id: &ConversationId) -> RepoResult<Option<Chat>>;

    /// `user`'s membership of the conversation (of either kind): `None` if not a member.
    async fn member(&self, conversation: &ConversationId, user: &UserId) -> RepoResult<Option<Member>>;

    /// The pair's conversation with its newest `limit` messages with an id below `before`
    /// (all when `None`), oldest first; `None` while the pair has no conversation. The
    /// conversation and its messages are read together (one query where the store can),
    /// since a history page is the hottest read of all.
    async fn page(
        &self,
        pair: &ParticipantPair,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Option<ConversationPage>>;

    /// Up to `limit` of the conversations (of both kinds) the user is a member of, with
    /// their last entry and the user's membership, in [`ConversationKey`] order (most
    /// recently updated first), after `after` (from the first when `None`).
    async fn page_for_user(
        &self,
        user: &UserId,
        after: Option<ConversationKey>,
        limit: u32,
    ) -> RepoResult<Vec<ConversationSummary>>;

    /// All of the user's conversations, in [`ConversationKey`] order, read page by page.
    async fn list_for_user(&self, user: &UserId) -> RepoResult<Vec<ConversationSummary>> {
        const PAGE: u32 = 500;
        let mut all: Vec<ConversationSummary> = Vec::new();
        loop {
            let after = all.last().map(ConversationSummary::key);
            let page = self.page_for_user(user, after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }
}

/// Where a conversation stands in its participants' lists, which are ordered by this key,
/// descending: the last update first; of two updated in the same instant, the one with the
/// later last message (a conversation without messages after those with); then the greater
/// id. A key never decreases (`updated_at` and the last message only move forward), which
/// is what makes paging by key safe while messages arrive: see `ConversationSummary::key`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConversationKey {
    pub updated_at: Timestamp,
    /// `None` for a conversation without messages: it sorts below every message id.
    pub last_message: Option<MessageId>,
    pub id: ConversationId,
}

impl ConversationSummary {
    /// The conversation's position in the list: a page after it holds only conversations
    /// with a smaller key.
    pub fn key(&self) -> ConversationKey {
        ConversationKey {
            updated_at: self.conversation.updated_at(),
            last_message: self.last_message.as_ref().map(|m| m.id.clone()),
            id: self.conversation.id().clone(),
        }
    }
}

/// A conversation with one page of its messages, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationPage {
    pub conversation: Conversation,
    pub messages: Vec<Message>,
}

/// A stored message with its positions in both participants' streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub message: Message,
    pub sender_cursor: Cursor,
    pub receiver_cursor: Cursor,
}

impl StoredMessage {
    /// The message's position in `user`'s stream, if `user` is one of its participants.
    pub fn cursor_for(&self, user: &UserId) -> Option<Cursor> {
        if user == &self.message.sender_id {
            Some(self.sender_cursor)
        } else if self.message.receiver_id.as_ref() == Some(user) {
            Some(self.receiver_cursor)
        } else {
            None
        }
    }
}

/// What [`MessageRepository::append`] ended in.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// The message is stored now.
    Created(StoredMessage),
    /// The sender had already stored a message with the same client id: nothing was stored,
    /// this is the earlier message, unchanged.
    Existing(StoredMessage),
}

/// What [`MessageRepository::append_to_group`] ended in.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupAppended {
    /// Stored at the group's next seq (in `message.seq`); `version` is the group's
    /// membership version it was stored under: its members then are the ones who get it.
    Created { message: Message, version: u64 },
    /// The sender had already stored a message with the same client id: this one.
    Existing(Message),
    /// The sender is not a member of the group (any more): nothing was stored.
    NotMember,
}

/// What [`MessageRepository::mark_read`] ended in.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadMoved {
    /// The read position moved forward to `seq`; a [`Notice::Read`] took `cursor` in the
    /// reader's stream.
    Moved { seq: Seq, cursor: Cursor },
    /// The read position was already at or past the message: nothing changed.
    NotAhead { seq: Seq },
    /// No such message in the conversation (or not one the reader can see).
    UnknownMessage,
    /// The user is not a member of the conversation.
    NotMember,
}

/// A user's stream also records what changed about their groups and their reads, so that a
/// device that resumes from a cursor learns those changes in order too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The user became a member of `group` with the entry at `seq` (their first visible one).
    Joined { group: ConversationId, seq: Seq },
    /// The user stopped being a member of `group` with the entry at `seq` (their last visible
    /// one).
    Left { group: ConversationId, seq: Seq },
    /// The user read `conversation` up to the entry `message_id` at `seq`.
    Read { conversation: ConversationId, seq: Seq, message_id: MessageId },
}

/// A change entry of a conversation (an edit, a deletion, a reaction added or taken back) with
/// the message it changed, as it stands when read: at least as new as the change (see
/// docs/MESSAGE_CHANGES.md §1).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub change: MessageChange,
    pub message: Message,
}

/// What one seq of a group holds: an entry appended to it (a message or a system entry), or a
/// change of one of them.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupEntry {
    Message(Message),
    Update(Update),
}

impl GroupEntry {
    pub fn seq(&self) -> Seq {
        match self {
            GroupEntry::Message(message) => message.seq,
            GroupEntry::Update(update) => update.change.seq,
        }
    }

    pub fn conversation_id(&self) -> &ConversationId {
        match self {
            GroupEntry::Message(message) => &message.conversation_id,
            GroupEntry::Update(update) => &update.change.conversation_id,
        }
    }

    /// The message appended at this seq, if it holds one (not a change).
    pub fn message(&self) -> Option<&Message> {
        match self {
            GroupEntry::Message(message) => Some(message),
            GroupEntry::Update(_) => None,
        }
    }
}

/// What one position of a user's stream holds.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEntry {
    /// A direct message the user sent or received.
    Message(Message),
    /// A change of a direct message the user sent or received.
    Update(Update),
    Notice(Notice),
}

/// One entry of a user's stream, at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamItem {
    pub cursor: Cursor,
    pub entry: StreamEntry,
}

impl StreamItem {
    /// The direct message at this position, if it holds one.
    pub fn message(&self) -> Option<&Message> {
        match &self.entry {
            StreamEntry::Message(message) => Some(message),
            StreamEntry::Update(_) | StreamEntry::Notice(_) => None,
        }
    }
}

/// The leading run of `items` (sorted by cursor) at consecutive positions right after
/// `after`: what a [`MessageRepository::stream`] may return. Streams have no holes, so on a
/// store that reads a stream in one snapshot this cuts nothing; it keeps a broken store from
/// making a client skip a message.
pub fn consecutive_after(after: Cursor, mut items: Vec<StreamItem>) -> Vec<StreamItem> {
    let mut expected = after.next();
    let run = items
        .iter()
        .take_while(|item| {
            let next = item.cursor == expected;
            expected = expected.next();
            next
        })
        .count();
    items.truncate(run);
    items
}

/// The leading run of `entries` (sorted by seq) at consecutive seqs right after `after`: what
/// a [`MessageRepository::entries`] may return (as [`consecutive_after`] for streams).
pub fn consecutive_entries(after: Seq, mut entries: Vec<GroupEntry>) -> Vec<GroupEntry> {
    let run = entries.iter().zip(after + 1..).take_while(|(entry, seq)| entry.seq() == *seq).count();
    entries.truncate(run);
    entries
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait MessageRepository: Send + Sync {
    /// Stores the direct `message` durably (when this returns `Ok`, it survives a crash), in
    /// one atomic step with:
    /// - its conversation: if the pair has none, `conversation` is stored with both users as
    ///   members (role `member`, joined at seq 1, nothing read) and the message joins it;
    ///   otherwise the message joins the pair's conversation (its `conversation_id` is
    ///   replaced) and the conversation's `updated_at` moves forward to the message's
    ///   `created_at`;
    /// - the conversation's next seq (in the returned message's `seq`, and the
    ///   conversation's `last_seq`), and the sender's read position moved to it;
    /// - the next position in the sender's stream and in the receiver's stream. A position
    ///   becomes readable only after every earlier position of the same stream is readable
    ///   (a transaction that commits later never holds an earlier position), so streams
    ///   have no holes, ever, for any reader.
    ///
    /// If the message has a client id and its sender already stored a message with the same
    /// one, nothing is stored and that message is returned as [`Appended::Existing`] (also
    /// when both appends race). Returns `Conflict` if the message id exists.
    async fn append(&self, conversation: &Conversation, message: &Message) -> RepoResult<Appended>;

    /// Stores the group message `message` (its `conversation_id` names the group) at the
    /// group's next seq, in one atomic step with: the group's `last_seq`, `updated_at` and
    /// last message, and the sender's read position moved to it — if the sender is a member
    /// at that moment ([`GroupAppended::NotMember`] otherwise). A position becomes readable
    /// only after every earlier seq of the group is (as for streams). Client ids behave as
    /// in [`append`](Self::append), across all conversations of the sender.
    async fn append_to_group(&self, message: &Message) -> RepoResult<GroupAppended>;

    /// The newest `limit` entries of the conversation with an id below `before` (all when
    /// `None`) and a seq at or above `from_seq`, returned oldest first.
    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        from_seq: Seq,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Vec<Message>>;

    /// Up to `limit` entries of the conversation with a seq after `after` and at most
    /// `until` (no bound when `None`), in seq order: consecutive seqs from `after + 1` on
    /// (a store stops before a hole rather than skip it). Messages and change entries alike;
    /// every message as it stands now.
    async fn entries(
        &self,
        conversation: &ConversationId,
        after: Seq,
        until: Option<Seq>,
        limit: u32,
    ) -> RepoResult<Vec<GroupEntry>>;

    /// Moves `user`'s read position in the conversation forward to the entry `up_to`, never
    /// back (of two racing moves the higher one stays), and when it moved appends a
    /// [`Notice::Read`] to the user's stream, in one atomic step.
    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        up_to: &MessageId,
    ) -> RepoResult<ReadMoved>;

    /// Up to `limit` entries of `user`'s stream (direct messages and notices) after
    /// position `after`, in stream order: consecutive positions starting right after
    /// `after`.
    async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>>;

    /// The last position of `user`'s stream (`Cursor::START` while it is empty).
    async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor>;

    /// The last positions of the streams of `users` that are not empty, in no particular
    /// order, read at once (one query for the whole list): a user left out has
    /// `Cursor::START`. A user asked twice is answered at most once.
    ///
    /// The default asks [`MessageRepository::stream_head`] user by user; a store overrides it.
    async fn stream_heads(&self, users: &[UserId]) -> RepoResult<Vec<(UserId, Cursor)>> {
        let mut heads = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for user in users {
            if !seen.insert(user) {
                continue;
            }
            let head = self.stream_head(user).await?;
            if head != Cursor::START {
                heads.push((user.clone(), head));
            }
        }
        Ok(heads)
    }
}

/// A revoked token: its unique id (`jti`) and when it would have expired anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub token_id: String,
    pub expires_at: Timestamp,
}

/// Revoked tokens, by their unique id (`jti`), kept until the token would have expired anyway.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait RevokedTokenRepository: Send + Sync {
    /// Records the revocation; revoking twice is not an error.
    async fn revoke(&self, token_id: &str, expires_at: Timestamp) -> RepoResult<()>;

    async fn is_revoked(&self, token_id: &str) -> RepoResult<bool>;

    /// Every revocation of a token that has not expired at `now`.
    async fn active(&self, now: Timestamp) -> RepoResult<Vec<Revocation>>;

    /// Forgets revocations of tokens that expired before `now`; returns how many.
    async fn purge_expired(&self, now: Timestamp) -> RepoResult<u64>;
}

/// Whether the store answers, for readiness probes.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// `Ok` when a round trip to the dependency succeeded.
    async fn ping(&self) -> RepoResult<()>;
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed")]
pub struct HashError(#[source] pub anyhow::Error);

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    /// Hashes without blocking the caller's async worker.
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError>;

    /// `Ok(false)` for a wrong password; `Err` only when the hash itself is unusable.
    async fn verify(&self, password: &Password, hash: &PasswordHash) -> Result<bool, HashError>;
}

/// A signed token as handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub claims: TokenClaims,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub user_id: UserId,
    /// Unique per token, the handle for revocation.
    pub token_id: String,
    pub expires_at: Timestamp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, badly signed, of another algorithm, or expired.
    #[error("the token is invalid or expired")]
    Invalid,
    #[error("the token could not be issued")]
    Issue,
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait TokenService: Send + Sync {
    fn issue(&self, user: &UserId, now: Timestamp) -> Result<IssuedToken, TokenError>;

    /// Checks signature, algorithm and expiry; revocation is the caller's business.
    fn verify(&self, token: &str, now: Timestamp) -> Result<TokenClaims, TokenError>;
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock, to the millisecond: the precision every store keeps and the API shows,
/// so a value read back equals the value written, on any backend.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        use chrono::SubsecRound as _;
        chrono::Utc::now().trunc_subsecs(3)
    }
}

/// What a client is told about presence once more users are online than the full list is
/// sent for (see `RealtimeService`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceUpdate {
    /// The current state of some users: `true` online.
    Changes(Vec<(UserId, bool)>),
    /// Which presence mode applies from now on.
    Mode(PresenceMode),
}

/// How clients learn about presence: the whole online list on every change, or the changes of
/// their conversation partners only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceMode {
    FullList,
    Scoped,
}

/// Where a `typing` event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypingTarget {
    User(UserId),
    Group(ConversationId),
}

/// A real-time event for users' open connections.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new direct message, for one of its participants: `cursor` is its position in that
    /// participant's stream.
    NewMessage {
        message: Message,
        cursor: Cursor,
    },
    /// A new entry of a group (a message or a system entry), for the members at membership
    /// `version` (see [`Notifier::notify_group`]).
    GroupMessage {
        message: Message,
        version: u64,
    },
    /// A change of a direct message, for one of its participants: `cursor` is the change's
    /// position in that participant's stream.
    MessageUpdated {
        update: Update,
        cursor: Cursor,
    },
    /// A change of a group's message: the group's entry at `update.change.seq`, for the
    /// members at membership `version`.
    GroupUpdated {
        update: Update,
        version: u64,
    },
    /// A notice appended to one user's stream at `cursor`.
    Notice {
        notice: Notice,
        cursor: Cursor,
    },
    /// A group's name, members or roles changed (`change` says how); `version` is its new
    /// membership version. Informational: the change is also an entry of the group.
    ConversationUpdated {
        group: Group,
        version: u64,
        member_count: u64,
        change: SystemEvent,
    },
    /// `user` read `conversation` up to `up_to` (at `seq`): a read receipt for the other
    /// members.
    MessagesRead {
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
        up_to: MessageId,
    },
    OnlineUsers(Vec<UserId>),
    /// Presence in the scoped mode: see [`PresenceUpdate`].
    Presence(PresenceUpdate),
    Typing {
        from: UserId,
        to: TypingTarget,
        is_typing: bool,
    },
}

impl Event {
    /// Where an event of a user's stream sits in it.
    pub fn stream_position(&self) -> Option<Cursor> {
        match self {
            Event::NewMessage { cursor, .. }
            | Event::MessageUpdated { cursor, .. }
            | Event::Notice { cursor, .. } => Some(*cursor),
            _ => None,
        }
    }

    /// The group and seq of an event that is an entry of a group (a new entry or a change).
    pub fn group_entry(&self) -> Option<(&ConversationId, Seq)> {
        match self {
            Event::GroupMessage { message, .. } => Some((&message.conversation_id, message.seq)),
            Event::GroupUpdated { update, .. } => Some((&update.change.conversation_id, update.change.seq)),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the event could not be published")]
pub struct NotifyError(#[source] pub anyhow::Error);

/// Delivers events to users' connections, wherever they are (this instance or another one).
/// Delivery is best effort: a stored message is never un-stored because delivery failed,
/// and clients catch up through the history.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync {
    /// To every connection of each of `users`.
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError>;

    /// To every connection of the group's members — published once, whatever the group's
    /// size: each instance delivers to its own connections of the members. For an event
    /// that names a membership version ([`Event::GroupMessage`],
    /// [`Event::ConversationUpdated`]) the members at that version or later; otherwise the
    /// current ones.
    async fn notify_group(&self, group: &ConversationId, event: &Event) -> Result<(), NotifyError>;

    /// To every connection of every user.
    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError>;
}

/// Carries revocations between the instances of a cluster, so that each can answer "is
/// this token revoked?" from memory.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait RevocationFeed: Send + Sync {
    /// Tells the other instances about a revocation made here (already stored). When the
    /// feed cannot pass it on now, it keeps trying in the background and says so.
    async fn announce(&self, revocation: &Revocation) -> Result<(), NotifyError>;

    /// From now on, reports to `listener` the revocations made on other instances and
    /// whether the feed is live (at once, if it is live already).
    fn listen(&self, listener: std::sync::Arc<dyn RevocationListener>);
}

/// What a [`RevocationFeed`] reports to.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait RevocationListener: Send + Sync {
    /// Another instance revoked a token.
    fn revoked_elsewhere(&self, revocation: Revocation);

    /// The feed is live: every revocation made elsewhere from now on will be reported.
    fn feed_live(&self);

    /// The feed was cut: revocations made elsewhere may go unreported until it is live
    /// again.
    fn feed_lost(&self);
}

/// The live connections (sockets) of this instance, by the token each was opened with: a
/// socket authenticates once, at its handshake, so a revocation must reach it this way.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait TokenConnections: Send + Sync {
    /// Ends every connection of this instance opened with one of `token_ids`, now revoked,
    /// telling its client why, and refuses them to connections still being opened. Never
    /// waits: the connections close on their own tasks.
    fn end_revoked(&self, token_ids: &[String]);
}

/// Who is online: a user is online while at least one of their connections is open.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Presence: Send + Sync {
    /// Counts a new connection; returns `true` if the user just came online.
    async fn connected(&self, user: &UserId) -> RepoResult<bool>;

    /// Counts a closed connection; returns `true` if the user just went offline.
    async fn disconnected(&self, user: &UserId) -> RepoResult<bool>;

    /// Every online user, in no particular order.
    async fn online(&self) -> RepoResult<Vec<UserId>>;

    /// Those of `users` who are online, in no particular order.
    async fn online_among(&self, users: &[UserId]) -> RepoResult<Vec<UserId>> {
        let online: std::collections::HashSet<UserId> = self.online().await?.into_iter().collect();
        Ok(users.iter().filter(|user| online.contains(*user)).cloned().collect())
    }

    /// Takes the users who went offline without a connection closing here since the last
    /// call: those of another instance that stopped (crashed), each reported by one instance
    /// of the cluster only. None on a single instance. Asked in the scoped presence mode
    /// only; an adapter may keep none while its connections are shown the full list.
    async fn take_departed(&self) -> RepoResult<Vec<UserId>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use domain::{MessageBody, MessageId};

    fn item(position: u64) -> StreamItem {
        StreamItem {
            cursor: Cursor::new(position).unwrap(),
            entry: StreamEntry::Message(Message {
                reply_to: None,
                changed: None,
                id: MessageId::generate(),
                conversation_id: ConversationId::generate(),
                sender_id: UserId::generate(),
                receiver_id: Some(UserId::generate()),
                body: MessageBody::parse("hi").unwrap(),
                system: None,
                seq: 1,
                created_at: Utc::now(),
                client_id: None,
            }),
        }
    }

    fn positions(items: &[StreamItem]) -> Vec<u64> {
        items.iter().map(|i| i.cursor.position()).collect()
    }

    #[test]
    fn a_consecutive_run_is_kept_whole() {
        let kept = consecutive_after(Cursor::new(4).unwrap(), vec![item(5), item(6), item(7)]);
        assert_eq!(positions(&kept), [5, 6, 7]);
    }

    #[test]
    fn a_search_prefix_is_lower_cased_and_bounded_by_its_successor() {
        assert_eq!(SearchPrefix::new("Bob"), SearchPrefix { from: "bob".into(), to: Some("boc".into()) });
        // The successor skips what is no character (the surrogates) and carries past the last one.
        assert_eq!(SearchPrefix::new("a\u{d7ff}").to.as_deref(), Some("a\u{e000}"));
        assert_eq!(SearchPrefix::new("a\u{10ffff}").to.as_deref(), Some("b"));
        assert_eq!(SearchPrefix::new("\u{10ffff}").to, None);
    }

    #[test]
    fn name_words_are_the_whole_name_and_each_word_once() {
        assert_eq!(name_words("Bobbie  Draper bobbie"), ["bobbie  draper bobbie", "bobbie", "draper"]);
        assert_eq!(name_words("Zoë"), ["zoë"]);
    }

    proptest::proptest! {
        #[test]
        fn the_prefix_range_holds_exactly_the_texts_that_start_with_it(
            prefix in "(.|\u{10ffff}){0,3}",
            rest in "(.|\u{10ffff}){0,3}",
            other in ".{0,6}",
        ) {
            let search = SearchPrefix::new(&prefix);
            for text in [format!("{}{rest}", prefix.to_lowercase()), other.to_lowercase()] {
                let in_range = text >= search.from && search.to.as_ref().is_none_or(|to| &text < to);
                proptest::prop_assert_eq!(in_range, search.matches(&text), "{:?} in {:?}", text, search);
            }
        }
    }

    #[test]
    fn reading_stops_before_a_hole() {
        let kept = consecutive_after(Cursor::new(4).unwrap(), vec![item(5), item(7), item(8)]);
        assert_eq!(positions(&kept), [5]);
        assert!(consecutive_after(Cursor::START, vec![item(2)]).is_empty());
        assert!(consecutive_after(Cursor::START, Vec::new()).is_empty());
        let repeated = consecutive_after(Cursor::new(4).unwrap(), vec![item(5), item(5)]);
        assert_eq!(positions(&repeated), [5]);
    }
}
