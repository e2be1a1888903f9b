//! The `/socket.io/` endpoint from the outside.
//!
//! Two kinds of clients against a real server on a free port: the published
//! `socket.io-client` v4 (`tests/js/socketio.mjs`, run with Node, one scenario per test), and
//! raw Engine.IO requests for what a well-behaved client never does (unknown sessions,
//! malformed and binary packets, oversized bodies) and for CORS.

use std::ops::Deref;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header;
use serde_json::{json, Value};
use tests::{run_node_client, Api, Backend, TestApp, TestUser};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const ALLOWED_ORIGIN: &str = "http://localhost:5173";
const MAX_PAYLOAD: usize = 16 * 1024;
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// This suite's server (a 1 s ping interval, so heartbeats happen within a test; a small
/// payload limit; one allowed origin) and three users on it.
struct Fixture {
    app: TestApp,
    users: Vec<TestUser>,
}

impl Deref for Fixture {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl Fixture {
    async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// [`Fixture::spawn`], with settings changed by `configure` last.
    async fn spawn_with(configure: impl FnOnce(&mut server::Settings)) -> Self {
        // Two workers (the test profile's): polling requests and the upgrade of one session
        // land on either.
        let app = TestApp::spawn_with(Backend::from_env(), |settings| {
            settings.websocket.ping_interval = PING_INTERVAL.as_secs();
            settings.websocket.ping_timeout = PING_TIMEOUT.as_secs();
            settings.websocket.max_frame_bytes = MAX_PAYLOAD;
            settings.cors.allowed_origins = vec![ALLOWED_ORIGIN.into()];
            configure(settings);
        })
        .await;
        let mut users = Vec::new();
        for name in ["alice", "bob", "carol"] {
            users.push(app.create_user(name).await);
        }
        Self { app, users }
    }

    fn engine_url(&self, query: &str) -> String {
        self.url(&format!("/socket.io/?EIO=4&{query}"))
    }

    /// Runs one scenario of `tests/js/socketio.mjs` and fails with its output unless it passed.
    async fn run_client(&self, scenario: &str, mode: &str) {
        let users: Vec<Value> = self.users.iter().map(|u| json!({ "id": u.id, "token": u.token })).collect();
        let mut node = tokio::process::Command::new("node");
        node.arg(tests::workspace_dir().join("tests/js/socketio.mjs"))
            .args([scenario, mode])
            .env("CHAT_BASE_URL", self.base_url())
            .env("CHAT_USERS", Value::Array(users).to_string())
            .env("CHAT_ALLOWED_ORIGIN", ALLOWED_ORIGIN);
        let what = format!("socket.io-client scenario {scenario} ({mode})");
        run_node_client(node, &what, &format!("ok - {scenario} ({mode})")).await;
    }

    /// A raw polling session: handshake (with `cookie` as the `token` cookie if given), then
    /// CONNECT with `auth_token` if given. Returns the session id.
    async fn raw_session(&self, cookie: Option<&str>, auth_token: Option<&str>) -> String {
        let mut request = self.client.get(self.engine_url("transport=polling"));
        if let Some(token) = cookie {
            request = request.header(header::COOKIE, format!("token={token}"));
        }
        let response = request.send().await.expect("the handshake answers");
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        let open: Value = serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
        let sid = open["sid"].as_str().expect("a sid").to_owned();
        let connect = match auth_token {
            Some(token) => format!("40{}", json!({ "token": token })),
            None => "40".to_owned(),
        };
        assert_eq!(self.post_packets(&sid, &connect).await, 200);
        sid
    }

    async fn post_packets(&self, sid: &str, body: &str) -> u16 {
        self.client
            .post(self.engine_url(&format!("transport=polling&sid={sid}")))
            .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
            .body(body.to_owned())
            .send()
            .await
            .expect("the POST answers")
            .status()
            .as_u16()
    }

