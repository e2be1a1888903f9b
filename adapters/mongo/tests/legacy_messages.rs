//! Messages stored before message streams existed (by the original app, or by this server
//! before streams) get their stream positions when the store connects.
//!
//! Needs a MongoDB replica set (or SecantusDB, see `scripts/start-mongodb.sh`) at
//! `CHAT_TEST_MONGODB_URL`, by default `mongodb://127.0.0.1:27017/?retryWrites=false`.

mod common;

use application::ports::{Appended, ConversationRepository, MessageRepository, StoredMessage};
use domain::{
    Chat, Conversation, ConversationId, Cursor, Message, MessageBody, MessageId, ParticipantPair, UserId,
};
use mongodb::bson::{doc, Document};

use chat_mongo::MongoStore;
use common::Scratch;

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
    items.iter().map(|item| (item.cursor.position(), item.message().expect("a message").id.clone())).collect()
}

/// Sends `text` from `from` to `to` as the server does now; the message as stored.
async fn send(store: &MongoStore, from: &UserId, to: &UserId, text: &str) -> StoredMessage {
    let pair = ParticipantPair::new(from.clone(), to.clone()).unwrap();
    let candidate = Conversation::start(pair, chrono::Utc::now());
    let message = Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: candidate.id.clone(),
        sender_id: from.clone(),
        receiver_id: Some(to.clone()),
        body: MessageBody::parse(text).unwrap(),
        system: None,
        seq: 0,
        created_at: chrono::Utc::now(),
        client_id: None,
    };
    let Appended::Created(stored) = store.append(&candidate, &message).await.unwrap() else {
        panic!("a new message");
    };
    stored
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
    let history = store.list_by_conversation(&ab, 0, None, 50).await.unwrap();
    assert_eq!(history.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["one", "two", "four"]);

    // New sends continue the streams, and connecting again changes nothing.
    drop(store);
    let store = scratch.connect().await;
    let stored = send(&store, &b, &a, "five").await;
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

fn conversations(scratch: &Scratch) -> mongodb::Collection<Document> {
    scratch.client.database(&scratch.name).collection("conversations")
}

/// A conversation document as this server stored it before sequences and groups.
fn legacy_conversation(a: &UserId, b: &UserId, last_message: &str) -> (ConversationId, Document) {
    let id = ConversationId::generate();
    let pair = ParticipantPair::new(a.clone(), b.clone()).unwrap();
    let now = mongodb::bson::DateTime::now();
    let document = doc! {
        "_id": id.as_str(),
        "participants": [pair.first().as_str(), pair.second().as_str()],
        "pairKey": pair.key(),
        "createdAt": now,
        "updatedAt": now,
        "lastMessageId": last_message,
    };
    (id, document)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_stored_before_sequences_get_seqs_in_id_order_and_members_with_everything_read() {
    let scratch = Scratch::new().await;
    let (a, b, c) = (UserId::generate(), UserId::generate(), UserId::generate());
    // Longer than one batch of the backfill, to number it in several transactions.
    let count = 1_234;
    let conversation = ConversationId::generate();
    let mut ids = Vec::new();
    let documents: Vec<Document> = (0..count)
        .map(|i| {
            let (from, to) = if i % 3 == 0 { (&b, &a) } else { (&a, &b) };
            let (id, document) = legacy(from, to, &conversation, &format!("m{i}"));
            ids.push(id);
            document
        })
        .collect();
    scratch.messages().insert_many(documents).await.expect("storing legacy messages");
    ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let last = ids.last().unwrap().as_str().to_owned();
    let (_, mut document) = legacy_conversation(&a, &b, &last);
    document.insert("_id", conversation.as_str());
    conversations(&scratch).insert_one(document).await.unwrap();
    let (quiet, document) = legacy_conversation(&a, &c, "");
    conversations(&scratch).insert_one(document).await.unwrap();

    let store = scratch.connect().await;
    let history = store.list_by_conversation(&conversation, 0, None, 5_000).await.unwrap();
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=count as u64).collect::<Vec<_>>(), "seqs follow id order");
    assert_eq!(history.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    let entries = store.entries(&conversation, 1_000, None, 50).await.unwrap();
    assert_eq!(entries.first().map(|m| m.seq()), Some(1_001));

    let Some(Chat::Direct(direct)) = store.find(&conversation).await.unwrap() else {
        panic!("a direct chat")
    };
    assert_eq!(direct.last_seq, count as u64);
    for user in [&a, &b] {
        let me = store.member(&conversation, user).await.unwrap().expect("a member");
        assert_eq!((me.joined_seq, me.read_seq), (1, count as u64), "everything before counts as read");
        assert_eq!(me.last_read_message_id.as_ref(), ids.last());
    }
    let me = store.member(&quiet, &c).await.unwrap().expect("a member of the quiet one");
    assert_eq!((me.read_seq, me.last_read_message_id), (0, None));
    let list = store.list_for_user(&a).await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|summary| summary.unread() == 0));

    // A new send takes the next seq and is unread for the receiver only; connecting again
    // changes nothing.
    drop(store);
    let store = scratch.connect().await;
    let stored = send(&store, &a, &b, "after").await;
    assert_eq!(
        (stored.message.conversation_id.clone(), stored.message.seq),
        (conversation.clone(), count as u64 + 1)
    );
    let unread = |list: Vec<application::ports::ConversationSummary>| {
        list.into_iter().find(|s| s.conversation.id() == &conversation).map(|s| s.unread())
    };
    assert_eq!(unread(store.list_for_user(&b).await.unwrap()), Some(1));
    assert_eq!(unread(store.list_for_user(&a).await.unwrap()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_numbering_one_conversation_at_once_give_each_message_one_seq() {
    let scratch = Scratch::new().await;
    let (a, b) = (UserId::generate(), UserId::generate());
    let conversation = ConversationId::generate();
    let documents: Vec<Document> =
        (0..1_100).map(|i| legacy(&a, &b, &conversation, &format!("m{i}")).1).collect();
    scratch.messages().insert_many(documents).await.expect("storing legacy messages");
    let (_, mut document) = legacy_conversation(&a, &b, "");
    document.insert("_id", conversation.as_str());
    conversations(&scratch).insert_one(document).await.unwrap();

    let (first, second) = tokio::join!(scratch.connect(), scratch.connect());
    let history = first.list_by_conversation(&conversation, 0, None, 5_000).await.unwrap();
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=1_100).collect::<Vec<_>>());
    let Some(Chat::Direct(direct)) = second.find(&conversation).await.unwrap() else {
        panic!("a direct chat")
    };
    assert_eq!(direct.last_seq, 1_100);
}
