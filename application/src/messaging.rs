//! Messaging: send a message (to a user, or to a conversation of either kind), read a
//! conversation's history, mark it read, list conversations, and catch up on everything one
//! follows.

use std::collections::HashMap;
use std::sync::Arc;

use domain::{
    check_reply_target, Chat, ClientMessageId, Conversation, ConversationId, Cursor, Member, Message,
    MessageBody, MessageId, ParticipantPair, ReplyError, ReplyQuote, Role, Seq, SyncCursor, UserId,
};

use crate::error::{embeds_application_error, ApplicationError};
use crate::known_users::KnownUsers;
use crate::paging;
use crate::ports::{
    Appended, Clock, ConversationKey, ConversationRepository, ConversationSummary, Event, GroupAppended,
    GroupRepository, MembersPreview, MessageChangeRepository, MessageRepository, Notice, Notifier, ReadMoved,
    RepoError, UserRepository,
};
use crate::stream::{FollowError, StreamReader, SyncItem};

/// What a caller of the messaging use cases can act on.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("user not found")]
    UserNotFound,
    #[error("you cannot send messages to yourself")]
    SelfConversation,
    /// A send reused a client message id of an earlier, different message.
    #[error("this client message id was already used for a different message")]
    ClientIdReused,
    /// A sync from a cursor the user's stream (or one of its groups) never reached: one from
    /// another database, which would hide every message up to it.
    #[error("the cursor is beyond the end of the message stream")]
    BeyondStream,
    /// A sync cursor whose groups are not the user's groups at its position: no cursor this
    /// user was handed.
    #[error("is not a valid cursor")]
    InvalidCursor,
    /// No such conversation, or one the user never was a member of (the same answer, so
    /// that conversations can't be probed).
    #[error("conversation not found")]
    ConversationNotFound,
    /// The user was a member of the group and is not any more.
    #[error("you are no longer a member of this conversation")]
    NoLongerMember,
    /// The message to mark read is not an entry of the conversation the user can see.
    #[error("message not found in this conversation")]
    MessageNotFound,
    /// The message a send replies to is not one of the conversation the sender can reply
    /// to. An id no message has is answered as [`ReplyError::OtherConversation`], so that
    /// ids of other conversations' messages can't be told from ids nobody has.
    #[error(transparent)]
    InvalidReply(#[from] ReplyError),
    #[error(transparent)]
    Failed(#[from] ApplicationError),
}

embeds_application_error!(MessagingError: RepoError);

/// A conversation page: `conversation` is `None` while the pair has exchanged nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationView {
    pub conversation: Option<Conversation>,
    pub messages: Vec<Message>,
}

/// The outcome of a send.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub message: Message,
    /// `false` when this was a retry of an earlier send with the same client message id:
    /// the earlier message is returned and nothing new was stored or announced.
    pub created: bool,
}

/// One page of everything a user follows (their stream and their groups).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPage {
    pub items: Vec<SyncItem>,
    /// Where the next page starts: the last item's cursor, or, when every stored item was
    /// read, the cursor past the notices that followed it (the requested one when nothing
    /// came).
    pub next: SyncCursor,
    /// Whether more was already stored after this page.
    pub has_more: bool,
}

/// Where a user's read position stands after [`MessagingService::mark_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedRead {
    /// Everything up to this seq is read.
    pub seq: Seq,
    /// The position of the read notice in the user's stream when the read position moved;
    /// `None` when it was already there or further.
    pub cursor: Option<Cursor>,
}

/// A direct conversation as its members see it: both members with their read positions,
/// in the pair's order.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectView {
    pub conversation: Conversation,
    pub members: [Member; 2],
}

/// One page of my conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
    /// The first [`MEMBERS_PREVIEW`] members and the member count of each group of the page.
    pub members: HashMap<ConversationId, MembersPreview>,
    /// Pass as `cursor` for the next page; `None` when no conversation follows.
    pub next_cursor: Option<String>,
}

/// How many members of each group the conversation list names.
pub const MEMBERS_PREVIEW: u32 = 100;

pub struct MessagingService {
    users: KnownUsers,
    conversations: Arc<dyn ConversationRepository>,
    messages: Arc<dyn MessageRepository>,
    /// Reads the message a reply answers.
    changes: Arc<dyn MessageChangeRepository>,
    groups: Arc<dyn GroupRepository>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
}

/// The ports [`MessagingService`] stores through.
pub struct MessagingStores {
    pub users: Arc<dyn UserRepository>,
    pub conversations: Arc<dyn ConversationRepository>,
    pub messages: Arc<dyn MessageRepository>,
    pub changes: Arc<dyn MessageChangeRepository>,
    pub groups: Arc<dyn GroupRepository>,
}

impl MessagingService {
    pub fn new(stores: MessagingStores, notifier: Arc<dyn Notifier>, clock: Arc<dyn Clock>) -> Self {
        let MessagingStores { users, conversations, messages, changes, groups } = stores;
        Self { users: KnownUsers::new(users), conversations, messages, changes, groups, notifier, clock }
    }

    /// Stores the message, then announces it to the receiver's and the sender's connections,
    /// each with the message's position in their own stream. The announcement never happens
    /// for a message that was not stored, and a failed announcement does not fail the send:
    /// the message is in the history and the streams either way.
    ///
    /// With a `client_id`, a retry of the same send (same sender, same id) returns the
    /// message stored first and announces nothing; reusing the id for a different receiver
    /// or text is refused.
    ///
    /// With `reply_to`, the message answers that earlier message of the pair's conversation
    /// (not deleted, not a system entry).
    pub async fn send(
        &self,
        sender: &UserId,
        receiver: &UserId,
        body: MessageBody,
        client_id: Option<ClientMessageId>,
        reply_to: Option<MessageId>,
    ) -> Result<Sent, MessagingError> {
        let pair = self.pair_with(sender, receiver)?;
        if !self.users.exists(receiver).await? {
            return Err(MessagingError::UserNotFound);
        }
        let reply_to = match reply_to {
            None => None,
            Some(target) => {
                // Only a conversation the pair has can hold the message answered.
                let conversation = self.conversations.find_by_participants(&pair).await?;
                let conversation = conversation.ok_or(ReplyError::OtherConversation)?;
                Some(self.quote(&conversation.id, 1, &target).await?)
            }
        };

        let now = self.clock.now();
        let conversation = Conversation::start(pair, now);
        let message = Message {
            reply_to,
            changed: None,
            id: MessageId::generate(),
            conversation_id: conversation.id.clone(),
            sender_id: sender.clone(),
            receiver_id: Some(receiver.clone()),
            body,
            system: None,
            seq: 0,
            created_at: now,
            client_id,
        };
        let mut stored = match self.messages.append(&conversation, &message).await? {
            Appended::Created(stored) => stored,
            Appended::Existing(earlier) => return retried(earlier.message, &message),
        };
        self.requote(&mut stored.message).await;

        for (user, cursor) in
            [(receiver.clone(), stored.receiver_cursor), (sender.clone(), stored.sender_cursor)]
        {
            let event = Event::NewMessage { message: stored.message.clone(), cursor };
            self.announce(&[user], &event).await;
        }
        Ok(Sent { message: stored.message, created: true })
    }

