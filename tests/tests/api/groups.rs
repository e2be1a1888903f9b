//! Group conversations, read positions and unread counts over HTTP: `/api/v1/conversations`
//! and its sub-routes, the conversation list's new fields, and sync across joining and removal.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_timestamp, spawn_app, spawn_app_with};
use tests::{Reply, TestApp, TestUser};

/// An id no user or conversation has.
const UNKNOWN_ID: &str = "0190b8a4-5c3e-7a00-8000-000000000000";

fn id(value: &Value) -> String {
    value["_id"].as_str().unwrap_or_else(|| panic!("no _id: {value}")).to_owned()
}

/// A group object: exactly the documented fields; returns its members as (user id, role).
#[track_caller]
fn assert_group(value: &Value, name: &str) -> Vec<(String, String)> {
    let object = value.as_object().unwrap_or_else(|| panic!("a group must be an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "createdAt",
            "createdBy",
            "kind",
            "lastSeq",
            "memberCount",
            "members",
            "name",
            "updatedAt",
            "version"
        ],
        "group fields: {value}"
    );
    assert_eq!(value["kind"], "group", "{value}");
    assert_eq!(value["name"], name, "{value}");
    assert_timestamp(&value["createdAt"]);
    assert_timestamp(&value["updatedAt"]);
    assert!(value["lastSeq"].as_u64().is_some_and(|s| s >= 1), "{value}");
    assert!(value["version"].as_u64().is_some_and(|v| v >= 1), "{value}");
    let members: Vec<(String, String)> = value["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members must be a list: {value}"))
        .iter()
        .map(|m| {
            let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["joinedAt", "lastReadMessageId", "readSeq", "role", "userId"],
                "member fields: {m}"
            );
            assert_timestamp(&m["joinedAt"]);
            let read = m["readSeq"].as_u64().unwrap_or_else(|| panic!("readSeq is a number: {m}"));
            assert!(read <= value["lastSeq"].as_u64().unwrap(), "nobody reads past the end: {value}");
            assert!(m["lastReadMessageId"].is_null() || m["lastReadMessageId"].is_string(), "{m}");
            (m["userId"].as_str().unwrap().to_owned(), m["role"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(value["memberCount"], json!(members.len()), "{value}");
    members
}

fn member(user: &TestUser, role: &str) -> (String, String) {
    (user.id.clone(), role.to_owned())
}

/// The ids an error names in `userIds`, which its message names too.
#[track_caller]
fn named_ids(reply: &Reply, status: StatusCode, code: &str) -> BTreeSet<String> {
    let message = reply.error(status, code).to_owned();
    let ids: BTreeSet<String> = reply.body["userIds"]
        .as_array()
        .unwrap_or_else(|| panic!("no userIds: {}", reply.text))
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        assert!(message.contains(id.as_str()), "the message names {id}: {message}");
    }
    ids
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// The conversation list entry of `conversation`.
async fn listed(app: &TestApp, user: &TestUser, conversation: &str) -> Value {
    let list = app.conversations(&user.token).await;
    let list = list.data(StatusCode::OK).as_array().unwrap().clone();
    list.into_iter()
        .find(|c| c["_id"] == conversation)
        .unwrap_or_else(|| panic!("{conversation} is not in {}'s list", user.username))
}

async fn unread(app: &TestApp, user: &TestUser, conversation: &str) -> u64 {
    listed(app, user, conversation).await["unreadCount"].as_u64().expect("unreadCount")
}

/// The texts of a page of messages.
fn texts(messages: &Value) -> Vec<String> {
    messages.as_array().unwrap().iter().map(|m| m["message"].as_str().unwrap().to_owned()).collect()
}

async fn history(app: &TestApp, user: &TestUser, conversation: &str, query: &[(&str, &str)]) -> Value {
    app.conversation_messages(&user.token, conversation, query).await.data(StatusCode::OK).clone()
}

#[tokio::test]
async fn a_new_group_has_its_creator_as_owner_and_the_others_as_members() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;

    let group = app.create_group_ok(&ada, "  Team  ", &[&bob, &cat]).await;

    let members = assert_group(&group, "Team");
    assert_eq!(members, [member(&ada, "owner"), member(&bob, "member"), member(&cat, "member")]);
    assert_eq!((group["createdBy"].as_str(), group["lastSeq"].as_u64()), (Some(ada.id.as_str()), Some(1)));
    let gid = id(&group);
    for user in [&ada, &bob, &cat] {
        assert_eq!(app.group(&user.token, &gid).await.data(StatusCode::OK), &group, "{}", user.username);
    }
    // The group's first entry records its creation.
    let entries = history(&app, &bob, &gid, &[]).await;
    let created = &entries.as_array().unwrap()[0];
    assert_eq!((created["kind"].as_str(), created["seq"].as_u64()), (Some("system"), Some(1)), "{created}");
    assert_eq!(created["system"]["action"], "created", "{created}");
    assert_eq!(created["system"]["actorId"], ada.id.as_str(), "{created}");
    assert_eq!(created["receiverId"], Value::Null, "{created}");
    assert_eq!(created["senderId"], ada.id.as_str(), "{created}");
}

#[tokio::test]
async fn a_group_needs_a_valid_name_and_known_distinct_members() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let create = |body: Value| {
        let app = app.api();
        let token = ada.token.clone();
        async move { app.post_json("/api/v1/conversations", &body, Some(&token)).await }
    };

    for name in [json!(""), json!("   "), json!("a".repeat(101)), json!("a\u{202e}b"), json!(7), Value::Null]
    {
        let reply = create(json!({ "name": name, "members": [bob.id] })).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        // A wrong type is refused by the JSON reader, without a field.
        if !name.is_number() {
            assert_eq!(reply.body["field"], "name", "{name}: {}", reply.text);
        }
    }
    let reply = create(json!({ "members": [bob.id] })).await;
    assert_eq!(
        (reply.error(StatusCode::BAD_REQUEST, "VALIDATION"), &reply.body["field"]),
        ("name is required", &json!("name"))
    );
    for members in [json!(null), json!("nope"), json!([1, 2]), json!([])] {
        let reply = create(json!({ "name": "Team", "members": members })).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        if members.is_null() || members == json!([]) {
            assert_eq!(reply.body["field"], "members", "{members}: {}", reply.text);
        }
    }
    let reply = create(json!({ "name": "Team" })).await;
    assert_eq!(reply.body["field"], "members", "{}", reply.text);

    // Listed twice, or the creator listed: 400 naming them.
    let reply = create(json!({ "name": "Team", "members": [bob.id, cat.id, bob.id] })).await;
    assert_eq!(named_ids(&reply, StatusCode::BAD_REQUEST, "VALIDATION"), set(&[&bob.id]));
    assert_eq!(reply.body["field"], "members", "{}", reply.text);
    let reply = create(json!({ "name": "Team", "members": [bob.id, ada.id] })).await;
    assert_eq!(named_ids(&reply, StatusCode::BAD_REQUEST, "VALIDATION"), set(&[&ada.id]));

    // Unknown ids, well-formed or not: 404 naming every one of them.
    let reply = create(json!({ "name": "Team", "members": [bob.id, UNKNOWN_ID] })).await;
    assert_eq!(named_ids(&reply, StatusCode::NOT_FOUND, "NOT_FOUND"), set(&[UNKNOWN_ID]));
    let other = "ffffffff-ffff-7fff-8fff-ffffffffffff";
    let reply = create(json!({ "name": "Team", "members": [UNKNOWN_ID, cat.id, other] })).await;
    assert_eq!(named_ids(&reply, StatusCode::NOT_FOUND, "NOT_FOUND"), set(&[UNKNOWN_ID, other]));
    let reply = create(json!({ "name": "Team", "members": ["not-an-id", bob.id] })).await;
    assert_eq!(named_ids(&reply, StatusCode::NOT_FOUND, "NOT_FOUND"), set(&["not-an-id"]));
    let reply =
        create(json!({ "name": "Team", "members": ["not-an-id", UNKNOWN_ID, bob.id, UNKNOWN_ID] })).await;
    assert_eq!(named_ids(&reply, StatusCode::NOT_FOUND, "NOT_FOUND"), set(&["not-an-id", UNKNOWN_ID]));

    // Nothing of all that was stored.
    assert_eq!(app.conversations(&ada.token).await.data(StatusCode::OK), &json!([]));
    assert_eq!(app.conversations(&bob.token).await.data(StatusCode::OK), &json!([]));

    // 100 characters are fine.
    let long = "é".repeat(100);
    assert_group(&app.create_group_ok(&ada, &long, &[&bob]).await, &long);
}

