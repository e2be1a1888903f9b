//! Idempotent sends: `clientMessageId` in the body or an `Idempotency-Key` header makes a
//! retried send return the message stored the first time (200) instead of storing another.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::helpers::{assert_timestamp, spawn_app};
use tests::{Reply, TestApp, TestUser, WsClient, EVENT_TIMEOUT, QUIET_PERIOD};

/// `POST /api/v1/message/send/:receiver` with the key in the body (`body_key`, any JSON
/// value, so that malformed ones can be sent) and/or the `Idempotency-Key` header.
pub async fn send_keyed(
    app: &TestApp,
    from: &TestUser,
    receiver: &str,
    text: &str,
    body_key: Option<Value>,
    header: Option<&str>,
) -> Reply {
    let mut body = json!({ "message": text });
    if let Some(key) = body_key {
        body["clientMessageId"] = key;
    }
    let mut request =
        app.request(Method::POST, &format!("/api/v1/message/send/{receiver}"), Some(&from.token)).json(&body);
    if let Some(value) = header {
        request = request.header("Idempotency-Key", value);
    }
    app.execute(request).await
}

/// A message sent with a client key: exactly the documented fields, `clientMessageId` included.
#[track_caller]
pub fn assert_keyed_message(value: &Value, from: &TestUser, to: &TestUser, text: &str, key: &str) {
    let object = value.as_object().unwrap_or_else(|| panic!("a message must be an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "clientMessageId",
            "conversationId",
            "createdAt",
            "kind",
            "message",
            "reactions",
            "receiverId",
            "senderId",
            "seq",
            "version"
        ],
        "message fields: {value}"
    );
    assert_eq!(value["kind"], "text", "{value}");
    assert!(value["_id"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert!(value["conversationId"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert_eq!(value["senderId"], from.id.as_str(), "{value}");
    assert_eq!(value["receiverId"], to.id.as_str(), "{value}");
    assert_eq!(value["message"], text, "{value}");
    assert_eq!(value["clientMessageId"], key, "{value}");
    assert_timestamp(&value["createdAt"]);
}

/// A `newMessage` event's data without its `cursor`, after checking the cursor is a string of
/// decimal digits: what is left must be the message as the REST API returned it.
#[track_caller]
pub fn without_cursor(event: &Value) -> Value {
    let cursor = event["cursor"].as_str().unwrap_or_else(|| panic!("no string cursor: {event}"));
    assert!(
        !cursor.is_empty() && cursor.bytes().all(|b| b.is_ascii_digit()),
        "a cursor is decimal digits: {event}"
    );
    let mut message = event.clone();
    message.as_object_mut().unwrap().remove("cursor");
    message
}

async fn history_len(app: &TestApp, user: &TestUser, other: &TestUser) -> usize {
    let history = app.get_messages(&user.token, &other.id, &[]).await;
    history.data(StatusCode::OK)["messages"].as_array().expect("messages").len()
}

/// Both users' sockets get `message` once, and nothing else within the quiet period.
async fn announced_once(sockets: &mut [&mut WsClient], message: &Value) {
    for socket in sockets.iter_mut() {
        let event = socket.next_event("newMessage", EVENT_TIMEOUT).await;
        assert_eq!(without_cursor(&event), *message, "the event is the stored message");
    }
    for socket in sockets.iter_mut() {
        socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
}

#[tokio::test]
async fn a_retried_send_with_the_same_client_message_id_returns_the_first_message_with_200() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut bob_socket = app.connect_ws(&bob.token).await;
    let mut ada_socket = app.connect_ws(&ada.token).await;
    let key = "0b7e6d3c-5f0e-4d53-9f4e-3d2c1b0a9e8f";

    let first = send_keyed(&app, &ada, &bob.id, "hello once", Some(json!(key)), None).await;
    let first = first.data(StatusCode::CREATED).clone();
    assert_keyed_message(&first, &ada, &bob, "hello once", key);
    announced_once(&mut [&mut bob_socket, &mut ada_socket], &first).await;

    for _ in 0..2 {
        let retry = send_keyed(&app, &ada, &bob.id, "hello once", Some(json!(key)), None).await;
        assert_eq!(retry.data(StatusCode::OK), &first, "a retry returns the stored message");
    }
    for socket in [&mut bob_socket, &mut ada_socket] {
        socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
    assert_eq!(history_len(&app, &bob, &ada).await, 1, "stored once");
    let history = app.get_messages(&bob.token, &ada.id, &[]).await;
    assert_eq!(history.data(StatusCode::OK)["messages"], json!([first]));

    // The same text without a key is another message.
    let again = app.send(&ada.token, &bob.id, "hello once").await;
    let again = again.data(StatusCode::CREATED).clone();
    assert_ne!(again["_id"], first["_id"]);
    assert!(again.get("clientMessageId").is_none(), "no key, no clientMessageId: {again}");
    assert_eq!(history_len(&app, &bob, &ada).await, 2);
}

#[tokio::test]
async fn the_idempotency_key_may_come_in_a_header_quoted_or_bare() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut bob_socket = app.connect_ws(&bob.token).await;

    let first = send_keyed(&app, &ada, &bob.id, "by header", None, Some("\"abc\"")).await;
    let first = first.data(StatusCode::CREATED).clone();
    assert_keyed_message(&first, &ada, &bob, "by header", "abc");
    let event = bob_socket.next_event("newMessage", EVENT_TIMEOUT).await;
    assert_eq!(without_cursor(&event), first);

    // Bare, quoted again, in the body, in both agreeing: all the same key.
    let retries = [
        (None, Some("abc")),
        (None, Some("\"abc\"")),
        (Some(json!("abc")), None),
        (Some(json!("abc")), Some("abc")),
        (Some(json!("abc")), Some("\"abc\"")),
    ];
    for (body_key, header) in retries {
        let retry = send_keyed(&app, &ada, &bob.id, "by header", body_key.clone(), header).await;
        assert_eq!(retry.data(StatusCode::OK), &first, "body {body_key:?}, header {header:?}");
    }
    bob_socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    assert_eq!(history_len(&app, &ada, &bob).await, 1);

    // A bare header key first, found again by the body.
    let bare = send_keyed(&app, &ada, &bob.id, "bare", None, Some("k-2")).await;
    let bare = bare.data(StatusCode::CREATED).clone();
    assert_keyed_message(&bare, &ada, &bob, "bare", "k-2");
    let retry = send_keyed(&app, &ada, &bob.id, "bare", Some(json!("k-2")), None).await;
    assert_eq!(retry.data(StatusCode::OK), &bare);
    assert_eq!(history_len(&app, &ada, &bob).await, 2);
}

#[tokio::test]
async fn reusing_a_key_for_another_receiver_or_another_text_is_422() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let mut bob_socket = app.connect_ws(&bob.token).await;
    let mut cat_socket = app.connect_ws(&cat.token).await;

    let first = send_keyed(&app, &ada, &bob.id, "original", Some(json!("k1")), None).await;
    let first = first.data(StatusCode::CREATED).clone();
    bob_socket.next_event("newMessage", EVENT_TIMEOUT).await;

    let cases = [
        (bob.id.as_str(), "different text", Some(json!("k1")), None),
        (cat.id.as_str(), "original", Some(json!("k1")), None),
        (cat.id.as_str(), "different text", None, Some("k1")),
        // Whitespace counts: the text is kept exactly as sent.
        (bob.id.as_str(), "original ", Some(json!("k1")), None),
    ];
    for (receiver, text, body_key, header) in cases {
        let response = send_keyed(&app, &ada, receiver, text, body_key, header).await;
        response.error(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
    }

    bob_socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    cat_socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    assert_eq!(history_len(&app, &ada, &bob).await, 1);
    assert_eq!(history_len(&app, &ada, &cat).await, 0);
    // The key still means the first message.
    let retry = send_keyed(&app, &ada, &bob.id, "original", Some(json!("k1")), None).await;
    assert_eq!(retry.data(StatusCode::OK), &first);
}

#[tokio::test]
async fn a_malformed_key_or_a_header_that_disagrees_with_the_body_is_400() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut bob_socket = app.connect_ws(&bob.token).await;

    let too_long = "k".repeat(256);
    let body_keys =
        [json!(""), json!("a b"), json!("tab\there"), json!("é"), json!("line\n"), json!(too_long)];
    for key in body_keys {
        let response = send_keyed(&app, &ada, &bob.id, "x", Some(key.clone()), None).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(response.body["field"], "clientMessageId", "key {key}: {}", response.text);
    }
    let headers = ["", "\"\"", "a b", too_long.as_str()];
    for header in headers {
        let response = send_keyed(&app, &ada, &bob.id, "x", None, Some(header)).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(response.body["field"], "clientMessageId", "header {header:?}: {}", response.text);
    }
    // Header and body both given and different.
    for header in ["k2", "\"k2\""] {
        let response = send_keyed(&app, &ada, &bob.id, "x", Some(json!("k1")), Some(header)).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(response.body["field"], "clientMessageId", "header {header:?}: {}", response.text);
    }
    bob_socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    assert_eq!(history_len(&app, &ada, &bob).await, 0, "nothing was stored");

    // Neither key of the refused request was taken: both may be used now.
    let k1 = send_keyed(&app, &ada, &bob.id, "x", Some(json!("k1")), None).await;
    k1.data(StatusCode::CREATED);
    let k2 = send_keyed(&app, &ada, &bob.id, "x", None, Some("k2")).await;
    k2.data(StatusCode::CREATED);
    // The longest key: 255 visible ASCII characters, punctuation included.
    let longest: String = (0..255).map(|i| (b'!' + (i % 94) as u8) as char).collect();
    let response = send_keyed(&app, &ada, &bob.id, "long key", Some(json!(longest)), None).await;
    assert_keyed_message(response.data(StatusCode::CREATED), &ada, &bob, "long key", &longest);
}

#[tokio::test]
async fn the_same_key_from_different_senders_means_different_messages() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;

    let from_ada = send_keyed(&app, &ada, &bob.id, "same", Some(json!("shared")), None).await;
    let from_ada = from_ada.data(StatusCode::CREATED).clone();
    let from_cat = send_keyed(&app, &cat, &bob.id, "same", Some(json!("shared")), None).await;
    let from_cat = from_cat.data(StatusCode::CREATED).clone();
    // Even in the same conversation, the other way round, with other text.
    let from_bob = send_keyed(&app, &bob, &ada.id, "reply", Some(json!("shared")), None).await;
    let from_bob = from_bob.data(StatusCode::CREATED).clone();

    assert_keyed_message(&from_ada, &ada, &bob, "same", "shared");
    assert_keyed_message(&from_cat, &cat, &bob, "same", "shared");
    assert_keyed_message(&from_bob, &bob, &ada, "reply", "shared");
    let ids = [&from_ada["_id"], &from_cat["_id"], &from_bob["_id"]];
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
    assert_eq!(history_len(&app, &bob, &ada).await, 2);
    assert_eq!(history_len(&app, &bob, &cat).await, 1);
    // And each is still its sender's.
    let retry = send_keyed(&app, &cat, &bob.id, "same", Some(json!("shared")), None).await;
    assert_eq!(retry.data(StatusCode::OK), &from_cat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_racing_the_first_send_store_one_message_and_announce_it_once() {
    let app = Arc::new(spawn_app().await);
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut bob_socket = app.connect_ws(&bob.token).await;

    for round in 0..3 {
        let key = format!("race-{round}");
        let text = format!("raced {round}");
        let barrier = Arc::new(Barrier::new(8));
        let attempts = (0..8).map(|i| {
            let (app, barrier, ada, bob) = (app.clone(), barrier.clone(), ada.clone(), bob.clone());
            let (key, text) = (key.clone(), text.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                // Half by body, half by header.
                let (body_key, header) =
                    if i % 2 == 0 { (Some(json!(key)), None) } else { (None, Some(key.as_str())) };
                send_keyed(&app, &ada, &bob.id, &text, body_key, header).await
            })
        });
        let responses = futures_util::future::join_all(attempts).await;
        let responses: Vec<Reply> = responses.into_iter().map(|r| r.unwrap()).collect();
        let created: Vec<&Reply> = responses.iter().filter(|r| r.status == StatusCode::CREATED).collect();
        assert_eq!(created.len(), 1, "round {round}: exactly one 201: {responses:?}");
        let stored = created[0].data(StatusCode::CREATED).clone();
        assert_keyed_message(&stored, &ada, &bob, &text, &key);
        for response in responses.iter().filter(|r| r.status != StatusCode::CREATED) {
            assert_eq!(response.data(StatusCode::OK), &stored, "round {round}");
        }
        let event = bob_socket.next_event("newMessage", EVENT_TIMEOUT).await;
        assert_eq!(without_cursor(&event), stored, "round {round}");
        bob_socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
    assert_eq!(history_len(&app, &bob, &ada).await, 3);
}

#[tokio::test]
async fn a_key_of_another_type_than_a_string_is_400_and_stores_nothing() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    for key in [json!(42), json!(true), json!(["k"]), json!({ "k": 1 })] {
        let response = send_keyed(&app, &ada, &bob.id, "x", Some(key.clone()), None).await;
        // A body of the wrong shape is refused as a whole, like on every route.
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(response.text.contains("invalid type"), "key {key}: {}", response.text);
    }
    assert_eq!(history_len(&app, &ada, &bob).await, 0, "nothing was stored");
}