    /// Sends to a conversation of either kind: to the other user of a direct conversation
    /// (as [`send`](Self::send)), or to a group I am a member of, announced once to its
    /// members (mine included). Client ids behave as in `send`.
    pub async fn send_to_conversation(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        body: MessageBody,
        client_id: Option<ClientMessageId>,
        reply_to: Option<MessageId>,
    ) -> Result<Sent, MessagingError> {
        let group = match self.conversations.find(conversation).await? {
            None => return Err(MessagingError::ConversationNotFound),
            Some(Chat::Direct(direct)) => {
                let pair = &direct.participants;
                let other = match (pair.first(), pair.second()) {
                    (first, second) if first == me => second,
                    (first, second) if second == me => first,
                    _ => return Err(MessagingError::ConversationNotFound),
                };
                return self.send(me, &other.clone(), body, client_id, reply_to).await;
            }
            Some(Chat::Group(group)) => group,
        };
        let reply_to = match reply_to {
            None => None,
            Some(target) => {
                let member = self.conversations.member(conversation, me).await?;
                match member {
                    Some(member) => Some(self.quote(conversation, member.joined_seq, &target).await?),
                    None => return Err(self.outsider(me, conversation).await?),
                }
            }
        };
        let message = Message {
            reply_to,
            changed: None,
            id: MessageId::generate(),
            conversation_id: group.id,
            sender_id: me.clone(),
            receiver_id: None,
            body,
            system: None,
            seq: 0,
            created_at: self.clock.now(),
            client_id,
        };
        match self.messages.append_to_group(&message).await? {
            GroupAppended::Created { mut message, version } => {
                self.requote(&mut message).await;
                let event = Event::GroupMessage { message: message.clone(), version };
                if let Err(error) = self.notifier.notify_group(&message.conversation_id, &event).await {
                    tracing::warn!(error = %error, message_id = %message.id, "group message stored but not announced");
                }
                Ok(Sent { message, created: true })
            }
            GroupAppended::Existing(earlier) => retried(earlier, &message),
            GroupAppended::NotMember => Err(self.outsider(me, conversation).await?),
        }
    }

    /// The newest `limit` entries before `before` of a conversation I am a member of, oldest
    /// first: of a group, those from the entry that added me on.
    pub async fn conversation_history(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        before: Option<MessageId>,
        limit: Option<u32>,
    ) -> Result<Vec<Message>, MessagingError> {
        let Some(member) = self.conversations.member(conversation, me).await? else {
            return Err(self.outsider(me, conversation).await?);
        };
        let limit = paging::clamp(limit);
        Ok(self.messages.list_by_conversation(conversation, member.joined_seq, before, limit).await?)
    }

    /// Moves my read position in the conversation forward to the entry `up_to` (never back).
    /// When it moved, my other devices learn it through my stream, and the other members get
    /// a read receipt.
    pub async fn mark_read(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        up_to: &MessageId,
    ) -> Result<MarkedRead, MessagingError> {
        let (seq, cursor) = match self.messages.mark_read(conversation, me, up_to).await? {
            ReadMoved::Moved { seq, cursor } => (seq, cursor),
            ReadMoved::NotAhead { seq } => return Ok(MarkedRead { seq, cursor: None }),
            ReadMoved::UnknownMessage => return Err(MessagingError::MessageNotFound),
            ReadMoved::NotMember => return Err(self.outsider(me, conversation).await?),
        };
        let notice = Notice::Read { conversation: conversation.clone(), seq, message_id: up_to.clone() };
        self.announce(std::slice::from_ref(me), &Event::Notice { notice, cursor }).await;
        let receipt = Event::MessagesRead {
            conversation: conversation.clone(),
            user: me.clone(),
            seq,
            up_to: up_to.clone(),
        };
        match self.conversations.find(conversation).await {
            Ok(Some(Chat::Direct(direct))) => {
                let pair = &direct.participants;
                let other = if pair.first() == me { pair.second() } else { pair.first() };
                self.announce(std::slice::from_ref(other), &receipt).await;
            }
            Ok(Some(Chat::Group(_))) => {
                if let Err(error) = self.notifier.notify_group(conversation, &receipt).await {
                    tracing::warn!(error = %error, "read receipt not announced");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %error, "read receipt not announced: conversation not read"),
        }
        Ok(MarkedRead { seq, cursor: Some(cursor) })
    }

    /// The direct conversation `conversation` with both members' read positions (where
    /// "seen" comes from), for one of its two members; `None` when the id is a group's (see
    /// `GroupService::get`). Anyone else is told it does not exist.
    pub async fn direct_conversation(
        &self,
        me: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<DirectView>, MessagingError> {
        let direct = match self.conversations.find(conversation).await? {
            Some(Chat::Direct(direct)) if direct.participants.contains(me) => direct,
            Some(Chat::Group(_)) => return Ok(None),
            Some(Chat::Direct(_)) | None => return Err(MessagingError::ConversationNotFound),
        };
        let pair = &direct.participants;
        let first = self.conversations.member(&direct.id, pair.first()).await?;
        let second = self.conversations.member(&direct.id, pair.second()).await?;
        // Both members are stored with the conversation; one missing has read nothing.
        let or_unread = |member: Option<Member>, user: &UserId| {
            member.unwrap_or_else(|| Member {
                read_seq: 0,
                ..Member::joining(user.clone(), Role::Member, direct.created_at, 1)
            })
        };
        let members = [or_unread(first, pair.first()), or_unread(second, pair.second())];
        Ok(Some(DirectView { conversation: direct, members }))
    }

    /// What I follow after `since` ([`SyncCursor::START`]: from the beginning), in order, at
    /// most `limit` items (see [`crate::stream`] for the rules).
    pub async fn sync(
        &self,
        me: &UserId,
        since: SyncCursor,
        limit: Option<u32>,
    ) -> Result<SyncPage, MessagingError> {
        let limit = paging::clamp(limit);
        let mut reader =
            StreamReader::resume(self.messages.clone(), self.groups.clone(), me.clone(), Some(since))
                .await
                .map_err(|error| match error {
                FollowError::Ahead { .. } | FollowError::GroupAhead { .. } => MessagingError::BeyondStream,
                FollowError::InvalidCursor => MessagingError::InvalidCursor,
                FollowError::Storage(error) => error.into(),
                FollowError::Unreadable { .. } => {
                    MessagingError::Failed(ApplicationError::Unexpected(anyhow::Error::new(error)))
                }
            })?;
        // One more than asked, to tell whether more follow.
        let mut items = reader.read(limit + 1).await?;
        let has_more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next = match items.last() {
            Some(last) if has_more => last.cursor.clone(),
            _ => reader.cursor().clone(),
        };
        Ok(SyncPage { items, next, has_more })
    }

    /// The newest `limit` messages before `before` with `other`, oldest first.
    pub async fn history(
        &self,
        me: &UserId,
        other: &UserId,
        before: Option<MessageId>,
        limit: Option<u32>,
    ) -> Result<ConversationView, MessagingError> {
        let pair = self.pair_with(me, other)?;
        // A conversation exists only between two users (users are never deleted), so only
        // a pair without one needs the other user looked up, for a 404.
        match self.conversations.page(&pair, before, paging::clamp(limit)).await? {
            Some(page) => {
                Ok(ConversationView { conversation: Some(page.conversation), messages: page.messages })
            }
            None if self.users.exists(other).await? => {
                Ok(ConversationView { conversation: None, messages: Vec::new() })
            }
            None => Err(MessagingError::UserNotFound),
        }
    }

    /// My conversations (direct and groups) with their last entry, my read position and the
    /// first members of each group, most recent first, `limit` at a time (default and at
    /// most [`paging::MAX_LIMIT`], so that an old client that never pages gets every
    /// conversation of a list of that size, as it always did) after `after` (a decoded
    /// [`conversation_cursor`]).
    ///
    /// A walk from the first page never returns a conversation twice and always ends: each
    /// page holds only conversations whose [`ConversationKey`] is below the cursor, and keys
    /// never decrease. A conversation that gets a message during a walk moves to the front:
    /// if the walk had passed it, it is not repeated; if not, the walk skips it (the
    /// `newMessage` event, or the next walk, brings it).
    pub async fn conversations(
        &self,
        me: &UserId,
        limit: Option<u32>,
        after: Option<ConversationKey>,
    ) -> Result<ConversationList, MessagingError> {
        let limit = limit.unwrap_or(paging::MAX_LIMIT).clamp(1, paging::MAX_LIMIT);
        // One more than asked, to tell whether another page follows.
        let mut conversations = self.conversations.page_for_user(me, after, limit + 1).await?;
        let more = conversations.len() > limit as usize;
        conversations.truncate(limit as usize);
        let next_cursor =
            conversations.last().filter(|_| more).map(|last| conversation_cursor::encode(&last.key()));
        let groups: Vec<ConversationId> = conversations
            .iter()
            .filter(|summary| matches!(summary.conversation, Chat::Group(_)))
            .map(|summary| summary.conversation.id().clone())
            .collect();
        let members = if groups.is_empty() {
            HashMap::new()
        } else {
            let previews = self.groups.members_preview(&groups, MEMBERS_PREVIEW).await?;
            previews.into_iter().map(|preview| (preview.group.clone(), preview)).collect()
        };
        Ok(ConversationList { conversations, members, next_cursor })
    }

    fn pair_with(&self, me: &UserId, other: &UserId) -> Result<ParticipantPair, MessagingError> {
        ParticipantPair::new(me.clone(), other.clone()).map_err(|_| MessagingError::SelfConversation)
    }

    /// Why `me`, not a member of `conversation`, may not use it: they left or were removed
    /// (403), or never were a member, or it does not exist (404, alike).
    async fn outsider(
        &self,
        me: &UserId,
        conversation: &ConversationId,
    ) -> Result<MessagingError, RepoError> {
        Ok(match self.groups.left_after(me, conversation, Cursor::START).await? {
            Some(_) => MessagingError::NoLongerMember,
            None => MessagingError::ConversationNotFound,
        })
    }

    /// The quote of `target` for a reply sent to `conversation` by a member who sees its
    /// entries from seq `visible_from` on (1 in a direct conversation). A read without a
    /// lock: a target deleted right after this check still gets the reply, whose quote then
    /// says "deleted".
    async fn quote(
        &self,
        conversation: &ConversationId,
        visible_from: Seq,
        target: &MessageId,
    ) -> Result<ReplyQuote, MessagingError> {
        let target = self.changes.find(target).await?.ok_or(ReplyError::OtherConversation)?;
        let content = target.content();
        check_reply_target(conversation, visible_from, &target, &content)?;
        Ok(ReplyQuote::of(&target, &content))
    }

    /// Quotes the message a just stored reply answers as it is now. The quote taken before
    /// the send may be older than the reply's place in the conversation: an edit of the
    /// original can take a seq between the two, and a device that applied that edit before
    /// the reply came would keep the older text. Read after the reply is stored, the quote is
    /// at least as new as the reply's seq; later changes of the original follow it anyway.
    /// Best effort: when the read fails, the earlier quote stays.
    async fn requote(&self, reply: &mut Message) {
        let Some(quote) = &reply.reply_to else { return };
        match self.changes.find(&quote.message_id).await {
            Ok(Some(original)) => reply.reply_to = Some(ReplyQuote::of(&original, &original.content())),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(error = %error, message_id = %reply.id, "reply sent with the quote read before it")
            }
        }
    }

    /// Best effort: a stored change is never undone because delivery failed.
    async fn announce(&self, users: &[UserId], event: &Event) {
        if let Err(error) = self.notifier.notify(users, event).await {
            tracing::warn!(error = %error, "stored but not announced");
        }
    }
}

/// A send whose client id the sender used before for `earlier`: the same send again, or a
/// reuse for something else.
fn retried(earlier: Message, retry: &Message) -> Result<Sent, MessagingError> {
    if earlier.same_content(retry) {
        Ok(Sent { message: earlier, created: false })
    } else {
        Err(MessagingError::ClientIdReused)
    }
}

/// The cursor of the conversation list (`X-Next-Cursor`, then `cursor`): the
/// [`ConversationKey`] of the last conversation of a page, as
/// `<updatedAt in microseconds since 1970>.<last message id, or nothing>.<conversation id>`.
/// Clients treat it as opaque. Every part is parsed strictly before storage sees it, and
/// any well-formed cursor is only a position in the caller's own list, so a forged one can
/// reach nothing it should not.
pub mod conversation_cursor {
    use domain::{ConversationId, MessageId};

