//! A database written before groups existed keeps working after the groups migration
//! (SQLite 0005, PostgreSQL 0004): every message gets its conversation's seq in id order,
//! every conversation its two members with everything read, and streams, cursors and sends
//! carry on from where they were.
//!
//! The PostgreSQL case needs a server at `CHAT_TEST_POSTGRES_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), where it creates and drops a database.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use application::ports::{Appended, ConversationRepository, GroupRepository, MessageRepository, ReadMoved};
use chrono::{DateTime, Utc};
use domain::{
    Chat, Conversation, ConversationId, Cursor, Message, MessageBody, MessageId, ParticipantPair, Role,
    UserId,
};
use sqlx::migrate::Migrator;

/// The migrations of `engine` before the groups migration, copied to a folder of their own.
fn migrations_before_groups(engine: &str, groups_version: i64) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(engine);
    let target = std::env::temp_dir().join(format!("chat_migrations_{engine}_{}", UserId::generate()));
    std::fs::create_dir_all(&target).expect("creating a migrations folder");
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).expect("reading the migrations") {
        let path = entry.expect("a migration").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("a file name").to_owned();
        let version: i64 = name.split('_').next().and_then(|v| v.parse().ok()).expect("a numbered migration");
        if version < groups_version {
            std::fs::copy(&path, target.join(&name)).expect("copying a migration");
            copied += 1;
        }
    }
    assert_eq!(copied, groups_version - 1, "the migrations before the groups migration");
    target
}

fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + second, 0).expect("a timestamp in range")
}

/// What the old schema held: three users, two conversations with messages (stored out of id
/// order, so that stream positions and seqs differ), one conversation without any.
struct Before {
    users: [UserId; 3],
    ab: ConversationId,
    ac: ConversationId,
    bc: ConversationId,
    /// By id: m1 < m2 < m3 in `ab`, m4 in `ac`.
    messages: [MessageId; 4],
}

impl Before {
    fn new() -> Self {
        let mut users = [UserId::generate(), UserId::generate(), UserId::generate()];
        users.sort();
        let mut messages =
            [MessageId::generate(), MessageId::generate(), MessageId::generate(), MessageId::generate()];
        messages.sort();
        Self {
            users,
            ab: ConversationId::generate(),
            ac: ConversationId::generate(),
            bc: ConversationId::generate(),
            messages,
        }
    }

