//! Fan-out across server instances through Redis, for running several instances behind a
//! load balancer.
//!
//! [`RedisFanout`] implements four ports:
//! - `Notifier`: an event is delivered to this instance's own connections at once, then
//!   published on one Redis channel; every other instance delivers what it receives to its
//!   connections through its [`Delivery`], whatever their transport. An instance skips its
//!   own publications, so no connection gets an event twice, and all publishing goes
//!   through one multiplexed connection, so events leave in the order they were sent. A
//!   group's event is published once with the group's id, however many members it has:
//!   each instance finds the members among its own connections.
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
//! with backoff; once the subscription is back, every local connection catches up from the
//! store (what was published meanwhile never arrives: `ConnectionRegistry::heal`), presence
//! is rewritten and re-swept, and held-back revocations published.
//!
//! One file per concern, each with its own state: [`endpoint`] (where Redis is: one address,
//! with TLS and ACL credentials if asked, or the primary Sentinel names), [`connection`] (the
//! command connection),
//! [`subscription`] (the bus channels and whether they are live), [`events`] (the
//! `Notifier`), [`presence_sync`] (the `Presence` hash and sweep), [`revocation_feed`] (the
//! `RevocationFeed` and the revocations held back) and [`heartbeat`] (the task that keeps
//! them all up); [`bus`], [`presence`] and [`revocation`] are their sans-IO codecs and
//! bookkeeping.
//!
//! This crate sees the core through the ports only, and the clients through the delivery
//! of the realtime layer.

mod bus;
mod connection;
mod endpoint;
mod events;
mod heartbeat;
mod presence;
mod presence_sync;
mod revocation;
mod revocation_feed;
mod subscription;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use application::ports::{HealthCheck, RepoError, RepoResult};
use async_trait::async_trait;
use chat_realtime::Delivery;
use tokio::task::JoinHandle;

use connection::{timed, Commands};
use endpoint::Endpoint;
use presence_sync::PresenceSync;
use revocation_feed::HeldBack;
use subscription::Bus;

#[derive(Clone)]
pub struct FanoutOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. Behind Sentinel,
    /// its scheme, user, password and db apply to the primary; its host and port are unused.
    pub url: String,
    /// The CA and client certificate of a `rediss://` connection.
    pub tls: TlsFiles,
    /// Ask these sentinels where the primary is, instead of using the URL's address.
    pub sentinel: Option<SentinelOptions>,
    /// Starts every key and channel name, so that several deployments can share a Redis.
    pub prefix: String,
    /// How long an instance's users stay online after it stops refreshing them (a crash).
    /// It refreshes every third of this.
    pub presence_ttl: Duration,
}

/// PEM files for TLS; all optional. Without a CA, the system's roots are trusted.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    /// With `client_key_file`, for servers that ask for a client certificate.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Redis Sentinel: the primary of `master_name`, as the sentinels at `addresses` know it.
#[derive(Clone)]
pub struct SentinelOptions {
    pub master_name: String,
    /// `host:port` of each sentinel; the first that answers is asked.
    pub addresses: Vec<String>,
    /// The sentinels' own credentials (`requirepass`/ACL), when they have any.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sentinels listen with TLS (trusting [`TlsFiles`], as the primary does).
    pub tls: bool,
}

impl std::fmt::Debug for FanoutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("FanoutOptions")
            .field("url", &"[redacted]")
            .field("tls", &self.tls)
            .field("sentinel", &self.sentinel)
            .field("prefix", &self.prefix)
            .field("presence_ttl", &self.presence_ttl)
            .finish()
    }
}

impl std::fmt::Debug for SentinelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelOptions")
            .field("master_name", &self.master_name)
            .field("addresses", &self.addresses)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// The Redis names one deployment uses.
