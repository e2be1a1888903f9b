//! Export/import moves a deployment between backends without losing anything:
//! SQLite -> MongoDB -> PostgreSQL, then the users log in on PostgreSQL with their passwords
//! and see their conversations — direct ones and groups, with members, roles, system
//! entries, seqs and read positions — exactly as before; and messages keep their edits,
//! deletions, reactions and replies.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::{Backend, TestApp, TestDatabase, TestUser};

/// A server on `db`, which outlives it (the test moves the data on and removes it).
async fn start(db: &TestDatabase) -> TestApp {
    TestApp::start(tests::test_settings(db), None).await
}

async fn dump(db: &TestDatabase) -> Vec<u8> {
    let storage = server::open_storage(&db.settings).await.expect("store opens");
    let mut out = Vec::new();
    server::transfer::export(&storage, &mut out).await.expect("export");
    out
}

async fn load(db: &TestDatabase, dump: &[u8]) -> application::TransferStats {
    let storage = server::open_storage(&db.settings).await.expect("store opens");
    let cost = tests::test_settings(db).auth.bcrypt_cost;
    server::transfer::import(&storage, cost, dump).await.expect("import")
}

/// Everything `user` (a token and an id) sees: their conversation list (unread counts and read
/// positions included), each listed conversation's history and, of groups, members and roles;
/// the group `group` asked for directly (a former member is refused); and the ids of the
/// messages a sync from the start delivers (cursors belong to one store: not compared).
async fn view(app: &TestApp, token: &str, group: &str) -> Value {
    let list = app.conversations(token).await.data(StatusCode::OK).clone();
    let mut conversations = Vec::new();
    for conversation in list.as_array().unwrap() {
        let id = conversation["_id"].as_str().unwrap();
        let history = app.conversation_messages(token, id, &[("limit", "100")]).await;
        let detail = match conversation["kind"].as_str() {
            Some("group") => app.group(token, id).await.data(StatusCode::OK).clone(),
            _ => Value::Null,
        };
        conversations.push(json!({ "history": history.data(StatusCode::OK), "group": detail }));
    }
    let asked = app.group(token, group).await;
    let mut synced = BTreeSet::new();
    let mut since = String::new();
    loop {
        let page = app.sync(token, &[("since", &since), ("limit", "200")]).await.data(StatusCode::OK).clone();
        synced.extend(page["messages"].as_array().unwrap().iter().map(|m| m["_id"].to_string()));
        since = page["nextCursor"].as_str().unwrap().to_owned();
        if page["hasMore"] != json!(true) {
            break;
        }
    }
    json!({
        "list": list,
        "conversations": conversations,
        "group": { "status": asked.status.as_u16(), "body": asked.body },
        "synced": synced,
    })
}

/// The unread count of `conversation` in `user`'s list.
fn unread(view: &Value, conversation: &str) -> u64 {
    let list = view["list"].as_array().unwrap();
    let listed = list.iter().find(|c| c["_id"] == conversation).unwrap_or_else(|| panic!("{view}"));
    listed["unreadCount"].as_u64().unwrap()
}

