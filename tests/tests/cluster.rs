//! Several `server` processes sharing one PostgreSQL database and one Redis, as behind a
//! load balancer: events reach every connection of their users exactly once, whichever
//! instance each connection is on; presence is cluster-wide and survives no crash; a
//! revoked token is refused everywhere; delivery resumes after Redis restarts.
//!
//! Needs PostgreSQL (`CHAT_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! a Redis (`CHAT_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; each test uses its own
//! key prefix) and `redis-server` on the PATH (the restart test runs its own on a free port).
//! The server binary is built with `cargo build -p server` unless `CHAT_SERVER_BIN` names one.

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tests::cluster::{redis_answers, system_redis_url, ClusterConfig, START_TIMEOUT};
use tests::{free_port, Backend};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a frame or a state change may take to show up in normal operation.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The presence expiry the instances run with, in seconds: short, so a crash shows quickly.
const PRESENCE_TTL: u64 = 3;
const SECRET: &str = "cluster-test-secret-of-at-least-32-bytes!";
const PASSWORD: &str = "correct horse battery";

/// A `redis-server` of this test's own, so that it can be stopped and started again.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
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
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while !redis_answers(&self.url()) {
            assert!(std::time::Instant::now() < deadline, "the test's redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// The shared [`tests::cluster::Cluster`] with this suite's settings, and the chat calls
/// of its tests.
struct Cluster(tests::cluster::Cluster);

impl Deref for Cluster {
    type Target = tests::cluster::Cluster;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Cluster {
    /// `size` instances on one fresh PostgreSQL database and the Redis at `redis_url`,
    /// each ready (storage and bus) when this returns.
    async fn start(size: usize, redis_url: String) -> Self {
        let presence_ttl = PRESENCE_TTL.to_string();
        let config = ClusterConfig {
            backend: Backend::Postgres,
            redis_url,
            prefix: "chat-test",
            request_timeout: EVENT_TIMEOUT,
            env: &[
                ("CHAT__SERVER__WORKERS", "1"),
                ("CHAT__FANOUT__PRESENCE_TTL", &presence_ttl),
                ("CHAT__AUTH__JWT_SECRET", SECRET),
                ("CHAT__LOG__LEVEL", "info"),
            ],
        };
        Self(tests::cluster::Cluster::start(config, size).await)
    }

    async fn register(&self, index: usize, username: &str) -> User {
        let response = self
            .http
            .post(self.instances[index].url("/api/v1/user/register"))
            .json(&json!({ "fullName": username, "username": username, "password": PASSWORD }))
            .send()
            .await
            .expect("register answers");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        User {
            id: body["responseData"]["newUser"]["_id"].as_str().expect("an id").to_owned(),
            token: body["responseData"]["token"].as_str().expect("a token").to_owned(),
        }
    }

    /// Sends through instance `index`; returns the stored message's id.
    async fn send(&self, index: usize, from: &User, to: &User, text: &str) -> String {
        let response = self
            .http
            .post(self.instances[index].url(&format!("/api/v1/message/send/{}", to.id)))
            .bearer_auth(&from.token)
            .json(&json!({ "message": text }))
            .send()
            .await
            .expect("send answers");
        assert_eq!(response.status(), StatusCode::CREATED, "sending through instance {}", index + 1);
        let body: Value = response.json().await.unwrap();
        body["responseData"]["_id"].as_str().expect("the message id").to_owned()
    }

    /// Logs in through instance `index`; returns the new token.
    async fn login(&self, index: usize, username: &str) -> String {
        let response = self
            .http
            .post(self.instances[index].url("/api/v1/user/login"))
            .json(&json!({ "username": username, "password": PASSWORD }))
            .send()
            .await
            .expect("login answers");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["responseData"]["token"].as_str().expect("a token").to_owned()
    }

    async fn logout(&self, index: usize, token: &str) {
        let response = self
            .http
            .post(self.instances[index].url("/api/v1/user/logout"))
            .bearer_auth(token)
            .send()
            .await
            .expect("logout answers");
        assert_eq!(response.status(), StatusCode::OK, "logging out through instance {}", index + 1);
    }

    /// Waits until instance `index` refuses `token`: a revocation made on another
    /// instance arrives with the bus, within moments.
    async fn wait_refused(&self, index: usize, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.get(index, "/api/v1/user/get-profile", token).await {
                StatusCode::UNAUTHORIZED => return,
                StatusCode::OK if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                other => panic!("instance {} still answers {other} to a revoked token", index + 1),
            }
        }
    }

    async fn get(&self, index: usize, path: &str, token: &str) -> StatusCode {
        let response = self.http.get(self.instances[index].url(path)).bearer_auth(token).send().await;
        response.expect("the instance answers").status()
    }

    /// A `/ws` connection to instance `index`, once it has been shown an online list with
    /// its own user in it (by then it is registered for every later event).
    async fn connect(&self, index: usize, user: &User) -> Socket {
        let url = format!("ws://127.0.0.1:{}/ws?token={}", self.instances[index].port, user.token);
        let (stream, _) = tokio::time::timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("the handshake answers in time")
            .expect("the handshake succeeds");
        let mut socket = Socket { stream, received: Vec::new() };
        socket.online_list_where(|online| online.contains(&user.id)).await;
        socket
    }

    async fn stop(mut self) {
        self.0.stop().await;
    }
}

struct User {
    id: String,
    token: String,
}

struct Socket {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every event received, `(name, data)`, in order.
    received: Vec<(String, Value)>,
}

impl Socket {
    /// Reads until an event satisfies `wanted`; panics at the timeout.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&str, &Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => panic!("no {what} within {timeout:?}; received: {:?}", self.received),
                Ok(None) => panic!("the connection ended while waiting for {what}"),
                Ok(Some(Err(error))) => panic!("the connection failed while waiting for {what}: {error}"),
                Ok(Some(Ok(frame))) => frame,
            };
            let Frame::Text(text) = frame else { continue };
            let value: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
            let name = value["event"].as_str().expect("frames name their event").to_owned();
            let data = value["data"].clone();
            self.received.push((name.clone(), data.clone()));
            if wanted(&name, &data) {
                return data;
            }
        }
    }

    async fn message(&mut self, id: &str) -> Value {
        self.wait_for(&format!("message {id}"), EVENT_TIMEOUT, |name, data| {
            name == "newMessage" && data["_id"] == id
        })
        .await
    }

    /// The online list this connection was shown last, once it satisfies `wanted`.
    async fn online_list_where(&mut self, wanted: impl Fn(&BTreeSet<String>) -> bool) -> BTreeSet<String> {
        self.online_list_within(EVENT_TIMEOUT, wanted).await
    }

    async fn online_list_within(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&BTreeSet<String>) -> bool,
    ) -> BTreeSet<String> {
        let shown =
            self.received.iter().rev().find(|(name, _)| name == "onlineUsers").map(|(_, data)| ids(data));
        if let Some(shown) = shown.filter(|shown| wanted(shown)) {
            return shown;
        }
        let data = self
            .wait_for("an onlineUsers list", timeout, |name, data| {
                name == "onlineUsers" && wanted(&ids(data))
            })
            .await;
        ids(&data)
    }

    /// The ids of the `newMessage` events received so far, in order.
    fn messages(&self) -> Vec<String> {
        self.received
            .iter()
            .filter(|(name, _)| name == "newMessage")
            .map(|(_, data)| data["_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn emit(&mut self, event: &str, data: Value) {
        let text = json!({ "event": event, "data": data }).to_string();
        self.stream.send(Frame::text(text)).await.expect("the frame is sent");
    }

    async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }
}

fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .expect("onlineUsers is an array")
        .iter()
        .map(|id| id.as_str().expect("ids are strings").to_owned())
        .collect()
}

fn set(users: &[&User]) -> BTreeSet<String> {
    users.iter().map(|u| u.id.clone()).collect()
}

#[tokio::test]
async fn a_message_reaches_every_connection_of_both_users_exactly_once_and_nobody_else() {
    let cluster = Cluster::start(3, system_redis_url()).await;
    let alice = cluster.register(0, "alice").await;
    let bob = cluster.register(1, "bob").await;
    let carol = cluster.register(2, "carol").await;
    let mut alice_1 = cluster.connect(0, &alice).await;
    let mut bob_2 = cluster.connect(1, &bob).await;
    let mut bob_3 = cluster.connect(2, &bob).await;
    let mut carol_2 = cluster.connect(1, &carol).await;

    let first = cluster.send(0, &alice, &bob, "hello from instance 1").await;
    let second = cluster.send(0, &alice, &bob, "and again").await;
    let reply = cluster.send(2, &bob, &alice, "reply from bob's second device").await;
    // Messages from one sender arrive in order, so once the last one is in, any repeat of
    // an earlier one would have arrived too.
    for socket in [&mut alice_1, &mut bob_2, &mut bob_3] {
        socket.message(&reply).await;
        assert_eq!(socket.messages(), [first.clone(), second.clone(), reply.clone()]);
    }

    // Typing notices cross instances too, to the target only.
    bob_3.emit("typing", json!({ "to": alice.id, "isTyping": true })).await;
    let typing = alice_1
        .wait_for("bob's typing notice", EVENT_TIMEOUT, |name, data| {
            name == "typing" && data["from"] == bob.id
        })
        .await;
    assert_eq!(typing["isTyping"], true);

    let to_carol = cluster.send(1, &alice, &carol, "only for carol").await;
    carol_2.message(&to_carol).await;
    assert_eq!(carol_2.messages(), std::slice::from_ref(&to_carol), "carol got nothing of alice and bob's");
    assert!(carol_2.received.iter().all(|(name, _)| name != "typing"));
    alice_1.message(&to_carol).await;
    assert_eq!(bob_2.messages().len(), 3);

    cluster.stop().await;
}

