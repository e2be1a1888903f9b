use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;
use tests::ws::ids;
use tests::{WsRefused, EVENT_TIMEOUT, QUIET_PERIOD};

#[track_caller]
fn assert_refused(result: Result<tests::WsClient, WsRefused>) -> WsRefused {
    match result {
        Ok(_) => panic!("the handshake must be refused"),
        Err(refused) => {
            assert_eq!(refused.status, Some(StatusCode::UNAUTHORIZED), "{refused:?}");
            refused
        }
    }
}

#[tokio::test]
async fn a_handshake_without_a_valid_token_is_refused_with_401() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let url = app.ws_url();

    let refused = assert_refused(app.try_connect_ws(&url).await);
    if let Some(body) = refused.body {
        let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
        assert_eq!(body["code"], "UNAUTHENTICATED");
    }
    assert_refused(app.try_connect_ws(&format!("{url}?token=")).await);
    assert_refused(app.try_connect_ws(&format!("{url}?token=garbage")).await);
    assert_refused(app.connect_ws_with_header("authorization", "Bearer garbage").await);
    assert_refused(app.connect_ws_with_header("cookie", "token=garbage").await);

    // A revoked token is refused as well.
    app.logout(&ada.token).await.data(StatusCode::OK);
    assert_refused(app.try_connect_ws(&format!("{url}?token={}", ada.token)).await);
}

#[tokio::test]
async fn the_token_may_come_in_the_query_a_bearer_header_or_the_cookie() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;

    let mut by_query = app.connect_ws_with_query(&ada.token).await;
    let mut by_header = app
        .connect_ws_with_header("authorization", &format!("Bearer {}", ada.token))
        .await
        .expect("a Bearer header is accepted");
    let mut by_cookie = app
        .connect_ws_with_header("cookie", &format!("token={}", ada.token))
        .await
        .expect("the cookie is accepted");
    for socket in [&mut by_query, &mut by_header, &mut by_cookie] {
        let online = socket.next_event("onlineUsers", EVENT_TIMEOUT).await;
        assert_eq!(ids(&online), [ada.id.as_str()]);
    }

    // Each of them is Ada's: her messages reach all three.
    let sent = app.send_ok(&bob, &ada, "to every tab").await;
    for socket in [&mut by_query, &mut by_header, &mut by_cookie] {
        assert_eq!(message_of(socket.next_event("newMessage", EVENT_TIMEOUT).await), sent);
    }
}

#[tokio::test]
async fn a_new_connection_is_told_who_is_online_under_both_names() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let _ada_socket = app.connect_ws(&ada.token).await;

    let mut bob_socket = app.connect_ws_with_query(&bob.token).await;

    let online = bob_socket.next_event("onlineUsers", EVENT_TIMEOUT).await;
    let legacy = bob_socket.next_event("getOnlineUsers", EVENT_TIMEOUT).await;
    assert_eq!(online, legacy);
    let mut online = ids(&online);
    online.sort();
    let mut expected = vec![ada.id.clone(), bob.id.clone()];
    expected.sort();
    assert_eq!(online, expected);

    // A second device of a user already online gets the list too.
    let mut bob_again = app.connect_ws_with_query(&bob.token).await;
    let mut again = ids(&bob_again.next_event("onlineUsers", EVENT_TIMEOUT).await);
    again.sort();
    assert_eq!(again, expected);
    bob_again.next_event("getOnlineUsers", EVENT_TIMEOUT).await;
}

#[tokio::test]
async fn everyone_hears_when_a_user_comes_online_and_goes_offline() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut ada_socket = app.connect_ws(&ada.token).await;

    let bob_phone = app.connect_ws(&bob.token).await;
    let online =
        ada_socket.next_event_matching("onlineUsers", |d| ids(d).contains(&bob.id), EVENT_TIMEOUT).await;
    assert_eq!(ids(&online).len(), 2);
    ada_socket.next_event_matching("getOnlineUsers", |d| ids(d).contains(&bob.id), EVENT_TIMEOUT).await;

    // Bob stays online while one of his connections is open.
    let bob_laptop = app.connect_ws(&bob.token).await;
    bob_phone.close().await;
    ada_socket.assert_no_event("onlineUsers", QUIET_PERIOD).await;

    bob_laptop.close().await;
    let online =
        ada_socket.next_event_matching("onlineUsers", |d| !ids(d).contains(&bob.id), EVENT_TIMEOUT).await;
    assert_eq!(ids(&online), [ada.id.as_str()]);
}

