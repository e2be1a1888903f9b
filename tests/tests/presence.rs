//! Presence in both modes (docs/API.md, Presence): the whole online list up to
//! `presence.full_list_max` online users, and above it `presence` changes of conversation
//! partners only, with `GET /api/v1/user/online` for anyone else; on one instance and across
//! two sharing PostgreSQL and Redis; the changes a client follows stay exact across
//! reconnects, and many users connecting at once cost each socket a bounded number of frames.
//!
//! The tests run with `presence.full_list_max = 2`, so that three users online make the
//! deployment scoped. The cluster test needs PostgreSQL and the test Redis (see
//! `tests::shared_redis_fanout`).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use server::Settings;
use tests::{Api, Backend, TestApp, TestUser, WsClient};
use tokio::time::Instant;

/// How long a frame or a state change may take to show up.
const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for a frame that must not come: several announcement windows.
const QUIET: Duration = Duration::from_millis(1_000);
/// The bound the tests run with: three users online make the deployment scoped.
const SMALL: usize = 2;

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

async fn spawn(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, adjust).await
}

/// What a client knows of presence, from the frames it got in order: `onlineUsers` replaces
/// everything, `presence` sets the state of the users it names.
#[derive(Debug, Default)]
struct View {
    online: BTreeMap<String, bool>,
    mode: Option<String>,
    /// An online list came.
    listed: bool,
}

impl View {
    fn apply(&mut self, frame: &Value) {
        match frame["event"].as_str() {
            Some("onlineUsers") => {
                self.online = tests::ws::ids(&frame["data"]).into_iter().map(|id| (id, true)).collect();
                self.listed = true;
            }
            Some("presence") => {
                for change in frame["data"].as_array().expect("presence data is an array") {
                    let user = change["userId"].as_str().expect("userId").to_owned();
                    self.online.insert(user, change["online"].as_bool().expect("online"));
                }
            }
            Some("presenceMode") => self.mode = frame["data"]["mode"].as_str().map(str::to_owned),
            _ => {}
        }
    }

    fn is_online(&self, user: &TestUser) -> bool {
        self.online.get(&user.id).copied().unwrap_or(false)
    }
}

/// A socket and the presence it was shown so far.
struct Watcher {
    ws: WsClient,
    view: View,
    seen: usize,
}

impl Watcher {
    /// A `/ws` socket, once it was shown presence (by then it is registered for every later
    /// event): the online list, or the scoped mode.
    async fn connect(api: &Api, user: &TestUser) -> Self {
        let ws = api.connect_ws_with_query(&user.token).await;
        let mut watcher = Self { ws, view: View::default(), seen: 0 };
        watcher.until("presence at connect", |v| v.mode.is_some() || v.listed).await;
        watcher
    }

    fn catch_up(&mut self) {
        for frame in &self.ws.received[self.seen..] {
            self.view.apply(frame);
        }
        self.seen = self.ws.received.len();
    }

    /// Reads frames until `check` holds of the view; panics after [`WAIT`].
    async fn until(&mut self, what: &str, check: impl Fn(&View) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.catch_up();
            if check(&self.view) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; view {:?}; frames {:?}",
                self.view,
                self.ws.received
            );
            // Takes whatever comes meanwhile; no event has this name.
            self.ws.assert_no_event("\0", Duration::from_millis(50)).await;
        }
    }

    /// Reads what comes within `duration`, then says whether any frame named `event` came.
    async fn quiet(&mut self, event: &str, duration: Duration) -> bool {
        let before = self.ws.events(event).count();
        self.ws.assert_no_event("\0", duration).await;
        self.catch_up();
        self.ws.events(event).count() == before
    }
}

/// Three users online, with no conversation with anyone: above [`SMALL`].
async fn crowd(api: &Api) -> Vec<Watcher> {
    let mut crowd = Vec::new();
    for _ in 0..3 {
        let user = api.create_user(&unique("crowd")).await;
        crowd.push(Watcher::connect(api, &user).await);
    }
    for watcher in &mut crowd {
        watcher.until("the crowd is told the scoped mode", |v| v.mode.as_deref() == Some("scoped")).await;
    }
    crowd
}

async fn online(api: &Api, token: &str, ids: &[&str]) -> Vec<String> {
    let reply = api.get(&format!("/api/v1/user/online?ids={}", ids.join(",")), Some(token)).await;
    tests::ws::ids(reply.data(StatusCode::OK))
}

