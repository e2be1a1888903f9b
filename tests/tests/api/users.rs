use std::collections::HashSet;

use chat_jwt::JwtTokenService;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{assert_user, parse_cookie, spawn_app, TOKEN_TTL_SECS};
use tests::{Reply, JWT_SECRET, PASSWORD};

fn registration(username: &str) -> Value {
    json!({
        "fullName": "Ada Lovelace",
        "username": username,
        "password": PASSWORD,
        "gender": "female",
    })
}

#[track_caller]
fn assert_token_cookie(response: &Reply, token: &str) {
    let header = response.token_cookie();
    let (value, attributes) = parse_cookie(header);
    assert_eq!(value, token, "the cookie carries the token of the body: {header}");
    let attribute = |name: &str| attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert!(attribute("httponly").is_some(), "HttpOnly missing: {header}");
    assert_eq!(attribute("samesite"), Some("Lax"), "{header}");
    assert_eq!(attribute("path"), Some("/"), "{header}");
    assert_eq!(attribute("max-age"), Some(TOKEN_TTL_SECS.to_string().as_str()), "{header}");
    assert!(attribute("secure").is_none(), "Secure is for production only: {header}");
}

#[tokio::test]
async fn register_returns_201_with_the_new_user_a_token_and_the_cookie() {
    let app = spawn_app().await;

    let response = app.register(&registration("ada")).await;

    let data = response.data(StatusCode::CREATED);
    let user = &data["newUser"];
    assert_user(user, "ada");
    assert_eq!(user["fullName"], "Ada Lovelace");
    assert_eq!(user["gender"], "female");
    assert_eq!(user["createdAt"], user["updatedAt"]);
    let token = data["token"].as_str().expect("a token string");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_token_cookie(&response, token);
    let profile = app.profile(token).await;
    assert_eq!(profile.data(StatusCode::OK)["_id"], user["_id"]);
}

#[tokio::test]
async fn register_trims_the_full_name_keeps_the_username_as_given_and_defaults_the_avatar() {
    let app = spawn_app().await;

    let response = app
        .register(&json!({
            "fullName": "  Grace Hopper  ",
            "username": "Grace.H-1_",
            "password": PASSWORD,
        }))
        .await;

    let user = &response.data(StatusCode::CREATED)["newUser"];
    assert_user(user, "Grace.H-1_");
    assert_eq!(user["fullName"], "Grace Hopper");
    assert!(user["gender"].is_null(), "no gender given: {user}");
    let avatar = user["avatar"].as_str().unwrap();
    let again = app.login("grace.h-1_", PASSWORD).await;
    assert_eq!(again.data(StatusCode::OK)["user"]["avatar"], avatar, "the default avatar is stable");
}

#[tokio::test]
async fn register_keeps_a_given_avatar() {
    let app = spawn_app().await;
    let mut body = registration("ada");
    body["avatar"] = json!("https://pics.example/ada.png");

    let response = app.register(&body).await;

    assert_eq!(response.data(StatusCode::CREATED)["newUser"]["avatar"], "https://pics.example/ada.png");
}

#[tokio::test]
async fn register_refuses_missing_fields_naming_the_field() {
    let app = spawn_app().await;
    for field in ["fullName", "username", "password"] {
        let mut body = registration("ada");
        body.as_object_mut().unwrap().remove(field);

        let response = app.register(&body).await;

        let message = response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(message.contains(field), "the message names {field}: {message}");
    }
    let response = app.register(&json!({})).await;
    response.error(StatusCode::BAD_REQUEST, "VALIDATION");
}