#[derive(Debug, Clone)]
struct Keys {
    channel: String,
    revocations: String,
    /// Where an instance asks the others to have their connections catch up from the store.
    heal: String,
    instances: String,
    presence_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            channel: format!("{prefix}:events"),
            revocations: format!("{prefix}:revocations"),
            heal: format!("{prefix}:heal"),
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

/// What the ports and the background tasks share, one part per concern.
struct Shared {
    /// This process's name among the instances.
    instance: String,
    keys: Keys,
    redis: Commands,
    /// The TLS files, to name the right one when a first contact fails.
    tls: TlsFiles,
    bus: Bus,
    presence: PresenceSync,
    held_back: HeldBack,
    /// This instance's connections (and the members of their groups), which events and
    /// online lists are delivered to.
    delivery: Arc<Delivery>,
    /// Group events from other instances, for the task that finds their members here.
    group_events: events::GroupEvents,
}

impl RedisFanout {
    /// Checks the options and starts the subscription and the presence heartbeat in the
    /// background. Redis need not be up yet: until it is, this instance reports not ready.
    /// Must be called within a Tokio runtime.
    pub fn start(options: FanoutOptions, delivery: Arc<Delivery>) -> anyhow::Result<Arc<Self>> {
        if options.prefix.is_empty() || options.prefix.chars().any(|c| c.is_whitespace()) {
            anyhow::bail!("the fan-out prefix must be non-empty and without white space");
        }
        if options.presence_ttl < Duration::from_secs(1) {
            anyhow::bail!("the presence expiry must be at least one second");
        }
        let endpoint = Endpoint::new(&options)?;
        let (group_events, waiting) = tokio::sync::mpsc::channel(events::GROUP_BACKLOG);
        delivery.registry().healing().set_bus_up(false);
        let shared = Arc::new(Shared {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            keys: Keys::new(&options.prefix),
            redis: Commands::new(endpoint),
            tls: options.tls.clone(),
            bus: Bus::default(),
            presence: PresenceSync::new(options.presence_ttl),
            held_back: HeldBack::default(),
            delivery: delivery.clone(),
            group_events,
        });
        tracing::info!(instance = %shared.instance, prefix = %options.prefix, "fan-out through Redis");
        let tasks = vec![
            tokio::spawn(subscription::subscribe(shared.clone())),
            tokio::spawn(heartbeat::maintain(shared.clone())),
            tokio::spawn(events::deliver_group_events(delivery, waiting)),
        ];
        Ok(Arc::new(Self { shared, tasks }))
    }

    /// This process's name among the instances.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// Makes a first contact with Redis, within `within`, to refuse now what retrying
    /// cannot mend: a certificate not signed by the configured CA, a refused TLS handshake,
    /// a wrong user or password, or a Redis Cluster (not supported: the presence writes are
    /// transactions over keys that a cluster spreads over several nodes). A Redis that does
    /// not answer is no error: the instance reports not ready until it does.
    pub async fn check_endpoint(&self, within: Duration) -> anyhow::Result<()> {
        let contact = async {
            let client = self.shared.redis.endpoint().primary().await?;
            let mut connection =
                client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
            let info: redis::RedisResult<String> =
                redis::cmd("INFO").arg("cluster").query_async(&mut connection).await;
            anyhow::Ok(info)
        };
        match tokio::time::timeout(within, contact).await {
            Err(_) => tracing::warn!("Redis did not answer at start; not ready until it does"),
            Ok(Err(error)) => {
                if let Some(problem) = endpoint::misconfiguration(&error, &self.shared.tls) {
                    anyhow::bail!(problem);
                }
                tracing::warn!(
                    error = format!("{error:#}"),
                    "Redis is unreachable at start; not ready until it answers"
                );
            }
            Ok(Ok(Ok(info))) if cluster_enabled(&info) => anyhow::bail!(
                "fanout.redis_url names a Redis Cluster node (cluster_enabled:1): Redis Cluster is \
                 not supported; use one Redis, or Redis Sentinel (see docs/SCALING.md)"
            ),
            // Without the permission to run INFO, the check is skipped: see docs/SCALING.md.
            Ok(Ok(Err(error))) => {
                tracing::debug!(error = %error, "cannot tell whether Redis runs as a cluster")
            }
            Ok(Ok(Ok(_))) => {}
        }
        Ok(())
    }
}

fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|line| line.trim() == "cluster_enabled:1")
}