#[tokio::test]
async fn a_new_message_reaches_every_device_of_both_users_and_nobody_else() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    // Typing reaches only someone you share a conversation with.
    for (from, to) in [(&ada, &bob), (&cat, &ada), (&bob, &cat)] {
        app.send_ok(from, to, "hi").await;
    }
    let mut ada_phone = app.connect_ws(&ada.token).await;
    let mut ada_laptop = app.connect_ws(&ada.token).await;
    let mut bob_phone = app.connect_ws(&bob.token).await;
    let mut bob_laptop = app.connect_ws(&bob.token).await;
    let mut cat_phone = app.connect_ws(&cat.token).await;

    let sent = app.send_ok(&ada, &bob, "hello bob").await;

    for socket in [&mut ada_phone, &mut ada_laptop, &mut bob_phone, &mut bob_laptop] {
        assert_eq!(message_of(socket.next_event("newMessage", EVENT_TIMEOUT).await), sent);
    }
    // Events to one connection keep their order: had Cat got Ada's message to Bob, it would
    // come before this one.
    let to_cat = app.send_ok(&bob, &cat, "hello cat").await;
    assert_eq!(message_of(cat_phone.next_event("newMessage", EVENT_TIMEOUT).await), to_cat);
    // Ada was not part of that one.
    let to_ada = app.send_ok(&cat, &ada, "hello ada").await;
    for socket in [&mut ada_phone, &mut ada_laptop] {
        assert_eq!(message_of(socket.next_event("newMessage", EVENT_TIMEOUT).await), to_ada);
    }
    for socket in [&mut bob_phone, &mut bob_laptop] {
        assert_eq!(message_of(socket.next_event("newMessage", EVENT_TIMEOUT).await), to_cat);
        socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
}

#[tokio::test]
async fn typing_is_relayed_to_the_target_only() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    // Typing reaches only someone you share a conversation with.
    for (from, to) in [(&ada, &bob), (&cat, &ada), (&bob, &cat)] {
        app.send_ok(from, to, "hi").await;
    }
    let mut ada_phone = app.connect_ws(&ada.token).await;
    let mut ada_laptop = app.connect_ws(&ada.token).await;
    let mut bob_phone = app.connect_ws(&bob.token).await;
    let mut bob_laptop = app.connect_ws(&bob.token).await;
    let mut cat_phone = app.connect_ws(&cat.token).await;

    ada_phone.emit("typing", json!({ "to": bob.id, "isTyping": true })).await;

    let expected = json!({ "from": ada.id, "to": bob.id, "isTyping": true });
    for socket in [&mut bob_phone, &mut bob_laptop] {
        assert_eq!(socket.next_event("typing", EVENT_TIMEOUT).await, expected);
    }
    ada_phone.emit("typing", json!({ "to": bob.id, "isTyping": false })).await;
    let stopped = json!({ "from": ada.id, "to": bob.id, "isTyping": false });
    assert_eq!(bob_phone.next_event("typing", EVENT_TIMEOUT).await, stopped);

    // Neither Cat nor Ada's own devices heard it: their first typing notice is a later one.
    cat_phone.emit("typing", json!({ "to": ada.id, "isTyping": true })).await;
    let from_cat = json!({ "from": cat.id, "to": ada.id, "isTyping": true });
    for socket in [&mut ada_phone, &mut ada_laptop] {
        assert_eq!(socket.next_event("typing", EVENT_TIMEOUT).await, from_cat);
    }
    bob_phone.emit("typing", json!({ "to": cat.id, "isTyping": true })).await;
    let from_bob = json!({ "from": bob.id, "to": cat.id, "isTyping": true });
    assert_eq!(cat_phone.next_event("typing", EVENT_TIMEOUT).await, from_bob);

    // Typing to oneself or to nobody goes nowhere.
    ada_phone.emit("typing", json!({ "to": ada.id, "isTyping": true })).await;
    ada_phone.emit("typing", json!({ "to": "ffffffff-ffff-ffff-ffff-ffffffffffff", "isTyping": true })).await;
    ada_laptop.assert_no_event("typing", QUIET_PERIOD).await;
}

