//! Changes to sent messages from the outside: `PATCH` / `DELETE
//! /api/v1/conversations/:id/messages/:messageId`, `PUT` / `DELETE …/reactions/:emoji`, and
//! `replyTo` on both send routes — their answers, refusals and idempotency, what history, the
//! conversation list and sync show afterwards, and the `messageUpdated` events on `/ws`
//! (live, per device, and replayed to a connection resuming with `?since=`).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_timestamp, spawn_app, spawn_app_with};
use tests::{Api, Reply, ServerProcess, TempDir, TestApp, TestUser, WsClient, EVENT_TIMEOUT, QUIET_PERIOD};

/// Twenty-one different emoji of one code point each, all fully qualified.
const EMOJI: [&str; 21] = [
    "😀", "😃", "😄", "😁", "😆", "😅", "😂", "🤣", "😊", "😇", "🙂", "🙃", "😉", "😌", "😍", "🥰", "😘",
    "😗", "😙", "😚", "😋",
];
const THUMBS_UP: &str = "👍";
/// The fully-qualified heart: U+2764 and the emoji variation selector.
const HEART: &str = "\u{2764}\u{fe0f}";
/// The same heart unqualified, without the variation selector.
const BARE_HEART: &str = "\u{2764}";

/// A path segment with every byte outside the unreserved set (and `:`) percent-encoded.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn message_path(conversation: &str, message: &str) -> String {
    format!("/api/v1/conversations/{conversation}/messages/{message}")
}

fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("{field} must be a string: {value}"))
}

fn id(message: &Value) -> &str {
    str_of(message, "_id")
}

fn conversation(message: &Value) -> &str {
    str_of(message, "conversationId")
}

async fn edit(api: &Api, user: &TestUser, message: &Value, text: &str) -> Reply {
    edit_in(api, user, conversation(message), id(message), text).await
}

async fn edit_in(api: &Api, user: &TestUser, conversation: &str, message: &str, text: &str) -> Reply {
    let path = message_path(conversation, message);
    api.send_json(Method::PATCH, &path, &json!({ "message": text }), Some(&user.token)).await
}

async fn delete(api: &Api, user: &TestUser, message: &Value) -> Reply {
    delete_in(api, user, conversation(message), id(message)).await
}

async fn delete_in(api: &Api, user: &TestUser, conversation: &str, message: &str) -> Reply {
    api.execute(api.request(Method::DELETE, &message_path(conversation, message), Some(&user.token))).await
}

/// `PUT` (`add`) or `DELETE` a reaction, the emoji percent-encoded into the path.
async fn reaction(api: &Api, user: &TestUser, message: &Value, emoji: &str, add: bool) -> Reply {
    let path = format!("{}/reactions/{}", message_path(conversation(message), id(message)), encode(emoji));
    let method = if add { Method::PUT } else { Method::DELETE };
    api.execute(api.request(method, &path, Some(&user.token))).await
}

async fn react(api: &Api, user: &TestUser, message: &Value, emoji: &str) -> Reply {
    reaction(api, user, message, emoji, true).await
}

async fn unreact(api: &Api, user: &TestUser, message: &Value, emoji: &str) -> Reply {
    reaction(api, user, message, emoji, false).await
}

/// A reply through `POST /api/v1/message/send/:userId`.
async fn send_reply(api: &Api, from: &TestUser, to: &TestUser, text: &str, reply_to: &str) -> Reply {
    let body = json!({ "message": text, "replyTo": reply_to });
    api.post_json(&format!("/api/v1/message/send/{}", to.id), &body, Some(&from.token)).await
}

/// A reply through `POST /api/v1/conversations/:id/messages`.
async fn post_reply(api: &Api, from: &TestUser, conversation: &str, text: &str, reply_to: &str) -> Reply {
    let body = json!({ "message": text, "replyTo": reply_to });
    api.post_json(&format!("/api/v1/conversations/{conversation}/messages"), &body, Some(&from.token)).await
}

/// `message` edited to `text`, as an answer carries it (`editedAt` taken from `answer`).
#[track_caller]
fn edited(message: &Value, text: &str, version: u64, answer: &Value) -> Value {
    assert_timestamp(&answer["editedAt"]);
    let mut expected = message.clone();
    expected["message"] = json!(text);
    expected["editedAt"] = answer["editedAt"].clone();
    expected["version"] = json!(version);
    expected
}

/// `message` deleted by `by`: no text, no reactions (`deletedAt` taken from `answer`).
#[track_caller]
fn tombstone(message: &Value, by: &TestUser, version: u64, answer: &Value) -> Value {
    assert_timestamp(&answer["deletedAt"]);
    let mut expected = message.clone();
    let object = expected.as_object_mut().expect("a message is an object");
    object.remove("editedAt");
    expected["message"] = json!("");
    expected["deletedAt"] = answer["deletedAt"].clone();
    expected["deletedBy"] = json!(by.id);
    expected["reactions"] = json!([]);
    expected["version"] = json!(version);
    expected
}

/// `message` with `reactions` and `version`.
fn with_reactions(message: &Value, reactions: Value, version: u64) -> Value {
    let mut expected = message.clone();
    expected["reactions"] = reactions;
    expected["version"] = json!(version);
    expected
}

/// The message with `id` among `messages`.
#[track_caller]
fn find<'a>(messages: &'a Value, id: &str) -> &'a Value {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("an array of messages: {messages}"))
        .iter()
        .find(|m| m["_id"] == id)
        .unwrap_or_else(|| panic!("no message {id} in {messages}"))
}

/// The message with `id` as both history routes show it to `reader` (they must agree).
async fn in_history(api: &Api, reader: &TestUser, other: Option<&TestUser>, message: &Value) -> Value {
    let by_id = api.conversation_messages(&reader.token, conversation(message), &[]).await;
    let by_id = find(by_id.data(StatusCode::OK), id(message)).clone();
    if let Some(other) = other {
        let by_user = api.get_messages(&reader.token, &other.id, &[]).await;
        let by_user = find(&by_user.data(StatusCode::OK)["messages"], id(message)).clone();
        assert_eq!(by_user, by_id, "the two history routes disagree");
    }
    by_id
}

/// `reader`'s entry of the conversation list for `conversation`.
async fn listed(api: &Api, reader: &TestUser, conversation: &str) -> Value {
    let list = api.conversations(&reader.token).await;
    list.data(StatusCode::OK)
        .as_array()
        .expect("the conversation list is an array")
        .iter()
        .find(|c| c["_id"] == conversation)
        .unwrap_or_else(|| panic!("{conversation} is not in the list: {}", list.text))
        .clone()
}

async fn unread(api: &Api, reader: &TestUser, conversation: &str) -> u64 {
    let entry = listed(api, reader, conversation).await;
    entry["unreadCount"].as_u64().unwrap_or_else(|| panic!("unreadCount: {entry}"))
}

/// The next `messageUpdated` of a connection.
async fn updated(socket: &mut WsClient) -> Value {
    socket.next_event("messageUpdated", EVENT_TIMEOUT).await
}

/// What a change was: its kind, who made it, its emoji (reactions) and its seq.
struct Change<'a> {
    kind: &'a str,
    by: &'a TestUser,
    emoji: Option<&'a str>,
    seq: u64,
}

/// The `messageUpdated` payload a reader gets at `cursor` for `change`, with the message as it
/// stands for that reader (`at` is taken from the event, checked to be a timestamp).
#[track_caller]
fn update_event(message: &Value, change: Change<'_>, cursor: &str, at: &Value) -> Value {
    assert_timestamp(at);
    let Change { kind, by, emoji, seq } = change;
    let mut change = json!({ "kind": kind, "userId": by.id, "seq": seq, "at": at });
    if let Some(emoji) = emoji {
        change["emoji"] = json!(emoji);
    }
    json!({ "message": message, "change": change, "cursor": cursor })
}

/// Every stream cursor a connection received, in order (`newMessage`, `messageUpdated`,
/// `conversationRead`).
fn stream_cursors(socket: &WsClient) -> Vec<String> {
    socket
        .received
        .iter()
        .filter(|f| {
            ["newMessage", "messageUpdated", "conversationRead"].contains(&f["event"].as_str().unwrap_or(""))
        })
        .map(|f| f["data"]["cursor"].as_str().unwrap_or_else(|| panic!("a cursor in {f}")).to_owned())
        .collect()
}

/// The group's part of a cursor (`…~<group>.<seq>`).
#[track_caller]
fn group_seq(cursor: &str, group: &str) -> u64 {
    let prefix = format!("{group}.");
    cursor
        .split('~')
        .find_map(|part| part.strip_prefix(&prefix))
        .and_then(|seq| seq.parse().ok())
        .unwrap_or_else(|| panic!("no {group} in cursor {cursor}"))
}

