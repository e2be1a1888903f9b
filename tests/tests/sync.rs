//! Tries to break the message-stream guarantee: a client that keeps the last cursor it
//! processed and resumes from it (`/ws?since=`, Socket.IO `auth.since`, `GET
//! /api/v1/message/sync?since=`) never misses a message and never sees one twice, with many
//! concurrent senders retrying their sends, on one instance or several.
//!
//! Every scenario is driven by a seeded random generator: the seed is printed, and
//! `CHAT_SYNC_SEED=<n>` replays a failing run's choices (timing still varies).
//!
//! - `one_instance_*`: an in-process server on the backend of `CHAT_TEST_BACKEND`.
//! - `two_instances_*`: two `server` processes sharing one database, with Redis fan-out (like
//!   `tests/tests/cluster.rs`; needs a Redis at `CHAT_TEST_REDIS_URL`, default
//!   `redis://127.0.0.1:6379`, and builds the server binary unless `CHAT_SERVER_BIN` is set),
//!   on the backend of `CHAT_TEST_BACKEND` too (SQLite included: see [`cluster_backend`]).
//! - `socketio_*`: the published `socket.io-client` (Node, `tests/js`) as the resuming
//!   receiver.
//! - `*_edits_deletions_and_reactions_*`: message changes (edits, deletions, reactions,
//!   replies) among four users while their devices stay live, roam offline and back, or
//!   start from 0; every device must end on exactly the history's state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::cluster::{system_redis_url, Cluster, ClusterConfig};
use tests::{run_node_client, workspace_dir, Api, Backend, Reply, TestApp, TestUser};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one request, a handshake or an awaited event may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Watching for events that must not come.
const QUIET: Duration = Duration::from_millis(500);
/// The whole scenario, senders and receiver, must be done by then.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
const CLUSTER_SECRET: &str = "sync-test-secret-of-at-least-32-bytes!!";

// ---------------------------------------------------------------------------------------
// A seeded generator (SplitMix64): no dependency, and the same choices for the same seed.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// An independent generator for a task of its own.
    fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

fn seed(test: &str) -> u64 {
    let seed = match std::env::var("CHAT_SYNC_SEED") {
        Ok(text) => text.parse().expect("CHAT_SYNC_SEED is a number"),
        Err(_) => 0x5EED_0000 ^ test.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
    };
    eprintln!("{test}: seed {seed} (CHAT_SYNC_SEED={seed} to replay)");
    seed
}

// ---------------------------------------------------------------------------------------
// The servers under test: one in-process instance, or several processes.

/// What keeps the servers running; dropped (processes killed, database removed) at the end.
enum Servers {
    InProcess(TestApp),
    Cluster(Cluster),
}

struct Deployment {
    /// A client per instance.
    apis: Vec<Api>,
    servers: Servers,
}

impl Deployment {
    /// The real server in this process, on the backend of `CHAT_TEST_BACKEND`.
    async fn one_instance() -> Self {
        let app = TestApp::spawn().await;
        Self { apis: vec![app.api()], servers: Servers::InProcess(app) }
    }

    async fn cluster(backend: Backend, size: usize) -> Self {
        let config = ClusterConfig {
            backend,
            redis_url: system_redis_url(),
            prefix: "chat-sync-test",
            request_timeout: TIMEOUT,
            env: &[
                ("CHAT__SERVER__WORKERS", "2"),
                ("CHAT__STORAGE__ACQUIRE_TIMEOUT_MS", "5000"),
                ("CHAT__STORAGE__SYNCHRONOUS", "normal"),
                ("CHAT__AUTH__JWT_SECRET", CLUSTER_SECRET),
                ("CHAT__AUTH__BCRYPT_COST", "4"),
                ("CHAT__LOG__LEVEL", "warn"),
            ],
        };
        let cluster = Cluster::start(config, size).await;
        let apis = (0..size).map(|index| cluster.api(index)).collect();
        Self { apis, servers: Servers::Cluster(cluster) }
    }

    fn instances(&self) -> usize {
        self.apis.len()
    }

    /// The client of `instance`, counted round the instances.
    fn api(&self, instance: usize) -> &Api {
        &self.apis[instance % self.apis.len()]
    }

    fn ws_url(&self, instance: usize, token: &str, since: u64) -> String {
        format!("{}?token={token}&since={since}", self.api(instance).ws_url())
    }

    /// A send with `key` as `clientMessageId`.
    async fn send(&self, instance: usize, from: &TestUser, to: &TestUser, text: &str, key: &str) -> Reply {
        let body = json!({ "message": text, "clientMessageId": key });
        self.api(instance)
            .post_json(&format!("/api/v1/message/send/{}", to.id), &body, Some(&from.token))
            .await
    }

    /// One `GET /api/v1/message/sync` page's `responseData`.
    async fn sync(&self, instance: usize, user: &TestUser, since: Option<u64>, limit: u32) -> Value {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(since) = since {
            query.push(("since", since.to_string()));
        }
        let api = self.api(instance);
        let reply = api
            .execute(api.request(Method::GET, "/api/v1/message/sync", Some(&user.token)).query(&query))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "sync of {} since {since:?}: {}", user.username, reply.text);
        assert_eq!(reply.body["success"], true, "{}", reply.text);
        reply.body["responseData"].clone()
    }

    /// `user`'s whole stream through sync pages of `limit`, checking the paging as it goes.
    async fn whole_stream(&self, instance: usize, user: &TestUser, limit: u32) -> Vec<Value> {
        let mut items: Vec<Value> = Vec::new();
        let mut since = None;
        loop {
            let page = self.sync(instance, user, since, limit).await;
            let messages = page["messages"].as_array().unwrap_or_else(|| panic!("messages: {page}"));
            let next = cursor_of(&page["nextCursor"], "nextCursor");
            assert!(messages.len() <= limit as usize, "a page above its limit: {}", messages.len());
            for item in messages {
                let cursor = cursor_of(&item["cursor"], "a sync item's cursor");
                assert_eq!(
                    cursor,
                    items.len() as u64 + 1,
                    "sync of {}: cursors 1, 2, 3…: {item}",
                    user.username
                );
                items.push(item.clone());
            }
            assert_eq!(next, items.len() as u64, "nextCursor is the last item's cursor: {page}");
            let has_more = page["hasMore"].as_bool().unwrap_or_else(|| panic!("hasMore: {page}"));
            if !has_more {
                // The end really is the end.
                let after = self.sync(instance, user, Some(next), limit).await;
                assert_eq!(after["messages"], json!([]), "hasMore was false: {after}");
                return items;
            }
            assert!(!messages.is_empty(), "an empty page with hasMore: {page}");
            since = Some(next);
        }
    }

    /// The whole conversation of `user` with `other`, oldest first, through history pages.
    async fn history(&self, instance: usize, user: &TestUser, other: &TestUser) -> Vec<Value> {
        let mut older_first: Vec<Value> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut query = vec![("limit", "200")];
            if let Some(before) = &before {
                query.push(("before", before));
            }
            let reply = self.api(instance).get_messages(&user.token, &other.id, &query).await;
            assert_eq!(reply.status, StatusCode::OK, "history: {}", reply.text);
            let page = reply.body["responseData"]["messages"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                return older_first;
            }
            before = Some(page[0]["_id"].as_str().expect("_id").to_owned());
            let mut page = page;
            page.append(&mut older_first);
            older_first = page;
        }
    }

    async fn stop(self) {
        match self.servers {
            Servers::InProcess(app) => app.stop().await,
            Servers::Cluster(mut cluster) => cluster.stop().await,
        }
    }
}

fn cursor_of(value: &Value, what: &str) -> u64 {
    let text = value.as_str().unwrap_or_else(|| panic!("{what} must be a string: {value}"));
    assert!(
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
        "{what} must be decimal digits: {value}"
    );
    text.parse().unwrap_or_else(|e| panic!("{what} {text:?}: {e}"))
}

fn without_cursor(item: &Value) -> Value {
    let mut message = item.clone();
    message.as_object_mut().expect("a message object").remove("cursor");
    message
}

fn id_of(message: &Value) -> String {
    message["_id"].as_str().unwrap_or_else(|| panic!("a message without _id: {message}")).to_owned()
}

// ---------------------------------------------------------------------------------------
// Several `server` processes on one database, with Redis fan-out (`tests::cluster`, as in
// cluster.rs).

/// The backend the two-instance tests run on: the one of `CHAT_TEST_BACKEND`, all three.
///
/// PostgreSQL and MongoDB are shared by several instances by design (docs/SCALING.md). With
/// SQLite the two processes open the same database file on this machine (WAL mode, which
/// SQLite supports across processes): not a deployment docs/SCALING.md offers, but the
/// store's guarantees are per database file, so it must hold there too, and it does reliably
/// (every run of this test on SQLite so far passed). Should that ever have to change, make
/// this function pick PostgreSQL for SQLite, with a line saying so: never a silent skip.
fn cluster_backend() -> Backend {
    Backend::from_env()
}

// ---------------------------------------------------------------------------------------
// The scenario: senders retrying sends with client keys, and a receiver that keeps
// disconnecting and resuming from the last cursor it processed.

#[derive(Debug, Clone, Copy)]
struct Plan {
    senders: usize,
    /// Sends per sender (each to the receiver).
    sends_each: usize,
    /// Sends of the receiver back to random senders.
    replies: usize,
    /// Percentage of sends raced by 1–2 copies with the same key, sent at the same moment
    /// (to different instances when there are several).
    race_percent: u64,
    /// Percentage of sends retried once after the first answer (through another instance
    /// when there are several).
    late_retry_percent: u64,
    /// Upper bound of the random pause between two sends of one sender, in milliseconds.
    pause_ms: u64,
}

/// One logical send: its key, and the message the first (201) answer returned.
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    from: String,
    to: String,
    text: String,
    stored: Value,
}

#[derive(Debug, Default)]
struct Counters {
    raced_sends: AtomicUsize,
    racing_copies: AtomicUsize,
    late_retries: AtomicUsize,
    /// Sends answered 503 (and tried again).
    unavailable: AtomicUsize,
    /// Sends whose first answer was 503 and whose retry found the message stored.
    stored_despite_unavailable: AtomicUsize,
}

/// How many times a send answered 503 is tried again before the test gives up.
const UNAVAILABLE_ATTEMPTS: usize = 8;

/// A send with `key`, tried again with the same key while the answer is 503 `UNAVAILABLE`
/// (the store took longer than its deadline: under heavy contention a slow store, such as
/// the MongoDB stand-in of the test machine, may), as a client would: each try goes to the
/// next instance. Returns the first other answer, and whether a 503 came before it (a send
/// answered 503 may have been stored all the same, so its retry may be the first to answer,
/// with 200).
async fn send_answered(
    deployment: &Deployment,
    instance: usize,
    from: &TestUser,
    to: &TestUser,
    text: &str,
    key: &str,
    counters: &Counters,
) -> (Reply, bool) {
    let mut unavailable = false;
    for attempt in 0..UNAVAILABLE_ATTEMPTS {
        let reply = deployment.send(instance + attempt, from, to, text, key).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            return (reply, unavailable);
        }
        assert_eq!(reply.body["code"], "UNAVAILABLE", "{}", reply.text);
        unavailable = true;
        counters.unavailable.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1))).await;
    }
    panic!("sending {key}: 503 {UNAVAILABLE_ATTEMPTS} times in a row");
}