#[tokio::test]
async fn a_group_holds_at_most_the_configured_number_of_members() {
    let app = spawn_app_with(|settings| settings.groups.max_members = 3).await;
    let users = [
        app.create_user("ada").await,
        app.create_user("bob").await,
        app.create_user("cat").await,
        app.create_user("dan").await,
    ];
    let [ada, bob, cat, dan] = &users;

    let reply = app.create_group(&ada.token, "Too many", &[&bob.id, &cat.id, &dan.id]).await;
    let message = reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(message.contains('3'), "the limit is named: {message}");
    assert_eq!(reply.body["field"], "members", "{}", reply.text);

    let group = app.create_group_ok(ada, "Three", &[bob, cat]).await;
    let gid = id(&group);
    let reply = app.add_members(&ada.token, &gid, &[&dan.id]).await;
    assert_eq!(reply.error(StatusCode::BAD_REQUEST, "VALIDATION"), message);
    assert_eq!(reply.body["field"], "userIds", "{}", reply.text);
    assert_eq!(app.group(&ada.token, &gid).await.data(StatusCode::OK), &group, "nothing changed");

    // Room again once someone leaves.
    app.leave_group(&cat.token, &gid).await.data(StatusCode::OK);
    let added = app.add_members(&ada.token, &gid, &[&dan.id]).await;
    let members = assert_group(added.data(StatusCode::OK), "Three");
    assert_eq!(members, [member(ada, "owner"), member(bob, "member"), member(dan, "member")]);
}

