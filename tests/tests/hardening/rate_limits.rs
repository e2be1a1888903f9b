//! Rate limits: logins, registrations, sends, socket connects, sockets per user, frames.

use super::*;

#[tokio::test]
async fn logins_for_one_username_are_rate_limited() {
    let app = spawn(|s| s.limits.requests.login_per_minute_per_username = 3).await;
    let api = app.api();
    let user = api.create_user(&unique("victim")).await;

    for _ in 0..3 {
        api.login(&user.username, "wrong password").await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    api.login(&user.username, "wrong password").await.rate_limited();
    // The address that failed waits, even with the right password, unchecked (the owner on
    // another address is not locked out: accounts::failed_logins_by_a_stranger_do_not_lock_the_owner_out).
    api.login(&user.username.to_uppercase(), PASSWORD).await.rate_limited();
    // Other accounts are not locked out by it.
    let other = api.create_user(&unique("other")).await;
    api.login(&other.username, PASSWORD).await.data(StatusCode::OK);
}

#[tokio::test]
async fn logins_from_one_address_are_rate_limited() {
    let app = spawn(|s| s.limits.requests.login_per_minute_per_ip = 3).await;
    let api = app.api();
    for _ in 0..3 {
        api.login(&unique("nobody"), "wrong password")
            .await
            .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    api.login(&unique("nobody"), "wrong password").await.rate_limited();
}

#[tokio::test]
async fn message_sends_are_rate_limited_per_user() {
    let app = spawn(|s| s.limits.requests.sends_per_second_per_user = 2).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;

    let sends = (0..8).map(|i| {
        let (api, alice, bob) = (api.clone(), alice.clone(), bob.clone());
        tokio::spawn(async move { api.send(&alice.token, &bob.id, &format!("burst {i}")).await })
    });
    let replies: Vec<Reply> =
        futures_util::future::join_all(sends).await.into_iter().map(Result::unwrap).collect();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(!limited.is_empty(), "8 sends at once with 2 allowed per second: {replies:?}");
    limited[0].rate_limited();
    assert!(replies.iter().any(|r| r.status == StatusCode::CREATED), "the first sends pass");
    // Bob has an allowance of his own.
    api.send(&bob.token, &alice.id, "reply").await.data(StatusCode::CREATED);
}

#[tokio::test]
async fn socket_connects_are_rate_limited_per_user() {
    let app = spawn(|s| s.limits.requests.socket_connects_per_minute_per_user = 2).await;
    let api = app.api();
    let user = api.create_user(&unique("sockets")).await;
    let _first = api.connect_ws(&user.token).await;
    let _second = api.connect_ws(&user.token).await;
    match api.try_ws(&user.token).await {
        Err(WsRefused { status: Some(status), .. }) => assert_eq!(status, 429),
        Err(_) => panic!("the handshake failed without a status"),
        Ok(_) => panic!("a third connect within the minute was accepted"),
    }
    // The refusal is the usual envelope for plain HTTP clients.
    let reply = api.get(&format!("/ws?token={}", user.token), None).await;
    reply.rate_limited();
}

#[tokio::test]
async fn a_socket_sending_too_many_frames_is_closed_with_a_policy_code() {
    let app = spawn(|s| s.limits.socket_frames_per_second = 5).await;
    let api = app.api();
    let user = api.create_user(&unique("chatty")).await;
    let other = api.create_user(&unique("quiet")).await;
    let mut ws = api.connect_ws(&user.token).await;
    let typing = json!({ "event": "typing", "data": { "to": other.id, "isTyping": true } }).to_string();
    for _ in 0..50 {
        if ws.stream.send(Frame::text(typing.clone())).await.is_err() {
            break;
        }
    }
    let (code, reason) = ws.close_frame(WAIT).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(!reason.is_empty());
}

#[tokio::test]
async fn a_user_holds_at_most_the_allowed_sockets() {
    let app = spawn(|s| s.limits.sockets_per_user = 2).await;
    let api = app.api();
    let user = api.create_user(&unique("tabs")).await;
    let _first = api.connect_ws(&user.token).await;
    let second = api.connect_ws(&user.token).await;
    let mut third = api.try_ws(&user.token).await.expect("the handshake itself completes");
    let (code, reason) = third.close_frame(WAIT).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");

    // Another user is not affected, and a closed socket frees its place.
    let other = api.create_user(&unique("elsewhere")).await;
    let _theirs = api.connect_ws(&other.token).await;
    drop(second);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = api.try_ws(&user.token).await.expect("the handshake completes");
        match tokio::time::timeout(Duration::from_secs(2), again.stream.next()).await {
            Ok(Some(Ok(Frame::Text(_)))) => break,
            _ if Instant::now() < deadline => continue,
            other => panic!("the freed place was not given back: {other:?}"),
        }
    }
}
