//! Groups live on `/ws`: a group's entries reach every socket of its members (the sender's
//! other devices too) with each reader's whole cursor, removals and additions take effect
//! from the entry that records them, a resume with the composite cursor replays exactly what
//! was missed, reads are told to one's own devices and receipts to the others, and typing
//! reaches the group.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;
use tests::ws::{EVENT_TIMEOUT, QUIET_PERIOD};
use tests::{TestApp, TestUser, WsClient};

fn id(value: &Value) -> String {
    value["_id"].as_str().unwrap_or_else(|| panic!("no _id: {value}")).to_owned()
}

fn text(value: &Value) -> &str {
    value["message"].as_str().unwrap_or_else(|| panic!("no message: {value}"))
}

/// The next `newMessage` of `conversation`.
async fn next_entry(client: &mut WsClient, conversation: &str) -> Value {
    client.next_event_matching("newMessage", |m| m["conversationId"] == conversation, EVENT_TIMEOUT).await
}

/// A `/ws` connection resuming after `since`.
async fn resume(app: &TestApp, user: &TestUser, since: &str) -> WsClient {
    let url = format!("{}?token={}&since={since}", app.ws_url(), user.token);
    app.try_connect_ws(&url).await.unwrap_or_else(|refused| panic!("the handshake failed: {}", refused.error))
}

/// The cursor a frame carries.
fn cursor(data: &Value) -> String {
    data["cursor"].as_str().unwrap_or_else(|| panic!("no cursor: {data}")).to_owned()
}

#[tokio::test]
async fn a_group_message_reaches_every_members_sockets_with_each_readers_cursor() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let stranger = app.create_user("dan").await;
    let group = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat]).await);
    // Bob also had a direct message first: his stream is one longer than the others'.
    app.send_ok(&cat, &bob, "psst").await;

    let mut ada_phone = app.connect_ws(&ada.token).await;
    let mut ada_laptop = app.connect_ws(&ada.token).await;
    let mut bob_ws = app.connect_ws(&bob.token).await;
    let mut cat_ws = app.connect_ws(&cat.token).await;
    let mut stranger_ws = app.connect_ws(&stranger.token).await;

    let sent = app.post_message_ok(&ada, &group, "hello team").await;
    assert_eq!(sent["seq"], 2, "{sent}");

    for (client, position) in [(&mut ada_phone, 1), (&mut ada_laptop, 1), (&mut bob_ws, 2), (&mut cat_ws, 2)]
    {
        let got = next_entry(client, &group).await;
        assert_eq!(id(&got), id(&sent));
        assert_eq!(text(&got), "hello team");
        assert_eq!(got["receiverId"], Value::Null, "{got}");
        assert_eq!((got["kind"].as_str(), got["seq"].as_u64()), (Some("text"), Some(2)), "{got}");
        assert_eq!(got["senderId"], ada.id.as_str());
        // The reader's stream position (ada and cat: joining; bob and cat: the direct
        // message too), then the group at this entry.
        assert_eq!(cursor(&got), format!("{position}~{group}.2"), "{got}");
        client.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
    stranger_ws.assert_no_event("newMessage", QUIET_PERIOD).await;
}

#[tokio::test]
async fn a_removed_member_gets_the_removal_entry_and_nothing_after_it() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let group = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat]).await);
    let mut bob_ws = app.connect_ws(&bob.token).await;
    let mut cat_ws = app.connect_ws(&cat.token).await;

    app.remove_member(&ada.token, &group, &bob.id).await.data(StatusCode::OK);

    for client in [&mut bob_ws, &mut cat_ws] {
        let updated = client.first_events("conversationUpdated", 1, EVENT_TIMEOUT).await.remove(0);
        assert_eq!(
            updated["conversation"],
            json!({"_id": group, "kind": "group", "name": "Team", "memberCount": 2, "version": 2}),
            "{updated}"
        );
        assert_eq!(
            updated["change"],
            json!({"action": "removed", "actorId": ada.id, "userIds": [bob.id]}),
            "{updated}"
        );
        let removal = client.first_events("newMessage", 1, EVENT_TIMEOUT).await.remove(0);
        assert_eq!(
            (removal["kind"].as_str(), removal["seq"].as_u64()),
            (Some("system"), Some(2)),
            "{removal}"
        );
        assert_eq!(removal["system"]["action"], "removed");
        assert_eq!(removal["system"]["userIds"], json!([bob.id]));
    }
    // From then on, nothing of the group reaches bob, on this socket or a new one.
    app.post_message_ok(&ada, &group, "after bob").await;
    app.rename_group(&ada.token, &group, "Crew").await.data(StatusCode::OK);
    assert_eq!(text(&next_entry(&mut cat_ws, &group).await), "after bob");
    cat_ws
        .next_event_matching("conversationUpdated", |u| u["change"]["action"] == "renamed", EVENT_TIMEOUT)
        .await;
    let mut bob_again = app.connect_ws(&bob.token).await;
    cat_ws.emit("typing", json!({"conversationId": group, "isTyping": true})).await;
    for client in [&mut bob_ws, &mut bob_again] {
        client.assert_no_event("newMessage", QUIET_PERIOD).await;
    }
    assert_eq!(bob_ws.events("newMessage").count(), 1, "the removal alone");
    assert_eq!(bob_ws.events("conversationUpdated").count(), 1, "the removal alone");
    assert_eq!(bob_again.events("conversationUpdated").count() + bob_again.events("typing").count(), 0);
    assert_eq!(bob_ws.events("typing").count(), 0);
}