#[tokio::test]
async fn admins_add_and_remove_members_and_bad_requests_change_nothing() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let cat = app.create_user("cat").await;
    let dan = app.create_user("dan").await;
    let eve = app.create_user("eve").await;
    let gid = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat]).await);

    // A member may not add; the owner may.
    app.add_members(&bob.token, &gid, &[&dan.id]).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let group = app.add_members(&ada.token, &gid, &[&dan.id]).await.data(StatusCode::OK).clone();
    assert_eq!(assert_group(&group, "Team").last().unwrap(), &member(&dan, "member"));
    assert_eq!((group["version"].as_u64(), group["lastSeq"].as_u64()), (Some(2), Some(2)));

    // Bad requests: nothing is applied, not even in part.
    let reply = app.add_members(&ada.token, &gid, &[&eve.id, &bob.id, &cat.id]).await;
    assert_eq!(named_ids(&reply, StatusCode::CONFLICT, "CONFLICT"), set(&[&bob.id, &cat.id]));
    let reply = app.add_members(&ada.token, &gid, &[&eve.id, &eve.id]).await;
    assert_eq!(named_ids(&reply, StatusCode::BAD_REQUEST, "VALIDATION"), set(&[&eve.id]));
    let reply = app.add_members(&ada.token, &gid, &[&eve.id, UNKNOWN_ID]).await;
    assert_eq!(named_ids(&reply, StatusCode::NOT_FOUND, "NOT_FOUND"), set(&[UNKNOWN_ID]));
    let reply = app.add_members(&ada.token, &gid, &[UNKNOWN_ID, "x", &eve.id]).await;
    assert_eq!(named_ids(&reply, StatusCode::NOT_FOUND, "NOT_FOUND"), set(&[UNKNOWN_ID, "x"]));
    for body in [json!({}), json!({ "userIds": [] }), json!({ "userIds": "x" }), json!({ "userIds": [3] })] {
        let path = format!("/api/v1/conversations/{gid}/members");
        let reply = app.post_json(&path, &body, Some(&ada.token)).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    assert_eq!(app.group(&ada.token, &gid).await.data(StatusCode::OK), &group, "nothing changed");

    // Removing: a member may not, the owner may; someone who is no member is 404.
    app.remove_member(&bob.token, &gid, &cat.id).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let group = app.remove_member(&ada.token, &gid, &cat.id).await.data(StatusCode::OK).clone();
    assert_eq!(
        assert_group(&group, "Team"),
        [member(&ada, "owner"), member(&bob, "member"), member(&dan, "member")]
    );
    for user in [cat.id.as_str(), eve.id.as_str(), UNKNOWN_ID, "not-an-id"] {
        app.remove_member(&ada.token, &gid, user).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    // Removing oneself is leaving.
    let left = app.remove_member(&dan.token, &gid, &dan.id).await.data(StatusCode::OK).clone();
    assert_eq!(assert_group(&left, "Team"), [member(&ada, "owner"), member(&bob, "member")]);
}

#[tokio::test]
async fn roles_decide_who_may_do_what() {
    let app = spawn_app().await;
    let [ada, bob, cat, dan, eve] = [
        app.create_user("ada").await,
        app.create_user("bob").await,
        app.create_user("cat").await,
        app.create_user("dan").await,
        app.create_user("eve").await,
    ];
    let gid = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat, &dan]).await);

    // Only the owner changes roles; owner is not a role one is given, it is handed over.
    app.set_role(&bob.token, &gid, &cat.id, "admin").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let group = app.set_role(&ada.token, &gid, &bob.id, "admin").await.data(StatusCode::OK).clone();
    assert_eq!(assert_group(&group, "Team")[1], member(&bob, "admin"));
    for role in ["owner", "boss", "", "Admin"] {
        let reply = app.set_role(&ada.token, &gid, &cat.id, role).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], "role", "{role}: {}", reply.text);
    }
    app.set_role(&ada.token, &gid, &eve.id, "admin").await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    // The only owner cannot step down: the group would have none.
    app.set_role(&ada.token, &gid, &ada.id, "admin").await.error(StatusCode::CONFLICT, "CONFLICT");

    // An admin manages members and the name, but not the owner, other admins or roles.
    app.set_role(&ada.token, &gid, &cat.id, "admin").await.data(StatusCode::OK);
    app.set_role(&bob.token, &gid, &dan.id, "admin").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.remove_member(&bob.token, &gid, &ada.id).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.remove_member(&bob.token, &gid, &cat.id).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.transfer_ownership(&bob.token, &gid, &bob.id).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let renamed = app.rename_group(&bob.token, &gid, "Crew").await.data(StatusCode::OK).clone();
    assert_group(&renamed, "Crew");
    app.add_members(&bob.token, &gid, &[&eve.id]).await.data(StatusCode::OK);
    app.remove_member(&bob.token, &gid, &eve.id).await.data(StatusCode::OK);
    // A member does none of it.
    app.rename_group(&dan.token, &gid, "Mine").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    for name in ["", &"x".repeat(101)] {
        let reply = app.rename_group(&bob.token, &gid, name).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], "name", "{}", reply.text);
    }

    // Handing over: to a member only; the old owner becomes an admin.
    app.transfer_ownership(&ada.token, &gid, &eve.id).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let reply = app.transfer_ownership(&ada.token, &gid, "not-an-id").await;
    reply.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let reply =
        app.post_json(&format!("/api/v1/conversations/{gid}/owner"), &json!({}), Some(&ada.token)).await;
    assert_eq!(reply.body["field"], "userId", "{}", reply.text);
    let group = app.transfer_ownership(&ada.token, &gid, &dan.id).await.data(StatusCode::OK).clone();
    let roles = assert_group(&group, "Crew");
    assert_eq!(
        roles,
        [member(&ada, "admin"), member(&bob, "admin"), member(&cat, "admin"), member(&dan, "owner")]
    );
    app.set_role(&ada.token, &gid, &bob.id, "member").await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // The new owner may now remove an admin, and step down by handing over again.
    app.remove_member(&dan.token, &gid, &cat.id).await.data(StatusCode::OK);
    app.transfer_ownership(&dan.token, &gid, &ada.id).await.data(StatusCode::OK);
}

