//! Message changes racing on the SQL stores: fifty members reacting to one group message at
//! once are fifty changes at consecutive seqs, none refused or failed; and changes of a direct
//! message racing direct sends between the same two users (which lock the conversation's row
//! and both stream heads, as a change does) all end, none refused for a deadlock, with the
//! conversation's sequence and both users' streams without holes.
//!
//! The PostgreSQL cases need a server at `CHAT_TEST_POSTGRES_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), where they create and drop a database.

use std::sync::Arc;
use std::time::Duration;

use application::ports::{
    Appended, ChangeOutcome, ChangeRequest, GroupEntry, MessageChangeRepository, StreamEntry,
};
use chrono::{SubsecRound as _, Utc};
use domain::{
    Avatar, Change, ChangeKind, Content, Conversation, ConversationId, Cursor, EditWindow, Emoji, FullName,
    Group, GroupName, Member, Message, MessageBody, MessageId, ParticipantPair, PasswordHash, Role,
    SystemEvent, User, UserId, Username,
};

mod common;

use common::{on_postgres, on_sqlite, Store};

const PATIENCE: Duration = Duration::from_secs(120);

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

fn message(conversation: &ConversationId, from: &UserId, to: Option<&UserId>, text: &str) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: conversation.clone(),
        sender_id: from.clone(),
        receiver_id: to.cloned(),
        body: MessageBody::parse(text).unwrap(),
        system: None,
        seq: 0,
        created_at: Utc::now().trunc_subsecs(3),
        client_id: None,
    }
}

fn request(message: &Message, actor: &UserId, change: Change) -> ChangeRequest {
    ChangeRequest {
        conversation: message.conversation_id.clone(),
        message: message.id.clone(),
        actor: actor.clone(),
        change,
        at: Utc::now().trunc_subsecs(3),
        window: EditWindow::default(),
    }
}

/// A direct message from `from` to `to`, stored.
async fn send(store: &dyn Store, from: &UserId, to: &UserId, text: &str) -> Message {
    let message = message(&ConversationId::generate(), from, Some(to), text);
    let conversation =
        Conversation::start(ParticipantPair::new(from.clone(), to.clone()).unwrap(), message.created_at);
    match store.append(&conversation, &message).await.expect("a direct send") {
        Appended::Created(stored) => stored.message,
        other => panic!("{other:?}"),
    }
}

