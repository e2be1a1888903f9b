//! Conversations of both kinds, their members and entries, and every user's stream: one
//! state, because a send or a group change moves all of them in one step.
//!
//! Direct conversations are here; groups (creating, changing, the membership notices) are
//! in `groups`; edits, deletions and reactions of messages in `changes`.

mod changes;
mod groups;

use std::collections::{BTreeMap, HashMap};

use application::ports::{
    consecutive_after, consecutive_entries, Appended, ConversationKey, ConversationPage,
    ConversationRepository, ConversationSummary, GroupAppended, GroupEntry, MessageRepository, Notice,
    ReadMoved, RepoError, RepoResult, StoredMessage, StreamEntry, StreamItem, Update,
};
use async_trait::async_trait;
use domain::{
    Chat, ClientMessageId, Conversation, ConversationId, Cursor, Group, Member, Message, MessageChange,
    MessageId, MessageState, ParticipantPair, ReplyQuote, Role, Seq, UserId,
};

use crate::{lock, MemoryStore};

#[derive(Default)]
pub(crate) struct Chats {
    directs: HashMap<ConversationId, Conversation>,
    /// The direct conversation of each pair: one per pair, ever.
    by_pair: HashMap<ParticipantPair, ConversationId>,
    groups: HashMap<ConversationId, GroupRow>,
    /// The members of each conversation (of both kinds), by user.
    members: HashMap<ConversationId, BTreeMap<UserId, Member>>,
    /// Every message and system entry as it was appended (of a deleted one, without its text).
    entries: HashMap<MessageId, Message>,
    /// The state of each message that changed since it was appended: its text, reactions or
    /// tombstone now, and the seq of its last change.
    states: HashMap<MessageId, MessageState>,
    /// The positions of each direct message in its sender's and its receiver's streams.
    positions: HashMap<MessageId, (Cursor, Cursor)>,
    /// Each conversation's entries by id (creation order), for history pages.
    by_id: HashMap<ConversationId, BTreeMap<MessageId, Seq>>,
    /// Each conversation's entries by seq: seq `n` is at index `n - 1`.
    by_seq: HashMap<ConversationId, Vec<SeqEntry>>,
    /// Each user's stream: position `n` is at index `n - 1`.
    streams: HashMap<UserId, Vec<Slot>>,
    /// The entry each sender stored under each of their client ids.
    client_ids: HashMap<(UserId, ClientMessageId), MessageId>,
}

struct GroupRow {
    group: Group,
    /// The membership version: 1 at creation, one more with every change.
    version: u64,
}

/// What one seq of a conversation holds: a message appended at it, or a change of one.
enum SeqEntry {
    Message(MessageId),
    Change(MessageChange),
}

/// What one position of a user's stream holds.
enum Slot {
    Message(MessageId),
    /// The change entry of a direct conversation at a seq.
    Update(ConversationId, Seq),
    Notice(Notice),
}

impl Chats {
    fn is_taken(&self, id: &ConversationId) -> bool {
        self.directs.contains_key(id) || self.groups.contains_key(id)
    }

    fn find_or_insert(&mut self, candidate: &Conversation) -> RepoResult<Conversation> {
        if let Some(existing) = self.find_by_participants(&candidate.participants) {
            return Ok(existing.clone());
        }
        if self.is_taken(&candidate.id) {
            return Err(RepoError::Conflict);
        }
        self.insert_direct(candidate.clone());
        Ok(candidate.clone())
    }

    /// Stores a new direct conversation with both users as members, nothing read.
    fn insert_direct(&mut self, conversation: Conversation) {
        let members = [conversation.participants.first(), conversation.participants.second()]
            .map(|user| {
                (user.clone(), Member::joining(user.clone(), Role::Member, conversation.created_at, 1))
            })
            .map(|(user, member)| (user, Member { read_seq: 0, ..member }));
        self.members.insert(conversation.id.clone(), members.into_iter().collect());
        self.by_pair.insert(conversation.participants.clone(), conversation.id.clone());
        self.directs.insert(conversation.id.clone(), conversation);
    }

