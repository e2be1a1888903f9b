//! Two fan-outs sharing a real Redis tell each other about revocations.
//!
//! Needs a Redis at `CHAT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`; each test uses
//! a key prefix of its own) and `redis-server` on the PATH (the outage test runs its own on a
//! free port). A Redis that can't be reached fails the test: there are no silent skips.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use application::ports::{Revocation, RevocationFeed as _, RevocationListener};
use chat_realtime::{ConnectionRegistry, Delivery, GroupMembers};
use chat_redis::{FanoutOptions, RedisFanout};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// How long a state change or an announcement may take to show up.
const TIMEOUT: Duration = Duration::from_secs(10);

fn redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn require_redis(url: &str) {
    let ping = async {
        let mut connection = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => {}
        outcome => panic!(
            "no Redis at {url} ({outcome:?}): start one with \
             `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no` \
             or set CHAT_TEST_REDIS_URL"
        ),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Revoked(Revocation),
    Live,
    Lost,
}

struct Listener(UnboundedSender<Heard>);

impl RevocationListener for Listener {
    fn revoked_elsewhere(&self, revocation: Revocation) {
        let _ = self.0.send(Heard::Revoked(revocation));
    }
    fn feed_live(&self) {
        let _ = self.0.send(Heard::Live);
    }
    fn feed_lost(&self) {
        let _ = self.0.send(Heard::Lost);
    }
}

/// A fan-out with a listener; the listener lives as long as this (the feed holds it weakly).
struct Instance {
    fanout: Arc<RedisFanout>,
    _listener: Arc<Listener>,
    heard: UnboundedReceiver<Heard>,
}

impl Instance {
    fn start(prefix: &str) -> Self {
        Self::start_at(&redis_url(), prefix)
    }

    fn start_at(url: &str, prefix: &str) -> Self {
        let options = FanoutOptions {
            url: url.into(),
            tls: Default::default(),
            sentinel: None,
            prefix: prefix.into(),
            // Short, for a quick heartbeat (a third of this): it publishes what was held back.
            presence_ttl: Duration::from_secs(3),
        };
        let groups = Arc::new(application::ports::MockGroupRepository::new());
        let delivery = Delivery::new(ConnectionRegistry::new(4, 0), GroupMembers::new(groups));
        let fanout = RedisFanout::start(options, delivery).unwrap();
        let (sender, heard) = unbounded_channel();
        let listener = Arc::new(Listener(sender));
        fanout.listen(listener.clone());
        Self { fanout, _listener: listener, heard }
    }

    async fn next(&mut self) -> Heard {
        tokio::time::timeout(TIMEOUT, self.heard.recv())
            .await
            .expect("the listener heard nothing in time")
            .expect("the listener is alive")
    }
}

fn revocation(token_id: &str) -> Revocation {
    use chrono::SubsecRound as _;
    Revocation {
        token_id: token_id.into(),
        expires_at: (chrono::Utc::now() + chrono::Duration::hours(1)).trunc_subsecs(3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_hear_each_other_revocations_but_not_their_own() {
    let url = redis_url();
    require_redis(&url).await;
    let prefix = format!("test-revocations-{}", uuid::Uuid::new_v4().simple());
    let mut a = Instance::start(&prefix);
    let mut b = Instance::start(&prefix);
    // Another deployment on the same Redis.
    let mut stranger = Instance::start(&format!("{prefix}-other"));
    assert_eq!(a.next().await, Heard::Live);
    assert_eq!(b.next().await, Heard::Live);
    assert_eq!(stranger.next().await, Heard::Live);

    let from_a = revocation("token-from-a");
    a.fanout.announce(&from_a).await.unwrap();
    assert_eq!(b.next().await, Heard::Revoked(from_a));

    let from_b = revocation("token-from-b");
    b.fanout.announce(&from_b).await.unwrap();
    // Redis keeps the order of publications: had `a` heard its own announcement, it would
    // have heard it first.
    assert_eq!(a.next().await, Heard::Revoked(from_b));

    // A listener registered while the feed is live is told at once.
    let (sender, mut late) = unbounded_channel();
    let late_listener = Arc::new(Listener(sender));
    a.fanout.listen(late_listener.clone());
    assert_eq!(late.try_recv().unwrap(), Heard::Live);
    assert_eq!(a.next().await, Heard::Lost, "the replaced listener is told it hears nothing more");

    let marker = revocation("marker");
    b.fanout.announce(&marker).await.unwrap();
    assert_eq!(
        tokio::time::timeout(TIMEOUT, late.recv()).await.unwrap(),
        Some(Heard::Revoked(marker.clone()))
    );
    assert!(a.heard.try_recv().is_err(), "the replaced listener hears nothing more");

    // Nothing crosses deployments: one PUBLISH reaches every subscriber of the channel at
    // once, so by the time `b` has heard this, a stranger listening to it would have too.
    let last = revocation("last");
    a.fanout.announce(&last).await.unwrap();
    assert_eq!(b.next().await, Heard::Revoked(last));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heard = stranger.heard.try_recv();
    assert!(heard.is_err(), "revocations stay within their prefix: {heard:?}");
}

/// A `redis-server` of this test's own, so that it can be stopped and started again.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed and on the PATH");
        self.child = Some(child);
    }

    /// `kill -9`: no goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_reported_and_what_was_revoked_meanwhile_goes_out_once_redis_is_back() {
    let mut redis = OwnRedis::start();
    let mut a = Instance::start_at(&redis.url(), "outage");
    let mut b = Instance::start_at(&redis.url(), "outage");
    assert_eq!(a.next().await, Heard::Live);
    assert_eq!(b.next().await, Heard::Live);

    redis.kill();
    assert_eq!(a.next().await, Heard::Lost);
    assert_eq!(b.next().await, Heard::Lost);
    let during = revocation("revoked-during-the-outage");
    let error = a.fanout.announce(&during).await.expect_err("the bus is down");
    assert!(format!("{:#}", error.0).contains("held back"), "{:#}", error.0);

    redis.restart();
    assert_eq!(a.next().await, Heard::Live);
    assert_eq!(b.next().await, Heard::Live);
    // `b` could not have heard it before it was live again: whatever `a` published before
    // that, `b` covers by reloading from the store; what `a` held back reaches it anyway.
    assert_eq!(b.next().await, Heard::Revoked(during));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.heard.try_recv().is_err(), "{:?}", a.heard.try_recv());
    assert!(b.heard.try_recv().is_err(), "published once: {:?}", b.heard.try_recv());
}