#[tokio::test]
async fn data_moves_from_sqlite_to_mongodb_to_postgres_intact() {
    let source = TestDatabase::create(Backend::Sqlite).await;
    let app = start(&source).await;

    let users = [
        ("Alice", "alice-password"),
        ("bob", "bob-password"),
        ("carol.c", "carol-password"),
        ("dave", "dave-password"),
    ];
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for (name, password) in users {
        let body = json!({ "fullName": format!("{name} Example"), "username": name, "password": password, "gender": "other" });
        let registered = app.register(&body).await;
        let registered = registered.data(StatusCode::CREATED);
        tokens.push(registered["token"].as_str().unwrap().to_owned());
        ids.push(registered["newUser"]["_id"].as_str().unwrap().to_owned());
    }
    let mut direct = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let sent = app.send(&tokens[from], &ids[to], &format!("message {i} <b>&</b>")).await;
        direct.push(sent.data(StatusCode::CREATED).clone());
    }
    app.send(&tokens[2], &ids[0], "hello from carol").await.data(StatusCode::CREATED);
    // Alice writes three more; Bob reads the first of them: two stay unread.
    for i in 0..3 {
        let sent = app.send(&tokens[0], &ids[1], &format!("later {i}")).await;
        direct.push(sent.data(StatusCode::CREATED).clone());
    }
    let pair = direct[0]["conversationId"].as_str().unwrap().to_owned();
    app.mark_read(&tokens[1], &pair, direct[7]["_id"].as_str().unwrap()).await.data(StatusCode::OK);

    // A group with every kind of entry: creation, messages, a role change, a removal (Carol
    // stays a former member), a rename and a hand-over of ownership; then reads.
    let others = [ids[1].as_str(), ids[2].as_str(), ids[3].as_str()];
    let created = app.create_group(&tokens[0], "Team", &others).await;
    let group = created.data(StatusCode::CREATED)["_id"].as_str().unwrap().to_owned();
    app.post_message(&tokens[0], &group, "hello team").await.data(StatusCode::CREATED);
    app.post_message(&tokens[1], &group, "hi <i>all</i>").await.data(StatusCode::CREATED);
    app.set_role(&tokens[0], &group, &ids[1], "admin").await.data(StatusCode::OK);
    app.post_message(&tokens[2], &group, "carol here").await.data(StatusCode::CREATED);
    app.remove_member(&tokens[1], &group, &ids[2]).await.data(StatusCode::OK);
    app.rename_group(&tokens[0], &group, "Team two").await.data(StatusCode::OK);
    let dave_says = app.post_message(&tokens[3], &group, "dave here").await;
    let dave_says = dave_says.data(StatusCode::CREATED)["_id"].as_str().unwrap().to_owned();
    app.transfer_ownership(&tokens[0], &group, &ids[1]).await.data(StatusCode::OK);
    app.mark_read(&tokens[1], &group, &dave_says).await.data(StatusCode::OK);

    let mut before = Vec::new();
    for token in &tokens {
        before.push(view(&app, token, &group).await);
    }
    // The test exercises what it means to: unread entries in both kinds, a former member.
    assert_eq!((unread(&before[1], &pair), unread(&before[1], &group)), (2, 1));
    assert_eq!((unread(&before[3], &group), unread(&before[0], &group)), (1, 0));
    assert_eq!(before[2]["group"]["status"], 403);
    let entries = before[1]["conversations"].as_array().unwrap().iter().find(|c| c["group"]["_id"] == group);
    let entries = entries.unwrap()["history"].as_array().unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["system", "text", "text", "system", "text", "system", "system", "text", "system"],
        "{entries:?}"
    );
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<u64>>());

    let first = dump(&source).await;
    let middle = TestDatabase::create(Backend::Mongodb).await;
    let stats = load(&middle, &first).await;
    assert_eq!(
        (stats.users, stats.conversations, stats.groups, stats.messages, stats.members),
        (4, 2, 1, 20, 7),
        "{stats:?}"
    );

    let second = dump(&middle).await;
    let target = TestDatabase::create(Backend::Postgres).await;
    // An import stopped in the middle of the group's entries — here by a dump cut short,
    // which leaves the group unlike its group line: the import says so — then run again in
    // full.
    let text = String::from_utf8(second.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let group_line = lines.iter().position(|l| l.contains(r#""type":"group""#)).expect("a group line");
    let storage = server::open_storage(&target.settings).await.expect("store opens");
    let cost = tests::test_settings(&target).auth.bcrypt_cost;
    let cut = lines[..group_line + 5].join("\n");
    let error = server::transfer::import(&storage, cost, cut.as_bytes()).await.unwrap_err();
    let error = format!("{error:#}");
    assert!(error.contains(&group) && error.contains("not as dumped"), "{error}");
    let resumed = load(&target, &second).await;
    assert_eq!((resumed.users, resumed.groups, resumed.members), (0, 1, 7), "{resumed:?}");
    let third = dump(&target).await;
    assert_eq!(
        String::from_utf8(third).unwrap(),
        String::from_utf8(first.clone()).unwrap(),
        "a dump of the target equals the dump of the source"
    );

    // Importing again changes nothing.
    let again = load(&target, &first).await;
    assert_eq!((again.users, again.messages, again.groups, again.skipped), (0, 0, 0, 4 + 11 + 1 + 9));
    assert_eq!(dump(&target).await, first, "nothing changed");

    let app = start(&target).await;
    for (index, (name, password)) in users.into_iter().enumerate() {
        let login = app.login(&name.to_lowercase(), password).await;
        let login = login.data(StatusCode::OK);
        assert_eq!(login["user"]["_id"], ids[index].as_str());
        let token = login["token"].as_str().unwrap();
        let after = view(&app, token, &group).await;
        assert_eq!(
            after, before[index],
            "{name} sees the same conversations, unread counts, histories (ids, seqs, timestamps, \
             order), members and roles, and gets the same messages from a sync"
        );
    }

    source.remove().await;
    middle.remove().await;
    target.remove().await;
}

/// A dump written before groups and read positions — no `group` or `member` lines, no `seq`
/// on messages, messages a page at a time with the newest page first — still imports: the
/// messages get their seqs in id order, and (as in a store upgraded in place) count as read.
#[tokio::test]
async fn a_dump_from_before_groups_still_imports() {
    let target = TestDatabase::create(Backend::Sqlite).await;
    let good = "$2b$04$zFv3MVfKoGdVaVhtiGcVhOGP/mEhIBa8FiFjfycMWcsuzsDy5LfyC";
    let (alice, bob) = (domain::UserId::generate().to_string(), domain::UserId::generate().to_string());
    let conversation = domain::ConversationId::generate().to_string();
    let messages: Vec<String> = (0..3).map(|_| domain::MessageId::generate().to_string()).collect();
    let line = |id: &str, at: &str| {
        json!({
            "type": "message", "id": id, "conversationId": conversation, "senderId": alice,
            "receiverId": bob, "message": format!("at {at}"), "createdAt": at,
        })
        .to_string()
    };
    let dump = [
        user_line(&alice, "alice", good),
        user_line(&bob, "bob", good),
        json!({
            "type": "conversation", "id": conversation, "participants": [alice, bob],
            "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:03Z",
        })
        .to_string(),
        line(&messages[2], "2024-01-01T00:00:03Z"),
        line(&messages[0], "2024-01-01T00:00:01Z"),
        line(&messages[1], "2024-01-01T00:00:02Z"),
    ]
    .join("\n");
    let stats = load(&target, dump.as_bytes()).await;
    assert_eq!((stats.users, stats.conversations, stats.messages, stats.members), (2, 1, 3, 0));

    let app = start(&target).await;
    let login = app.login("bob", "password-1").await;
    let token = login.data(StatusCode::OK)["token"].as_str().unwrap().to_owned();
    let history = app.conversation_messages(&token, &conversation, &[]).await.data(StatusCode::OK).clone();
    let listed: Vec<(&str, u64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["_id"].as_str().unwrap(), m["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, [(messages[0].as_str(), 1), (messages[1].as_str(), 2), (messages[2].as_str(), 3)]);
    let list = app.conversations(&token).await.data(StatusCode::OK).clone();
    assert_eq!((list[0]["unreadCount"].clone(), list[0]["lastSeq"].clone()), (json!(0), json!(3)), "{list}");
    target.remove().await;
}

/// A dump line of a user with `hash` as the password hash.
fn user_line(id: &str, username: &str, hash: &str) -> String {
    json!({
        "type": "user", "id": id, "username": username, "fullName": "Imported User", "gender": null,
        "avatar": "https://example.com/a.png", "passwordHash": hash,
        "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00Z",
    })
    .to_string()
}

#[tokio::test]
async fn unusable_password_hashes_are_refused_on_import_and_never_make_login_fail() {
    let target = TestDatabase::create(Backend::Sqlite).await;
    // "password-1" at cost 4, the test configuration's cost, then the same at cost 31.
    let good = "$2b$04$zFv3MVfKoGdVaVhtiGcVhOGP/mEhIBa8FiFjfycMWcsuzsDy5LfyC";
    let extreme = good.replace("$04$", "$31$");
    let ids: Vec<String> = (0..3).map(|_| domain::UserId::generate().to_string()).collect();
    let message = json!({
        "type": "message", "id": domain::MessageId::generate().to_string(),
        "conversationId": domain::ConversationId::generate().to_string(),
        "senderId": ids[1], "receiverId": ids[0], "message": "hi", "createdAt": "2024-01-01T00:00:01Z",
    });
    let dump = [
        user_line(&ids[0], "kept", good),
        user_line(&ids[1], "malformed", "$2b$10$tooshort"),
        user_line(&ids[2], "extreme", &extreme),
        message.to_string(),
    ]
    .join("\n");

    let stats = load(&target, dump.as_bytes()).await;
    assert_eq!((stats.users, stats.messages, stats.rejected_with_users), (1, 0, 1));
    let rejected: Vec<(String, String)> =
        stats.rejected_users.iter().map(|(id, user)| (id.to_string(), user.username.to_string())).collect();
    let mut expected = vec![(ids[1].clone(), "malformed".to_owned()), (ids[2].clone(), "extreme".to_owned())];
    expected.sort();
    assert_eq!(rejected, expected);

    // A malformed hash that reached the store some other way: the login is refused, not a 500.
    let storage = server::open_storage(&target.settings).await.expect("store opens");
    let planted = domain::Username::parse("planted").unwrap();
    let planted_id = domain::UserId::generate();
    storage
        .users
        .insert(&domain::User {
            avatar: domain::Avatar::default_for(&planted_id),
            id: planted_id,
            full_name: domain::FullName::parse("Planted").unwrap(),
            username: planted,
            gender: None,
            password_hash: domain::PasswordHash::new("$2b$10$not-a-real-hash".into()),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        })
        .await
        .expect("insert");

    let app = start(&target).await;
    app.login("kept", "password-1").await.data(StatusCode::OK);
    let refused = app.login("planted", "password-1").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["code"], "UNAUTHENTICATED");
    target.remove().await;
}

/// Sends `text` to the conversation `conversation` as a reply to `original`; returns the message.
async fn reply(app: &TestApp, from: &TestUser, conversation: &str, text: &str, original: &Value) -> Value {
    let path = format!("/api/v1/conversations/{conversation}/messages");
    let body = json!({ "message": text, "replyTo": original["_id"] });
    app.post_json(&path, &body, Some(&from.token)).await.data(StatusCode::CREATED).clone()
}

fn message_path(message: &Value) -> String {
    let (conversation, id) = (message["conversationId"].as_str().unwrap(), message["_id"].as_str().unwrap());
    format!("/api/v1/conversations/{conversation}/messages/{id}")
}

async fn edit(app: &TestApp, user: &TestUser, message: &Value, text: &str) {
    let body = json!({ "message": text });
    app.send_json(Method::PATCH, &message_path(message), &body, Some(&user.token)).await.data(StatusCode::OK);
}

async fn delete(app: &TestApp, user: &TestUser, message: &Value) {
    let request = app.request(Method::DELETE, &message_path(message), Some(&user.token));
    app.execute(request).await.data(StatusCode::OK);
}

/// Adds (`add`) or takes back `user`'s reaction `emoji` (a single code point: no encoding
/// beyond UTF-8 percent-escapes, which the client does).
async fn react(app: &TestApp, user: &TestUser, message: &Value, emoji: &str, add: bool) {
    let path = format!("{}/reactions/{emoji}", message_path(message));
    let method = if add { Method::PUT } else { Method::DELETE };
    app.execute(app.request(method, &path, Some(&user.token))).await.data(StatusCode::OK);
}

/// Drops every `cursor` (cursors belong to one store).
fn without_cursors(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.remove("cursor");
            fields.values_mut().for_each(without_cursors);
        }
        Value::Array(items) => items.iter_mut().for_each(without_cursors),
        _ => {}
    }
}

/// What `user` sees of messages and their changes: the conversation list (unread counts and
/// last messages), each conversation's whole history, and what a sync from the start delivers
/// — messages and `messageUpdated` events, ordered by conversation and seq (streams are
/// numbered anew by an import, so the order across conversations may differ), without cursors.
async fn changes_view(app: &TestApp, user: &TestUser) -> Value {
    let list = app.conversations(&user.token).await.data(StatusCode::OK).clone();
    let mut histories = Vec::new();
    for conversation in list.as_array().unwrap() {
        let id = conversation["_id"].as_str().unwrap();
        let history = app.conversation_messages(&user.token, id, &[("limit", "100")]).await;
        histories.push(history.data(StatusCode::OK).clone());
    }
    let mut delivered = Vec::new();
    let mut since = String::new();
    loop {
        let page =
            app.sync(&user.token, &[("since", &since), ("limit", "200")]).await.data(StatusCode::OK).clone();
        for message in page["messages"].as_array().unwrap() {
            let key = (message["conversationId"].to_string(), message["seq"].as_u64().unwrap());
            delivered.push((key, json!({ "message": message })));
        }
        for event in page["events"].as_array().unwrap().iter().filter(|e| e["event"] == "messageUpdated") {
            let data = &event["data"];
            let key =
                (data["message"]["conversationId"].to_string(), data["change"]["seq"].as_u64().unwrap());
            delivered.push((key, json!({ "updated": data })));
        }
        since = page["nextCursor"].as_str().unwrap().to_owned();
        if page["hasMore"] != json!(true) {
            break;
        }
    }
    delivered.sort_by(|x, y| x.0.cmp(&y.0));
    let mut view = json!({
        "list": list,
        "histories": histories,
        "synced": delivered.into_iter().map(|(_, item)| item).collect::<Vec<Value>>(),
    });
    without_cursors(&mut view);
    view
}

/// Edits (one message twice, another before it is deleted), deletions (by the sender and, in
/// a group, by its owner), reactions added and taken back, and replies move from SQLite to
/// PostgreSQL with their seqs: every user sees the same histories, conversation list (unread
/// counts, last messages) and sync from the start, and a dump of the target (and of MongoDB
/// after the same import) equals the dump of the source. An import cut off in the middle of a message's edits runs again to the same
/// end.
#[tokio::test]
async fn message_changes_move_from_sqlite_to_postgres_intact() {
    let source = TestDatabase::create(Backend::Sqlite).await;
    let app = start(&source).await;
    let (alice, bob, carol) =
        (app.create_user("alice").await, app.create_user("bob").await, app.create_user("carol").await);
    let (thumbs, party, smile) = ("👍", "🎉", "😀");

    // A direct conversation.
    let d1 = app.send_ok(&alice, &bob, "hello bob").await;
    let pair = d1["conversationId"].as_str().unwrap().to_owned();
    let d2 = reply(&app, &bob, &pair, "hi alice", &d1).await;
    edit(&app, &alice, &d1, "hello bob!").await;
    react(&app, &bob, &d1, thumbs, true).await;
    edit(&app, &alice, &d1, "hello, bob").await;
    react(&app, &alice, &d2, party, true).await;
    react(&app, &alice, &d2, party, false).await;
    react(&app, &alice, &d2, smile, true).await;
    let d3 = app.send_ok(&alice, &bob, "oops").await;
    delete(&app, &alice, &d3).await;
    let d4 = app.send_ok(&alice, &bob, "edited, then deleted").await;
    edit(&app, &alice, &d4, "edited once").await;
    delete(&app, &alice, &d4).await;
    app.mark_read(&bob.token, &pair, d1["_id"].as_str().unwrap()).await.data(StatusCode::OK);
    reply(&app, &alice, &pair, "a reply to a reply", &d2).await;
    // The last entry is a change.
    react(&app, &bob, &d2, thumbs, true).await;

    // A group.
    let group = app.create_group_ok(&alice, "Team", &[&bob, &carol]).await;
    let group = group["_id"].as_str().unwrap().to_owned();
    let g1 = app.post_message_ok(&alice, &group, "team hello").await;
    let g2 = reply(&app, &bob, &group, "hello to you", &g1).await;
    react(&app, &carol, &g1, party, true).await;
    react(&app, &bob, &g1, party, true).await;
    react(&app, &carol, &g1, party, false).await;
    react(&app, &carol, &g2, smile, true).await;
    edit(&app, &alice, &g1, "team hello!").await;
    let g3 = app.post_message_ok(&carol, &group, "carol's to delete").await;
    delete(&app, &alice, &g3).await;
    let g4 = app.post_message_ok(&bob, &group, "bob edits").await;
    edit(&app, &bob, &g4, "bob edited").await;
    // Carol leaves a former member, her reaction kept.
    app.remove_member(&alice.token, &group, &carol.id).await.data(StatusCode::OK);
    app.mark_read(&bob.token, &group, g2["_id"].as_str().unwrap()).await.data(StatusCode::OK);
    react(&app, &alice, &g4, thumbs, true).await;

    let users = [&alice, &bob, &carol];
    let mut before = Vec::new();
    for user in users {
        before.push(changes_view(&app, user).await);
    }
    // The test exercises what it means to: changed messages in both kinds, unread counts.
    let history = |view: &Value, conversation: &str| {
        let at = view["list"].as_array().unwrap().iter().position(|c| c["_id"] == conversation).unwrap();
        view["histories"][at].as_array().unwrap().clone()
    };
    let direct = history(&before[1], &pair);
    let shown: Vec<(u64, &str, bool, bool)> = direct
        .iter()
        .map(|m| {
            let (text, edited) = (m["message"].as_str().unwrap(), m.get("editedAt").is_some());
            (m["seq"].as_u64().unwrap(), text, edited, m.get("deletedAt").is_some())
        })
        .collect();
    assert_eq!(
        shown,
        [
            (1, "hello, bob", true, false),
            (2, "hi alice", false, false),
            (9, "", false, true),
            // A tombstone keeps no editedAt.
            (11, "", false, true),
            (14, "a reply to a reply", false, false),
        ],
        "{direct:?}"
    );
    assert_eq!(direct[1]["replyTo"]["messageId"], d1["_id"]);
    assert_eq!(
        direct[1]["reactions"],
        json!([{ "emoji": smile, "count": 1, "me": false }, { "emoji": thumbs, "count": 1, "me": true }])
    );
    let team = history(&before[0], &group);
    let edited = team.iter().find(|m| m["_id"] == g4["_id"]).unwrap();
    assert_eq!(
        (edited["message"].as_str(), &edited["seq"], &edited["version"]),
        (Some("bob edited"), &json!(11), &json!(14))
    );
    let listed = |view: &Value, conversation: &str| {
        view["list"].as_array().unwrap().iter().find(|c| c["_id"] == conversation).unwrap().clone()
    };
    assert_eq!(listed(&before[1], &pair)["unreadCount"], 1);
    assert_eq!(listed(&before[1], &pair)["lastSeq"], 15);

    let dumped = dump(&source).await;
    let text = String::from_utf8(dumped.clone()).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains(r#""type":"change""#)).count(), 10 + 8, "{text}");
    assert!(!text.contains(domain::MessageBody::WITHDRAWN), "no stand-in text in the dump");

    let target = TestDatabase::create(Backend::Postgres).await;
    // An import cut off between the first and the last edit of a message, then run again.
    let lines: Vec<&str> = text.lines().collect();
    let direct_line =
        lines.iter().position(|l| l.contains(r#""type":"conversation""#)).expect("a direct one");
    let first_edit = direct_line
        + lines[direct_line..].iter().position(|l| l.contains(r#""kind":"edited""#)).expect("an edit line");
    let changes_in =
        |lines: &[&str]| lines.iter().filter(|l| l.contains(r#""type":"change""#)).count() as u64;
    let storage = server::open_storage(&target.settings).await.expect("store opens");
    let cost = tests::test_settings(&target).auth.bcrypt_cost;
    let cut = lines[..=first_edit].join("\n");
    let error = server::transfer::import(&storage, cost, cut.as_bytes()).await.unwrap_err();
    let error = format!("{error:#}");
    assert!(error.contains(&pair) && error.contains("has no edit at seq"), "{error}");
    let stats = load(&target, &dumped).await;
    assert_eq!(stats.changes, changes_in(&lines) - changes_in(&lines[..=first_edit]), "{stats:?}");
    assert_eq!(dump(&target).await, dumped, "a dump of the target equals the dump of the source");
    // MongoDB replays the same history to the same dump.
    let mongo = TestDatabase::create(Backend::Mongodb).await;
    load(&mongo, &dumped).await;
    assert_eq!(dump(&mongo).await, dumped, "a dump of MongoDB equals the dump of the source");
    mongo.remove().await;

    let app = start(&target).await;
    for (index, user) in users.into_iter().enumerate() {
        let login = app.login(&user.username, &user.password).await;
        let token = login.data(StatusCode::OK)["token"].as_str().unwrap().to_owned();
        let user = TestUser { token, ..user.clone() };
        assert_eq!(
            changes_view(&app, &user).await,
            before[index],
            "{} sees the same messages in the same state (text, editedAt, deletedAt, reactions, \
             replyTo, version) at the same seqs, in history, the conversation list and sync",
            user.username
        );
    }
    source.remove().await;
    target.remove().await;
}