/// Sends `count` messages from `me` to random `peers`, each with a key of its own, some raced
/// or retried. Returns what was stored.
async fn run_sender(
    deployment: Arc<Deployment>,
    me: TestUser,
    peers: Vec<TestUser>,
    count: usize,
    plan: Plan,
    mut rng: Rng,
    counters: Arc<Counters>,
) -> Vec<Sent> {
    let instances = deployment.instances();
    let mut sent = Vec::with_capacity(count);
    for n in 0..count {
        let to = &peers[rng.below(peers.len() as u64) as usize];
        let key = format!("{}:{n:04}:{:08x}", me.username, rng.next_u64() as u32);
        let text = format!("{} #{n} to {} [{key}]", me.username, to.username);
        let home = rng.below(instances as u64) as usize;
        let roll = rng.below(100);
        let send = |instance: usize| send_answered(&deployment, instance, &me, to, &text, &key, &counters);
        let stored = if roll < plan.race_percent {
            let copies = 2 + rng.below(2) as usize;
            let replies = futures_util::future::join_all((0..copies).map(|c| send(home + c))).await;
            let created = replies.iter().filter(|(r, _)| r.status == StatusCode::CREATED).count();
            let unavailable = replies.iter().any(|(_, unavailable)| *unavailable);
            // Exactly one 201, unless a copy was answered 503 and stored after its deadline.
            assert!(
                created == 1 || (created == 0 && unavailable),
                "{copies} racing sends of {key}: {created} answered 201: {replies:#?}"
            );
            for (reply, _) in &replies {
                assert!(
                    reply.status == StatusCode::CREATED || reply.status == StatusCode::OK,
                    "a racing send of {key}: {}",
                    reply.text
                );
            }
            let stored = replies[0].0.body["responseData"].clone();
            for (reply, _) in &replies {
                assert_eq!(
                    reply.body["responseData"], stored,
                    "racing sends of {key} return the same message"
                );
            }
            counters.raced_sends.fetch_add(1, Ordering::Relaxed);
            counters.racing_copies.fetch_add(copies - 1, Ordering::Relaxed);
            stored
        } else {
            let (reply, unavailable) = send(home).await;
            if unavailable && reply.status == StatusCode::OK {
                // Stored by the attempt answered 503.
                counters.stored_despite_unavailable.fetch_add(1, Ordering::Relaxed);
            } else {
                assert_eq!(reply.status, StatusCode::CREATED, "sending {key}: {}", reply.text);
            }
            let stored = reply.body["responseData"].clone();
            if roll < plan.race_percent + plan.late_retry_percent {
                let (again, _) = send(home + 1).await;
                assert_eq!(again.status, StatusCode::OK, "retrying {key} after it returned: {}", again.text);
                assert_eq!(again.body["responseData"], stored, "a retry of {key} returns the stored message");
                counters.late_retries.fetch_add(1, Ordering::Relaxed);
            }
            stored
        };
        assert_eq!(stored["senderId"], me.id.as_str(), "{stored}");
        assert_eq!(stored["receiverId"], to.id.as_str(), "{stored}");
        assert_eq!(stored["message"], text.as_str(), "{stored}");
        assert_eq!(stored["clientMessageId"], key.as_str(), "{stored}");
        sent.push(Sent { key, from: me.id.clone(), to: to.id.clone(), text, stored });
        let pause = rng.between(0, plan.pause_ms);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    sent
}

/// What a resuming client has processed: the last cursor, and every event in order.
struct Processed {
    user: TestUser,
    last: u64,
    events: Vec<Value>,
    ids: HashSet<String>,
}

impl Processed {
    fn new(user: TestUser) -> Self {
        Self { user, last: 0, events: Vec::new(), ids: HashSet::new() }
    }

    /// The first cursor processed (1 for a client that started from the beginning).
    fn first(&self) -> Option<u64> {
        self.events.first().map(|e| cursor_of(&e["cursor"], "a processed cursor"))
    }

    /// Takes one message (an event's data or a sync item): it must be the next position.
    fn take(&mut self, item: &Value, whence: &str) {
        let cursor = cursor_of(&item["cursor"], &format!("{whence}: the cursor"));
        if cursor != self.last + 1 {
            let recent: Vec<String> = self.events[self.events.len().saturating_sub(5)..]
                .iter()
                .map(|e| format!("{}={}", e["cursor"], e["_id"]))
                .collect();
            panic!(
                "{whence}: cursor {cursor} after {} ({}); recent: {recent:?}; item: {item}",
                self.last,
                if cursor <= self.last { "a repeat" } else { "a gap" }
            );
        }
        let id = id_of(item);
        assert!(self.ids.insert(id.clone()), "{whence}: message {id} processed twice: {item}");
        assert!(
            item["senderId"] == self.user.id.as_str() || item["receiverId"] == self.user.id.as_str(),
            "{whence}: not a message of {}: {item}",
            self.user.username
        );
        self.last = cursor;
        self.events.push(item.clone());
    }
}

#[derive(Debug, Default)]
struct ReceiverStats {
    ws_sessions: usize,
    sync_reads: usize,
    ended_by_server: usize,
    events_by_ws: usize,
    items_by_sync: usize,
}

/// How a `/ws` session ends.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// After `linger`, dropping the connection without a close handshake.
    After(Duration),
    /// Once `last` reaches the cursor; then watching `QUIET` for anything more.
    CaughtUpTo(u64),
}

/// A `/ws` connection to `url` within the timeout; `whence` names it in failures.
async fn open_ws(url: String, whence: &str) -> WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Err(_) => panic!("{whence}: the handshake timed out"),
        Ok(Err(error)) => panic!("{whence}: the handshake failed: {error}"),
        Ok(Ok((socket, _))) => socket,
    }
}

/// One `/ws?since=<last>` connection on `instance`, processing `newMessage` events.
async fn ws_session(
    deployment: &Deployment,
    instance: usize,
    processed: &mut Processed,
    leave: Leave,
    stats: &mut ReceiverStats,
    session: usize,
) {
    let since = processed.last;
    let url = deployment.ws_url(instance, &processed.user.token, since);
    let whence = format!("/ws session {session} on instance {} since {since}", instance + 1);
    let mut socket = open_ws(url, &whence).await;
    stats.ws_sessions += 1;
    let deadline = match leave {
        Leave::After(linger) => Instant::now() + linger,
        Leave::CaughtUpTo(_) => Instant::now() + TIMEOUT,
    };
    let mut quiet_until: Option<Instant> = None;
    if let Leave::CaughtUpTo(total) = leave {
        if processed.last == total {
            quiet_until = Some(Instant::now() + QUIET);
        }
    }
    loop {
        let until = quiet_until.unwrap_or(deadline);
        let frame = match tokio::time::timeout_at(until, socket.next()).await {
            Err(_) => {
                if let Leave::CaughtUpTo(total) = leave {
                    assert!(
                        quiet_until.is_some(),
                        "{whence}: not caught up within {TIMEOUT:?}: at {} of {total}",
                        processed.last
                    );
                }
                break;
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Frame::Close(_)))) => {
                assert!(
                    matches!(leave, Leave::After(_)),
                    "{whence}: the server ended the connection while draining at {}",
                    processed.last
                );
                stats.ended_by_server += 1;
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Frame::Text(text) = frame else { continue };
        let value: Value = serde_json::from_str(text.as_str())
            .unwrap_or_else(|e| panic!("{whence}: a frame that is not JSON ({e}): {text}"));
        if value["event"] != "newMessage" {
            continue;
        }
        assert!(quiet_until.is_none(), "{whence}: a newMessage after catching up: {value}");
        processed.take(&value["data"], &whence);
        stats.events_by_ws += 1;
        if let Leave::CaughtUpTo(total) = leave {
            assert!(
                processed.last <= total,
                "{whence}: cursor {} beyond the {total} messages sent",
                processed.last
            );
            if processed.last == total {
                quiet_until = Some(Instant::now() + QUIET);
            }
        }
    }
    // Abruptly: no close frame, the TCP connection just goes.
    drop(socket);
}

/// A connection of `user` opened without `since` before the sends start and kept open: it must
/// get the messages stored from then on, at consecutive cursors, each once, while messages
/// from every instance arrive at once. (If the server has to close it, with the resync code,
/// it resumes with `since` as a client must: counted, not a failure.) Reads until the
/// senders are done and it has the `total` messages of `user`'s stream, then 500 ms more.
async fn run_listener(
    deployment: Arc<Deployment>,
    instance: usize,
    user: TestUser,
    ready: tokio::sync::oneshot::Sender<()>,
    senders_done: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
) -> (Processed, usize) {
    let mut processed = Processed::new(user.clone());
    let mut started = false;
    let mut ready = Some(ready);
    let mut resumed = 0;
    let deadline = Instant::now() + SCENARIO_LIMIT;
    let mut since: Option<u64> = None;
    loop {
        let url = match since {
            None => format!("{}?token={}", deployment.api(instance).ws_url(), user.token),
            Some(since) => deployment.ws_url(instance, &user.token, since),
        };
        let whence = format!("{}'s steady connection on instance {}", user.username, instance + 1);
        let mut socket = open_ws(url, &whence).await;
        let mut quiet_until: Option<Instant> = None;
        let ended = loop {
            assert!(
                Instant::now() < deadline,
                "{whence}: still at {} after {SCENARIO_LIMIT:?}",
                processed.last
            );
            if senders_done.load(Ordering::SeqCst) && processed.last == total.load(Ordering::SeqCst) {
                let until = *quiet_until.get_or_insert_with(|| Instant::now() + QUIET);
                if Instant::now() >= until {
                    break false;
                }
            }
            let frame = match tokio::time::timeout(Duration::from_millis(50), socket.next()).await {
                Err(_) => continue,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Frame::Close(_)))) => break true,
                Ok(Some(Ok(frame))) => frame,
            };
            let Frame::Text(text) = frame else { continue };
            let value: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
            let data = &value["data"];
            if value["event"] == "onlineUsers" && data.as_array().is_some_and(|a| a.contains(&json!(user.id)))
            {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            if value["event"] != "newMessage" {
                continue;
            }
            assert!(quiet_until.is_none(), "{whence}: a newMessage after the last one: {value}");
            if !started {
                // Without since: from wherever the stream stood when it connected.
                let cursor = cursor_of(&data["cursor"], &format!("{whence}: the cursor"));
                processed.last = cursor - 1;
                started = true;
            }
            processed.take(data, &whence);
        };
        if !ended {
            return (processed, resumed);
        }
        // Closed by the server: resume from the last cursor processed, as a client must.
        assert!(started, "{whence}: closed before its first message");
        since = Some(processed.last);
        resumed += 1;
    }
}

/// The receiver: `/ws` sessions of 10–300 ms alternating between the instances, sometimes a
/// sync page instead, each resuming from the last cursor processed, until the senders are
/// done; then one last resume until caught up with all `total` messages.
async fn run_receiver(
    deployment: Arc<Deployment>,
    me: TestUser,
    mut rng: Rng,
    senders_done: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
) -> (Processed, ReceiverStats) {
    let mut processed = Processed::new(me.clone());
    let mut stats = ReceiverStats::default();
    let instances = deployment.instances();
    let mut round = 0usize;
    while !senders_done.load(Ordering::SeqCst) {
        let instance = round % instances;
        round += 1;
        if rng.percent(15) {
            let limit = rng.between(1, 40) as u32;
            let since = processed.last;
            let page = deployment.sync(instance, &me, Some(since), limit).await;
            let whence = format!("sync read {round} on instance {} since {since}", instance + 1);
            let items = page["messages"].as_array().unwrap_or_else(|| panic!("{whence}: {page}"));
            assert!(items.len() <= limit as usize, "{whence}: above the limit");
            for item in items {
                processed.take(item, &whence);
            }
            assert_eq!(cursor_of(&page["nextCursor"], "nextCursor"), processed.last, "{whence}: {page}");
            stats.sync_reads += 1;
            stats.items_by_sync += items.len();
        } else {
            let linger = Duration::from_millis(rng.between(10, 300));
            ws_session(&deployment, instance, &mut processed, Leave::After(linger), &mut stats, round).await;
        }
    }
    let total = total.load(Ordering::SeqCst);
    let instance = round % instances;
    round += 1;
    ws_session(&deployment, instance, &mut processed, Leave::CaughtUpTo(total), &mut stats, round).await;
    // And once more from the end, on the other instance: nothing.
    round += 1;
    ws_session(&deployment, round % instances, &mut processed, Leave::CaughtUpTo(total), &mut stats, round)
        .await;
    (processed, stats)
}