    /// Reads everything back through the ports, then carries on with new sends and reads.
    async fn check<S>(&self, store: &S)
    where
        S: ConversationRepository + MessageRepository + GroupRepository,
    {
        let [a, b, c] = &self.users;
        let [m1, m2, m3, m4] = &self.messages;

        let last_seq = |chat: Option<Chat>| match chat {
            Some(Chat::Direct(conversation)) => conversation.last_seq,
            other => panic!("expected a direct conversation, got {other:?}"),
        };
        assert_eq!(last_seq(store.find(&self.ab).await.unwrap()), 3);
        assert_eq!(last_seq(store.find(&self.ac).await.unwrap()), 1);
        assert_eq!(last_seq(store.find(&self.bc).await.unwrap()), 0);

        let history = store.list_by_conversation(&self.ab, 1, None, 10).await.unwrap();
        let seqs: Vec<(&MessageId, u64)> = history.iter().map(|m| (&m.id, m.seq)).collect();
        assert_eq!(seqs, [(m1, 1), (m2, 2), (m3, 3)], "seqs in id order");
        assert!(history.iter().all(|m| m.system.is_none() && m.receiver_id.is_some()));
        let entries = store.entries(&self.ab, 1, None, 10).await.unwrap();
        assert_eq!(entries.iter().filter_map(|e| e.message()).map(|m| &m.id).collect::<Vec<_>>(), [m2, m3]);

        for (conversation, user, read, last_read) in [
            (&self.ab, a, 3, Some(m3)),
            (&self.ab, b, 3, Some(m3)),
            (&self.ac, a, 1, Some(m4)),
            (&self.ac, c, 1, Some(m4)),
            (&self.bc, b, 0, None),
            (&self.bc, c, 0, None),
        ] {
            let member = store.member(conversation, user).await.unwrap().expect("a member");
            assert_eq!(
                (member.role, member.joined_seq, member.read_seq, member.last_read_message_id.as_ref()),
                (Role::Member, 1, read, last_read),
                "{conversation} {user}"
            );
            assert_eq!(member.joined_at, at(1));
        }
        assert_eq!(store.member(&self.ab, c).await.unwrap(), None);

        let list = store.list_for_user(a).await.unwrap();
        let summaries: Vec<(&ConversationId, u64, Option<&MessageId>)> = list
            .iter()
            .map(|s| (s.conversation.id(), s.unread(), s.last_message.as_ref().map(|m| &m.id)))
            .collect();
        assert_eq!(summaries, [(&self.ac, 0, Some(m4)), (&self.ab, 0, Some(m3))]);
        assert_eq!(store.list_for_user(c).await.unwrap().len(), 2, "with the one without messages");

        let stream = store.stream(a, Cursor::START, 10).await.unwrap();
        let positions: Vec<(u64, &MessageId, u64)> = stream
            .iter()
            .map(|item| {
                let message = item.message().expect("a message");
                (item.cursor.position(), &message.id, message.seq)
            })
            .collect();
        assert_eq!(positions, [(1, m1, 1), (2, m3, 3), (3, m2, 2), (4, m4, 1)]);
        assert!(store.groups_at(a, Cursor::new(4).unwrap()).await.unwrap().is_empty());

        // A send carries on: the next seq, the next positions, read by its sender only.
        let pair = ParticipantPair::new(a.clone(), b.clone()).unwrap();
        let message = Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: a.clone(),
            receiver_id: Some(b.clone()),
            body: MessageBody::parse("after the upgrade").unwrap(),
            system: None,
            seq: 0,
            created_at: at(20),
            client_id: None,
        };
        let stored = match store.append(&Conversation::start(pair, at(20)), &message).await.unwrap() {
            Appended::Created(stored) => stored,
            Appended::Existing(earlier) => panic!("stored before: {earlier:?}"),
        };
        assert_eq!(stored.message.conversation_id, self.ab);
        assert_eq!(stored.message.seq, 4);
        assert_eq!((stored.sender_cursor.position(), stored.receiver_cursor.position()), (5, 4));
        let unread: Vec<u64> = store.list_for_user(b).await.unwrap().iter().map(|s| s.unread()).collect();
        assert_eq!(unread, [1, 0], "bob: the new message in ab, nothing in bc");
        assert_eq!(store.member(&self.ab, a).await.unwrap().unwrap().read_seq, 4);

        let moved = store.mark_read(&self.ab, b, &message.id).await.unwrap();
        assert_eq!(moved, ReadMoved::Moved { seq: 4, cursor: Cursor::new(5).unwrap() });
        assert_eq!(store.stream_head(b).await.unwrap(), Cursor::new(5).unwrap());
        let unread: Vec<u64> = store.list_for_user(b).await.unwrap().iter().map(|s| s.unread()).collect();
        assert_eq!(unread, [0, 0]);
    }
}

