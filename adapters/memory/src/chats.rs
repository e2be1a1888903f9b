//! Conversations, their messages and every user's stream: one state, because a send changes
//! all of them in one step (`MessageRepository::append`).

use std::collections::{BTreeSet, HashMap};

use application::ports::{
    Appended, ConversationKey, ConversationPage, ConversationRepository, ConversationSummary,
    MessageRepository, RepoError, RepoResult, StoredMessage, StreamItem,
};
use async_trait::async_trait;
use domain::{
    ClientMessageId, Conversation, ConversationId, Cursor, Message, MessageId, ParticipantPair, UserId,
};

use crate::{lock, MemoryStore};

#[derive(Default)]
pub(crate) struct Chats {
    conversations: HashMap<ConversationId, Conversation>,
    /// The conversation of each pair: one per pair, ever.
    by_pair: HashMap<ParticipantPair, ConversationId>,
    messages: HashMap<MessageId, StoredMessage>,
    /// Each conversation's message ids, in id (creation) order.
    histories: HashMap<ConversationId, BTreeSet<MessageId>>,
    /// Each user's stream: the message at position `n` is at index `n - 1`.
    streams: HashMap<UserId, Vec<MessageId>>,
    /// The message each sender stored under each of their client ids.
    client_ids: HashMap<(UserId, ClientMessageId), MessageId>,
}

impl Chats {
    fn find_or_insert(&mut self, candidate: &Conversation) -> RepoResult<Conversation> {
        if let Some(existing) = self.find_by_participants(&candidate.participants) {
            return Ok(existing.clone());
        }
        if self.conversations.contains_key(&candidate.id) {
            return Err(RepoError::Conflict);
        }
        self.by_pair.insert(candidate.participants.clone(), candidate.id.clone());
        self.conversations.insert(candidate.id.clone(), candidate.clone());
        Ok(candidate.clone())
    }

    fn find_by_participants(&self, pair: &ParticipantPair) -> Option<&Conversation> {
        self.by_pair.get(pair).and_then(|id| self.conversations.get(id))
    }

    /// The newest `limit` messages of the conversation below `before`, oldest first.
    fn history(&self, conversation: &ConversationId, before: Option<&MessageId>, limit: u32) -> Vec<Message> {
        let Some(ids) = self.histories.get(conversation) else { return Vec::new() };
        let below: Box<dyn DoubleEndedIterator<Item = &MessageId>> = match before {
            Some(before) => Box::new(ids.range(..before)),
            None => Box::new(ids.iter()),
        };
        let mut page: Vec<Message> =
            below.rev().take(limit as usize).filter_map(|id| self.message(id)).cloned().collect();
        page.reverse();
        page
    }

    fn message(&self, id: &MessageId) -> Option<&Message> {
        self.messages.get(id).map(|stored| &stored.message)
    }

    fn summary(&self, conversation: &Conversation) -> ConversationSummary {
        let last_message = self
            .histories
            .get(&conversation.id)
            .and_then(BTreeSet::last)
            .and_then(|id| self.message(id))
            .cloned();
        ConversationSummary { conversation: conversation.clone(), last_message }
    }

    /// The user's conversations below `after` in [`ConversationKey`] order, the first `limit`.
    fn page_for_user(
        &self,
        user: &UserId,
        after: Option<&ConversationKey>,
        limit: u32,
    ) -> Vec<ConversationSummary> {
        let mut mine: Vec<(ConversationKey, ConversationSummary)> = self
            .conversations
            .values()
            .filter(|conversation| conversation.participants.contains(user))
            .map(|conversation| {
                let summary = self.summary(conversation);
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
            return Ok(Appended::Existing(earlier.clone()));
        }
        if self.messages.contains_key(&message.id) {
            return Err(RepoError::Conflict);
        }
        let existing = self.by_pair.get(&candidate.participants).cloned();
        if existing.is_none() && self.conversations.contains_key(&candidate.id) {
            return Err(RepoError::Conflict);
        }
        let sender_cursor = self.stream_head(&message.sender_id).next();
        let receiver_cursor = self.stream_head(&message.receiver_id).next();

        let conversation_id = match existing {
            Some(id) => {
                if let Some(conversation) = self.conversations.get_mut(&id) {
                    conversation.updated_at = conversation.updated_at.max(message.created_at);
                }
                id
            }
            None => {
                let conversation = Conversation { updated_at: message.created_at, ..candidate.clone() };
                self.by_pair.insert(conversation.participants.clone(), conversation.id.clone());
                self.conversations.insert(conversation.id.clone(), conversation);
                candidate.id.clone()
            }
        };
        let stored = StoredMessage {
            message: Message { conversation_id: conversation_id.clone(), ..message.clone() },
            sender_cursor,
            receiver_cursor,
        };
        self.histories.entry(conversation_id).or_default().insert(message.id.clone());
        for user in [&message.sender_id, &message.receiver_id] {
            self.streams.entry(user.clone()).or_default().push(message.id.clone());
        }
        if let Some(client_id) = &message.client_id {
            self.client_ids.insert((message.sender_id.clone(), client_id.clone()), message.id.clone());
        }
        self.messages.insert(message.id.clone(), stored.clone());
        Ok(Appended::Created(stored))
    }

    /// The sender's earlier message with the same client id, if any.
    fn find_by_client_id(&self, message: &Message) -> Option<&StoredMessage> {
        let client_id = message.client_id.clone()?;
        let id = self.client_ids.get(&(message.sender_id.clone(), client_id))?;
        self.messages.get(id)
    }

    fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> Vec<StreamItem> {
        let Some(stream) = self.streams.get(user) else { return Vec::new() };
        // Index `n` holds position `n + 1`: the items after `after` start at its position.
        let start = usize::try_from(after.position()).unwrap_or(usize::MAX);
        stream
            .iter()
            .skip(start)
            .take(limit as usize)
            .filter_map(|id| self.messages.get(id))
            .filter_map(|stored| {
                Some(StreamItem { cursor: stored.cursor_for(user)?, message: stored.message.clone() })
            })
            .collect()
    }

    fn stream_head(&self, user: &UserId) -> Cursor {
        self.streams
            .get(user)
            .and_then(|stream| stream.last())
            .and_then(|id| self.messages.get(id))
            .and_then(|stored| stored.cursor_for(user))
            .unwrap_or(Cursor::START)
    }
}

#[async_trait]
impl ConversationRepository for MemoryStore {
    async fn find_or_insert(&self, candidate: &Conversation) -> RepoResult<Conversation> {
        lock(&self.chats).find_or_insert(candidate)
    }

    async fn find_by_participants(&self, pair: &ParticipantPair) -> RepoResult<Option<Conversation>> {
        Ok(lock(&self.chats).find_by_participants(pair).cloned())
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
            messages: chats.history(&conversation.id, before.as_ref(), limit),
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

    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Vec<Message>> {
        Ok(lock(&self.chats).history(conversation, before.as_ref(), limit))
    }

    async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>> {
        Ok(lock(&self.chats).stream(user, after, limit))
    }

    async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor> {
        Ok(lock(&self.chats).stream_head(user))
    }
}