/// Runs the scenario on `deployment` and checks the guarantee.
async fn stress(deployment: Deployment, plan: Plan, test: &str) {
    let started = Instant::now();
    let mut rng = Rng(seed(test));
    let deployment = Arc::new(deployment);
    let instances = deployment.instances();
    let receiver = deployment.api(0).create_user("receiver").await;
    let mut senders = Vec::new();
    for i in 0..plan.senders {
        senders.push(deployment.api(i % instances).create_user(&format!("sender{i}")).await);
    }

    let senders_done = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(Counters::default());
    // Steady connections without since: the receiver's on every instance, and the first
    // sender's (its stream is its conversation with the receiver).
    let sender_total = Arc::new(AtomicU64::new(0));
    let mut listening = Vec::new();
    let steady = (0..instances).map(|i| (i, receiver.clone(), total.clone())).chain([(
        1 % instances,
        senders[0].clone(),
        sender_total.clone(),
    )]);
    for (instance, user, target) in steady {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        listening.push(tokio::spawn(run_listener(
            deployment.clone(),
            instance,
            user,
            ready,
            senders_done.clone(),
            target,
        )));
        tokio::time::timeout(TIMEOUT, is_ready).await.expect("a steady connection is shown online").ok();
    }
    let receiving = tokio::spawn(run_receiver(
        deployment.clone(),
        receiver.clone(),
        rng.fork(),
        senders_done.clone(),
        total.clone(),
    ));
    let mut sending: Vec<_> = senders
        .iter()
        .map(|sender| {
            tokio::spawn(run_sender(
                deployment.clone(),
                sender.clone(),
                vec![receiver.clone()],
                plan.sends_each,
                plan,
                rng.fork(),
                counters.clone(),
            ))
        })
        .collect();
    sending.push(tokio::spawn(run_sender(
        deployment.clone(),
        receiver.clone(),
        senders.clone(),
        plan.replies,
        plan,
        rng.fork(),
        counters.clone(),
    )));

    let all_sent = tokio::time::timeout(SCENARIO_LIMIT, futures_util::future::join_all(sending))
        .await
        .unwrap_or_else(|_| panic!("the senders did not finish within {SCENARIO_LIMIT:?}"));
    let mut sent: Vec<Sent> = Vec::new();
    for outcome in all_sent {
        match outcome {
            Ok(batch) => sent.extend(batch),
            Err(error) => {
                receiving.abort();
                match error.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(error) => panic!("a sender task failed: {error}"),
                }
            }
        }
    }
    let sending_took = started.elapsed();
    total.store(sent.len() as u64, Ordering::SeqCst);
    let of_sender0 = sent.iter().filter(|s| s.from == senders[0].id || s.to == senders[0].id).count();
    sender_total.store(of_sender0 as u64, Ordering::SeqCst);
    senders_done.store(true, Ordering::SeqCst);
    let (processed, stats) = match tokio::time::timeout(SCENARIO_LIMIT, receiving).await {
        Err(_) => panic!("the receiver did not catch up within {SCENARIO_LIMIT:?}"),
        Ok(Err(error)) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("the receiver task failed: {error}"),
        },
        Ok(Ok(outcome)) => outcome,
    };
    let mut listened = Vec::new();
    for listener in listening {
        match tokio::time::timeout(SCENARIO_LIMIT, listener).await {
            Err(_) => panic!("a steady connection did not finish within {SCENARIO_LIMIT:?}"),
            Ok(Err(error)) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("a steady connection's task failed: {error}"),
            },
            Ok(Ok(outcome)) => listened.push(outcome),
        }
    }
    let steady_resumes: usize = listened.iter().map(|(_, resumed)| resumed).sum();
    eprintln!(
        "{test}: {} messages ({} raced by {} copies, {} retried late; {} answers 503, {} of them stored anyway) \
         sent in {sending_took:?} on {instances} instance(s); the receiver resumed {} times over /ws ({} events, \
         {} ended by the server) and read {} sync pages ({} items); {} steady connections resumed {steady_resumes} \
         times",
        sent.len(),
        counters.raced_sends.load(Ordering::Relaxed),
        counters.racing_copies.load(Ordering::Relaxed),
        counters.late_retries.load(Ordering::Relaxed),
        counters.unavailable.load(Ordering::Relaxed),
        counters.stored_despite_unavailable.load(Ordering::Relaxed),
        stats.ws_sessions,
        stats.events_by_ws,
        stats.ended_by_server,
        stats.sync_reads,
        stats.items_by_sync,
        listened.len(),
    );
    assert!(stats.ws_sessions >= 5, "the scenario should resume many times: {stats:?}");

    verify(&deployment, &receiver, &senders, &sent, &processed).await;
    for (steady, _) in &listened {
        let stream = deployment.whole_stream(0, &steady.user, 200).await;
        let first = steady
            .first()
            .unwrap_or_else(|| panic!("{}'s steady connection got nothing", steady.user.username));
        let expected = &stream[first as usize - 1..];
        assert_eq!(
            steady.events.len(),
            expected.len(),
            "{}'s steady connection: from {first} to the end",
            steady.user.username
        );
        for (got, stored) in steady.events.iter().zip(expected) {
            assert_eq!(got, stored, "{}'s steady connection got what is stored", steady.user.username);
        }
        assert_eq!(first, 1, "{}'s steady connection was open before the first send", steady.user.username);
    }
    eprintln!("{test}: verified in {:?} overall", started.elapsed());

    let deployment = Arc::into_inner(deployment).expect("every task is done with the deployment");
    deployment.stop().await;
}

/// The receiver processed exactly the stored stream; each logical send is stored once.
async fn verify(
    deployment: &Deployment,
    receiver: &TestUser,
    senders: &[TestUser],
    sent: &[Sent],
    processed: &Processed,
) {
    let instances = deployment.instances();
    // What is stored, paged two ways (from different instances when there are several).
    let stream = deployment.whole_stream(0, receiver, 200).await;
    let stream_by_37 = deployment.whole_stream(1 % instances, receiver, 37).await;
    assert!(stream == stream_by_37, "the stream is the same whatever the page size");
    assert_eq!(stream.len(), sent.len(), "one stored message per logical send");

    // The receiver processed exactly that, in order.
    assert_eq!(
        processed.events.len(),
        stream.len(),
        "processed {} of {}",
        processed.events.len(),
        stream.len()
    );
    for (position, (got, stored)) in processed.events.iter().zip(&stream).enumerate() {
        assert_eq!(got, stored, "position {}: the event differs from the stored message", position + 1);
    }

    // Each key once, as the first answer returned it.
    let by_key: HashMap<&str, &Sent> = sent.iter().map(|s| (s.key.as_str(), s)).collect();
    assert_eq!(by_key.len(), sent.len(), "the scenario's keys are unique");
    let mut keys_seen = HashSet::new();
    for item in &stream {
        let key = item["clientMessageId"].as_str().unwrap_or_else(|| panic!("no clientMessageId: {item}"));
        assert!(keys_seen.insert(key.to_owned()), "key {key} stored twice");
        let logical = by_key.get(key).unwrap_or_else(|| panic!("a stored message nobody sent: {item}"));
        assert_eq!(without_cursor(item), logical.stored, "the stored message is what the send returned");
        assert_eq!(item["senderId"], logical.from.as_str());
        assert_eq!(item["receiverId"], logical.to.as_str());
        assert_eq!(item["message"], logical.text.as_str());
    }

    // The conversations' histories hold the same messages, each once.
    let by_id: HashMap<String, &Value> = stream.iter().map(|item| (id_of(item), item)).collect();
    assert_eq!(by_id.len(), stream.len(), "message ids are unique");
    let mut in_histories = 0;
    for (i, sender) in senders.iter().enumerate() {
        let history = deployment.history(i % instances, receiver, sender).await;
        let ids: Vec<String> = history.iter().map(id_of).collect();
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "a repeat in the history with {}",
            sender.username
        );
        for message in &history {
            let item = by_id
                .get(&id_of(message))
                .unwrap_or_else(|| panic!("in the history but not in the stream: {message}"));
            assert_eq!(&without_cursor(item), message, "the history's copy equals the stream's");
        }
        let expected = sent
            .iter()
            .filter(|s| {
                (s.from == sender.id && s.to == receiver.id) || (s.from == receiver.id && s.to == sender.id)
            })
            .count();
        assert_eq!(
            history.len(),
            expected,
            "the conversation with {} holds each of its sends once",
            sender.username
        );
        in_histories += history.len();

        // The sender's own stream: exactly that conversation, numbered from 1, in the same
        // store order as in the receiver's stream.
        let own = deployment.whole_stream((i + 1) % instances, sender, 200).await;
        let own_ids: Vec<String> = own.iter().map(id_of).collect();
        let order_in_receivers: Vec<String> = stream
            .iter()
            .filter(|item| item["senderId"] == sender.id.as_str() || item["receiverId"] == sender.id.as_str())
            .map(id_of)
            .collect();
        assert_eq!(
            own_ids, order_in_receivers,
            "{}'s stream is the conversation, in store order",
            sender.username
        );
    }
    assert_eq!(in_histories, stream.len(), "every message of the stream is in one of the histories");
}

/// 540 messages over about 4 s: the receiver resumes some 25 times meanwhile.
const ONE_INSTANCE: Plan =
    Plan { senders: 6, sends_each: 80, replies: 60, race_percent: 10, late_retry_percent: 10, pause_ms: 80 };

/// 430 messages, retries racing across the two instances.
const TWO_INSTANCES: Plan =
    Plan { senders: 6, sends_each: 65, replies: 40, race_percent: 12, late_retry_percent: 10, pause_ms: 80 };