    use super::ConversationKey;
    use crate::paging::InvalidCursor;

    /// Most digits of the time: up to the year 2286, and every such number is a valid time.
    const MAX_DIGITS: usize = 16;

    pub fn encode(key: &ConversationKey) -> String {
        let last = key.last_message.as_ref().map_or("", MessageId::as_str);
        format!("{}.{last}.{}", key.updated_at.timestamp_micros(), key.id)
    }

    /// The key to list after, `None` for the first page (an empty cursor).
    pub fn decode(raw: &str) -> Result<Option<ConversationKey>, InvalidCursor> {
        if raw.is_empty() {
            return Ok(None);
        }
        parse(raw).map(Some).ok_or(InvalidCursor)
    }

    fn parse(raw: &str) -> Option<ConversationKey> {
        let mut parts = raw.split('.');
        let (micros, last, id) = (parts.next()?, parts.next()?, parts.next()?);
        let canonical_number = micros.len() <= MAX_DIGITS
            && micros.bytes().all(|b| b.is_ascii_digit())
            && (micros == "0" || !micros.starts_with('0'));
        if parts.next().is_some() || !canonical_number {
            return None;
        }
        Some(ConversationKey {
            updated_at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            last_message: match last {
                "" => None,
                last => Some(MessageId::parse(last).ok()?),
            },
            id: ConversationId::parse(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{timeline_ports, Timeline};
    use crate::paging::InvalidCursor;
    use crate::ports::{
        ConversationPage, MockClock, MockConversationRepository, MockGroupRepository,
        MockMessageChangeRepository, MockMessageRepository, MockNotifier, MockUserRepository, NotifyError,
        StoredMessage,
    };
    use crate::stream::SyncEvent;
    use chrono::{TimeZone, Utc};
    use domain::{Group, GroupName, Member, Role, User};
    use std::sync::Mutex;

    fn now() -> domain::Timestamp {
        Utc.with_ymd_and_hms(2026, 5, 6, 7, 8, 9).unwrap()
    }

    fn user(id: &UserId) -> User {
        crate::fixtures::user_with_id(id, now())
    }

    fn message_to(user: &UserId) -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: Some(user.clone()),
            body: MessageBody::parse("hi").unwrap(),
            system: None,
            seq: 1,
            created_at: now(),
            client_id: None,
        }
    }

    struct Mocks {
        users: MockUserRepository,
        conversations: MockConversationRepository,
        messages: MockMessageRepository,
        changes: MockMessageChangeRepository,
        groups: MockGroupRepository,
        notifier: MockNotifier,
    }

    impl Mocks {
        fn new() -> Self {
            Self {
                users: MockUserRepository::new(),
                conversations: MockConversationRepository::new(),
                messages: MockMessageRepository::new(),
                changes: MockMessageChangeRepository::new(),
                groups: MockGroupRepository::new(),
                notifier: MockNotifier::new(),
            }
        }

        fn receiver_exists(&mut self) {
            self.users.expect_find_by_id().returning(|id| Ok(Some(user(id))));
        }

        fn service(self) -> MessagingService {
            let mut clock = MockClock::new();
            clock.expect_now().returning(now);
            MessagingService::new(
                MessagingStores {
                    users: Arc::new(self.users),
                    conversations: Arc::new(self.conversations),
                    messages: Arc::new(self.messages),
                    changes: Arc::new(self.changes),
                    groups: Arc::new(self.groups),
                },
                Arc::new(self.notifier),
                Arc::new(clock),
            )
        }
    }

    fn body(text: &str) -> MessageBody {
        MessageBody::parse(text).unwrap()
    }

    fn key(raw: &str) -> ClientMessageId {
        ClientMessageId::parse(raw).unwrap()
    }

    fn cursor(n: u64) -> Cursor {
        Cursor::new(n).unwrap()
    }

    /// Stores whatever is appended, at positions 7 (sender) and 3 (receiver).
    fn stored(message: &Message) -> StoredMessage {
        StoredMessage { message: message.clone(), sender_cursor: cursor(7), receiver_cursor: cursor(3) }
    }

    #[tokio::test]
    async fn send_stores_then_announces_to_each_side_with_its_own_cursor() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let mut m = Mocks::new();
        m.receiver_exists();
        let mut seq = mockall::Sequence::new();
        let (a, b) = (alice.clone(), bob.clone());
        m.messages
            .expect_append()
            .withf(move |conversation, msg| {
                msg.sender_id == a
                    && msg.receiver_id.as_ref() == Some(&b)
                    && msg.body.as_str() == " hi "
                    && msg.conversation_id == conversation.id
                    && conversation.participants.contains(&a)
                    && conversation.participants.contains(&b)
                    && msg.client_id.is_none()
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, msg| Ok(Appended::Created(stored(msg))));
        for (user, position) in [(bob.clone(), 3), (alice.clone(), 7)] {
            m.notifier
                .expect_notify()
                .withf(move |users, event| {
                    users == [user.clone()]
                        && matches!(event, Event::NewMessage { message, cursor: c }
                            if message.body.as_str() == " hi " && *c == cursor(position))
                })
                .times(1)
                .in_sequence(&mut seq)
                .returning(|_, _| Ok(()));
        }

        let sent = m.service().send(&alice, &bob, body(" hi "), None, None).await.unwrap();
        assert!(sent.created);
        assert_eq!(sent.message.created_at, now());
    }

    /// A message of `conversation` from `sender` at `seq`, as a store reads it.
    fn earlier(conversation: &ConversationId, sender: &UserId, seq: Seq, text: &str) -> Message {
        Message {
            conversation_id: conversation.clone(),
            sender_id: sender.clone(),
            body: body(text),
            seq,
            ..message_to(&UserId::generate())
        }
    }

    #[tokio::test]
    async fn a_reply_stores_the_quote_of_a_message_of_the_pair_conversation() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation =
            Conversation::start(ParticipantPair::new(alice.clone(), bob.clone()).unwrap(), now());
        let original = earlier(&conversation.id, &bob, 1, &"long ".repeat(40));
        let mut m = Mocks::new();
        m.receiver_exists();
        let pair_conversation = conversation.clone();
        m.conversations.expect_find_by_participants().returning(move |_| Ok(Some(pair_conversation.clone())));
        let found = original.clone();
        m.changes.expect_find().returning(move |_| Ok(Some(found.clone())));
        let id = original.id.clone();
        m.messages
            .expect_append()
            .withf(move |_, msg| msg.reply_to.as_ref().is_some_and(|quote| quote.message_id == id))
            .times(1)
            .returning(|_, msg| Ok(Appended::Created(stored(msg))));
        m.notifier.expect_notify().times(2).returning(|_, _| Ok(()));

        let sent =
            m.service().send(&alice, &bob, body("yes"), None, Some(original.id.clone())).await.unwrap();
        let quote = sent.message.reply_to.expect("a quote");
        assert_eq!(quote.sender_id, bob);
        let domain::QuoteText::Excerpt { text, truncated } = quote.text else { panic!("not deleted") };
        assert!(truncated);
        assert_eq!(text.chars().count(), 99, "100 characters, the trailing space trimmed");
    }

    #[tokio::test]
    async fn a_reply_announces_the_original_as_it_is_once_the_reply_is_stored() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation =
            Conversation::start(ParticipantPair::new(alice.clone(), bob.clone()).unwrap(), now());
        let original = earlier(&conversation.id, &bob, 1, "first words");
        // Edited at seq 2, after the reply's check read it and before the reply took seq 3.
        let edited = original.clone().with_state(domain::MessageState {
            content: domain::Content::Live {
                body: body("second words"),
                edited_at: Some(now()),
                reactions: Default::default(),
            },
            version: 2,
            ..original.state()
        });
        let mut m = Mocks::new();
        m.receiver_exists();
        let pair_conversation = conversation.clone();
        m.conversations.expect_find_by_participants().returning(move |_| Ok(Some(pair_conversation.clone())));
        let mut reads = mockall::Sequence::new();
        let before = original.clone();
        m.changes.expect_find().times(1).in_sequence(&mut reads).returning(move |_| Ok(Some(before.clone())));
        m.changes.expect_find().times(1).in_sequence(&mut reads).returning(move |_| Ok(Some(edited.clone())));
        m.messages.expect_append().times(1).returning(|_, msg| Ok(Appended::Created(stored(msg))));
        m.notifier
            .expect_notify()
            .withf(|_, event| {
                matches!(event, Event::NewMessage { message, .. }
                    if message.reply_to.as_ref().is_some_and(|quote| quote_text(quote) == "second words"))
            })
            .times(2)
            .returning(|_, _| Ok(()));

        let sent =
            m.service().send(&alice, &bob, body("yes"), None, Some(original.id.clone())).await.unwrap();
        assert_eq!(quote_text(sent.message.reply_to.as_ref().expect("a quote")), "second words");
    }

