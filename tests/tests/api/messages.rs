use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_message, assert_timestamp, spawn_app};
use tests::PASSWORD;

fn texts(conversation: &Value) -> Vec<String> {
    conversation["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages must be a list: {conversation}"))
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn send_returns_201_with_the_stored_message() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;

    let response = app.send(&ada.token, &bob.id, "hello bob").await;

    let message = response.data(StatusCode::CREATED);
    assert_message(message, &ada, &bob, "hello bob");
    let history = app.get_messages(&bob.token, &ada.id, &[]).await;
    let history = history.data(StatusCode::OK);
    assert_eq!(history["messages"], json!([message]));
    assert_eq!(history["_id"], message["conversationId"]);
}

#[tokio::test]
async fn a_message_is_stored_exactly_as_sent() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let sent = [
        "<script>alert('x')</script> & \"quotes\"",
        "  padded with spaces  ",
        "line one\nline two\ttabbed",
        "émoji 🎉 and 中文",
    ];
    for text in sent {
        let message = app.send_ok(&ada, &bob, text).await;
        assert_eq!(message["message"], text);
    }
    let history = app.get_messages(&bob.token, &ada.id, &[]).await;
    assert_eq!(texts(history.data(StatusCode::OK)), sent);
}

#[tokio::test]
async fn a_message_may_have_5000_characters_but_not_more() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;

    app.send(&ada.token, &bob.id, &"a".repeat(5000)).await.data(StatusCode::CREATED);
    // Characters, not bytes: 5000 two-byte characters fit.
    app.send(&ada.token, &bob.id, &"é".repeat(5000)).await.data(StatusCode::CREATED);
    for text in ["a".repeat(5001), "é".repeat(5001)] {
        let response = app.send(&ada.token, &bob.id, &text).await;
        let message = response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(message.contains("message"), "{message}");
    }
}