#[tokio::test]
async fn an_added_member_gets_the_group_from_the_entry_that_added_them() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let dan = app.create_user("dan").await;
    let group = id(&app.create_group_ok(&ada, "Team", &[&bob]).await);
    app.post_message_ok(&ada, &group, "before dan").await;
    let mut dan_ws = app.connect_ws(&dan.token).await;

    app.add_members(&ada.token, &group, &[&dan.id]).await.data(StatusCode::OK);

    let updated = dan_ws.next_event("conversationUpdated", EVENT_TIMEOUT).await;
    assert_eq!(updated["change"]["action"], "added", "{updated}");
    assert_eq!(updated["conversation"]["memberCount"], 3, "{updated}");
    let added = next_entry(&mut dan_ws, &group).await;
    assert_eq!(
        (added["seq"].as_u64(), added["system"]["action"].as_str()),
        (Some(3), Some("added")),
        "{added}"
    );
    // Dan's stream holds the notice of joining at 1; the group starts at the entry.
    assert_eq!(cursor(&added), format!("1~{group}.3"));

    app.post_message_ok(&bob, &group, "welcome").await;
    let welcome = next_entry(&mut dan_ws, &group).await;
    assert_eq!((text(&welcome), cursor(&welcome)), ("welcome", format!("1~{group}.4")));
    assert!(dan_ws.events("newMessage").all(|m| text(m) != "before dan"), "nothing from before joining");
}

/// Everything after `since` as HTTP sync lists it: (kind of item, its message id or read
/// target) in order, and the final cursor.
async fn sync_after(app: &TestApp, user: &TestUser, since: &str) -> (Vec<String>, String) {
    let page = app.sync(&user.token, &[("since", since), ("limit", "100")]).await;
    let page = page.data(StatusCode::OK);
    assert_eq!(page["hasMore"], false, "{page}");
    let ids = page["messages"].as_array().unwrap().iter().map(id).collect();
    (ids, page["nextCursor"].as_str().expect("nextCursor").to_owned())
}

#[tokio::test]
async fn a_resume_with_the_composite_cursor_replays_exactly_what_was_missed_across_joins_and_removals() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let first = id(&app.create_group_ok(&ada, "First", &[&bob, &cat]).await);
    let mut bob_ws = app.connect_ws(&bob.token).await;
    app.post_message_ok(&ada, &first, "seen live").await;
    let last_seen = cursor(&next_entry(&mut bob_ws, &first).await);
    bob_ws.close().await;

    // While bob is away: a message in the first group, a second group with him, his removal
    // from the first, and what follows it there (which he must not get).
    app.post_message_ok(&cat, &first, "missed 1").await;
    let second = id(&app.create_group_ok(&cat, "Second", &[&bob]).await);
    app.post_message_ok(&cat, &second, "missed 2").await;
    app.remove_member(&ada.token, &first, &bob.id).await.data(StatusCode::OK);
    app.post_message_ok(&ada, &first, "not for bob").await;
    app.send_ok(&ada, &bob, "direct").await;

    let (expected, next_cursor) = sync_after(&app, &bob, &last_seen).await;
    assert_eq!(expected.len(), 5, "missed 1, the removal, the second's creation, missed 2, direct");

    let mut resumed = resume(&app, &bob, &last_seen).await;
    let replayed = resumed.first_events("newMessage", expected.len(), EVENT_TIMEOUT).await;
    let replayed_ids: Vec<String> = replayed.iter().map(id).collect();
    assert_eq!(replayed_ids, expected, "the socket replays what sync lists, in the same order");
    let texts: Vec<&str> = replayed.iter().map(text).collect();
    assert!(
        texts.contains(&"missed 1") && texts.contains(&"missed 2") && texts.contains(&"direct"),
        "{texts:?}"
    );
    assert!(!texts.contains(&"not for bob"), "{texts:?}");
    assert_eq!(cursor(replayed.last().unwrap()), next_cursor);
    resumed.assert_no_event("newMessage", QUIET_PERIOD).await;

    // Live from there: the second group, not the first.
    app.post_message_ok(&ada, &first, "still not for bob").await;
    app.post_message_ok(&cat, &second, "live").await;
    let live = next_entry(&mut resumed, &second).await;
    assert_eq!(text(&live), "live");
    assert!(cursor(&live).contains(&format!("~{second}.")) && !cursor(&live).contains(&first), "{live}");
    resumed.assert_no_event("newMessage", QUIET_PERIOD).await;

    // A cursor that names a group bob was not in at its position is refused: start over.
    let wrong = format!("0~{first}.1");
    let mut refused = resume(&app, &bob, &wrong).await;
    let (code, reason) = refused.close_frame(EVENT_TIMEOUT).await;
    assert_eq!((u16::from(code), reason.as_str()), (4001, "since is not a valid cursor: start over from 0"));
    // One that is not a cursor at all is refused before the upgrade.
    let url = format!("{}?token={}&since=1~nope", app.ws_url(), bob.token);
    let refused = app.try_connect_ws(&url).await.err().expect("refused");
    assert_eq!(refused.status, Some(StatusCode::BAD_REQUEST), "{refused:?}");
}