/// A cursor's parts: the stream position, and each group's seq.
#[track_caller]
fn cursor_parts(cursor: &str) -> (u64, Vec<(String, u64)>) {
    let mut parts = cursor.split('~');
    let position = parts.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("cursor {cursor}"));
    let groups = parts
        .map(|part| {
            let (group, seq) = part.rsplit_once('.').unwrap_or_else(|| panic!("cursor {cursor}"));
            (group.to_owned(), seq.parse().unwrap_or_else(|_| panic!("cursor {cursor}")))
        })
        .collect();
    (position, groups)
}

/// The position plus every group's seq: one more with each delivery.
fn cursor_total(cursor: &str) -> u64 {
    let (position, groups) = cursor_parts(cursor);
    position + groups.iter().map(|(_, seq)| seq).sum::<u64>()
}

/// Each cursor moves one part of the one before it (the first, of `since`) on by exactly one.
#[track_caller]
fn assert_consecutive(since: &str, cursors: &[&str]) {
    let mut previous = cursor_parts(since);
    for cursor in cursors {
        let next = cursor_parts(cursor);
        let same_groups = next.1.iter().map(|(g, _)| g).eq(previous.1.iter().map(|(g, _)| g));
        assert!(same_groups, "the groups changed: {since} then {cursors:?}");
        let mut steps: Vec<u64> = std::iter::once(next.0.wrapping_sub(previous.0))
            .chain(next.1.iter().zip(&previous.1).map(|((_, n), (_, p))| n.wrapping_sub(*p)))
            .collect();
        steps.sort_unstable();
        let one_step = steps.last() == Some(&1) && steps[..steps.len() - 1].iter().all(|s| *s == 0);
        assert!(one_step, "{cursor} is not one step on: {since} then {cursors:?}");
        previous = next;
    }
}

/// A `/ws` connection resuming at `since`.
async fn connect_since(api: &Api, user: &TestUser, since: &str) -> WsClient {
    let url = format!("{}?token={}&since={since}", api.ws_url(), user.token);
    api.try_connect_ws(&url).await.unwrap_or_else(|refused| panic!("since={since} refused: {refused:?}"))
}

/// A group of `owner` with `members`; returns its id.
async fn group_of(app: &TestApp, owner: &TestUser, members: &[&TestUser]) -> String {
    let group = app.create_group_ok(owner, "Crew", members).await;
    str_of(&group, "_id").to_owned()
}

// ---------------------------------------------------------------------------------------
// Editing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_sender_edits_a_direct_message_and_both_histories_and_the_list_show_the_new_text() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let sent = app.send_ok(&ada, &bob, "helo").await;
    assert_eq!(
        (&sent["reactions"], &sent["version"], &sent["seq"]),
        (&json!([]), &json!(1), &json!(1)),
        "{sent}"
    );
    for absent in ["editedAt", "deletedAt", "deletedBy", "replyTo"] {
        assert!(sent.get(absent).is_none(), "{absent} on a new message: {sent}");
    }

    let answer = edit(&app, &ada, &sent, "hello").await;
    let answer = answer.data(StatusCode::OK).clone();
    let expected = edited(&sent, "hello", 2, &answer);
    assert_eq!(answer, expected);

    // The same edit again: nothing changes, the same version.
    let again = edit(&app, &ada, &sent, "hello").await;
    assert_eq!(again.data(StatusCode::OK), &expected, "the same edit twice is one change");

    assert_eq!(in_history(&app, &ada, Some(&bob), &sent).await, expected);
    assert_eq!(in_history(&app, &bob, Some(&ada), &sent).await, expected);
    for (reader, other) in [(&ada, &bob), (&bob, &ada)] {
        let entry = listed(&app, reader, conversation(&sent)).await;
        assert_eq!(entry["lastMessage"], expected, "{}'s list, with {}", reader.username, other.username);
    }

    // Another edit moves the version on.
    let second = edit(&app, &ada, &sent, "hello, bob").await;
    let second = second.data(StatusCode::OK).clone();
    assert_eq!(second, edited(&sent, "hello, bob", 3, &second));
}

#[tokio::test]
async fn an_edit_is_refused_to_the_other_user_a_stranger_and_for_an_empty_text() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let sent = app.send_ok(&ada, &bob, "mine").await;
    let elsewhere = app.send_ok(&ada, &cat, "to cat").await;

    let refused = edit(&app, &bob, &sent, "bob's words").await;
    refused.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // A conversation the caller is not in: 404, as for one that does not exist.
    edit(&app, &cat, &sent, "cat's words").await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    // A message of another conversation of the caller's, named under this one: 404.
    edit_in(&app, &ada, conversation(&sent), id(&elsewhere), "crossed")
        .await
        .error(StatusCode::NOT_FOUND, "NOT_FOUND");
    edit_in(&app, &ada, conversation(&elsewhere), id(&sent), "crossed")
        .await
        .error(StatusCode::NOT_FOUND, "NOT_FOUND");
    // Ids that name nothing.
    let unknown_message = "000000000000000000000000";
    for (conversation_id, message_id) in [
        (conversation(&sent), unknown_message),
        (conversation(&sent), "not-an-id"),
        (unknown_message, id(&sent)),
        ("not-an-id", id(&sent)),
    ] {
        let reply = edit_in(&app, &ada, conversation_id, message_id, "x").await;
        reply.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    for text in ["", "   ", "\n\t"] {
        let reply = edit(&app, &ada, &sent, text).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], "message", "{text:?}: {}", reply.text);
    }
    let missing = app
        .send_json(Method::PATCH, &message_path(conversation(&sent), id(&sent)), &json!({}), Some(&ada.token))
        .await;
    missing.error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert_eq!(missing.body["field"], "message", "{}", missing.text);
    let too_long = edit(&app, &ada, &sent, &"x".repeat(5001)).await;
    too_long.error(StatusCode::BAD_REQUEST, "VALIDATION");
    // Without a token.
    let anonymous = app
        .send_json(
            Method::PATCH,
            &message_path(conversation(&sent), id(&sent)),
            &json!({ "message": "x" }),
            None,
        )
        .await;
    anonymous.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    // Nothing of that changed the message.
    assert_eq!(in_history(&app, &bob, Some(&ada), &sent).await, sent);
}

#[tokio::test]
async fn an_edit_after_the_window_is_refused_and_a_zero_window_never_closes() {
    let (short, forever) = tokio::join!(
        spawn_app_with(|settings| settings.messages.edit_window = 1),
        spawn_app_with(|settings| settings.messages.edit_window = 0),
    );
    let mut sent = Vec::new();
    for app in [&short, &forever] {
        let ada = app.create_user("ada").await;
        let bob = app.create_user("bob").await;
        let message = app.send_ok(&ada, &bob, "typo").await;
        // Within the window: accepted.
        let fixed = edit(app, &ada, &message, "fixed").await;
        let fixed = fixed.data(StatusCode::OK).clone();
        sent.push((ada, bob, message, fixed));
    }
    // The window is about time passing: nothing to wait for but the clock.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (ada, bob, message, fixed) = &sent[0];
    let late = edit(&short, ada, message, "too late").await;
    let why = late.error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(why.contains("edit"), "{why}");
    // The same text as now is no change, in the window or not; deleting and reacting have no window.
    assert_eq!(edit(&short, ada, message, "fixed").await.data(StatusCode::OK), fixed);
    let reacted = react(&short, bob, message, THUMBS_UP).await;
    assert_eq!(
        reacted.data(StatusCode::OK)["reactions"],
        json!([{ "emoji": THUMBS_UP, "count": 1, "me": true }])
    );
    let gone = delete(&short, ada, message).await;
    assert_eq!(gone.data(StatusCode::OK)["deletedBy"], ada.id.as_str());

    let (ada, _, message, _) = &sent[1];
    let later = edit(&forever, ada, message, "still mine to fix").await;
    let later = later.data(StatusCode::OK).clone();
    assert_eq!(later, edited(message, "still mine to fix", 3, &later));
}

