//! Several `server` processes sharing one PostgreSQL database and one Redis, as behind a
//! load balancer: events reach every connection of their users exactly once, whichever
//! instance each connection is on; presence is cluster-wide and survives no crash; a
//! revoked token is refused everywhere; delivery resumes after Redis restarts, and what was
//! sent while Redis was down reaches every socket that stayed connected, once and in order;
//! behind Redis Sentinel, delivery follows a failover and loses nothing.
//!
//! Needs PostgreSQL (`CHAT_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! a Redis (`CHAT_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; each test uses its own
//! key prefix), and `redis-server`, `redis-cli` and `ss` on the PATH (the restart, outage and
//! Sentinel tests run their own Redis on free ports: one, or a primary, a replica and three
//! sentinels).
//! The server binary is built with `cargo build -p server` unless `CHAT_SERVER_BIN` names one.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tests::cluster::{redis_answers, system_redis_url, Cluster, ClusterConfig, START_TIMEOUT};
use tests::ws::ids;
use tests::{free_port, Api, Backend, TestUser, WsClient, WsRefused, PASSWORD};
use tokio::time::Instant;

/// How long a frame or a state change may take to show up in normal operation.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The presence expiry the instances run with, in seconds: short, so a crash shows quickly.
const PRESENCE_TTL: u64 = 3;
const SECRET: &str = "cluster-test-secret-of-at-least-32-bytes!";

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

/// `size` instances on one fresh PostgreSQL database and the Redis at `redis_url`, with
/// this suite's settings, each ready (storage and bus) when this returns.
async fn start_cluster(size: usize, redis_url: String) -> Cluster {
    start_cluster_with(size, redis_url, &[]).await
}

/// [`start_cluster`], with `extra` settings on top of the suite's.
async fn start_cluster_with(size: usize, redis_url: String, extra: &[(&str, &str)]) -> Cluster {
    let presence_ttl = PRESENCE_TTL.to_string();
    let mut env = vec![
        ("CHAT__SERVER__WORKERS", "1"),
        ("CHAT__FANOUT__PRESENCE_TTL", presence_ttl.as_str()),
        ("CHAT__AUTH__JWT_SECRET", SECRET),
        ("CHAT__LOG__LEVEL", "info"),
    ];
    env.extend_from_slice(extra);
    let config = ClusterConfig {
        backend: Backend::Postgres,
        redis_url,
        prefix: "chat-test",
        request_timeout: EVENT_TIMEOUT,
        env: &env,
    };
    Cluster::start(config, size).await
}

/// Sends through `api`; returns the stored message's id.
async fn send(api: &Api, from: &TestUser, to: &TestUser, text: &str) -> String {
    api.send_ok(from, to, text).await["_id"].as_str().expect("the message id").to_owned()
}

/// Waits until instance `index` refuses `token`: a revocation made on another instance
/// arrives with the bus, within moments.
async fn wait_refused(cluster: &Cluster, index: usize, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match profile_status(cluster, index, token).await {
            StatusCode::UNAUTHORIZED => return,
            StatusCode::OK if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => panic!("instance {} still answers {other} to a revoked token", index + 1),
        }
    }
}

async fn profile_status(cluster: &Cluster, index: usize, token: &str) -> StatusCode {
    cluster.api(index).profile(token).await.status
}

/// A `/ws` connection of `user` to instance `index`, once it has been shown an online list
/// with its own user in it (by then it is registered for every later event).
async fn connect(cluster: &Cluster, index: usize, user: &TestUser) -> WsClient {
    let mut socket = cluster.api(index).connect_ws(&user.token).await;
    online_list_where(&mut socket, |online| online.contains(&user.id)).await;
    socket
}

async fn message(socket: &mut WsClient, id: &str) -> Value {
    socket.next_event_matching("newMessage", |data| data["_id"] == id, EVENT_TIMEOUT).await
}

/// The online list `socket` was shown last, once it satisfies `wanted`.
async fn online_list_where(
    socket: &mut WsClient,
    wanted: impl Fn(&BTreeSet<String>) -> bool,
) -> BTreeSet<String> {
    online_list_within(socket, EVENT_TIMEOUT, wanted).await
}

async fn online_list_within(
    socket: &mut WsClient,
    timeout: Duration,
    wanted: impl Fn(&BTreeSet<String>) -> bool,
) -> BTreeSet<String> {
    let shown = socket.events("onlineUsers").last().map(online_ids);
    if let Some(shown) = shown.filter(|shown| wanted(shown)) {
        return shown;
    }
    let data = socket.next_event_matching("onlineUsers", |data| wanted(&online_ids(data)), timeout).await;
    online_ids(&data)
}

/// The ids of the `newMessage` events `socket` received so far, in order.
fn messages(socket: &WsClient) -> Vec<String> {
    socket.events("newMessage").map(|data| data["_id"].as_str().unwrap_or_default().to_owned()).collect()
}

fn online_ids(list: &Value) -> BTreeSet<String> {
    ids(list).into_iter().collect()
}

fn set(users: &[&TestUser]) -> BTreeSet<String> {
    users.iter().map(|u| u.id.clone()).collect()
}