    /// Polls until a packet satisfies `wanted`, answering pings; `None` once the session is
    /// gone (a close packet or an unknown sid).
    async fn poll_until(&self, sid: &str, wanted: impl Fn(&str) -> bool) -> Option<String> {
        poll_until(&self.api(), sid, wanted, Duration::from_secs(8)).await
    }
}

async fn poll_until(api: &Api, sid: &str, wanted: impl Fn(&str) -> bool, within: Duration) -> Option<String> {
    let url = api.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let response = api.client.get(&url).send().await.expect("the poll answers");
        if response.status() == 400 {
            return None;
        }
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        for packet in body.split('\u{1e}') {
            if wanted(packet) {
                return Some(packet.to_owned());
            }
            match packet {
                "1" => return None,
                "2" => {
                    let pong = api.client.post(&url).body("3").send().await.expect("the pong is taken");
                    assert_eq!(pong.status(), 200);
                }
                _ => {}
            }
            seen.push(packet.to_owned());
        }
    }
    panic!("no wanted packet within {within:?}; saw {seen:?}");
}

macro_rules! client_scenarios {
    ($($name:ident => $scenario:literal, $mode:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let server = Fixture::spawn().await;
            server.run_client($scenario, $mode).await;
            server.app.stop().await;
        }
    )*};
}

client_scenarios! {
    receiver_and_senders_other_devices_get_new_message_after_an_upgrade => "delivery", "default";
    receiver_and_senders_other_devices_get_new_message_over_websocket => "delivery", "websocket";
    receiver_and_senders_other_devices_get_new_message_over_long_polling => "delivery", "polling";
    unauthenticated_clients_get_connect_error_over_polling => "unauthenticated", "default";
    unauthenticated_clients_get_connect_error_over_websocket => "unauthenticated", "websocket";
    the_token_is_read_from_header_cookie_and_query_over_polling => "auth-sources", "default";
    the_token_is_read_from_header_cookie_and_query_over_websocket => "auth-sources", "websocket";
    an_allowed_origin_connects_with_credentials_and_a_foreign_one_is_refused => "origins", "websocket";
    online_users_update_when_a_user_disconnects_after_an_upgrade => "presence", "default";
    online_users_update_when_a_user_disconnects_over_websocket => "presence", "websocket";
    typing_reaches_the_target_only_after_an_upgrade => "typing", "default";
    typing_reaches_the_target_only_over_websocket => "typing", "websocket";
    clients_stay_connected_across_heartbeats_after_an_upgrade => "heartbeat", "default";
    clients_stay_connected_across_heartbeats_over_long_polling => "heartbeat", "polling";
    auth_since_replays_what_was_missed_then_live_messages_after_an_upgrade => "resume", "default";
    auth_since_replays_what_was_missed_then_live_messages_over_websocket => "resume", "websocket";
    auth_since_replays_what_was_missed_then_live_messages_over_long_polling => "resume", "polling";
    since_is_also_read_from_the_handshake_query_over_polling => "resume-query", "default";
    since_is_also_read_from_the_handshake_query_over_websocket => "resume-query", "websocket";
    a_malformed_since_is_refused_with_connect_error => "bad-since", "default";
    group_entries_typing_reads_and_removals_reach_members_after_an_upgrade => "groups", "default";
    group_entries_typing_reads_and_removals_reach_members_over_websocket => "groups", "websocket";
    group_entries_typing_reads_and_removals_reach_members_over_long_polling => "groups", "polling";
}