#[tokio::test]
async fn the_edit_window_is_read_from_chat_messages_edit_window() {
    let dir = TempDir::new("changes");
    let storage = format!("sqlite://{}", dir.path().join("chat.db").display());
    let process =
        ServerProcess::start(&[("CHAT__STORAGE__URL", &storage), ("CHAT__MESSAGES__EDIT_WINDOW", "1")]).await;
    let api = process.api();
    let ada = api.create_user("ada").await;
    let bob = api.create_user("bob").await;
    let message = api.send_ok(&ada, &bob, "typo").await;
    edit(&api, &ada, &message, "fixed").await.data(StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    edit(&api, &ada, &message, "too late").await.error(StatusCode::BAD_REQUEST, "VALIDATION");
}

// ---------------------------------------------------------------------------------------
// Deleting
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_deleted_direct_message_is_a_tombstone_everywhere_and_cannot_be_edited_or_reacted_to() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let first = app.send_ok(&ada, &bob, "keep").await;
    let sent = app.send_ok(&ada, &bob, "regret").await;
    react(&app, &bob, &sent, THUMBS_UP).await.data(StatusCode::OK);

    // Not bob's to delete.
    delete(&app, &bob, &sent).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");

    let answer = delete(&app, &ada, &sent).await;
    let answer = answer.data(StatusCode::OK).clone();
    let expected = tombstone(&sent, &ada, 4, &answer);
    assert_eq!(answer, expected, "no text, no reactions");
    assert_eq!(
        delete(&app, &ada, &sent).await.data(StatusCode::OK),
        &expected,
        "deleting twice is one change"
    );

    for reader in [&ada, &bob] {
        let other = if reader.id == ada.id { &bob } else { &ada };
        assert_eq!(in_history(&app, reader, Some(other), &sent).await, expected);
        assert_eq!(in_history(&app, reader, Some(other), &first).await, first);
        assert_eq!(
            listed(&app, reader, conversation(&sent)).await["lastMessage"],
            expected,
            "the tombstone is last"
        );
    }

    let conflict = edit(&app, &ada, &sent, "changed my mind").await;
    conflict.error(StatusCode::CONFLICT, "CONFLICT");
    react(&app, &bob, &sent, HEART).await.error(StatusCode::CONFLICT, "CONFLICT");
    // Taking a reaction back from a tombstone changes nothing.
    assert_eq!(unreact(&app, &bob, &sent, THUMBS_UP).await.data(StatusCode::OK), &expected);
    // Its sender may not delete it for bob either way, and a stranger learns nothing.
    delete(&app, &bob, &sent).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let cat = app.create_user("cat").await;
    delete(&app, &cat, &sent).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    edit(&app, &cat, &sent, "x").await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    react(&app, &cat, &first, THUMBS_UP).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    assert!(
        !app.transcript().iter().any(|text| text.contains("regret") && text.contains("deletedAt")),
        "a tombstone carried its text"
    );
}

#[tokio::test]
async fn in_a_group_admins_and_the_owner_delete_anyones_message_and_members_only_their_own() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await; // owner
    let bob = app.create_user("bob").await; // admin, demoted later
    let cat = app.create_user("cat").await; // member
    let dan = app.create_user("dan").await; // member, removed later
    let eve = app.create_user("eve").await; // never a member
    let group = group_of(&app, &ada, &[&bob, &cat, &dan]).await;
    app.set_role(&ada.token, &group, &bob.id, "admin").await.data(StatusCode::OK);

    let by_cat = app.post_message_ok(&cat, &group, "cat 1").await;
    let by_dan = app.post_message_ok(&dan, &group, "dan 1").await;
    let by_ada = app.post_message_ok(&ada, &group, "ada 1").await;

    // A member may not delete or edit another member's message; an admin may not edit it.
    delete(&app, &cat, &by_dan).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    edit(&app, &cat, &by_dan, "cat was here").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    edit(&app, &bob, &by_dan, "bob was here").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    edit(&app, &ada, &by_dan, "ada was here").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // An admin deletes a member's message, the owner's too.
    let answer = delete(&app, &bob, &by_dan).await;
    let answer = answer.data(StatusCode::OK).clone();
    let dan_gone = tombstone(&by_dan, &bob, answer["version"].as_u64().unwrap(), &answer);
    assert_eq!(answer, dan_gone);
    assert_eq!(answer["deletedBy"], bob.id.as_str());
    assert_eq!(in_history(&app, &cat, None, &by_dan).await, dan_gone);

    // A member deletes their own.
    let own = delete(&app, &cat, &by_cat).await;
    assert_eq!(own.data(StatusCode::OK)["deletedBy"], cat.id.as_str());

    // Demoted, bob deletes nothing but his own.
    let by_cat_2 = app.post_message_ok(&cat, &group, "cat 2").await;
    app.set_role(&ada.token, &group, &bob.id, "member").await.data(StatusCode::OK);
    delete(&app, &bob, &by_cat_2).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    delete(&app, &bob, &by_ada).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // The owner deletes anyone's.
    let answer = delete(&app, &ada, &by_cat_2).await;
    assert_eq!(answer.data(StatusCode::OK)["deletedBy"], ada.id.as_str());

    // System entries are nobody's to change.
    let history = app.conversation_messages(&ada.token, &group, &[]).await;
    let created = history.data(StatusCode::OK)[0].clone();
    assert_eq!(created["kind"], "system", "{created}");
    edit(&app, &ada, &created, "x").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    delete(&app, &ada, &created).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    react(&app, &cat, &created, THUMBS_UP).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");

    // A stranger: 404 for everything.
    delete(&app, &eve, &by_ada).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    edit(&app, &eve, &by_ada, "x").await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    react(&app, &eve, &by_ada, THUMBS_UP).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    unreact(&app, &eve, &by_ada, THUMBS_UP).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");

    // A removed member: 403 for everything, their own message included.
    let dan_2 = app.post_message_ok(&dan, &group, "dan 2").await;
    app.remove_member(&ada.token, &group, &dan.id).await.data(StatusCode::OK);
    edit(&app, &dan, &dan_2, "x").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    delete(&app, &dan, &dan_2).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    react(&app, &dan, &by_ada, THUMBS_UP).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    unreact(&app, &dan, &by_ada, THUMBS_UP).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(in_history(&app, &ada, None, &dan_2).await, dan_2, "dan changed nothing");
    assert_eq!(in_history(&app, &ada, None, &by_ada).await, by_ada);

    // A message of the group named under another conversation of the caller's: 404.
    let direct = app.send_ok(&ada, &cat, "direct").await;
    edit_in(&app, &ada, conversation(&direct), id(&by_ada), "x")
        .await
        .error(StatusCode::NOT_FOUND, "NOT_FOUND");
    delete_in(&app, &ada, &group, id(&direct)).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn a_group_member_sees_no_change_to_a_message_from_before_they_joined() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let group = group_of(&app, &ada, &[&bob]).await;
    let early = app.post_message_ok(&ada, &group, "before cat").await;
    app.add_members(&ada.token, &group, &[&cat.id]).await.data(StatusCode::OK);

    // To cat the early message does not exist.
    react(&app, &cat, &early, THUMBS_UP).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let reply = post_reply(&app, &cat, &group, "re", id(&early)).await;
    reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert_eq!(reply.body["field"], "replyTo", "{}", reply.text);

    // A change to it reaches neither cat's devices nor cat's sync.
    let mut cat_ws = app.connect_ws(&cat.token).await;
    edit(&app, &ada, &early, "before cat, edited").await.data(StatusCode::OK);
    let later = app.post_message_ok(&ada, &group, "after cat").await;
    let event = cat_ws.next_event("newMessage", EVENT_TIMEOUT).await;
    assert_eq!(event["_id"], id(&later));
    cat_ws.assert_no_event("messageUpdated", QUIET_PERIOD).await;
    let sync = app.sync(&cat.token, &[]).await;
    let page = sync.data(StatusCode::OK);
    assert!(!page.to_string().contains("before cat"), "cat's sync shows the early message: {page}");
}