    fn find_by_participants(&self, pair: &ParticipantPair) -> Option<&Conversation> {
        self.by_pair.get(pair).and_then(|id| self.directs.get(id))
    }

    fn find(&self, id: &ConversationId) -> Option<Chat> {
        match (self.directs.get(id), self.groups.get(id)) {
            (Some(direct), _) => Some(Chat::Direct(direct.clone())),
            (None, Some(row)) => Some(Chat::Group(row.group.clone())),
            (None, None) => None,
        }
    }

    fn member(&self, conversation: &ConversationId, user: &UserId) -> Option<&Member> {
        self.members.get(conversation).and_then(|members| members.get(user))
    }

    /// The conversation's members in joining order (of those who joined with one entry, by id).
    fn members_of(&self, conversation: &ConversationId) -> Vec<Member> {
        let mut members: Vec<Member> =
            self.members.get(conversation).map(|m| m.values().cloned().collect()).unwrap_or_default();
        members.sort_by(|x, y| (x.joined_seq, &x.user_id).cmp(&(y.joined_seq, &y.user_id)));
        members
    }

    /// The newest `limit` entries of the conversation at or after `from_seq`, below
    /// `before`, oldest first.
    fn history(
        &self,
        conversation: &ConversationId,
        from_seq: Seq,
        before: Option<&MessageId>,
        limit: u32,
    ) -> Vec<Message> {
        let Some(ids) = self.by_id.get(conversation) else { return Vec::new() };
        let below: Box<dyn DoubleEndedIterator<Item = (&MessageId, &Seq)>> = match before {
            Some(before) => Box::new(ids.range(..before)),
            None => Box::new(ids.iter()),
        };
        let mut page: Vec<Message> = below
            .rev()
            .filter(|(_, seq)| **seq >= from_seq)
            .take(limit as usize)
            .filter_map(|(id, _)| self.read(id))
            .collect();
        page.reverse();
        page
    }

    /// The message or system entry `id` as it stands now: its current text, reactions or
    /// tombstone, and what it shows now of the message it replies to.
    fn read(&self, id: &MessageId) -> Option<Message> {
        let entry = self.entries.get(id)?;
        let mut message = match self.states.get(id) {
            Some(state) => entry.clone().with_state(state.clone()),
            None => entry.clone(),
        };
        if let Some(quote) = &message.reply_to {
            message.reply_to = Some(self.quote(quote));
        }
        Some(message)
    }

    /// The quote of the message `quote` names, as that message stands now.
    fn quote(&self, quote: &ReplyQuote) -> ReplyQuote {
        match self.entries.get(&quote.message_id) {
            Some(original) => {
                let content = match self.states.get(&original.id) {
                    Some(state) => state.content.clone(),
                    None => original.content(),
                };
                ReplyQuote::of(original, &content)
            }
            None => quote.clone(),
        }
    }

    /// The change entry of `conversation` at `seq`, with its message as it stands now.
    fn update(&self, conversation: &ConversationId, seq: Seq) -> Option<Update> {
        let entry = self.by_seq.get(conversation)?.get(index(seq).checked_sub(1)?)?;
        let SeqEntry::Change(change) = entry else { return None };
        Some(Update { change: change.clone(), message: self.read(&change.message_id)? })
    }

    /// Entries (messages and changes) with a seq in `(after, until]`, the first `limit`, in
    /// seq order.
    fn entries_between(
        &self,
        conversation: &ConversationId,
        after: Seq,
        until: Option<Seq>,
        limit: u32,
    ) -> Vec<GroupEntry> {
        let Some(all) = self.by_seq.get(conversation) else { return Vec::new() };
        let end = until.map_or(all.len(), |until| all.len().min(index(until)));
        let entries = all
            .get(index(after).min(end)..end)
            .unwrap_or_default()
            .iter()
            .take(limit as usize)
            .filter_map(|entry| match entry {
                SeqEntry::Message(id) => self.read(id).map(GroupEntry::Message),
                SeqEntry::Change(change) => Some(GroupEntry::Update(Update {
                    change: change.clone(),
                    message: self.read(&change.message_id)?,
                })),
            })
            .collect();
        consecutive_entries(after, entries)
    }