/// `plan` sized for `backend`: the MongoDB stand-in of the test machine (SecantusDB, see
/// scripts/start-mongodb.sh) takes some 20 sends a second under this contention where the
/// others take hundreds, so it gets fewer messages (still ~300) and no pauses beyond its own
/// latency, to stay well under a minute.
fn sized(plan: Plan, backend: Backend) -> Plan {
    match backend {
        Backend::Mongodb => Plan {
            sends_each: plan.sends_each * 6 / 10,
            replies: plan.replies * 6 / 10,
            pause_ms: 20,
            ..plan
        },
        Backend::Sqlite | Backend::Postgres | Backend::Memory => plan,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_a_resuming_receiver_sees_every_message_once_in_order() {
    let deployment = Deployment::one_instance().await;
    stress(deployment, sized(ONE_INSTANCE, Backend::from_env()), "one_instance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_a_resuming_receiver_sees_every_message_once_in_order() {
    let backend = cluster_backend();
    let deployment = Deployment::cluster(backend, 2).await;
    stress(deployment, sized(TWO_INSTANCES, backend), "two_instances").await;
}

// ---------------------------------------------------------------------------------------
// Connections opened without `since` while messages arrive.

/// How many connections open, one after another, while the sender sends.
const FRESH_CONNECTIONS: usize = 60;
/// How many more messages are sent once every connection is open.
const FRESH_TAIL: u64 = 5;

/// Opens connections of one receiver without `since`, alternating between the instances,
/// while a sender keeps sending to it, then has FRESH_TAIL more messages sent. Each
/// connection must start no later than the message in flight when it opened, and get every
/// message from there on at consecutive cursors, each once, up to the last, whether its
/// replay read the store or was skipped. (One instance only: the fan-out between instances
/// reaches the same registry, and two processes sharing one SQLite file make this slow.)
async fn fresh_connections(deployment: Deployment) {
    let deployment = Arc::new(deployment);
    let sender = deployment.api(0).create_user("fresh_sender").await;
    let receiver = deployment.api(0).create_user("fresh_receiver").await;
    // Sends answered so far, and how many to send in all (open-ended until every
    // connection is open).
    let (answered, until) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(u64::MAX)));
    let sending = tokio::spawn({
        let (deployment, answered, until) = (deployment.clone(), answered.clone(), until.clone());
        let (sender, receiver) = (sender.clone(), receiver.clone());
        async move {
            let counters = Counters::default();
            let mut n = 0;
            while n < until.load(Ordering::SeqCst) {
                let key = format!("fresh-{n}");
                let (reply, _) =
                    send_answered(&deployment, n as usize, &sender, &receiver, &key, &key, &counters).await;
                assert!(reply.status.is_success(), "sending {key}: {}", reply.text);
                n += 1;
                answered.store(n, Ordering::SeqCst);
            }
            n
        }
    });
    let mut connections = Vec::with_capacity(FRESH_CONNECTIONS);
    for i in 0..FRESH_CONNECTIONS {
        let url = format!("{}?token={}", deployment.api(i).ws_url(), receiver.token);
        let socket = open_ws(url, &format!("fresh connection {i}")).await;
        connections.push((socket, answered.load(Ordering::SeqCst)));
    }
    until.store(answered.load(Ordering::SeqCst) + FRESH_TAIL, Ordering::SeqCst);
    let total = sending.await.expect("the sender");
    eprintln!("{FRESH_CONNECTIONS} connections opened while {total} messages were sent");
    for (i, (mut socket, answered_before)) in connections.into_iter().enumerate() {
        let whence = format!("fresh connection {i} on instance {}", i % deployment.instances() + 1);
        let mut cursors: Vec<u64> = Vec::new();
        while cursors.last() != Some(&total) {
            let frame = match tokio::time::timeout(TIMEOUT, socket.next()).await {
                Ok(Some(Ok(frame))) => frame,
                other => panic!("{whence}: ended at {:?} of {total}: {other:?}", cursors.last()),
            };
            let Frame::Text(text) = frame else { continue };
            let value: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
            if value["event"] == "newMessage" {
                cursors.push(cursor_of(&value["data"]["cursor"], &format!("{whence}: the cursor")));
            }
        }
        let first = cursors[0];
        // The one send in flight when the connection opened may have been stored before.
        assert!(
            first <= answered_before + 2,
            "{whence}: opened after {answered_before} messages, first got {first}"
        );
        let expected: Vec<u64> = (first..=total).collect();
        assert_eq!(cursors, expected, "{whence}: consecutive, each once");
    }
    Arc::into_inner(deployment).expect("the only owner").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_connections_opened_while_messages_arrive_get_everything_after_they_opened() {
    fresh_connections(Deployment::one_instance().await).await;
}

// ---------------------------------------------------------------------------------------
// The published socket.io-client as the resuming receiver: `auth: {token, since}`.

/// Run with `node --input-type=module` in `tests/js` (where socket.io-client is installed).
/// The receiver connects with `auth: {token, since}` from a cursor before some stored
/// messages, while the sender keeps sending; it disconnects after a random 10–300 ms and
/// resumes from the last cursor it processed, again and again; then drains. Prints
/// `result <json>` with what it processed, then `ok`.
const SOCKETIO_RECEIVER: &str = r#"
import { io } from "socket.io-client";

const BASE = process.env.CHAT_BASE_URL;
const RECEIVER = JSON.parse(process.env.CHAT_RECEIVER);
const SENDER = JSON.parse(process.env.CHAT_SENDER);
const MODE = process.env.CHAT_MODE;
const LIVE = Number(process.env.CHAT_LIVE);
const TOTAL = Number(process.env.CHAT_TOTAL);
let last = Number(process.env.CHAT_SINCE);
let state = Number(process.env.CHAT_SEED) >>> 0;
const random = () => {
  // mulberry32
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fail = (message) => {
  console.log(`not ok - ${message}`);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 50000).unref();

const processed = [];
let sessions = 0;

// A malformed since is refused with connect_error.
await new Promise((resolve) => {
  const socket = io(BASE, {
    forceNew: true,
    reconnection: false,
    ...(MODE === "websocket" ? { transports: ["websocket"] } : {}),
    auth: { token: RECEIVER.token, since: "not-a-cursor" },
  });
  const timer = setTimeout(() => fail("no connect_error for a malformed since"), 10000);
  socket.on("connect", () => fail("a malformed since was accepted"));
  socket.on("connect_error", (e) => {
    if (!/since is not a valid cursor/.test(e.message)) fail(`connect_error ${e.message}`);
    clearTimeout(timer);
    socket.disconnect();
    resolve();
  });
});

function session(lingerMs, caughtUp) {
  sessions += 1;
  const label = `session ${sessions} since ${last}`;
  return new Promise((resolve) => {
    let active = true;
    let timer = setTimeout(() => fail(`${label}: no connection within 10 s`), 10000);
    const socket = io(BASE, {
      forceNew: true,
      reconnection: false,
      ...(MODE === "websocket" ? { transports: ["websocket"] } : {}),
      auth: { token: RECEIVER.token, since: String(last) },
    });
    const finish = () => {
      if (!active) return;
      active = false;
      clearTimeout(timer);
      socket.disconnect();
      resolve();
    };
    socket.on("connect_error", (e) => fail(`${label}: connect_error ${e.message}`));
    socket.on("connect", () => {
      clearTimeout(timer);
      timer = setTimeout(finish, lingerMs);
      if (caughtUp && caughtUp()) {
        clearTimeout(timer);
        timer = setTimeout(finish, 500);
      }
    });
    socket.on("disconnect", (reason) => {
      if (active && caughtUp) fail(`${label}: disconnected while draining (${reason})`);
      finish();
    });
    socket.on("newMessage", (m) => {
      if (!active) return;
      if (typeof m.cursor !== "string" || !/^[0-9]+$/.test(m.cursor)) fail(`${label}: cursor ${JSON.stringify(m)}`);
      const cursor = Number(m.cursor);
      if (cursor !== last + 1) {
        fail(`${label}: cursor ${cursor} after ${last} (${cursor <= last ? "a repeat" : "a gap"}): ${JSON.stringify(m)}`);
      }
      last = cursor;
      processed.push({ cursor: m.cursor, _id: m._id });
      if (caughtUp && caughtUp()) {
        clearTimeout(timer);
        timer = setTimeout(finish, 500);
      }
    });
  });
}

let sending = true;
const sender = (async () => {
  for (let n = 0; n < LIVE; n++) {
    const response = await fetch(`${BASE}/api/v1/message/send/${RECEIVER.id}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${SENDER.token}` },
      body: JSON.stringify({ message: `live ${n}`, clientMessageId: `sio-live-${n}` }),
    });
    if (response.status !== 201) fail(`send ${n}: ${response.status} ${await response.text()}`);
    await sleep(Math.floor(random() * 40));
  }
  sending = false;
})();

while (sending) {
  await session(10 + Math.floor(random() * 290), null);
}
await sender;
// Drain, then stay 500 ms more: nothing may follow the last message.
await session(10000, () => last === TOTAL);
if (last !== TOTAL) fail(`drained to ${last} of ${TOTAL}`);
await session(10000, () => last === TOTAL);
console.log("result " + JSON.stringify({ processed, sessions }));
console.log("ok");
process.exit(0);
"#;

async fn socketio_resume(mode: &str) {
    let test = format!("socketio_{mode}");
    let seed = seed(&test);
    let deployment = Deployment::one_instance().await;
    let receiver = deployment.api(0).create_user("receiver").await;
    let sender = deployment.api(0).create_user("sender").await;
    // Stored before the receiver ever connects; it starts from cursor 2.
    let offline = 6;
    for n in 0..offline {
        let reply = deployment
            .send(0, &sender, &receiver, &format!("offline {n}"), &format!("sio-offline-{n}"))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let live = 80;
    let total = offline + live;
    let user = |u: &TestUser| json!({ "id": u.id, "token": u.token }).to_string();
    let mut node = tokio::process::Command::new("node");
    node.args(["--input-type=module", "-e", SOCKETIO_RECEIVER])
        .current_dir(workspace_dir().join("tests/js"))
        .env("CHAT_BASE_URL", deployment.api(0).url(""))
        .env("CHAT_RECEIVER", user(&receiver))
        .env("CHAT_SENDER", user(&sender))
        .env("CHAT_MODE", mode)
        .env("CHAT_LIVE", live.to_string())
        .env("CHAT_TOTAL", total.to_string())
        .env("CHAT_SINCE", "2")
        .env("CHAT_SEED", (seed as u32).to_string());
    let what = format!("the socket.io-client receiver ({mode})");
    let stdout = run_node_client(node, &what, "ok").await;
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .map(|json| serde_json::from_str(json).expect("the result is JSON"))
        .expect("a result line");
    let got: Vec<(String, String)> = result["processed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["cursor"].as_str().unwrap().to_owned(), id_of(p)))
        .collect();
    let stream = deployment.whole_stream(0, &receiver, 200).await;
    assert_eq!(stream.len(), total, "stored once each");
    let expected: Vec<(String, String)> =
        stream[2..].iter().map(|item| (item["cursor"].as_str().unwrap().to_owned(), id_of(item))).collect();
    assert_eq!(got, expected, "from cursor 3 to the end, each once, in order");
    eprintln!("{test}: {} messages processed over {} sessions", got.len(), result["sessions"]);
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_client_resuming_with_since_in_auth_over_websocket_sees_every_message_once() {
    socketio_resume("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_client_resuming_with_since_in_auth_after_polling_sees_every_message_once() {
    socketio_resume("default").await;
}

// ---------------------------------------------------------------------------------------
// Groups: the receiver is added to and removed from groups while members post to them and
// direct messages arrive, and keeps resuming with its composite cursor (`P~group.seq~…`).
// It must see each group exactly from every entry that added it to the entry that removed
// it, each entry once and in the group's order, and its direct messages once and in order.

#[derive(Debug, Clone, Copy)]
struct GroupPlan {
    groups: usize,
    /// Members besides the owner and the receiver: each posts to random groups.
    posters: usize,
    posts_each: usize,
    /// Direct messages to the receiver, from random posters.
    directs: usize,
    /// Additions and removals of the receiver, in random groups.
    toggles: usize,
    pause_ms: u64,
}

/// 4 groups, ~160 entries and ~30 changes of membership, with direct messages between them.
const GROUPS_PLAN: GroupPlan =
    GroupPlan { groups: 4, posters: 3, posts_each: 40, directs: 30, toggles: 30, pause_ms: 40 };

/// Where a `/ws` session or a sync read resumes: the last cursor processed, as text.
struct GroupReader {
    user: TestUser,
    last: String,
    /// Every item processed, in order.
    items: Vec<Value>,
    ids: HashSet<String>,
}

impl GroupReader {
    /// Takes one item (a `newMessage`'s data or a sync page's message): never one twice; a
    /// group entry's cursor names its group at its seq; cursors move forward.
    fn take(&mut self, item: &Value, whence: &str) {
        let id = id_of(item);
        assert!(self.ids.insert(id.clone()), "{whence}: {id} processed twice: {item}");
        let cursor = item["cursor"].as_str().unwrap_or_else(|| panic!("{whence}: no cursor: {item}"));
        let (stream, groups) = parse_cursor(cursor);
        let (last_stream, _) = parse_cursor(&self.last);
        assert!(stream >= last_stream, "{whence}: the stream went back from {} to {cursor}", self.last);
        if item["receiverId"].is_null() {
            let group = item["conversationId"].as_str().unwrap();
            assert_eq!(
                groups.get(group),
                item["seq"].as_u64().as_ref(),
                "{whence}: cursor {cursor} of {item}"
            );
        } else {
            assert_eq!(item["receiverId"], self.user.id.as_str(), "{whence}: not the receiver's: {item}");
        }
        self.last = cursor.to_owned();
        self.items.push(item.clone());
    }
}

/// A cursor's stream position and its groups' seqs.
fn parse_cursor(text: &str) -> (u64, HashMap<String, u64>) {
    let mut parts = text.split('~');
    let stream = cursor_of(&json!(parts.next().unwrap_or_default()), "a cursor's stream position");
    let groups = parts
        .map(|part| {
            let (group, seq) = part.rsplit_once('.').unwrap_or_else(|| panic!("a group part: {text}"));
            (group.to_owned(), seq.parse().unwrap_or_else(|e| panic!("a seq in {text}: {e}")))
        })
        .collect();
    (stream, groups)
}

/// One sync page after `since`: (messages, nextCursor, hasMore); no other events here.
async fn group_sync(
    deployment: &Deployment,
    instance: usize,
    user: &TestUser,
    since: &str,
    limit: u32,
) -> (Vec<Value>, String, bool) {
    let limit = limit.to_string();
    let reply = deployment.api(instance).sync(&user.token, &[("since", since), ("limit", &limit)]).await;
    assert_eq!(reply.status, StatusCode::OK, "sync since {since}: {}", reply.text);
    let page = &reply.body["responseData"];
    assert_eq!(page["events"], json!([]), "nobody read anything: {page}");
    let messages = page["messages"].as_array().unwrap_or_else(|| panic!("messages: {page}")).clone();
    let next = page["nextCursor"].as_str().unwrap_or_else(|| panic!("nextCursor: {page}")).to_owned();
    (messages, next, page["hasMore"].as_bool().unwrap_or_else(|| panic!("hasMore: {page}")))
}

/// One `/ws?since=` session of the receiver: until `linger` is over, or (with `until`) until
/// it processed that many items in all, then `QUIET` more for nothing. Returns whether the
/// server ended it.
async fn group_session(
    deployment: &Deployment,
    instance: usize,
    reader: &mut GroupReader,
    linger: Duration,
    until: Option<usize>,
    session: usize,
) -> bool {
    let whence = format!("/ws session {session} on instance {} since {}", instance + 1, reader.last);
    let url =
        format!("{}?token={}&since={}", deployment.api(instance).ws_url(), reader.user.token, reader.last);
    let mut socket = open_ws(url, &whence).await;
    let mut deadline = Instant::now() + linger;
    let mut caught_up = until.is_some_and(|until| until == reader.items.len());
    if caught_up {
        deadline = Instant::now() + QUIET;
    }
    loop {
        let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => {
                assert!(
                    until.is_none() || caught_up,
                    "{whence}: {} of {until:?} items after {TIMEOUT:?}",
                    reader.items.len()
                );
                return false;
            }
            Ok(Some(Ok(Frame::Close(Some(close))))) => {
                let code = u16::from(close.code);
                assert!(until.is_none() && code != 4001, "{whence}: closed with {code} {}", close.reason);
                return true;
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Frame::Close(None)))) => {
                assert!(until.is_none(), "{whence}: the connection ended while draining");
                return true;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Frame::Text(text) = frame else { continue };
        let value: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
        if value["event"] != "newMessage" {
            continue;
        }
        assert!(!caught_up, "{whence}: a newMessage after catching up: {value}");
        reader.take(&value["data"], &whence);
        if until.is_some_and(|until| until == reader.items.len()) {
            caught_up = true;
            deadline = Instant::now() + QUIET;
        }
    }
}

/// The entries of `group`, as its owner (a member all along) reads them: by id.
async fn group_history(deployment: &Deployment, owner: &TestUser, group: &str) -> Vec<Value> {
    let mut older_first: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut query = vec![("limit", "200")];
        if let Some(before) = &before {
            query.push(("before", before));
        }
        let reply = deployment.api(0).conversation_messages(&owner.token, group, &query).await;
        assert_eq!(reply.status, StatusCode::OK, "history of {group}: {}", reply.text);
        let mut page = reply.body["responseData"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("a history page is a list: {}", reply.text));
        if page.is_empty() {
            return older_first;
        }
        before = Some(id_of(&page[0]));
        page.append(&mut older_first);
        older_first = page;
    }
}

/// The ids of each conversation's items, in the order they came.
fn by_conversation(items: &[Value]) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for item in items {
        map.entry(item["conversationId"].as_str().unwrap().to_owned()).or_default().push(id_of(item));
    }
    map
}

async fn groups_stress(deployment: Deployment, plan: GroupPlan, test: &str) {
    let mut rng = Rng(seed(test));
    let deployment = Arc::new(deployment);
    let instances = deployment.instances();
    let owner = deployment.api(0).create_user("owner").await;
    let receiver = deployment.api(0).create_user("receiver").await;
    let mut posters = Vec::new();
    for i in 0..plan.posters {
        posters.push(deployment.api(i % instances).create_user(&format!("poster{i}")).await);
    }
    // The receiver is in the first half of the groups from the start.
    let mut groups = Vec::new();
    let mut member = Vec::new();
    for g in 0..plan.groups {
        let mut members: Vec<&TestUser> = posters.iter().collect();
        let with_receiver = g < plan.groups / 2;
        if with_receiver {
            members.push(&receiver);
        }
        let group = deployment.api(g).create_group_ok(&owner, &format!("Group {g}"), &members).await;
        groups.push(id_of(&group));
        member.push(with_receiver);
    }
    let groups = Arc::new(groups);

    let mut tasks = Vec::new();
    for (i, poster) in posters.iter().enumerate() {
        let (deployment, poster, groups, mut rng) =
            (deployment.clone(), poster.clone(), groups.clone(), rng.fork());
        tasks.push(tokio::spawn(async move {
            for n in 0..plan.posts_each {
                let group = &groups[rng.below(groups.len() as u64) as usize];
                let text = format!("{} #{n}", poster.username);
                let reply = deployment.api(i + n).post_message(&poster.token, group, &text).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{text}: {}", reply.text);
                tokio::time::sleep(Duration::from_millis(rng.between(0, plan.pause_ms))).await;
            }
        }));
    }
    {
        let (deployment, posters, receiver, mut rng) =
            (deployment.clone(), posters.clone(), receiver.clone(), rng.fork());
        tasks.push(tokio::spawn(async move {
            for n in 0..plan.directs {
                let from = &posters[rng.below(posters.len() as u64) as usize];
                let reply = deployment.api(n).send(&from.token, &receiver.id, &format!("direct #{n}")).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
                tokio::time::sleep(Duration::from_millis(rng.between(0, plan.pause_ms * 3))).await;
            }
        }));
    }
    {
        let (deployment, owner, receiver, groups, mut rng) =
            (deployment.clone(), owner.clone(), receiver.clone(), groups.clone(), rng.fork());
        let mut member = member.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..plan.toggles {
                let g = rng.below(groups.len() as u64) as usize;
                // A change answered 503 may have been applied all the same: after one,
                // "no member" / "already a member" means it was.
                let (reply, unavailable) = if member[g] {
                    let path = format!("/api/v1/conversations/{}/members/{}", groups[g], receiver.id);
                    change_request(&deployment, n, Method::DELETE, &path, None, &owner.token).await
                } else {
                    let path = format!("/api/v1/conversations/{}/members", groups[g]);
                    let body = Some(json!({ "userIds": [receiver.id] }));
                    change_request(&deployment, n, Method::POST, &path, body, &owner.token).await
                };
                let applied_before = if member[g] { StatusCode::NOT_FOUND } else { StatusCode::CONFLICT };
                assert!(
                    reply.status == StatusCode::OK || (unavailable && reply.status == applied_before),
                    "toggling the receiver in group {g}: {} {}",
                    reply.status,
                    reply.text
                );
                member[g] = !member[g];
                tokio::time::sleep(Duration::from_millis(rng.between(0, plan.pause_ms * 4))).await;
            }
        }));
    }

    // The receiver, from before everything it was ever shown, until the others are done.
    let mut reader =
        GroupReader { user: receiver.clone(), last: "0".into(), items: Vec::new(), ids: HashSet::new() };
    let (mut sessions, mut sync_reads, mut ended_by_server) = (0usize, 0usize, 0usize);
    let writers = futures_util::future::join_all(tasks);
    tokio::pin!(writers);
    let started = Instant::now();
    let outcomes = loop {
        assert!(started.elapsed() < SCENARIO_LIMIT, "the writers did not finish within {SCENARIO_LIMIT:?}");
        let instance = sessions % instances;
        if rng.percent(15) {
            let limit = rng.between(1, 30) as u32;
            let whence = format!("sync read since {}", reader.last);
            let (messages, next, _) = group_sync(&deployment, instance, &receiver, &reader.last, limit).await;
            for item in &messages {
                reader.take(item, &whence);
            }
            // A read may end on a notice (joining or leaving) that moved the cursor alone.
            reader.last = next;
            sync_reads += 1;
        } else {
            let linger = Duration::from_millis(rng.between(10, 300));
            sessions += 1;
            if group_session(&deployment, instance, &mut reader, linger, None, sessions).await {
                ended_by_server += 1;
            }
        }
        if let Some(outcomes) = futures_util::FutureExt::now_or_never(writers.as_mut()) {
            break outcomes;
        }
    };
    for outcome in outcomes {
        if let Err(error) = outcome {
            match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("a writer failed: {error}"),
            }
        }
    }

    // What is stored, read in one pass from the beginning; the receiver's last session
    // drains up to its end.
    let mut reference = Vec::new();
    let mut since = "0".to_owned();
    loop {
        let (messages, next, has_more) = group_sync(&deployment, 0, &receiver, &since, 100).await;
        reference.extend(messages);
        since = next;
        if !has_more {
            break;
        }
    }
    sessions += 1;
    let total = Some(reference.len());
    group_session(&deployment, sessions % instances, &mut reader, TIMEOUT, total, sessions).await;
    eprintln!(
        "{test}: {} items for the receiver over {sessions} /ws sessions ({ended_by_server} ended by the server) \
         and {sync_reads} sync reads on {instances} instance(s)",
        reader.items.len()
    );

    // The same items as one pass from the beginning, in the same order within each
    // conversation (the order between conversations depends on where each resume fell).
    let got = by_conversation(&reader.items);
    assert_eq!(got, by_conversation(&reference), "the receiver's items, conversation by conversation");
    assert_eq!(reader.items.len(), reference.len());

    // And exactly what the memberships make visible: each group from every entry that added
    // the receiver (or its first, for the groups it started in) to the entry that removed it.
    for (g, group) in groups.iter().enumerate() {
        // History pages go by id, which concurrent sends may take in another order than
        // their seqs: the group's order is the seqs'.
        let mut entries = group_history(&deployment, &owner, group).await;
        entries.sort_by_key(|entry| entry["seq"].as_u64());
        let mut inside = g < plan.groups / 2;
        let mut expected = Vec::new();
        for (n, entry) in entries.iter().enumerate() {
            assert_eq!(entry["seq"], n as u64 + 1, "the history is the group's sequence: {entry}");
            let about_receiver =
                entry["system"]["userIds"].as_array().is_some_and(|ids| ids.contains(&json!(receiver.id)));
            match entry["system"]["action"].as_str() {
                Some("added") if about_receiver => inside = true,
                _ => {}
            }
            if inside {
                expected.push(id_of(entry));
            }
            if entry["system"]["action"] == "removed" && about_receiver {
                inside = false;
            }
        }
        assert_eq!(
            got.get(group).cloned().unwrap_or_default(),
            expected,
            "group {g}: what the memberships show"
        );
    }
    let directs = reference.iter().filter(|item| !item["receiverId"].is_null()).count();
    assert_eq!(directs, plan.directs, "every direct message once");

    let deployment = Arc::into_inner(deployment).expect("every task is done with the deployment");
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_a_receiver_joining_and_leaving_groups_sees_each_membership_exactly() {
    groups_stress(Deployment::one_instance().await, GROUPS_PLAN, "one_instance_groups").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_a_receiver_joining_and_leaving_groups_sees_each_membership_exactly() {
    let deployment = Deployment::cluster(cluster_backend(), 2).await;
    groups_stress(deployment, GROUPS_PLAN, "two_instances_groups").await;
}

// ---------------------------------------------------------------------------------------
// Message changes: while members send, reply, edit, delete and react (adding and taking back,
// several users on one message, sometimes the same reaction twice at once) in direct
// conversations and a group, each user has a device that stays connected, one that keeps
// going offline and coming back (from its last cursor, over /ws or sync pages), and at the
// end a new one that syncs from the beginning. Every device must process every entry of its
// user's stream once and in order, and end with exactly the state of the history pages:
// text or tombstone, `editedAt`, reactions with `me` for its user, reply quotes.

/// The emoji reacted with: fully qualified, as the server stores and sends them.
const EMOJIS: [&str; 4] = ["👍", "❤️", "😂", "🎉"];

#[derive(Debug, Clone, Copy)]
struct ChangesPlan {
    /// Operations of each of the four users: sends (some replies), edits, deletions and
    /// reactions.
    ops_each: usize,
    /// Percentage of reaction additions sent twice at the same moment.
    race_percent: u64,
    /// Upper bound of the random pause between two operations of one user, in milliseconds.
    pause_ms: u64,
}

/// Four users, three direct conversations and a group of all four: ~200 entries.
const CHANGES_PLAN: ChangesPlan = ChangesPlan { ops_each: 45, race_percent: 10, pause_ms: 100 };

/// `plan` sized for `backend`: the MongoDB stand-in gets fewer operations (see [`sized`]).
fn changes_sized(plan: ChangesPlan, backend: Backend) -> ChangesPlan {
    match backend {
        Backend::Mongodb => ChangesPlan { ops_each: plan.ops_each * 6 / 10, pause_ms: 10, ..plan },
        Backend::Sqlite | Backend::Postgres | Backend::Memory => plan,
    }
}

/// A conversation of the scenario: its id, its members (indexes of the users) and the
/// message everybody reacts to.
#[derive(Debug, Clone)]
struct Conv {
    id: String,
    members: Vec<usize>,
    hot: String,
}

/// A message some user sent during the scenario.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    conv: usize,
    sender: usize,
    text: String,
    reply_to: Option<String>,
}