#[tokio::test]
async fn register_refuses_fields_of_the_wrong_type() {
    let app = spawn_app().await;
    let cases = [
        json!({ "fullName": "Ada", "username": { "$gt": "" }, "password": PASSWORD }),
        json!({ "fullName": "Ada", "username": "ada", "password": { "$ne": null } }),
        json!({ "fullName": ["Ada"], "username": "ada", "password": PASSWORD }),
        json!({ "fullName": "Ada", "username": 12345, "password": PASSWORD }),
        json!({ "fullName": "Ada", "username": "ada", "password": 12345678 }),
        json!(["ada", PASSWORD]),
        json!("ada"),
    ];
    for body in cases {
        let response = app.register(&body).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    // Nothing of the above was created.
    app.create_user("ada").await;
}

#[tokio::test]
async fn register_enforces_the_username_rules() {
    let app = spawn_app().await;
    let too_long = "a".repeat(33);
    for username in ["ab", "", too_long.as_str(), "has space", "semi;colon", "ünïcode", "<script>"] {
        let response = app.register(&registration(username)).await;
        let message = response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(message.contains("username"), "{username:?}: {message}");
    }
    for username in ["abc", "a".repeat(32).as_str(), "A.b_c-9"] {
        app.register(&registration(username)).await.data(StatusCode::CREATED);
    }
}

#[tokio::test]
async fn register_enforces_the_password_length_in_bytes() {
    let app = spawn_app().await;
    let cases = [
        ("ada1", "seven77".to_owned(), false),
        ("ada2", "a".repeat(73), false),
        // 37 two-byte characters: 74 bytes, though only 37 characters.
        ("ada3", "é".repeat(37), false),
        ("ada4", "eight888".to_owned(), true),
        ("ada5", "a".repeat(72), true),
        ("ada6", "é".repeat(36), true),
    ];
    for (username, password, accepted) in cases {
        let mut body = registration(username);
        body["password"] = json!(password);
        let response = app.register(&body).await;
        if accepted {
            response.data(StatusCode::CREATED);
            app.login(username, &password).await.data(StatusCode::OK);
        } else {
            let message = response.error(StatusCode::BAD_REQUEST, "VALIDATION");
            assert!(message.contains("password"), "{message}");
        }
    }
}

#[tokio::test]
async fn register_refuses_a_bad_gender_a_bad_full_name_and_a_bad_avatar() {
    let app = spawn_app().await;
    let cases = [
        ("gender", json!("robot")),
        ("gender", json!("MALE")),
        ("fullName", json!("   ")),
        ("fullName", json!("x".repeat(65))),
        ("avatar", json!("javascript:alert(1)")),
    ];
    for (field, value) in cases {
        let mut body = registration("ada");
        body[field] = value.clone();
        let response = app.register(&body).await;
        let message = response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(message.contains(field), "{field}={value}: {message}");
    }
    for gender in ["male", "female", "other"] {
        let mut body = registration(&format!("user_{gender}"));
        body["gender"] = json!(gender);
        let response = app.register(&body).await;
        assert_eq!(response.data(StatusCode::CREATED)["newUser"]["gender"], gender);
    }
}

#[tokio::test]
async fn register_checks_confirm_password_when_sent() {
    let app = spawn_app().await;
    let mut body = registration("ada");
    body["confirmPassword"] = json!("something else entirely");
    let message = app.register(&body).await.error(StatusCode::BAD_REQUEST, "VALIDATION").to_owned();
    assert!(message.contains("confirmPassword"), "{message}");

    body["confirmPassword"] = json!(PASSWORD);
    app.register(&body).await.data(StatusCode::CREATED);
}

#[tokio::test]
async fn a_taken_username_is_a_conflict_whatever_its_case() {
    let app = spawn_app().await;
    app.register(&registration("Alice")).await.data(StatusCode::CREATED);

    for username in ["Alice", "alice", "ALICE", "aLiCe"] {
        let response = app.register(&registration(username)).await;
        response.error(StatusCode::CONFLICT, "CONFLICT");
    }
    // The first registration keeps its spelling.
    let user = app.login("alice", PASSWORD).await;
    assert_eq!(user.data(StatusCode::OK)["user"]["username"], "Alice");
}

#[tokio::test]
async fn login_returns_the_user_a_fresh_token_and_the_cookie() {
    let app = spawn_app().await;
    let ada = app.create_user("Ada").await;

    let response = app.login("ada", &ada.password).await;

    let data = response.data(StatusCode::OK);
    assert_user(&data["user"], "Ada");
    assert_eq!(data["user"]["_id"], ada.id.as_str());
    let token = data["token"].as_str().unwrap();
    assert_ne!(token, ada.token, "each login gets its own token");
    assert_token_cookie(&response, token);
    assert_eq!(app.profile(token).await.data(StatusCode::OK)["_id"], ada.id.as_str());
}

#[tokio::test]
async fn login_gives_one_answer_for_an_unknown_user_and_a_wrong_password() {
    let app = spawn_app().await;
    app.create_user("ada").await;

    let wrong_password = app.login("ada", "not the password").await;
    let unknown_user = app.login("nobody", PASSWORD).await;
    let invalid_name = app.login("x", PASSWORD).await;

    let expected = wrong_password.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    for other in [&unknown_user, &invalid_name] {
        assert_eq!(other.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"), expected);
        assert_eq!(other.body, wrong_password.body);
    }
    for response in [&wrong_password, &unknown_user, &invalid_name] {
        assert!(response.set_cookies().is_empty(), "no cookie on a failed login");
    }
}

#[tokio::test]
async fn login_refuses_missing_or_mistyped_fields() {
    let app = spawn_app().await;
    app.create_user("ada").await;
    let cases = [
        json!({ "username": "ada" }),
        json!({ "password": PASSWORD }),
        json!({ "username": { "$gt": "" }, "password": PASSWORD }),
        json!({ "username": "ada", "password": { "$gt": "" } }),
    ];
    for body in cases {
        let response = app.post_json("/api/v1/user/login", &body, None).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(response.set_cookies().is_empty());
    }
}

#[tokio::test]
async fn logout_clears_the_cookie_and_revokes_the_token_everywhere() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let other_session =
        app.login("ada", PASSWORD).await.data(StatusCode::OK)["token"].as_str().unwrap().to_owned();

    let response = app.logout(&ada.token).await;

    response.data(StatusCode::OK);
    let (value, attributes) = parse_cookie(response.token_cookie());
    assert_eq!(value, "", "the cookie is emptied");
    assert!(
        attributes.iter().any(|(k, v)| k == "max-age" && v == "0")
            || attributes.iter().any(|(k, _)| k == "expires"),
        "the cookie expires now: {attributes:?}"
    );
    assert!(attributes.iter().any(|(k, v)| k == "path" && v == "/"), "{attributes:?}");
    app.profile(&ada.token).await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    app.get_with_cookie("/api/v1/user/get-profile", &ada.token)
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    app.logout(&ada.token).await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    // Only that token: the other session goes on.
    app.profile(&other_session).await.data(StatusCode::OK);
}

#[tokio::test]
async fn logout_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;
    let response = app.execute(app.client.post(app.url("/api/v1/user/logout"))).await;
    response.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn the_profile_is_mine_by_header_or_by_cookie() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    app.create_user("bob").await;

    for response in
        [app.profile(&ada.token).await, app.get_with_cookie("/api/v1/user/get-profile", &ada.token).await]
    {
        let user = response.data(StatusCode::OK);
        assert_user(user, "ada");
        assert_eq!(user["_id"], ada.id.as_str());
        assert_eq!(user["fullName"], "ada Example");
    }
}

