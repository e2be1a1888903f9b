//! The heartbeat: keeps the command connection, publishes the revocations held back, asks
//! the other instances to heal when this one's events may not have reached them, and keeps
//! this instance's presence in Redis and the online list in step with the cluster.

use std::sync::Arc;

use crate::connection::publish_with;
use crate::Shared;

/// Connects the command connection, publishes the revocations held back, rewrites this
/// instance's presence and sweeps every third of the presence expiry, and at once after a
/// resubscription or the loss of a command connection that follows the primary.
pub(crate) async fn maintain(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.presence.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.bus.resync.notified() => {}
            _ = shared.redis.reconnect.notified() => {
                // The command connection was lost: a publication may have failed with it.
                shared.bus.heal_others.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        if let Err(error) = shared.redis.ensure().await {
            if !std::mem::replace(&mut reported, true) {
                tracing::warn!(error = format!("{error:#}"), "Redis is unreachable; retrying");
            }
            continue;
        }
        reported = false;
        if !shared.bus.up() {
            continue;
        }
        shared.announce_held_back().await;
        shared.ask_others_to_heal().await;
        shared.presence.book().rewrite_all();
        shared.write_presence().await;
        if let Err(error) = shared.sweep().await {
            tracing::warn!(error = format!("{error:#}"), "presence sweep failed");
        }
    }
}

impl Shared {
    /// Asks the other instances to have their connections catch up from the store, when
    /// this one's events may not have reached them (`Bus::heal_others`):
    /// once per loss, and again at the next beat if it cannot go out now.
    async fn ask_others_to_heal(&self) {
        use std::sync::atomic::Ordering;
        if !self.bus.heal_others.swap(false, Ordering::AcqRel) {
            return;
        }
        let asked = match self.redis.get() {
            Ok(mut connection) => publish_with(&mut connection, &self.keys.heal, &self.instance).await,
            Err(error) => Err(error),
        };
        if let Err(error) = asked {
            self.bus.heal_others.store(true, Ordering::Release);
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot ask the other instances to catch up; retrying"
            );
        }
    }
}