/// A change the server answered as made (not a no-op): what the stream must carry once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Made {
    message: String,
    kind: &'static str,
    user: String,
    emoji: Option<String>,
}

/// What the writers did, as the answers told them.
#[derive(Debug, Default)]
struct Ledger {
    messages: Vec<Known>,
    /// Messages some answer showed deleted.
    deleted: HashSet<String>,
    /// Per conversation, the changes made.
    made: HashMap<usize, Vec<Made>>,
    /// Answers that cannot tell whether they made the change (a retry after a 503 on a
    /// message deleted meanwhile): the stream may hold up to this many changes more.
    uncertain: usize,
    /// The last edit of each message: its text and the `editedAt` it was answered with.
    edits: HashMap<String, (String, Value)>,
    /// The reactions each user holds at the end: (message, emoji).
    reactions: HashMap<usize, HashSet<(String, String)>>,
    /// Refusals the scenario expects: changes and replies to messages deleted meanwhile.
    refused_deleted: usize,
    raced_reactions: usize,
    sends: usize,
    replies: usize,
}

/// `text` percent-encoded whole, as a path segment.
fn percent_encoded(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The quote a reply shows of `original` (a message as history gives it): the start of its
/// text (all scenario texts are ASCII: a character is a grapheme) or that it is deleted.
fn quote_of(original: &Value) -> Value {
    let id = original["_id"].clone();
    let sender = original["senderId"].clone();
    if original.get("deletedAt").is_some() {
        return json!({ "messageId": id, "senderId": sender, "truncated": false, "deleted": true });
    }
    let text = original["message"].as_str().unwrap_or_else(|| panic!("a message without text: {original}"));
    let trimmed = text.trim();
    let (excerpt, truncated) = match trimmed.char_indices().nth(100) {
        Some((end, _)) => (trimmed[..end].trim_end(), true),
        None => (trimmed, false),
    };
    json!({ "messageId": id, "senderId": sender, "text": excerpt, "truncated": truncated, "deleted": false })
}

/// A cursor's parts (stream position, then each group's seq) summed: it grows with each
/// delivery and orders the deliveries of one page.
fn cursor_weight(text: &str) -> u64 {
    let (stream, groups) = parse_cursor(text);
    stream + groups.values().sum::<u64>()
}

/// Whether cursor `next` is `last` or after it: no part goes back, none is dropped.
fn cursor_not_before(next: &str, last: &str) -> bool {
    let (next_stream, next_groups) = parse_cursor(next);
    let (last_stream, last_groups) = parse_cursor(last);
    next_stream >= last_stream
        && last_groups.iter().all(|(group, seq)| next_groups.get(group).is_some_and(|next| next >= seq))
}

/// A device of a user: its last cursor, what it processed, and its copy of every message.
struct Device {
    user: TestUser,
    name: String,
    last: String,
    /// Each sequence's deliveries (`stream`, or a group's id), in the order processed: its
    /// place in the sequence, and what it was (never the message's state, which depends on
    /// when it was read).
    lanes: std::collections::BTreeMap<String, Vec<(u64, String)>>,
    deliveries: usize,
    state: HashMap<String, Value>,
    /// Live copies ignored because the device had a newer one.
    stale: usize,
}

impl Device {
    fn new(user: &TestUser, name: &str) -> Self {
        Self {
            user: user.clone(),
            name: format!("{}'s {name} device", user.username),
            last: "0".into(),
            lanes: Default::default(),
            deliveries: 0,
            state: HashMap::new(),
            stale: 0,
        }
    }

    /// Moves to `cursor`, the cursor of an entry of `conversation` at `seq`: it must take
    /// the next place of its sequence (the user's stream, or the group's seqs); notices that
    /// are not delivered may move the stream along with it, nothing goes back.
    fn advance(&mut self, cursor: &Value, conversation: &Value, seq: &Value, what: String, whence: &str) {
        let cursor = cursor.as_str().unwrap_or_else(|| panic!("{}: {whence}: no cursor: {what}", self.name));
        assert!(
            cursor_not_before(cursor, &self.last) && cursor != self.last,
            "{}: {whence}: cursor {cursor} after {}: a repeat or a step back ({what})",
            self.name,
            self.last
        );
        let (stream, groups) = parse_cursor(cursor);
        let (last_stream, last_groups) = parse_cursor(&self.last);
        let conversation =
            conversation.as_str().unwrap_or_else(|| panic!("{}: no conversation: {what}", self.name));
        let (lane, place) = match groups.get(conversation) {
            Some(place) => {
                assert_eq!(
                    Some(*place),
                    seq.as_u64(),
                    "{}: {whence}: the cursor names the seq: {what}",
                    self.name
                );
                assert_eq!(
                    place - 1,
                    last_groups.get(conversation).copied().unwrap_or(0),
                    "{}: {whence}: group entries come one after the other ({cursor} after {}): {what}",
                    self.name,
                    self.last
                );
                (conversation.to_owned(), *place)
            }
            None => {
                assert!(
                    stream > last_stream,
                    "{}: {whence}: {cursor} after {}: {what}",
                    self.name,
                    self.last
                );
                ("stream".to_owned(), stream)
            }
        };
        for (group, seq) in &groups {
            assert!(
                group == &lane || last_groups.get(group).is_none_or(|last| last == seq),
                "{}: {whence}: one delivery moved group {group} too ({cursor} after {})",
                self.name,
                self.last
            );
        }
        self.last = cursor.to_owned();
        self.lanes.entry(lane).or_default().push((place, what));
        self.deliveries += 1;
    }

    /// A `newMessage` (or a sync page's message).
    fn take_message(&mut self, item: &Value, whence: &str) {
        let id = id_of(item);
        self.advance(&item["cursor"], &item["conversationId"], &item["seq"], format!("message {id}"), whence);
        self.keep(without_cursor(item));
    }

    /// A `messageUpdated`'s data (or a sync page's event of that name).
    fn take_update(&mut self, data: &Value, whence: &str) {
        let message = &data["message"];
        let change = &data["change"];
        let what = format!(
            "update {} {} by {} {} at {}",
            id_of(message),
            change["kind"],
            change["userId"],
            change["emoji"],
            change["seq"]
        );
        assert!(
            message["version"].as_u64() >= change["seq"].as_u64(),
            "{}: {whence}: a state older than its change: {data}",
            self.name
        );
        self.advance(&data["cursor"], &message["conversationId"], &change["seq"], what, whence);
        self.keep(message.clone());
    }

    /// Keeps the copy with the greater `version`; a new state of a message refreshes the
    /// quotes of the replies to it, as a client does.
    fn keep(&mut self, message: Value) {
        let id = id_of(&message);
        let version = |m: &Value| m["version"].as_u64().unwrap_or_else(|| panic!("no version: {m}"));
        if let Some(held) = self.state.get(&id) {
            if version(held) > version(&message) {
                self.stale += 1;
                return;
            }
        }
        let quote = quote_of(&message);
        for reply in self.state.values_mut() {
            if reply["replyTo"]["messageId"] == id.as_str() {
                reply["replyTo"] = quote.clone();
            }
        }
        self.state.insert(id, message);
    }

    /// One sync page after the last cursor: its messages and events, in cursor order.
    /// Returns whether more is stored.
    async fn sync_page(&mut self, api: &Api, limit: u32, whence: &str) -> bool {
        let limit_text = limit.to_string();
        let reply =
            api.sync(&self.user.token, &[("since", self.last.as_str()), ("limit", &limit_text)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}: sync since {}: {}", self.name, self.last, reply.text);
        let page = &reply.body["responseData"];
        let messages = page["messages"].as_array().unwrap_or_else(|| panic!("messages: {page}"));
        let events = page["events"].as_array().unwrap_or_else(|| panic!("events: {page}"));
        assert!(
            messages.len() + events.len() <= limit as usize,
            "{}: a page above its limit: {page}",
            self.name
        );
        let mut items: Vec<(u64, bool, &Value)> = messages
            .iter()
            .map(|m| (cursor_weight(m["cursor"].as_str().unwrap_or("")), true, m))
            .chain(events.iter().map(|e| {
                assert_eq!(e["event"], "messageUpdated", "{}: nobody read anything: {e}", self.name);
                (cursor_weight(e["data"]["cursor"].as_str().unwrap_or("")), false, &e["data"])
            }))
            .collect();
        items.sort_by_key(|(weight, _, _)| *weight);
        for (_, is_message, item) in items {
            if is_message {
                self.take_message(item, whence);
            } else {
                self.take_update(item, whence);
            }
        }
        let next = page["nextCursor"].as_str().unwrap_or_else(|| panic!("nextCursor: {page}"));
        assert!(
            cursor_not_before(next, &self.last),
            "{}: nextCursor {next} is not the last item's cursor {} or past notices after it",
            self.name,
            self.last
        );
        self.last = next.to_owned();
        page["hasMore"].as_bool().unwrap_or_else(|| panic!("hasMore: {page}"))
    }

    /// Sync pages of `limit` from the last cursor to the end.
    async fn sync_to_end(&mut self, api: &Api, limit: u32) {
        let mut pages = 0;
        while self.sync_page(api, limit, &format!("sync to the end, page {pages}")).await {
            pages += 1;
        }
    }

    /// Processes one `/ws` frame; returns whether it was a delivery.
    fn take_frame(&mut self, text: &str, whence: &str) -> bool {
        let value: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{whence}: not JSON ({e}): {text}"));
        match value["event"].as_str() {
            Some("newMessage") => self.take_message(&value["data"], whence),
            Some("messageUpdated") => self.take_update(&value["data"], whence),
            _ => return false,
        }
        true
    }
}

/// Why a `/ws` session of a device ended.
enum SessionEnd {
    /// It stayed as long as it meant to.
    Stayed,
    /// The server closed it.
    Closed,
}

/// A `/ws?since=<last>` session: until `until` (or, once `target` says where the stream
/// ends, until the device is there and `QUIET` has passed with nothing more).
async fn changes_session(
    api: &Api,
    device: &mut Device,
    until: Option<Instant>,
    target: &tokio::sync::watch::Receiver<Option<String>>,
    whence: &str,
) -> SessionEnd {
    let url = format!("{}?token={}&since={}", api.ws_url(), device.user.token, device.last);
    let mut socket = open_ws(url, whence).await;
    let mut quiet_until: Option<Instant> = None;
    loop {
        if let Some(end) = target.borrow().clone() {
            if device.last == end {
                let quiet = *quiet_until.get_or_insert_with(|| Instant::now() + QUIET);
                if Instant::now() >= quiet {
                    return SessionEnd::Stayed;
                }
            }
        }
        if until.is_some_and(|until| Instant::now() >= until) {
            return SessionEnd::Stayed;
        }
        let frame = match tokio::time::timeout(Duration::from_millis(50), socket.next()).await {
            Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Frame::Close(_)))) => return SessionEnd::Closed,
            Ok(Some(Ok(frame))) => frame,
        };
        let Frame::Text(text) = frame else { continue };
        if device.take_frame(text.as_str(), whence) {
            assert!(quiet_until.is_none(), "{}: {whence}: a delivery after the end: {text}", device.name);
        }
    }
}