#[tokio::test]
async fn a_message_reaches_every_connection_of_both_users_exactly_once_and_nobody_else() {
    let mut cluster = start_cluster(3, system_redis_url()).await;
    let alice = cluster.api(0).create_user("alice").await;
    let bob = cluster.api(1).create_user("bob").await;
    let carol = cluster.api(2).create_user("carol").await;
    let mut alice_1 = connect(&cluster, 0, &alice).await;
    let mut bob_2 = connect(&cluster, 1, &bob).await;
    let mut bob_3 = connect(&cluster, 2, &bob).await;
    let mut carol_2 = connect(&cluster, 1, &carol).await;

    let first = send(&cluster.api(0), &alice, &bob, "hello from instance 1").await;
    let second = send(&cluster.api(0), &alice, &bob, "and again").await;
    let reply = send(&cluster.api(2), &bob, &alice, "reply from bob's second device").await;
    // Messages from one sender arrive in order, so once the last one is in, any repeat of
    // an earlier one would have arrived too.
    for socket in [&mut alice_1, &mut bob_2, &mut bob_3] {
        message(socket, &reply).await;
        assert_eq!(messages(socket), [first.clone(), second.clone(), reply.clone()]);
    }

    // Typing notices cross instances too, to the target only.
    bob_3.emit("typing", json!({ "to": alice.id, "isTyping": true })).await;
    let typing = alice_1.next_event_matching("typing", |data| data["from"] == bob.id, EVENT_TIMEOUT).await;
    assert_eq!(typing["isTyping"], true);

    let to_carol = send(&cluster.api(1), &alice, &carol, "only for carol").await;
    message(&mut carol_2, &to_carol).await;
    assert_eq!(messages(&carol_2), std::slice::from_ref(&to_carol), "carol got nothing of alice and bob's");
    assert!(carol_2.events("typing").next().is_none());
    message(&mut alice_1, &to_carol).await;
    assert_eq!(messages(&bob_2).len(), 3);

    cluster.stop().await;
}

#[tokio::test]
async fn presence_is_cluster_wide_and_a_crashed_instance_users_go_offline() {
    let mut cluster = start_cluster(3, system_redis_url()).await;
    let alice = cluster.api(0).create_user("alice").await;
    let bob = cluster.api(0).create_user("bob").await;
    let carol = cluster.api(0).create_user("carol").await;

    let mut alice_1 = connect(&cluster, 0, &alice).await;
    let bob_2 = connect(&cluster, 1, &bob).await;
    let mut bob_3 = connect(&cluster, 2, &bob).await;
    let both = set(&[&alice, &bob]);
    online_list_where(&mut alice_1, |online| *online == both).await;
    online_list_where(&mut bob_3, |online| *online == both).await;

    // Bob's first device leaves; the second keeps him online.
    bob_2.close().await;
    let mut carol_2 = connect(&cluster, 1, &carol).await;
    let everyone = set(&[&alice, &bob, &carol]);
    for socket in [&mut alice_1, &mut bob_3, &mut carol_2] {
        let online = online_list_where(socket, |online| online.contains(&carol.id)).await;
        assert_eq!(online, everyone, "bob is still online on instance 3");
    }

    // Instance 3 dies without a word: bob goes offline everywhere once its presence expires.
    let crashed_at = Instant::now();
    cluster.kill(2);
    let limit = Duration::from_secs(PRESENCE_TTL + PRESENCE_TTL.div_ceil(3)) + Duration::from_secs(3);
    let without_bob = set(&[&alice, &carol]);
    for socket in [&mut alice_1, &mut carol_2] {
        let online = online_list_within(socket, limit, |online| !online.contains(&bob.id)).await;
        assert_eq!(online, without_bob);
    }
    assert!(crashed_at.elapsed() <= limit, "took {:?}", crashed_at.elapsed());

    cluster.stop().await;
}