/// A token signed with the server's secret for `user`, issued at `issued_at`.
fn forged_token(secret: &str, user: &str, issued_at: chrono::DateTime<chrono::Utc>, ttl_secs: u64) -> String {
    let tokens = JwtTokenService::new(&SecretString::from(secret), std::time::Duration::from_secs(ttl_secs));
    let user = domain::UserId::parse(user).expect("a user id of the server");
    application::ports::TokenService::issue(&tokens, &user, issued_at).unwrap().token
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_on_every_protected_route() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    let expired = forged_token(JWT_SECRET, &ada.id, an_hour_ago, 3600);
    let other_secret =
        forged_token("another-secret-another-secret-another", &ada.id, chrono::Utc::now(), 3600);
    let valid_for_a_while = forged_token(JWT_SECRET, &ada.id, chrono::Utc::now(), 3600);
    let mut tampered = ada.token.clone();
    tampered.pop();
    tampered.push(if ada.token.ends_with('A') { 'B' } else { 'A' });
    let unsigned = {
        let parts: Vec<&str> = ada.token.split('.').collect();
        // {"alg":"none","typ":"JWT"}
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1])
    };

    // The forging works: a well-made token is accepted.
    app.profile(&valid_for_a_while).await.data(StatusCode::OK);

    let bad = [expired, other_secret, tampered, unsigned, "garbage".to_owned(), "a.b.c".to_owned()];
    for token in &bad {
        let requests = [
            app.profile(token).await,
            app.get_with_cookie("/api/v1/user/get-profile", token).await,
            app.other_users(token, &[]).await,
            app.send(token, &bob.id, "hi").await,
            app.get_messages(token, &bob.id, &[]).await,
            app.conversations(token).await,
            app.logout(token).await,
        ];
        for response in requests {
            response.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        }
    }
}

