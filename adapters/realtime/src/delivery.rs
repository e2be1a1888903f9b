//! Delivery of any event to this instance's connections: to users, to a group's members, or
//! to everyone. On a single instance this is the `Notifier`; the fan-out across instances
//! (`chat-redis`) hands what it receives here too.

use std::sync::Arc;

use application::ports::{Event, Notifier, NotifyError, RepoResult};
use async_trait::async_trait;
use domain::{ConversationId, UserId};

use crate::members::GroupMembers;
use crate::registry::ConnectionRegistry;

/// This instance's connections ([`ConnectionRegistry`]) and the members of the groups they
/// get events of ([`GroupMembers`]).
pub struct Delivery {
    registry: Arc<ConnectionRegistry>,
    members: Arc<GroupMembers>,
}

impl Delivery {
    pub fn new(registry: Arc<ConnectionRegistry>, members: Arc<GroupMembers>) -> Arc<Self> {
        Arc::new(Self { registry, members })
    }

    pub fn registry(&self) -> &Arc<ConnectionRegistry> {
        &self.registry
    }

    pub fn members(&self) -> &Arc<GroupMembers> {
        &self.members
    }

    /// Queues `event` for this instance's connections of `users` (everyone when `None`).
    pub fn to_users(&self, users: Option<&[UserId]>, event: &Event) -> usize {
        self.registry.deliver(users, event)
    }

    /// Queues a group's `event` for this instance's connections of its members: those at
    /// the membership version the event names or later (a change's events name the version
    /// it made, so a removed member gets none of them, an added one all), otherwise the
    /// current ones. Someone's own read receipt or typing does not go back to them. Returns
    /// how many connections it was queued for.
    pub async fn to_group(&self, group: &ConversationId, event: &Event) -> RepoResult<usize> {
        let version = match event {
            Event::GroupMessage { version, .. } | Event::ConversationUpdated { version, .. } => {
                Some(*version)
            }
            _ => None,
        };
        let Some(members) = self.members.at_least(group, version).await? else {
            return Ok(0);
        };
        let except = match event {
            Event::MessagesRead { user, .. } => Some(user),
            Event::Typing { from, .. } => Some(from),
            _ => None,
        };
        Ok(self.registry.deliver_to_members(&members, except, event))
    }
}

/// The single-instance notifier: everything is delivered here.
#[async_trait]
impl Notifier for Delivery {
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError> {
        self.to_users(Some(users), event);
        Ok(())
    }

    async fn notify_group(&self, group: &ConversationId, event: &Event) -> Result<(), NotifyError> {
        self.to_group(group, event).await.map(drop).map_err(|error| NotifyError(error.into()))
    }

    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError> {
        self.to_users(None, event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Queued, Receiver, SessionToken};
    use application::ports::{MockGroupRepository, TypingTarget};
    use domain::{Message, MessageBody, MessageId};
    use std::sync::Mutex;

    fn token() -> SessionToken {
        SessionToken {
            id: UserId::generate().to_string(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        }
    }

    fn entry(group: &ConversationId, seq: u64) -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: group.clone(),
            sender_id: UserId::generate(),
            receiver_id: None,
            body: MessageBody::parse("hi").unwrap(),
            system: None,
            seq,
            created_at: chrono::Utc::now(),
            client_id: None,
        }
    }

    fn drain(rx: &mut Receiver) -> Vec<Queued> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn a_removed_member_gets_nothing_from_the_change_on_and_an_added_one_everything() {
        let (a, b, c) = (UserId::generate(), UserId::generate(), UserId::generate());
        let state = Arc::new(Mutex::new((vec![a.clone(), b.clone()], 1)));
        let mut groups = MockGroupRepository::new();
        let read = state.clone();
        groups.expect_member_ids().returning(move |_| Ok(Some(read.lock().unwrap().clone())));
        let registry = ConnectionRegistry::new(16, 0);
        let delivery = Delivery::new(registry.clone(), GroupMembers::new(Arc::new(groups)));
        let (_ga, mut at_a) = registry.register(&a, &token()).unwrap();
        let (_gb, mut at_b) = registry.register(&b, &token()).unwrap();
        let (_gc, mut at_c) = registry.register(&c, &token()).unwrap();
        let group = ConversationId::generate();

        delivery
            .notify_group(&group, &Event::GroupMessage { message: entry(&group, 1), version: 1 })
            .await
            .unwrap();
        assert_eq!((drain(&mut at_a).len(), drain(&mut at_b).len(), drain(&mut at_c).len()), (1, 1, 0));

        // b is removed and c added, in one change: version 2.
        *state.lock().unwrap() = (vec![a.clone(), c.clone()], 2);
        delivery
            .notify_group(&group, &Event::GroupMessage { message: entry(&group, 2), version: 2 })
            .await
            .unwrap();
        let read = Event::MessagesRead {
            conversation: group.clone(),
            user: a.clone(),
            seq: 2,
            up_to: MessageId::generate(),
        };
        delivery.notify_group(&group, &read).await.unwrap();
        let typing =
            Event::Typing { from: c.clone(), to: TypingTarget::Group(group.clone()), is_typing: true };
        delivery.notify_group(&group, &typing).await.unwrap();
        assert_eq!(drain(&mut at_a).len(), 2, "the entry and c's typing, not a's own receipt");
        assert!(drain(&mut at_b).is_empty(), "nothing after the removal");
        assert_eq!(drain(&mut at_c).len(), 2, "the entry and a's receipt, not c's own typing");
    }

    #[tokio::test]
    async fn an_unknown_group_reaches_nobody_and_a_failed_lookup_is_reported() {
        let mut groups = MockGroupRepository::new();
        let mut calls = 0;
        groups.expect_member_ids().returning(move |_| {
            calls += 1;
            if calls == 1 {
                Ok(None)
            } else {
                Err(application::ports::RepoError::Unavailable(anyhow::anyhow!("down")))
            }
        });
        let registry = ConnectionRegistry::new(16, 0);
        let delivery = Delivery::new(registry, GroupMembers::new(Arc::new(groups)));
        let group = ConversationId::generate();
        let event = Event::GroupMessage { message: entry(&group, 1), version: 1 };
        assert_eq!(delivery.to_group(&group, &event).await.unwrap(), 0);
        assert!(delivery.notify_group(&group, &event).await.is_err());
    }
}