    fn quote_text(quote: &ReplyQuote) -> &str {
        match &quote.text {
            domain::QuoteText::Excerpt { text, .. } => text,
            domain::QuoteText::Deleted => "",
        }
    }

    #[tokio::test]
    async fn a_reply_to_anything_but_a_live_message_of_the_conversation_is_refused_and_nothing_is_stored() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation =
            Conversation::start(ParticipantPair::new(alice.clone(), bob.clone()).unwrap(), now());
        let elsewhere = earlier(&ConversationId::generate(), &alice, 1, "elsewhere");
        let system = Message {
            system: Some(domain::SystemEvent::Renamed {
                actor: alice.clone(),
                name: domain::GroupName::parse("x").unwrap(),
            }),
            ..earlier(&conversation.id, &alice, 2, "renamed")
        };
        let deleted = earlier(&conversation.id, &bob, 3, "gone").with_state(domain::MessageState {
            content: domain::Content::Deleted(domain::Tombstone {
                deleted_at: now(),
                deleted_by: bob.clone(),
            }),
            version: 4,
            ..earlier(&conversation.id, &bob, 3, "gone").state()
        });
        let cases = [
            (None, ReplyError::OtherConversation),
            (Some(elsewhere), ReplyError::OtherConversation),
            (Some(system), ReplyError::SystemEntry),
            (Some(deleted), ReplyError::Deleted),
        ];
        for (target, expected) in cases {
            let mut m = Mocks::new();
            m.receiver_exists();
            let pair_conversation = conversation.clone();
            m.conversations
                .expect_find_by_participants()
                .returning(move |_| Ok(Some(pair_conversation.clone())));
            m.changes.expect_find().returning(move |_| Ok(target.clone()));
            m.messages.expect_append().never();
            m.notifier.expect_notify().never();
            let result = m.service().send(&alice, &bob, body("hm"), None, Some(MessageId::generate())).await;
            assert!(matches!(&result, Err(MessagingError::InvalidReply(e)) if *e == expected), "{result:?}");
        }

        // No conversation yet: nothing to reply to.
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversations.expect_find_by_participants().returning(|_| Ok(None));
        m.messages.expect_append().never();
        let result = m.service().send(&alice, &bob, body("hm"), None, Some(MessageId::generate())).await;
        assert!(matches!(result, Err(MessagingError::InvalidReply(ReplyError::OtherConversation))));
    }

    #[tokio::test]
    async fn a_group_reply_to_a_message_from_before_the_sender_joined_is_refused() {
        let (me, other) = (UserId::generate(), UserId::generate());
        let group = group(9);
        let mut m = Mocks::new();
        let found = Chat::Group(group.clone());
        m.conversations.expect_find().returning(move |_| Ok(Some(found.clone())));
        let joined = member(&me, 5);
        m.conversations.expect_member().returning(move |_, _| Ok(Some(joined.clone())));
        let before = earlier(&group.id, &other, 4, "before");
        m.changes.expect_find().returning(move |_| Ok(Some(before.clone())));
        m.messages.expect_append_to_group().never();
        let result = m
            .service()
            .send_to_conversation(&me, &group.id, body("hm"), None, Some(MessageId::generate()))
            .await;
        assert!(matches!(result, Err(MessagingError::InvalidReply(ReplyError::NotVisible))), "{result:?}");
    }

