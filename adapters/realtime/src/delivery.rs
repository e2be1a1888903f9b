//! Delivery of any event to this instance's connections: to users, to a group's members, or
//! to everyone. On a single instance this is the `Notifier`; the fan-out across instances
//! (`chat-redis`) hands what it receives here too.
//!
//! An entry of a group that could not be delivered here (its members could not be read, or
//! the fan-out had too many group events waiting to take one more) leaves the group *owed*:
//! [`Delivery::settle_owed`], run every [`OWED_RETRY`], has its members' connections catch
//! up from the store once the members can be read, so the entry is not left waiting for the
//! group's next one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Groups with an entry not delivered here (see the module's documentation).
    owed: Mutex<HashSet<ConversationId>>,
}

/// How often the groups owed a delivery are tried again.
pub const OWED_RETRY: Duration = Duration::from_secs(2);

impl Delivery {
    pub fn new(registry: Arc<ConnectionRegistry>, members: Arc<GroupMembers>) -> Arc<Self> {
        Arc::new(Self { registry, members, owed: Mutex::new(HashSet::new()) })
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
        let delivered = self.to_members(group, event).await;
        if delivered.is_err() {
            self.owe(group, event);
        }
        delivered
    }

    /// Notes that `event` of `group` was not delivered here: when it is an entry of the
    /// group, its members' connections catch up from the store later (see
    /// [`settle_owed`](Self::settle_owed)). Typing and read receipts are momentary.
    pub fn owe(&self, group: &ConversationId, event: &Event) {
        if event.group_entry().is_some() {
            self.owed.lock().expect("the owed groups' lock is never poisoned").insert(group.clone());
        }
    }

    /// Has the connections of the members of every owed group catch up from the store, the
    /// members read again (the entry missed may have changed them); a group whose members
    /// still cannot be read stays owed. Returns how many connections a catch-up was queued
    /// for.
    pub async fn settle_owed(&self) -> usize {
        let owed = std::mem::take(&mut *self.owed.lock().expect("the owed groups' lock is never poisoned"));
        let mut queued = 0;
        for group in owed {
            self.members.forget(&group);
            match self.members.at_least(&group, None).await {
                Ok(Some(members)) => queued += self.registry.heal_members(&members),
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(error = %error, "the members of a group owed a delivery are still unknown");
                    self.owed.lock().expect("the owed groups' lock is never poisoned").insert(group);
                }
            }
        }
        queued
    }

    /// Runs [`settle_owed`](Self::settle_owed) every `OWED_RETRY` until dropped.
    pub async fn keep_settling(self: Arc<Self>) {
        let mut tick = tokio::time::interval(OWED_RETRY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let queued = self.settle_owed().await;
            if queued > 0 {
                tracing::info!(
                    connections = queued,
                    "group entries not delivered here earlier: their members' connections catch up from the store"
                );
            }
        }
    }

    async fn to_members(&self, group: &ConversationId, event: &Event) -> RepoResult<usize> {
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

    #[tokio::test]
    async fn an_entry_not_delivered_for_want_of_its_members_has_them_catch_up_once_they_can_be_read() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let mut groups = MockGroupRepository::new();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = up.clone();
        let member = a.clone();
        groups.expect_member_ids().returning(move |_| {
            if store.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(Some((vec![member.clone()], 1)))
            } else {
                Err(application::ports::RepoError::Unavailable(anyhow::anyhow!("down")))
            }
        });
        let registry = ConnectionRegistry::new(16, 0);
        let delivery = Delivery::new(registry.clone(), GroupMembers::new(Arc::new(groups)));
        let (_ga, mut at_a) = registry.register(&a, &token()).unwrap();
        let (_gb, mut at_b) = registry.register(&b, &token()).unwrap();
        let group = ConversationId::generate();

        // Typing is momentary: nothing is owed for it.
        let typing =
            Event::Typing { from: b.clone(), to: TypingTarget::Group(group.clone()), is_typing: true };
        assert!(delivery.to_group(&group, &typing).await.is_err());
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(delivery.settle_owed().await, 0);

        up.store(false, std::sync::atomic::Ordering::SeqCst);
        let event = Event::GroupMessage { message: entry(&group, 1), version: 1 };
        assert!(delivery.to_group(&group, &event).await.is_err());
        assert!(drain(&mut at_a).is_empty());
        assert_eq!(delivery.settle_owed().await, 0, "the members still cannot be read");

        up.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(delivery.settle_owed().await, 1);
        let queued = drain(&mut at_a);
        assert!(matches!(queued.as_slice(), [Queued::CatchUp(_)]), "{queued:?}");
        assert!(drain(&mut at_b).is_empty(), "not a member");
        assert_eq!(delivery.settle_owed().await, 0, "settled");
    }
}