    fn last_seq(&self, conversation: &ConversationId) -> Seq {
        self.by_seq.get(conversation).map_or(0, |ids| ids.len() as Seq)
    }

    /// Stores `entry` at the conversation's next seq; returns it as stored.
    fn push_entry(&mut self, conversation: &ConversationId, entry: &Message) -> Message {
        let seq = self.last_seq(conversation) + 1;
        let entry = Message { conversation_id: conversation.clone(), seq, ..entry.clone() };
        self.by_seq.entry(conversation.clone()).or_default().push(SeqEntry::Message(entry.id.clone()));
        self.by_id.entry(conversation.clone()).or_default().insert(entry.id.clone(), seq);
        if let Some(client_id) = &entry.client_id {
            self.client_ids.insert((entry.sender_id.clone(), client_id.clone()), entry.id.clone());
        }
        self.entries.insert(entry.id.clone(), entry.clone());
        entry
    }

    /// Moves `user`'s read position in the conversation to `entry` if it is ahead; whether
    /// it moved.
    fn move_read(&mut self, user: &UserId, entry: &Message) -> bool {
        let member = self.members.get_mut(&entry.conversation_id).and_then(|members| members.get_mut(user));
        match member {
            Some(member) if member.read_seq < entry.seq => {
                member.read_seq = entry.seq;
                member.last_read_message_id = Some(entry.id.clone());
                true
            }
            _ => false,
        }
    }

    /// Appends `slot` to `user`'s stream; returns its position.
    fn push_slot(&mut self, user: &UserId, slot: Slot) -> Cursor {
        let stream = self.streams.entry(user.clone()).or_default();
        stream.push(slot);
        position(stream.len())
    }

    fn summary(&self, conversation: Chat, me: Member) -> ConversationSummary {
        let last_message = self
            .by_id
            .get(conversation.id())
            .and_then(|ids| ids.keys().next_back())
            .and_then(|id| self.read(id));
        let unread = self.unread(conversation.id(), me.read_seq);
        ConversationSummary { conversation, last_message, me, unread }
    }

    /// The messages and system entries of the conversation after `read_seq` that are not
    /// deleted: change entries count for nothing.
    fn unread(&self, conversation: &ConversationId, read_seq: Seq) -> u64 {
        let Some(all) = self.by_seq.get(conversation) else { return 0 };
        let after = all.get(index(read_seq).min(all.len())..).unwrap_or_default();
        after
            .iter()
            .filter(|entry| match entry {
                SeqEntry::Message(id) => {
                    self.states.get(id).is_none_or(|state| state.content.body().is_some())
                }
                SeqEntry::Change(_) => false,
            })
            .count() as u64
    }

    /// The user's conversations below `after` in [`ConversationKey`] order, the first `limit`.
    fn page_for_user(
        &self,
        user: &UserId,
        after: Option<&ConversationKey>,
        limit: u32,
    ) -> Vec<ConversationSummary> {
        let mut mine: Vec<(ConversationKey, ConversationSummary)> = self
            .members
            .iter()
            .filter_map(|(id, members)| Some((self.find(id)?, members.get(user)?.clone())))
            .map(|(conversation, me)| {
                let summary = self.summary(conversation, me);
                (summary.key(), summary)
            })
            .filter(|(key, _)| after.is_none_or(|after| key < after))
            .collect();
        mine.sort_by(|(x, _), (y, _)| y.cmp(x));
        mine.into_iter().take(limit as usize).map(|(_, summary)| summary).collect()
    }