#[tokio::test]
async fn the_handshake_opens_a_session_with_the_configured_heartbeat() {
    let server = Fixture::spawn().await;
    for path in ["/socket.io/", "/socket.io"] {
        let response = server
            .client
            .get(server.url(&format!("{path}?EIO=4&transport=polling&t=abc")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
        let body = response.text().await.unwrap();
        let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
        assert_eq!(open["upgrades"], json!(["websocket"]));
        assert_eq!(open["pingInterval"], 1000);
        assert_eq!(open["pingTimeout"], 2000);
        assert_eq!(open["maxPayload"], MAX_PAYLOAD);
        assert!(open["sid"].as_str().unwrap().len() >= 20, "an unguessable sid");
    }
    server.app.stop().await;
}

#[tokio::test]
async fn engine_io_errors_have_its_codes_and_messages() {
    let server = Fixture::spawn().await;
    let cases = [
        ("GET", "transport=polling&sid=nope", 1, "Session ID unknown"),
        ("POST", "transport=polling&sid=nope", 1, "Session ID unknown"),
        ("GET", "transport=websocket&sid=nope", 1, "Session ID unknown"),
        ("GET", "transport=carrier-pigeon", 0, "Transport unknown"),
        ("POST", "transport=polling", 2, "Bad handshake method"),
    ];
    for (method, query, code, message) in cases {
        let request = match method {
            "GET" => server.client.get(server.engine_url(query)),
            _ => server.client.post(server.engine_url(query)).body("40"),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{method} {query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "code": code, "message": message }), "{method} {query}");
    }
    let old = server.client.get(server.url("/socket.io/?EIO=3&transport=polling")).send().await.unwrap();
    assert_eq!(old.status(), 400);
    assert_eq!(old.json::<Value>().await.unwrap()["code"], 5);
    server.app.stop().await;
}

#[tokio::test]
async fn a_raw_polling_session_authenticated_by_cookie_receives_events() {
    let server = Fixture::spawn().await;
    let (alice, bob) = (&server.users[0], &server.users[1]);
    let sid = server.raw_session(Some(&bob.token), None).await;
    // The CONNECT reply, then the online list, possibly in one response.
    let seen = std::sync::Mutex::new(Vec::new());
    server
        .poll_until(&sid, |p| {
            seen.lock().unwrap().push(p.to_owned());
            p.starts_with("42[\"onlineUsers\"") && p.contains(&bob.id)
        })
        .await
        .expect("the online list");
    let seen = seen.into_inner().unwrap();
    let reply: Value = serde_json::from_str(&seen[0][2..]).expect("the CONNECT reply comes first");
    assert!(seen[0].starts_with("40") && reply["sid"].is_string(), "{seen:?}");

    let sent = server.send_ok(alice, bob, "over raw polling").await;
    let event = server.poll_until(&sid, |p| p.starts_with("42[\"newMessage\"")).await.unwrap();
    let event: Value = serde_json::from_str(&event[2..]).unwrap();
    assert_eq!(event[1]["_id"], sent["_id"]);
    assert_eq!(event[1]["message"], "over raw polling");
    server.app.stop().await;
}

#[tokio::test]
async fn a_bad_token_in_the_connect_packet_is_refused_with_connect_error() {
    let server = Fixture::spawn().await;
    let sid = server.raw_session(None, Some("forged")).await;
    let refusal = server.poll_until(&sid, |p| p.starts_with("44")).await.expect("a refusal");
    let refusal: Value = serde_json::from_str(&refusal[2..]).unwrap();
    assert!(refusal["message"].as_str().unwrap().contains("Invalid or expired token"));
    server.app.stop().await;
}

#[tokio::test]
async fn socket_connects_share_the_per_user_rate_limit() {
    let server =
        Fixture::spawn_with(|settings| settings.limits.requests.socket_connects_per_minute_per_user = 2)
            .await;
    let alice = &server.users[0];
    for _ in 0..2 {
        let sid = server.raw_session(None, Some(&alice.token)).await;
        let reply = server.poll_until(&sid, |p| p.starts_with("40") || p.starts_with("44")).await;
        assert!(reply.expect("a CONNECT reply").starts_with("40"), "the first connects pass");
    }
    let sid = server.raw_session(None, Some(&alice.token)).await;
    let refusal = server.poll_until(&sid, |p| p.starts_with("44")).await.expect("a refusal");
    let refusal: Value = serde_json::from_str(&refusal[2..]).unwrap();
    assert!(refusal["message"].as_str().unwrap().contains("RATE_LIMITED"), "{refusal}");
    // Another user has an allowance of their own.
    let bob = &server.users[1];
    let sid = server.raw_session(None, Some(&bob.token)).await;
    assert!(server.poll_until(&sid, |p| p.starts_with("40")).await.is_some());
    server.app.stop().await;
}

#[tokio::test]
async fn a_malformed_packet_closes_that_session_only() {
    let server = Fixture::spawn().await;
    let (alice, bob) = (&server.users[0], &server.users[1]);
    let bystander = server.raw_session(None, Some(&bob.token)).await;
    server.poll_until(&bystander, |p| p.starts_with("40")).await.unwrap();
    // Kept polling (and answering pings) meanwhile, until the message sent at the end.
    let (api, sid) = (server.api(), bystander.clone());
    let bystander_sees = tokio::spawn(async move {
        poll_until(&api, &sid, |p| p.contains("still here"), Duration::from_secs(60)).await
    });

    let malformed = [
        "",
        "9",
        "4",
        "4x",
        "42",
        "42[\"typing\"",
        "42{\"not\":\"an array\"}",
        "42[1,2]",
        "451-[\"upload\",{\"_placeholder\":true,\"num\":0}]",
        "461-3[{\"_placeholder\":true,\"num\":0}]",
        "bAQIDBA==",
        "44{\"message\":\"from a client\"}",
        "40/\u{1e},",
        "429999999999999999999[\"typing\",{}]",
    ];
    for packet in malformed {
        let sid = server.raw_session(None, Some(&alice.token)).await;
        server.poll_until(&sid, |p| p.starts_with("40")).await.unwrap();
        let status = server.post_packets(&sid, packet).await;
        assert!(status == 200 || status == 400, "{packet:?}: {status}");
        let after = server.poll_until(&sid, |_| false).await;
        assert_eq!(after, None, "{packet:?} left the session open");
    }

    // The other session still works and the server is alive.
    server.send_ok(alice, bob, "still here").await;
    let seen = bystander_sees.await.expect("the bystander's poller ran");
    assert!(seen.is_some(), "the bystander's session was closed too");
    server.app.stop().await;
}

#[tokio::test]
async fn a_polling_body_over_max_payload_is_refused_and_closes_the_session() {
    let server = Fixture::spawn().await;
    let sid = server.raw_session(None, Some(&server.users[0].token)).await;
    let huge = format!("42[\"typing\",\"{}\"]", "x".repeat(MAX_PAYLOAD));
    assert_eq!(server.post_packets(&sid, &huge).await, 413);
    assert_eq!(server.poll_until(&sid, |_| false).await, None);
    server.app.stop().await;
}

#[tokio::test]
async fn websocket_binary_and_oversized_frames_close_that_connection() {
    let server = Fixture::spawn().await;
    let token = &server.users[0].token;
    let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&token={token}", server.port);

    let frames =
        [WsMessage::Binary(vec![1, 2, 3].into()), WsMessage::Text("x".repeat(MAX_PAYLOAD + 1).into())];
    for frame in frames {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("the upgrade succeeds");
        let open = next_text(&mut ws).await.expect("an open packet");
        let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        assert_eq!(open["upgrades"], json!([]));
        ws.send(WsMessage::Text("40".into())).await.unwrap();
        assert!(next_text(&mut ws).await.unwrap().starts_with("40{\"sid\""));
        let _ = ws.send(frame).await;
        // Whatever was queued may still arrive; then the connection ends.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection stayed open");
    }
    server.app.stop().await;
}

#[tokio::test]
async fn a_polling_client_that_stops_answering_pings_is_closed_after_interval_plus_timeout() {
    let server = Fixture::spawn().await;
    let opened = tokio::time::Instant::now();
    let sid = server.raw_session(None, Some(&server.users[0].token)).await;
    // The first ping comes one interval after the handshake (after the CONNECT reply); it
    // goes unanswered.
    server.poll_until(&sid, |p| p == "2").await.expect("a ping");
    let url = server.engine_url(&format!("transport=polling&sid={sid}"));
    let closed = loop {
        let response = server.client.get(&url).send().await.expect("the poll answers");
        if response.status() == 400 {
            break tokio::time::Instant::now();
        }
        let body = response.text().await.unwrap();
        if body.split('\u{1e}').any(|p| p == "1") {
            break tokio::time::Instant::now();
        }
    };
    let lived = closed - opened;
    let deadline = PING_INTERVAL + PING_TIMEOUT;
    assert!(lived >= deadline - Duration::from_millis(200), "closed after {lived:?}, before {deadline:?}");
    assert!(lived <= deadline + Duration::from_secs(2), "still open after {lived:?}");
    let after = server.client.get(&url).send().await.unwrap();
    assert_eq!(after.status(), 400, "the session is gone");
    assert_eq!(after.json::<Value>().await.unwrap()["message"], "Session ID unknown");
    server.app.stop().await;
}

#[tokio::test]
async fn a_websocket_client_that_stops_answering_pings_is_closed_after_interval_plus_timeout() {
    let server = Fixture::spawn().await;
    let token = &server.users[0].token;
    let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&token={token}", server.port);
    let opened = tokio::time::Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("the upgrade succeeds");
    assert!(next_text(&mut ws).await.unwrap().starts_with('0'));
    ws.send(WsMessage::Text("40".into())).await.unwrap();
    let mut pinged = false;
    // Reads everything (tungstenite answers WebSocket pings itself), answers no Engine.IO ping.
    let closed = tokio::time::timeout(PING_INTERVAL + PING_TIMEOUT + Duration::from_secs(3), async {
        while let Some(Ok(message)) = ws.next().await {
            match message {
                WsMessage::Text(text) if text.as_str() == "2" => pinged = true,
                WsMessage::Text(text) if text.as_str() == "1" => return tokio::time::Instant::now(),
                WsMessage::Close(_) => return tokio::time::Instant::now(),
                _ => {}
            }
        }
        tokio::time::Instant::now()
    })
    .await
    .expect("closed within the heartbeat deadline and some slack");
    assert!(pinged, "the server pinged first");
    let lived = closed - opened;
    assert!(lived >= PING_INTERVAL + PING_TIMEOUT - Duration::from_millis(200), "closed after {lived:?}");
    server.app.stop().await;
}

#[tokio::test]
async fn a_client_sending_too_many_packets_per_second_is_closed() {
    let server = Fixture::spawn_with(|settings| settings.limits.socket_frames_per_second = 5).await;
    let token = &server.users[0].token;
    let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&token={token}", server.port);

    // Within the budget: connected, events answered.
    let (mut calm, _) = tokio_tungstenite::connect_async(&url).await.expect("the upgrade succeeds");
    assert!(next_text(&mut calm).await.unwrap().starts_with('0'));
    calm.send(WsMessage::Text("40".into())).await.unwrap();
    assert!(next_text(&mut calm).await.unwrap().starts_with("40{\"sid\""));

    let (mut flood, _) = tokio_tungstenite::connect_async(&url).await.expect("the upgrade succeeds");
    assert!(next_text(&mut flood).await.unwrap().starts_with('0'));
    flood.send(WsMessage::Text("40".into())).await.unwrap();
    for _ in 0..50 {
        if flood.send(WsMessage::Text(r#"42["typing",{}]"#.into())).await.is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = flood.next().await {
            if message.is_close() || matches!(&message, WsMessage::Text(t) if t.as_str() == "1") {
                return true;
            }
        }
        true
    })
    .await;
    assert!(matches!(closed, Ok(true)), "the flooding client stayed connected");

    // The calm one is still served: it keeps being pinged, and answers.
    for _ in 0..2 {
        while next_text(&mut calm).await.expect("the calm client is still connected") != "2" {}
        calm.send(WsMessage::Text("3".into())).await.unwrap();
    }
    server.app.stop().await;
}

#[tokio::test]
async fn polling_requests_from_allowed_origins_get_cors_with_credentials() {
    let server = Fixture::spawn().await;
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.engine_url("transport=polling"))
        .header(header::ORIGIN, ALLOWED_ORIGIN)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "preflight: {}", preflight.status());
    assert_eq!(preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED_ORIGIN);
    assert_eq!(preflight.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");

    let handshake = server
        .client
        .get(server.engine_url("transport=polling"))
        .header(header::ORIGIN, ALLOWED_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status(), 200);
    assert_eq!(handshake.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED_ORIGIN);
    assert_eq!(handshake.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");

    let stranger = server
        .client
        .get(server.engine_url("transport=polling"))
        .header(header::ORIGIN, "http://elsewhere.invalid")
        .send()
        .await
        .unwrap();
    assert!(!stranger.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    server.app.stop().await;
}

async fn next_text<S>(ws: &mut S) -> Option<String>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if let WsMessage::Text(text) = message {
                return Some(text.to_string());
            }
        }
        None
    });
    next.await.ok().flatten()
}