#[tokio::test]
async fn protected_routes_without_a_token_are_unauthenticated() {
    let app = spawn_app().await;
    let bob = app.create_user("bob").await;
    let requests = [
        app.get("/api/v1/user/get-profile", None).await,
        app.get("/api/v1/user/get-other-users", None).await,
        app.post_json(&format!("/api/v1/message/send/{}", bob.id), &json!({ "message": "hi" }), None).await,
        app.get(&format!("/api/v1/message/get-messages/{}", bob.id), None).await,
        app.get("/api/v1/message/conversations", None).await,
        app.execute(app.client.get(app.url("/api/v1/user/get-profile")).header("Authorization", "Bearer "))
            .await,
        app.execute(
            app.client.get(app.url("/api/v1/user/get-profile")).header("Authorization", "Basic YWRhOnB3"),
        )
        .await,
        app.execute(app.client.get(app.url("/api/v1/user/get-profile")).header("Cookie", "token=")).await,
    ];
    for response in requests {
        response.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
}

fn usernames(data: &Value) -> Vec<String> {
    data.as_array()
        .unwrap_or_else(|| panic!("expected a list of users: {data}"))
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn other_users_are_everyone_but_me_by_username_ignoring_case() {
    let app = spawn_app().await;
    let me = app.create_user("mallory").await;
    for name in ["charlie", "Bob", "alice", "Dave", "bobby"] {
        app.create_user(name).await;
    }

    let response = app.other_users(&me.token, &[]).await;

    let data = response.data(StatusCode::OK);
    assert_eq!(usernames(data), ["alice", "Bob", "bobby", "charlie", "Dave"]);
    for user in data.as_array().unwrap() {
        let name = user["username"].as_str().unwrap();
        assert_user(user, name);
    }
    assert!(response.header("x-next-cursor").is_none(), "a single page has no next cursor");
}

#[tokio::test]
async fn other_users_can_be_searched_by_username_or_full_name() {
    let app = spawn_app().await;
    let me = app.create_user("mallory").await;
    for name in ["charlie", "Bob", "alice", "bobby", "rob_b"] {
        app.create_user(name).await;
    }
    app.register(&json!({ "fullName": "Bobbie Draper", "username": "draper", "password": PASSWORD }))
        .await
        .data(StatusCode::CREATED);

    let found = app.other_users(&me.token, &[("search", "BOB")]).await;
    assert_eq!(usernames(found.data(StatusCode::OK)), ["Bob", "bobby", "draper"]);

    let none = app.other_users(&me.token, &[("search", "zzz")]).await;
    assert_eq!(none.data(StatusCode::OK), &json!([]));

    app.register(&json!({ "fullName": "Back\\slash 100%", "username": "slasher", "password": PASSWORD }))
        .await
        .data(StatusCode::CREATED);

    // A search matches the start of a username, a full name or a word of it: "rob_b"
    // holds "_b" and "Back\\slash" holds "k\\s", but neither starts with it.
    // Wildcards of SQL and regular expressions are plain characters.
    for pattern in ["%", "_b", "rob_", ".*", "mallory", "back\\", "k\\s", "100%", "10_", "[a-z]", "^b"] {
        let response = app.other_users(&me.token, &[("search", pattern)]).await;
        let names = usernames(response.data(StatusCode::OK));
        let expected: Vec<&str> = match pattern {
            "rob_" => vec!["rob_b"],
            "back\\" | "100%" => vec!["slasher"],
            _ => vec![],
        };
        assert_eq!(names, expected, "search {pattern:?}");
    }
}

#[tokio::test]
async fn other_users_are_paged_with_a_limit_and_a_cursor() {
    let app = spawn_app().await;
    let me = app.create_user("me_myself").await;
    // Mixed case, so that the order must ignore it: "user001" comes before "User002".
    let names: Vec<String> =
        (0..205).map(|i| format!("{}{:03}", if i % 2 == 0 { "User" } else { "user" }, i)).collect();
    futures_util::stream::iter(names.iter().map(|n| app.create_user(n)))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut expected = names.clone();
    expected.sort_by_key(|n| n.to_ascii_lowercase());

    let default_page = app.other_users(&me.token, &[]).await;
    assert_eq!(usernames(default_page.data(StatusCode::OK)), expected[..50]);
    assert!(default_page.header("x-next-cursor").is_some(), "more users follow");

    let capped = app.other_users(&me.token, &[("limit", "1000")]).await;
    assert_eq!(usernames(capped.data(StatusCode::OK)), expected[..200]);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "60".to_owned())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = app.other_users(&me.token, &query).await;
        let names = usernames(page.data(StatusCode::OK));
        assert!(names.len() <= 60);
        seen.extend(names);
        pages += 1;
        match page.header("x-next-cursor") {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "the cursor never ends");
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, expected, "every user once, in order");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 205);

    let searched = app.other_users(&me.token, &[("search", "user00"), ("limit", "3")]).await;
    assert_eq!(usernames(searched.data(StatusCode::OK)), ["User000", "user001", "User002"]);
    let cursor = searched.header("x-next-cursor").expect("more matches follow").to_owned();
    let next = app.other_users(&me.token, &[("search", "user00"), ("limit", "3"), ("cursor", &cursor)]).await;
    assert_eq!(usernames(next.data(StatusCode::OK)), ["user003", "User004", "user005"]);
}