#[tokio::test]
async fn an_owner_who_leaves_hands_over_to_the_oldest_admin_else_the_oldest_member() {
    let app = spawn_app().await;
    let [ada, bob, cat, dan] = [
        app.create_user("ada").await,
        app.create_user("bob").await,
        app.create_user("cat").await,
        app.create_user("dan").await,
    ];
    let gid = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat, &dan]).await);
    app.set_role(&ada.token, &gid, &cat.id, "admin").await.data(StatusCode::OK);

    let group = app.leave_group(&ada.token, &gid).await.data(StatusCode::OK).clone();
    assert_eq!(
        assert_group(&group, "Team"),
        [member(&bob, "member"), member(&cat, "owner"), member(&dan, "member")]
    );
    let group = app.leave_group(&cat.token, &gid).await.data(StatusCode::OK).clone();
    assert_eq!(assert_group(&group, "Team"), [member(&bob, "owner"), member(&dan, "member")]);
    // The others' history says who left and who took over.
    let entries = history(&app, &dan, &gid, &[]).await;
    let left: Vec<&Value> =
        entries.as_array().unwrap().iter().filter(|e| e["system"]["action"] == "left").collect();
    assert_eq!(left.len(), 2, "{entries}");
    assert_eq!(
        (&left[0]["system"]["actorId"], &left[0]["system"]["newOwnerId"]),
        (&json!(ada.id), &json!(cat.id))
    );
    assert_eq!(
        (&left[1]["system"]["actorId"], &left[1]["system"]["newOwnerId"]),
        (&json!(cat.id), &json!(bob.id))
    );
    app.leave_group(&dan.token, &gid).await.data(StatusCode::OK);
    app.leave_group(&bob.token, &gid).await.data(StatusCode::OK);
    app.group(&bob.token, &gid).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
}