/// The device that stays connected: from cursor 0 before the writers start, live from
/// then on (resuming from its last cursor if the server closes it), until it is at the end
/// `target` names.
async fn live_device(
    deployment: Arc<Deployment>,
    instance: usize,
    mut device: Device,
    target: tokio::sync::watch::Receiver<Option<String>>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> (Device, usize) {
    let deadline = Instant::now() + SCENARIO_LIMIT * 2;
    let mut resumed = 0;
    let mut ready = Some(ready);
    loop {
        let api = deployment.api(instance);
        let whence = format!("live session {resumed} since {}", device.last);
        let url = format!("{}?token={}&since={}", api.ws_url(), device.user.token, device.last);
        let mut socket = open_ws(url, &whence).await;
        if let Some(ready) = ready.take() {
            // Registered once the handshake is answered; the presence list comes after.
            let _ = ready.send(());
        }
        let mut quiet_until: Option<Instant> = None;
        let closed = loop {
            assert!(Instant::now() < deadline, "{}: still at {} at the deadline", device.name, device.last);
            if let Some(end) = target.borrow().clone() {
                if device.last == end {
                    let quiet = *quiet_until.get_or_insert_with(|| Instant::now() + QUIET);
                    if Instant::now() >= quiet {
                        break false;
                    }
                }
            }
            let frame = match tokio::time::timeout(Duration::from_millis(50), socket.next()).await {
                Err(_) => continue,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Frame::Close(_)))) => break true,
                Ok(Some(Ok(frame))) => frame,
            };
            let Frame::Text(text) = frame else { continue };
            if device.take_frame(text.as_str(), &whence) {
                assert!(quiet_until.is_none(), "{}: a delivery after the end: {text}", device.name);
            }
        };
        if !closed {
            return (device, resumed);
        }
        resumed += 1;
    }
}

/// The device that keeps going offline: pauses, short `/ws` sessions and sync pages, each
/// from its last cursor, until the writers are done; then it syncs from its last cursor to
/// the end.
async fn roaming_device(
    deployment: Arc<Deployment>,
    mut device: Device,
    mut rng: Rng,
    writers_done: Arc<AtomicBool>,
    target: tokio::sync::watch::Receiver<Option<String>>,
) -> (Device, ReceiverStats) {
    let mut stats = ReceiverStats::default();
    let mut round = 0usize;
    while !writers_done.load(Ordering::SeqCst) {
        round += 1;
        let api = deployment.api(round);
        match rng.below(10) {
            0..=3 => tokio::time::sleep(Duration::from_millis(rng.between(50, 400))).await,
            4..=5 => {
                let limit = rng.between(1, 40) as u32;
                let whence = format!("sync read {round} since {}", device.last);
                device.sync_page(api, limit, &whence).await;
                stats.sync_reads += 1;
            }
            _ => {
                let whence = format!("/ws session {round} since {}", device.last);
                let until = Instant::now() + Duration::from_millis(rng.between(10, 300));
                stats.ws_sessions += 1;
                if let SessionEnd::Closed =
                    changes_session(api, &mut device, Some(until), &target, &whence).await
                {
                    stats.ended_by_server += 1;
                }
            }
        }
    }
    device.sync_to_end(deployment.api(round + 1), rng.between(5, 60) as u32).await;
    (device, stats)
}

/// Waits for a task, passing its panic on.
async fn joined<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(SCENARIO_LIMIT, task).await {
        Err(_) => panic!("{what} did not finish within {SCENARIO_LIMIT:?}"),
        Ok(Err(error)) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("{what} failed: {error}"),
        },
        Ok(Ok(outcome)) => outcome,
    }
}

/// A change request, tried again while it is answered 503 (the store took longer than its
/// deadline; the change may be stored all the same, and trying it again changes nothing
/// more): the first other answer, and whether a 503 came before it.
async fn change_request(
    deployment: &Deployment,
    instance: usize,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: &str,
) -> (Reply, bool) {
    let mut unavailable = false;
    for attempt in 0..UNAVAILABLE_ATTEMPTS {
        let api = deployment.api(instance + attempt);
        let mut request = api.request(method.clone(), path, Some(token));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let reply = api.execute(request).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            return (reply, unavailable);
        }
        unavailable = true;
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1))).await;
    }
    panic!("{method} {path}: 503 {UNAVAILABLE_ATTEMPTS} times in a row");
}

