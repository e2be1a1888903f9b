//! Events across instances: delivered to this instance's connections at once, published on
//! the events channel for the others, and delivered here when another instance publishes.

use anyhow::Context as _;
use application::ports::{Event, Notifier, NotifyError};
use async_trait::async_trait;
use domain::UserId;

use crate::connection::publish_with;
use crate::{bus, RedisFanout, Shared};

impl Shared {
    /// Delivers to this instance's connections. An online list goes out only if it differs
    /// from the one they were shown last.
    pub(crate) fn deliver_local(&self, to: Option<&[UserId]>, event: &Event) {
        match (to, event) {
            (None, Event::OnlineUsers(users)) => {
                // Deciding and delivering under one lock keeps the order lists are shown in
                // the order they were decided in; delivery only queues, it never waits.
                let mut book = self.presence.book();
                if book.announce(users) {
                    self.registry.deliver(None, event);
                }
            }
            _ => {
                self.registry.deliver(to, event);
            }
        }
    }

    async fn publish(&self, to: Option<&[UserId]>, event: &Event) -> anyhow::Result<()> {
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
            Ok(message) => self.deliver_local(message.to.as_deref(), &message.event),
            Err(error) => tracing::warn!(error = %error, "skipping a bus message"),
        }
    }
}

#[async_trait]
impl Notifier for RedisFanout {
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError> {
        self.shared.deliver_local(Some(users), event);
        self.shared.publish(Some(users), event).await.map_err(NotifyError)
    }

    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError> {
        self.shared.deliver_local(None, event);
        self.shared.publish(None, event).await.map_err(NotifyError)
    }
}
