//! The heartbeat: keeps the command connection, publishes the revocations held back, and
//! keeps this instance's presence in Redis and the online list in step with the cluster.

use std::sync::Arc;

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
            _ = shared.redis.reconnect.notified() => {}
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
        shared.presence.book().rewrite_all();
        shared.write_presence().await;
        if let Err(error) = shared.sweep().await {
            tracing::warn!(error = format!("{error:#}"), "presence sweep failed");
        }
    }
}