#[tokio::test]
async fn up_to_the_bound_everyone_gets_the_full_list_and_no_mode() {
    let app = spawn(|s| s.presence.full_list_max = SMALL).await;
    let api = app.api();
    let (alice, bob) = (api.create_user(&unique("alice")).await, api.create_user(&unique("bob")).await);
    let mut first = Watcher::connect(&api, &alice).await;
    let mut second = Watcher::connect(&api, &bob).await;
    for watcher in [&mut first, &mut second] {
        watcher.until("both online in the list", |v| v.is_online(&alice) && v.is_online(&bob)).await;
    }
    assert!(first.quiet("presenceMode", QUIET).await, "no mode in the full-list mode");
    assert!(first.ws.events("presence").next().is_none());
    assert_eq!(online(&api, &alice.token, &[&bob.id]).await, [bob.id.as_str()]);
}

#[tokio::test]
async fn above_the_bound_changes_reach_partners_only_and_strangers_are_asked_for() {
    let app = spawn(|s| s.presence.full_list_max = SMALL).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let carol = api.create_user(&unique("carol")).await;
    let dave = api.create_user(&unique("dave")).await;
    api.send_ok(&bob, &alice, "hi").await;
    api.create_group_ok(&alice, "team", &[&carol]).await;
    let mut crowd = crowd(&api).await;

    // Bob is online before Alice: her snapshot names him, and only her partners.
    let mut bob_ws = Watcher::connect(&api, &bob).await;
    let mut alice_ws = Watcher::connect(&api, &alice).await;
    alice_ws
        .until("the scoped mode and Bob online", |v| v.mode.as_deref() == Some("scoped") && v.is_online(&bob))
        .await;
    assert_eq!(
        alice_ws.ws.received[0]["event"], "presenceMode",
        "the mode comes first: {:?}",
        alice_ws.ws.received
    );
    bob_ws.until("Bob sees Alice come online", |v| v.is_online(&alice)).await;

    // A group co-member's changes arrive; a stranger's do not.
    let carol_ws = Watcher::connect(&api, &carol).await;
    let dave_ws = Watcher::connect(&api, &dave).await;
    alice_ws.until("Carol online", |v| v.is_online(&carol)).await;
    drop(carol_ws);
    alice_ws.until("Carol offline", |v| !v.is_online(&carol)).await;
    assert!(!alice_ws.view.online.contains_key(&dave.id), "a stranger's change reached Alice");
    for watcher in &mut crowd {
        assert!(
            watcher.quiet("presence", Duration::from_millis(100)).await,
            "the crowd shares no conversation"
        );
    }

    // Anyone can be asked for; bad asks are 400 envelopes.
    let asked = online(&api, &alice.token, &[&dave.id, &carol.id, &bob.id, &dave.id]).await;
    assert_eq!(asked, [dave.id.clone(), bob.id.clone()], "in the order asked, once each");
    for bad in ["", "nope", &format!("{},", dave.id), &vec![dave.id.as_str(); 201].join(",")] {
        let reply = api.get(&format!("/api/v1/user/online?ids={bad}"), Some(&alice.token)).await;
        assert!(!reply.error(StatusCode::BAD_REQUEST, "VALIDATION").is_empty(), "{bad}");
    }
    let reply = api.get(&format!("/api/v1/user/online?ids={}", dave.id), None).await;
    reply.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    drop(dave_ws);
}

#[tokio::test]
async fn the_changes_a_client_follows_stay_exact_across_reconnects_and_the_mode_switches_back() {
    let app = spawn(|s| s.presence.full_list_max = SMALL).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    api.send_ok(&bob, &alice, "hi").await;
    let crowd = crowd(&api).await;

    let mut alice_ws = Watcher::connect(&api, &alice).await;
    for round in 0..4 {
        let bob_ws = Watcher::connect(&api, &bob).await;
        alice_ws.until("Bob online", |v| v.is_online(&bob)).await;
        if round % 2 == 1 {
            // Alice reconnects while Bob is online: her snapshot says so.
            alice_ws.ws.close().await;
            alice_ws = Watcher::connect(&api, &alice).await;
            alice_ws.until("Bob online after a reconnect", |v| v.is_online(&bob)).await;
        }
        bob_ws.ws.close().await;
        alice_ws.until("Bob offline", |v| !v.is_online(&bob)).await;
        // Nothing later says otherwise.
        let _ = alice_ws.quiet("presence", QUIET).await;
        assert!(!alice_ws.view.is_online(&bob), "round {round}: the last state is offline");
    }

    // The crowd leaves: at four fifths of the bound (one user) the full list comes back.
    for watcher in crowd {
        watcher.ws.close().await;
    }
    alice_ws.until("back to the full list", |v| v.mode.as_deref() == Some("full")).await;
    alice_ws
        .until("the full list names Alice alone", |v| v.online.iter().filter(|(_, on)| **on).count() == 1)
        .await;
    let last = alice_ws.ws.received.last().unwrap();
    assert_eq!(last["event"], "getOnlineUsers", "the list follows the mode: {:?}", alice_ws.ws.received);
}