#[tokio::test]
async fn a_blank_or_missing_message_is_refused() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let path = format!("/api/v1/message/send/{}", bob.id);
    let bodies = [
        json!({ "message": "" }),
        json!({ "message": "   \n\t " }),
        json!({}),
        json!({ "message": null }),
        json!({ "message": 42 }),
        json!({ "message": { "$ne": "" } }),
    ];
    for body in bodies {
        let response = app.post_json(&path, &body, Some(&ada.token)).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    let history = app.get_messages(&ada.token, &bob.id, &[]).await;
    assert_eq!(history.data(StatusCode::OK)["messages"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn sending_to_an_unknown_user_is_not_found() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let unknown = bob.id.chars().rev().collect::<String>();
    for receiver in [
        "0190b8a4-5c3e-7a00-8000-000000000000".to_owned(),
        "ffffffff-ffff-ffff-ffff-ffffffffffff".to_owned(),
        "not-an-id".to_owned(),
        bob.id.to_uppercase(),
        unknown,
    ] {
        let response = app.send(&ada.token, &receiver, "hello?").await;
        response.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    assert_eq!(app.conversations(&ada.token).await.data(StatusCode::OK), &json!([]));
}

#[tokio::test]
async fn sending_to_oneself_is_refused() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;

    let response = app.send(&ada.token, &ada.id, "note to self").await;

    response.error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert_eq!(app.conversations(&ada.token).await.data(StatusCode::OK), &json!([]));
}

#[tokio::test]
async fn before_any_message_the_conversation_is_empty_and_has_no_id() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;

    let response = app.get_messages(&ada.token, &bob.id, &[]).await;

    let conversation = response.data(StatusCode::OK);
    assert_eq!(conversation["messages"], json!([]));
    assert!(conversation.get("_id").is_none(), "no conversation yet: {conversation}");
    let mut participants: Vec<&str> = conversation["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    participants.sort_unstable();
    let mut expected = vec![ada.id.as_str(), bob.id.as_str()];
    expected.sort_unstable();
    assert_eq!(participants, expected);
}

#[tokio::test]
async fn messages_with_an_unknown_user_are_not_found() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    for other in ["ffffffff-ffff-ffff-ffff-ffffffffffff", "nobody"] {
        let response = app.get_messages(&ada.token, other, &[]).await;
        response.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
}

#[tokio::test]
async fn the_history_is_oldest_first_and_pages_backwards() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut sent = Vec::new();
    for i in 1..=7 {
        let (from, to) = if i % 2 == 1 { (&ada, &bob) } else { (&bob, &ada) };
        sent.push(app.send_ok(from, to, &format!("m{i}")).await);
    }

    let all = app.get_messages(&ada.token, &bob.id, &[]).await;
    let all = all.data(StatusCode::OK).clone();
    assert_eq!(texts(&all), ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
    assert_eq!(all["messages"], json!(sent));
    let ids: Vec<&str> = sent.iter().map(|m| m["_id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow with time: {ids:?}");
    assert!(sent.iter().all(|m| m["conversationId"] == all["_id"]));
    assert_timestamp(&all["createdAt"]);
    assert_timestamp(&all["updatedAt"]);

    // Both sides see the same conversation.
    let theirs = app.get_messages(&bob.token, &ada.id, &[]).await;
    assert_eq!(theirs.data(StatusCode::OK), &all);

    let newest = app.get_messages(&ada.token, &bob.id, &[("limit", "3")]).await;
    assert_eq!(texts(newest.data(StatusCode::OK)), ["m5", "m6", "m7"]);

    let before_m5 = app.get_messages(&ada.token, &bob.id, &[("limit", "3"), ("before", ids[4])]).await;
    assert_eq!(texts(before_m5.data(StatusCode::OK)), ["m2", "m3", "m4"]);

    let before_m2 = app.get_messages(&ada.token, &bob.id, &[("limit", "3"), ("before", ids[1])]).await;
    assert_eq!(texts(before_m2.data(StatusCode::OK)), ["m1"]);

    let before_m1 = app.get_messages(&ada.token, &bob.id, &[("before", ids[0])]).await;
    assert_eq!(before_m1.data(StatusCode::OK)["messages"], json!([]));
}

#[tokio::test]
async fn the_history_limit_defaults_to_50_and_is_capped_at_200() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    for i in 0..205 {
        app.send_ok(&ada, &bob, &format!("n{i:03}")).await;
    }

    let default_page = app.get_messages(&ada.token, &bob.id, &[]).await;
    let default_texts = texts(default_page.data(StatusCode::OK));
    assert_eq!(default_texts.len(), 50);
    assert_eq!(default_texts.first().unwrap(), "n155");
    assert_eq!(default_texts.last().unwrap(), "n204");

    let capped = app.get_messages(&ada.token, &bob.id, &[("limit", "5000")]).await;
    let capped_texts = texts(capped.data(StatusCode::OK));
    assert_eq!(capped_texts.len(), 200);
    assert_eq!(capped_texts.first().unwrap(), "n005");
}

#[tokio::test]
async fn the_history_refuses_a_bad_limit_or_before() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    app.send_ok(&ada, &bob, "hi").await;
    for query in [[("limit", "ten")], [("limit", "-3")], [("before", "not-a-message-id")]] {
        let response = app.get_messages(&ada.token, &bob.id, &query).await;
        response.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
}

#[tokio::test]
async fn conversations_are_listed_most_recent_first_with_their_last_message() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let dan = app.create_user("dan").await;

    app.send_ok(&ada, &bob, "to bob 1").await;
    let with_cat = app.send_ok(&cat, &ada, "from cat").await;
    let last_with_bob = app.send_ok(&bob, &ada, "from bob 2").await;

    let response = app.conversations(&ada.token).await;
    let list = response.data(StatusCode::OK).as_array().expect("a list").clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["_id"], last_with_bob["conversationId"]);
    assert_eq!(list[0]["lastMessage"], last_with_bob);
    assert_eq!(list[1]["_id"], with_cat["conversationId"]);
    assert_eq!(list[1]["lastMessage"], with_cat);
    for summary in &list {
        assert_timestamp(&summary["updatedAt"]);
        let participants = summary["participants"].as_array().unwrap();
        assert_eq!(participants.len(), 2);
        assert!(participants.contains(&json!(ada.id)), "{summary}");
    }
    assert!(list[0]["updatedAt"].as_str() >= list[1]["updatedAt"].as_str());

    // A newer message moves its conversation to the top.
    let newest = app.send_ok(&ada, &cat, "back to cat").await;
    let reordered = app.conversations(&ada.token).await;
    let reordered = reordered.data(StatusCode::OK);
    assert_eq!(reordered[0]["_id"], with_cat["conversationId"]);
    assert_eq!(reordered[0]["lastMessage"], newest);
    assert_eq!(reordered[1]["_id"], last_with_bob["conversationId"]);

    // Each user sees only their own conversations.
    let cats = app.conversations(&cat.token).await;
    let cats = cats.data(StatusCode::OK).as_array().unwrap().clone();
    assert_eq!(cats.len(), 1);
    assert_eq!(cats[0]["lastMessage"], newest);
    assert_eq!(app.conversations(&dan.token).await.data(StatusCode::OK), &json!([]));
}