// ---------------------------------------------------------------------------------------
// Reactions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn reactions_count_each_user_once_per_emoji_and_me_is_per_reader() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let group = group_of(&app, &ada, &[&bob, &cat]).await;
    let sent = app.post_message_ok(&ada, &group, "react to me").await;
    let seq = sent["seq"].as_u64().unwrap();

    // Bob by shortcode, ada by the emoji itself: one reaction, two users.
    let first = react(&app, &bob, &sent, ":thumbsup:").await;
    let expected_bob =
        with_reactions(&sent, json!([{ "emoji": THUMBS_UP, "count": 1, "me": true }]), seq + 1);
    assert_eq!(first.data(StatusCode::OK), &expected_bob);
    let again = react(&app, &bob, &sent, THUMBS_UP).await;
    assert_eq!(
        again.data(StatusCode::OK),
        &expected_bob,
        "the same reaction by another spelling is no change"
    );
    let second = react(&app, &ada, &sent, THUMBS_UP).await;
    let view = |thumbs_me: bool, heart: Option<(u64, bool)>| {
        let mut list = vec![json!({ "emoji": THUMBS_UP, "count": 2, "me": thumbs_me })];
        if let Some((count, me)) = heart {
            list.push(json!({ "emoji": HEART, "count": count, "me": me }));
        }
        Value::Array(list)
    };
    assert_eq!(second.data(StatusCode::OK), &with_reactions(&sent, view(true, None), seq + 2));

    // ❤ unqualified, ❤️ and :heart: are one reaction, stored fully qualified.
    react(&app, &cat, &sent, BARE_HEART).await.data(StatusCode::OK);
    react(&app, &cat, &sent, HEART).await.data(StatusCode::OK);
    let hearts = react(&app, &cat, &sent, ":heart:").await;
    let expected_cat = with_reactions(&sent, view(false, Some((1, true))), seq + 3);
    assert_eq!(hearts.data(StatusCode::OK), &expected_cat);

    // Each reader sees whether they reacted.
    for (reader, thumbs_me, heart_me) in [(&ada, true, false), (&bob, true, false), (&cat, false, true)] {
        let seen = in_history(&app, reader, None, &sent).await;
        assert_eq!(
            seen,
            with_reactions(&sent, view(thumbs_me, Some((1, heart_me))), seq + 3),
            "{}",
            reader.username
        );
        let entry = listed(&app, reader, &group).await;
        assert_eq!(entry["lastMessage"], seen, "{}'s list", reader.username);
    }

    // Taking back: by any spelling; taking back what one never gave changes nothing.
    let back = unreact(&app, &cat, &sent, BARE_HEART).await;
    let without_heart = with_reactions(&sent, view(false, None), seq + 4);
    assert_eq!(back.data(StatusCode::OK), &without_heart);
    assert_eq!(unreact(&app, &cat, &sent, ":heart:").await.data(StatusCode::OK), &without_heart);
    assert_eq!(unreact(&app, &cat, &sent, THUMBS_UP).await.data(StatusCode::OK), &without_heart);
    let bob_back = unreact(&app, &bob, &sent, ":+1:").await;
    let one_thumb = with_reactions(&sent, json!([{ "emoji": THUMBS_UP, "count": 1, "me": false }]), seq + 5);
    assert_eq!(bob_back.data(StatusCode::OK), &one_thumb);
    let ada_back = unreact(&app, &ada, &sent, THUMBS_UP).await;
    assert_eq!(ada_back.data(StatusCode::OK), &with_reactions(&sent, json!([]), seq + 6));
}

#[tokio::test]
async fn what_is_not_one_emoji_and_a_21st_emoji_are_refused() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let sent = app.send_ok(&ada, &bob, "so many feelings").await;

    for bad in ["a", "ab", "👍👍", ":nope-not-a-code:", "::", "😀 ", "%", "\u{fe0f}", "🏻"] {
        for add in [true, false] {
            let reply = reaction(&app, &bob, &sent, bad, add).await;
            reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
            assert_eq!(reply.body["field"], "emoji", "{bad:?} (add: {add}): {}", reply.text);
        }
    }
    let long = "😀".repeat(40);
    let reply = react(&app, &bob, &sent, &long).await;
    reply.error(StatusCode::BAD_REQUEST, "VALIDATION");

    // Twenty different emoji, by two users.
    for (i, emoji) in EMOJI[..20].iter().enumerate() {
        let by = if i % 2 == 0 { &ada } else { &bob };
        react(&app, by, &sent, emoji).await.data(StatusCode::OK);
    }
    let full = in_history(&app, &bob, Some(&ada), &sent).await;
    let emoji: Vec<&str> =
        full["reactions"].as_array().unwrap().iter().map(|r| r["emoji"].as_str().unwrap()).collect();
    assert_eq!(emoji, EMOJI[..20], "in the order first used");

    // The 21st: refused, for either user; one of the twenty: still welcome.
    for by in [&ada, &bob] {
        let reply = react(&app, by, &sent, EMOJI[20]).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], "emoji", "{}", reply.text);
    }
    let more = react(&app, &bob, &sent, EMOJI[0]).await;
    let more = more.data(StatusCode::OK);
    assert_eq!(more["reactions"][0], json!({ "emoji": EMOJI[0], "count": 2, "me": true }));
    assert_eq!(more["reactions"].as_array().unwrap().len(), 20);
    // Once one emoji is gone entirely, another may come.
    unreact(&app, &bob, &sent, EMOJI[1]).await.data(StatusCode::OK);
    let now = react(&app, &ada, &sent, EMOJI[20]).await;
    let now = now.data(StatusCode::OK);
    assert_eq!(now["reactions"].as_array().unwrap().len(), 20);
    assert_eq!(now["reactions"][19], json!({ "emoji": EMOJI[20], "count": 1, "me": true }));
}

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_reply_quotes_the_first_100_grapheme_clusters_and_the_quote_follows_the_original() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    // 150 grapheme clusters: a letter, an e with a combining accent, a family of three.
    let unit = "ae\u{301}\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}";
    let long_text = unit.repeat(50);
    let long = app.send_ok(&ada, &bob, &long_text).await;
    let exactly_100 = format!("{}a", unit.repeat(33));
    let short = app.send_ok(&ada, &bob, &exactly_100).await;

    let reply = send_reply(&app, &bob, &ada, "that is long", id(&long)).await;
    let reply = reply.data(StatusCode::CREATED).clone();
    let quote_long = json!({
        "messageId": id(&long), "senderId": ada.id, "text": exactly_100, "truncated": true, "deleted": false
    });
    assert_eq!(reply["replyTo"], quote_long, "{reply}");
    assert_eq!(reply["message"], "that is long");
    assert_eq!(reply["version"], reply["seq"]);

    // Through the conversation route: the same quote shape; exactly 100 clusters are not cut.
    let second = post_reply(&app, &bob, conversation(&long), "and that one is not", id(&short)).await;
    let second = second.data(StatusCode::CREATED).clone();
    let quote_short = json!({
        "messageId": id(&short), "senderId": ada.id, "text": exactly_100, "truncated": false, "deleted": false
    });
    assert_eq!(second["replyTo"], quote_short, "{second}");

    // The quote is read as the original stands: edited, then deleted.
    edit(&app, &ada, &long, "shorter now").await.data(StatusCode::OK);
    let seen = in_history(&app, &ada, Some(&bob), &reply).await;
    assert_eq!(
        seen["replyTo"],
        json!({ "messageId": id(&long), "senderId": ada.id, "text": "shorter now", "truncated": false, "deleted": false })
    );
    delete(&app, &ada, &long).await.data(StatusCode::OK);
    let deleted_quote =
        json!({ "messageId": id(&long), "senderId": ada.id, "truncated": false, "deleted": true });
    for reader in [&ada, &bob] {
        let other = if reader.id == ada.id { &bob } else { &ada };
        let seen = in_history(&app, reader, Some(other), &reply).await;
        assert_eq!(seen["replyTo"], deleted_quote, "{}", reader.username);
        assert_eq!(seen["version"], reply["version"], "the reply itself did not change");
    }
    // The sync page shows the reply with the quote as it stands now.
    let sync = app.sync(&bob.token, &[]).await;
    let synced = find(&sync.data(StatusCode::OK)["messages"], id(&reply)).clone();
    assert_eq!(synced["replyTo"], deleted_quote);

    // Replying to the deleted message is refused.
    let refused = send_reply(&app, &bob, &ada, "too late", id(&long)).await;
    refused.error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert_eq!(refused.body["field"], "replyTo", "{}", refused.text);
}

#[tokio::test]
async fn a_reply_to_another_conversation_a_system_entry_or_no_message_is_refused() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let with_bob = app.send_ok(&ada, &bob, "to bob").await;
    let with_cat = app.send_ok(&ada, &cat, "to cat").await;
    let group = group_of(&app, &ada, &[&bob, &cat]).await;
    let in_group = app.post_message_ok(&bob, &group, "in the group").await;
    let history = app.conversation_messages(&ada.token, &group, &[]).await;
    let created = history.data(StatusCode::OK)[0].clone();
    assert_eq!(created["kind"], "system");

    let mut refusals = vec![
        send_reply(&app, &bob, &ada, "crossed", id(&with_cat)).await,
        send_reply(&app, &bob, &ada, "from the group", id(&in_group)).await,
        post_reply(&app, &bob, conversation(&with_bob), "crossed", id(&with_cat)).await,
        post_reply(&app, &cat, &group, "from a direct one", id(&with_cat)).await,
        post_reply(&app, &cat, &group, "to the system", id(&created)).await,
        post_reply(&app, &cat, &group, "to nothing", "000000000000000000000000").await,
        send_reply(&app, &bob, &ada, "to garbage", "not an id").await,
    ];
    // A message of a conversation the sender is not in.
    let dan = app.create_user("dan").await;
    refusals.push(send_reply(&app, &dan, &ada, "nosy", id(&with_bob)).await);
    for refused in &refusals {
        refused.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(refused.body["field"], "replyTo", "{}", refused.text);
    }
    // Nothing was stored by the refused sends.
    let ada_bob = app.conversation_messages(&ada.token, conversation(&with_bob), &[]).await;
    assert_eq!(ada_bob.data(StatusCode::OK).as_array().unwrap().len(), 1);
    let in_group_now = app.conversation_messages(&ada.token, &group, &[]).await;
    assert_eq!(in_group_now.data(StatusCode::OK).as_array().unwrap().len(), 2);

    // A group reply to a message of the group is fine.
    let fine = post_reply(&app, &cat, &group, "agreed", id(&in_group)).await;
    assert_eq!(
        fine.data(StatusCode::CREATED)["replyTo"],
        json!({ "messageId": id(&in_group), "senderId": bob.id, "text": "in the group", "truncated": false, "deleted": false })
    );
}