/// The reaction `emoji` of `message` (an answered message) as its reader sees it.
fn reaction<'m>(message: &'m Value, emoji: &str) -> Option<&'m Value> {
    message["reactions"].as_array()?.iter().find(|r| r["emoji"] == emoji)
}

/// One user's operations: sends (40% of them replies), edits of their messages, deletions
/// (their own; the owner's also of others' group messages) and reactions, each checked
/// against its answer and written down in the ledger.
#[allow(clippy::too_many_arguments)]
async fn changes_writer(
    deployment: Arc<Deployment>,
    me: usize,
    users: Arc<Vec<TestUser>>,
    convs: Arc<Vec<Conv>>,
    ledger: Arc<std::sync::Mutex<Ledger>>,
    plan: ChangesPlan,
    mut rng: Rng,
) {
    let user = &users[me];
    let mine_convs: Vec<usize> = (0..convs.len()).filter(|c| convs[*c].members.contains(&me)).collect();
    let mut reactions: HashSet<(String, String)> = HashSet::new();
    let group = convs.len() - 1;
    for n in 0..plan.ops_each {
        let instance = me + n;
        let c = mine_convs[rng.below(mine_convs.len() as u64) as usize];
        let conv = &convs[c];
        let base = format!("/api/v1/conversations/{}/messages", conv.id);
        // The live messages of this conversation, and those of mine.
        let (live, own): (Vec<Known>, Vec<Known>) = {
            let ledger = ledger.lock().unwrap();
            let live: Vec<Known> = ledger
                .messages
                .iter()
                .filter(|m| m.conv == c && !ledger.deleted.contains(&m.id))
                .cloned()
                .collect();
            let own = live.iter().filter(|m| m.sender == me).cloned().collect();
            (live, own)
        };
        let roll = rng.below(100);
        if roll < 25 || (roll < 45 && own.is_empty()) {
            // A send; 40% answer a message of the conversation.
            let reply_to = (rng.percent(40) && !live.is_empty())
                .then(|| live[rng.below(live.len() as u64) as usize].id.clone());
            let text = format!("{} #{n} in {c}", user.username);
            let mut body = json!({ "message": text });
            if let Some(target) = &reply_to {
                body["replyTo"] = json!(target);
            }
            let api = deployment.api(instance);
            let reply = api.post_json(&base, &body, Some(&user.token)).await;
            let mut ledger = ledger.lock().unwrap();
            if reply.status == StatusCode::BAD_REQUEST && reply_to.is_some() {
                // The message replied to was deleted meanwhile.
                ledger.deleted.insert(reply_to.clone().unwrap());
                ledger.refused_deleted += 1;
                continue;
            }
            assert_eq!(reply.status, StatusCode::CREATED, "{} sending {text}: {}", user.username, reply.text);
            let stored = &reply.body["responseData"];
            assert_eq!(stored["message"], text.as_str());
            assert_eq!(stored["reactions"], json!([]));
            assert_eq!(stored["version"], stored["seq"], "a new message's version is its seq: {stored}");
            match &reply_to {
                Some(target) => assert_eq!(stored["replyTo"]["messageId"], target.as_str(), "{stored}"),
                None => assert!(stored.get("replyTo").is_none(), "{stored}"),
            }
            ledger.sends += 1;
            ledger.replies += usize::from(reply_to.is_some());
            ledger.messages.push(Known { id: id_of(stored), conv: c, sender: me, text, reply_to });
        } else if roll < 40 && !own.is_empty() {
            // An edit of one of my messages; every fifth one long enough to be quoted cut.
            let target = &own[rng.below(own.len() as u64) as usize];
            let mut text = format!("{} edit {n} of {}", user.username, &target.id[target.id.len() - 6..]);
            if n % 5 == 0 {
                text.push_str(&" and on".repeat(16));
            }
            let path = format!("{base}/{}", target.id);
            let (reply, _) = change_request(
                &deployment,
                instance,
                Method::PATCH,
                &path,
                Some(json!({ "message": text })),
                &user.token,
            )
            .await;
            let mut ledger = ledger.lock().unwrap();
            if reply.status == StatusCode::CONFLICT {
                ledger.deleted.insert(target.id.clone());
                ledger.refused_deleted += 1;
                continue;
            }
            assert_eq!(reply.status, StatusCode::OK, "{} editing: {}", user.username, reply.text);
            let stored = &reply.body["responseData"];
            assert_eq!(stored["message"], text.as_str(), "{stored}");
            let edited_at = stored["editedAt"].clone();
            assert!(edited_at.is_string(), "an edited message has editedAt: {stored}");
            ledger.edits.insert(target.id.clone(), (text, edited_at));
            let made =
                Made { message: target.id.clone(), kind: "edited", user: user.id.clone(), emoji: None };
            ledger.made.entry(c).or_default().push(made);
        } else if roll < 45 {
            // A deletion: mine, or as the owner anyone's in the group; never a hot message.
            let candidates: Vec<&Known> = live
                .iter()
                .filter(|m| m.id != conv.hot && (m.sender == me || (me == 0 && c == group)))
                .collect();
            let Some(target) = candidates.get(rng.below(candidates.len().max(1) as u64) as usize) else {
                continue;
            };
            let path = format!("{base}/{}", target.id);
            let (reply, _) =
                change_request(&deployment, instance, Method::DELETE, &path, None, &user.token).await;
            assert_eq!(reply.status, StatusCode::OK, "{} deleting: {}", user.username, reply.text);
            let stored = &reply.body["responseData"];
            assert!(stored["deletedAt"].is_string(), "{stored}");
            assert_eq!(stored["message"], "", "{stored}");
            assert_eq!(stored["reactions"], json!([]), "{stored}");
            let mut ledger = ledger.lock().unwrap();
            ledger.deleted.insert(target.id.clone());
            // Deleted by someone else first: nothing changed.
            if stored["deletedBy"] == user.id.as_str() {
                let made =
                    Made { message: target.id.clone(), kind: "deleted", user: user.id.clone(), emoji: None };
                ledger.made.entry(c).or_default().push(made);
            }
        } else {
            // A reaction taken back or added: mostly on the hot message.
            let target = if rng.percent(60) || live.is_empty() {
                conv.hot.clone()
            } else {
                live[rng.below(live.len() as u64) as usize].id.clone()
            };
            let emoji = EMOJIS[rng.below(EMOJIS.len() as u64) as usize];
            let path = format!("{base}/{target}/reactions/{}", percent_encoded(emoji));
            let key = (target.clone(), emoji.to_owned());
            let adding = !reactions.contains(&key);
            let method = if adding { Method::PUT } else { Method::DELETE };
            let copies = if adding && rng.percent(plan.race_percent) { 2 } else { 1 };
            let answers = futures_util::future::join_all((0..copies).map(|k| {
                change_request(&deployment, instance + k, method.clone(), &path, None, &user.token)
            }))
            .await;
            let mut ledger = ledger.lock().unwrap();
            ledger.raced_reactions += usize::from(copies > 1);
            let unavailable = answers.iter().any(|(_, unavailable)| *unavailable);
            let (reply, _) = &answers[0];
            for (other, _) in &answers {
                assert_eq!(other.status, reply.status, "racing copies of one reaction: {answers:#?}");
            }
            if adding && reply.status == StatusCode::CONFLICT {
                ledger.deleted.insert(target.clone());
                ledger.refused_deleted += 1;
                // A first try answered 503 may have added it before the deletion.
                ledger.uncertain += usize::from(unavailable);
                continue;
            }
            assert_eq!(reply.status, StatusCode::OK, "{} {method} {emoji}: {}", user.username, reply.text);
            let stored = &reply.body["responseData"];
            let made = Made {
                message: target.clone(),
                kind: if adding { "reactionAdded" } else { "reactionRemoved" },
                user: user.id.clone(),
                emoji: Some(emoji.to_owned()),
            };
            if stored["deletedAt"].is_string() {
                // Taking a reaction back from a deleted message changes nothing (unless a
                // first try answered 503 took it back before the deletion).
                assert!(!adding, "{stored}");
                ledger.deleted.insert(target.clone());
                ledger.uncertain += usize::from(unavailable);
                reactions.remove(&key);
                continue;
            }
            let view = reaction(stored, emoji);
            if adding {
                assert_eq!(view.map(|r| &r["me"]), Some(&json!(true)), "my reaction {emoji}: {stored}");
                reactions.insert(key);
            } else {
                assert!(view.is_none_or(|r| r["me"] == false), "my reaction {emoji} is gone: {stored}");
                reactions.remove(&key);
            }
            ledger.made.entry(c).or_default().push(made);
        }
        drop(live);
        tokio::time::sleep(Duration::from_millis(rng.between(0, plan.pause_ms))).await;
    }
    ledger.lock().unwrap().reactions.insert(me, reactions);
}

/// `device` processed exactly what `reference` did: each sequence (the user's stream, each
/// group) entry by entry, in the same order. (How the sequences interleave depends on where
/// each read or resume fell.)
fn assert_same_deliveries(device: &Device, reference: &Device) {
    let lanes = |d: &Device| d.lanes.keys().cloned().collect::<Vec<_>>();
    assert_eq!(lanes(device), lanes(reference), "{}: the sequences it got", device.name);
    for (lane, expected) in &reference.lanes {
        let got = &device.lanes[lane];
        if let Some(n) = (0..got.len().max(expected.len())).find(|n| got.get(*n) != expected.get(*n)) {
            panic!(
                "{}: {lane}: {} deliveries where {} has {}; the first difference, number {}: {:?} where {:?}",
                device.name,
                got.len(),
                reference.name,
                expected.len(),
                n + 1,
                got.get(n),
                expected.get(n)
            );
        }
    }
    assert_eq!(device.deliveries, reference.deliveries, "{}: deliveries in all", device.name);
}

/// `user`'s view of every message of `conv`, through history pages: by id.
async fn conversation_state(deployment: &Deployment, user: &TestUser, conv: &str) -> HashMap<String, Value> {
    let mut state = HashMap::new();
    let mut before: Option<String> = None;
    loop {
        let mut query = vec![("limit", "50")];
        if let Some(before) = &before {
            query.push(("before", before));
        }
        let reply = deployment.api(0).conversation_messages(&user.token, conv, &query).await;
        assert_eq!(reply.status, StatusCode::OK, "history of {conv}: {}", reply.text);
        let page = reply.body["responseData"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("a history page is a list: {}", reply.text));
        let Some(oldest) = page.first() else {
            return state;
        };
        before = Some(id_of(oldest));
        for message in page {
            assert!(message.get("cursor").is_none(), "history has no cursors: {message}");
            let previous = state.insert(id_of(&message), message);
            assert!(previous.is_none(), "a message twice in the history of {conv}: {previous:?}");
        }
    }
}

/// A device's copy of the messages of `conv`.
fn device_conversation(device: &Device, conv: &str) -> HashMap<String, Value> {
    device
        .state
        .iter()
        .filter(|(_, m)| m["conversationId"] == conv)
        .map(|(id, m)| (id.clone(), m.clone()))
        .collect()
}

/// Asserts `device` holds exactly `history`, message by message.
fn assert_converged(device: &Device, conv: &str, history: &HashMap<String, Value>) {
    let held = device_conversation(device, conv);
    let mut ids: Vec<&String> = history.keys().chain(held.keys()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let (mine, theirs) = (held.get(id), history.get(id));
        if mine == theirs {
            continue;
        }
        // The fields that differ, each side's, and the versions.
        let fields = |m: Option<&Value>| m.and_then(Value::as_object).cloned().unwrap_or_default();
        let (mine_fields, their_fields) = (fields(mine), fields(theirs));
        let differing: Vec<String> = mine_fields
            .keys()
            .chain(their_fields.keys())
            .filter(|key| mine_fields.get(*key) != their_fields.get(*key))
            .map(|key| {
                format!("{key}: {:?} where history has {:?}", mine_fields.get(key), their_fields.get(key))
            })
            .collect();
        panic!(
            "{}: message {id} of {conv} (version {:?} held, {:?} in history) differs from history: {differing:#?}",
            device.name,
            mine.map(|m| &m["version"]),
            theirs.map(|m| &m["version"])
        );
    }
}