#[tokio::test]
async fn strangers_are_told_nothing_and_former_members_are_refused() {
    let app = spawn_app().await;
    let [ada, bob, cat, dan] = [
        app.create_user("ada").await,
        app.create_user("bob").await,
        app.create_user("cat").await,
        app.create_user("dan").await,
    ];
    let group = app.create_group_ok(&ada, "Team", &[&bob, &cat]).await;
    let gid = id(&group);
    let first = id(&app.post_message_ok(&ada, &gid, "hello").await);
    app.remove_member(&ada.token, &gid, &cat.id).await.data(StatusCode::OK);

    // dan never was a member: 404, as for a group that does not exist; cat was: 403.
    for (user, status, code) in
        [(&dan, StatusCode::NOT_FOUND, "NOT_FOUND"), (&cat, StatusCode::FORBIDDEN, "FORBIDDEN")]
    {
        let token = user.token.as_str();
        app.group(token, &gid).await.error(status, code);
        app.rename_group(token, &gid, "Mine").await.error(status, code);
        app.add_members(token, &gid, &[&dan.id]).await.error(status, code);
        app.remove_member(token, &gid, &bob.id).await.error(status, code);
        app.set_role(token, &gid, &bob.id, "admin").await.error(status, code);
        app.transfer_ownership(token, &gid, &bob.id).await.error(status, code);
        app.leave_group(token, &gid).await.error(status, code);
        app.post_message(token, &gid, "let me in").await.error(status, code);
        app.conversation_messages(token, &gid, &[]).await.error(status, code);
        app.mark_read(token, &gid, &first).await.error(status, code);
    }
    for unknown in [UNKNOWN_ID, "not-an-id"] {
        app.group(&ada.token, unknown).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
        app.post_message(&ada.token, unknown, "hi").await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
        app.conversation_messages(&ada.token, unknown, &[]).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    // A direct conversation is not a group: group routes do not know it (reading it by id
    // works, see `a_direct_conversation_by_id_shows_both_read_positions_to_its_members_only`).
    let direct = app.send_ok(&ada, &bob, "psst").await["conversationId"].as_str().unwrap().to_owned();
    app.rename_group(&ada.token, &direct, "Ours").await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    app.leave_group(&ada.token, &direct).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    // Unauthenticated: 401 before anything else.
    let reply = app.execute(app.request(Method::GET, &format!("/api/v1/conversations/{gid}"), None)).await;
    reply.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn messages_go_to_groups_and_direct_conversations_by_id() {
    let app = spawn_app().await;
    let [ada, bob, cat] =
        [app.create_user("ada").await, app.create_user("bob").await, app.create_user("cat").await];
    let gid = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat]).await);

    let sent = app.post_message_ok(&bob, &gid, "hi team").await;
    let mut keys: Vec<&str> = sent.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
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
        "{sent}"
    );
    assert_eq!(
        (&sent["conversationId"], &sent["senderId"], &sent["receiverId"], &sent["kind"], &sent["seq"]),
        (&json!(gid), &json!(bob.id), &Value::Null, &json!("text"), &json!(2)),
    );
    assert_timestamp(&sent["createdAt"]);
    assert_eq!(history(&app, &cat, &gid, &[]).await.as_array().unwrap().last().unwrap(), &sent);

    // Retries with a key store once; the key for another text is refused.
    let path = format!("/api/v1/conversations/{gid}/messages");
    let keyed = json!({ "message": "once", "clientMessageId": "k-1" });
    let first = app.post_json(&path, &keyed, Some(&cat.token)).await.data(StatusCode::CREATED).clone();
    assert_eq!(first["clientMessageId"], "k-1");
    let again = app.post_json(&path, &keyed, Some(&cat.token)).await;
    assert_eq!(again.data(StatusCode::OK), &first);
    let by_header = app
        .execute(
            app.request(Method::POST, &path, Some(&cat.token))
                .header("Idempotency-Key", "\"k-1\"")
                .json(&json!({ "message": "once" })),
        )
        .await;
    assert_eq!(by_header.data(StatusCode::OK), &first);
    let reused = app
        .post_json(&path, &json!({ "message": "other", "clientMessageId": "k-1" }), Some(&cat.token))
        .await;
    reused.error(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
    let differ = app
        .execute(
            app.request(Method::POST, &path, Some(&cat.token)).header("Idempotency-Key", "k-2").json(&keyed),
        )
        .await;
    assert_eq!(differ.body["field"], "clientMessageId", "{}", differ.text);
    for body in [json!({}), json!({ "message": "  " }), json!({ "message": 5 })] {
        let reply = app.post_json(&path, &body, Some(&cat.token)).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    assert_eq!(texts(&history(&app, &ada, &gid, &[]).await)[1..], ["hi team", "once"]);

    // A direct conversation by its id: the same as sending to the other user.
    let direct = app.send_ok(&ada, &bob, "first").await;
    let cid = direct["conversationId"].as_str().unwrap();
    let reply = app.post_message_ok(&bob, cid, "second").await;
    assert_eq!(
        (&reply["receiverId"], &reply["conversationId"], &reply["seq"]),
        (&json!(ada.id), &json!(cid), &json!(2))
    );
    let seed = app.get_messages(&ada.token, &bob.id, &[]).await;
    assert_eq!(texts(&seed.data(StatusCode::OK)["messages"]), ["first", "second"]);
    assert_eq!(texts(&history(&app, &ada, cid, &[]).await), ["first", "second"]);
    app.post_message(&cat.token, cid, "not mine").await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    app.conversation_messages(&cat.token, cid, &[]).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn a_member_sees_the_history_from_joining_on_page_by_page() {
    let app = spawn_app().await;
    let [ada, bob, cat] =
        [app.create_user("ada").await, app.create_user("bob").await, app.create_user("cat").await];
    let gid = id(&app.create_group_ok(&ada, "Team", &[&bob]).await);
    app.post_message_ok(&ada, &gid, "before cat").await;
    app.add_members(&ada.token, &gid, &[&cat.id]).await.data(StatusCode::OK);
    app.post_message_ok(&bob, &gid, "after cat").await;

    let everything = history(&app, &bob, &gid, &[]).await;
    let seqs: Vec<u64> = everything.as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let cats = history(&app, &cat, &gid, &[]).await;
    assert_eq!(
        cats.as_array().unwrap()[..],
        everything.as_array().unwrap()[2..],
        "from the entry that added cat"
    );
    let added = &cats[0];
    assert_eq!(
        (&added["system"]["action"], &added["system"]["userIds"]),
        (&json!("added"), &json!([cat.id]))
    );

    // Pages: the newest `limit` before `before`, oldest first; never before joining.
    let newest = history(&app, &cat, &gid, &[("limit", "1")]).await;
    assert_eq!(texts(&newest), ["after cat"]);
    let older = history(&app, &cat, &gid, &[("limit", "1"), ("before", &id(&newest[0]))]).await;
    assert_eq!(older.as_array().unwrap()[..], cats.as_array().unwrap()[..1]);
    let none = history(&app, &cat, &gid, &[("before", &id(&older[0]))]).await;
    assert_eq!(none, json!([]));
    let reply = app.conversation_messages(&cat.token, &gid, &[("before", "nope")]).await;
    assert_eq!(reply.body["field"], "before", "{}", reply.text);
    let reply = app.conversation_messages(&cat.token, &gid, &[("limit", "-1")]).await;
    reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
}

#[tokio::test]
async fn unread_counts_and_read_positions_are_exact_on_every_device() {
    let app = spawn_app().await;
    let [ada, bob, cat] =
        [app.create_user("ada").await, app.create_user("bob").await, app.create_user("cat").await];
    let bob_phone = bob.token.clone();
    let bob_laptop =
        app.login("bob", &bob.password).await.data(StatusCode::OK)["token"].as_str().unwrap().to_owned();
    let laptop = TestUser { token: bob_laptop.clone(), ..bob.clone() };
    let gid = id(&app.create_group_ok(&ada, "Team", &[&bob, &cat]).await);
    // The creation is news to the others, not to the creator.
    assert_eq!((unread(&app, &ada, &gid).await, unread(&app, &bob, &gid).await), (0, 1));

    let ids: Vec<String> = [
        app.post_message_ok(&ada, &gid, "two").await,
        app.post_message_ok(&ada, &gid, "three").await,
        app.post_message_ok(&ada, &gid, "four").await,
    ]
    .iter()
    .map(id)
    .collect();
    let entry = listed(&app, &bob, &gid).await;
    assert_eq!(
        (&entry["unreadCount"], &entry["lastSeq"], &entry["lastReadMessageId"]),
        (&json!(4), &json!(4), &Value::Null)
    );
    assert_eq!(unread(&app, &ada, &gid).await, 0, "one's own messages are read");
    let before_read =
        app.sync(&bob_laptop, &[]).await.data(StatusCode::OK)["nextCursor"].as_str().unwrap().to_owned();

    // Read on the phone, seen on the laptop.
    let read = app.mark_read(&bob_phone, &gid, &ids[1]).await;
    assert_eq!(read.data(StatusCode::OK), &json!({ "conversationId": gid, "seq": 3 }));
    let entry = listed(&app, &laptop, &gid).await;
    assert_eq!((&entry["unreadCount"], &entry["lastReadMessageId"]), (&json!(1), &json!(ids[1])));
    let synced = app.sync(&bob_laptop, &[("since", &before_read)]).await;
    let synced = synced.data(StatusCode::OK);
    assert_eq!(synced["messages"], json!([]), "{synced}");
    let events = synced["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{synced}");
    assert_eq!(events[0]["event"], "conversationRead");
    let data = &events[0]["data"];
    assert_eq!(
        (&data["conversationId"], &data["upTo"], &data["seq"]),
        (&json!(gid), &json!(ids[1]), &json!(3))
    );
    assert_eq!(data["cursor"], synced["nextCursor"], "{synced}");
    // The others see how far bob has read: "seen by".
    let group = app.group(&ada.token, &gid).await;
    let group = group.data(StatusCode::OK);
    let seen = group["members"].as_array().unwrap().iter().find(|m| m["userId"] == json!(bob.id)).unwrap();
    assert_eq!((&seen["readSeq"], &seen["lastReadMessageId"]), (&json!(3), &json!(ids[1])), "{group}");

    // Never backwards; an unknown or malformed message is refused.
    let back = app.mark_read(&bob_laptop, &gid, &ids[0]).await;
    assert_eq!(back.data(StatusCode::OK)["seq"], 3);
    app.mark_read(&bob_phone, &gid, UNKNOWN_ID).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let reply = app.mark_read(&bob_phone, &gid, "nope").await;
    assert_eq!((reply.status, &reply.body["field"]), (StatusCode::BAD_REQUEST, &json!("upTo")));
    let reply =
        app.post_json(&format!("/api/v1/conversations/{gid}/read"), &json!({}), Some(&bob_phone)).await;
    assert_eq!((reply.status, &reply.body["field"]), (StatusCode::BAD_REQUEST, &json!("upTo")));
    // A message of another conversation is not one of this one.
    let direct = app.send_ok(&ada, &bob, "psst").await;
    app.mark_read(&bob_phone, &gid, &id(&direct)).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");

    // Sending reads everything up to one's own message.
    let mine = app.post_message_ok(&bob, &gid, "five").await;
    let entry = listed(&app, &laptop, &gid).await;
    assert_eq!((&entry["unreadCount"], &entry["lastReadMessageId"]), (&json!(0), &json!(id(&mine))));
    assert_eq!((unread(&app, &ada, &gid).await, unread(&app, &cat, &gid).await), (1, 5));

    // Direct conversations count the same way.
    assert_eq!(unread(&app, &bob, direct["conversationId"].as_str().unwrap()).await, 1);
    let cid = direct["conversationId"].as_str().unwrap();
    let read = app.mark_read(&bob_laptop, cid, &id(&direct)).await;
    assert_eq!(read.data(StatusCode::OK), &json!({ "conversationId": cid, "seq": 1 }));
    assert_eq!(unread(&app, &bob, cid).await, 0);
    assert_eq!(unread(&app, &ada, cid).await, 0);
}

#[tokio::test]
async fn the_conversation_list_shows_both_kinds_with_their_read_state() {
    let app = spawn_app().await;
    let [ada, bob, cat] =
        [app.create_user("ada").await, app.create_user("bob").await, app.create_user("cat").await];
    let direct = app.send_ok(&ada, &bob, "hi bob").await;
    let group = app.create_group_ok(&ada, "Team", &[&bob, &cat]).await;
    let gid = id(&group);
    let last = app.post_message_ok(&cat, &gid, "hi all").await;

    let list = app.conversations(&bob.token).await;
    let list = list.data(StatusCode::OK).as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    // Most recent first: the group.
    let (g, d) = (&list[0], &list[1]);
    let mut keys: Vec<&str> = g.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "kind",
            "lastMessage",
            "lastReadMessageId",
            "lastSeq",
            "memberCount",
            "members",
            "name",
            "participants",
            "unreadCount",
            "updatedAt"
        ],
        "{g}"
    );
    assert_eq!((&g["_id"], &g["kind"], &g["name"]), (&json!(gid), &json!("group"), &json!("Team")));
    assert_eq!((&g["memberCount"], &g["members"]), (&json!(3), &json!([ada.id, bob.id, cat.id])));
    assert_eq!(g["participants"], g["members"], "old clients read participants");
    assert_eq!((&g["lastMessage"], &g["lastSeq"], &g["unreadCount"]), (&last, &json!(2), &json!(2)));
    assert_eq!(g["lastReadMessageId"], Value::Null);

    let mut keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "kind",
            "lastMessage",
            "lastReadMessageId",
            "lastSeq",
            "memberCount",
            "participants",
            "unreadCount",
            "updatedAt"
        ],
        "{d}"
    );
    let mut pair = [ada.id.clone(), bob.id.clone()];
    pair.sort();
    assert_eq!(
        (&d["kind"], &d["participants"], &d["memberCount"]),
        (&json!("direct"), &json!(pair), &json!(2))
    );
    assert_eq!((&d["lastMessage"], &d["lastSeq"], &d["unreadCount"]), (&direct, &json!(1), &json!(1)));
    // The sender has read their own message.
    let ada_direct = listed(&app, &ada, direct["conversationId"].as_str().unwrap()).await;
    assert_eq!(
        (&ada_direct["unreadCount"], &ada_direct["lastReadMessageId"]),
        (&json!(0), &json!(id(&direct)))
    );

    // A rename moves the group up and shows in everyone's list.
    app.send_ok(&bob, &ada, "back to you").await;
    app.rename_group(&ada.token, &gid, "Crew").await.data(StatusCode::OK);
    let list = app.conversations(&cat.token).await;
    let first = &list.data(StatusCode::OK)[0];
    assert_eq!(
        (&first["name"], &first["lastSeq"], &first["lastMessage"]["system"]["action"]),
        (&json!("Crew"), &json!(3), &json!("renamed"))
    );
    assert_eq!(listed(&app, &bob, &gid).await["_id"], json!(gid));
    assert_eq!(app.conversations(&bob.token).await.data(StatusCode::OK)[0]["_id"], json!(gid));
}

