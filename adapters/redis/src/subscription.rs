//! The subscription to the bus channels (events and revocations), on a connection of its
//! own: kept up with backoff, and the only source of truth for whether the bus is up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use application::ports::RevocationListener;
use futures_util::StreamExt as _;
use tokio::sync::Notify;

use crate::connection::timed;
use crate::Shared;

/// Bounds of the wait between two attempts to re-establish the subscription.
const RESUBSCRIBE_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// How often the subscription connection is pinged: a silent network loss is noticed
/// within this time plus the operation timeout.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);

/// Whether the subscription is live, and who hears when that changes.
#[derive(Default)]
pub(crate) struct Bus {
    /// The subscription is live: events and revocations from other instances are arriving.
    /// Changes only under the `listener` lock, see [`Bus::set_subscribed`].
    subscribed: AtomicBool,
    /// Who hears about revocations made elsewhere; held weakly (see `RevocationFeed::listen`).
    listener: Mutex<Option<Weak<dyn RevocationListener>>>,
    /// Wakes the heartbeat for a full rewrite and sweep (after a resubscription).
    pub(crate) resync: Notify,
    /// Events of this instance may not have reached the others (it was not subscribed, so
    /// it did not publish, or its command connection was lost): the heartbeat asks them to
    /// have their connections catch up, once it can publish again.
    pub(crate) heal_others: AtomicBool,
}

impl Bus {
    pub(crate) fn up(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub(crate) fn listener_slot(&self) -> MutexGuard<'_, Option<Weak<dyn RevocationListener>>> {
        // Only ever replaced whole: a panic elsewhere leaves it whole.
        self.listener.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The listener, if one is registered and still alive.
    pub(crate) fn listener(&self) -> Option<Arc<dyn RevocationListener>> {
        self.listener_slot().as_ref().and_then(Weak::upgrade)
    }

    /// Records whether the subscription is live and tells the listener, both under the lock
    /// that `RevocationFeed::listen` takes: a listener registered at the same moment either
    /// hears this change or, when registered, finds the state it led to. Either way its last
    /// word is the truth.
    pub(crate) fn set_subscribed(&self, live: bool) {
        let slot = self.listener_slot();
        self.subscribed.store(live, Ordering::Release);
        if let Some(listener) = slot.as_ref().and_then(Weak::upgrade) {
            if live {
                listener.feed_live();
            } else {
                listener.feed_lost();
            }
        }
    }
}

impl Shared {
    /// Handles a message of the subscription, by its channel.
    pub(crate) fn receive(&self, channel: &str, payload: &[u8]) {
        if channel == self.keys.channel {
            self.receive_event(payload);
        } else if channel == self.keys.revocations {
            self.receive_revocation(payload);
        } else if channel == self.keys.heal {
            // Another instance's events may have been lost on their way here.
            if payload != self.instance.as_bytes() {
                let healing = self.delivery.registry().heal();
                tracing::info!(healing, "another instance could not publish for a while: catching up");
            }
        } else {
            tracing::warn!(channel, "skipping a message of an unexpected channel");
        }
    }
}

/// Keeps a subscription to the bus channels, re-establishing it with backoff when lost, tells
/// the revocation listener each time it goes live or is lost, and has every local connection
/// catch up from the store each time it goes live (see `ConnectionRegistry::heal`).
pub(crate) async fn subscribe(shared: Arc<Shared>) {
    let (first_delay, max_delay) = RESUBSCRIBE_BACKOFF;
    let mut delay = first_delay;
    let mut reported = false;
    loop {
        match open_subscription(&shared).await {
            Ok((mut sink, mut stream)) => {
                delay = first_delay;
                reported = false;
                shared.bus.set_subscribed(true);
                shared.delivery.registry().healing().set_bus_up(true);
                // Whatever was published while this instance was not subscribed (before its
                // first subscription too) never reaches it: every connection here catches up
                // from the store, behind what it has queued.
                let healing = shared.delivery.registry().heal();
                tracing::info!(healing, "subscribed to the fan-out bus");
                shared.bus.resync.notify_one();
                let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
                ping.tick().await;
                let why = loop {
                    tokio::select! {
                        message = stream.next() => match message {
                            Some(message) => {
                                shared.receive(message.get_channel_name(), message.get_payload_bytes());
                            }
                            None => break anyhow!("the connection closed"),
                        },
                        _ = ping.tick() => {
                            if let Err(error) = timed(sink.ping::<redis::Value>()).await {
                                break error;
                            }
                        }
                    }
                };
                shared.bus.set_subscribed(false);
                shared.delivery.registry().healing().set_bus_up(false);
                // Not subscribed, this instance publishes nothing: once back, it asks the
                // others to catch up with what it stored meanwhile.
                shared.bus.heal_others.store(true, Ordering::Release);
                if shared.redis.endpoint().follows_failover() {
                    // A cut here is most often a failover (Sentinel closes the clients of a
                    // demoted primary): the command connection asks the sentinels again too,
                    // rather than publish where no instance listens any more.
                    shared.redis.forget();
                }
                tracing::warn!(
                    error = format!("{why:#}"),
                    "lost the fan-out bus; delivering locally until it is back"
                );
            }
            Err(error) if !reported => {
                reported = true;
                tracing::warn!(error = format!("{error:#}"), "cannot subscribe to the fan-out bus; retrying");
            }
            Err(error) => tracing::debug!(error = format!("{error:#}"), "still cannot subscribe"),
        }
        tokio::time::sleep(jittered(delay)).await;
        delay = (delay * 2).min(max_delay);
    }
}

async fn open_subscription(
    shared: &Shared,
) -> anyhow::Result<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    // Behind Sentinel, the primary as it is now: after a failover, the new one.
    let client = shared.redis.endpoint().primary().await?;
    let pubsub = timed(client.get_async_pubsub()).await.context("connecting to Redis")?;
    let (mut sink, stream) = pubsub.split();
    // One command for every channel: Redis runs it whole before answering, so once the first
    // confirmation is back, all are subscribed (the client drops the others).
    let channels =
        [shared.keys.channel.as_str(), shared.keys.revocations.as_str(), shared.keys.heal.as_str()];
    timed(sink.subscribe(&channels)).await.context("subscribing")?;
    Ok((sink, stream))
}

/// Between half and all of `delay`, so that instances cut off together don't return in step.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_all_of_the_delay() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000), "{d:?}");
        }
    }
}