/// `users` in pairs (one direct conversation each) connect at once, each on its own socket;
/// returns what every socket got about presence once things settle: frames, ids or changes
/// in them, and how long the connects took.
async fn burst(users: usize, full_list_max: usize) -> (usize, usize, Duration) {
    let app = spawn(|s| s.presence.full_list_max = full_list_max).await;
    let api = app.api();
    let mut people = Vec::new();
    for _ in 0..users {
        people.push(api.create_user(&unique("many")).await);
    }
    for pair in people.chunks(2) {
        api.send_ok(&pair[0], &pair[1], "hi").await;
    }
    let scoped = users + 3 > full_list_max;
    let crowd = if scoped { crowd(&api).await } else { Vec::new() };

    let started = Instant::now();
    let handshakes = people.iter().map(|user| api.connect_ws_with_query(&user.token));
    let sockets = futures_util::future::join_all(handshakes).await;
    let connected = started.elapsed();
    let mut watchers: Vec<Watcher> =
        sockets.into_iter().map(|ws| Watcher { ws, view: View::default(), seen: 0 }).collect();
    let (mut frames, mut entries) = (0, 0);
    for (index, watcher) in watchers.iter_mut().enumerate() {
        let partner = &people[index ^ 1];
        watcher.until("the partner online", |v| v.is_online(partner)).await;
    }
    // Whatever was still due goes out within a window or two.
    tokio::time::sleep(QUIET).await;
    for watcher in &mut watchers {
        let _ = watcher.quiet("", Duration::from_millis(10)).await;
        for name in ["presence", "presenceMode", "onlineUsers"] {
            frames += watcher.ws.events(name).count();
        }
        entries += ["presence", "onlineUsers"]
            .iter()
            .flat_map(|name| watcher.ws.events(name))
            .map(|data| data.as_array().expect("an array").len())
            .sum::<usize>();
        if scoped {
            assert!(watcher.ws.events("onlineUsers").next().is_none(), "a full list in the scoped mode");
        }
    }
    drop(crowd);
    (frames, entries, connected)
}

#[tokio::test]
async fn many_users_connecting_within_a_second_cost_each_socket_a_bounded_number_of_frames() {
    const USERS: usize = 200;
    let (frames, entries, connected) = burst(USERS, SMALL).await;
    println!(
        "scoped: {USERS} sockets connected in {connected:?}: {frames} presence frames, {entries} entries"
    );
    // Each socket: the mode, its snapshot, at most its partner's change: O(users) frames and
    // changes in all, where every connect told to everyone would be O(users²).
    assert!(frames <= 3 * USERS, "{frames} frames for {USERS} users");
    assert!(entries <= 2 * USERS, "{entries} entries for {USERS} users");

    let (frames, entries, connected) = burst(USERS, 1_000).await;
    println!("full list: {USERS} sockets connected in {connected:?}: {frames} list frames, {entries} ids");
    assert!(entries > 10 * USERS, "the full list costs far more: {entries} ids");
}

/// Two in-process instances on one PostgreSQL database and the test Redis.
async fn cluster_of_two() -> (TestApp, TestApp) {
    tests::two_instances(&unique("presence"), |settings| settings.presence.full_list_max = SMALL).await
}

