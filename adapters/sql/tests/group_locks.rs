//! The writes of one user and one group racing each other — group sends, reads of the group
//! and of a direct conversation, direct sends, and membership changes — all end, none is
//! refused for a deadlock, and every stream and the group's sequence stay gap-free. On
//! PostgreSQL this holds the writes to their lock order (see `src/groups.rs`): a send that
//! locked the group's row in a mode that also waits for a read's notice naming the group
//! would deadlock with that read.
//!
//! The PostgreSQL case needs a server at `CHAT_TEST_POSTGRES_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), where it creates and drops a database.

use std::sync::Arc;
use std::time::Duration;

use application::ports::{
    Appended, Changed, ConversationRepository, GroupAppended, GroupChange, GroupRepository,
    MessageRepository, ReadMoved, UserRepository,
};
use chrono::{SubsecRound as _, Utc};
use domain::{
    Avatar, Conversation, ConversationId, Cursor, FullName, Group, GroupName, Member, Message, MessageBody,
    MessageId, ParticipantPair, PasswordHash, Role, SystemEvent, User, UserId, Username,
};

trait Store: UserRepository + ConversationRepository + MessageRepository + GroupRepository + 'static {}
impl<S: UserRepository + ConversationRepository + MessageRepository + GroupRepository + 'static> Store for S {}

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
            match store.change(&group, &change).await.expect("a change") {
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
        if let Some(last) = last {
            match store.mark_read(&conversation, &reader, &last.id).await.expect("a read") {
                ReadMoved::Moved { .. } | ReadMoved::NotAhead { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        tokio::task::yield_now().await;
    }
}

async fn race(store: Arc<dyn Store>) {
    let owner = user(&*store, "owner").await;
    let member = user(&*store, "member").await;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(user(&*store, &format!("other{i}")).await);
    }
    let at = Utc::now().trunc_subsecs(3);
    let group = Group {
        id: ConversationId::generate(),
        name: GroupName::parse("Team").unwrap(),
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
        &owner,
        Some(SystemEvent::Created {
            actor: owner.clone(),
            name: group.name.clone(),
            members: vec![owner.clone(), member.clone()],
        }),
    );
    store.create(&group, &members, &created).await.expect("creating the group");
    let pair = ParticipantPair::new(owner.clone(), member.clone()).unwrap();
    let direct = store.find_or_insert(&Conversation::start(pair.clone(), at)).await.unwrap().id;

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (store, group, member) = (store.clone(), group.id.clone(), member.clone());
        async move {
            for _ in 0..ROUNDS {
                let sent = store.append_to_group(&entry(&group, &member, None)).await.expect("a group send");
                assert!(matches!(sent, GroupAppended::Created { .. }), "{sent:?}");
            }
        }
    });
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
    assert!(entries.iter().zip(1..).all(|(entry, seq)| entry.seq == seq));
    for user in [&owner, &member].into_iter().chain(&others) {
        let head = store.stream_head(user).await.unwrap();
        let stream = store.stream(user, Cursor::START, 100_000).await.unwrap();
        assert_eq!(stream.len() as u64, head.position(), "{user}'s stream is whole");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_writes_of_one_user_and_group_racing_all_end_gap_free() {
    let dir = std::env::temp_dir().join(format!("chat_group_locks_{}", UserId::generate()));
    let store = chat_sql::SqliteStore::connect(&chat_sql::SqliteOptions {
        url: format!("sqlite://{}", dir.join("chat.db").display()),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(30),
        synchronous: chat_sql::Synchronous::Normal,
    })
    .await
    .expect("opening the database");
    let store = Arc::new(store);
    race(store.clone()).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_writes_of_one_user_and_group_racing_all_end_gap_free() {
    use sqlx::postgres::PgPoolOptions;

    let admin_url = std::env::var("CHAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("chat_group_locks_{}", UserId::generate().as_str().replace('-', ""));
    let admin =
        PgPoolOptions::new().max_connections(1).connect(&admin_url).await.expect("reaching PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&admin).await.expect("creating a database");
    let url = match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("CHAT_TEST_POSTGRES_URL names no database: {admin_url}"),
    };
    let outcome = tokio::spawn(async move {
        let store = chat_sql::PgStore::connect(&chat_sql::PgOptions {
            url,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
            run_migrations: true,
        })
        .await
        .expect("opening the database");
        let store = Arc::new(store);
        race(store.clone()).await;
        store.close().await;
    })
    .await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&admin).await;
    admin.close().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