// ---------------------------------------------------------------------------------------
// Unread counts
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn reactions_and_edits_do_not_count_as_unread_and_deleting_an_unread_message_lowers_the_count() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;

    // Direct.
    let m1 = app.send_ok(&ada, &bob, "one").await;
    let m2 = app.send_ok(&ada, &bob, "two").await;
    let m3 = app.send_ok(&ada, &bob, "three").await;
    let direct = conversation(&m1).to_owned();
    assert_eq!((unread(&app, &bob, &direct).await, unread(&app, &ada, &direct).await), (3, 0));
    edit(&app, &ada, &m2, "two!").await.data(StatusCode::OK);
    react(&app, &ada, &m1, THUMBS_UP).await.data(StatusCode::OK);
    react(&app, &bob, &m3, HEART).await.data(StatusCode::OK);
    assert_eq!((unread(&app, &bob, &direct).await, unread(&app, &ada, &direct).await), (3, 0));
    // Reacting to a message marks nothing read.
    assert!(listed(&app, &bob, &direct).await["lastReadMessageId"].is_null());
    delete(&app, &ada, &m2).await.data(StatusCode::OK);
    assert_eq!((unread(&app, &bob, &direct).await, unread(&app, &ada, &direct).await), (2, 0));
    // Read up to m1, then delete it: already read, nothing changes.
    app.mark_read(&bob.token, &direct, id(&m1)).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &bob, &direct).await, 1);
    delete(&app, &ada, &m1).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &bob, &direct).await, 1);
    delete(&app, &ada, &m3).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &bob, &direct).await, 0);

    // A group.
    let group = group_of(&app, &ada, &[&bob, &cat]).await;
    let baseline = unread(&app, &cat, &group).await;
    let g1 = app.post_message_ok(&bob, &group, "g1").await;
    let g2 = app.post_message_ok(&bob, &group, "g2").await;
    assert_eq!(unread(&app, &cat, &group).await, baseline + 2);
    react(&app, &ada, &g1, THUMBS_UP).await.data(StatusCode::OK);
    edit(&app, &bob, &g2, "g2!").await.data(StatusCode::OK);
    unreact(&app, &ada, &g1, THUMBS_UP).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &cat, &group).await, baseline + 2);
    assert_eq!(unread(&app, &bob, &group).await, 0, "one's own messages are read");
    delete(&app, &ada, &g1).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &cat, &group).await, baseline + 1);
    assert_eq!(unread(&app, &bob, &group).await, 0);
}

#[tokio::test]
async fn deleting_a_message_from_before_a_member_joined_leaves_their_unread_count_alone() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let group = group_of(&app, &ada, &[&bob]).await;
    let mut early = Vec::new();
    for i in 0..3 {
        early.push(app.post_message_ok(&bob, &group, &format!("early {i}")).await);
    }
    app.add_members(&ada.token, &group, &[&cat.id]).await.data(StatusCode::OK);
    let joined = unread(&app, &cat, &group).await;
    for message in &early {
        delete(&app, &ada, message).await.data(StatusCode::OK);
    }
    assert_eq!(unread(&app, &cat, &group).await, joined, "none of them was cat's to read");

    let later = app.post_message_ok(&bob, &group, "later").await;
    let another = app.post_message_ok(&bob, &group, "another").await;
    assert_eq!(unread(&app, &cat, &group).await, joined + 2);
    delete(&app, &bob, &later).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &cat, &group).await, joined + 1);
    // Read up to the last: nothing unread, and deleting it now changes nothing.
    app.mark_read(&cat.token, &group, id(&another)).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &cat, &group).await, 0);
    delete(&app, &ada, &another).await.data(StatusCode::OK);
    assert_eq!(unread(&app, &cat, &group).await, 0);
    // Bob's own messages never were unread to him, deleted or not.
    assert_eq!(unread(&app, &bob, &group).await, 0);
}

#[tokio::test]
async fn a_change_does_not_move_a_conversation_in_the_list() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let older = app.send_ok(&bob, &ada, "older").await;
    let newer = app.send_ok(&cat, &ada, "newer").await;
    let order = |list: &Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|c| str_of(c, "_id").to_owned()).collect()
    };
    let before = app.conversations(&ada.token).await;
    let before = before.data(StatusCode::OK).clone();
    assert_eq!(order(&before), [conversation(&newer), conversation(&older)]);

    react(&app, &ada, &older, THUMBS_UP).await.data(StatusCode::OK);
    edit(&app, &bob, &older, "older, edited").await.data(StatusCode::OK);
    let after = app.conversations(&ada.token).await;
    let after = after.data(StatusCode::OK).clone();
    assert_eq!(order(&after), order(&before), "a reaction or an edit reorders nothing");
    assert_eq!(after[1]["updatedAt"], before[1]["updatedAt"]);
    assert_eq!(after[1]["lastMessage"]["message"], "older, edited");
    // Change entries take the conversation's seqs too: lastSeq is the last change's.
    assert_eq!(after[1]["lastSeq"], 3, "{}", after[1]);
    delete(&app, &bob, &older).await.data(StatusCode::OK);
    let deleted = app.conversations(&ada.token).await;
    assert_eq!(order(deleted.data(StatusCode::OK)), order(&before));
}

#[tokio::test]
async fn the_same_change_racing_itself_is_one_change_and_one_event() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut ada_ws = app.connect_ws(&ada.token).await;
    let mut bob_ws = app.connect_ws(&bob.token).await;
    let sent = app.send_ok(&ada, &bob, "race me").await;
    const RACERS: usize = 8;

    let edits = futures_util::future::join_all((0..RACERS).map(|_| edit(&app, &ada, &sent, "raced"))).await;
    let reactions =
        futures_util::future::join_all((0..RACERS).map(|_| react(&app, &bob, &sent, HEART))).await;
    let deletions = futures_util::future::join_all((0..RACERS).map(|_| delete(&app, &ada, &sent))).await;
    for (kind, answers, version) in
        [("edit", &edits, 2), ("reaction", &reactions, 3), ("deletion", &deletions, 4)]
    {
        for answer in answers.iter() {
            assert_eq!(answer.data(StatusCode::OK)["version"], version, "{kind}: {}", answer.text);
        }
        assert!(answers.iter().all(|a| a.body == answers[0].body), "{kind}: every racer sees the same state");
    }
    for socket in [&mut ada_ws, &mut bob_ws] {
        let events = socket.first_events("messageUpdated", 3, EVENT_TIMEOUT).await;
        let kinds: Vec<&str> = events.iter().map(|e| str_of(&e["change"], "kind")).collect();
        assert_eq!(kinds, ["edited", "reactionAdded", "deleted"]);
        socket.assert_no_event("messageUpdated", QUIET_PERIOD).await;
        assert_eq!(stream_cursors(socket), ["1", "2", "3", "4"]);
    }
}

#[tokio::test]
async fn members_reacting_at_once_are_all_counted_each_at_its_own_seq() {
    let app = spawn_app().await;
    let owner = app.create_user("owner").await;
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(app.create_user(&format!("member{i}")).await);
    }
    let refs: Vec<&TestUser> = members.iter().collect();
    let group = group_of(&app, &owner, &refs).await;
    let sent = app.post_message_ok(&owner, &group, "who is in?").await;
    let seq = sent["seq"].as_u64().unwrap();
    let mut owner_ws = app.connect_ws(&owner.token).await;

    let answers =
        futures_util::future::join_all(members.iter().map(|m| react(&app, m, &sent, THUMBS_UP))).await;
    let mut versions: Vec<u64> =
        answers.iter().map(|a| a.data(StatusCode::OK)["version"].as_u64().unwrap()).collect();
    versions.sort_unstable();
    assert_eq!(versions, (seq + 1..=seq + 6).collect::<Vec<_>>(), "one seq each");
    let now = in_history(&app, &owner, None, &sent).await;
    assert_eq!(now, with_reactions(&sent, json!([{ "emoji": THUMBS_UP, "count": 6, "me": false }]), seq + 6));

    let events = owner_ws.first_events("messageUpdated", 6, EVENT_TIMEOUT).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["change"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (seq + 1..=seq + 6).collect::<Vec<_>>(), "in seq order");
    let counts: Vec<u64> =
        events.iter().map(|e| e["message"]["reactions"][0]["count"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]) && counts[5] == 6, "{counts:?}");
    let cursors = stream_cursors(&owner_ws);
    let cursors: Vec<&str> = cursors.iter().map(String::as_str).collect();
    assert_consecutive(cursors[0], &cursors[1..]);
    owner_ws.assert_no_event("messageUpdated", QUIET_PERIOD).await;
}