    #[tokio::test]
    async fn send_with_a_client_id_passes_it_to_the_store() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.messages
            .expect_append()
            .withf(|_, msg| msg.client_id.as_ref().map(ClientMessageId::as_str) == Some("key-1"))
            .times(1)
            .returning(|_, msg| Ok(Appended::Created(stored(msg))));
        m.notifier.expect_notify().times(2).returning(|_, _| Ok(()));
        let sent = m
            .service()
            .send(&UserId::generate(), &UserId::generate(), body("hi"), Some(key("key-1")), None)
            .await
            .unwrap();
        assert_eq!(sent.message.client_id.unwrap().as_str(), "key-1");
    }

    #[tokio::test]
    async fn a_retried_send_returns_the_first_message_and_announces_nothing() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let mut m = Mocks::new();
        m.receiver_exists();
        m.messages.expect_append().times(1).returning(|_, retry| {
            let mut first = retry.clone();
            first.id = MessageId::generate();
            Ok(Appended::Existing(stored(&first)))
        });
        m.notifier.expect_notify().never();
        let sent = m.service().send(&alice, &bob, body("hi"), Some(key("key-1")), None).await.unwrap();
        assert!(!sent.created);
        assert_eq!(sent.message.body.as_str(), "hi");
    }

    #[tokio::test]
    async fn a_client_id_reused_for_another_text_is_refused() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.messages.expect_append().returning(|_, retry| {
            let mut first = retry.clone();
            first.body = MessageBody::parse("something else").unwrap();
            Ok(Appended::Existing(stored(&first)))
        });
        m.notifier.expect_notify().never();
        let err = m
            .service()
            .send(&UserId::generate(), &UserId::generate(), body("hi"), Some(key("key-1")), None)
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::ClientIdReused));
    }

    #[tokio::test]
    async fn send_to_an_unknown_receiver_stores_and_announces_nothing() {
        let mut m = Mocks::new();
        m.users.expect_find_by_id().returning(|_| Ok(None));
        m.messages.expect_append().never();
        m.notifier.expect_notify().never();
        let err = m
            .service()
            .send(&UserId::generate(), &UserId::generate(), body("hi"), None, None)
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::UserNotFound));
    }

    #[tokio::test]
    async fn send_to_oneself_is_refused() {
        let me = UserId::generate();
        let err = Mocks::new().service().send(&me, &me, body("hi"), None, None).await.unwrap_err();
        assert!(matches!(err, MessagingError::SelfConversation));
    }

    #[tokio::test]
    async fn send_is_not_announced_when_storing_fails() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.messages
            .expect_append()
            .returning(|_, _| Err(RepoError::Unavailable(anyhow::anyhow!("disk gone"))));
        m.notifier.expect_notify().never();
        let err = m
            .service()
            .send(&UserId::generate(), &UserId::generate(), body("hi"), None, None)
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Failed(ApplicationError::Unavailable(_))));
    }

    #[tokio::test]
    async fn send_succeeds_even_when_the_announcement_fails() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.messages.expect_append().returning(|_, msg| Ok(Appended::Created(stored(msg))));
        m.notifier.expect_notify().times(2).returning(|_, _| Err(NotifyError(anyhow::anyhow!("bus down"))));
        let sent = m.service().send(&UserId::generate(), &UserId::generate(), body("hi"), None, None).await;
        assert!(sent.is_ok());
    }

    #[tokio::test]
    async fn send_returns_the_message_as_stored_in_the_pairs_conversation() {
        let existing = ConversationId::generate();
        let expected = existing.clone();
        let mut m = Mocks::new();
        m.receiver_exists();
        m.messages.expect_append().returning(move |_, msg| {
            let mut joined = msg.clone();
            joined.conversation_id = existing.clone();
            Ok(Appended::Created(stored(&joined)))
        });
        m.notifier.expect_notify().returning(|_, _| Ok(()));
        let sent = m
            .service()
            .send(&UserId::generate(), &UserId::generate(), body("again"), None, None)
            .await
            .unwrap();
        assert_eq!(sent.message.conversation_id, expected);
    }

    #[tokio::test]
    async fn history_without_a_conversation_is_empty() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversations.expect_page().returning(|_, _, _| Ok(None));
        let view = m.service().history(&UserId::generate(), &UserId::generate(), None, None).await.unwrap();
        assert_eq!(view, ConversationView { conversation: None, messages: vec![] });
    }

    #[tokio::test]
    async fn history_pages_before_a_message_with_a_capped_limit() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let pair = ParticipantPair::new(alice.clone(), bob.clone()).unwrap();
        let conversation = Conversation::start(pair.clone(), now());
        let page = ConversationPage { conversation: conversation.clone(), messages: vec![message_to(&bob)] };
        let before = MessageId::generate();
        let expected_before = before.clone();
        let mut m = Mocks::new();
        // The pair's conversation vouches for the other user: no lookup.
        m.users.expect_find_by_id().never();
        m.conversations
            .expect_page()
            .withf(move |p, b, limit| *p == pair && *b == Some(expected_before.clone()) && *limit == 200)
            .returning(move |_, _, _| Ok(Some(page.clone())));
        let view = m.service().history(&alice, &bob, Some(before), Some(5000)).await.unwrap();
        assert_eq!(view.conversation, Some(conversation));
        assert_eq!(view.messages.len(), 1);
    }

    #[tokio::test]
    async fn history_with_an_unknown_user_is_not_found() {
        let mut m = Mocks::new();
        m.conversations.expect_page().returning(|_, _, _| Ok(None));
        m.users.expect_find_by_id().returning(|_| Ok(None));
        let err =
            m.service().history(&UserId::generate(), &UserId::generate(), None, None).await.unwrap_err();
        assert!(matches!(err, MessagingError::UserNotFound));
    }

    /// A conversation of `me` updated at `micros` past the epoch, with a message or none.
    fn summary(me: &UserId, micros: i64, with_message: bool) -> ConversationSummary {
        let at = chrono::DateTime::from_timestamp_micros(micros).unwrap();
        let pair = ParticipantPair::new(me.clone(), UserId::generate()).unwrap();
        let conversation = Conversation::start(pair, at);
        let last_message = with_message.then(|| Message {
            conversation_id: conversation.id.clone(),
            created_at: at,
            ..message_to(me)
        });
        let me = Member::joining(me.clone(), Role::Member, at, 1);
        ConversationSummary { conversation: Chat::Direct(conversation), last_message, me, unread: 0 }
    }

    #[tokio::test]
    async fn conversations_without_a_limit_are_a_full_page_and_ask_for_one_more() {
        let me = UserId::generate();
        let expected = me.clone();
        let mut m = Mocks::new();
        m.conversations
            .expect_page_for_user()
            .withf(move |u, after, limit| {
                *u == expected && after.is_none() && *limit == paging::MAX_LIMIT + 1
            })
            .times(1)
            .returning(|u, _, _| Ok(vec![summary(u, 5, true), summary(u, 4, false)]));
        let list = m.service().conversations(&me, None, None).await.unwrap();
        assert_eq!(list.conversations.len(), 2);
        assert_eq!(list.next_cursor, None, "nothing follows a short page");
    }

    #[tokio::test]
    async fn conversations_continue_after_the_cursor_of_the_last_one_listed() {
        let me = UserId::generate();
        let first = vec![
            summary(&me, 1_700_000_000_123_000, true),
            summary(&me, 1_700_000_000_000_000, false),
            summary(&me, 9, true),
        ];
        let last_key = first[1].key();
        let mut m = Mocks::new();
        let page = first.clone();
        m.conversations
            .expect_page_for_user()
            .withf(|_, after, limit| after.is_none() && *limit == 3)
            .returning(move |_, _, _| Ok(page.clone()));
        let expected = last_key.clone();
        m.conversations
            .expect_page_for_user()
            .withf(move |_, after, limit| after.as_ref() == Some(&expected) && *limit == 3)
            .returning(|_, _, _| Ok(vec![]));
        let service = m.service();

        let list = service.conversations(&me, Some(2), None).await.unwrap();
        assert_eq!(list.conversations, first[..2]);
        let cursor = list.next_cursor.expect("a third conversation follows");
        let after = conversation_cursor::decode(&cursor).unwrap();
        assert_eq!(after.as_ref(), Some(&last_key));

        let rest = service.conversations(&me, Some(2), after).await.unwrap();
        assert!(rest.conversations.is_empty());
        assert_eq!(rest.next_cursor, None);
    }

    fn group(members: u64) -> Group {
        Group {
            id: ConversationId::generate(),
            name: GroupName::parse("team").unwrap(),
            created_by: UserId::generate(),
            created_at: now(),
            updated_at: now(),
            last_seq: members,
        }
    }

    fn direct(a: &UserId, b: &UserId) -> Conversation {
        Conversation::start(ParticipantPair::new(a.clone(), b.clone()).unwrap(), now())
    }

    fn member(user: &UserId, joined_seq: u64) -> Member {
        Member::joining(user.clone(), Role::Member, now(), joined_seq)
    }

    impl Mocks {
        fn finds(&mut self, chat: Chat) {
            self.conversations.expect_find().returning(move |_| Ok(Some(chat.clone())));
        }

        /// `me` left the conversation once (`true`) or never was in it.
        fn left_before(&mut self, left: bool) {
            self.groups.expect_left_after().returning(move |_, _, after| {
                assert_eq!(after, Cursor::START, "any membership ever");
                Ok(left.then_some(3))
            });
        }
    }

    #[tokio::test]
    async fn a_direct_conversation_shows_both_members_read_positions_to_either_of_them() {
        let (me, other) = (UserId::generate(), UserId::generate());
        let direct = Conversation { last_seq: 4, ..direct(&me, &other) };
        let read = MessageId::generate();
        for viewer in [&me, &other] {
            let mut m = Mocks::new();
            m.finds(Chat::Direct(direct.clone()));
            let (mine, read_id) = (me.clone(), read.clone());
            m.conversations.expect_member().times(2).returning(move |_, user| {
                Ok(Some(if *user == mine {
                    Member { read_seq: 4, last_read_message_id: Some(read_id.clone()), ..member(user, 1) }
                } else {
                    Member { read_seq: 0, ..member(user, 1) }
                }))
            });
            let view = m.service().direct_conversation(viewer, &direct.id).await.unwrap().unwrap();
            assert_eq!(view.conversation, direct);
            let pair = &direct.participants;
            let seen: Vec<(&UserId, Seq, Option<&MessageId>)> = view
                .members
                .iter()
                .map(|m| (&m.user_id, m.read_seq, m.last_read_message_id.as_ref()))
                .collect();
            let position = |user: &UserId| if *user == me { (4, Some(&read)) } else { (0, None) };
            let expected: Vec<(&UserId, Seq, Option<&MessageId>)> = [pair.first(), pair.second()]
                .into_iter()
                .map(|user| (user, position(user).0, position(user).1))
                .collect();
            assert_eq!(seen, expected);
        }
    }

    #[tokio::test]
    async fn a_direct_conversation_is_not_found_for_others_and_a_group_is_left_to_the_groups() {
        let (a, b, stranger) = (UserId::generate(), UserId::generate(), UserId::generate());
        let direct = direct(&a, &b);
        let mut m = Mocks::new();
        m.finds(Chat::Direct(direct.clone()));
        m.conversations.expect_member().never();
        let err = m.service().direct_conversation(&stranger, &direct.id).await.unwrap_err();
        assert!(matches!(err, MessagingError::ConversationNotFound));

        let mut m = Mocks::new();
        m.conversations.expect_find().returning(|_| Ok(None));
        let err = m.service().direct_conversation(&a, &ConversationId::generate()).await.unwrap_err();
        assert!(matches!(err, MessagingError::ConversationNotFound));

        let group = group(3);
        let mut m = Mocks::new();
        m.finds(Chat::Group(group.clone()));
        m.conversations.expect_member().never();
        assert_eq!(m.service().direct_conversation(&a, &group.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_direct_member_stored_without_a_read_position_has_read_nothing() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let direct = Conversation { last_seq: 2, ..direct(&a, &b) };
        let mut m = Mocks::new();
        m.finds(Chat::Direct(direct.clone()));
        m.conversations.expect_member().returning(|_, _| Ok(None));
        let view = m.service().direct_conversation(&a, &direct.id).await.unwrap().unwrap();
        assert!(view.members.iter().all(|m| m.read_seq == 0 && m.last_read_message_id.is_none()));
    }

    #[tokio::test]
    async fn sending_to_a_group_stores_once_and_announces_once_to_its_members() {
        let (me, group) = (UserId::generate(), group(3));
        let (expected_sender, expected_group) = (me.clone(), group.id.clone());
        let mut m = Mocks::new();
        m.finds(Chat::Group(group.clone()));
        let mut seq = mockall::Sequence::new();
        m.messages
            .expect_append_to_group()
            .withf(move |msg| {
                msg.conversation_id == expected_group
                    && msg.sender_id == expected_sender
                    && msg.receiver_id.is_none()
                    && msg.system.is_none()
                    && msg.client_id.as_ref().map(ClientMessageId::as_str) == Some("k")
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|msg| {
                Ok(GroupAppended::Created { message: Message { seq: 4, ..msg.clone() }, version: 2 })
            });
        let id = group.id.clone();
        m.notifier
            .expect_notify_group()
            .withf(move |g, event| {
                *g == id && matches!(event, Event::GroupMessage { message, version: 2 } if message.seq == 4)
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        m.notifier.expect_notify().never();
        let sent =
            m.service().send_to_conversation(&me, &group.id, body("hi"), Some(key("k")), None).await.unwrap();
        assert!(sent.created);
        assert_eq!(sent.message.seq, 4);
    }

    #[tokio::test]
    async fn a_retried_group_send_returns_the_first_message_and_a_reused_id_is_refused() {
        let group = group(3);
        for (same, expected_created) in [(true, Some(false)), (false, None)] {
            let mut m = Mocks::new();
            m.finds(Chat::Group(group.clone()));
            m.messages.expect_append_to_group().returning(move |retry| {
                let body = if same { retry.body.clone() } else { MessageBody::parse("other").unwrap() };
                Ok(GroupAppended::Existing(Message {
                    id: MessageId::generate(),
                    body,
                    seq: 2,
                    ..retry.clone()
                }))
            });
            m.notifier.expect_notify_group().never();
            let sent = m
                .service()
                .send_to_conversation(&UserId::generate(), &group.id, body("hi"), Some(key("k")), None)
                .await;
            match expected_created {
                Some(created) => assert_eq!(sent.unwrap().created, created),
                None => assert!(matches!(sent, Err(MessagingError::ClientIdReused))),
            }
        }
    }

    #[tokio::test]
    async fn sending_to_a_group_one_is_not_in_is_refused_as_gone_or_unknown() {
        let group = group(3);
        for (left, forbidden) in [(true, true), (false, false)] {
            let mut m = Mocks::new();
            m.finds(Chat::Group(group.clone()));
            m.messages.expect_append_to_group().times(1).returning(|_| Ok(GroupAppended::NotMember));
            m.left_before(left);
            m.notifier.expect_notify_group().never();
            let err = m
                .service()
                .send_to_conversation(&UserId::generate(), &group.id, body("hi"), None, None)
                .await;
            if forbidden {
                assert!(matches!(err, Err(MessagingError::NoLongerMember)));
            } else {
                assert!(matches!(err, Err(MessagingError::ConversationNotFound)));
            }
        }
    }

    #[tokio::test]
    async fn sending_to_an_unknown_conversation_is_not_found() {
        let mut m = Mocks::new();
        m.conversations.expect_find().returning(|_| Ok(None));
        m.messages.expect_append_to_group().never();
        m.messages.expect_append().never();
        let err = m
            .service()
            .send_to_conversation(&UserId::generate(), &ConversationId::generate(), body("hi"), None, None)
            .await;
        assert!(matches!(err, Err(MessagingError::ConversationNotFound)));
    }

    #[tokio::test]
    async fn sending_to_a_direct_conversation_sends_to_the_other_user() {
        let (me, other) = (UserId::generate(), UserId::generate());
        let conversation = direct(&me, &other);
        let mut m = Mocks::new();
        m.finds(Chat::Direct(conversation.clone()));
        m.receiver_exists();
        let (a, b) = (me.clone(), other.clone());
        m.messages
            .expect_append()
            .withf(move |_, msg| msg.sender_id == a && msg.receiver_id.as_ref() == Some(&b))
            .times(1)
            .returning(|_, msg| Ok(Appended::Created(stored(msg))));
        m.notifier.expect_notify().times(2).returning(|_, _| Ok(()));
        let sent =
            m.service().send_to_conversation(&me, &conversation.id, body("hi"), None, None).await.unwrap();
        assert_eq!(sent.message.receiver_id, Some(other));
    }

    #[tokio::test]
    async fn sending_to_someone_elses_direct_conversation_is_not_found() {
        let conversation = direct(&UserId::generate(), &UserId::generate());
        let mut m = Mocks::new();
        m.finds(Chat::Direct(conversation.clone()));
        m.messages.expect_append().never();
        let err = m
            .service()
            .send_to_conversation(&UserId::generate(), &conversation.id, body("hi"), None, None)
            .await;
        assert!(matches!(err, Err(MessagingError::ConversationNotFound)));
    }

    #[tokio::test]
    async fn a_members_history_starts_at_the_entry_that_added_them() {
        let (me, conversation) = (UserId::generate(), ConversationId::generate());
        let mut m = Mocks::new();
        m.conversations.expect_member().returning(|_, user| Ok(Some(member(user, 7))));
        let (id, before) = (conversation.clone(), MessageId::generate());
        let expected_before = before.clone();
        m.messages
            .expect_list_by_conversation()
            .withf(move |c, from_seq, b, limit| {
                *c == id
                    && *from_seq == 7
                    && b.as_ref() == Some(&expected_before)
                    && *limit == paging::MAX_LIMIT
            })
            .times(1)
            .returning(|_, _, _, _| Ok(vec![]));
        let page = m.service().conversation_history(&me, &conversation, Some(before), Some(10_000)).await;
        assert_eq!(page.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn history_of_a_conversation_one_is_not_in_is_refused_as_gone_or_unknown() {
        for left in [true, false] {
            let mut m = Mocks::new();
            m.conversations.expect_member().returning(|_, _| Ok(None));
            m.left_before(left);
            m.messages.expect_list_by_conversation().never();
            let err = m
                .service()
                .conversation_history(&UserId::generate(), &ConversationId::generate(), None, None)
                .await
                .unwrap_err();
            if left {
                assert!(matches!(err, MessagingError::NoLongerMember));
            } else {
                assert!(matches!(err, MessagingError::ConversationNotFound));
            }
        }
    }

    #[tokio::test]
    async fn reading_a_direct_conversation_tells_my_devices_through_my_stream_and_the_other_a_receipt() {
        let (me, other) = (UserId::generate(), UserId::generate());
        let conversation = direct(&me, &other);
        let up_to = MessageId::generate();
        let mut m = Mocks::new();
        let (id, reader, message) = (conversation.id.clone(), me.clone(), up_to.clone());
        m.messages
            .expect_mark_read()
            .withf(move |c, u, upto| *c == id && *u == reader && *upto == message)
            .times(1)
            .returning(|_, _, _| Ok(ReadMoved::Moved { seq: 5, cursor: Cursor::new(9).unwrap() }));
        m.finds(Chat::Direct(conversation.clone()));
        let mut seq = mockall::Sequence::new();
        let (mine, id, read) = (me.clone(), conversation.id.clone(), up_to.clone());
        m.notifier
            .expect_notify()
            .withf(move |users, event| {
                users == [mine.clone()]
                    && *event
                        == Event::Notice {
                            notice: Notice::Read {
                                conversation: id.clone(),
                                seq: 5,
                                message_id: read.clone(),
                            },
                            cursor: Cursor::new(9).unwrap(),
                        }
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        let (theirs, id, read, reader) = (other.clone(), conversation.id.clone(), up_to.clone(), me.clone());
        m.notifier
            .expect_notify()
            .withf(move |users, event| {
                users == [theirs.clone()]
                    && *event
                        == Event::MessagesRead {
                            conversation: id.clone(),
                            user: reader.clone(),
                            seq: 5,
                            up_to: read.clone(),
                        }
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        m.notifier.expect_notify_group().never();
        let marked = m.service().mark_read(&me, &conversation.id, &up_to).await.unwrap();
        assert_eq!(marked, MarkedRead { seq: 5, cursor: Some(Cursor::new(9).unwrap()) });
    }

    #[tokio::test]
    async fn reading_a_group_sends_the_receipt_to_its_members() {
        let (me, group) = (UserId::generate(), group(4));
        let mut m = Mocks::new();
        m.messages
            .expect_mark_read()
            .returning(|_, _, _| Ok(ReadMoved::Moved { seq: 4, cursor: Cursor::new(2).unwrap() }));
        m.finds(Chat::Group(group.clone()));
        m.notifier.expect_notify().times(1).returning(|_, _| Ok(()));
        let id = group.id.clone();
        m.notifier
            .expect_notify_group()
            .withf(move |g, event| *g == id && matches!(event, Event::MessagesRead { seq: 4, .. }))
            .times(1)
            .returning(|_, _| Ok(()));
        let marked = m.service().mark_read(&me, &group.id, &MessageId::generate()).await.unwrap();
        assert_eq!(marked.seq, 4);
    }

    #[tokio::test]
    async fn a_read_position_that_does_not_move_announces_nothing() {
        let mut m = Mocks::new();
        m.messages.expect_mark_read().returning(|_, _, _| Ok(ReadMoved::NotAhead { seq: 8 }));
        m.conversations.expect_find().never();
        m.notifier.expect_notify().never();
        m.notifier.expect_notify_group().never();
        let marked = m
            .service()
            .mark_read(&UserId::generate(), &ConversationId::generate(), &MessageId::generate())
            .await
            .unwrap();
        assert_eq!(marked, MarkedRead { seq: 8, cursor: None });
    }

    #[tokio::test]
    async fn reading_up_to_an_unknown_message_or_as_an_outsider_is_refused() {
        let mut m = Mocks::new();
        m.messages.expect_mark_read().returning(|_, _, _| Ok(ReadMoved::UnknownMessage));
        m.notifier.expect_notify().never();
        let err = m
            .service()
            .mark_read(&UserId::generate(), &ConversationId::generate(), &MessageId::generate())
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::MessageNotFound));

        for left in [true, false] {
            let mut m = Mocks::new();
            m.messages.expect_mark_read().returning(|_, _, _| Ok(ReadMoved::NotMember));
            m.left_before(left);
            m.notifier.expect_notify().never();
            let err = m
                .service()
                .mark_read(&UserId::generate(), &ConversationId::generate(), &MessageId::generate())
                .await
                .unwrap_err();
            assert_eq!(matches!(err, MessagingError::NoLongerMember), left, "{err}");
            assert_eq!(matches!(err, MessagingError::ConversationNotFound), !left, "{err}");
        }
    }

    #[tokio::test]
    async fn the_conversation_list_previews_the_members_of_its_groups_in_one_call() {
        let me = UserId::generate();
        let (g1, g2) = (group(5), group(2));
        let mut with_unread = member(&me, 1);
        with_unread.read_seq = 2;
        let page = vec![
            ConversationSummary {
                conversation: Chat::Group(g1.clone()),
                last_message: None,
                me: with_unread,
                unread: 3,
            },
            summary(&me, 5, true),
            ConversationSummary {
                conversation: Chat::Group(g2.clone()),
                last_message: None,
                me: member(&me, 1),
                unread: 1,
            },
        ];
        let mut m = Mocks::new();
        m.conversations.expect_page_for_user().returning(move |_, _, _| Ok(page.clone()));
        let ids = vec![g1.id.clone(), g2.id.clone()];
        m.groups
            .expect_members_preview()
            .withf(move |groups, limit| groups == ids.as_slice() && *limit == MEMBERS_PREVIEW)
            .times(1)
            .returning(|groups, _| {
                Ok(groups
                    .iter()
                    .map(|g| MembersPreview { group: g.clone(), members: vec![UserId::generate()], count: 7 })
                    .collect())
            });
        let list = m.service().conversations(&me, None, None).await.unwrap();
        assert_eq!(list.conversations.len(), 3);
        assert_eq!(list.conversations[0].unread(), 3);
        assert_eq!(list.members.len(), 2);
        assert_eq!(list.members[&g1.id].count, 7);
    }

    #[tokio::test]
    async fn a_conversation_list_without_groups_previews_nothing() {
        let me = UserId::generate();
        let mut m = Mocks::new();
        let page = vec![summary(&me, 5, true)];
        m.conversations.expect_page_for_user().returning(move |_, _, _| Ok(page.clone()));
        m.groups.expect_members_preview().never();
        let list = m.service().conversations(&me, None, None).await.unwrap();
        assert!(list.members.is_empty());
    }

    /// A service that reads `timeline` for sync.
    fn sync_service(timeline: &Arc<Mutex<Timeline>>) -> MessagingService {
        let (messages, groups) = timeline_ports(timeline);
        Mocks { messages, groups, ..Mocks::new() }.service()
    }

    /// What each item shows: a body, or a read's seq.
    fn texts(items: &[SyncItem]) -> Vec<String> {
        items
            .iter()
            .map(|item| match &item.event {
                SyncEvent::Message(m) => m.body.as_str().to_owned(),
                SyncEvent::Read { seq, .. } => format!("read {seq}"),
                SyncEvent::Updated(update) => format!("updated {}", update.change.seq),
            })
            .collect()
    }

    /// The user is in A from the start, joins B (after its first entry), is removed from B
    /// and added again, with direct messages and a read in between.
    fn membership_story() -> (Arc<Mutex<Timeline>>, Vec<&'static str>) {
        let mut t = Timeline::new(&UserId::generate());
        let (a, b) = (ConversationId::generate(), ConversationId::generate());
        t.post(&b, "b before");
        t.join(&a);
        let a2 = t.post(&a, "a2");
        t.direct("d1");
        t.join(&b);
        t.post(&b, "b3");
        t.read(&a2);
        t.leave(&b);
        t.post(&b, "b while away");
        t.post(&a, "a3");
        t.join(&b);
        t.post(&b, "b7");
        t.direct("d2");
        let all = vec![
            "someone added you",
            "a2",
            "d1",
            "someone added you",
            "b3",
            "read 2",
            "someone removed you",
            "a3",
            "someone added you",
            "b7",
            "d2",
        ];
        (shared(t), all)
    }

    fn shared(timeline: Timeline) -> Arc<Mutex<Timeline>> {
        Arc::new(Mutex::new(timeline))
    }

    #[tokio::test]
    async fn sync_pages_through_joins_leaves_and_rejoins_losing_and_repeating_nothing() {
        let (timeline, all) = membership_story();
        let service = sync_service(&timeline);
        let me = timeline.lock().unwrap().user.clone();
        for limit in [1, 2, 3, 50] {
            let mut since = SyncCursor::START;
            let mut seen = Vec::new();
            loop {
                let page = service.sync(&me, since.clone(), Some(limit)).await.unwrap();
                assert!(page.items.len() <= limit as usize);
                seen.extend(page.items.iter().cloned());
                if page.has_more {
                    assert_eq!(Some(&page.next), page.items.last().map(|last| &last.cursor));
                }
                since = page.next;
                if !page.has_more {
                    break;
                }
            }
            let mut shown = texts(&seen);
            let mut expected: Vec<String> = all.iter().map(|s| (*s).to_owned()).collect();
            // Groups and the stream interleave by round; each in its own order.
            shown.sort();
            expected.sort();
            assert_eq!(shown, expected, "limit {limit}");
            let head = timeline.lock().unwrap().head();
            assert_eq!(since.stream, head, "limit {limit}");
            let again = service.sync(&me, since, Some(limit)).await.unwrap();
            assert!(again.items.is_empty() && !again.has_more);
        }
    }

    #[tokio::test]
    async fn a_full_last_page_says_nothing_more_follows() {
        let (timeline, all) = membership_story();
        let me = timeline.lock().unwrap().user.clone();
        let page =
            sync_service(&timeline).sync(&me, SyncCursor::START, Some(all.len() as u32)).await.unwrap();
        assert_eq!(page.items.len(), all.len());
        assert!(!page.has_more);
        let short =
            sync_service(&timeline).sync(&me, SyncCursor::START, Some(all.len() as u32 - 1)).await.unwrap();
        assert!(short.has_more);
        assert_eq!(short.next, short.items.last().unwrap().cursor);
    }

    #[tokio::test]
    async fn sync_from_an_old_numeric_cursor_of_a_user_without_groups_works_as_before() {
        let mut t = Timeline::new(&UserId::generate());
        for n in 1..=3 {
            t.direct(&format!("d{n}"));
        }
        let timeline = shared(t);
        let me = timeline.lock().unwrap().user.clone();
        let page = sync_service(&timeline).sync(&me, SyncCursor::at(cursor(1)), None).await.unwrap();
        assert_eq!(texts(&page.items), ["d2", "d3"]);
        assert_eq!(page.items[0].cursor, SyncCursor::at(cursor(2)));
        assert_eq!(page.next, SyncCursor::at(cursor(3)));
        let caught_up = sync_service(&timeline).sync(&me, page.next.clone(), None).await.unwrap();
        assert_eq!(caught_up, SyncPage { items: vec![], next: page.next, has_more: false });
    }

    #[tokio::test]
    async fn sync_from_a_cursor_beyond_the_stream_or_a_group_or_not_the_users_is_refused() {
        let (timeline, _) = membership_story();
        let me = timeline.lock().unwrap().user.clone();
        let service = sync_service(&timeline);
        let head = timeline.lock().unwrap().head();
        let err = service.sync(&me, SyncCursor::at(head.next()), None).await.unwrap_err();
        assert!(matches!(err, MessagingError::BeyondStream), "{err}");

        let groups = service.sync(&me, SyncCursor::START, None).await.unwrap().next.groups;
        let beyond: std::collections::BTreeMap<_, _> =
            groups.iter().map(|(g, s)| (g.clone(), s + 1)).collect();
        let err = service.sync(&me, SyncCursor { stream: head, groups: beyond }, None).await.unwrap_err();
        assert!(matches!(err, MessagingError::BeyondStream), "{err}");

        // A plain cursor of a user who is in groups at it.
        let err = service.sync(&me, SyncCursor::at(head), None).await.unwrap_err();
        assert!(matches!(err, MessagingError::InvalidCursor), "{err}");
    }

    #[tokio::test]
    async fn a_sync_reads_no_group_that_had_nothing_new_when_it_began() {
        let mut t = Timeline::new(&UserId::generate());
        let groups: Vec<ConversationId> = (0..5).map(|_| ConversationId::generate()).collect();
        for group in &groups {
            t.join(group);
            t.post(group, "old news");
        }
        let timeline = shared(t);
        let me = timeline.lock().unwrap().user.clone();
        let service = sync_service(&timeline);
        let caught_up = service.sync(&me, SyncCursor::START, None).await.unwrap().next;
        timeline.lock().unwrap().entry_reads = 0;
        let page = service.sync(&me, caught_up.clone(), None).await.unwrap();
        assert!(page.items.is_empty() && !page.has_more);
        assert_eq!(timeline.lock().unwrap().entry_reads, 0);
        // One group has news: only it is read.
        timeline.lock().unwrap().post(&groups[2], "news");
        let page = service.sync(&me, caught_up, None).await.unwrap();
        assert_eq!(texts(&page.items), ["news"]);
        assert_eq!(timeline.lock().unwrap().entry_reads, 1);
    }

    #[test]
    fn a_forged_conversation_cursor_is_refused() {
        let id = ConversationId::generate();
        let message = MessageId::generate();
        for forged in [
            "garbage".to_owned(),
            format!("1.{message}"),
            format!("01.{message}.{id}"),
            format!("-1.{message}.{id}"),
            format!("1.{message}.{id}.1"),
            format!("12345678901234567.{message}.{id}"),
            format!("1.{}.{id}", message.as_str().to_uppercase()),
            format!("1.{message}.{}", &id.as_str()[1..]),
            format!("1 .{message}.{id}"),
            "{\"$gt\":\"\"}".to_owned(),
        ] {
            assert_eq!(conversation_cursor::decode(&forged), Err(InvalidCursor), "{forged}");
        }
    }

    #[test]
    fn a_conversation_cursor_is_its_key_and_sorts_no_message_below_any() {
        let me = UserId::generate();
        for summary in [summary(&me, 0, true), summary(&me, 1_767_323_045_123_456, false)] {
            let key = summary.key();
            assert_eq!(conversation_cursor::decode(&conversation_cursor::encode(&key)), Ok(Some(key)));
        }
        assert_eq!(conversation_cursor::decode(""), Ok(None), "an empty cursor is the first page");
        let (with, without) = (summary(&me, 7, true).key(), summary(&me, 7, false).key());
        assert!(ConversationKey { id: with.id.clone(), ..without } < with);
    }
}