    /// See `MessageRepository::append`: everything is checked before anything is written.
    fn append(&mut self, candidate: &Conversation, message: &Message) -> RepoResult<Appended> {
        if let Some(earlier) = self.find_by_client_id(message) {
            return Ok(Appended::Existing(self.stored(earlier)));
        }
        if self.entries.contains_key(&message.id) {
            return Err(RepoError::Conflict);
        }
        let Some(receiver) = message.receiver_id.clone() else {
            return Err(RepoError::corrupt("direct message's receiver", "none"));
        };
        let existing = self.by_pair.get(&candidate.participants).cloned();
        let conversation_id = match existing {
            Some(id) => id,
            None if self.is_taken(&candidate.id) => return Err(RepoError::Conflict),
            None => {
                self.insert_direct(Conversation { updated_at: message.created_at, ..candidate.clone() });
                candidate.id.clone()
            }
        };
        let entry = self.push_entry(&conversation_id, message);
        if let Some(conversation) = self.directs.get_mut(&conversation_id) {
            conversation.updated_at = conversation.updated_at.max(entry.created_at);
            conversation.last_seq = entry.seq;
        }
        self.move_read(&entry.sender_id, &entry);
        let sender_cursor = self.push_slot(&entry.sender_id, Slot::Message(entry.id.clone()));
        let receiver_cursor = self.push_slot(&receiver, Slot::Message(entry.id.clone()));
        self.positions.insert(entry.id.clone(), (sender_cursor, receiver_cursor));
        Ok(Appended::Created(StoredMessage { message: entry, sender_cursor, receiver_cursor }))
    }

    /// A stored entry as it stands now, with its stream positions (a group entry has none:
    /// `Cursor::START`).
    fn stored(&self, message: &Message) -> StoredMessage {
        let (sender_cursor, receiver_cursor) =
            self.positions.get(&message.id).copied().unwrap_or((Cursor::START, Cursor::START));
        let message = self.read(&message.id).unwrap_or_else(|| message.clone());
        StoredMessage { message, sender_cursor, receiver_cursor }
    }

    /// The sender's earlier entry with the same client id, if any.
    fn find_by_client_id(&self, message: &Message) -> Option<&Message> {
        let client_id = message.client_id.clone()?;
        let id = self.client_ids.get(&(message.sender_id.clone(), client_id))?;
        self.entries.get(id)
    }

    /// See `MessageRepository::append_to_group`.
    fn append_to_group(&mut self, message: &Message) -> RepoResult<GroupAppended> {
        if let Some(earlier) = self.find_by_client_id(message) {
            return Ok(GroupAppended::Existing(self.stored(earlier).message));
        }
        if self.entries.contains_key(&message.id) {
            return Err(RepoError::Conflict);
        }
        let group_id = &message.conversation_id;
        if !self.groups.contains_key(group_id) || self.member(group_id, &message.sender_id).is_none() {
            return Ok(GroupAppended::NotMember);
        }
        let entry = self.push_entry(group_id, message);
        let Some(row) = self.groups.get_mut(group_id) else { return Ok(GroupAppended::NotMember) };
        row.group.last_seq = entry.seq;
        row.group.updated_at = row.group.updated_at.max(entry.created_at);
        let version = row.version;
        self.move_read(&entry.sender_id, &entry);
        Ok(GroupAppended::Created { message: entry, version })
    }

    /// See `MessageRepository::mark_read`.
    fn mark_read(&mut self, conversation: &ConversationId, user: &UserId, up_to: &MessageId) -> ReadMoved {
        let Some(member) = self.member(conversation, user) else { return ReadMoved::NotMember };
        let Some(entry) = self.entries.get(up_to) else { return ReadMoved::UnknownMessage };
        if &entry.conversation_id != conversation || entry.seq < member.joined_seq {
            return ReadMoved::UnknownMessage;
        }
        if entry.seq <= member.read_seq {
            return ReadMoved::NotAhead { seq: member.read_seq };
        }
        let entry = entry.clone();
        self.move_read(user, &entry);
        let notice =
            Notice::Read { conversation: conversation.clone(), seq: entry.seq, message_id: entry.id.clone() };
        let cursor = self.push_slot(user, Slot::Notice(notice));
        ReadMoved::Moved { seq: entry.seq, cursor }
    }

    fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> Vec<StreamItem> {
        let Some(stream) = self.streams.get(user) else { return Vec::new() };
        // Index `n` holds position `n + 1`: the items after `after` start at its position.
        let start = usize::try_from(after.position()).unwrap_or(usize::MAX);
        let items = stream
            .iter()
            .enumerate()
            .skip(start)
            .take(limit as usize)
            .filter_map(|(index, slot)| {
                let entry = match slot {
                    Slot::Message(id) => StreamEntry::Message(self.read(id)?),
                    Slot::Update(conversation, seq) => StreamEntry::Update(self.update(conversation, *seq)?),
                    Slot::Notice(notice) => StreamEntry::Notice(notice.clone()),
                };
                Some(StreamItem { cursor: position(index + 1), entry })
            })
            .collect();
        consecutive_after(after, items)
    }

    fn stream_head(&self, user: &UserId) -> Cursor {
        position(self.streams.get(user).map_or(0, Vec::len))
    }
}

/// The stream position of the `n`-th slot.
fn position(n: usize) -> Cursor {
    Cursor::new(n as u64).unwrap_or(Cursor::START)
}

/// The index in a seq-ordered list where the entries after `seq` start.
fn index(seq: Seq) -> usize {
    usize::try_from(seq).unwrap_or(usize::MAX)
}

#[async_trait]
impl ConversationRepository for MemoryStore {
    async fn find_or_insert(&self, candidate: &Conversation) -> RepoResult<Conversation> {
        lock(&self.chats).find_or_insert(candidate)
    }

    async fn find_by_participants(&self, pair: &ParticipantPair) -> RepoResult<Option<Conversation>> {
        Ok(lock(&self.chats).find_by_participants(pair).cloned())
    }

    async fn find(&self, id: &ConversationId) -> RepoResult<Option<Chat>> {
        Ok(lock(&self.chats).find(id))
    }

    async fn member(&self, conversation: &ConversationId, user: &UserId) -> RepoResult<Option<Member>> {
        Ok(lock(&self.chats).member(conversation, user).cloned())
    }

    async fn page(
        &self,
        pair: &ParticipantPair,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Option<ConversationPage>> {
        let chats = lock(&self.chats);
        Ok(chats.find_by_participants(pair).map(|conversation| ConversationPage {
            conversation: conversation.clone(),
            messages: chats.history(&conversation.id, 0, before.as_ref(), limit),
        }))
    }

    async fn page_for_user(
        &self,
        user: &UserId,
        after: Option<ConversationKey>,
        limit: u32,
    ) -> RepoResult<Vec<ConversationSummary>> {
        Ok(lock(&self.chats).page_for_user(user, after.as_ref(), limit))
    }
}

#[async_trait]
impl MessageRepository for MemoryStore {
    async fn append(&self, conversation: &Conversation, message: &Message) -> RepoResult<Appended> {
        lock(&self.chats).append(conversation, message)
    }

    async fn append_to_group(&self, message: &Message) -> RepoResult<GroupAppended> {
        lock(&self.chats).append_to_group(message)
    }

    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        from_seq: Seq,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Vec<Message>> {
        Ok(lock(&self.chats).history(conversation, from_seq, before.as_ref(), limit))
    }

    async fn entries(
        &self,
        conversation: &ConversationId,
        after: Seq,
        until: Option<Seq>,
        limit: u32,
    ) -> RepoResult<Vec<GroupEntry>> {
        Ok(lock(&self.chats).entries_between(conversation, after, until, limit))
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        up_to: &MessageId,
    ) -> RepoResult<ReadMoved> {
        Ok(lock(&self.chats).mark_read(conversation, user, up_to))
    }

    async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>> {
        Ok(lock(&self.chats).stream(user, after, limit))
    }

    async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor> {
        Ok(lock(&self.chats).stream_head(user))
    }

    async fn stream_heads(&self, users: &[UserId]) -> RepoResult<Vec<(UserId, Cursor)>> {
        let chats = lock(&self.chats);
        let users: std::collections::HashSet<&UserId> = users.iter().collect();
        Ok(users
            .into_iter()
            .map(|user| (user.clone(), chats.stream_head(user)))
            .filter(|(_, head)| *head != Cursor::START)
            .collect())
    }
}