#[tokio::test]
async fn across_instances_changes_reach_partners_on_the_other_instance_exactly() {
    let (first, second) = cluster_of_two().await;
    let (one, two) = (first.api(), second.api());
    let alice = one.create_user(&unique("alice")).await;
    let bob = one.create_user(&unique("bob")).await;
    let stranger = one.create_user(&unique("stranger")).await;
    one.send_ok(&bob, &alice, "hi").await;
    let _crowd = crowd(&one).await;

    // Alice on the second instance, Bob coming and going on the first.
    let mut alice_ws = Watcher::connect(&two, &alice).await;
    alice_ws.until("the scoped mode on the other instance", |v| v.mode.as_deref() == Some("scoped")).await;
    for round in 0..3 {
        let bob_ws = Watcher::connect(&one, &bob).await;
        alice_ws.until("Bob online, from the other instance", |v| v.is_online(&bob)).await;
        if round == 1 {
            alice_ws.ws.close().await;
            alice_ws = Watcher::connect(&two, &alice).await;
            alice_ws.until("Bob online after a reconnect", |v| v.is_online(&bob)).await;
        }
        bob_ws.ws.close().await;
        alice_ws.until("Bob offline, from the other instance", |v| !v.is_online(&bob)).await;
    }
    let stranger_ws = Watcher::connect(&one, &stranger).await;
    assert!(alice_ws.quiet("presence", QUIET).await, "a stranger's change crossed instances");
    assert_eq!(online(&two, &alice.token, &[&stranger.id, &bob.id]).await, [stranger.id.as_str()]);
    drop(stranger_ws);
}

#[tokio::test]
async fn a_crashed_instance_users_go_offline_for_their_partners_in_the_scoped_mode() {
    use tests::cluster::{system_redis_url, Cluster, ClusterConfig};
    let secret = "presence-test-secret-of-at-least-32-bytes!";
    let config = ClusterConfig {
        backend: Backend::Postgres,
        redis_url: system_redis_url(),
        prefix: "presence-crash",
        request_timeout: WAIT,
        env: &[
            ("CHAT__SERVER__WORKERS", "1"),
            // Short, so that the crash shows within seconds.
            ("CHAT__FANOUT__PRESENCE_TTL", "3"),
            ("CHAT__PRESENCE__FULL_LIST_MAX", "2"),
            ("CHAT__AUTH__JWT_SECRET", secret),
            ("CHAT__AUTH__BCRYPT_COST", "4"),
        ],
    };
    let mut cluster = Cluster::start(config, 2).await;
    let (one, two) = (cluster.api(0), cluster.api(1));
    let alice = one.create_user(&unique("alice")).await;
    let bob = one.create_user(&unique("bob")).await;
    one.send_ok(&bob, &alice, "hi").await;
    let _crowd = crowd(&one).await;
    let mut alice_ws = Watcher::connect(&one, &alice).await;
    let _bob_ws = Watcher::connect(&two, &bob).await;
    alice_ws.until("Bob online, from the other instance", |v| v.is_online(&bob)).await;

    let crashed = Instant::now();
    cluster.kill(1);
    // Bob's instance stops refreshing its presence: gone within the expiry and a sweep, then
    // announced like a close.
    alice_ws.until("Bob offline once his instance is gone", |v| !v.is_online(&bob)).await;
    println!("a crashed instance's user went offline for a partner after {:?}", crashed.elapsed());
    cluster.stop().await;
}

#[tokio::test]
async fn a_socket_io_client_gets_the_same_presence_events() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let app = spawn(|s| s.presence.full_list_max = SMALL).await;
    let api = app.api();
    let (alice, bob) = (api.create_user(&unique("alice")).await, api.create_user(&unique("bob")).await);
    api.send_ok(&bob, &alice, "hi").await;
    let _crowd = crowd(&api).await;
    let _bob_ws = Watcher::connect(&api, &bob).await;

    let url =
        format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&token={}", api.port, alice.token);
    let (mut sio, _) = tokio_tungstenite::connect_async(url).await.expect("the handshake succeeds");
    sio.send(Frame::text("40")).await.unwrap();
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    while events.len() < 2 {
        let frame = tokio::time::timeout_at(deadline, sio.next()).await.expect("presence within the wait");
        let Some(Ok(Frame::Text(text))) = frame else { continue };
        if let Some(event) = text.strip_prefix("42") {
            let event: Value = serde_json::from_str(event).unwrap();
            if event[0] == "presenceMode" || event[0] == "presence" {
                events.push(event);
            }
        } else if text.as_str() == "2" {
            sio.send(Frame::text("3")).await.unwrap();
        }
    }
    assert_eq!(events[0], serde_json::json!(["presenceMode", {"mode": "scoped"}]));
    assert_eq!(events[1], serde_json::json!(["presence", [{"userId": bob.id, "online": true}]]));
}
