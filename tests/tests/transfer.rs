//! Export/import moves a deployment between backends without losing anything:
//! SQLite -> MongoDB -> PostgreSQL, then the users log in on PostgreSQL with their passwords
//! and see their conversations exactly as before.

use serde_json::{json, Value};
use tests::{Backend, TestDatabase};

async fn start(db: &TestDatabase) -> String {
    let port = tests::start_server(tests::test_settings(db)).await;
    format!("http://127.0.0.1:{port}")
}

async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request sent");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("JSON body")
}

async fn get(client: &reqwest::Client, url: String, token: &str) -> Value {
    let response = client.get(url).bearer_auth(token).send().await.expect("request sent");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("JSON body")
}

async fn dump(db: &TestDatabase) -> Vec<u8> {
    let storage = server::open_storage(&db.settings).await.expect("store opens");
    let mut out = Vec::new();
    server::transfer::export(&storage, &mut out).await.expect("export");
    out
}

async fn load(db: &TestDatabase, dump: &[u8]) -> application::TransferStats {
    let storage = server::open_storage(&db.settings).await.expect("store opens");
    server::transfer::import(&storage, dump).await.expect("import")
}

#[tokio::test]
async fn data_moves_from_sqlite_to_mongodb_to_postgres_intact() {
    let client = reqwest::Client::new();
    let source = TestDatabase::create(Backend::Sqlite).await;
    let base = start(&source).await;

    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for (name, password) in [("Alice", "alice-password"), ("bob", "bob-password"), ("carol.c", "carol-password")] {
        let body = json!({ "fullName": format!("{name} Example"), "username": name, "password": password, "gender": "other" });
        let registered = post(&client, format!("{base}/api/v1/user/register"), None, body).await;
        tokens.push(registered["responseData"]["token"].as_str().unwrap().to_owned());
        ids.push(registered["responseData"]["newUser"]["_id"].as_str().unwrap().to_owned());
    }
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let url = format!("{base}/api/v1/message/send/{}", ids[to]);
        post(&client, url, Some(&tokens[from]), json!({ "message": format!("message {i} <b>&</b>") })).await;
    }
    let url = format!("{base}/api/v1/message/send/{}", ids[0]);
    post(&client, url, Some(&tokens[2]), json!({ "message": "hello from carol" })).await;

    let history_url = |base: &str| format!("{base}/api/v1/message/get-messages/{}", ids[1]);
    let before = get(&client, history_url(&base), &tokens[0]).await;
    let conversations_before = get(&client, format!("{base}/api/v1/message/conversations"), &tokens[0]).await;

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

    let base = start(&target).await;
    let login = post(
        &client,
        format!("{base}/api/v1/user/login"),
        None,
        json!({ "username": "alice", "password": "alice-password" }),
    )
    .await;
    let token = login["responseData"]["token"].as_str().unwrap().to_owned();
    assert_eq!(login["responseData"]["user"]["_id"], ids[0].as_str());
    let after = get(&client, history_url(&base), &token).await;
    assert_eq!(after, before, "history is identical, ids, timestamps and order included");
    let conversations_after = get(&client, format!("{base}/api/v1/message/conversations"), &token).await;
    assert_eq!(conversations_after, conversations_before);

    source.remove().await;
    middle.remove().await;
    target.remove().await;
}