#[tokio::test]
async fn a_read_is_told_to_the_readers_devices_and_a_receipt_to_the_others() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let group = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat]).await);
    let mut ada_phone = app.connect_ws(&ada.token).await;
    let mut ada_laptop = app.connect_ws(&ada.token).await;
    let mut bob_ws = app.connect_ws(&bob.token).await;
    let mut cat_ws = app.connect_ws(&cat.token).await;
    let sent = app.post_message_ok(&bob, &group, "read me").await;
    for client in [&mut ada_phone, &mut ada_laptop] {
        next_entry(client, &group).await;
    }

    app.mark_read(&ada.token, &group, &id(&sent)).await.data(StatusCode::OK);

    for client in [&mut ada_phone, &mut ada_laptop] {
        let read = client.next_event("conversationRead", EVENT_TIMEOUT).await;
        assert_eq!(read["conversationId"], group.as_str());
        assert_eq!(
            (read["upTo"].as_str(), read["seq"].as_u64()),
            (Some(id(&sent).as_str()), Some(2)),
            "{read}"
        );
        // The read took the next position of ada's stream: her cursor moves past it.
        assert_eq!(cursor(&read), format!("2~{group}.2"), "{read}");
        client.assert_no_event("messagesRead", QUIET_PERIOD).await;
    }
    for client in [&mut bob_ws, &mut cat_ws] {
        let receipt = client.next_event("messagesRead", EVENT_TIMEOUT).await;
        assert_eq!(
            receipt,
            json!({"conversationId": group, "userId": ada.id, "upTo": id(&sent), "seq": 2}),
            "{receipt}"
        );
        client.assert_no_event("conversationRead", QUIET_PERIOD).await;
    }

    // A direct conversation: the receipt goes to the other user.
    let direct = app.send_ok(&bob, &ada, "direct").await;
    let conversation = direct["conversationId"].as_str().unwrap().to_owned();
    app.mark_read(&ada.token, &conversation, &id(&direct)).await.data(StatusCode::OK);
    let receipt = bob_ws.next_event("messagesRead", EVENT_TIMEOUT).await;
    assert_eq!(
        (receipt["userId"].as_str(), receipt["upTo"].as_str()),
        (Some(ada.id.as_str()), Some(id(&direct).as_str()))
    );
    let read = ada_laptop.next_event("conversationRead", EVENT_TIMEOUT).await;
    assert_eq!(read["conversationId"], conversation.as_str());
    cat_ws.assert_no_event("messagesRead", QUIET_PERIOD).await;

    // Resuming from before the reads replays them on a device that was away.
    let mut away = resume(&app, &ada, &format!("1~{group}.2")).await;
    let replayed = away.first_events("conversationRead", 2, EVENT_TIMEOUT).await;
    assert_eq!(replayed[0]["upTo"], id(&sent).as_str());
    assert_eq!(replayed[1]["upTo"], id(&direct).as_str());
}

#[tokio::test]
async fn typing_in_a_group_reaches_its_other_members_only() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let stranger = app.create_user("dan").await;
    let group = id(&app.create_group_ok(&ada, "Team", &[&bob]).await);
    let mut ada_phone = app.connect_ws(&ada.token).await;
    let mut ada_laptop = app.connect_ws(&ada.token).await;
    let mut bob_ws = app.connect_ws(&bob.token).await;
    let mut stranger_ws = app.connect_ws(&stranger.token).await;

    ada_phone.emit("typing", json!({"conversationId": group, "isTyping": true})).await;
    let typing = bob_ws.next_event("typing", EVENT_TIMEOUT).await;
    assert_eq!(typing, json!({"from": ada.id, "conversationId": group, "isTyping": true}));
    ada_laptop.assert_no_event("typing", QUIET_PERIOD).await;

    // A stranger's typing in the group goes nowhere, and so does one at an unknown group.
    stranger_ws.emit("typing", json!({"conversationId": group, "isTyping": true})).await;
    stranger_ws.emit("typing", json!({"conversationId": "0190b8a4-5c3e-7a00-8000-000000000000"})).await;
    for client in [&mut ada_phone, &mut bob_ws] {
        client.assert_no_event("typing", QUIET_PERIOD).await;
    }
    // One target, exactly.
    bob_ws.emit("typing", json!({"conversationId": group, "to": ada.id, "isTyping": true})).await;
    let error = bob_ws.next_event("error", EVENT_TIMEOUT).await;
    assert_eq!(error["code"], "VALIDATION", "{error}");
    ada_phone.assert_no_event("typing", QUIET_PERIOD).await;
}
