//! Fan-out across server instances through Redis, for running several instances behind a
//! load balancer.
//!
//! [`RedisFanout`] implements four ports:
//! - `Notifier`: an event is delivered to this instance's own connections at once, then
//!   published on one Redis channel; every other instance delivers what it receives to its
//!   connections through the [`ConnectionRegistry`], whatever their transport. An instance
//!   skips its own publications, so no connection gets an event twice, and all publishing
//!   goes through one multiplexed connection, so events leave in the order they were sent.
//! - `Presence`: each instance keeps its connection counts in memory and mirrors them into
//!   a hash of its own (`{prefix}:presence:{instance}`) that expires unless refreshed. The
//!   online list is this instance's users plus those in live instances' hashes, so a
//!   crashed instance's users drop out once its hash expires; a periodic sweep notices and
//!   tells local connections. See [`presence`] for how repeats are avoided.
//! - `RevocationFeed`: a revocation made here is published on a channel of its own
//!   (`{prefix}:revocations`), subscribed on the same connection as the events, so the feed
//!   is live exactly while the subscription is: the listener hears `feed_live` when it
//!   registers while the subscription is live and each time it is (re)established, and
//!   `feed_lost` each time it is cut. An instance skips its own announcements. One that
//!   cannot go out now is held back and published again by the heartbeat until it goes out
//!   or its token expires.
//! - `HealthCheck`: the bus is ready when the subscription is live and Redis answers.
//!
//! When Redis is unreachable, local delivery goes on, `notify` and `announce` return an
//! error (the use cases log it and carry on), and both connections come back by themselves
//! with backoff; presence is rewritten and re-swept, and held-back revocations published,
//! once the subscription is back.
//!
//! This crate sees the core through the ports only, and the clients through the registry.

mod bus;
mod presence;
mod revocation;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use application::ports::{
    Event, HealthCheck, Notifier, NotifyError, Presence, RepoError, RepoResult, Revocation, RevocationFeed,
    RevocationListener,
};
use async_trait::async_trait;
use domain::{Timestamp, UserId};
use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use chat_realtime::ConnectionRegistry;

use presence::{Changes, PresenceBook};

/// How long one Redis round trip may take before it counts as failed.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds of the wait between two attempts to re-establish the subscription.
const RESUBSCRIBE_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// How often the subscription connection is pinged: a silent network loss is noticed
/// within this time plus [`OPERATION_TIMEOUT`].
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);

/// Removes an instance from the set of instances unless its presence hash still exists, in
/// one step, so that an instance writing its hash at the same moment is never forgotten.
const FORGET_IF_GONE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
";

#[derive(Clone)]
pub struct FanoutOptions {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Starts every key and channel name, so that several deployments can share a Redis.
    pub prefix: String,
    /// How long an instance's users stay online after it stops refreshing them (a crash).
    /// It refreshes every third of this.
    pub presence_ttl: Duration,
}

impl std::fmt::Debug for FanoutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("FanoutOptions")
            .field("url", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("presence_ttl", &self.presence_ttl)
            .finish()
    }
}

/// The Redis names one deployment uses.
#[derive(Debug, Clone)]
struct Keys {
    channel: String,
    revocations: String,
    instances: String,
    presence_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            channel: format!("{prefix}:events"),
            revocations: format!("{prefix}:revocations"),
            instances: format!("{prefix}:instances"),
            presence_prefix: format!("{prefix}:presence:"),
        }
    }

    fn presence(&self, instance: &str) -> String {
        format!("{}{instance}", self.presence_prefix)
    }
}

/// The fan-out adapter; see the crate documentation. Its background tasks stop when the
/// last handle is dropped.
pub struct RedisFanout {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    instance: String,
    keys: Keys,
    client: redis::Client,
    /// Created by the maintenance task once Redis first answers; reconnects by itself after.
    connection: Mutex<Option<ConnectionManager>>,
    registry: Arc<ConnectionRegistry>,
    book: Mutex<PresenceBook>,
    /// Presence writes go out one at a time, each with the counts current when it starts,
    /// so the last write always leaves Redis matching memory.
    writing: tokio::sync::Mutex<()>,
    /// The subscription is live: events and revocations from other instances are arriving.
    /// Changes only under the `listener` lock, see [`Shared::set_subscribed`].
    subscribed: AtomicBool,
    /// Who hears about revocations made elsewhere; held weakly (see [`RevocationFeed::listen`]).
    listener: Mutex<Option<Weak<dyn RevocationListener>>>,
    /// Revocations made here that did not go out yet, by token id.
    held_back: Mutex<HashMap<String, HeldBack>>,
    /// Wakes the maintenance task for a full rewrite and sweep (after a resubscription).
    resync: Notify,
    presence_ttl: Duration,
    forget_if_gone: redis::Script,
}

