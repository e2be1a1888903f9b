//! Revocations across instances: one made here is published on the revocations channel
//! (held back and published again by the heartbeat when it cannot go out now); one
//! published elsewhere is handed to the listener. [`crate::revocation`] is their codec.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use anyhow::{anyhow, Context as _};
use application::ports::{NotifyError, Revocation, RevocationFeed, RevocationListener};
use async_trait::async_trait;
use domain::Timestamp;

use crate::connection::publish_with;
use crate::{revocation, RedisFanout, Shared};

/// Revocations made here that did not go out yet, by token id.
#[derive(Default)]
pub(crate) struct HeldBack(Mutex<HashMap<String, Held>>);

/// A revocation waiting to be published again.
pub(crate) struct Held {
    expires_at: Timestamp,
    payload: String,
}

impl HeldBack {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // Every change is one map call: a panic elsewhere leaves it whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Shared {
    /// Publishes an encoded revocation, failing fast while the bus is down. The subscription
    /// may be live before the heartbeat has made the command connection: then this makes it
    /// (Redis just answered, so that is quick; it is bounded by the operation timeout anyway),
    /// rather than failing the first logouts after a start.
    async fn publish_revocation(&self, payload: &str) -> anyhow::Result<()> {
        if !self.bus.up() {
            anyhow::bail!("the fan-out bus is down");
        }
        let mut connection = self.redis.ensure().await?;
        publish_with(&mut connection, &self.keys.revocations, payload)
            .await
            .context("publishing a revocation")
    }

    /// Publishes the revocations held back, forgetting those whose token has expired
    /// meanwhile; stops at the first failure (the next heartbeat tries again).
    pub(crate) async fn announce_held_back(&self) {
        let now = chrono::Utc::now();
        let due: Vec<(String, String)> = {
            let mut held = self.held_back.lock();
            held.retain(|_, held| held.expires_at >= now);
            held.iter().map(|(token_id, held)| (token_id.clone(), held.payload.clone())).collect()
        };
        let mut sent = 0;
        for (token_id, payload) in &due {
            if let Err(error) = self.publish_revocation(payload).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    held_back = due.len() - sent,
                    "revocations still not announced; retrying shortly"
                );
                break;
            }
            self.held_back.lock().remove(token_id);
            sent += 1;
        }
        if sent > 0 {
            tracing::info!(count = sent, "announced the revocations held back");
        }
    }

    /// A revocation another instance published: handed to the listener.
    pub(crate) fn receive_revocation(&self, payload: &[u8]) {
        match revocation::decode(payload) {
            Ok(message) if message.origin == self.instance => {}
            Ok(message) => {
                if let Some(listener) = self.bus.listener() {
                    listener.revoked_elsewhere(message.revocation);
                }
            }
            Err(error) => tracing::warn!(error = %error, "skipping a revocation message"),
        }
    }
}

#[async_trait]
impl RevocationFeed for RedisFanout {
    /// Publishes the revocation, waiting a second at most to connect and another to publish,
    /// and not at all while the subscription is down. When the bus is down or the publish
    /// fails, the revocation is held back and the heartbeat publishes it again once the bus
    /// is up (until it goes out or its token expires); the error says so. A token id that no
    /// instance would accept (empty, or over 200 characters) is refused, and not retried.
    async fn announce(&self, revocation: &Revocation) -> Result<(), NotifyError> {
        let payload = revocation::encode(&self.shared.instance, revocation)
            .map_err(|error| NotifyError(anyhow!(error).context("the revocation cannot be announced")))?;
        let Err(error) = self.shared.publish_revocation(&payload).await else {
            return Ok(());
        };
        let held = Held { expires_at: revocation.expires_at, payload };
        self.shared.held_back.lock().insert(revocation.token_id.clone(), held);
        Err(NotifyError(error.context("revocation held back: it goes out once the bus is up")))
    }

    /// Keeps `listener`, and tells it `feed_live` at once if the subscription is live.
    ///
    /// One listener at a time: a second call replaces the first, which is told `feed_lost`
    /// (it will hear nothing more). The listener is held weakly: the feed does not keep it
    /// alive (so a listener holding the feed makes no cycle), and once its owners have dropped
    /// it, it hears nothing.
    ///
    /// `feed_live` and `feed_lost` are called under the lock that this call takes, so a
    /// listener registered while the subscription goes up or down ends up told the state
    /// the subscription is really in; callbacks must not call `listen`. All calls come from
    /// the subscription task, except the ones made here.
    fn listen(&self, listener: Arc<dyn RevocationListener>) {
        let mut slot = self.shared.bus.listener_slot();
        if let Some(previous) = slot.replace(Arc::downgrade(&listener)).as_ref().and_then(Weak::upgrade) {
            previous.feed_lost();
        }
        if self.shared.bus.up() {
            listener.feed_live();
        }
    }
}