#[tokio::test]
async fn presence_is_cluster_wide_and_a_crashed_instance_users_go_offline() {
    let mut cluster = Cluster::start(3, system_redis_url()).await;
    let alice = cluster.register(0, "alice").await;
    let bob = cluster.register(0, "bob").await;
    let carol = cluster.register(0, "carol").await;

    let mut alice_1 = cluster.connect(0, &alice).await;
    let bob_2 = cluster.connect(1, &bob).await;
    let mut bob_3 = cluster.connect(2, &bob).await;
    let both = set(&[&alice, &bob]);
    alice_1.online_list_where(|online| *online == both).await;
    bob_3.online_list_where(|online| *online == both).await;

    // Bob's first device leaves; the second keeps him online.
    bob_2.close().await;
    let mut carol_2 = cluster.connect(1, &carol).await;
    let everyone = set(&[&alice, &bob, &carol]);
    for socket in [&mut alice_1, &mut bob_3, &mut carol_2] {
        let online = socket.online_list_where(|online| online.contains(&carol.id)).await;
        assert_eq!(online, everyone, "bob is still online on instance 3");
    }

    // Instance 3 dies without a word: bob goes offline everywhere once its presence expires.
    let crashed_at = Instant::now();
    cluster.kill(2);
    let limit = Duration::from_secs(PRESENCE_TTL + PRESENCE_TTL.div_ceil(3)) + Duration::from_secs(3);
    let without_bob = set(&[&alice, &carol]);
    for socket in [&mut alice_1, &mut carol_2] {
        let online = socket.online_list_within(limit, |online| !online.contains(&bob.id)).await;
        assert_eq!(online, without_bob);
    }
    assert!(crashed_at.elapsed() <= limit, "took {:?}", crashed_at.elapsed());

    cluster.stop().await;
}

#[tokio::test]
async fn a_token_revoked_on_one_instance_is_refused_on_another() {
    let cluster = Cluster::start(2, system_redis_url()).await;
    let alice = cluster.register(0, "alice").await;
    assert_eq!(cluster.get(1, "/api/v1/user/get-profile", &alice.token).await, StatusCode::OK);

    cluster.logout(0, &alice.token).await;

    // At once on the instance that revoked it; on the other as soon as the bus brings the
    // revocation (instances answer from memory).
    assert_eq!(cluster.get(0, "/api/v1/user/get-profile", &alice.token).await, StatusCode::UNAUTHORIZED);
    cluster.wait_refused(1, &alice.token).await;
    let url = format!("ws://127.0.0.1:{}/ws?token={}", cluster.instances[1].port, alice.token);
    let handshake = tokio::time::timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(url)).await.unwrap();
    match handshake {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        Err(other) => panic!("the handshake failed otherwise: {other}"),
        Ok(_) => panic!("a revoked token opened a socket on the other instance"),
    }

    cluster.stop().await;
}

