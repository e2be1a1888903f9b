//! Each user's message stream: `GET /api/v1/message/sync`, the `cursor` of `newMessage`
//! events, and resuming a `/ws` connection with `?since=`.

use std::collections::HashSet;

use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::spawn_app;
use crate::idempotency::{send_keyed, without_cursor};
use tests::{Reply, TestApp, TestUser, WsClient, EVENT_TIMEOUT, QUIET_PERIOD};

async fn sync(app: &TestApp, token: &str, query: &[(&str, &str)]) -> Reply {
    app.execute(app.request(Method::GET, "/api/v1/message/sync", Some(token)).query(query)).await
}

/// One sync page: its messages (with their cursors), `nextCursor` and `hasMore`.
struct Page {
    messages: Vec<Value>,
    next: String,
    has_more: bool,
}

#[track_caller]
fn page(response: &Reply) -> Page {
    let data = response.data(StatusCode::OK);
    let object = data.as_object().unwrap_or_else(|| panic!("a sync page is an object: {data}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["events", "hasMore", "messages", "nextCursor"], "sync page fields: {data}");
    assert_eq!(data["events"], json!([]), "no reads or group changes in these streams: {data}");
    let next = data["nextCursor"].as_str().unwrap_or_else(|| panic!("nextCursor: {data}"));
    assert!(!next.is_empty() && next.bytes().all(|b| b.is_ascii_digit()), "{data}");
    Page {
        messages: data["messages"].as_array().unwrap_or_else(|| panic!("{data}")).clone(),
        next: next.to_owned(),
        has_more: data["hasMore"].as_bool().unwrap_or_else(|| panic!("hasMore: {data}")),
    }
}

fn cursors(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["cursor"].as_str().expect("a cursor").to_owned()).collect()
}

/// `message` as a sync page or a `newMessage` event carries it at `cursor`.
fn at(message: &Value, cursor: u64) -> Value {
    let mut item = message.clone();
    item["cursor"] = json!(cursor.to_string());
    item
}

/// A `/ws` connection with `?token=` and `?since=`, once the handshake is done.
async fn connect_since(app: &TestApp, user: &TestUser, since: &str) -> WsClient {
    let url = format!("{}?token={}&since={since}", app.ws_url(), user.token);
    app.try_connect_ws(&url)
        .await
        .unwrap_or_else(|refused| panic!("the handshake with since={since} failed: {refused:?}"))
}

#[tokio::test]
async fn sync_pages_through_my_stream_in_order_from_the_start() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;

    let m1 = app.send_ok(&ada, &bob, "one").await;
    let m2 = app.send_ok(&bob, &ada, "two").await;
    let m3 = app.send_ok(&cat, &bob, "three").await;
    let m4 = app.send_ok(&ada, &cat, "four: not bob's").await;
    let m5 = app.send_ok(&bob, &cat, "five").await;
    let m6 = send_keyed(&app, &ada, &bob.id, "six", Some(json!("key-6")), None).await;
    let m6 = m6.data(StatusCode::CREATED).clone();

    // Everything, from the start: with no since, an empty one, and since=0.
    let bob_stream = vec![at(&m1, 1), at(&m2, 2), at(&m3, 3), at(&m5, 4), at(&m6, 5)];
    for query in [&[][..], &[("since", "")][..], &[("since", "0")][..]] {
        let all = page(&sync(&app, &bob.token, query).await);
        assert_eq!(all.messages, bob_stream, "query {query:?}");
        assert_eq!((all.next.as_str(), all.has_more), ("5", false), "query {query:?}");
    }

    // Two at a time.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut query = vec![("limit", "2".to_owned())];
        if let Some(since) = &since {
            query.push(("since", since.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let current = page(&sync(&app, &bob.token, &query).await);
        assert!(current.messages.len() <= 2);
        pages.push((cursors(&current.messages), current.next.clone(), current.has_more));
        seen.extend(current.messages);
        since = Some(current.next);
        if !current.has_more {
            break;
        }
        assert!(pages.len() < 10, "hasMore never ends: {pages:?}");
    }
    assert_eq!(seen, bob_stream);
    let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(
        pages,
        [
            (s(&["1", "2"]), "2".to_owned(), true),
            (s(&["3", "4"]), "4".to_owned(), true),
            (s(&["5"]), "5".to_owned(), false),
        ]
    );

    // A page that ends exactly at the end of the stream has nothing more.
    let exact = page(&sync(&app, &bob.token, &[("since", "3"), ("limit", "2")]).await);
    assert_eq!(exact.messages, bob_stream[3..]);
    assert_eq!((exact.next.as_str(), exact.has_more), ("5", false));
    // Caught up: nothing, and the cursor stays where it was.
    let empty = page(&sync(&app, &bob.token, &[("since", "5")]).await);
    assert_eq!(empty.messages, Vec::<Value>::new());
    assert_eq!((empty.next.as_str(), empty.has_more), ("5", false));

    // Every user has a stream of their own, numbered from 1.
    let ada_all = page(&sync(&app, &ada.token, &[]).await);
    assert_eq!(ada_all.messages, [at(&m1, 1), at(&m2, 2), at(&m4, 3), at(&m6, 4)]);
    let cat_all = page(&sync(&app, &cat.token, &[]).await);
    assert_eq!(cat_all.messages, [at(&m3, 1), at(&m4, 2), at(&m5, 3)]);
    assert_eq!((cat_all.next.as_str(), cat_all.has_more), ("3", false));
    let dan = app.create_user("dan").await;
    let nothing = page(&sync(&app, &dan.token, &[]).await);
    assert!(nothing.messages.is_empty() && !nothing.has_more);
    assert_eq!(nothing.next, "0", "an empty stream's cursor is the start");
}

#[tokio::test]
async fn the_sync_limit_defaults_to_50_and_is_capped_at_200() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let (app_ref, ada_ref, bob_ref) = (&app, &ada, &bob);
    let sent: HashSet<String> = futures_util::stream::iter(0..205)
        .map(move |i| async move {
            let sent = app_ref.send_ok(ada_ref, bob_ref, &format!("n{i:03}")).await;
            sent["_id"].as_str().unwrap().to_owned()
        })
        .buffer_unordered(6)
        .collect()
        .await;
    let numbered = |from: u64, count: u64| (from..from + count).map(|c| c.to_string()).collect::<Vec<_>>();

    let default_page = page(&sync(&app, &bob.token, &[]).await);
    assert_eq!(cursors(&default_page.messages), numbered(1, 50));
    assert_eq!((default_page.next.as_str(), default_page.has_more), ("50", true));

    let capped = page(&sync(&app, &bob.token, &[("limit", "1000")]).await);
    assert_eq!(cursors(&capped.messages), numbered(1, 200));
    assert_eq!((capped.next.as_str(), capped.has_more), ("200", true));
    let rest = page(&sync(&app, &bob.token, &[("since", "200"), ("limit", "200")]).await);
    assert_eq!(cursors(&rest.messages), numbered(201, 5));
    assert_eq!((rest.next.as_str(), rest.has_more), ("205", false));

    let ids: Vec<String> =
        capped.messages.iter().chain(&rest.messages).map(|m| m["_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 205);
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), sent, "every message once");
}

#[tokio::test]
async fn sync_refuses_a_malformed_since_or_limit_and_an_anonymous_caller() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    app.send_ok(&ada, &bob, "hi").await;

    for since in ["abc", "-1", "1.5", "0x1", " 1", "1a", "9999999999999999999999999"] {
        let response = sync(&app, &bob.token, &[("since", since)]).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(response.body["field"], "since", "since={since:?}: {}", response.text);
    }
    for limit in ["ten", "-1"] {
        let response = sync(&app, &bob.token, &[("limit", limit)]).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    app.get("/api/v1/message/sync", None).await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    sync(&app, "garbage", &[]).await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    // The cookie works as everywhere else.
    let by_cookie = app.get_with_cookie("/api/v1/message/sync?since=0", &bob.token).await;
    assert_eq!(page(&by_cookie).messages.len(), 1);
}

#[tokio::test]
async fn each_user_gets_a_new_message_at_their_own_position() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    // Bob's stream is two ahead of Ada's.
    app.send_ok(&cat, &bob, "first").await;
    app.send_ok(&cat, &bob, "second").await;
    let mut ada_phone = app.connect_ws(&ada.token).await;
    let mut ada_laptop = app.connect_ws(&ada.token).await;
    let mut bob_phone = app.connect_ws(&bob.token).await;

    let sent = send_keyed(&app, &ada, &bob.id, "to bob", Some(json!("k")), None).await;
    let sent = sent.data(StatusCode::CREATED).clone();
    assert_eq!(bob_phone.next_event("newMessage", EVENT_TIMEOUT).await, at(&sent, 3));
    // The sender's own devices get the sender's position.
    for socket in [&mut ada_phone, &mut ada_laptop] {
        assert_eq!(socket.next_event("newMessage", EVENT_TIMEOUT).await, at(&sent, 1));
    }

    let reply = app.send_ok(&bob, &ada, "reply").await;
    assert_eq!(bob_phone.next_event("newMessage", EVENT_TIMEOUT).await, at(&reply, 4));
    for socket in [&mut ada_phone, &mut ada_laptop] {
        assert_eq!(socket.next_event("newMessage", EVENT_TIMEOUT).await, at(&reply, 2));
    }
    // The same positions as sync reports.
    let bob_sync = page(&sync(&app, &bob.token, &[("since", "2")]).await);
    assert_eq!(bob_sync.messages, [at(&sent, 3), at(&reply, 4)]);
    let ada_sync = page(&sync(&app, &ada.token, &[]).await);
    assert_eq!(ada_sync.messages, [at(&sent, 1), at(&reply, 2)]);
    for socket in [&mut ada_phone, &mut ada_laptop, &mut bob_phone] {
        socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
}

#[tokio::test]
async fn a_ws_connection_with_since_replays_what_came_after_it_then_goes_live() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut sent = Vec::new();
    for i in 1..=5 {
        sent.push(app.send_ok(&ada, &bob, &format!("offline {i}")).await);
    }

    let mut resumed = connect_since(&app, &bob, "2").await;
    for (i, message) in sent.iter().enumerate().skip(2) {
        let event = resumed.next_event("newMessage", EVENT_TIMEOUT).await;
        assert_eq!(event, at(message, i as u64 + 1), "replayed in order");
    }
    let live = app.send_ok(&ada, &bob, "live").await;
    assert_eq!(resumed.next_event("newMessage", EVENT_TIMEOUT).await, at(&live, 6));
    resumed.assert_no_event("newMessage", QUIET_PERIOD).await;
    // It is an ordinary connection otherwise: it was shown who is online.
    assert!(resumed.received.iter().any(|f| f["event"] == "onlineUsers"), "{:?}", resumed.received);

    // From the start: everything.
    let mut from_start = connect_since(&app, &bob, "0").await;
    for (i, message) in sent.iter().chain([&live]).enumerate() {
        let event = from_start.next_event("newMessage", EVENT_TIMEOUT).await;
        assert_eq!(event, at(message, i as u64 + 1));
    }
    // Caught up already: nothing to replay, live only.
    let mut caught_up = connect_since(&app, &bob, "6").await;
    // Without since, or with an empty one: no replay either.
    let mut plain = app.connect_ws(&bob.token).await;
    let mut empty = connect_since(&app, &bob, "").await;
    for socket in [&mut from_start, &mut caught_up, &mut plain, &mut empty] {
        socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
    let later = app.send_ok(&ada, &bob, "later").await;
    for socket in [&mut resumed, &mut from_start, &mut caught_up, &mut plain, &mut empty] {
        assert_eq!(socket.next_event("newMessage", EVENT_TIMEOUT).await, at(&later, 7));
    }
    // The sender's own device resumes its own stream.
    let mut ada_resumed = connect_since(&app, &ada, "6").await;
    assert_eq!(ada_resumed.next_event("newMessage", EVENT_TIMEOUT).await, at(&later, 7));
    ada_resumed.assert_no_event("newMessage", QUIET_PERIOD).await;
    assert_eq!(without_cursor(&at(&later, 7)), later);
}

#[tokio::test]
async fn a_ws_handshake_with_a_malformed_since_is_refused_with_400() {
    let app = spawn_app().await;
    let bob = app.create_user("bob").await;
    for since in ["abc", "-1", "1.5", "%201", "0x10", "9999999999999999999999999"] {
        let url = format!("{}?token={}&since={since}", app.ws_url(), bob.token);
        match app.try_connect_ws(&url).await {
            Ok(_) => panic!("since={since:?} was accepted"),
            Err(refused) => {
                assert_eq!(refused.status, Some(StatusCode::BAD_REQUEST), "since={since:?}: {refused:?}");
                if let Some(body) = refused.body.filter(|b| !b.is_empty()) {
                    let body: Value = serde_json::from_str(&body).expect("a JSON error body");
                    assert_eq!(body["code"], "VALIDATION", "{body}");
                    assert_eq!(body["field"], "since", "{body}");
                }
            }
        }
    }
    // A valid since still needs a valid token.
    let url = format!("{}?token=garbage&since=0", app.ws_url());
    let refused = app.try_connect_ws(&url).await.err().expect("refused");
    assert_eq!(refused.status, Some(StatusCode::UNAUTHORIZED));
}