/// Writes `$before` into `$pool` with the statements of the old schema (the same text on
/// both engines).
macro_rules! write_before {
    ($before:expr, $pool:expr) => {{
        let [a, b, c] = &$before.users;
        for (user, name) in [(a, "alice"), (b, "bob"), (c, "carol")] {
            sqlx::query(
                "INSERT INTO users (id, username, username_lower, full_name, full_name_lower, gender, avatar, \
                    password_hash, created_at, updated_at) VALUES ($1, $2, $2, $2, $2, NULL, '', 'hash', $3, $3)",
            )
            .bind(user.as_str())
            .bind(name)
            .bind(at(0))
            .execute($pool)
            .await
            .expect("storing an old user");
        }
        for (conversation, first, second) in [(&$before.ab, a, b), (&$before.ac, a, c), (&$before.bc, b, c)] {
            sqlx::query(
                "INSERT INTO conversations (id, participant_a, participant_b, created_at, updated_at) \
                VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(conversation.as_str())
            .bind(first.as_str())
            .bind(second.as_str())
            .bind(at(1))
            .execute($pool)
            .await
            .expect("storing an old conversation");
        }
        let [m1, m2, m3, m4] = &$before.messages;
        // Stored in the order m1, m3, m2, m4: positions follow the storing, seqs the ids.
        let sends = [
            (m1, &$before.ab, a, b, 1, 1, 10),
            (m3, &$before.ab, a, b, 2, 2, 12),
            (m2, &$before.ab, b, a, 3, 3, 11),
            (m4, &$before.ac, a, c, 4, 1, 13),
        ];
        for (id, conversation, from, to, sender_position, receiver_position, second) in sends {
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, sender_id, receiver_id, body, created_at, \
                    client_message_id, sender_position, receiver_position) VALUES ($1, $2, $3, $4, 'hello', $5, NULL, $6, $7)",
            )
            .bind(id.as_str())
            .bind(conversation.as_str())
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(at(second))
            .bind(sender_position)
            .bind(receiver_position)
            .execute($pool)
            .await
            .expect("storing an old message");
        }
        // What the old send statements kept along (SQLite's trigger did it already).
        for (user, head) in [(a, 4), (b, 3), (c, 1)] {
            sqlx::query(
                "INSERT INTO stream_heads (user_id, position) VALUES ($1, $2) \
                ON CONFLICT (user_id) DO UPDATE SET position = excluded.position",
            )
            .bind(user.as_str())
            .bind(head)
            .execute($pool)
            .await
            .expect("storing an old stream head");
        }
        sqlx::query(
            "UPDATE conversations SET \
                last_message_id = COALESCE((SELECT MAX(id) FROM messages WHERE conversation_id = conversations.id), ''), \
                updated_at = COALESCE((SELECT MAX(created_at) FROM messages WHERE conversation_id = conversations.id), \
                    updated_at)",
        )
        .execute($pool)
        .await
        .expect("storing old last messages");
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_from_before_groups_gets_seqs_members_and_read_positions() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let dir = std::env::temp_dir().join(format!("chat_groups_migration_{}", UserId::generate()));
    std::fs::create_dir_all(&dir).expect("creating a temporary folder");
    let url = format!("sqlite://{}", dir.join("chat.db").display());
    let before = Before::new();
    {
        let options: SqliteConnectOptions = url.parse().expect("a SQLite URL");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.create_if_missing(true).foreign_keys(true))
            .await
            .expect("opening the old database");
        let old = Migrator::new(migrations_before_groups("sqlite", 5)).await.expect("the old migrations");
        old.run(&pool).await.expect("applying the old migrations");
        write_before!(before, &pool);
        pool.close().await;
    }
    let store = chat_sql::SqliteStore::connect(&chat_sql::SqliteOptions {
        url,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
        synchronous: chat_sql::Synchronous::Normal,
    })
    .await
    .expect("opening and migrating the database");
    before.check(&store).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_data_from_before_groups_gets_seqs_members_and_read_positions() {
    use sqlx::postgres::PgPoolOptions;

    common::in_scratch_postgres("chat_groups_migration", |url| async move {
        let before = Before::new();
        let pool =
            PgPoolOptions::new().max_connections(1).connect(&url).await.expect("opening the old database");
        let old = Migrator::new(migrations_before_groups("postgres", 4)).await.expect("the old migrations");
        old.run(&pool).await.expect("applying the old migrations");
        write_before!(before, &pool);
        pool.close().await;
        let store = chat_sql::PgStore::connect(&chat_sql::PgOptions {
            url: url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            run_migrations: true,
        })
        .await
        .expect("opening and migrating the database");
        before.check(&store).await;
        store.close().await;
    })
    .await;
}