impl Drop for RedisFanout {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Ready when the subscription is live and Redis answers.
#[async_trait]
impl HealthCheck for RedisFanout {
    async fn ping(&self) -> RepoResult<()> {
        if !self.shared.bus.up() {
            return Err(RepoError::Unavailable(anyhow!("not subscribed to the fan-out bus")));
        }
        let mut connection = self.shared.redis.get().map_err(RepoError::Unavailable)?;
        let _: String =
            timed(redis::cmd("PING").query_async(&mut connection)).await.map_err(RepoError::Unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::ports::{Revocation, RevocationFeed as _, RevocationListener};
    use chat_realtime::ConnectionRegistry;
    use std::sync::Mutex;

    #[test]
    fn every_name_starts_with_the_prefix() {
        let keys = Keys::new("chat-eu");
        assert_eq!(keys.channel, "chat-eu:events");
        assert_eq!(keys.revocations, "chat-eu:revocations");
        assert_eq!(keys.heal, "chat-eu:heal");
        assert_eq!(keys.instances, "chat-eu:instances");
        assert_eq!(keys.presence("abc"), "chat-eu:presence:abc");
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
            tls: TlsFiles::default(),
            sentinel: None,
            prefix: "unit".into(),
            presence_ttl: Duration::from_secs(15),
        };
        RedisFanout::start(options, delivery(ConnectionRegistry::new(4, 0))).unwrap()
    }

    /// Delivery to `registry`, for groups that no test here asks about.
    fn delivery(registry: Arc<ConnectionRegistry>) -> Arc<Delivery> {
        let groups = Arc::new(application::ports::MockGroupRepository::new());
        Delivery::new(registry, chat_realtime::GroupMembers::new(groups))
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
        fanout.shared.bus.set_subscribed(true);
        fanout.shared.bus.set_subscribed(false);
        assert_eq!(recorder.heard(), ["live", "lost"]);

        fanout.shared.bus.set_subscribed(true);
        let late = Arc::new(Recorder::default());
        fanout.listen(late.clone());
        assert_eq!(late.heard(), ["live"], "registered while live: told at once");
        assert_eq!(recorder.heard(), ["live", "lost"], "the replaced listener hears nothing more");
        fanout.shared.bus.set_subscribed(false);
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
        let here =
            revocation::encode(&shared.instance, &revocation("t-2", chrono::Duration::hours(1))).unwrap();
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
        fanout.shared.bus.set_subscribed(true);
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
            let mut held: Vec<String> = fanout.shared.held_back.lock().keys().cloned().collect();
            held.sort();
            held
        };
        assert_eq!(held(&fanout), ["t-1", "t-2"], "once per token");
        // The bus is still down: the retry keeps what has not expired.
        fanout.shared.announce_held_back().await;
        assert_eq!(held(&fanout), ["t-1"]);
        // It says the bus is up, but there is no connection: still held back.
        fanout.shared.bus.set_subscribed(true);
        fanout.shared.announce_held_back().await;
        assert_eq!(held(&fanout), ["t-1"]);
    }

    #[tokio::test]
    async fn a_token_id_no_instance_would_accept_is_refused_not_held_back() {
        let fanout = unreachable();
        let too_long = "a".repeat(revocation::MAX_TOKEN_ID_CHARS + 1);
        let error = fanout.announce(&revocation(&too_long, chrono::Duration::hours(1))).await.unwrap_err();
        assert!(format!("{:#}", error.0).contains("token id"), "{:#}", error.0);
        assert!(fanout.shared.held_back.lock().is_empty());
    }

    #[tokio::test]
    async fn bad_options_are_refused_at_start() {
        let registry = delivery(ConnectionRegistry::new(4, 0));
        let options = |url: &str, prefix: &str, ttl: u64| FanoutOptions {
            url: url.into(),
            tls: TlsFiles::default(),
            sentinel: None,
            prefix: prefix.into(),
            presence_ttl: Duration::from_secs(ttl),
        };
        assert!(RedisFanout::start(options("redis://127.0.0.1:1", "", 15), registry.clone()).is_err());
        assert!(RedisFanout::start(options("redis://127.0.0.1:1", "a b", 15), registry.clone()).is_err());
        assert!(RedisFanout::start(options("redis://127.0.0.1:1", "chat", 0), registry.clone()).is_err());
        assert!(RedisFanout::start(options("http://x", "chat", 15), registry.clone()).is_err());
    }

    #[test]
    fn a_cluster_node_says_so_in_its_info() {
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
    }
}
