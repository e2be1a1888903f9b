//! Many direct sends at once across overlapping pairs (every user in several pairs), some
//! retried with the same client id at the same time: every user's stream is gap-free, each message in it once, in the order its
//! conversations' seqs were taken, and every retry answered with the message stored first.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use application::ports::{Appended, MessageRepository, StoredMessage};
use chrono::{SubsecRound as _, Utc};
use domain::{
    ClientMessageId, Conversation, Cursor, Message, MessageBody, MessageId, ParticipantPair, UserId,
};

use common::Scratch;

const USERS: usize = 6;
const SENDS: usize = 150;
/// Every this many sends, one is sent twice at once with the same client id.
const RETRY_EVERY: usize = 5;

/// Each call is bounded: sends that wait on each other without end fail the test.
const DEADLINE: Duration = Duration::from_secs(60);

fn message(from: &UserId, to: &UserId, body: &str, client_id: Option<&str>) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: domain::ConversationId::generate(),
        sender_id: from.clone(),
        receiver_id: Some(to.clone()),
        body: MessageBody::parse(body).unwrap(),
        system: None,
        seq: 0,
        created_at: Utc::now().trunc_subsecs(3),
        client_id: client_id.map(|id| ClientMessageId::parse(id).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_across_overlapping_pairs_keep_every_stream_gap_free_and_ordered() {
    let scratch = Scratch::new().await;
    let store = Arc::new(scratch.connect().await);
    let users: Vec<UserId> = (0..USERS).map(|_| UserId::generate()).collect();
    // One candidate conversation per pair, as the service passes it.
    let mut candidates = HashMap::new();
    for (i, a) in users.iter().enumerate() {
        for b in &users[i + 1..] {
            let pair = ParticipantPair::new(a.clone(), b.clone()).unwrap();
            candidates.insert(pair.key(), Conversation::start(pair, Utc::now().trunc_subsecs(3)));
        }
    }
    let mut tasks = Vec::new();
    for i in 0..SENDS {
        // Overlapping pairs: user i % USERS with each of the others in turn.
        let from = users[i % USERS].clone();
        let to = users[(i % USERS + 1 + (i / USERS) % (USERS - 1)) % USERS].clone();
        let pair = ParticipantPair::new(from.clone(), to.clone()).unwrap();
        let candidate = candidates[&pair.key()].clone();
        let client_id = (i % 2 == 0).then(|| format!("c{i}"));
        let sent = message(&from, &to, &format!("m{i}"), client_id.as_deref());
        let copies = if i % RETRY_EVERY == 0 { 2 } else { 1 };
        for copy in 0..copies {
            // A retry carries the same client id (and a new message id, as a new request would).
            let sent =
                if copy == 0 { sent.clone() } else { Message { id: MessageId::generate(), ..sent.clone() } };
            let (store, candidate) = (Arc::clone(&store), candidate.clone());
            tasks.push(tokio::spawn(async move {
                let outcome = tokio::time::timeout(DEADLINE, store.append(&candidate, &sent))
                    .await
                    .unwrap_or_else(|_| panic!("a send took longer than {DEADLINE:?}"))
                    .expect("a send");
                (sent, outcome)
            }));
        }
    }
    let mut created: Vec<StoredMessage> = Vec::new();
    let mut answered: HashMap<(UserId, String), HashSet<MessageId>> = HashMap::new();
    for task in tasks {
        let (sent, outcome) = task.await.expect("a send task");
        let stored = match outcome {
            Appended::Created(stored) => {
                assert_eq!(stored.message.id, sent.id);
                created.push(stored.clone());
                stored
            }
            Appended::Existing(stored) => stored,
        };
        if let Some(client_id) = &sent.client_id {
            answered
                .entry((sent.sender_id.clone(), client_id.as_str().to_owned()))
                .or_default()
                .insert(stored.message.id.clone());
        }
    }
    // Each client id names one stored message, whichever copy stored it.
    for (key, ids) in &answered {
        assert_eq!(ids.len(), 1, "client id {key:?} answered with {ids:?}");
    }
    let with_client_id = (0..SENDS).filter(|i| i % 2 == 0).count();
    assert_eq!(answered.len(), with_client_id);
    let expected_created = SENDS + (0..SENDS).filter(|i| i % RETRY_EVERY == 0 && i % 2 == 1).count();
    assert_eq!(created.len(), expected_created, "a send without a client id is stored each time");

    for user in &users {
        // The positions the sends were given: 1, 2, … with none taken twice.
        let mut given: Vec<i64> =
            created.iter().filter_map(|stored| stored.cursor_for(user)).map(i64::from).collect();
        given.sort_unstable();
        assert_eq!(given, (1..=given.len() as i64).collect::<Vec<_>>(), "positions given to {user:?}");
        // The stream as read back: the same, each message once.
        let stream = store.stream(user, Cursor::START, 10_000).await.expect("reading a stream");
        let positions: Vec<i64> = stream.iter().map(|item| i64::from(item.cursor)).collect();
        assert_eq!(positions, (1..=given.len() as i64).collect::<Vec<_>>(), "stream of {user:?}");
        let ids: HashSet<&MessageId> =
            stream.iter().filter_map(|item| item.message()).map(|m| &m.id).collect();
        assert_eq!(ids.len(), stream.len(), "a message twice in the stream of {user:?}");
        // In commit order: along the stream, each conversation's seqs only go up.
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        for message in stream.iter().filter_map(|item| item.message()) {
            let last = last_seq.entry(message.conversation_id.as_str().to_owned()).or_default();
            assert!(message.seq > *last, "seq {} after {} in the stream of {user:?}", message.seq, last);
            *last = message.seq;
        }
    }
    // Every conversation's seqs: 1, 2, … with none taken twice.
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for stored in &created {
        seqs.entry(stored.message.conversation_id.as_str().to_owned()).or_default().push(stored.message.seq);
    }
    for (conversation, mut seqs) in seqs {
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seqs of {conversation}");
    }
}
