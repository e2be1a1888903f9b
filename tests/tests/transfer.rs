//! Export/import moves a deployment between backends without losing anything:
//! SQLite -> MongoDB -> PostgreSQL, then the users log in on PostgreSQL with their passwords
//! and see their conversations exactly as before.

use reqwest::StatusCode;
use serde_json::json;
use tests::{Backend, TestApp, TestDatabase};

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

#[tokio::test]
async fn data_moves_from_sqlite_to_mongodb_to_postgres_intact() {
    let source = TestDatabase::create(Backend::Sqlite).await;
    let app = start(&source).await;

    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for (name, password) in
        [("Alice", "alice-password"), ("bob", "bob-password"), ("carol.c", "carol-password")]
    {
        let body = json!({ "fullName": format!("{name} Example"), "username": name, "password": password, "gender": "other" });
        let registered = app.register(&body).await;
        let registered = registered.data(StatusCode::CREATED);
        tokens.push(registered["token"].as_str().unwrap().to_owned());
        ids.push(registered["newUser"]["_id"].as_str().unwrap().to_owned());
    }
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        app.send(&tokens[from], &ids[to], &format!("message {i} <b>&</b>")).await.data(StatusCode::CREATED);
    }
    app.send(&tokens[2], &ids[0], "hello from carol").await.data(StatusCode::CREATED);

    let before = app.get_messages(&tokens[0], &ids[1], &[]).await.data(StatusCode::OK).clone();
    let conversations_before = app.conversations(&tokens[0]).await.data(StatusCode::OK).clone();

    let first = dump(&source).await;
    let middle = TestDatabase::create(Backend::Mongodb).await;
    let stats = load(&middle, &first).await;
    assert_eq!((stats.users, stats.conversations, stats.messages), (3, 2, 8));

    let second = dump(&middle).await;
    let target = TestDatabase::create(Backend::Postgres).await;
    load(&target, &second).await;
    let third = dump(&target).await;
    assert_eq!(
        String::from_utf8(third).unwrap(),
        String::from_utf8(first.clone()).unwrap(),
        "a dump of the target equals the dump of the source"
    );

    // Importing again changes nothing.
    let again = load(&target, &first).await;
    assert_eq!((again.users, again.messages, again.skipped), (0, 0, 11));

    let app = start(&target).await;
    let login = app.login("alice", "alice-password").await;
    let login = login.data(StatusCode::OK);
    let token = login["token"].as_str().unwrap().to_owned();
    assert_eq!(login["user"]["_id"], ids[0].as_str());
    let after = app.get_messages(&token, &ids[1], &[]).await.data(StatusCode::OK).clone();
    assert_eq!(after, before, "history is identical, ids, timestamps and order included");
    let conversations_after = app.conversations(&token).await.data(StatusCode::OK).clone();
    assert_eq!(conversations_after, conversations_before);

    source.remove().await;
    middle.remove().await;
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
