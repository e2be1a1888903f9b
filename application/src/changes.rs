//! Changes to sent messages: edit, delete, react, take a reaction back.
//!
//! Each change is decided twice on purpose: first by [`MessageState::apply`] on the message as
//! read, for early answers without taking any lock (a stranger's edit, a closed window, a
//! deleted message), then by the store under the conversation's lock on the state there
//! (`MessageChangeRepository::change`), which is what counts. So nothing is decided on a stale
//! read, and the same request twice — one after the other or racing — is one change.

use std::sync::Arc;

use domain::{
    Actor, Change, ChangeError, ConversationId, Cursor, EditWindow, Emoji, Member, Message, MessageBody,
    MessageId, UserId,
};

use crate::error::{embeds_application_error, ApplicationError};
use crate::ports::{
    ChangeOutcome, ChangeRequest, Clock, ConversationRepository, Event, GroupRepository,
    MessageChangeRepository, Notifier, RepoError, StoredChange,
};

/// What a caller of the message-change use cases can act on.
#[derive(Debug, thiserror::Error)]
pub enum MessageChangeError {
    /// No such conversation, or one the user never was a member of: the same answer, so that
    /// conversations can't be probed.
    #[error("conversation not found")]
    ConversationNotFound,
    /// The user was a member of the group and is not any more: they change nothing in it
    /// (the answer a send to it gets too).
    #[error("you are no longer a member of this conversation")]
    NoLongerMember,
    /// The conversation has no such message, or not one the user can see (a group entry
    /// from before they joined).
    #[error("message not found in this conversation")]
    MessageNotFound,
    /// The change rules refuse: not the sender's to edit (`NotSender`) or delete
    /// (`MayNotDelete`), a system entry (`SystemEntry`) — forbidden; the message is deleted
    /// (`Deleted`) — a conflict; the edit window closed (`EditWindowClosed`) or one emoji
    /// too many (`Reaction`) — a bad request.
    #[error(transparent)]
    Refused(#[from] ChangeError),
    #[error(transparent)]
    Failed(#[from] ApplicationError),
}

embeds_application_error!(MessageChangeError: RepoError);

/// What a change request ended in. Either way the caller answers with the message as it
/// stands ([`message`](Self::message)).
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeResult {
    /// The message changed, and the change was announced to the conversation's members
    /// (`messageUpdated`). A device that missed the announcement gets it from `sync`.
    Changed(StoredChange),
    /// The message showed this change already: nothing was stored or announced.
    Unchanged(Message),
}

impl ChangeResult {
    /// The message as it stands after the request.
    pub fn message(&self) -> &Message {
        match self {
            ChangeResult::Changed(stored) => &stored.update.message,
            ChangeResult::Unchanged(message) => message,
        }
    }
}

pub struct MessageChangeService {
    conversations: Arc<dyn ConversationRepository>,
    changes: Arc<dyn MessageChangeRepository>,
    groups: Arc<dyn GroupRepository>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
    /// `messages.edit_window`.
    window: EditWindow,
}

impl MessageChangeService {
    pub fn new(
        conversations: Arc<dyn ConversationRepository>,
        changes: Arc<dyn MessageChangeRepository>,
        groups: Arc<dyn GroupRepository>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        window: EditWindow,
    ) -> Self {
        Self { conversations, changes, groups, notifier, clock, window }
    }

    /// Replaces the text of my message, within the edit window. The same text again changes
    /// nothing (also after the window closed).
    pub async fn edit(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        message: &MessageId,
        body: MessageBody,
    ) -> Result<ChangeResult, MessageChangeError> {
        self.change(me, conversation, message, Change::Edit(body)).await
    }

    /// Deletes a message: my own, or in a group I am an admin or the owner of, anyone's. It
    /// becomes a tombstone, without text or reactions. Deleting it again changes nothing.
    pub async fn delete(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        message: &MessageId,
    ) -> Result<ChangeResult, MessageChangeError> {
        self.change(me, conversation, message, Change::Delete).await
    }

    /// Adds my reaction with `emoji`; once per emoji, on a message that is not deleted.
    pub async fn react(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        message: &MessageId,
        emoji: Emoji,
    ) -> Result<ChangeResult, MessageChangeError> {
        self.change(me, conversation, message, Change::React(emoji)).await
    }

    /// Takes my reaction with `emoji` back; without one (or on a deleted message) nothing
    /// changes.
    pub async fn unreact(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        message: &MessageId,
        emoji: Emoji,
    ) -> Result<ChangeResult, MessageChangeError> {
        self.change(me, conversation, message, Change::Unreact(emoji)).await
    }

    async fn change(
        &self,
        me: &UserId,
        conversation: &ConversationId,
        message: &MessageId,
        change: Change,
    ) -> Result<ChangeResult, MessageChangeError> {
        let member = self.member(me, conversation).await?;
        let current = match self.changes.find(message).await? {
            Some(current) if &current.conversation_id == conversation && current.seq >= member.joined_seq => {
                current
            }
            _ => return Err(MessageChangeError::MessageNotFound),
        };
        let actor = Actor { user: me.clone(), role: member.role };
        let at = self.clock.now();
        // The early answer; the store decides again under the lock.
        current.state().apply(&actor, &change, self.window, at)?;
        let request = ChangeRequest {
            conversation: conversation.clone(),
            message: message.clone(),
            actor: me.clone(),
            change,
            at,
            window: self.window,
        };
        match self.changes.change(&request).await? {
            ChangeOutcome::Changed(stored) => {
                self.announce(&stored).await;
                Ok(ChangeResult::Changed(stored))
            }
            ChangeOutcome::Unchanged(current) => Ok(ChangeResult::Unchanged(current)),
            ChangeOutcome::NotMember => Err(self.outsider(me, conversation).await?),
            ChangeOutcome::NotFound => Err(MessageChangeError::MessageNotFound),
            ChangeOutcome::Refused(refused) => Err(refused.into()),
        }
    }

    async fn member(&self, me: &UserId, conversation: &ConversationId) -> Result<Member, MessageChangeError> {
        match self.conversations.member(conversation, me).await? {
            Some(member) => Ok(member),
            None => Err(self.outsider(me, conversation).await?),
        }
    }

    /// Why someone who is not a member of `conversation` is refused: they were once, or never.
    async fn outsider(
        &self,
        me: &UserId,
        conversation: &ConversationId,
    ) -> Result<MessageChangeError, RepoError> {
        Ok(match self.groups.left_after(me, conversation, Cursor::START).await? {
            Some(_) => MessageChangeError::NoLongerMember,
            None => MessageChangeError::ConversationNotFound,
        })
    }

    /// Tells the conversation's members about a stored change: each user of a direct
    /// conversation at the change's position in their stream, a group's members at the
    /// membership version it was stored under. Not told is not lost: the change is stored
    /// and a device reads it with its next sync or catch-up.
    async fn announce(&self, stored: &StoredChange) {
        let update = &stored.update;
        if update.message.receiver_id.is_none() {
            let event = Event::GroupUpdated { update: update.clone(), version: stored.version };
            if let Err(error) = self.notifier.notify_group(&update.change.conversation_id, &event).await {
                tracing::warn!(error = %error, message_id = %update.message.id, "group message change stored but not announced");
            }
            return;
        }
        for position in &stored.positions {
            let event = Event::MessageUpdated { update: update.clone(), cursor: position.cursor };
            if let Err(error) = self.notifier.notify(std::slice::from_ref(&position.user), &event).await {
                tracing::warn!(error = %error, message_id = %update.message.id, "message change stored but not announced");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use chrono::{TimeDelta, TimeZone, Utc};
    use domain::{
        Applied, ChangeKind, Content, Cursor, Message, MessageChange, MessageState, ReactionError, Reactions,
        Role, Seq, SystemEvent, Timestamp,
    };

    use super::*;
    use crate::ports::{
        MockClock, MockConversationRepository, MockGroupRepository, MockMessageChangeRepository,
        MockNotifier, StreamPosition, Update,
    };

    fn now() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 5, 6, 7, 8, 9).unwrap()
    }

    fn body(raw: &str) -> MessageBody {
        MessageBody::parse(raw).unwrap()
    }

    fn emoji(raw: &str) -> Emoji {
        Emoji::parse(raw).unwrap()
    }

    type Meanwhile = Box<dyn FnOnce(&mut Store) + Send>;

    /// A message as the store holds it: the entry, and its state now.
    #[derive(Debug, Clone)]
    struct CurrentMessage {
        message: Message,
        state: MessageState,
    }

    impl CurrentMessage {
        fn read(&self) -> Message {
            self.message.clone().with_state(self.state.clone())
        }
    }

    /// A store of messages and members that answers the port as its contract says (the
    /// reference: it decides with `MessageState::apply` on the state it holds).
    #[derive(Default)]
    struct Store {
        messages: Vec<CurrentMessage>,
        members: Vec<(ConversationId, Member)>,
        last_seq: HashMap<ConversationId, Seq>,
        /// The last position of each user's stream.
        heads: HashMap<UserId, u64>,
        /// Every request the store was asked to apply.
        requests: Vec<ChangeRequest>,
        /// What other requests do between the use case's read and the next change.
        meanwhile: Option<Meanwhile>,
        /// Every call fails as an unreachable store does.
        down: bool,
        /// What the service announced: to a user, or (`None`) to the message's group.
        announced: Vec<(Option<UserId>, Event)>,
        /// Members removed from a conversation.
        removed: Vec<(ConversationId, UserId)>,
    }

    impl Store {
        fn member(&self, conversation: &ConversationId, user: &UserId) -> Option<Member> {
            self.members.iter().find(|(c, m)| c == conversation && &m.user_id == user).map(|(_, m)| m.clone())
        }

        fn message(&mut self, id: &MessageId) -> &mut CurrentMessage {
            self.messages.iter_mut().find(|m| &m.message.id == id).unwrap()
        }

        fn position(&mut self, user: &UserId) -> StreamPosition {
            let head = self.heads.entry(user.clone()).or_insert(0);
            *head += 1;
            StreamPosition { user: user.clone(), cursor: Cursor::new(*head).unwrap() }
        }

        fn change(&mut self, request: &ChangeRequest) -> ChangeOutcome {
            self.requests.push(request.clone());
            if let Some(meanwhile) = self.meanwhile.take() {
                meanwhile(self);
            }
            let Some(member) = self.member(&request.conversation, &request.actor) else {
                return ChangeOutcome::NotMember;
            };
            let Some(index) = self.messages.iter().position(|m| {
                m.message.id == request.message
                    && m.message.conversation_id == request.conversation
                    && m.message.seq >= member.joined_seq
            }) else {
                return ChangeOutcome::NotFound;
            };
            let actor = Actor { user: request.actor.clone(), role: member.role };
            let mut state = self.messages[index].state.clone();
            let kind = match state.apply(&actor, &request.change, request.window, request.at) {
                Err(refused) => return ChangeOutcome::Refused(refused),
                Ok(Applied::Unchanged) => return ChangeOutcome::Unchanged(self.messages[index].read()),
                Ok(Applied::Changed(kind)) => kind,
            };
            let seq = self.last_seq.entry(request.conversation.clone()).or_insert(0);
            *seq += 1;
            state.version = *seq;
            let change = MessageChange {
                conversation_id: request.conversation.clone(),
                message_id: request.message.clone(),
                actor: request.actor.clone(),
                kind,
                at: request.at,
                seq: *seq,
            };
            self.messages[index].state = state;
            let message = self.messages[index].read();
            let positions = match &message.receiver_id {
                Some(receiver) => vec![self.position(&message.sender_id), self.position(receiver)],
                None => Vec::new(),
            };
            let version = if positions.is_empty() { 7 } else { 0 };
            ChangeOutcome::Changed(StoredChange { update: Update { change, message }, positions, version })
        }
    }

    struct World {
        store: Arc<Mutex<Store>>,
        window: EditWindow,
    }

    impl World {
        fn new() -> Self {
            Self { store: Arc::default(), window: EditWindow::default() }
        }

        fn join(&self, conversation: &ConversationId, user: &UserId, role: Role, joined_seq: Seq) {
            let member = Member::joining(user.clone(), role, now(), joined_seq);
            self.store.lock().unwrap().members.push((conversation.clone(), member));
        }

        fn remove(&self, conversation: &ConversationId, user: &UserId) {
            let mut store = self.store.lock().unwrap();
            store.members.retain(|(c, m)| !(c == conversation && &m.user_id == user));
            store.removed.push((conversation.clone(), user.clone()));
        }

        /// A direct conversation between two new users.
        fn direct(&self) -> (ConversationId, UserId, UserId) {
            let (conversation, alice, bob) =
                (ConversationId::generate(), UserId::generate(), UserId::generate());
            self.join(&conversation, &alice, Role::Member, 1);
            self.join(&conversation, &bob, Role::Member, 1);
            (conversation, alice, bob)
        }

        /// Appends an entry to `conversation` at its next seq.
        fn append(
            &self,
            conversation: &ConversationId,
            sender: &UserId,
            receiver: Option<&UserId>,
            text: &str,
            system: Option<SystemEvent>,
            sent_at: Timestamp,
        ) -> MessageId {
            let mut store = self.store.lock().unwrap();
            let seq = store.last_seq.entry(conversation.clone()).or_insert(0);
            *seq += 1;
            let message = Message {
                reply_to: None,
                changed: None,
                id: MessageId::generate(),
                conversation_id: conversation.clone(),
                sender_id: sender.clone(),
                receiver_id: receiver.cloned(),
                body: body(text),
                system,
                seq: *seq,
                created_at: sent_at,
                client_id: None,
            };
            let state = MessageState::sent(&message);
            let id = message.id.clone();
            store.messages.push(CurrentMessage { message, state });
            id
        }

        fn send(&self, conversation: &ConversationId, from: &UserId, to: &UserId) -> MessageId {
            self.append(conversation, from, Some(to), "hello", None, now() - TimeDelta::hours(1))
        }

        fn post(&self, group: &ConversationId, from: &UserId) -> MessageId {
            self.append(group, from, None, "hello", None, now() - TimeDelta::hours(1))
        }

        fn sent_at(&self, message: &MessageId, sent_at: Timestamp) {
            let mut store = self.store.lock().unwrap();
            let current = store.message(message);
            current.message.created_at = sent_at;
            current.state.sent_at = sent_at;
        }

        fn state(&self, message: &MessageId) -> MessageState {
            self.store.lock().unwrap().message(message).state.clone()
        }

        fn meanwhile(&self, meanwhile: impl FnOnce(&mut Store) + Send + 'static) {
            self.store.lock().unwrap().meanwhile = Some(Box::new(meanwhile));
        }

        /// How many changes the store was asked to apply.
        fn requests(&self) -> usize {
            self.store.lock().unwrap().requests.len()
        }

        fn service(&self) -> MessageChangeService {
            let mut conversations = MockConversationRepository::new();
            let store = self.store.clone();
            conversations.expect_member().returning(move |conversation, user| {
                let store = store.lock().unwrap();
                if store.down {
                    return Err(RepoError::Unavailable(anyhow::anyhow!("disk gone")));
                }
                Ok(store.member(conversation, user))
            });
            let mut changes = MockMessageChangeRepository::new();
            let store = self.store.clone();
            changes.expect_find().returning(move |id| {
                Ok(store
                    .lock()
                    .unwrap()
                    .messages
                    .iter()
                    .find(|m| &m.message.id == id)
                    .map(CurrentMessage::read))
            });
            let store = self.store.clone();
            changes.expect_change().returning(move |request| Ok(store.lock().unwrap().change(request)));
            let mut groups = MockGroupRepository::new();
            let store = self.store.clone();
            groups.expect_left_after().returning(move |user, conversation, _| {
                let store = store.lock().unwrap();
                let removed = store.removed.iter().any(|(c, u)| c == conversation && u == user);
                Ok(removed.then_some(3))
            });
            let mut notifier = MockNotifier::new();
            let store = self.store.clone();
            notifier.expect_notify().returning(move |users, event| {
                let mut store = store.lock().unwrap();
                store.announced.extend(users.iter().map(|user| (Some(user.clone()), event.clone())));
                Ok(())
            });
            let store = self.store.clone();
            notifier.expect_notify_group().returning(move |_, event| {
                store.lock().unwrap().announced.push((None, event.clone()));
                Ok(())
            });
            let mut clock = MockClock::new();
            clock.expect_now().returning(now);
            MessageChangeService::new(
                Arc::new(conversations),
                Arc::new(changes),
                Arc::new(groups),
                Arc::new(notifier),
                Arc::new(clock),
                self.window,
            )
        }
    }

    /// A group with an owner, an admin and two members, all there from its first entry, and
    /// a member who joined at seq 3 (after two messages).
    struct Group {
        id: ConversationId,
        owner: UserId,
        admin: UserId,
        member: UserId,
        other: UserId,
        late: UserId,
        /// The member's message at seq 1 and the other member's at seq 2.
        early: [MessageId; 2],
    }

    impl World {
        fn group(&self) -> Group {
            let id = ConversationId::generate();
            let [owner, admin, member, other, late] = std::array::from_fn(|_| UserId::generate());
            for (user, role) in [(&owner, Role::Owner), (&admin, Role::Admin), (&member, Role::Member)] {
                self.join(&id, user, role, 1);
            }
            self.join(&id, &other, Role::Member, 1);
            let early = [self.post(&id, &member), self.post(&id, &other)];
            self.join(&id, &late, Role::Member, 3);
            let event = SystemEvent::Added { actor: owner.clone(), users: vec![late.clone()] };
            self.append(&id, &owner, None, "Owner added Late", Some(event), now());
            Group { id, owner, admin, member, other, late, early }
        }
    }

    fn refused(result: Result<ChangeResult, MessageChangeError>) -> ChangeError {
        match result {
            Err(MessageChangeError::Refused(refused)) => refused,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn changed(result: Result<ChangeResult, MessageChangeError>) -> Update {
        match result {
            Ok(ChangeResult::Changed(stored)) => stored.update,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn unchanged(result: Result<ChangeResult, MessageChangeError>) -> Message {
        match result {
            Ok(ChangeResult::Unchanged(current)) => current,
            other => panic!("expected no change, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_sender_edits_and_both_users_of_a_direct_conversation_are_told_where_the_change_sits() {
        let world = World::new();
        let (conversation, alice, bob) = world.direct();
        let message = world.send(&conversation, &alice, &bob);
        let update = changed(world.service().edit(&alice, &conversation, &message, body("hello!")).await);
        assert_eq!(update.change.kind, ChangeKind::Edited);
        assert_eq!((update.change.seq, update.change.at), (2, now()));
        assert_eq!(update.message.text(), Some(&body("hello!")));
        assert_eq!(update.message.version(), 2);
        let cursor = Cursor::new(1).unwrap();
        let event = Event::MessageUpdated { update: update.clone(), cursor };
        assert_eq!(
            world.store.lock().unwrap().announced,
            [(Some(alice.clone()), event.clone()), (Some(bob), event)],
            "each at the change's position in their stream"
        );
        let request = world.store.lock().unwrap().requests[0].clone();
        assert_eq!((request.actor, request.at, request.window), (alice, now(), EditWindow::default()));
    }

    #[tokio::test]
    async fn a_change_in_a_group_goes_to_the_group() {
        let world = World::new();
        let group = world.group();
        let update =
            changed(world.service().react(&group.admin, &group.id, &group.early[0], emoji("👍")).await);
        let event = Event::GroupUpdated { update: update.clone(), version: 7 };
        assert_eq!(world.store.lock().unwrap().announced, [(None, event)], "once, to the group");
        assert_eq!(update.change.kind, ChangeKind::ReactionAdded { emoji: emoji("👍") });
        assert_eq!(update.change.seq, 4);
        assert_eq!(update.message.content(), world.state(&group.early[0]).content);
    }

    #[tokio::test]
    async fn nobody_but_the_sender_edits_and_the_store_is_not_asked() {
        let world = World::new();
        let (conversation, alice, bob) = world.direct();
        let message = world.send(&conversation, &alice, &bob);
        let service = world.service();
        assert_eq!(
            refused(service.edit(&bob, &conversation, &message, body("mine now")).await),
            ChangeError::NotSender
        );
        let group = world.group();
        for user in [&group.owner, &group.admin, &group.other] {
            let result = service.edit(user, &group.id, &group.early[0], body("x")).await;
            assert_eq!(refused(result), ChangeError::NotSender);
        }
        assert_eq!(world.requests(), 0);
        assert_eq!(world.state(&message).content.body(), Some(&body("hello")));
    }

    #[tokio::test]
    async fn an_edit_is_refused_once_the_window_closed_unless_the_window_is_forever() {
        let mut world = World::new();
        let (conversation, alice, bob) = world.direct();
        let message = world.send(&conversation, &alice, &bob);
        world.sent_at(&message, now() - TimeDelta::hours(24));
        changed(world.service().edit(&alice, &conversation, &message, body("just in time")).await);

        world.sent_at(&message, now() - TimeDelta::hours(25));
        let late = world.service().edit(&alice, &conversation, &message, body("too late")).await;
        let closed_at = now() - TimeDelta::hours(1);
        assert_eq!(refused(late), ChangeError::EditWindowClosed { closed_at });
        assert_eq!(world.requests(), 1);

        world.window = EditWindow::from_secs(0);
        world.sent_at(&message, now() - TimeDelta::days(1000));
        let forever =
            changed(world.service().edit(&alice, &conversation, &message, body("years later")).await);
        assert_eq!(forever.message.text(), Some(&body("years later")));
    }

    #[tokio::test]
    async fn the_same_edit_twice_is_one_change_and_one_update() {
        let world = World::new();
        let (conversation, alice, bob) = world.direct();
        let message = world.send(&conversation, &alice, &bob);
        let service = world.service();
        let first = service.edit(&alice, &conversation, &message, body("fixed")).await.unwrap();
        let again = service.edit(&alice, &conversation, &message, body("fixed")).await.unwrap();
        assert!(matches!(first, ChangeResult::Changed(_)));
        assert!(matches!(again, ChangeResult::Unchanged(_)));
        assert_eq!(again.message(), first.message());
        assert_eq!(world.store.lock().unwrap().last_seq[&conversation], 2);
        assert_eq!(world.store.lock().unwrap().announced.len(), 2, "one update, to both users");
    }

    #[tokio::test]
    async fn the_sender_deletes_and_in_a_group_admins_and_the_owner_too() {
        let world = World::new();
        let (conversation, alice, bob) = world.direct();
        let message = world.send(&conversation, &alice, &bob);
        let service = world.service();
        assert_eq!(refused(service.delete(&bob, &conversation, &message).await), ChangeError::MayNotDelete);
        let update = changed(service.delete(&alice, &conversation, &message).await);
        assert_eq!(update.change.kind, ChangeKind::Deleted);
        assert!(matches!(&update.message.content(), Content::Deleted(t) if t.deleted_by == alice));
        assert_eq!(update.message.text(), None);

        let group = world.group();
        let result = service.delete(&group.other, &group.id, &group.early[0]).await;
        assert_eq!(refused(result), ChangeError::MayNotDelete);
        changed(service.delete(&group.member, &group.id, &group.early[0]).await);
        changed(service.delete(&group.admin, &group.id, &group.early[1]).await);
        let owners = world.post(&group.id, &group.admin);
        let update = changed(service.delete(&group.owner, &group.id, &owners).await);
        assert!(matches!(&update.message.content(), Content::Deleted(t) if t.deleted_by == group.owner));
    }

    #[tokio::test]
    async fn a_deleted_message_cannot_be_edited_or_reacted_to_and_deleting_or_unreacting_changes_nothing() {
        let world = World::new();
        let (conversation, alice, bob) = world.direct();
        let message = world.send(&conversation, &alice, &bob);
        let service = world.service();
        service.react(&bob, &conversation, &message, emoji("👍")).await.unwrap();
        service.delete(&alice, &conversation, &message).await.unwrap();
        let requests = world.requests();
        let edit = service.edit(&alice, &conversation, &message, body("back")).await;
        assert_eq!(refused(edit), ChangeError::Deleted);
        let react = service.react(&bob, &conversation, &message, emoji("🎉")).await;
        assert_eq!(refused(react), ChangeError::Deleted);
        assert_eq!(world.requests(), requests, "refused early");
        let tombstone = unchanged(service.delete(&alice, &conversation, &message).await);
        assert_eq!(tombstone.text(), None);
        unchanged(service.unreact(&bob, &conversation, &message, emoji("👍")).await);
        assert_eq!(world.store.lock().unwrap().last_seq[&conversation], 3);
    }

    #[tokio::test]
    async fn the_same_reaction_twice_is_one_change_and_so_is_taking_it_back_twice() {
        let world = World::new();
        let group = world.group();
        let service = world.service();
        let (id, message, other) = (&group.id, &group.early[0], &group.other);
        let thumbs = emoji("👍");
        let first = service.react(other, id, message, thumbs.clone()).await.unwrap();
        let again = service.react(other, id, message, emoji(":+1:")).await.unwrap();
        assert!(matches!(first, ChangeResult::Changed(_)));
        assert!(matches!(again, ChangeResult::Unchanged(_)));
        let Content::Live { reactions, .. } = &again.message().content() else { panic!("deleted") };
        assert_eq!(reactions.users(&thumbs), Some(std::slice::from_ref(other)));

        let removed = changed(service.unreact(other, id, message, thumbs.clone()).await);
        assert_eq!(removed.change.kind, ChangeKind::ReactionRemoved { emoji: thumbs.clone() });
        unchanged(service.unreact(other, id, message, thumbs).await);
        assert_eq!(world.store.lock().unwrap().last_seq[id], 5, "two changes after the three entries");
    }

    #[tokio::test]
    async fn system_entries_take_no_change() {
        let world = World::new();
        let group = world.group();
        let service = world.service();
        let entry = world.store.lock().unwrap().messages[2].message.id.clone();
        for result in [
            service.edit(&group.owner, &group.id, &entry, body("x")).await,
            service.delete(&group.owner, &group.id, &entry).await,
            service.react(&group.member, &group.id, &entry, emoji("👍")).await,
            service.unreact(&group.member, &group.id, &entry, emoji("👍")).await,
        ] {
            assert_eq!(refused(result), ChangeError::SystemEntry);
        }
        assert_eq!(world.requests(), 0);
    }

    #[tokio::test]
    async fn a_message_carries_at_most_twenty_distinct_emoji() {
        let world = World::new();
        let group = world.group();
        let service = world.service();
        let message = &group.early[0];
        let all: Vec<Emoji> =
            "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗😚😙😋".chars().map(|c| emoji(&c.to_string())).collect();
        assert_eq!(all.len(), Reactions::MAX_EMOJI + 1);
        for e in &all[..Reactions::MAX_EMOJI] {
            changed(service.react(&group.other, &group.id, message, e.clone()).await);
        }
        let too_many =
            service.react(&group.member, &group.id, message, all[Reactions::MAX_EMOJI].clone()).await;
        let max = Reactions::MAX_EMOJI;
        assert_eq!(refused(too_many), ChangeError::Reaction(ReactionError::TooManyEmoji { max }));
        assert_eq!(world.requests(), Reactions::MAX_EMOJI);
        changed(service.react(&group.member, &group.id, message, all[0].clone()).await);
    }

    #[tokio::test]
    async fn strangers_are_told_the_conversation_does_not_exist_and_removed_members_that_they_left_it() {
        let world = World::new();
        let group = world.group();
        world.remove(&group.id, &group.other);
        let service = world.service();
        let stranger = UserId::generate();
        for (user, left) in [(&stranger, false), (&group.other, true)] {
            for result in [
                service.react(user, &group.id, &group.early[0], emoji("👍")).await,
                service.delete(user, &group.id, &group.early[1]).await,
            ] {
                match left {
                    true => assert!(matches!(result, Err(MessageChangeError::NoLongerMember)), "{result:?}"),
                    false => {
                        assert!(matches!(result, Err(MessageChangeError::ConversationNotFound)), "{result:?}")
                    }
                }
            }
        }
        assert_eq!(world.requests(), 0);
    }

    #[tokio::test]
    async fn a_message_of_another_conversation_an_unknown_one_or_one_from_before_joining_is_not_found() {
        let world = World::new();
        let group = world.group();
        let (conversation, alice, bob) = world.direct();
        let direct = world.send(&conversation, &alice, &bob);
        let service = world.service();
        for message in [&direct, &MessageId::generate()] {
            let result = service.react(&group.member, &group.id, message, emoji("👍")).await;
            assert!(matches!(result, Err(MessageChangeError::MessageNotFound)), "{result:?}");
        }
        let result = service.react(&group.late, &group.id, &group.early[0], emoji("👍")).await;
        assert!(matches!(result, Err(MessageChangeError::MessageNotFound)), "{result:?}");
        assert_eq!(world.requests(), 0);
    }

    #[tokio::test]
    async fn what_changed_after_the_read_is_decided_on_the_state_under_the_lock() {
        let world = World::new();
        let group = world.group();
        let service = world.service();
        let (id, [first, second]) = (group.id.clone(), group.early.clone());

        // Demoted between the read and the change: no longer allowed to delete.
        let admin = group.admin.clone();
        let demoted = id.clone();
        world.meanwhile(move |store| {
            let (_, member) =
                store.members.iter_mut().find(|(c, m)| *c == demoted && m.user_id == admin).unwrap();
            member.role = Role::Member;
        });
        assert_eq!(refused(service.delete(&group.admin, &id, &first).await), ChangeError::MayNotDelete);

        // Deleted meanwhile: the edit meets a tombstone.
        let deleted = first.clone();
        world.meanwhile(move |store| {
            let current = store.message(&deleted);
            current.state.content =
                Content::Deleted(domain::Tombstone { deleted_at: now(), deleted_by: UserId::generate() });
        });
        assert_eq!(refused(service.edit(&group.member, &id, &first, body("x")).await), ChangeError::Deleted);

        // The same reaction from another device meanwhile: made already.
        let (other, reacted) = (group.other.clone(), second.clone());
        world.meanwhile(move |store| {
            let current = store.message(&reacted);
            let Content::Live { reactions, .. } = &mut current.state.content else { unreachable!() };
            reactions.add(&other, &emoji("👍")).unwrap();
        });
        let current = unchanged(service.react(&group.other, &id, &second, emoji("👍")).await);
        assert_eq!(current.content(), world.state(&second).content);

        // Removed meanwhile.
        let (removed, from) = (group.member.clone(), id.clone());
        world.meanwhile(move |store| {
            store.members.retain(|(c, m)| !(*c == from && m.user_id == removed));
            store.removed.push((from, removed));
        });
        let result = service.react(&group.member, &id, &second, emoji("🎉")).await;
        assert!(matches!(result, Err(MessageChangeError::NoLongerMember)), "{result:?}");
        assert_eq!(world.store.lock().unwrap().last_seq[&id], 3, "nothing stored");
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_failure_worth_a_retry() {
        let world = World::new();
        let group = world.group();
        world.store.lock().unwrap().down = true;
        let result = world.service().delete(&group.member, &group.id, &group.early[0]).await;
        assert!(matches!(result, Err(MessageChangeError::Failed(ApplicationError::Unavailable(_)))));
    }
}
