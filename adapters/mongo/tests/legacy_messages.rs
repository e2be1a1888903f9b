//! Messages stored before message streams existed (by the original app, or by this server
//! before streams) get their stream positions when the store connects.
//!
//! Needs a MongoDB replica set (or SecantusDB, see `scripts/start-mongodb.sh`) at
//! `CHAT_TEST_MONGODB_URL`, by default `mongodb://127.0.0.1:27017/?retryWrites=false`.

use std::time::Duration;

use application::ports::{Appended, MessageRepository};
use chat_mongo::{MongoOptions, MongoStore};
use domain::{
    Conversation, ConversationId, Cursor, Message, MessageBody, MessageId, ParticipantPair, UserId,
};
use mongodb::bson::{doc, Document};

fn server_url() -> String {
    std::env::var("CHAT_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?retryWrites=false".into())
}

/// The server URL naming `database`, its options kept.
fn url_for(database: &str) -> String {
    let url = server_url();
    let (base, query) = url.split_once('?').map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap_or(("mongodb", base));
    let hosts = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(query) => format!("{scheme}://{hosts}/{database}?{query}"),
        None => format!("{scheme}://{hosts}/{database}"),
    }
}

/// A database of its own, dropped at the end (also when the test fails).
struct Scratch {
    client: mongodb::Client,
    name: String,
}

impl Scratch {
    async fn new() -> Self {
        let name = format!("chat_legacy_{}", uuid_like());
        let client = mongodb::Client::with_uri_str(server_url()).await.expect("a MongoDB URL");
        Self { client, name }
    }

    fn messages(&self) -> mongodb::Collection<Document> {
        self.client.database(&self.name).collection("messages")
    }

    async fn connect(&self) -> MongoStore {
        MongoStore::connect(&MongoOptions {
            url: url_for(&self.name),
            acquire_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap_or_else(|e| panic!("connecting (is MongoDB running? see scripts/start-mongodb.sh): {e:#}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let database = self.client.database(&self.name);
        // Dropping needs the runtime the test runs on, which is still there during `drop`.
        let _ = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
                        rt.block_on(async {
                            let _ = tokio::time::timeout(Duration::from_secs(5), database.drop()).await;
                        })
                    })
                })
                .join()
        });
    }
}

fn uuid_like() -> String {
    MessageId::generate().as_str().replace('-', "")
}

/// A message document as the original app (or this server before streams) stored it.
fn legacy(from: &UserId, to: &UserId, conversation: &ConversationId, body: &str) -> (MessageId, Document) {
    let id = MessageId::generate();
    let document = doc! {
        "_id": id.as_str(),
        "conversationId": conversation.as_str(),
        "senderId": from.as_str(),
        "receiverId": to.as_str(),
        "message": body,
        "createdAt": mongodb::bson::DateTime::now(),
    };
    (id, document)
}

fn positions_and_ids(items: &[application::ports::StreamItem]) -> Vec<(u64, MessageId)> {
    items.iter().map(|item| (item.cursor.position(), item.message.id.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_before_streams_get_positions_in_id_order() {
    let scratch = Scratch::new().await;
    let (a, b, c) = (UserId::generate(), UserId::generate(), UserId::generate());
    let (ab, ac) = (ConversationId::generate(), ConversationId::generate());
    let mut ids = Vec::new();
    for (from, to, conversation, body) in
        [(&a, &b, &ab, "one"), (&b, &a, &ab, "two"), (&a, &c, &ac, "three"), (&a, &b, &ab, "four")]
    {
        let (id, document) = legacy(from, to, conversation, body);
        scratch.messages().insert_one(document).await.expect("storing a legacy message");
        ids.push(id);
    }

    // Documents this store cannot read are left alone rather than keeping it from starting.
    let unreadable = [
        doc! { "_id": mongodb::bson::oid::ObjectId::new(), "senderId": a.as_str(), "receiverId": b.as_str() },
        doc! { "_id": "zzz-not-a-message-id", "senderId": "nobody", "receiverId": b.as_str() },
    ];
    scratch.messages().insert_many(unreadable).await.expect("storing unreadable documents");

    let store = scratch.connect().await;
    let unpositioned =
        scratch.messages().count_documents(doc! { "senderPosition": { "$exists": false } }).await.unwrap();
    assert_eq!(unpositioned, 2);
    let stream = store.stream(&a, Cursor::START, 50).await.unwrap();
    let expected: Vec<(u64, MessageId)> =
        ids.iter().cloned().enumerate().map(|(i, id)| (i as u64 + 1, id)).collect();
    assert_eq!(positions_and_ids(&stream), expected);
    let stream = store.stream(&b, Cursor::START, 50).await.unwrap();
    assert_eq!(positions_and_ids(&stream), [(1, ids[0].clone()), (2, ids[1].clone()), (3, ids[3].clone())]);
    assert_eq!(store.stream_head(&c).await.unwrap(), Cursor::new(1).unwrap());
    let history = store.list_by_conversation(&ab, None, 50).await.unwrap();
    assert_eq!(history.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["one", "two", "four"]);

    // New sends continue the streams, and connecting again changes nothing.
    drop(store);
    let store = scratch.connect().await;
    let candidate =
        Conversation::start(ParticipantPair::new(a.clone(), b.clone()).unwrap(), chrono::Utc::now());
    let message = Message {
        id: MessageId::generate(),
        conversation_id: candidate.id.clone(),
        sender_id: b.clone(),
        receiver_id: a.clone(),
        body: MessageBody::parse("five").unwrap(),
        created_at: chrono::Utc::now(),
        client_id: None,
    };
    let Appended::Created(stored) = store.append(&candidate, &message).await.unwrap() else {
        panic!("a new message");
    };
    assert_eq!((stored.sender_cursor.position(), stored.receiver_cursor.position()), (4, 5));
    assert_eq!(store.stream_head(&a).await.unwrap(), Cursor::new(5).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_starting_at_once_position_each_legacy_message_once() {
    let scratch = Scratch::new().await;
    let users: Vec<UserId> = (0..4).map(|_| UserId::generate()).collect();
    let mut documents = Vec::new();
    for i in 0..60 {
        let (from, to) = (&users[i % 4], &users[(i / 4 + i + 1) % 4]);
        let (from, to) = if from == to { (from, &users[(i + 2) % 4]) } else { (from, to) };
        documents.push(legacy(from, to, &ConversationId::generate(), &format!("m{i}")).1);
    }
    scratch.messages().insert_many(documents).await.expect("storing legacy messages");

    let (first, second) = tokio::join!(scratch.connect(), scratch.connect());
    for user in &users {
        let stream = first.stream(user, Cursor::START, 500).await.unwrap();
        let count = scratch
            .messages()
            .count_documents(doc! { "$or": [{ "senderId": user.as_str() }, { "receiverId": user.as_str() }] })
            .await
            .unwrap();
        let positions: Vec<u64> = stream.iter().map(|item| item.cursor.position()).collect();
        assert_eq!(positions, (1..=count).collect::<Vec<_>>());
        assert_eq!(second.stream_head(user).await.unwrap(), Cursor::new(count).unwrap());
    }
    let unpositioned =
        scratch.messages().count_documents(doc! { "senderPosition": { "$exists": false } }).await.unwrap();
    assert_eq!(unpositioned, 0);
}