#[tokio::test]
async fn the_sender_cannot_be_spoofed_in_a_typing_notice() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    app.send_ok(&ada, &bob, "hi").await;
    let mut ada_socket = app.connect_ws(&ada.token).await;
    let mut bob_socket = app.connect_ws(&bob.token).await;

    ada_socket.emit("typing", json!({ "from": cat.id, "to": bob.id, "isTyping": true })).await;

    let notice = bob_socket.next_event("typing", EVENT_TIMEOUT).await;
    assert_eq!(notice, json!({ "from": ada.id, "to": bob.id, "isTyping": true }));
}

#[tokio::test]
async fn a_malformed_frame_gets_an_error_frame_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    app.send_ok(&ada, &bob, "hi").await;
    let mut ada_socket = app.connect_ws(&ada.token).await;
    let mut bob_socket = app.connect_ws(&bob.token).await;

    for frame in ["not json", "{\"event\":", "[1,2,3]", "{\"data\": {}}"] {
        ada_socket.send_text(frame).await;
        let error = ada_socket.next_event("error", EVENT_TIMEOUT).await;
        assert_eq!(error["code"], "VALIDATION", "{frame}: {error}");
        assert!(error["errMessage"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }
    ada_socket.emit("typing", json!({ "isTyping": true })).await;
    let error = ada_socket.next_event("error", EVENT_TIMEOUT).await;
    assert_eq!(error["code"], "VALIDATION");
    ada_socket.emit("typing", json!("bob")).await;
    ada_socket.next_event("error", EVENT_TIMEOUT).await;

    // Still connected, both ways.
    ada_socket.emit("typing", json!({ "to": bob.id, "isTyping": true })).await;
    let notice = bob_socket.next_event("typing", EVENT_TIMEOUT).await;
    assert_eq!(notice["from"], ada.id.as_str());
    let sent = app.send_ok(&bob, &ada, "still there?").await;
    assert_eq!(message_of(ada_socket.next_event("newMessage", EVENT_TIMEOUT).await), sent);
}

#[tokio::test]
async fn an_unknown_event_is_ignored() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut ada_socket = app.connect_ws(&ada.token).await;

    ada_socket.emit("somethingNew", json!({ "x": 1 })).await;
    let sent = app.send_ok(&bob, &ada, "hi").await;

    let first = ada_socket.next_event_matching("newMessage", |_| true, EVENT_TIMEOUT).await;
    assert_eq!(message_of(first), sent);
    assert!(
        ada_socket.received.iter().all(|f| f["event"] != "error"),
        "no error for an unknown event: {:?}",
        ada_socket.received
    );
}

#[tokio::test]
async fn a_message_that_was_not_sent_is_never_announced() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut ada_socket = app.connect_ws(&ada.token).await;
    let mut bob_socket = app.connect_ws(&bob.token).await;

    app.send(&ada.token, &bob.id, "   ").await.error(StatusCode::BAD_REQUEST, "VALIDATION");
    app.send(&ada.token, &bob.id, &"x".repeat(5001)).await.error(StatusCode::BAD_REQUEST, "VALIDATION");
    app.send(&ada.token, &ada.id, "me").await.error(StatusCode::BAD_REQUEST, "VALIDATION");
    app.send(&ada.token, "ffffffff-ffff-ffff-ffff-ffffffffffff", "x")
        .await
        .error(StatusCode::NOT_FOUND, "NOT_FOUND");
    app.send("garbage", &bob.id, "x").await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    let sent = app.send_ok(&ada, &bob, "the real one").await;
    for socket in [&mut ada_socket, &mut bob_socket] {
        assert_eq!(message_of(socket.next_event("newMessage", EVENT_TIMEOUT).await), sent);
        socket.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_the_connection() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let mut socket = app.connect_ws(&ada.token).await;

    socket.send_text(&format!("{{\"event\":\"typing\",\"data\":\"{}\"}}", "x".repeat(70_000))).await;

    let closed = socket.expect_close(EVENT_TIMEOUT).await;
    assert!(closed, "the server closes a connection that sends a frame above the limit");
}

/// A `newMessage` event's data without its `cursor` (the receiving user's stream position,
/// which REST responses don't carry), once it is checked to be one.
fn message_of(mut event: serde_json::Value) -> serde_json::Value {
    let cursor = event.as_object_mut().and_then(|data| data.remove("cursor"));
    assert!(
        cursor.as_ref().and_then(|c| c.as_str()).is_some_and(|c| c.parse::<u64>().is_ok()),
        "a newMessage without a decimal cursor: {event}"
    );
    event
}
