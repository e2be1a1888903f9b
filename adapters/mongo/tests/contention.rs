//! Many sends into one conversation at once: every one is stored, at consecutive seqs, and
//! none waits without end. How long they take is a benchmark's business (docs/BENCHMARKS.md):
//! the slowest call is printed, and only a call far beyond the server's storage deadline
//! (2 s by default) fails the test, so that a loaded machine does not.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use application::ports::{Appended, GroupAppended, GroupRepository, MessageRepository};
use chrono::{SubsecRound as _, Utc};
use domain::{
    Conversation, ConversationId, Group, GroupName, Member, Message, MessageBody, MessageId, ParticipantPair,
    Role, SystemEvent, UserId,
};

use common::Scratch;

/// Five times the default `storage.acquire_timeout_ms` (past which the server answers 503):
/// a call this slow means sends wait on each other without end, not a slow machine.
const DEADLINE: Duration = Duration::from_millis(10_000);

const SENDS: usize = 32;

fn message(conversation: &ConversationId, from: &UserId, to: Option<&UserId>, body: &str) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: conversation.clone(),
        sender_id: from.clone(),
        receiver_id: to.cloned(),
        body: MessageBody::parse(body).unwrap(),
        system: None,
        seq: 0,
        created_at: Utc::now().trunc_subsecs(3),
        client_id: None,
    }
}

async fn group_of(store: &chat_mongo::MongoStore, owner: &UserId, other: &UserId) -> ConversationId {
    let now = Utc::now().trunc_subsecs(3);
    let id = ConversationId::generate();
    let name = GroupName::parse("Busy").unwrap();
    let group = Group {
        id: id.clone(),
        name: name.clone(),
        created_by: owner.clone(),
        created_at: now,
        updated_at: now,
        last_seq: 1,
    };
    let mut created = message(&id, owner, None, "created");
    created.system = Some(SystemEvent::Created {
        actor: owner.clone(),
        name,
        members: vec![owner.clone(), other.clone()],
    });
    let members = [
        Member::joining(owner.clone(), Role::Owner, now, 1),
        Member::joining(other.clone(), Role::Member, now, 1),
    ];
    store.create(&group, &members, &created).await.expect("creating a group");
    id
}

/// Runs the sends at once; each is bounded by [`DEADLINE`]. Returns the seqs stored and the
/// slowest call.
async fn race<F, Fut>(send: F) -> (Vec<u64>, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let tasks: Vec<_> = (0..SENDS)
        .map(|i| {
            let call = send(i);
            tokio::spawn(async move {
                let started = Instant::now();
                let seq = tokio::time::timeout(DEADLINE, call).await;
                (seq, started.elapsed())
            })
        })
        .collect();
    let mut seqs = Vec::new();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (seq, took) = task.await.expect("a send task");
        slowest = slowest.max(took);
        seqs.push(seq.unwrap_or_else(|_| panic!("a send took longer than {DEADLINE:?}")));
    }
    seqs.sort_unstable();
    (seqs, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_into_one_group_are_all_stored_in_order() {
    let scratch = Scratch::new().await;
    let store = Arc::new(scratch.connect().await);
    let (a, b) = (UserId::generate(), UserId::generate());
    let group = group_of(&store, &a, &b).await;
    let (seqs, slowest) = race(|i| {
        let (store, group, from) =
            (Arc::clone(&store), group.clone(), if i % 2 == 0 { a.clone() } else { b.clone() });
        async move {
            match store
                .append_to_group(&message(&group, &from, None, &format!("m{i}")))
                .await
                .expect("a send")
            {
                GroupAppended::Created { message, .. } => message.seq,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    eprintln!("group: slowest of {SENDS} concurrent sends {slowest:?}");
    assert_eq!(seqs, (2..=SENDS as u64 + 1).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_into_one_direct_conversation_are_all_stored_in_order() {
    let scratch = Scratch::new().await;
    let store = Arc::new(scratch.connect().await);
    let (a, b) = (UserId::generate(), UserId::generate());
    let candidate =
        Conversation::start(ParticipantPair::new(a.clone(), b.clone()).unwrap(), Utc::now().trunc_subsecs(3));
    let (seqs, slowest) = race(|i| {
        let (store, candidate) = (Arc::clone(&store), candidate.clone());
        let (from, to) = if i % 2 == 0 { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
        async move {
            let message = message(&candidate.id, &from, Some(&to), &format!("m{i}"));
            match store.append(&candidate, &message).await.expect("a send") {
                Appended::Created(stored) => stored.message.seq,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    eprintln!("direct: slowest of {SENDS} concurrent sends {slowest:?}");
    assert_eq!(seqs, (1..=SENDS as u64).collect::<Vec<_>>());
}