/// Every item of `user`'s stream after `since`, one sync page of `limit` at a time, as
/// (message text, the cursor it carries); checks that `nextCursor` follows the items.
async fn sync_all(app: &TestApp, user: &TestUser, since: &str, limit: &str) -> Vec<(String, String)> {
    let mut since = since.to_owned();
    let mut items = Vec::new();
    loop {
        let page = app.sync(&user.token, &[("since", &since), ("limit", limit)]).await;
        let page = page.data(StatusCode::OK).clone();
        let messages = page["messages"].as_array().unwrap();
        for message in messages {
            items.push((
                message["message"].as_str().unwrap().to_owned(),
                message["cursor"].as_str().unwrap().to_owned(),
            ));
        }
        if let Some(last) = items.last().filter(|_| !messages.is_empty()) {
            assert_eq!(page["nextCursor"].as_str(), Some(last.1.as_str()), "{page}");
        } else {
            assert_eq!(page["nextCursor"].as_str(), Some(since.as_str()), "{page}");
        }
        since = page["nextCursor"].as_str().unwrap().to_owned();
        if !page["hasMore"].as_bool().unwrap() {
            return items;
        }
    }
}

#[tokio::test]
async fn sync_delivers_a_group_from_joining_to_removal_and_again_after_rejoining() {
    let app = spawn_app().await;
    let [ada, bob, cat] =
        [app.create_user("ada").await, app.create_user("bob").await, app.create_user("cat").await];
    app.send_ok(&ada, &bob, "d1").await;
    let gid = id(&app.create_group_ok(&ada, "Team", &[&cat]).await);
    app.post_message_ok(&ada, &gid, "g2").await;
    app.add_members(&ada.token, &gid, &[&bob.id]).await.data(StatusCode::OK);
    app.post_message_ok(&cat, &gid, "g4").await;
    app.remove_member(&ada.token, &gid, &bob.id).await.data(StatusCode::OK);
    app.post_message_ok(&cat, &gid, "g6: bob is gone").await;
    app.send_ok(&ada, &bob, "d2").await;
    app.add_members(&ada.token, &gid, &[&bob.id]).await.data(StatusCode::OK);
    app.post_message_ok(&cat, &gid, "g8").await;
    let entries = history(&app, &cat, &gid, &[]).await;
    let text = |seq: usize| entries[seq - 1]["message"].as_str().unwrap().to_owned();

    // Bob's stream: d1 at 1, joined at 2, left at 3, d2 at 4, joined again at 5.
    let expected: Vec<(String, String)> = vec![
        ("d1".into(), "1".into()),
        (text(3), format!("2~{gid}.3")),
        ("g4".into(), format!("2~{gid}.4")),
        (text(5), format!("2~{gid}.5")),
        ("d2".into(), "4".into()),
        (text(7), format!("5~{gid}.7")),
        ("g8".into(), format!("5~{gid}.8")),
    ];
    assert_eq!(sync_all(&app, &bob, "", "200").await, expected);
    assert_eq!(sync_all(&app, &bob, "0", "1").await, expected, "page by page");
    // Resuming from any cursor gives exactly the rest.
    for (i, (_, cursor)) in expected.iter().enumerate() {
        assert_eq!(sync_all(&app, &bob, cursor, "3").await, expected[i + 1..], "from {cursor}");
    }
    // The entries' own fields are those of the history.
    let page = app.sync(&bob.token, &[("since", "1")]).await;
    let first = page.data(StatusCode::OK)["messages"][0].clone();
    let mut without = first.clone();
    without.as_object_mut().unwrap().remove("cursor");
    assert_eq!(without, entries[2]);

    // Cursors that do not describe bob's stream are refused.
    let refused = [
        ("2".to_owned(), "a member of the group at 2 must say where in it"),
        (format!("1~{gid}.1"), "not a member at 1"),
        (format!("2~{gid}.1"), "before the entry that added bob"),
        (format!("3~{gid}.5"), "no longer a member at 3"),
        (format!("5~{gid}.9"), "beyond the group's last entry"),
        ("6".to_owned(), "beyond the stream"),
        (format!("2~{gid}.03"), "not canonical"),
    ];
    for (cursor, why) in refused {
        let reply = app.sync(&bob.token, &[("since", &cursor)]).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], "since", "{cursor} ({why}): {}", reply.text);
    }

    // The removed member's history is closed to them; the member's again from rejoining on.
    assert_eq!(texts(&history(&app, &bob, &gid, &[]).await), [text(7), "g8".to_owned()]);
    let cat_stream = sync_all(&app, &cat, "", "50").await;
    assert_eq!(cat_stream.len(), 8, "cat was there all along: {cat_stream:?}");
    assert_eq!(cat_stream.last().unwrap(), &("g8".to_owned(), format!("1~{gid}.8")));
}