/// A group where dan saw a message and a reaction to it, then was removed, after which the
/// message was edited and reacted to again. Returns the app, the users, the group, the
/// message, dan's cursor at his removal, and the seq of the removal.
async fn removed_after_seeing_a_message() -> (TestApp, [TestUser; 3], String, Value, String, u64) {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let dan = app.create_user("dan").await;
    let group = group_of(&app, &ada, &[&bob, &dan]).await;
    let seen = app.post_message_ok(&bob, &group, "dan sees this").await;
    react(&app, &ada, &seen, THUMBS_UP).await.data(StatusCode::OK);
    let mut dan_ws = app.connect_ws(&dan.token).await;
    app.remove_member(&ada.token, &group, &dan.id).await.data(StatusCode::OK);
    let removal = dan_ws.next_event_matching("newMessage", |m| m["kind"] == "system", EVENT_TIMEOUT).await;
    let left_at = str_of(&removal, "cursor").to_owned();
    let removal_seq = removal["seq"].as_u64().unwrap();

    edit(&app, &bob, &seen, "dan does not see this").await.data(StatusCode::OK);
    react(&app, &bob, &seen, HEART).await.data(StatusCode::OK);
    dan_ws.assert_no_event("messageUpdated", QUIET_PERIOD).await;
    (app, [ada, bob, dan], group, seen, left_at, removal_seq)
}