#[tokio::test]
async fn a_token_revoked_on_one_instance_is_refused_on_another() {
    let mut cluster = start_cluster(2, system_redis_url()).await;
    let alice = cluster.api(0).create_user("alice").await;
    assert_eq!(profile_status(&cluster, 1, &alice.token).await, StatusCode::OK);

    cluster.api(0).logout(&alice.token).await.data(StatusCode::OK);

    // At once on the instance that revoked it; on the other as soon as the bus brings the
    // revocation (instances answer from memory).
    assert_eq!(profile_status(&cluster, 0, &alice.token).await, StatusCode::UNAUTHORIZED);
    wait_refused(&cluster, 1, &alice.token).await;
    match cluster.api(1).try_ws(&alice.token).await {
        Err(WsRefused { status: Some(status), .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        Err(other) => panic!("the handshake failed otherwise: {}", other.error),
        Ok(_) => panic!("a revoked token opened a socket on the other instance"),
    }

    cluster.stop().await;
}

#[tokio::test]
async fn a_token_revoked_while_the_bus_is_down_is_refused_everywhere() {
    let mut redis = OwnRedis::start();
    let mut cluster = start_cluster(2, redis.url()).await;
    let alice = cluster.api(0).create_user("alice").await;
    let other_token = cluster.api(1).login("alice", PASSWORD).await.data(StatusCode::OK)["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert_eq!(profile_status(&cluster, 1, &alice.token).await, StatusCode::OK);

    redis.kill();
    cluster.wait_readiness(0, false, EVENT_TIMEOUT).await;
    cluster.wait_readiness(1, false, EVENT_TIMEOUT).await;
    // The revocation cannot travel on the bus: the other instance asks the store instead.
    cluster.api(0).logout(&alice.token).await.data(StatusCode::OK);
    assert_eq!(profile_status(&cluster, 1, &alice.token).await, StatusCode::UNAUTHORIZED);

    redis.restart();
    cluster.wait_readiness(0, true, Duration::from_secs(30)).await;
    cluster.wait_readiness(1, true, Duration::from_secs(30)).await;
    // Back on the bus, instance 1 answers from memory again, with what it missed loaded.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(profile_status(&cluster, 1, &alice.token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(profile_status(&cluster, 0, &alice.token).await, StatusCode::UNAUTHORIZED);
    // Another token of the same user is untouched, and its logout travels on the bus again.
    assert_eq!(profile_status(&cluster, 0, &other_token).await, StatusCode::OK);
    cluster.api(1).logout(&other_token).await.data(StatusCode::OK);
    wait_refused(&cluster, 0, &other_token).await;

    cluster.stop().await;
}

#[tokio::test]
async fn delivery_resumes_after_redis_restarts_without_restarting_any_instance() {
    let mut redis = OwnRedis::start();
    let mut cluster = start_cluster(2, redis.url()).await;
    let alice = cluster.api(0).create_user("alice").await;
    let bob = cluster.api(1).create_user("bob").await;
    let mut alice_1 = connect(&cluster, 0, &alice).await;
    let mut bob_2 = connect(&cluster, 1, &bob).await;
    let before = send(&cluster.api(0), &alice, &bob, "before the restart").await;
    message(&mut bob_2, &before).await;

    redis.kill();
    cluster.wait_readiness(0, false, EVENT_TIMEOUT).await;
    cluster.wait_readiness(1, false, EVENT_TIMEOUT).await;
    // Stored and answered 201 all the same; the sender's own instance still delivers.
    let during = send(&cluster.api(0), &alice, &bob, "while Redis is down").await;
    message(&mut alice_1, &during).await;

    redis.restart();
    cluster.wait_readiness(0, true, Duration::from_secs(30)).await;
    cluster.wait_readiness(1, true, Duration::from_secs(30)).await;
    let after = send(&cluster.api(0), &alice, &bob, "after the restart").await;
    message(&mut bob_2, &after).await;
    message(&mut alice_1, &after).await;
    // The event lost with Redis is not lost to Bob: the next one arrives at a position past
    // the gap, and his connection reads the missed message from the store first, in order.
    assert_eq!(
        messages(&bob_2),
        [before.clone(), during.clone(), after.clone()],
        "what was sent during the outage reaches the receiver before what followed"
    );
    assert_eq!(messages(&alice_1), [before, during, after]);

    // Presence is rebuilt from the instances' memory: both are shown online again.
    let both = set(&[&alice, &bob]);
    let history = cluster.api(1).get_messages(&bob.token, &alice.id, &[]).await;
    assert_eq!(history.status, StatusCode::OK);
    let mut carol_socket = {
        let carol = cluster.api(1).create_user("carol").await;
        connect(&cluster, 1, &carol).await
    };
    let online = online_list_where(&mut carol_socket, |online| online.is_superset(&both)).await;
    assert_eq!(online.len(), 3);

    cluster.stop().await;
}

#[tokio::test]
async fn a_group_spread_over_three_instances_gets_each_entry_once_on_every_socket_until_a_removal() {
    let mut cluster = start_cluster(3, system_redis_url()).await;
    let ada = cluster.api(0).create_user("ada").await;
    let bob = cluster.api(1).create_user("bob").await;
    let cat = cluster.api(2).create_user("cat").await;
    let dan = cluster.api(0).create_user("dan").await;
    let group = cluster.api(0).create_group_ok(&ada, "Spread", &[&bob, &cat]).await;
    let group = group["_id"].as_str().expect("the group id").to_owned();
    let mut ada_1 = connect(&cluster, 0, &ada).await;
    let mut bob_2 = connect(&cluster, 1, &bob).await;
    let mut bob_3 = connect(&cluster, 2, &bob).await;
    let mut cat_1 = connect(&cluster, 0, &cat).await;
    let mut cat_3 = connect(&cluster, 2, &cat).await;
    let mut dan_1 = connect(&cluster, 0, &dan).await;

    // Sent on two instances: every member socket, on every instance, gets each entry once,
    // in the group's order, with the group in its cursor.
    let mut sent = Vec::new();
    for (index, from, text) in [(0, &ada, "one"), (2, &bob, "two"), (0, &ada, "three")] {
        let message = cluster.api(index).post_message_ok(from, &group, text).await;
        sent.push(message["_id"].as_str().expect("the message id").to_owned());
    }
    for socket in [&mut ada_1, &mut bob_2, &mut bob_3, &mut cat_1, &mut cat_3] {
        let last = message(socket, &sent[2]).await;
        assert!(last["cursor"].as_str().is_some_and(|c| c.ends_with(&format!("~{group}.4"))), "{last}");
        assert_eq!(messages(socket), sent);
    }

    // Typing in the group crosses instances, to the other members.
    cat_3.emit("typing", json!({ "conversationId": group, "isTyping": true })).await;
    for socket in [&mut ada_1, &mut bob_2, &mut bob_3] {
        let typing = socket.next_event_matching("typing", |data| data["from"] == cat.id, EVENT_TIMEOUT).await;
        assert_eq!(typing["conversationId"], group.as_str());
    }

    // Bob is removed on a third instance: his sockets get the removal entry, then nothing.
    cluster.api(1).remove_member(&ada.token, &group, &bob.id).await.data(StatusCode::OK);
    for socket in [&mut bob_2, &mut bob_3, &mut ada_1, &mut cat_1, &mut cat_3] {
        let removal = socket
            .next_event_matching("newMessage", |data| data["system"]["action"] == "removed", EVENT_TIMEOUT)
            .await;
        assert_eq!(removal["system"]["userIds"], json!([bob.id]));
    }
    let after = cluster.api(2).post_message_ok(&cat, &group, "after bob").await;
    let after = after["_id"].as_str().expect("the message id").to_owned();
    cat_1.emit("typing", json!({ "conversationId": group, "isTyping": false })).await;
    for socket in [&mut ada_1, &mut cat_1, &mut cat_3] {
        message(socket, &after).await;
        assert_eq!(messages(socket).len(), 5, "three, the removal and this one");
    }
    // (It may have come in while waiting for the message.)
    if !ada_1.events("typing").any(|data| data["isTyping"] == false) {
        ada_1.next_event_matching("typing", |data| data["isTyping"] == false, EVENT_TIMEOUT).await;
    }
    for socket in [&mut bob_2, &mut bob_3] {
        socket.assert_no_event("newMessage", Duration::from_millis(500)).await;
        assert_eq!(messages(socket).len(), 4, "the removal was the last");
        assert_eq!(socket.events("typing").filter(|t| t["isTyping"] == false).count(), 0);
    }
    dan_1.assert_no_event("newMessage", Duration::from_millis(300)).await;
    assert_eq!(dan_1.events("typing").count(), 0);

    cluster.stop().await;
}

/// The ids of the `newMessage` events of `conversation` that `socket` received so far.
fn messages_of(socket: &WsClient, conversation: &str) -> Vec<String> {
    socket
        .events("newMessage")
        .filter(|data| data["conversationId"] == conversation)
        .map(|data| data["_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A Socket.IO connection (WebSocket transport) whose `newMessage` events a task of its own
/// collects, answering the server's pings.
struct SocketIo {
    received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl SocketIo {
    /// Connected to instance `index` as `user`, once shown an online list with `user` in it.
    async fn connect(cluster: &Cluster, index: usize, user: &TestUser) -> Self {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        let port = cluster.instances[index].port;
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&token={}", user.token);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("the upgrade succeeds");
        ws.send(WsMessage::Text("40".into())).await.expect("the connect packet goes out");
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (online, mut shown) = tokio::sync::mpsc::unbounded_channel();
        let events = received.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(WsMessage::Text(text))) = ws.next().await {
                if text.as_str() == "2" {
                    let _ = ws.send(WsMessage::Text("3".into())).await;
                    continue;
                }
                let Some(Ok(Value::Array(packet))) = text.strip_prefix("42").map(serde_json::from_str) else {
                    continue;
                };
                match packet.first().and_then(Value::as_str) {
                    Some("newMessage") => events.lock().unwrap().push(packet[1].clone()),
                    Some("onlineUsers") => drop(online.send(packet[1].clone())),
                    _ => {}
                }
            }
        });
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let list = tokio::time::timeout_at(deadline, shown.recv()).await;
            let list = list.expect("an online list in time").expect("the connection is open");
            if online_ids(&list).contains(&user.id) {
                return Self { received, reader };
            }
        }
    }

    /// The ids of the `newMessage` events received so far (those of `group`, or the others).
    fn messages(&self, group: &str, of_group: bool) -> Vec<String> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|data| (data["conversationId"] == group) == of_group)
            .map(|data| data["_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until `count` `newMessage` events have arrived, then a moment more.
    async fn wait_for(&self, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.received.lock().unwrap().len() < count {
            assert!(Instant::now() < deadline, "{} of {count} messages", self.received.lock().unwrap().len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl Drop for SocketIo {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The value of the metric `name` in instance `index`'s `/metrics`.
async fn metric(cluster: &Cluster, index: usize, name: &str) -> f64 {
    let text = cluster.http.get(cluster.instances[index].url("/metrics")).send().await.unwrap();
    let text = text.text().await.unwrap();
    let line = text.lines().find(|line| line.split(' ').next() == Some(name));
    line.and_then(|line| line.split(' ').nth(1)).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
}

#[tokio::test]
async fn every_socket_gets_what_was_sent_during_a_redis_outage_exactly_once_in_order_after_it() {
    let mut redis = OwnRedis::start();
    let mut cluster = start_cluster(3, redis.url()).await;
    let ana = cluster.api(0).create_user("anna").await;
    let bo = cluster.api(1).create_user("boris").await;
    let cy = cluster.api(2).create_user("cyril").await;
    let group = cluster.api(0).create_group_ok(&ana, "Steady", &[&bo, &cy]).await;
    let group = group["_id"].as_str().expect("the group id").to_owned();
    // Two devices of each receiver on /ws, on instances 2 and 3.
    let mut sockets = [
        connect(&cluster, 1, &bo).await,
        connect(&cluster, 1, &bo).await,
        connect(&cluster, 2, &cy).await,
        connect(&cluster, 2, &cy).await,
    ];
    // And a third device of each, over Socket.IO.
    let socketio = [SocketIo::connect(&cluster, 1, &bo).await, SocketIo::connect(&cluster, 2, &cy).await];
    for index in 0..3 {
        assert_eq!(metric(&cluster, index, "realtime_bus_up").await, 1.0);
    }

    // Ana, on instance 1, writes to each and to the group every 100 ms: 2 s with Redis up,
    // 10 s without (accepted: the database is up), then none (only healing can deliver).
    let api = cluster.api(0);
    let (mut to_bo, mut to_cy, mut to_group) = (Vec::new(), Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let started = Instant::now();
    let mut killed = false;
    let mut number = 0;
    while started.elapsed() < Duration::from_secs(12) {
        tick.tick().await;
        if !killed && started.elapsed() >= Duration::from_secs(2) {
            redis.kill();
            killed = true;
        }
        number += 1;
        to_bo.push(send(&api, &ana, &bo, &format!("bo {number}")).await);
        to_cy.push(send(&api, &ana, &cy, &format!("cy {number}")).await);
        let entry = api.post_message_ok(&ana, &group, &format!("group {number}")).await;
        to_group.push(entry["_id"].as_str().expect("the message id").to_owned());
    }
    assert!(number >= 60, "a steady rate: {number} rounds");
    assert_eq!(metric(&cluster, 1, "realtime_bus_up").await, 0.0, "the bus is down on instance 2");

    redis.restart();
    let back = Instant::now();
    // Within a few seconds of Redis returning, each socket holds every message exactly
    // once, in the order sent: those of the outage were delivered by healing.
    let direct = [(&bo, &to_bo), (&bo, &to_bo), (&cy, &to_cy), (&cy, &to_cy)];
    for (socket, (receiver, sent)) in sockets.iter_mut().zip(direct) {
        socket.first_events("newMessage", sent.len() + to_group.len(), Duration::from_secs(15)).await;
        // A repeat would come right behind.
        socket.assert_no_event("newMessage", Duration::from_millis(300)).await;
        let of_group = messages_of(socket, &group);
        let mut direct = messages(socket);
        direct.retain(|id| !of_group.contains(id));
        assert_eq!(&direct, sent, "every message to {} once, in order", receiver.username);
        assert_eq!(of_group, to_group, "every group entry once, in order");
    }
    for (socket, (receiver, sent)) in socketio.iter().zip([(&bo, &to_bo), (&cy, &to_cy)]) {
        socket.wait_for(sent.len() + to_group.len(), Duration::from_secs(15)).await;
        assert_eq!(&socket.messages(&group, false), sent, "over Socket.IO to {}", receiver.username);
        assert_eq!(socket.messages(&group, true), to_group, "every group entry once, in order");
    }
    let healed_within = back.elapsed();
    assert!(healed_within < Duration::from_secs(12), "healed {healed_within:?} after Redis returned");
    for index in [1, 2] {
        cluster.wait_readiness(index, true, Duration::from_secs(10)).await;
        assert_eq!(metric(&cluster, index, "realtime_bus_up").await, 1.0);
        assert_eq!(metric(&cluster, index, "realtime_healing_backlog").await, 0.0);
        let healed = metric(&cluster, index, "realtime_healed_deliveries_total").await;
        assert!(healed >= 2.0 * 40.0, "instance {} healed {healed} deliveries", index + 1);
    }

    // And live delivery goes on: the next message arrives once.
    let after = send(&api, &ana, &bo, "after").await;
    for socket in &mut sockets[..2] {
        message(socket, &after).await;
        assert_eq!(socket.events("newMessage").filter(|data| data["_id"] == after.as_str()).count(), 1);
    }

    cluster.stop().await;
}

/// Runs `redis-cli` against the Redis (or sentinel) on `port`; its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let output = Command::new("redis-cli").args(["-p", &port]).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The local addresses of instance `index`'s open connections to the Redis on `port`
/// (`ss`), and what `ss` listed.
fn connections_to(cluster: &Cluster, index: usize, port: u16) -> (Vec<String>, String) {
    let pid = cluster.instances[index].pid().expect("the instance runs");
    let filter = format!("( dport = :{port} )");
    let sockets =
        Command::new("ss").args(["-tnpH", "state", "established", &filter]).output().expect("ss runs");
    let sockets = String::from_utf8_lossy(&sockets.stdout).into_owned();
    let own = sockets
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with("127.0.0.1:")))
        .map(str::to_owned)
        .collect();
    (own, sockets)
}

/// Cuts instance `index`'s subscription, and only it (`CLIENT KILL ID`): its connections
/// are told from the others' by their local addresses (`ss`).
fn cut_subscription(redis: &OwnRedis, cluster: &Cluster, index: usize) {
    let (own, sockets) = connections_to(cluster, index, redis.port);
    assert!(!own.is_empty(), "the connections of instance {} to Redis: {sockets}", index + 1);
    let clients = redis_cli(redis.port, &["CLIENT", "LIST", "TYPE", "pubsub"]);
    let id = clients
        .lines()
        .find(|line| own.iter().any(|address| line.contains(&format!(" addr={address} "))))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|id| id.strip_prefix("id="))
        .unwrap_or_else(|| panic!("the subscription of instance {} among {clients}", index + 1))
        .to_owned();
    assert_eq!(redis_cli(redis.port, &["CLIENT", "KILL", "ID", &id]).trim(), "1");
}

#[tokio::test]
async fn what_an_instance_sends_while_its_own_subscription_is_cut_reaches_the_others_once() {
    let redis = OwnRedis::start();
    let mut cluster = start_cluster(3, redis.url()).await;
    let ana = cluster.api(0).create_user("anna").await;
    let bo = cluster.api(1).create_user("boris").await;
    let cy = cluster.api(2).create_user("cyril").await;
    let group = cluster.api(0).create_group_ok(&ana, "Cut", &[&bo, &cy]).await;
    let group = group["_id"].as_str().expect("the group id").to_owned();
    let mut sockets =
        [connect(&cluster, 1, &bo).await, connect(&cluster, 1, &bo).await, connect(&cluster, 2, &cy).await];
    let healed_before = metric(&cluster, 1, "realtime_healed_connections_total").await;

    // Ana, on instance 1, writes every 50 ms for 1 s; then instance 1's subscription is cut,
    // and she writes once more at once: until it is back (in 50 to 100 ms), instance 1
    // publishes nothing, while the others stay subscribed. Nothing follows that would show
    // the others a gap: only healing brings them the last round.
    let api = cluster.api(0);
    let (mut to_bo, mut to_cy, mut to_group) = (Vec::new(), Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    let mut number = 0;
    let mut cut = false;
    while !cut {
        tick.tick().await;
        if started.elapsed() >= Duration::from_secs(1) {
            cut_subscription(&redis, &cluster, 0);
            tokio::time::sleep(Duration::from_millis(10)).await;
            cut = true;
        }
        number += 1;
        to_bo.push(send(&api, &ana, &bo, &format!("bo {number}")).await);
        to_cy.push(send(&api, &ana, &cy, &format!("cy {number}")).await);
        let entry = api.post_message_ok(&ana, &group, &format!("group {number}")).await;
        to_group.push(entry["_id"].as_str().expect("the message id").to_owned());
    }

    let direct = [(&bo, &to_bo), (&bo, &to_bo), (&cy, &to_cy)];
    for (socket, (receiver, sent)) in sockets.iter_mut().zip(direct) {
        socket.first_events("newMessage", sent.len() + to_group.len(), Duration::from_secs(10)).await;
        socket.assert_no_event("newMessage", Duration::from_millis(300)).await;
        let of_group = messages_of(socket, &group);
        let mut direct = messages(socket);
        direct.retain(|id| !of_group.contains(id));
        assert_eq!(&direct, sent, "every message to {} once, in order", receiver.username);
        assert_eq!(of_group, to_group, "every group entry once, in order");
    }
    // Instance 2 stayed subscribed: it healed because instance 1 asked.
    let healed = metric(&cluster, 1, "realtime_healed_connections_total").await;
    assert!(healed >= healed_before + 2.0, "instance 2 healed {healed} (before: {healed_before})");

    cluster.stop().await;
}

/// A primary, its replica and three sentinels that watch them as [`Sentinels::NAME`]:
/// `redis-server` processes of this test's own on free ports, in a folder of their own;
/// killed when dropped, and the folder removed (kept after a failure, for their logs).
struct Sentinels {
    dir: std::path::PathBuf,
    primary: u16,
    replica: u16,
    sentinels: Vec<u16>,
    children: Vec<Child>,
}

impl Sentinels {
    /// The name the sentinels monitor the primary under.
    const NAME: &str = "chat";

    /// All five running, the replica in sync and known to every sentinel.
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("chat-sentinel-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a folder for the test's Redis");
        let (primary, replica) = (free_port(), free_port());
        let mut redis = Self {
            dir,
            primary,
            replica,
            sentinels: (0..3).map(|_| free_port()).collect(),
            children: Vec::new(),
        };
        let base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        let (p, r) = (primary.to_string(), replica.to_string());
        // The replica's first sync starts at once, not after the default 5 s gathering delay.
        redis.spawn("primary", &[&["--port", &p, "--repl-diskless-sync-delay", "0"][..], &base].concat());
        redis.spawn("replica", &[&["--port", &r, "--replicaof", "127.0.0.1", &p][..], &base].concat());
        until_now("the replica is in sync", START_TIMEOUT, || {
            redis_cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
        });
        for (number, port) in redis.sentinels.clone().into_iter().enumerate() {
            let conf = redis.dir.join(format!("sentinel-{number}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n",
                name = Self::NAME
            );
            std::fs::write(&conf, text).expect("a sentinel's configuration");
            redis.spawn(&format!("sentinel-{number}"), &[conf.to_str().expect("a UTF-8 path"), "--sentinel"]);
        }
        for port in redis.sentinels.clone() {
            until_now("a sentinel answers", START_TIMEOUT, || {
                redis_answers(&format!("redis://127.0.0.1:{port}"))
            });
            // Sentinel looks at the old primary, once failed over, every 10 s (`info-period`)
            // and demotes it four `publish-period`s (8 s) after it saw it report its role: a
            // second and half a second here, so that it is demoted, and closes its clients,
            // about two seconds after the failover rather than up to twenty.
            let tuned =
                redis_cli(port, &["SENTINEL", "DEBUG", "info-period", "1000", "publish-period", "500"]);
            assert_eq!(tuned.trim(), "OK", "SENTINEL DEBUG on the sentinel at {port}");
            until_now("the sentinel knows the replica, in sync", START_TIMEOUT, || {
                let replicas = redis_cli(port, &["SENTINEL", "REPLICAS", Self::NAME]);
                let lines: Vec<&str> = replicas.lines().collect();
                lines.windows(2).any(|pair| pair == ["flags", "slave"])
                    && lines.windows(2).any(|pair| pair == ["master-link-status", "ok"])
            });
        }
        redis
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("a log file");
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle on the log"))
            .stderr(log)
            .spawn()
            .expect("redis-server is installed and on the PATH");
        self.children.push(child);
    }

    /// `host:port` of each sentinel, comma-separated (`CHAT__FANOUT__SENTINEL__ADDRESSES`).
    fn addresses(&self) -> String {
        self.sentinels.iter().map(|port| format!("127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }

    /// The port of the primary the sentinel on `sentinel` names.
    fn named_primary(sentinel: u16) -> Option<u16> {
        let address = redis_cli(sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::NAME]);
        address.lines().nth(1).and_then(|port| port.trim().parse().ok())
    }

    /// What the Redis on `port` answers to `ROLE`: `master` or `slave`.
    fn role(port: u16) -> String {
        redis_cli(port, &["ROLE"]).lines().next().unwrap_or_default().to_owned()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("the test's Redis and sentinel logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `check` (a blocking one, for setting up) every 20 ms until it holds, up to `within`.
fn until_now(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 50 ms until it holds, up to `within`; how long that took.
async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Where a sender writes: to a user, or to a group, by id.
#[derive(Clone, Debug)]
enum To {
    User(String),
    Group(String),
}

/// A message a sender had accepted (`201`): to which of its targets, its id, and when it
/// was sent.
struct Accepted {
    to: usize,
    id: String,
    at: Instant,
}

/// One message from `from` to each of `targets`, through `api`, numbered `round`: what was
/// accepted (a refusal is counted in `refused`, by status).
async fn send_round(
    api: &Api,
    from: &TestUser,
    targets: &[To],
    round: usize,
    accepted: &mut Vec<Accepted>,
    refused: &mut Vec<StatusCode>,
) {
    for (to, target) in targets.iter().enumerate() {
        let at = Instant::now();
        let text = format!("{} {round} to {to}", from.username);
        let reply = match target {
            To::User(id) => api.send(&from.token, id, &text).await,
            To::Group(id) => api.post_message(&from.token, id, &text).await,
        };
        if reply.status == StatusCode::CREATED {
            let id = reply.data(StatusCode::CREATED)["_id"].as_str().expect("the message id").to_owned();
            accepted.push(Accepted { to, id, at });
        } else {
            refused.push(reply.status);
        }
    }
}

/// `from` writes to each of `targets` through `api` every `every` until `stop` is set.
fn spawn_sender(
    api: Api,
    from: TestUser,
    targets: Vec<To>,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Accepted>, Vec<StatusCode>)> {
    tokio::spawn(async move {
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            round += 1;
            send_round(&api, &from, &targets, round, &mut accepted, &mut refused).await;
        }
        (accepted, refused)
    })
}

/// Waits until `socket` has `expected.len()` `newMessage` events (or fails at `deadline`,
/// naming what is missing), then a moment more for any repeat; then asserts that they are
/// `expected`, each once, in the order of each list (one list per sender and conversation).
async fn assert_received_once_in_order(
    socket: &mut WsClient,
    device: &str,
    expected: &[(&str, Vec<&Accepted>)],
    deadline: Instant,
    failover_at: Instant,
) {
    let count = expected.iter().map(|(_, list)| list.len()).sum();
    let within = deadline.saturating_duration_since(Instant::now());
    let waited =
        tokio::time::timeout(within, socket.first_events("newMessage", count, EVENT_TIMEOUT * 3)).await;
    if waited.is_err() {
        let received: BTreeSet<String> = messages(socket).into_iter().collect();
        let missing: Vec<String> = expected
            .iter()
            .flat_map(|(what, list)| list.iter().map(move |sent| (what, sent)))
            .filter(|(_, sent)| !received.contains(&sent.id))
            .map(|(what, sent)| {
                let at = sent.at.checked_duration_since(failover_at).map_or_else(
                    || format!("{:?} before", failover_at - sent.at),
                    |after| format!("{after:?} after"),
                );
                format!("{what} sent {at} the failover began")
            })
            .collect();
        panic!(
            "{device} has {} of {count} messages in time; missing {}: {missing:?}",
            received.len(),
            missing.len()
        );
    }
    // A repeat would come right behind.
    socket.assert_no_event("newMessage", Duration::from_millis(300)).await;
    let received = messages(socket);
    assert_eq!(received.len(), count, "{device}: every message once, nothing else");
    for (what, list) in expected {
        let ids: Vec<&str> = list.iter().map(|sent| sent.id.as_str()).collect();
        let got: Vec<&str> = received.iter().map(String::as_str).filter(|id| ids.contains(id)).collect();
        assert_eq!(got, ids, "{device}: every message {what} once, in the order sent");
    }
}

/// What a device of receiver `receiver` (0: Boris, 1: Cyril) is to get of what Ana
/// (`sent[0]`) and Daniel (`sent[1]`) sent: one list per sender and conversation.
fn expected_for(sent: &[Vec<Accepted>], receiver: usize) -> Vec<(&'static str, Vec<&Accepted>)> {
    let of = |sender: usize, to: usize| sent[sender].iter().filter(|s| s.to == to).collect();
    vec![
        ("from anna to the receiver", of(0, receiver)),
        ("from daniel to the receiver", of(1, receiver)),
        ("from anna to the group", of(0, 2)),
        ("from daniel to the group", of(1, 2)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_every_socket_gets_every_message_once_in_order_across_a_failover() {
    let redis = Sentinels::start();
    let addresses = redis.addresses();
    // The URL's host and port are not used behind Sentinel: the instances ask the sentinels.
    let sentinel_env = [
        ("CHAT__FANOUT__SENTINEL__MASTER_NAME", Sentinels::NAME),
        ("CHAT__FANOUT__SENTINEL__ADDRESSES", addresses.as_str()),
    ];
    let primary_url = format!("redis://127.0.0.1:{}", redis.primary);
    let mut cluster = start_cluster_with(3, primary_url, &sentinel_env).await;
    let ana = cluster.api(0).create_user("anna").await;
    let dan = cluster.api(0).create_user("daniel").await;
    let bo = cluster.api(1).create_user("boris").await;
    let cy = cluster.api(2).create_user("cyril").await;
    let group = cluster.api(0).create_group_ok(&ana, "Failover", &[&dan, &bo, &cy]).await;
    let group = group["_id"].as_str().expect("the group id").to_owned();
    // Two devices of each receiver, on instances 2 and 3.
    let mut sockets = [
        connect(&cluster, 1, &bo).await,
        connect(&cluster, 1, &bo).await,
        connect(&cluster, 2, &cy).await,
        connect(&cluster, 2, &cy).await,
    ];
    let mut healed_before = Vec::new();
    for index in 0..3 {
        assert_eq!(
            metric(&cluster, index, "realtime_bus_up").await,
            1.0,
            "instance {} is subscribed",
            index + 1
        );
        healed_before.push(metric(&cluster, index, "realtime_healed_connections_total").await);
    }

    // Ana and Daniel, on instance 1, each write to Boris, to Cyril and to the group every
    // 150 ms: before the failover, through it, and for 2 s after every instance is back.
    let targets = vec![To::User(bo.id.clone()), To::User(cy.id.clone()), To::Group(group.clone())];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let every = Duration::from_millis(150);
    let senders: Vec<_> = [&ana, &dan]
        .into_iter()
        .map(|from| spawn_sender(cluster.api(0), from.clone(), targets.clone(), every, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let failover_at = Instant::now();
    let sentinel = redis.sentinels[0];
    until("a sentinel starts the failover", Duration::from_secs(10), || {
        redis_cli(sentinel, &["SENTINEL", "FAILOVER", Sentinels::NAME]).trim() == "OK"
    })
    .await;
    let named_within =
        until("the three sentinels name the replica as primary", Duration::from_secs(15), || {
            redis.sentinels.iter().all(|&sentinel| Sentinels::named_primary(sentinel) == Some(redis.replica))
        })
        .await;
    // Demoted, the old primary closes its clients: the instances ask the sentinels again.
    until("the old primary is demoted to a replica", Duration::from_secs(20), || {
        Sentinels::role(redis.primary) == "slave"
    })
    .await;
    for index in 0..3 {
        cluster.wait_readiness(index, true, Duration::from_secs(15)).await;
    }
    until("every instance is connected to the new primary, none to the old", Duration::from_secs(10), || {
        (0..3).all(|index| {
            !connections_to(&cluster, index, redis.replica).0.is_empty()
                && connections_to(&cluster, index, redis.primary).0.is_empty()
        })
    })
    .await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = Vec::new();
    for sender in senders {
        let (accepted, refused) = sender.await.expect("a sender ran to its end");
        assert!(refused.is_empty(), "the database stayed up, yet sends were refused: {refused:?}");
        sent.push(accepted);
    }
    let during =
        |list: &Vec<Accepted>| list.iter().filter(|s| s.at >= failover_at && s.at <= settled).count();
    let after = |list: &Vec<Accepted>| list.iter().filter(|s| s.at > settled).count();
    for (from, list) in [&ana, &dan].iter().zip(&sent) {
        // Two rounds at least in each, however loaded the machine.
        assert!(during(list) >= 2 * 3, "{} sent through the failover: {}", from.username, during(list));
        assert!(after(list) >= 2 * 3, "{} sent after it: {}", from.username, after(list));
    }

    // Within seconds of the instances being back, each socket holds every accepted message
    // exactly once, in each sender's order: those lost on the bus in the switchover came by
    // healing.
    let delivered_by = settled + Duration::from_secs(8);
    let devices =
        ["boris's first device", "boris's second device", "cyril's first device", "cyril's second device"];
    for (number, socket) in sockets.iter_mut().enumerate() {
        let expected = expected_for(&sent, number / 2);
        assert_received_once_in_order(socket, devices[number], &expected, delivered_by, failover_at).await;
    }
    let complete_after = settled.elapsed();
    let mut healed = Vec::new();
    for (index, connections_before) in healed_before.into_iter().enumerate() {
        let instance = index + 1;
        let bus_up = metric(&cluster, index, "realtime_bus_up").await;
        assert_eq!(bus_up, 1.0, "instance {instance} is subscribed");
        let connections = metric(&cluster, index, "realtime_healed_connections_total").await;
        healed.push(metric(&cluster, index, "realtime_healed_deliveries_total").await);
        if index > 0 {
            assert_eq!(metric(&cluster, index, "realtime_healing_backlog").await, 0.0);
            // Its subscription came back on the new primary, and its two sockets caught up.
            assert!(
                connections >= connections_before + 2.0,
                "instance {instance}'s sockets caught up after the failover: {connections} (before: {connections_before})"
            );
        }
    }

    // After the failover, delivery is live: more rounds arrive once, in order, and nothing
    // more is healed.
    let (mut live, mut refused) = (Vec::new(), Vec::new());
    for round in 0..5 {
        send_round(&cluster.api(0), &ana, &targets, 1000 + round, &mut live, &mut refused).await;
    }
    assert!(refused.is_empty(), "{refused:?}");
    sent[0].extend(live);
    for (number, socket) in sockets.iter_mut().enumerate() {
        let expected = expected_for(&sent, number / 2);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        assert_received_once_in_order(socket, devices[number], &expected, deadline, failover_at).await;
    }
    for (index, before) in healed.iter().enumerate().skip(1) {
        let now = metric(&cluster, index, "realtime_healed_deliveries_total").await;
        assert_eq!(now, *before, "instance {} delivered the last rounds live, healing none", index + 1);
    }
    println!(
        "sent {} messages ({} through the failover); the sentinels named the new primary after {named_within:?}, \
         the instances were back on it after {:?}; every socket complete {complete_after:?} after that; \
         healed deliveries per instance {healed:?}",
        sent.iter().map(Vec::len).sum::<usize>(),
        sent.iter().map(during).sum::<usize>(),
        settled - failover_at,
    );

    cluster.stop().await;
}
