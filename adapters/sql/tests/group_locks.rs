//! The writes of two users and their group racing each other — group sends (several at a
//! time), reads of the group and of their direct conversation, direct sends, and membership
//! changes — all end, none is refused for a deadlock, and every stream and the group's
//! sequence stay gap-free. On PostgreSQL this holds the writes to their lock order (see
//! `src/groups.rs`): a send that locked the group's row in a mode that also waits for a read's
//! notice naming the group would deadlock with that read.
//!
//! The PostgreSQL case needs a server at `CHAT_TEST_POSTGRES_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), where it creates and drops a database.

use std::sync::Arc;
use std::time::Duration;

use application::ports::{Appended, Changed, GroupAppended, GroupChange, GroupRepository, ReadMoved};
use chrono::{SubsecRound as _, Utc};
use domain::{
    Avatar, Conversation, ConversationId, Cursor, FullName, Group, GroupName, Member, Message, MessageBody,
    MessageId, ParticipantPair, PasswordHash, Role, SystemEvent, User, UserId, Username,
};

mod common;

use common::{on_postgres, on_sqlite, Store};

const ROUNDS: usize = 300;

async fn user(store: &dyn Store, name: &str) -> UserId {
    let id = UserId::generate();
    let at = Utc::now().trunc_subsecs(3);
    let user = User {
        avatar: Avatar::default_for(&id),
        id: id.clone(),
        username: Username::parse(name).unwrap(),
        full_name: FullName::parse("Test User").unwrap(),
        gender: None,
        password_hash: PasswordHash::new("hash".into()),
        created_at: at,
        updated_at: at,
    };
    store.insert(&user).await.expect("inserting a user");
    id
}

fn entry(group: &ConversationId, from: &UserId, event: Option<SystemEvent>) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: group.clone(),
        sender_id: from.clone(),
        receiver_id: None,
        body: MessageBody::parse("hello").unwrap(),
        system: event,
        seq: 0,
        created_at: Utc::now().trunc_subsecs(3),
        client_id: None,
    }
}

/// The owner adds and removes `others` in turn, at whatever version the group has.
async fn churn(store: Arc<dyn Store>, group: ConversationId, owner: UserId, others: Vec<UserId>) {
    for round in 0..ROUNDS / 4 {
        let user = &others[round % others.len()];
        loop {
            let state = store.state(&group).await.unwrap().expect("the group");
            let member = state.member(user).is_some();
            let (event, add, remove) = if member {
                (
                    SystemEvent::Removed { actor: owner.clone(), users: vec![user.clone()] },
                    vec![],
                    vec![user.clone()],
                )
            } else {
                (
                    SystemEvent::Added { actor: owner.clone(), users: vec![user.clone()] },
                    vec![(user.clone(), Role::Member)],
                    vec![],
                )
            };
            let change = GroupChange {
                expected_version: state.version,
                entry: entry(&group, &owner, Some(event)),
                rename: Some(GroupName::parse(&format!("Round {round}")).unwrap()),
                add,
                remove,
                roles: Vec::new(),
            };
            match GroupRepository::change(store.as_ref(), &group, &change).await.expect("a change") {
                Changed::Applied { .. } => break,
                Changed::Stale => continue,
            }
        }
    }
}