/// A revocation waiting to be published again.
struct HeldBack {
    expires_at: Timestamp,
    payload: String,
}

impl RedisFanout {
    /// Checks the options and starts the subscription and the presence heartbeat in the
    /// background. Redis need not be up yet: until it is, this instance reports not ready.
    /// Must be called within a Tokio runtime.
    pub fn start(options: FanoutOptions, registry: Arc<ConnectionRegistry>) -> anyhow::Result<Arc<Self>> {
        if options.prefix.is_empty() || options.prefix.chars().any(|c| c.is_whitespace()) {
            anyhow::bail!("the fan-out prefix must be non-empty and without white space");
        }
        if options.presence_ttl < Duration::from_secs(1) {
            anyhow::bail!("the presence expiry must be at least one second");
        }
        // The URL may hold a password: say what is wrong without repeating it.
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| anyhow!("the Redis URL is not valid ({:?})", e.kind()))?;
        let shared = Arc::new(Shared {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            keys: Keys::new(&options.prefix),
            client,
            connection: Mutex::new(None),
            registry,
            book: Mutex::new(PresenceBook::new()),
            writing: tokio::sync::Mutex::new(()),
            subscribed: AtomicBool::new(false),
            listener: Mutex::new(None),
            held_back: Mutex::new(HashMap::new()),
            resync: Notify::new(),
            presence_ttl: options.presence_ttl,
            forget_if_gone: redis::Script::new(FORGET_IF_GONE),
        });
        tracing::info!(instance = %shared.instance, prefix = %options.prefix, "fan-out through Redis");
        let tasks = vec![tokio::spawn(subscribe(shared.clone())), tokio::spawn(maintain(shared.clone()))];
        Ok(Arc::new(Self { shared, tasks }))
    }

    /// This process's name among the instances.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }
}

impl Drop for RedisFanout {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, PresenceBook> {
        // Every mutation of the book is a single call: a panic elsewhere leaves it whole.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connection(&self) -> anyhow::Result<ConnectionManager> {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| anyhow!("not connected to Redis yet"))
    }