#[tokio::test]
async fn other_users_refuses_a_bad_limit_or_cursor() {
    let app = spawn_app().await;
    let me = app.create_user("mallory").await;
    for query in
        [[("limit", "abc")], [("limit", "-1")], [("cursor", "not a cursor!")], [("search", &"x".repeat(500))]]
    {
        let response = app.other_users(&me.token, &query).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
}

#[tokio::test]
async fn a_user_is_found_by_id_as_the_user_list_shows_them() {
    let app = spawn_app().await;
    let me = app.create_user("myself").await;
    let bob = app.create_user("Bob").await;

    let listed = app.other_users(&me.token, &[]).await.data(StatusCode::OK)[0].clone();
    let reply = app.get(&format!("/api/v1/user/{}", bob.id), Some(&me.token)).await;
    let found = reply.data(StatusCode::OK);
    assert_user(found, "Bob");
    assert_eq!(found, &listed, "the same shape and values as in the user list");
    // Myself too.
    let reply = app.get(&format!("/api/v1/user/{}", me.id), Some(&me.token)).await;
    assert_user(reply.data(StatusCode::OK), "myself");

    // An id nobody has: 404; text that is no id: 400 naming the field.
    let reply = app.get("/api/v1/user/0190b8a4-5c3e-7a00-8000-000000000000", Some(&me.token)).await;
    reply.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let reply = app.get("/api/v1/user/not-an-id", Some(&me.token)).await;
    reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert_eq!(reply.body["field"], "id", "{}", reply.text);
    // Named routes keep their meaning.
    app.get("/api/v1/user/get-profile", Some(&me.token)).await.data(StatusCode::OK);
    let reply = app.get("/api/v1/user/register", Some(&me.token)).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{}", reply.text);
    // Unauthenticated: 401.
    let reply = app.get(&format!("/api/v1/user/{}", bob.id), None).await;
    reply.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}
