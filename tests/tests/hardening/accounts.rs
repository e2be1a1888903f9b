//! Accounts: login throttling without lockout, forwarded addresses, names and messages, imported hashes.

use super::*;

/// A login as if through one proxy that appended `forwarded` to the client's header.
async fn login_via_proxy(api: &Api, forwarded: &str, username: &str, password: &str) -> Reply {
    let request = api
        .request(Method::POST, "/api/v1/user/login", None)
        .header("x-forwarded-for", forwarded)
        .json(&json!({ "username": username, "password": password }));
    api.execute(request).await
}

fn behind_one_proxy(s: &mut Settings) {
    s.limits.requests.trust_forwarded_for = true;
    s.limits.requests.trusted_proxies = 1;
}

#[tokio::test]
async fn failed_logins_by_a_stranger_do_not_lock_the_owner_out() {
    let app = spawn(|s| {
        behind_one_proxy(s);
        s.limits.requests.login_per_minute_per_ip = 0;
        s.limits.requests.login_per_minute_per_username = 10;
    })
    .await;
    let api = app.api();
    let owner = api.create_user(&unique("owner")).await;
    let (stranger, home) = ("203.0.113.7", "198.51.100.2");

    for _ in 0..10 {
        login_via_proxy(&api, stranger, &owner.username, "wrong password")
            .await
            .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    for _ in 0..3 {
        login_via_proxy(&api, stranger, &owner.username, "wrong password").await.rate_limited();
    }
    // The stranger's address is refused even with the right password: it is the guesser.
    login_via_proxy(&api, stranger, &owner.username, PASSWORD).await.rate_limited();

    // The owner, from an address without failures, logs in.
    let reply = login_via_proxy(&api, home, &owner.username.to_uppercase(), PASSWORD).await;
    assert_eq!(reply.data(StatusCode::OK)["user"]["_id"], json!(owner.id));
    // A wrong password from a fresh address while the account is under attack: 429.
    login_via_proxy(&api, "192.0.2.44", &owner.username, "wrong password").await.rate_limited();
}

#[tokio::test]
async fn a_forged_forwarded_for_does_not_escape_the_per_address_limit() {
    let app = spawn(|s| {
        behind_one_proxy(s);
        s.limits.requests.login_per_minute_per_ip = 3;
        s.limits.requests.login_per_minute_per_username = 0;
    })
    .await;
    let api = app.api();
    // The client writes a new address each time; the proxy appends the real one.
    let forged = |n: u8| format!("10.9.8.{n}, 203.0.113.7");
    for n in 0..3 {
        login_via_proxy(&api, &forged(n), &unique("nobody"), "wrong password")
            .await
            .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    login_via_proxy(&api, &forged(3), &unique("nobody"), "wrong password").await.rate_limited();
    login_via_proxy(&api, "203.0.113.7", &unique("nobody"), "wrong password").await.rate_limited();
    // Another real client is not affected.
    login_via_proxy(&api, "10.9.8.0, 198.51.100.2", &unique("nobody"), "wrong password")
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn an_empty_username_or_password_is_a_validation_error() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let user = api.create_user(&unique("empty")).await;
    for (username, password, field) in [("", PASSWORD, "username"), (user.username.as_str(), "", "password")]
    {
        let reply = api.login(username, password).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], json!(field), "{}", reply.text);
    }
}

#[tokio::test]
async fn names_that_reorder_or_hide_text_are_refused_and_emoji_kept() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let register = |full_name: &'static str| {
        let api = api.clone();
        async move {
            let body = json!({ "fullName": full_name, "username": unique("name"), "password": PASSWORD });
            api.post_json("/api/v1/user/register", &body, None).await
        }
    };
    for spoof in ["Ada\u{202E}ecalevol", "\u{2067}Ada\u{2069}", "Ada\u{200B}", "\u{200D}", "\u{3164}"] {
        let reply = register(spoof).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], json!("fullName"), "{}", reply.text);
    }
    for kept in ["👩\u{200D}👩\u{200D}👧 Family", "Zoë ❤\u{FE0F}", "می\u{200C}خواهم", "山田 太郎"]
    {
        let reply = register(kept).await;
        assert_eq!(reply.data(StatusCode::CREATED)["newUser"]["fullName"], json!(kept));
    }
}

#[tokio::test]
async fn a_message_of_invisible_characters_only_is_refused() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    for blank in ["\u{200B}", " \u{200B}\u{200D}\u{FEFF} ", "\u{202E}\u{2066}", "\u{E0041}\u{E0042}"] {
        let reply = api.send(&alice.token, &bob.id, blank).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], json!("message"), "{}", reply.text);
    }
    let family = "👩\u{200D}👩\u{200D}👧";
    let reply = api.send(&alice.token, &bob.id, family).await;
    assert_eq!(reply.data(StatusCode::CREATED)["message"], json!(family));
}