    async fn ensure_connection(&self) -> anyhow::Result<ConnectionManager> {
        if let Ok(connection) = self.connection() {
            return Ok(connection);
        }
        // Reconnection after a loss: first retry after ~1 s, then at most every 2 s, four
        // times per loss (the next command starts another round).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(OPERATION_TIMEOUT)
            .set_response_timeout(OPERATION_TIMEOUT)
            .set_factor(2)
            .set_max_delay(2000)
            .set_number_of_retries(4);
        let connection = timed(ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .context("connecting to Redis")?;
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    fn bus_up(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    fn listener_slot(&self) -> MutexGuard<'_, Option<Weak<dyn RevocationListener>>> {
        // Only ever replaced whole: a panic elsewhere leaves it whole.
        self.listener.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held_back(&self) -> MutexGuard<'_, HashMap<String, HeldBack>> {
        self.held_back.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records whether the subscription is live and tells the listener, both under the lock
    /// that [`RevocationFeed::listen`] takes: a listener registered at the same moment either
    /// hears this change or, when registered, finds the state it led to. Either way its last
    /// word is the truth.
    fn set_subscribed(&self, live: bool) {
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

    /// Delivers to this instance's connections. An online list goes out only if it differs
    /// from the one they were shown last.
    fn deliver_local(&self, to: Option<&[UserId]>, event: &Event) {
        match (to, event) {
            (None, Event::OnlineUsers(users)) => {
                // Deciding and delivering under one lock keeps the order lists are shown in
                // the order they were decided in; delivery only queues, it never waits.
                let mut book = self.book();
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
        if !self.bus_up() {
            anyhow::bail!("the fan-out bus is down: delivered on this instance only");
        }
        let payload = bus::encode(&self.instance, to, event);
        self.publish_on(&self.keys.channel, &payload).await.context("publishing an event")
    }

    async fn publish_on(&self, channel: &str, payload: &str) -> anyhow::Result<()> {
        let mut connection = self.connection()?;
        publish_with(&mut connection, channel, payload).await
    }

    /// Publishes an encoded revocation, failing fast while the bus is down. The subscription
    /// may be live before the heartbeat has made the command connection: then this makes it
    /// (Redis just answered, so that is quick; it is bounded by [`OPERATION_TIMEOUT`] anyway),
    /// rather than failing the first logouts after a start.
    async fn publish_revocation(&self, payload: &str) -> anyhow::Result<()> {
        if !self.bus_up() {
            anyhow::bail!("the fan-out bus is down");
        }
        let mut connection = self.ensure_connection().await?;
        publish_with(&mut connection, &self.keys.revocations, payload)
            .await
            .context("publishing a revocation")
    }

    /// Publishes the revocations held back, forgetting those whose token has expired
    /// meanwhile; stops at the first failure (the next heartbeat tries again).
    async fn announce_held_back(&self) {
        let now = chrono::Utc::now();
        let due: Vec<(String, String)> = {
            let mut held = self.held_back();
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
            self.held_back().remove(token_id);
            sent += 1;
        }
        if sent > 0 {
            tracing::info!(count = sent, "announced the revocations held back");
        }
    }

    /// Handles a message of the subscription, by its channel.
    fn receive(&self, channel: &str, payload: &[u8]) {
        if channel == self.keys.channel {
            self.receive_event(payload);
        } else if channel == self.keys.revocations {
            self.receive_revocation(payload);
        } else {
            tracing::warn!(channel, "skipping a message of an unexpected channel");
        }
    }

    fn receive_event(&self, payload: &[u8]) {
        match bus::decode(payload) {
            Ok(message) if message.origin == self.instance => {}
            Ok(message) => self.deliver_local(message.to.as_deref(), &message.event),
            Err(error) => tracing::warn!(error = %error, "skipping a bus message"),
        }
    }

    fn receive_revocation(&self, payload: &[u8]) {
        match revocation::decode(payload) {
            Ok(message) if message.origin == self.instance => {}
            Ok(message) => {
                let listener = self.listener_slot().as_ref().and_then(Weak::upgrade);
                if let Some(listener) = listener {
                    listener.revoked_elsewhere(message.revocation);
                }
            }
            Err(error) => tracing::warn!(error = %error, "skipping a revocation message"),
        }
    }

    /// Writes what changed in the local counts (everything after [`PresenceBook::rewrite_all`]).
    /// A failed write is retried whole by the next heartbeat.
    async fn write_presence(&self) {
        if !self.bus_up() {
            self.book().rewrite_all();
            return;
        }
        let _one_at_a_time = self.writing.lock().await;
        let changes = self.book().take_changes();
        if let Err(error) = self.write_changes(changes).await {
            tracing::warn!(error = format!("{error:#}"), "presence not written; retrying shortly");
            self.book().rewrite_all();
        }
    }

    async fn write_changes(&self, changes: Changes) -> anyhow::Result<()> {
        let key = self.keys.presence(&self.instance);
        let ttl_ms = u64::try_from(self.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic();
        match changes {
            Changes::None => return Ok(()),
            Changes::Some(counts) => {
                for (user, count) in &counts {
                    if *count > 0 {
                        pipe.cmd("HSET").arg(&key).arg(user.as_str()).arg(*count).ignore();
                    } else {
                        pipe.cmd("HDEL").arg(&key).arg(user.as_str()).ignore();
                    }
                }
            }
            Changes::All(counts) => {
                pipe.cmd("DEL").arg(&key).ignore();
                if !counts.is_empty() {
                    let hset = pipe.cmd("HSET").arg(&key);
                    for (user, count) in &counts {
                        hset.arg(user.as_str()).arg(*count);
                    }
                    hset.ignore();
                }
            }
        }
        // An empty hash no longer exists in Redis: there is nothing to keep alive.
        let any_local = self.book().local_users().next().is_some();
        if any_local {
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
            pipe.cmd("SADD").arg(&self.keys.instances).arg(&self.instance).ignore();
        }
        let mut connection = self.connection()?;
        let () = timed(pipe.query_async(&mut connection)).await.context("writing presence")?;
        Ok(())
    }

    /// The online users of the cluster, and the instances whose hash is gone.
    async fn cluster_view(&self) -> anyhow::Result<(Vec<UserId>, Vec<String>)> {
        let mut connection = self.connection()?;
        let instances: Vec<String> =
            timed(redis::cmd("SMEMBERS").arg(&self.keys.instances).query_async(&mut connection))
                .await
                .context("listing instances")?;
        let others: Vec<String> = instances.into_iter().filter(|id| *id != self.instance).collect();
        let mut pipe = redis::pipe();
        for id in &others {
            pipe.cmd("HKEYS").arg(self.keys.presence(id));
        }
        let users: Vec<Vec<String>> = if others.is_empty() {
            Vec::new()
        } else {
            timed(pipe.query_async(&mut connection)).await.context("reading presence")?
        };
        let gone = others
            .iter()
            .zip(&users)
            .filter(|(_, users)| users.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        let book = self.book();
        let online = presence::cluster_view(book.local_users(), users.into_iter().flatten());
        Ok((online, gone))
    }

    /// Compares the cluster's online list with the one last shown here and shows the new
    /// one if they differ: this is how a crashed instance's users go offline.
    async fn sweep(&self) -> anyhow::Result<()> {
        let generation = self.book().generation();
        let (online, gone) = self.cluster_view().await?;
        let mut connection = self.connection()?;
        for id in gone {
            let mut invocation = self.forget_if_gone.key(&self.keys.instances);
            invocation.key(self.keys.presence(&id)).arg(&id);
            if let Ok(1) = timed(invocation.invoke_async::<i64>(&mut connection)).await {
                tracing::info!(instance = %id, "an instance stopped refreshing its presence");
            }
        }
        let mut book = self.book();
        if book.announce_if_unchanged(generation, &online) {
            self.registry.deliver(None, &Event::OnlineUsers(online));
        }
        Ok(())
    }
}

async fn publish_with(connection: &mut ConnectionManager, channel: &str, payload: &str) -> anyhow::Result<()> {
    let _: i64 = timed(redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(connection)).await?;
    Ok(())
}

/// Runs a Redis call with [`OPERATION_TIMEOUT`].
async fn timed<T>(call: impl std::future::Future<Output = redis::RedisResult<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, call).await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow!("Redis did not answer within {OPERATION_TIMEOUT:?}")),
    }
}

/// Keeps a subscription to the bus channels, re-establishing it with backoff when lost, and
/// tells the revocation listener each time it goes live or is lost.
async fn subscribe(shared: Arc<Shared>) {
    let (first_delay, max_delay) = RESUBSCRIBE_BACKOFF;
    let mut delay = first_delay;
    let mut reported = false;
    loop {
        match open_subscription(&shared).await {
            Ok((mut sink, mut stream)) => {
                delay = first_delay;
                reported = false;
                shared.set_subscribed(true);
                tracing::info!("subscribed to the fan-out bus");
                shared.resync.notify_one();
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
                shared.set_subscribed(false);
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
    let pubsub = timed(shared.client.get_async_pubsub()).await.context("connecting to Redis")?;
    let (mut sink, stream) = pubsub.split();
    // One command for both channels: Redis runs it whole before answering, so once the first
    // confirmation is back, both channels are subscribed (the client drops the second one).
    let channels = [shared.keys.channel.as_str(), shared.keys.revocations.as_str()];
    timed(sink.subscribe(&channels)).await.context("subscribing")?;
    Ok((sink, stream))
}

/// Between half and all of `delay`, so that instances cut off together don't return in step.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..=1.0))
}

/// The heartbeat: connects the command connection, publishes the revocations held back,
/// rewrites this instance's presence and sweeps every third of the expiry, and at once after
/// a resubscription.
async fn maintain(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.presence_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.resync.notified() => {}
        }
        if let Err(error) = shared.ensure_connection().await {
            if !std::mem::replace(&mut reported, true) {
                tracing::warn!(error = format!("{error:#}"), "Redis is unreachable; retrying");
            }
            continue;
        }
        reported = false;
        if !shared.bus_up() {
            continue;
        }
        shared.announce_held_back().await;
        shared.book().rewrite_all();
        shared.write_presence().await;
        if let Err(error) = shared.sweep().await {
            tracing::warn!(error = format!("{error:#}"), "presence sweep failed");
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

/// Counts change in memory at once; Redis follows before the call returns when it can (so
/// that other instances' sweeps agree with the list announced next), or with the next
/// heartbeat once it is back.
#[async_trait]
impl Presence for RedisFanout {
    async fn connected(&self, user: &UserId) -> RepoResult<bool> {
        let first = self.shared.book().connected(user);
        self.shared.write_presence().await;
        Ok(first)
    }

    async fn disconnected(&self, user: &UserId) -> RepoResult<bool> {
        let last = self.shared.book().disconnected(user);
        self.shared.write_presence().await;
        Ok(last)
    }

    async fn online(&self) -> RepoResult<Vec<UserId>> {
        self.shared.cluster_view().await.map(|(online, _)| online).map_err(RepoError::Unavailable)
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
        let held = HeldBack { expires_at: revocation.expires_at, payload };
        self.shared.held_back().insert(revocation.token_id.clone(), held);
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
        let mut slot = self.shared.listener_slot();
        if let Some(previous) = slot.replace(Arc::downgrade(&listener)).as_ref().and_then(Weak::upgrade) {
            previous.feed_lost();
        }
        if self.shared.bus_up() {
            listener.feed_live();
        }
    }
}

#[async_trait]
impl HealthCheck for RedisFanout {
    async fn ping(&self) -> RepoResult<()> {
        if !self.shared.bus_up() {
            return Err(RepoError::Unavailable(anyhow!("not subscribed to the fan-out bus")));
        }
        let mut connection = self.shared.connection().map_err(RepoError::Unavailable)?;
        let _: String =
            timed(redis::cmd("PING").query_async(&mut connection)).await.map_err(RepoError::Unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_starts_with_the_prefix() {
        let keys = Keys::new("chat-eu");
        assert_eq!(keys.channel, "chat-eu:events");
        assert_eq!(keys.revocations, "chat-eu:revocations");
        assert_eq!(keys.instances, "chat-eu:instances");
        assert_eq!(keys.presence("abc"), "chat-eu:presence:abc");
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_delay() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000), "{d:?}");
        }
    }

    /// Writes down what it hears.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn heard(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl RevocationListener for Recorder {
        fn revoked_elsewhere(&self, revocation: Revocation) {
            self.0.lock().unwrap().push(format!("revoked {}", revocation.token_id));
        }
        fn feed_live(&self) {
            self.0.lock().unwrap().push("live".into());
        }
        fn feed_lost(&self) {
            self.0.lock().unwrap().push("lost".into());
        }
    }

    /// A fan-out whose Redis never answers: its bus stays down unless a test says otherwise.
    fn unreachable() -> Arc<RedisFanout> {
        let options = FanoutOptions {
            url: "redis://127.0.0.1:1".into(),
            prefix: "unit".into(),
            presence_ttl: Duration::from_secs(15),
        };
        RedisFanout::start(options, ConnectionRegistry::new(4, 0)).unwrap()
    }

    fn revocation(token_id: &str, expires_in: chrono::Duration) -> Revocation {
        Revocation { token_id: token_id.into(), expires_at: chrono::Utc::now() + expires_in }
    }

    #[tokio::test]
    async fn a_listener_hears_the_state_of_the_subscription_from_registration_on() {
        let fanout = unreachable();
        let recorder = Arc::new(Recorder::default());
        fanout.listen(recorder.clone());
        assert!(recorder.heard().is_empty(), "the bus is down: nothing to report yet");
        fanout.shared.set_subscribed(true);
        fanout.shared.set_subscribed(false);
        assert_eq!(recorder.heard(), ["live", "lost"]);

        fanout.shared.set_subscribed(true);
        let late = Arc::new(Recorder::default());
        fanout.listen(late.clone());
        assert_eq!(late.heard(), ["live"], "registered while live: told at once");
        assert_eq!(recorder.heard(), ["live", "lost"], "the replaced listener hears nothing more");
        fanout.shared.set_subscribed(false);
        assert_eq!(late.heard(), ["lost"]);
        assert!(recorder.heard().is_empty());
    }

    #[tokio::test]
    async fn revocations_reach_the_listener_except_this_instance_own() {
        let fanout = unreachable();
        let recorder = Arc::new(Recorder::default());
        fanout.listen(recorder.clone());
        let shared = &fanout.shared;
        let elsewhere = revocation::encode("other", &revocation("t-1", chrono::Duration::hours(1))).unwrap();
        let here = revocation::encode(&shared.instance, &revocation("t-2", chrono::Duration::hours(1))).unwrap();
        shared.receive(&shared.keys.revocations, elsewhere.as_bytes());
        shared.receive(&shared.keys.revocations, here.as_bytes());
        shared.receive(&shared.keys.revocations, b"{\"v\":1}");
        // A revocation on the events channel is no event, and no revocation either.
        shared.receive(&shared.keys.channel, elsewhere.as_bytes());
        shared.receive("unit:elsewhere", elsewhere.as_bytes());
        assert_eq!(recorder.heard(), ["revoked t-1"]);
    }

    #[tokio::test]
    async fn a_dropped_listener_hears_nothing_and_keeps_nothing_alive() {
        let fanout = unreachable();
        let recorder = Arc::new(Recorder::default());
        fanout.listen(recorder.clone());
        let weak = Arc::downgrade(&recorder);
        drop(recorder);
        assert!(weak.upgrade().is_none());
        fanout.shared.set_subscribed(true);
        let payload = revocation::encode("other", &revocation("t", chrono::Duration::hours(1))).unwrap();
        fanout.shared.receive(&fanout.shared.keys.revocations, payload.as_bytes());
    }

    #[tokio::test]
    async fn an_announcement_that_cannot_go_out_is_held_back_until_its_token_expires() {
        let fanout = unreachable();
        let error = fanout.announce(&revocation("t-1", chrono::Duration::hours(1))).await.unwrap_err();
        assert!(format!("{:#}", error.0).contains("held back"), "{:#}", error.0);
        fanout.announce(&revocation("t-1", chrono::Duration::hours(1))).await.unwrap_err();
        fanout.announce(&revocation("t-2", chrono::Duration::milliseconds(-1))).await.unwrap_err();
        let held = |fanout: &RedisFanout| {
            let mut held: Vec<String> = fanout.shared.held_back().keys().cloned().collect();
            held.sort();
            held
        };
        assert_eq!(held(&fanout), ["t-1", "t-2"], "once per token");
        // The bus is still down: the retry keeps what has not expired.
        fanout.shared.announce_held_back().await;
        assert_eq!(held(&fanout), ["t-1"]);
        // It says the bus is up, but there is no connection: still held back.
        fanout.shared.subscribed.store(true, Ordering::Release);
        fanout.shared.announce_held_back().await;
        assert_eq!(held(&fanout), ["t-1"]);
    }

    #[tokio::test]
    async fn a_token_id_no_instance_would_accept_is_refused_not_held_back() {
        let fanout = unreachable();
        let too_long = "a".repeat(revocation::MAX_TOKEN_ID_CHARS + 1);
        let error = fanout.announce(&revocation(&too_long, chrono::Duration::hours(1))).await.unwrap_err();
        assert!(format!("{:#}", error.0).contains("token id"), "{:#}", error.0);
        assert!(fanout.shared.held_back().is_empty());
    }

    #[tokio::test]
    async fn bad_options_are_refused_at_start() {
        let registry = ConnectionRegistry::new(4, 0);
        let options = |url: &str, prefix: &str, ttl: u64| FanoutOptions {
            url: url.into(),
            prefix: prefix.into(),
            presence_ttl: Duration::from_secs(ttl),
        };
        assert!(RedisFanout::start(options("redis://127.0.0.1:1", "", 15), registry.clone()).is_err());
        assert!(RedisFanout::start(options("redis://127.0.0.1:1", "a b", 15), registry.clone()).is_err());
        assert!(RedisFanout::start(options("redis://127.0.0.1:1", "chat", 0), registry.clone()).is_err());
        assert!(RedisFanout::start(options("http://x", "chat", 15), registry.clone()).is_err());
    }
}