#[tokio::test]
async fn a_removed_member_gets_no_change_made_after_the_removal() {
    let (app, [_, _, dan], _, _, left_at, removal_seq) = removed_after_seeing_a_message().await;

    // Dan's sync: the reaction from before his removal as a change, nothing after it.
    let page = app.sync(&dan.token, &[]).await;
    let page = page.data(StatusCode::OK).clone();
    let changes: Vec<(&str, u64)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "messageUpdated")
        .map(|e| (str_of(&e["data"]["change"], "kind"), e["data"]["change"]["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(changes, [("reactionAdded", removal_seq - 1)], "{page}");
    let after = app.sync(&dan.token, &[("since", left_at.as_str())]).await;
    let after = after.data(StatusCode::OK);
    assert_eq!((&after["messages"], &after["events"]), (&json!([]), &json!([])), "{after}");
}

/// A removed member who syncs their membership again gets the messages that changed after the
/// removal withheld: no edit or reaction made after someone was removed reaches them.
#[tokio::test]
async fn a_removed_member_does_not_see_edits_or_reactions_made_after_the_removal() {
    let (app, [_, _, dan], _, seen, _, removal_seq) = removed_after_seeing_a_message().await;
    let page = app.sync(&dan.token, &[]).await;
    let page = page.data(StatusCode::OK).clone();
    assert!(!page.to_string().contains("dan does not see this"), "the edit after the removal: {page}");
    let mut shown: Vec<&Value> = page["messages"].as_array().unwrap().iter().collect();
    shown.extend(page["events"].as_array().unwrap().iter().map(|e| &e["data"]["message"]));
    for message in shown.into_iter().filter(|m| m["_id"] == id(&seen)) {
        let version = message["version"].as_u64().unwrap();
        assert!(version <= removal_seq, "a state from after the removal (seq {removal_seq}): {message}");
        // What it showed at the removal is not kept: it is withheld, and a device that had it
        // keeps its copy (its `version` is no newer than what that device saw).
        assert_eq!(message["withheld"], true, "{message}");
        assert_eq!((&message["message"], &message["reactions"]), (&json!(""), &json!([])), "{message}");
        assert_eq!(message["version"], message["seq"], "{message}");
    }
}

#[tokio::test]
async fn history_pages_and_read_positions_count_messages_not_changes() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let m1 = app.send_ok(&ada, &bob, "one").await;
    let m2 = app.send_ok(&ada, &bob, "two").await;
    let m3 = app.send_ok(&ada, &bob, "three").await;
    for emoji in &EMOJI[..4] {
        react(&app, &bob, &m1, emoji).await.data(StatusCode::OK);
    }
    edit(&app, &ada, &m3, "three!").await.data(StatusCode::OK);
    delete(&app, &ada, &m2).await.data(StatusCode::OK);
    let direct = conversation(&m1);

    // Pages hold messages (the tombstone too), never change entries.
    let ids = |page: &Value| -> Vec<String> {
        page.as_array().unwrap().iter().map(|m| str_of(m, "_id").to_owned()).collect()
    };
    let newest = app.conversation_messages(&bob.token, direct, &[("limit", "2")]).await;
    assert_eq!(ids(newest.data(StatusCode::OK)), [id(&m2), id(&m3)]);
    let older = app.conversation_messages(&bob.token, direct, &[("limit", "2"), ("before", id(&m2))]).await;
    assert_eq!(ids(older.data(StatusCode::OK)), [id(&m1)]);
    let by_user = app.get_messages(&bob.token, &ada.id, &[("limit", "2")]).await;
    assert_eq!(ids(&by_user.data(StatusCode::OK)["messages"]), [id(&m2), id(&m3)]);

    // A deleted message is still a place to read up to.
    let read = app.mark_read(&bob.token, direct, id(&m2)).await;
    assert_eq!(read.data(StatusCode::OK)["seq"], m2["seq"]);
    assert_eq!(unread(&app, &bob, direct).await, 1);

    // The same text as before the deletion is no edit of a tombstone either; a reply without a
    // quote is a plain message.
    edit(&app, &ada, &m2, "two").await.error(StatusCode::CONFLICT, "CONFLICT");
    let body = json!({ "message": "no quote", "replyTo": null });
    let plain = app.post_json(&format!("/api/v1/message/send/{}", bob.id), &body, Some(&ada.token)).await;
    assert!(plain.data(StatusCode::CREATED).get("replyTo").is_none(), "{}", plain.text);
    for bad in [json!(42), json!(""), json!({ "id": id(&m1) })] {
        let body = json!({ "message": "odd quote", "replyTo": bad });
        let reply = app.post_json(&format!("/api/v1/message/send/{}", bob.id), &body, Some(&ada.token)).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
}

#[tokio::test]
async fn skin_tones_flags_sequences_and_keycaps_are_each_one_emoji() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let sent = app.send_ok(&ada, &bob, "every kind").await;
    // As sent, and as stored: fully qualified.
    let cases = [
        ("👍🏽", "👍🏽"),
        ("🇫🇷", "🇫🇷"),
        ("👩\u{200d}💻", "👩\u{200d}💻"),
        ("1\u{fe0f}\u{20e3}", "1\u{fe0f}\u{20e3}"),
        ("1\u{20e3}", "1\u{fe0f}\u{20e3}"),
        ("\u{263a}", "\u{263a}\u{fe0f}"),
    ];
    for (sent_as, stored) in cases {
        let answer = react(&app, &bob, &sent, sent_as).await;
        let reactions = answer.data(StatusCode::OK)["reactions"].clone();
        let mine = reactions.as_array().unwrap().iter().find(|r| r["emoji"] == stored);
        assert_eq!(
            mine,
            Some(&json!({ "emoji": stored, "count": 1, "me": true })),
            "{sent_as:?}: {reactions}"
        );
    }
    let now = in_history(&app, &ada, Some(&bob), &sent).await;
    let mut stored: Vec<&str> = cases.iter().map(|(_, stored)| *stored).collect();
    stored.dedup();
    let expected: Vec<Value> =
        stored.iter().map(|e| json!({ "emoji": e, "count": 1, "me": false })).collect();
    assert_eq!(now["reactions"], Value::Array(expected), "the two keycap spellings are one reaction");
}

#[tokio::test]
async fn two_different_edits_racing_end_on_the_later_one_everywhere() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut ada_ws = app.connect_ws(&ada.token).await;
    let mut bob_ws = app.connect_ws(&bob.token).await;
    let sent = app.send_ok(&ada, &bob, "draft").await;
    for round in 0..5 {
        let texts = [format!("first {round}"), format!("second {round}")];
        let (one, two) = tokio::join!(edit(&app, &ada, &sent, &texts[0]), edit(&app, &ada, &sent, &texts[1]));
        let (one, two) = (one.data(StatusCode::OK).clone(), two.data(StatusCode::OK).clone());
        let later = if one["version"].as_u64() > two["version"].as_u64() { &one } else { &two };
        let stored = in_history(&app, &bob, Some(&ada), &sent).await;
        assert_eq!(stored["message"], later["message"], "round {round}: the later edit wins");
        assert_eq!(stored["version"], later["version"]);
        for socket in [&mut ada_ws, &mut bob_ws] {
            let events = socket.first_events("messageUpdated", 2 * (round + 1), EVENT_TIMEOUT).await;
            let last_two = &events[2 * round..];
            assert!(
                last_two[0]["change"]["seq"].as_u64() < last_two[1]["change"]["seq"].as_u64(),
                "{last_two:?}"
            );
            assert_eq!(last_two[1]["message"], stored, "round {round}: devices end where history is");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_device_of_both_users_gets_each_change_once_at_consecutive_cursors() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut ada_phone = app.connect_ws(&ada.token).await;
    let mut ada_laptop = app.connect_ws(&ada.token).await;
    let mut bob_phone = app.connect_ws(&bob.token).await;
    let mut bob_laptop = app.connect_ws(&bob.token).await;
    let sent = app.send_ok(&ada, &bob, "hello").await;

    // An edit, twice: one event per device.
    let answer = edit(&app, &ada, &sent, "hello!").await;
    let answer = answer.data(StatusCode::OK).clone();
    assert_eq!(edit(&app, &ada, &sent, "hello!").await.data(StatusCode::OK), &answer);
    for socket in [&mut ada_phone, &mut ada_laptop, &mut bob_phone, &mut bob_laptop] {
        let event = updated(socket).await;
        let expected = update_event(
            &answer,
            Change { kind: "edited", by: &ada, emoji: None, seq: 2 },
            "2",
            &event["change"]["at"],
        );
        assert_eq!(event, expected);
        assert_eq!(event["change"]["at"], answer["editedAt"]);
    }

    // A reaction by bob, twice (two spellings): `me` per reader.
    let reacted = react(&app, &bob, &sent, ":thumbsup:").await;
    let reacted = reacted.data(StatusCode::OK).clone();
    assert_eq!(react(&app, &bob, &sent, THUMBS_UP).await.data(StatusCode::OK), &reacted);
    assert_eq!(reacted["reactions"], json!([{ "emoji": THUMBS_UP, "count": 1, "me": true }]));
    let mut seen_by_ada = reacted.clone();
    seen_by_ada["reactions"][0]["me"] = json!(false);
    for (socket, seen) in [
        (&mut ada_phone, &seen_by_ada),
        (&mut ada_laptop, &seen_by_ada),
        (&mut bob_phone, &reacted),
        (&mut bob_laptop, &reacted),
    ] {
        let event = updated(socket).await;
        assert_eq!(
            event,
            update_event(
                seen,
                Change { kind: "reactionAdded", by: &bob, emoji: Some(THUMBS_UP), seq: 3 },
                "3",
                &event["change"]["at"]
            )
        );
    }

    // Taking it back, twice.
    let back = unreact(&app, &bob, &sent, THUMBS_UP).await;
    let back = back.data(StatusCode::OK).clone();
    assert_eq!(unreact(&app, &bob, &sent, THUMBS_UP).await.data(StatusCode::OK), &back);
    for socket in [&mut ada_phone, &mut ada_laptop, &mut bob_phone, &mut bob_laptop] {
        let event = updated(socket).await;
        assert_eq!(
            event,
            update_event(
                &back,
                Change { kind: "reactionRemoved", by: &bob, emoji: Some(THUMBS_UP), seq: 4 },
                "4",
                &event["change"]["at"]
            )
        );
    }

    // A deletion, twice.
    let gone = delete(&app, &ada, &sent).await;
    let gone = gone.data(StatusCode::OK).clone();
    assert_eq!(delete(&app, &ada, &sent).await.data(StatusCode::OK), &gone);
    for socket in [&mut ada_phone, &mut ada_laptop, &mut bob_phone, &mut bob_laptop] {
        let event = updated(socket).await;
        assert_eq!(
            event,
            update_event(
                &gone,
                Change { kind: "deleted", by: &ada, emoji: None, seq: 5 },
                "5",
                &event["change"]["at"]
            )
        );
        assert_eq!(event["change"]["at"], gone["deletedAt"]);
    }

    // Refused changes announce nothing; a new message follows at the next cursor.
    edit(&app, &ada, &sent, "back from the dead").await.error(StatusCode::CONFLICT, "CONFLICT");
    delete(&app, &bob, &sent).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let next = app.send_ok(&bob, &ada, "next").await;
    for socket in [&mut ada_phone, &mut ada_laptop, &mut bob_phone, &mut bob_laptop] {
        let event = socket.next_event("newMessage", EVENT_TIMEOUT).await;
        assert_eq!(event["_id"], id(&next));
        assert_eq!(event["cursor"], "6");
        socket.assert_no_event("messageUpdated", QUIET_PERIOD).await;
        assert_eq!(stream_cursors(socket), ["1", "2", "3", "4", "5", "6"], "each once, in order");
        assert_eq!(socket.events("messageUpdated").count(), 4);
    }
    // A user outside the conversation saw none of it.
    let cat = app.create_user("cat").await;
    let mut cat_ws = app.connect_ws(&cat.token).await;
    react(&app, &ada, &next, HEART).await.data(StatusCode::OK);
    cat_ws.assert_no_event("messageUpdated", QUIET_PERIOD).await;
}

#[tokio::test]
async fn every_member_device_gets_a_group_change_with_its_own_me_and_the_groups_next_seq() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let dan = app.create_user("dan").await;
    let group = group_of(&app, &ada, &[&bob, &cat]).await;
    let mut sockets = vec![
        (ada.clone(), app.connect_ws(&ada.token).await),
        (bob.clone(), app.connect_ws(&bob.token).await),
        (bob.clone(), app.connect_ws(&bob.token).await),
        (cat.clone(), app.connect_ws(&cat.token).await),
    ];
    let mut outsider = app.connect_ws(&dan.token).await;
    let sent = app.post_message_ok(&cat, &group, "vote with emoji").await;
    let seq = sent["seq"].as_u64().unwrap();

    let reacted = react(&app, &bob, &sent, "👍").await;
    let reacted = reacted.data(StatusCode::OK).clone();
    react(&app, &bob, &sent, ":+1:").await.data(StatusCode::OK);
    let edited_answer = edit(&app, &cat, &sent, "vote with emoji, please").await;
    let edited_answer = edited_answer.data(StatusCode::OK).clone();
    let gone = delete(&app, &ada, &sent).await;
    let gone = gone.data(StatusCode::OK).clone();
    assert_eq!(
        (reacted["version"].as_u64(), edited_answer["version"].as_u64(), gone["version"].as_u64()),
        (Some(seq + 1), Some(seq + 2), Some(seq + 3))
    );

    for (user, socket) in &mut sockets {
        let first = socket.next_event("newMessage", EVENT_TIMEOUT).await;
        assert_eq!(first["_id"], id(&sent));
        let events = socket.first_events("messageUpdated", 3, EVENT_TIMEOUT).await;
        let me = user.id == bob.id;
        let reaction = json!([{ "emoji": THUMBS_UP, "count": 1, "me": me }]);
        let mut expected = with_reactions(&sent, reaction.clone(), seq + 1);
        assert_eq!(events[0]["message"], expected, "{}", user.username);
        assert_eq!(events[0]["change"]["kind"], "reactionAdded");
        expected = with_reactions(
            &edited(&sent, "vote with emoji, please", seq + 2, &edited_answer),
            reaction,
            seq + 2,
        );
        assert_eq!(events[1]["message"], expected, "{}", user.username);
        assert_eq!(events[1]["change"]["kind"], "edited");
        let edited_then_gone = edited(&sent, "vote with emoji, please", seq + 3, &edited_answer);
        assert_eq!(
            events[2]["message"],
            tombstone(&edited_then_gone, &ada, seq + 3, &gone),
            "{}",
            user.username
        );
        assert_eq!(
            events[2]["change"],
            json!({ "kind": "deleted", "userId": ada.id, "seq": seq + 3, "at": gone["deletedAt"] })
        );
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event["change"]["seq"], seq + 1 + i as u64);
            assert_eq!(group_seq(str_of(event, "cursor"), &group), seq + 1 + i as u64, "{event}");
        }
        socket.assert_no_event("messageUpdated", QUIET_PERIOD).await;
        let cursors = stream_cursors(socket);
        let cursors: Vec<&str> = cursors.iter().map(String::as_str).collect();
        assert_eq!(cursors.len(), 4, "{cursors:?}");
        assert_consecutive(cursors[0], &cursors[1..]);
    }
    outsider.assert_no_event("messageUpdated", QUIET_PERIOD).await;
}