/// `reader` reads the conversation up to its last entry, again and again.
async fn reads(store: Arc<dyn Store>, conversation: ConversationId, reader: UserId) {
    for _ in 0..ROUNDS {
        let last = store.entries(&conversation, 0, None, 100_000).await.unwrap().pop();
        if let Some(last) = last.as_ref().and_then(|entry| entry.message()) {
            match store.mark_read(&conversation, &reader, &last.id).await.expect("a read") {
                ReadMoved::Moved { .. } | ReadMoved::NotAhead { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        tokio::task::yield_now().await;
    }
}

/// A group named `name` created by `owner` with `member` in it.
async fn create_group(store: &dyn Store, name: &str, owner: &UserId, member: &UserId) -> Group {
    let at = Utc::now().trunc_subsecs(3);
    let group = Group {
        id: ConversationId::generate(),
        name: GroupName::parse(name).unwrap(),
        created_by: owner.clone(),
        created_at: at,
        updated_at: at,
        last_seq: 1,
    };
    let members = [
        Member::joining(owner.clone(), Role::Owner, at, 1),
        Member::joining(member.clone(), Role::Member, at, 1),
    ];
    let created = entry(
        &group.id,
        owner,
        Some(SystemEvent::Created {
            actor: owner.clone(),
            name: group.name.clone(),
            members: vec![owner.clone(), member.clone()],
        }),
    );
    store.create(&group, &members, &created).await.expect("creating the group");
    group
}

async fn race(store: Arc<dyn Store>) {
    let owner = user(&*store, "owner").await;
    let member = user(&*store, "member").await;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(user(&*store, &format!("other{i}")).await);
    }
    let group = create_group(&*store, "Team", &owner, &member).await;
    let pair = ParticipantPair::new(owner.clone(), member.clone()).unwrap();
    let direct = store
        .find_or_insert(&Conversation::start(pair.clone(), Utc::now().trunc_subsecs(3)))
        .await
        .unwrap()
        .id;

    let mut tasks = tokio::task::JoinSet::new();
    // Both members send from two tasks each, so that sends queue up for the group.
    for sender in [&member, &member, &owner, &owner] {
        let (store, group, sender) = (store.clone(), group.id.clone(), sender.clone());
        tasks.spawn(async move {
            for _ in 0..ROUNDS {
                let sent = store.append_to_group(&entry(&group, &sender, None)).await.expect("a group send");
                assert!(matches!(sent, GroupAppended::Created { .. }), "{sent:?}");
            }
        });
    }
    tasks.spawn({
        let (store, owner, member) = (store.clone(), owner.clone(), member.clone());
        async move {
            for i in 0..ROUNDS {
                let (from, to) = if i % 2 == 0 { (&member, &owner) } else { (&owner, &member) };
                let message = Message {
                    receiver_id: Some(to.clone()),
                    ..entry(&ConversationId::generate(), from, None)
                };
                let conversation = Conversation::start(
                    ParticipantPair::new(from.clone(), to.clone()).unwrap(),
                    message.created_at,
                );
                let sent = store.append(&conversation, &message).await.expect("a direct send");
                assert!(matches!(sent, Appended::Created(_)), "{sent:?}");
            }
        }
    });
    tasks.spawn(reads(store.clone(), group.id.clone(), member.clone()));
    tasks.spawn(reads(store.clone(), direct.clone(), member.clone()));
    tasks.spawn(reads(store.clone(), direct.clone(), owner.clone()));
    tasks.spawn(churn(store.clone(), group.id.clone(), owner.clone(), others.clone()));
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done.expect("a racing task");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("the racing writes end");

    let entries = store.entries(&group.id, 0, None, 100_000).await.unwrap();
    let state = store.state(&group.id).await.unwrap().unwrap();
    assert_eq!(entries.len() as u64, state.group.last_seq);
    assert!(entries.iter().zip(1..).all(|(entry, seq)| entry.seq() == seq));
    for user in [&owner, &member].into_iter().chain(&others) {
        let head = store.stream_head(user).await.unwrap();
        let stream = store.stream(user, Cursor::START, 100_000).await.unwrap();
        assert_eq!(stream.len() as u64, head.position(), "{user}'s stream is whole");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_writes_of_one_user_and_group_racing_all_end_gap_free() {
    on_sqlite("chat_group_locks", race).await;
}

/// A burst of sends into one group, all at once, so that they queue up for the group's
/// writer and are stored together: members' sends get consecutive seqs, a stranger's send and
/// a repeated client id store nothing, and each sender's read position is their last send.
async fn burst(store: Arc<dyn Store>) {
    let owner = user(&*store, "owner").await;
    let member = user(&*store, "member").await;
    let stranger = user(&*store, "stranger").await;
    let group = create_group(&*store, "Burst", &owner, &member).await;

    let repeated = domain::ClientMessageId::parse("repeated-key").unwrap();
    // First a burst the group's writer stores in one transaction, then one whose
    // transaction fails on the repeated client id, so that its sends are stored one by one.
    let mut expected = 1;
    for with_repeats in [false, true] {
        let mut sends = Vec::new();
        for i in 0..60 {
            let sender = match i % 3 {
                0 => &owner,
                1 => &member,
                _ if i % 9 == 2 => &stranger,
                _ => &member,
            };
            let mut message = entry(&group.id, sender, None);
            if with_repeats && (i == 4 || i == 7) {
                message.client_id = Some(repeated.clone());
            }
            sends.push(message);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, message) in sends.iter().cloned().enumerate() {
            let store = store.clone();
            tasks.spawn(async move { (i, store.append_to_group(&message).await.expect("a group send")) });
        }
        let mut outcomes = vec![None; sends.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, outcome) = done.expect("a send");
            outcomes[i] = Some(outcome);
        }
        let outcomes: Vec<GroupAppended> = outcomes.into_iter().map(Option::unwrap).collect();

        let mut stored = 0;
        let mut repeats = 0;
        for (message, outcome) in sends.iter().zip(&outcomes) {
            match outcome {
                GroupAppended::Created { message: kept, .. } => {
                    assert_ne!(message.sender_id, stranger, "a stranger's send is not stored");
                    assert_eq!(kept.id, message.id);
                    stored += 1;
                }
                GroupAppended::NotMember => assert_eq!(message.sender_id, stranger),
                GroupAppended::Existing(first) => {
                    assert_eq!(message.client_id.as_ref(), Some(&repeated));
                    assert_ne!(first.id, message.id);
                    repeats += 1;
                }
            }
        }
        assert_eq!(repeats, usize::from(with_repeats), "{outcomes:?}");
        let strangers = sends.iter().filter(|m| m.sender_id == stranger).count();
        assert_eq!(stored, sends.len() - strangers - repeats);
        expected += stored;
    }

    let entries = store.entries(&group.id, 0, None, 100_000).await.unwrap();
    assert_eq!(entries.len(), expected);
    assert!(entries.iter().zip(1..).all(|(entry, seq)| entry.seq() == seq), "seqs are consecutive");
    let state = store.state(&group.id).await.unwrap().unwrap();
    assert_eq!(state.group.last_seq, entries.len() as u64);
    for sender in [&owner, &member] {
        let last =
            entries.iter().filter_map(|e| e.message()).rfind(|entry| &entry.sender_id == sender).unwrap();
        assert_eq!(state.member(sender).unwrap().read_seq, last.seq, "{sender} has read their last send");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_burst_of_group_sends_is_stored_in_order() {
    on_sqlite("chat_group_burst", burst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_writes_of_one_user_and_group_racing_all_end_gap_free() {
    on_postgres("chat_group_locks", race).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_burst_of_group_sends_is_stored_in_order() {
    on_postgres("chat_group_burst", burst).await;
}