/// A direct conversation object: exactly the documented fields; returns its members as
/// (user id, readSeq, lastReadMessageId).
#[track_caller]
fn assert_direct(value: &Value) -> Vec<(String, u64, Value)> {
    let object = value.as_object().unwrap_or_else(|| panic!("a conversation must be an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["_id", "createdAt", "kind", "lastSeq", "members", "participants", "updatedAt"],
        "direct conversation fields: {value}"
    );
    assert_eq!(value["kind"], "direct", "{value}");
    assert_timestamp(&value["createdAt"]);
    assert_timestamp(&value["updatedAt"]);
    let members: Vec<(String, u64, Value)> = value["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members must be a list: {value}"))
        .iter()
        .map(|m| {
            let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["lastReadMessageId", "readSeq", "userId"], "member fields: {m}");
            (
                m["userId"].as_str().unwrap().to_owned(),
                m["readSeq"].as_u64().unwrap(),
                m["lastReadMessageId"].clone(),
            )
        })
        .collect();
    let ids: Vec<&str> = members.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(json!(ids), value["participants"], "members in the order of participants: {value}");
    members
}

#[tokio::test]
async fn a_direct_conversation_by_id_shows_both_read_positions_to_its_members_only() {
    let app = spawn_app().await;
    let [ann, bob, eve] =
        [app.create_user("ann").await, app.create_user("bob").await, app.create_user("eve").await];
    let first = app.send_ok(&ann, &bob, "one").await;
    let second = app.send_ok(&ann, &bob, "two").await;
    let cid = first["conversationId"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/conversations/{cid}");
    let position = |members: &[(String, u64, Value)], user: &TestUser| {
        let (_, seq, id) = members.iter().find(|(id, _, _)| *id == user.id).expect("a member");
        (*seq, id.clone())
    };

    // Sending read everything up to the message for the sender; bob has read nothing yet.
    for viewer in [&ann, &bob] {
        let reply = app.get(&path, Some(&viewer.token)).await;
        let value = reply.data(StatusCode::OK);
        assert_eq!((id(value), &value["lastSeq"]), (cid.clone(), &json!(2)), "{value}");
        let members = assert_direct(value);
        assert_eq!(position(&members, &ann), (2, second["_id"].clone()));
        assert_eq!(position(&members, &bob), (0, Value::Null));
    }

    // Bob reads the first: both see where he stands (what "Seen" shows after a reload).
    app.mark_read(&bob.token, &cid, first["_id"].as_str().unwrap()).await.data(StatusCode::OK);
    for viewer in [&ann, &bob] {
        let members = assert_direct(app.get(&path, Some(&viewer.token)).await.data(StatusCode::OK));
        assert_eq!(position(&members, &bob), (1, first["_id"].clone()));
    }

    // Anyone else: as if it did not exist.
    app.get(&path, Some(&eve.token)).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let reply = app.execute(app.request(Method::GET, &path, None)).await;
    reply.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    // A group answers in its own shape, unchanged.
    let group = app.create_group_ok(&ann, "Pals", &[&bob]).await;
    let reply = app.get(&format!("/api/v1/conversations/{}", id(&group)), Some(&bob.token)).await;
    assert_group(reply.data(StatusCode::OK), "Pals");
}