async fn changes_stress(deployment: Deployment, plan: ChangesPlan, test: &str) {
    let started = Instant::now();
    let mut rng = Rng(seed(test));
    let deployment = Arc::new(deployment);
    let instances = deployment.instances();
    let mut users = Vec::new();
    for (i, name) in ["owner", "ada", "bob", "cyd"].iter().enumerate() {
        users.push(deployment.api(i).create_user(name).await);
    }
    // Three direct conversations and a group of all four (last), each with its hot message.
    let mut convs = Vec::new();
    let mut ledger = Ledger::default();
    for (a, b) in [(0usize, 1usize), (1, 2), (3, 0)] {
        let text = format!("hot {} to {}", users[a].username, users[b].username);
        let stored = deployment.api(a).send_ok(&users[a], &users[b], &text).await;
        let id = stored["conversationId"].as_str().expect("conversationId").to_owned();
        convs.push(Conv { id, members: vec![a, b], hot: id_of(&stored) });
        ledger.messages.push(Known {
            id: id_of(&stored),
            conv: convs.len() - 1,
            sender: a,
            text,
            reply_to: None,
        });
    }
    let group =
        deployment.api(0).create_group_ok(&users[0], "Changes", &[&users[1], &users[2], &users[3]]).await;
    let group = id_of(&group);
    let hot = deployment.api(0).post_message_ok(&users[0], &group, "hot in the group").await;
    convs.push(Conv { id: group, members: vec![0, 1, 2, 3], hot: id_of(&hot) });
    ledger.messages.push(Known {
        id: id_of(&hot),
        conv: convs.len() - 1,
        sender: 0,
        text: "hot in the group".into(),
        reply_to: None,
    });
    ledger.sends = ledger.messages.len();
    let (users, convs, ledger) = (Arc::new(users), Arc::new(convs), Arc::new(std::sync::Mutex::new(ledger)));

    // The devices: one live and one roaming per user, all from the beginning.
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut targets = Vec::new();
    let (mut lives, mut roamings) = (Vec::new(), Vec::new());
    for (i, user) in users.iter().enumerate() {
        let (target, watching) = tokio::sync::watch::channel(None);
        targets.push(target);
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let device = Device::new(user, "live");
        lives.push(tokio::spawn(live_device(deployment.clone(), i, device, watching.clone(), ready)));
        tokio::time::timeout(TIMEOUT, is_ready).await.expect("a live device connects").ok();
        let device = Device::new(user, "roaming");
        roamings.push(tokio::spawn(roaming_device(
            deployment.clone(),
            device,
            rng.fork(),
            writers_done.clone(),
            watching,
        )));
    }

    let writers: Vec<_> = (0..users.len())
        .map(|me| {
            tokio::spawn(changes_writer(
                deployment.clone(),
                me,
                users.clone(),
                convs.clone(),
                ledger.clone(),
                plan,
                rng.fork(),
            ))
        })
        .collect();
    for writer in writers {
        joined(writer, "a writer").await;
    }
    let writing_took = started.elapsed();
    writers_done.store(true, Ordering::SeqCst);

    // Each user's stream as a new device reads it from the beginning, by pages of 200 and
    // of 37 (the same), and by pages of random sizes; the live devices wait for its end.
    let mut references = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let mut reference = Device::new(user, "new (pages of 200)");
        reference.sync_to_end(deployment.api(i), 200).await;
        let mut by_37 = Device::new(user, "new (pages of 37)");
        by_37.sync_to_end(deployment.api(i + 1), 37).await;
        assert_same_deliveries(&by_37, &reference);
        assert_eq!(by_37.state, reference.state, "{}: the same state whatever the page size", user.username);
        targets[i].send_replace(Some(reference.last.clone()));
        references.push(reference);
    }
    let mut devices: Vec<Vec<Device>> = Vec::new();
    let (mut resumes, mut stale) = (0, 0);
    let mut roaming_stats = ReceiverStats::default();
    for (i, (live, roaming)) in lives.into_iter().zip(roamings).enumerate() {
        let (live, resumed) = joined(live, "a live device").await;
        let (roaming, stats) = joined(roaming, "a roaming device").await;
        resumes += resumed;
        stale += live.stale + roaming.stale;
        roaming_stats.ws_sessions += stats.ws_sessions;
        roaming_stats.sync_reads += stats.sync_reads;
        roaming_stats.ended_by_server += stats.ended_by_server;
        let mut fresh = Device::new(&users[i], "new (random pages)");
        let mut page_rng = rng.fork();
        let mut page = 0;
        while fresh.sync_page(deployment.api(i + page), page_rng.between(1, 50) as u32, "random pages").await
        {
            page += 1;
        }
        devices.push(vec![live, roaming, fresh]);
    }
    let ledger = Arc::into_inner(ledger).expect("the writers are done").into_inner().unwrap();

    // The stream: every device processed exactly its user's stream, each entry once, in order.
    for (i, reference) in references.iter().enumerate() {
        for device in &devices[i] {
            assert_same_deliveries(device, reference);
            assert_eq!(device.last, reference.last, "{}: at the end of the stream", device.name);
        }
    }

    // Each conversation's sequence holds its messages and changes, each seq once; the stream
    // of each member carries exactly the changes answered as made.
    let users_ref = &users;
    let mut total_changes = 0;
    for (c, conv) in convs.iter().enumerate() {
        let member = conv.members[0];
        let mut seqs: Vec<u64> = Vec::new();
        let mut updates: Vec<Made> = Vec::new();
        // The member's stream once more, whole, for each entry's seq and change.
        let mut since = "0".to_owned();
        loop {
            let reply = deployment
                .api(c)
                .sync(&users_ref[member].token, &[("since", &since), ("limit", "200")])
                .await;
            let page = reply.data(StatusCode::OK).clone();
            for message in page["messages"].as_array().unwrap() {
                if message["conversationId"] == conv.id.as_str() {
                    seqs.push(message["seq"].as_u64().unwrap());
                }
            }
            for event in page["events"].as_array().unwrap() {
                let data = &event["data"];
                if data["message"]["conversationId"] == conv.id.as_str() {
                    seqs.push(data["change"]["seq"].as_u64().unwrap());
                    updates.push(Made {
                        message: id_of(&data["message"]),
                        kind: match data["change"]["kind"].as_str().unwrap() {
                            "edited" => "edited",
                            "deleted" => "deleted",
                            "reactionAdded" => "reactionAdded",
                            "reactionRemoved" => "reactionRemoved",
                            other => panic!("an unknown change kind {other}: {data}"),
                        },
                        user: data["change"]["userId"].as_str().unwrap().to_owned(),
                        emoji: data["change"]["emoji"].as_str().map(str::to_owned),
                    });
                }
            }
            since = page["nextCursor"].as_str().unwrap().to_owned();
            if page["hasMore"] == false {
                break;
            }
        }
        let after = deployment.api(0).sync(&users_ref[member].token, &[("since", &since)]).await;
        assert_eq!(after.data(StatusCode::OK)["messages"], json!([]), "the end of the stream");
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "conversation {c}: messages and changes take seqs 1, 2, 3…, each once");
        let mut made = ledger.made.get(&c).cloned().unwrap_or_default();
        made.sort();
        updates.sort();
        if ledger.uncertain == 0 {
            assert_eq!(updates, made, "conversation {c}: the changes in the stream are the changes made");
        } else {
            assert!(updates.len() >= made.len() && updates.len() <= made.len() + ledger.uncertain);
        }
        total_changes += updates.len();
        // The other members' streams carry the same changes of this conversation.
        for &other in &conv.members {
            let theirs = references[other]
                .lanes
                .values()
                .flatten()
                .filter(|(_, what)| {
                    let mut words = what.split(' ');
                    words.next() == Some("update")
                        && words
                            .next()
                            .is_some_and(|id| ledger.messages.iter().any(|m| m.id == id && m.conv == c))
                })
                .count();
            assert_eq!(theirs, updates.len(), "conversation {c}: {}'s stream", users_ref[other].username);
        }
    }

    // Every device ends with the state of the history, as its user sees it; and the history
    // is what the answers said.
    let final_reactions: HashMap<(String, String), Vec<usize>> = {
        let mut map: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (user, held) in &ledger.reactions {
            for key in held {
                if !ledger.deleted.contains(&key.0) {
                    map.entry(key.clone()).or_default().push(*user);
                }
            }
        }
        map
    };
    let mut hot_counts = Vec::new();
    for (c, conv) in convs.iter().enumerate() {
        let mut first_history: Option<HashMap<String, Value>> = None;
        for &member in &conv.members {
            let user = &users[member];
            let history = conversation_state(&deployment, user, &conv.id).await;
            for device in devices[member].iter().chain([&references[member]]) {
                assert_converged(device, &conv.id, &history);
            }
            let known: Vec<&Known> = ledger.messages.iter().filter(|m| m.conv == c).collect();
            let system = history.values().filter(|m| m["kind"] == "system").count();
            assert_eq!(system, usize::from(c == convs.len() - 1), "conversation {c}: its system entries");
            assert_eq!(history.len(), known.len() + system, "conversation {c}: every message sent, once");
            for message in known {
                let stored = history
                    .get(&message.id)
                    .unwrap_or_else(|| panic!("{} is not in the history", message.id));
                if ledger.deleted.contains(&message.id) {
                    assert!(stored["deletedAt"].is_string(), "a deleted message is a tombstone: {stored}");
                    assert_eq!(stored["message"], "", "{stored}");
                    assert_eq!(stored["reactions"], json!([]), "{stored}");
                    assert!(stored.get("editedAt").is_none(), "{stored}");
                } else {
                    assert!(stored.get("deletedAt").is_none(), "{stored}");
                    match ledger.edits.get(&message.id) {
                        Some((text, edited_at)) => {
                            assert_eq!(stored["message"], text.as_str(), "the last edit: {stored}");
                            assert_eq!(&stored["editedAt"], edited_at, "the last edit's time: {stored}");
                        }
                        None => {
                            assert_eq!(stored["message"], message.text.as_str(), "{stored}");
                            assert!(stored.get("editedAt").is_none(), "never edited: {stored}");
                        }
                    }
                    let mut got: Vec<(String, u64, bool)> = stored["reactions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| {
                            (
                                r["emoji"].as_str().unwrap().to_owned(),
                                r["count"].as_u64().unwrap(),
                                r["me"] == true,
                            )
                        })
                        .collect();
                    got.sort();
                    let mut expected: Vec<(String, u64, bool)> = EMOJIS
                        .iter()
                        .filter_map(|emoji| {
                            let who = final_reactions.get(&(message.id.clone(), (*emoji).to_owned()))?;
                            Some(((*emoji).to_owned(), who.len() as u64, who.contains(&member)))
                        })
                        .collect();
                    expected.sort();
                    assert_eq!(
                        got, expected,
                        "{}'s view of the reactions of {}: {stored}",
                        user.username, message.id
                    );
                    if message.id == conv.hot && member == conv.members[0] {
                        hot_counts.push(got.iter().map(|(_, count, _)| count).sum::<u64>());
                    }
                }
                match &message.reply_to {
                    Some(target) => {
                        let original =
                            history.get(target).expect("a reply's original is in the conversation");
                        assert_eq!(
                            stored["replyTo"],
                            quote_of(original),
                            "the quote of {target} as it is now"
                        );
                    }
                    None => assert!(stored.get("replyTo").is_none(), "{stored}"),
                }
            }
            // The same messages for every member, but for `me`.
            let without_me = |state: &HashMap<String, Value>| -> HashMap<String, Value> {
                state
                    .iter()
                    .map(|(id, m)| {
                        let mut m = m.clone();
                        for r in m["reactions"].as_array_mut().unwrap() {
                            r.as_object_mut().unwrap().remove("me");
                        }
                        (id.clone(), m)
                    })
                    .collect()
            };
            match &first_history {
                None => first_history = Some(without_me(&history)),
                Some(first) => {
                    assert!(first == &without_me(&history), "conversation {c}: the same for every member")
                }
            }
        }
    }
    let deliveries: usize = references.iter().map(|r| r.deliveries).sum();
    eprintln!(
        "{test}: {} sends ({} replies), {total_changes} changes ({} reactions raced, {} refused on deleted \
         messages, {} uncertain) in {writing_took:?} on {instances} instance(s); reactions on the hot messages: \
         {hot_counts:?}; {deliveries} deliveries per device set; roaming devices: {} /ws sessions ({} ended by the \
         server), {} sync reads; live devices resumed {resumes} times; {stale} older copies ignored",
        ledger.sends,
        ledger.replies,
        ledger.raced_reactions,
        ledger.refused_deleted,
        ledger.uncertain,
        roaming_stats.ws_sessions,
        roaming_stats.ended_by_server,
        roaming_stats.sync_reads,
    );
    assert!(total_changes >= plan.ops_each, "the scenario made changes: {total_changes}");
    assert!(roaming_stats.ws_sessions >= 4, "the roaming devices came back many times: {roaming_stats:?}");
    let deployment = Arc::into_inner(deployment).expect("every task is done with the deployment");
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_edits_deletions_and_reactions_reach_every_device_once_and_converge_on_history() {
    let deployment = Deployment::one_instance().await;
    changes_stress(deployment, changes_sized(CHANGES_PLAN, Backend::from_env()), "one_instance_changes")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_edits_deletions_and_reactions_reach_every_device_once_and_converge_on_history() {
    let backend = cluster_backend();
    let deployment = Deployment::cluster(backend, 2).await;
    changes_stress(deployment, changes_sized(CHANGES_PLAN, backend), "two_instances_changes").await;
}