#[tokio::test]
async fn a_token_revoked_while_the_bus_is_down_is_refused_everywhere() {
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start(2, redis.url()).await;
    let alice = cluster.register(0, "alice").await;
    let other_token = cluster.login(1, "alice").await;
    assert_eq!(cluster.get(1, "/api/v1/user/get-profile", &alice.token).await, StatusCode::OK);

    redis.kill();
    cluster.wait_readiness(0, false, EVENT_TIMEOUT).await;
    cluster.wait_readiness(1, false, EVENT_TIMEOUT).await;
    // The revocation cannot travel on the bus: the other instance asks the store instead.
    cluster.logout(0, &alice.token).await;
    assert_eq!(cluster.get(1, "/api/v1/user/get-profile", &alice.token).await, StatusCode::UNAUTHORIZED);

    redis.restart();
    cluster.wait_readiness(0, true, Duration::from_secs(30)).await;
    cluster.wait_readiness(1, true, Duration::from_secs(30)).await;
    // Back on the bus, instance 1 answers from memory again, with what it missed loaded.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cluster.get(1, "/api/v1/user/get-profile", &alice.token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(cluster.get(0, "/api/v1/user/get-profile", &alice.token).await, StatusCode::UNAUTHORIZED);
    // Another token of the same user is untouched, and its logout travels on the bus again.
    assert_eq!(cluster.get(0, "/api/v1/user/get-profile", &other_token).await, StatusCode::OK);
    cluster.logout(1, &other_token).await;
    cluster.wait_refused(0, &other_token).await;

    cluster.stop().await;
}

#[tokio::test]
async fn delivery_resumes_after_redis_restarts_without_restarting_any_instance() {
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start(2, redis.url()).await;
    let alice = cluster.register(0, "alice").await;
    let bob = cluster.register(1, "bob").await;
    let mut alice_1 = cluster.connect(0, &alice).await;
    let mut bob_2 = cluster.connect(1, &bob).await;
    let before = cluster.send(0, &alice, &bob, "before the restart").await;
    bob_2.message(&before).await;

    redis.kill();
    cluster.wait_readiness(0, false, EVENT_TIMEOUT).await;
    cluster.wait_readiness(1, false, EVENT_TIMEOUT).await;
    // Stored and answered 201 all the same; the sender's own instance still delivers.
    let during = cluster.send(0, &alice, &bob, "while Redis is down").await;
    alice_1.message(&during).await;

    redis.restart();
    cluster.wait_readiness(0, true, Duration::from_secs(30)).await;
    cluster.wait_readiness(1, true, Duration::from_secs(30)).await;
    let after = cluster.send(0, &alice, &bob, "after the restart").await;
    bob_2.message(&after).await;
    alice_1.message(&after).await;
    // The event lost with Redis is not lost to Bob: the next one arrives at a position past
    // the gap, and his connection reads the missed message from the store first, in order.
    assert_eq!(
        bob_2.messages(),
        [before.clone(), during.clone(), after.clone()],
        "what was sent during the outage reaches the receiver before what followed"
    );
    assert_eq!(alice_1.messages(), [before, during, after]);

    // Presence is rebuilt from the instances' memory: both are shown online again.
    let both = set(&[&alice, &bob]);
    let history = cluster.get(1, &format!("/api/v1/message/get-messages/{}", alice.id), &bob.token).await;
    assert_eq!(history, StatusCode::OK);
    let mut carol_socket = {
        let carol = cluster.register(1, "carol").await;
        cluster.connect(1, &carol).await
    };
    let online = carol_socket.online_list_where(|online| online.is_superset(&both)).await;
    assert_eq!(online.len(), 3);

    cluster.stop().await;
}
