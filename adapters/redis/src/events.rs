//! Events across instances: delivered to this instance's connections at once, published on
//! the events channel for the others, and delivered here when another instance publishes.
//!
//! A group's event is published once, naming the group: each instance finds the members
//! among its own connections ([`chat_realtime::GroupMembers`]). Finding them may read the
//! store (when a change named a newer membership), so what arrives for groups is handed to
//! one task of its own, in arrival order, and a slow store holds up no other event.

use std::sync::Arc;

use anyhow::Context as _;
use application::ports::{Event, Notifier, NotifyError, PresenceMode, PresenceUpdate};
use async_trait::async_trait;
use chat_realtime::Delivery;
use domain::{ConversationId, UserId};
use tokio::sync::mpsc;

use crate::bus::{self, Recipients};
use crate::connection::publish_with;
use crate::{RedisFanout, Shared};

/// Group events received from other instances waiting for their members to be found; more
/// are dropped (with a warning), and the group's members' connections catch up from the
/// store instead (`Delivery::owe`).
pub(crate) const GROUP_BACKLOG: usize = 10_000;

pub(crate) type GroupEvents = mpsc::Sender<(ConversationId, Event)>;

impl Shared {
    /// Delivers to this instance's connections of users (everyone when `None`). An online
    /// list goes out only if it differs from the one they were shown last; a presence mode
    /// is noted, so that the sweep shows no list in the scoped mode.
    pub(crate) fn deliver_local(&self, to: Option<&[UserId]>, event: &Event) {
        match (to, event) {
            (None, Event::Presence(PresenceUpdate::Mode(mode))) => {
                let mut book = self.presence.book();
                book.set_scoped(*mode == PresenceMode::Scoped);
                self.delivery.to_users(None, event);
            }
            (None, Event::OnlineUsers(users)) => {
                // Deciding and delivering under one lock keeps the order lists are shown in
                // the order they were decided in; delivery only queues, it never waits.
                let mut book = self.presence.book();
                if book.announce(users) {
                    self.delivery.to_users(None, event);
                }
            }
            _ => {
                self.delivery.to_users(to, event);
            }
        }
    }

    /// Publishes `event` for the other instances. When it cannot, they are asked to catch
    /// their connections up from the store as soon as this instance can reach Redis again
    /// (`Bus::heal_others`): what it stored meanwhile reaches them then.
    async fn publish(&self, to: &Recipients, event: &Event) -> anyhow::Result<()> {
        let published = self.try_publish(to, event).await;
        if published.is_err() {
            self.bus.heal_others.store(true, std::sync::atomic::Ordering::Release);
        }
        published
    }

    async fn try_publish(&self, to: &Recipients, event: &Event) -> anyhow::Result<()> {
        // Failing fast while the bus is down keeps the sender's request from waiting on it.
        if !self.bus.up() {
            anyhow::bail!("the fan-out bus is down: delivered on this instance only");
        }
        let payload = bus::encode(&self.instance, to, event);
        let mut connection = self.redis.get()?;
        publish_with(&mut connection, &self.keys.channel, &payload).await.context("publishing an event")
    }

    /// An event another instance published: delivered to this instance's connections.
    pub(crate) fn receive_event(&self, payload: &[u8]) {
        match bus::decode(payload) {
            Ok(message) if message.origin == self.instance => {}
            Ok(message) => match message.to {
                Recipients::Everyone => self.deliver_local(None, &message.event),
                Recipients::Users(users) => self.deliver_local(Some(&users), &message.event),
                Recipients::Group(group) => {
                    if let Err(refused) = self.group_events.try_send((group, message.event)) {
                        let (group, event) = refused.into_inner();
                        tracing::warn!("dropping a group event: too many waiting for their members");
                        // Its members' connections catch up from the store instead.
                        self.delivery.owe(&group, &event);
                    }
                }
            },
            Err(error) => tracing::warn!(error = %error, "skipping a bus message"),
        }
    }
}

/// Delivers the group events other instances publish, one after the other.
pub(crate) async fn deliver_group_events(
    delivery: Arc<Delivery>,
    mut events: mpsc::Receiver<(ConversationId, Event)>,
) {
    while let Some((group, event)) = events.recv().await {
        if let Err(error) = delivery.to_group(&group, &event).await {
            tracing::warn!(error = %error, "a group event was not delivered here: members unknown");
        }
    }
}

#[async_trait]
impl Notifier for RedisFanout {
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError> {
        self.shared.deliver_local(Some(users), event);
        self.shared.publish(&Recipients::Users(users.to_vec()), event).await.map_err(NotifyError)
    }

    async fn notify_group(&self, group: &ConversationId, event: &Event) -> Result<(), NotifyError> {
        // Published whether or not the members are known here: other instances find their own.
        let local = self.shared.delivery.to_group(group, event).await;
        self.shared.publish(&Recipients::Group(group.clone()), event).await.map_err(NotifyError)?;
        local
            .map(drop)
            .map_err(|error| NotifyError(anyhow::Error::from(error).context("finding the members")))
    }

    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError> {
        self.shared.deliver_local(None, event);
        self.shared.publish(&Recipients::Everyone, event).await.map_err(NotifyError)
    }
}