#[tokio::test]
async fn no_response_ever_carries_a_password_or_its_hash() {
    let app = spawn_app().await;
    let password = "unique-Password-7301";
    let registered = app
        .register(&json!({
            "fullName": "Ada",
            "username": "ada",
            "password": password,
            "gender": "female",
        }))
        .await;
    let ada_token = registered.data(StatusCode::CREATED)["token"].as_str().unwrap().to_owned();
    let bob = app.create_user("bob").await;
    let login = app.login("ada", password).await;
    let token = login.data(StatusCode::OK)["token"].as_str().unwrap().to_owned();
    let ada_id = app.profile(&token).await.data(StatusCode::OK)["_id"].as_str().unwrap().to_owned();

    let mut socket = app.connect_ws(&bob.token).await;
    let sent = app.send(&token, &bob.id, "hi bob").await;
    sent.data(StatusCode::CREATED);
    let event = socket.next_event("newMessage", tests::EVENT_TIMEOUT).await;
    app.record(&event.to_string());
    app.send(&bob.token, &ada_id, "hi ada").await.data(StatusCode::CREATED);
    app.other_users(&bob.token, &[]).await.data(StatusCode::OK);
    app.other_users(&bob.token, &[("search", "ada")]).await.data(StatusCode::OK);
    app.get_messages(&token, &bob.id, &[]).await.data(StatusCode::OK);
    app.conversations(&token).await.data(StatusCode::OK);
    app.conversations(&bob.token).await.data(StatusCode::OK);
    app.register(&json!({ "fullName": "Ada", "username": "ADA", "password": password })).await;
    app.login("ada", "wrong-password").await;
    app.login("ada", PASSWORD).await;
    app.logout(&ada_token).await.data(StatusCode::OK);
    for frame in &socket.received {
        app.record(&frame.to_string());
    }

    let transcript = app.transcript();
    assert!(transcript.len() >= 15, "the flows were recorded: {}", transcript.len());
    for body in transcript {
        assert!(!body.contains(password), "a password leaked: {body}");
        assert!(!body.contains(PASSWORD), "a password leaked: {body}");
        for marker in ["$2b$", "$2a$", "$2y$"] {
            assert!(!body.contains(marker), "a bcrypt hash leaked: {body}");
        }
        let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        for key in keys(&value) {
            let key = key.to_ascii_lowercase();
            assert!(!key.contains("password") && !key.contains("hash"), "field {key:?} in {body}");
        }
    }
}

/// Every object key anywhere in `value`.
fn keys(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => {
            map.iter().flat_map(|(k, v)| std::iter::once(k.clone()).chain(keys(v))).collect()
        }
        Value::Array(items) => items.iter().flat_map(keys).collect(),
        _ => Vec::new(),
    }
}
