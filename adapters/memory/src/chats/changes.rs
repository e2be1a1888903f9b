//! Edits, deletions and reactions of messages: each decided by `MessageState::apply` on the
//! message's state under the store's lock, and stored as an entry of its conversation's
//! sequence (and in a direct conversation, of both users' streams).

use application::ports::{
    ChangeOutcome, ChangeRequest, MessageChangeRepository, RepoResult, StoredChange, StreamPosition, Update,
};
use async_trait::async_trait;
use domain::{Actor, Applied, Chat, Content, Message, MessageBody, MessageChange, MessageId};

use super::{Chats, SeqEntry, Slot};
use crate::{lock, MemoryStore};

impl Chats {
    /// See `MessageChangeRepository::change`: everything is decided before anything is
    /// written, all in one step under the lock.
    fn change_message(&mut self, request: &ChangeRequest) -> ChangeOutcome {
        let Some(member) = self.member(&request.conversation, &request.actor) else {
            return ChangeOutcome::NotMember;
        };
        let role = member.role;
        let joined_seq = member.joined_seq;
        let Some(message) = self.read(&request.message) else { return ChangeOutcome::NotFound };
        if message.conversation_id != request.conversation || message.seq < joined_seq {
            return ChangeOutcome::NotFound;
        }
        let Some(conversation) = self.find(&request.conversation) else { return ChangeOutcome::NotMember };
        let mut state = message.state();
        let actor = Actor { user: request.actor.clone(), role };
        let kind = match state.apply(&actor, &request.change, request.window, request.at) {
            Err(refused) => return ChangeOutcome::Refused(refused),
            Ok(Applied::Unchanged) => return ChangeOutcome::Unchanged(message),
            Ok(Applied::Changed(kind)) => kind,
        };

        let seq = self.last_seq(&request.conversation) + 1;
        state.version = seq;
        let change = MessageChange {
            conversation_id: request.conversation.clone(),
            message_id: request.message.clone(),
            actor: request.actor.clone(),
            kind,
            at: request.at,
            seq,
        };
        self.by_seq.entry(request.conversation.clone()).or_default().push(SeqEntry::Change(change.clone()));
        // The conversation's last seq moves; its `updated_at` does not (a change does not
        // reorder conversation lists), nor does anyone's read position.
        let version = match conversation {
            Chat::Direct(_) => {
                if let Some(direct) = self.directs.get_mut(&request.conversation) {
                    direct.last_seq = seq;
                }
                0
            }
            Chat::Group(_) => match self.groups.get_mut(&request.conversation) {
                Some(row) => {
                    row.group.last_seq = seq;
                    row.version
                }
                None => 0,
            },
        };
        if let (Content::Deleted(_), Some(entry)) = (&state.content, self.entries.get_mut(&request.message)) {
            // The text of a deleted message is not kept.
            entry.body = MessageBody::withdrawn();
        }
        self.states.insert(request.message.clone(), state);
        let message = self.read(&request.message).unwrap_or(message);
        let positions = match &message.receiver_id {
            Some(receiver) => [&message.sender_id, receiver]
                .into_iter()
                .map(|user| StreamPosition {
                    user: user.clone(),
                    cursor: self.push_slot(user, Slot::Update(request.conversation.clone(), seq)),
                })
                .collect(),
            None => Vec::new(),
        };
        ChangeOutcome::Changed(StoredChange { update: Update { change, message }, positions, version })
    }
}

#[async_trait]
impl MessageChangeRepository for MemoryStore {
    async fn find(&self, message: &MessageId) -> RepoResult<Option<Message>> {
        Ok(lock(&self.chats).read(message))
    }

    async fn change(&self, request: &ChangeRequest) -> RepoResult<ChangeOutcome> {
        Ok(lock(&self.chats).change_message(request))
    }
}