/// Every change of a group of fifty: each member reacts with the same emoji at the same time.
async fn fifty_reactions(store: Arc<dyn Store>) {
    let mut users = Vec::new();
    for i in 0..50 {
        users.push(user(&*store, &format!("reactor{i}")).await);
    }
    let owner = users[0].clone();
    let at = Utc::now().trunc_subsecs(3);
    let group = Group {
        id: ConversationId::generate(),
        name: GroupName::parse("Fifty").unwrap(),
        created_by: owner.clone(),
        created_at: at,
        updated_at: at,
        last_seq: 1,
    };
    let members: Vec<Member> = users
        .iter()
        .map(|user| {
            Member::joining(user.clone(), if *user == owner { Role::Owner } else { Role::Member }, at, 1)
        })
        .collect();
    let created = Message {
        system: Some(SystemEvent::Created {
            actor: owner.clone(),
            name: group.name.clone(),
            members: users.clone(),
        }),
        ..message(&group.id, &owner, None, "hello")
    };
    store.create(&group, &members, &created).await.expect("creating the group");
    let sent = match store.append_to_group(&message(&group.id, &owner, None, "react to me")).await.unwrap() {
        application::ports::GroupAppended::Created { message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert_eq!(sent.seq, 2);

    let thumbs = Emoji::parse("👍").unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for user in &users {
        let (store, request) = (store.clone(), request(&sent, user, Change::React(thumbs.clone())));
        tasks.spawn(async move { MessageChangeRepository::change(&*store, &request).await });
    }
    let mut seqs = Vec::new();
    let all = async {
        while let Some(done) = tasks.join_next().await {
            match done.expect("a reacting task").expect("a reaction is stored, never failed") {
                ChangeOutcome::Changed(stored) => {
                    assert!(stored.positions.is_empty(), "a group's change takes no stream position");
                    assert_eq!(stored.update.message.version(), stored.update.change.seq);
                    seqs.push(stored.update.change.seq);
                }
                other => panic!("every reaction is a change of its own: {other:?}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, all).await.expect("the reactions end");
    seqs.sort_unstable();
    assert_eq!(seqs, (3..53).collect::<Vec<_>>(), "fifty consecutive seqs after the message");

    let now = MessageChangeRepository::find(&*store, &sent.id).await.unwrap().expect("the message");
    let Content::Live { reactions, .. } = now.content() else { panic!("the message is not deleted") };
    assert_eq!(reactions.count(&thumbs), 50);
    assert_eq!(now.version(), 52);
    let entries = store.entries(&group.id, 0, None, 1_000).await.unwrap();
    assert_eq!(entries.len(), 52);
    assert!(entries.iter().zip(1..).all(|(entry, seq)| entry.seq() == seq), "the sequence has no hole");
    for entry in &entries[2..] {
        let GroupEntry::Update(update) = entry else { panic!("a change entry: {entry:?}") };
        assert_eq!(update.change.kind, ChangeKind::ReactionAdded { emoji: thumbs.clone() });
        assert_eq!(update.message.id, sent.id);
    }
    let mut actors: Vec<&UserId> = entries[2..]
        .iter()
        .map(|entry| match entry {
            GroupEntry::Update(update) => &update.change.actor,
            GroupEntry::Message(message) => panic!("{message:?}"),
        })
        .collect();
    actors.sort();
    let mut expected: Vec<&UserId> = users.iter().collect();
    expected.sort();
    assert_eq!(actors, expected, "each member's reaction once");
}

const ROUNDS: usize = 150;

/// Both users of a direct conversation send to each other while one edits a message of theirs
/// and the other reacts to it and takes the reaction back, over and over.
async fn changes_racing_direct_sends(store: Arc<dyn Store>) {
    let a = user(&*store, "alice").await;
    let b = user(&*store, "bob").await;
    let target = send(&*store, &a, &b, "version 0").await;
    let conversation = target.conversation_id.clone();

    let mut tasks = tokio::task::JoinSet::new();
    for (from, to) in [(&a, &b), (&b, &a), (&a, &b), (&b, &a)] {
        let (store, from, to) = (store.clone(), from.clone(), to.clone());
        tasks.spawn(async move {
            for i in 0..ROUNDS {
                send(&*store, &from, &to, &format!("message {i}")).await;
            }
        });
    }
    tasks.spawn({
        let (store, target, a) = (store.clone(), target.clone(), a.clone());
        async move {
            for i in 1..=ROUNDS {
                let edit =
                    request(&target, &a, Change::Edit(MessageBody::parse(&format!("version {i}")).unwrap()));
                let outcome = MessageChangeRepository::change(&*store, &edit)
                    .await
                    .expect("an edit is stored, never failed");
                assert!(matches!(outcome, ChangeOutcome::Changed(_)), "{outcome:?}");
            }
        }
    });
    tasks.spawn({
        let (store, target, a, b) = (store.clone(), target.clone(), a.clone(), b.clone());
        async move {
            let heart = Emoji::parse("❤️").unwrap();
            for i in 0..ROUNDS {
                let change = match i % 2 {
                    0 => Change::React(heart.clone()),
                    _ => Change::Unreact(heart.clone()),
                };
                let outcome = MessageChangeRepository::change(&*store, &request(&target, &b, change))
                    .await
                    .expect("a reaction, never failed");
                let ChangeOutcome::Changed(stored) = outcome else { panic!("{outcome:?}") };
                assert_eq!(stored.positions.len(), 2, "a direct change takes a position in both streams");
                assert_eq!(stored.positions[0].user, a, "the sender's position first");
                assert_eq!(stored.positions[1].user, b);
            }
        }
    });
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done.expect("a racing task");
        }
    };
    tokio::time::timeout(PATIENCE, all).await.expect("the racing writes end");

    let entries = store.entries(&conversation, 0, None, 100_000).await.unwrap();
    let sends = 1 + 4 * ROUNDS;
    let changes = 2 * ROUNDS;
    assert_eq!(entries.len(), sends + changes, "every send and change is an entry");
    assert!(entries.iter().zip(1..).all(|(entry, seq)| entry.seq() == seq), "the sequence has no hole");
    for user in [&a, &b] {
        let head = store.stream_head(user).await.unwrap();
        let stream = store.stream(user, Cursor::START, 100_000).await.unwrap();
        assert_eq!(stream.len() as u64, head.position(), "{user}'s stream is whole");
        let updates = stream.iter().filter(|item| matches!(item.entry, StreamEntry::Update(_))).count();
        assert_eq!(updates, changes, "{user}'s stream holds every change once");
    }
    let now = MessageChangeRepository::find(&*store, &target.id).await.unwrap().expect("the message");
    assert_eq!(now.text().map(MessageBody::as_str), Some(format!("version {ROUNDS}").as_str()));
    let last_change = entries
        .iter()
        .filter_map(|entry| match entry {
            GroupEntry::Update(update) => Some(update.change.seq),
            GroupEntry::Message(_) => None,
        })
        .max();
    assert_eq!(Some(now.version()), last_change, "the message's version is its last change's seq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_fifty_members_reacting_at_once_are_fifty_consecutive_changes() {
    on_postgres("chat_fifty_reactions", fifty_reactions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_direct_changes_racing_sends_all_end_without_holes() {
    on_postgres("chat_direct_changes", changes_racing_direct_sends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_fifty_members_reacting_at_once_are_fifty_consecutive_changes() {
    on_sqlite("chat_fifty_reactions", fifty_reactions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_direct_changes_racing_sends_all_end_without_holes() {
    on_sqlite("chat_direct_changes", changes_racing_direct_sends).await;
}