#[tokio::test]
async fn a_device_resuming_with_since_gets_the_changes_it_missed_in_order_once() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let group = group_of(&app, &ada, &[&bob]).await;
    let direct = app.send_ok(&ada, &bob, "direct").await;
    let in_group = app.post_message_ok(&ada, &group, "group").await;

    let mut before = app.connect_ws(&bob.token).await;
    let other = app.send_ok(&cat, &bob, "from cat").await;
    let seen = before.next_event("newMessage", EVENT_TIMEOUT).await;
    assert_eq!(seen["_id"], id(&other));
    let since = str_of(&seen, "cursor").to_owned();
    before.close().await;

    // What bob misses: changes in both conversations, and a message.
    edit(&app, &ada, &direct, "direct, edited").await.data(StatusCode::OK);
    react(&app, &ada, &in_group, THUMBS_UP).await.data(StatusCode::OK);
    react(&app, &bob, &direct, HEART).await.data(StatusCode::OK);
    delete(&app, &ada, &in_group).await.data(StatusCode::OK);
    let last = app.send_ok(&ada, &bob, "after all that").await;

    let mut back = connect_since(&app, &bob, &since).await;
    back.first_events("messageUpdated", 4, EVENT_TIMEOUT).await;
    back.first_events("newMessage", 1, EVENT_TIMEOUT).await;
    back.assert_no_event("messageUpdated", QUIET_PERIOD).await;
    let replayed: Vec<Value> = back
        .received
        .iter()
        .filter(|f| f["event"] == "newMessage" || f["event"] == "messageUpdated")
        .cloned()
        .collect();
    assert_eq!(replayed.len(), 5, "each once: {replayed:?}");
    let cursors: Vec<&str> = replayed.iter().map(|f| str_of(&f["data"], "cursor")).collect();
    assert_consecutive(&since, &cursors);

    // In the order of each conversation; each change carries the message as it stands now
    // (the deleted one without its text), with bob's own reaction as his.
    let summary = |conversation_id: &str| -> Vec<(String, String, String)> {
        replayed
            .iter()
            .map(|f| {
                let data = &f["data"];
                match f["event"].as_str() {
                    Some("newMessage") => (data.clone(), "new".to_owned()),
                    _ => (data["message"].clone(), str_of(&data["change"], "kind").to_owned()),
                }
            })
            .filter(|(message, _)| message["conversationId"] == conversation_id)
            .map(|(message, kind)| (id(&message).to_owned(), kind, str_of(&message, "message").to_owned()))
            .collect()
    };
    let s = |id: &str, kind: &str, text: &str| (id.to_owned(), kind.to_owned(), text.to_owned());
    assert_eq!(
        summary(conversation(&direct)),
        [
            s(id(&direct), "edited", "direct, edited"),
            s(id(&direct), "reactionAdded", "direct, edited"),
            s(id(&last), "new", "after all that"),
        ]
    );
    assert_eq!(summary(&group), [s(id(&in_group), "reactionAdded", ""), s(id(&in_group), "deleted", "")]);
    let bobs_reaction = replayed
        .iter()
        .find(|f| f["data"]["change"]["userId"] == bob.id.as_str())
        .unwrap_or_else(|| panic!("bob's reaction: {replayed:?}"));
    assert_eq!(
        bobs_reaction["data"]["message"]["reactions"],
        json!([{ "emoji": HEART, "count": 1, "me": true }])
    );

    // Sync from the same cursor: the same deliveries at the same cursors.
    let page = app.sync(&bob.token, &[("since", since.as_str())]).await;
    let page = page.data(StatusCode::OK).clone();
    let mut from_sync: Vec<Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({ "event": "newMessage", "data": m }))
        .chain(page["events"].as_array().unwrap().iter().cloned())
        .collect();
    from_sync.sort_by_key(|f| cursor_total(str_of(&f["data"], "cursor")));
    assert_eq!(from_sync, replayed, "sync and the resumed connection agree");
    assert_eq!(page["hasMore"], false);
    assert_eq!(page["nextCursor"].as_str(), cursors.last().copied());

    // Resuming from where the replay ended: nothing again.
    let mut again = connect_since(&app, &bob, cursors[4]).await;
    again.assert_no_event("messageUpdated", QUIET_PERIOD).await;
    assert_eq!(again.events("newMessage").count(), 0);
}

#[tokio::test]
async fn sync_lists_changes_as_message_updated_events_after_the_messages_they_touch() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let m1 = app.send_ok(&ada, &bob, "one").await;
    let edited_m1 = edit(&app, &ada, &m1, "one!").await;
    let edited_m1 = edited_m1.data(StatusCode::OK).clone();
    let m2 = app.send_ok(&bob, &ada, "two").await;
    react(&app, &bob, &m1, THUMBS_UP).await.data(StatusCode::OK);
    let gone = delete(&app, &bob, &m2).await;
    let gone = gone.data(StatusCode::OK).clone();

    // As bob: everything, the messages as they stand now.
    let page = app.sync(&bob.token, &[]).await;
    let page = page.data(StatusCode::OK).clone();
    let mut m1_now = edited_m1.clone();
    m1_now["reactions"] = json!([{ "emoji": THUMBS_UP, "count": 1, "me": true }]);
    m1_now["version"] = json!(4);
    let at = |message: &Value, cursor: &str| {
        let mut item = message.clone();
        item["cursor"] = json!(cursor);
        item
    };
    assert_eq!(page["messages"], json!([at(&m1_now, "1"), at(&gone, "3")]), "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{page}");
    let names: Vec<&str> = events.iter().map(|e| str_of(e, "event")).collect();
    assert_eq!(names, ["messageUpdated"; 3]);
    let data: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(
        data[0],
        &update_event(
            &m1_now,
            Change { kind: "edited", by: &ada, emoji: None, seq: 2 },
            "2",
            &data[0]["change"]["at"]
        )
    );
    assert_eq!(
        data[1],
        &update_event(
            &m1_now,
            Change { kind: "reactionAdded", by: &bob, emoji: Some(THUMBS_UP), seq: 4 },
            "4",
            &data[1]["change"]["at"]
        )
    );
    assert_eq!(
        data[2],
        &update_event(
            &gone,
            Change { kind: "deleted", by: &bob, emoji: None, seq: 5 },
            "5",
            &data[2]["change"]["at"]
        )
    );
    assert_eq!((page["nextCursor"].as_str(), page["hasMore"].as_bool()), (Some("5"), Some(false)));

    // As ada, from after the first message: her own view of the reaction.
    let page = app.sync(&ada.token, &[("since", "1")]).await;
    let page = page.data(StatusCode::OK).clone();
    let mut m1_for_ada = m1_now.clone();
    m1_for_ada["reactions"][0]["me"] = json!(false);
    assert_eq!(page["messages"], json!([at(&gone, "3")]));
    let cursors: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| str_of(&e["data"], "cursor")).collect();
    assert_eq!(cursors, ["2", "4", "5"]);
    assert_eq!(page["events"][1]["data"]["message"], m1_for_ada);

    // Paged one at a time: the same items, in cursor order, each once.
    let mut since = "0".to_owned();
    let mut walked = Vec::new();
    for _ in 0..10 {
        let page = app.sync(&bob.token, &[("since", since.as_str()), ("limit", "1")]).await;
        let page = page.data(StatusCode::OK).clone();
        let count = page["messages"].as_array().unwrap().len() + page["events"].as_array().unwrap().len();
        assert!(count <= 1, "limit counts messages and events: {page}");
        for m in page["messages"].as_array().unwrap() {
            walked.push(("newMessage".to_owned(), str_of(m, "cursor").to_owned()));
        }
        for e in page["events"].as_array().unwrap() {
            walked.push((str_of(e, "event").to_owned(), str_of(&e["data"], "cursor").to_owned()));
        }
        since = str_of(&page, "nextCursor").to_owned();
        if page["hasMore"] == false {
            break;
        }
    }
    let w = |e: &str, c: &str| (e.to_owned(), c.to_owned());
    assert_eq!(
        walked,
        [
            w("newMessage", "1"),
            w("messageUpdated", "2"),
            w("newMessage", "3"),
            w("messageUpdated", "4"),
            w("messageUpdated", "5")
        ]
    );
}
