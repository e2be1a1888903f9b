//! A database written before message changes existed keeps working after the changes
//! migration (SQLite 0006, PostgreSQL 0005): its messages read back as never changed, its
//! read and membership notices stay where they were in the streams (SQLite copies them into a
//! table built anew), the unread counts stay, and a change made afterwards takes the next seq
//! and the next position of both streams.
//!
//! The PostgreSQL case needs a server at `CHAT_TEST_POSTGRES_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), where it creates and drops a database.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use application::ports::{
    system_json, ChangeOutcome, ChangeRequest, ConversationRepository, GroupEntry, GroupRepository,
    MessageChangeRepository, MessageRepository, Notice, StreamEntry,
};
use chrono::{DateTime, Utc};
use domain::{
    Avatar, Change, ChangeKind, ConversationId, Cursor, EditWindow, Emoji, GroupName, MessageId, SystemEvent,
    UserId,
};
use sqlx::migrate::Migrator;

/// The migrations of `engine` before the changes migration, copied to a folder of their own.
fn migrations_before_changes(engine: &str, changes_version: i64) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(engine);
    let target =
        std::env::temp_dir().join(format!("chat_changes_migrations_{engine}_{}", UserId::generate()));
    std::fs::create_dir_all(&target).expect("creating a migrations folder");
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).expect("reading the migrations") {
        let path = entry.expect("a migration").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("a file name").to_owned();
        let version: i64 = name.split('_').next().and_then(|v| v.parse().ok()).expect("a numbered migration");
        if version < changes_version {
            std::fs::copy(&path, target.join(&name)).expect("copying a migration");
            copied += 1;
        }
    }
    assert_eq!(copied, changes_version - 1, "the migrations before the changes migration");
    target
}

fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + second, 0).expect("a timestamp in range")
}

/// What the old schema held: Ann and Ben with one direct message from Ann that Ben has read
/// (a read notice at Ben's position 2), and a group of Ann's (a joined notice at her
/// position 2).
struct Before {
    ann: UserId,
    ben: UserId,
    direct: ConversationId,
    group: ConversationId,
    hello: MessageId,
    created: MessageId,
}

impl Before {
    fn new() -> Self {
        let mut users = [UserId::generate(), UserId::generate()];
        users.sort();
        let [ann, ben] = users;
        Self {
            ann,
            ben,
            direct: ConversationId::generate(),
            group: ConversationId::generate(),
            hello: MessageId::generate(),
            created: MessageId::generate(),
        }
    }

    fn created_event(&self) -> SystemEvent {
        SystemEvent::Created {
            actor: self.ann.clone(),
            name: GroupName::parse("Old group").unwrap(),
            members: vec![self.ann.clone()],
        }
    }

    async fn check<S>(&self, store: &S)
    where
        S: ConversationRepository + MessageRepository + GroupRepository + MessageChangeRepository,
    {
        let (ann, ben) = (&self.ann, &self.ben);
        let history = store.list_by_conversation(&self.direct, 1, None, 10).await.unwrap();
        assert_eq!(history.len(), 1);
        let hello = &history[0];
        assert_eq!((&hello.id, hello.seq, hello.body.as_str()), (&self.hello, 1, "hello"));
        assert_eq!((&hello.changed, &hello.reply_to), (&None, &None), "an old message never changed");

        let stream = store.stream(ben, Cursor::START, 10).await.unwrap();
        assert_eq!(stream.len(), 2);
        assert!(matches!(&stream[0].entry, StreamEntry::Message(m) if m.id == self.hello));
        assert!(
            matches!(&stream[1].entry, StreamEntry::Notice(Notice::Read { seq: 1, message_id, .. }) if *message_id == self.hello),
            "{:?}",
            stream[1]
        );
        let stream = store.stream(ann, Cursor::START, 10).await.unwrap();
        assert!(
            matches!(&stream[1].entry, StreamEntry::Notice(Notice::Joined { group, seq: 1 }) if *group == self.group)
        );
        let groups = store.groups_at(ann, Cursor::new(2).unwrap()).await.unwrap();
        assert_eq!(groups.iter().map(|g| &g.group).collect::<Vec<_>>(), vec![&self.group]);
        for user in [ann, ben] {
            let list = store.page_for_user(user, None, 10).await.unwrap();
            assert!(list.iter().all(|summary| summary.unread == 0), "{user} has read everything");
        }
        let entries = store.entries(&self.group, 0, None, 10).await.unwrap();
        assert!(matches!(&entries[..], [GroupEntry::Message(m)] if m.id == self.created));

        // A change after the migration: the next seq, the next position of both streams.
        let thumbs = Emoji::parse("👍").unwrap();
        let request = ChangeRequest {
            conversation: self.direct.clone(),
            message: self.hello.clone(),
            actor: ben.clone(),
            change: Change::React(thumbs.clone()),
            at: Utc::now(),
            window: EditWindow::default(),
        };
        let ChangeOutcome::Changed(stored) = MessageChangeRepository::change(store, &request).await.unwrap()
        else {
            panic!("a reaction to an old message is stored")
        };
        assert_eq!(stored.update.change.seq, 2);
        assert_eq!(stored.update.change.kind, ChangeKind::ReactionAdded { emoji: thumbs });
        let positions: Vec<(&UserId, u64)> =
            stored.positions.iter().map(|p| (&p.user, p.cursor.position())).collect();
        assert_eq!(positions, vec![(ann, 3), (ben, 3)]);
        let stream = store.stream(ben, Cursor::new(2).unwrap(), 10).await.unwrap();
        assert!(
            matches!(&stream[..], [item] if matches!(&item.entry, StreamEntry::Update(u) if u.change.seq == 2))
        );
        let list = store.page_for_user(ann, None, 10).await.unwrap();
        assert!(list.iter().all(|summary| summary.unread == 0), "a change is never unread");
    }
}

/// Writes `$before` into the old schema through `$pool`, with the same SQL on both engines.
macro_rules! write_before {
    ($before:expr, $pool:expr) => {{
        let before: &Before = $before;
        let (ann, ben) = (&before.ann, &before.ben);
        for (user, name) in [(ann, "ann"), (ben, "ben")] {
            sqlx::query(
                "INSERT INTO users (id, username, username_lower, full_name, full_name_lower, gender, avatar, \
                    password_hash, created_at, updated_at) VALUES ($1, $2, $2, 'Old User', 'old user', NULL, $3, \
                    'hash', $4, $4)",
            )
            .bind(user.as_str())
            .bind(name)
            .bind(Avatar::default_for(user).as_str())
            .bind(at(0))
            .execute($pool)
            .await
            .expect("storing an old user");
        }
        sqlx::query(
            "INSERT INTO conversations (id, kind, participant_a, participant_b, created_at, updated_at, \
                last_message_id, last_seq, members_version, member_count) \
            VALUES ($1, 'direct', $2, $3, $4, $4, $5, 1, 0, 2)",
        )
        .bind(before.direct.as_str())
        .bind(ann.as_str())
        .bind(ben.as_str())
        .bind(at(1))
        .bind(before.hello.as_str())
        .execute($pool)
        .await
        .expect("storing an old conversation");
        sqlx::query(
            "INSERT INTO conversations (id, kind, name, created_by, created_at, updated_at, last_message_id, \
                last_seq, members_version, member_count) VALUES ($1, 'group', 'Old group', $2, $3, $3, $4, 1, 1, 1)",
        )
        .bind(before.group.as_str())
        .bind(ann.as_str())
        .bind(at(2))
        .bind(before.created.as_str())
        .execute($pool)
        .await
        .expect("storing an old group");
        for (conversation, user, kind, role, read_seq, last_read) in [
            (&before.direct, ann, "direct", "member", 1, &before.hello),
            (&before.direct, ben, "direct", "member", 1, &before.hello),
            (&before.group, ann, "group", "owner", 1, &before.created),
        ] {
            sqlx::query(
                "INSERT INTO members (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq, \
                    last_read_message_id) VALUES ($1, $2, $3, $4, $5, 1, $6, $7)",
            )
            .bind(conversation.as_str())
            .bind(user.as_str())
            .bind(kind)
            .bind(role)
            .bind(at(1))
            .bind(read_seq)
            .bind(last_read.as_str())
            .execute($pool)
            .await
            .expect("storing an old member");
        }
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, receiver_id, body, system, created_at, \
                client_message_id, sender_position, receiver_position) \
            VALUES ($1, $2, 1, $3, $4, 'hello', NULL, $5, NULL, 1, 1)",
        )
        .bind(before.hello.as_str())
        .bind(before.direct.as_str())
        .bind(ann.as_str())
        .bind(ben.as_str())
        .bind(at(1))
        .execute($pool)
        .await
        .expect("storing an old message");
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, receiver_id, body, system, created_at) \
            VALUES ($1, $2, 1, $3, NULL, 'Old group created', $4, $5)",
        )
        .bind(before.created.as_str())
        .bind(before.group.as_str())
        .bind(ann.as_str())
        .bind(system_json(&before.created_event()))
        .bind(at(2))
        .execute($pool)
        .await
        .expect("storing an old group entry");
        for (user, kind, conversation, message) in [
            (ann, "joined", &before.group, None),
            (ben, "read", &before.direct, Some(before.hello.as_str())),
        ] {
            sqlx::query(
                "INSERT INTO stream_notices (user_id, position, kind, conversation_id, seq, message_id, created_at) \
                VALUES ($1, 2, $2, $3, 1, $4, $5)",
            )
            .bind(user.as_str())
            .bind(kind)
            .bind(conversation.as_str())
            .bind(message)
            .bind(at(3))
            .execute($pool)
            .await
            .expect("storing an old notice");
        }
        for user in [ann, ben] {
            sqlx::query(
                "INSERT INTO stream_heads (user_id, position) VALUES ($1, 2) \
                ON CONFLICT (user_id) DO UPDATE SET position = excluded.position",
            )
            .bind(user.as_str())
            .execute($pool)
            .await
            .expect("storing an old stream head");
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_from_before_changes_reads_back_unchanged_and_takes_changes() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let dir = std::env::temp_dir().join(format!("chat_changes_migration_{}", UserId::generate()));
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
        let old = Migrator::new(migrations_before_changes("sqlite", 6)).await.expect("the old migrations");
        old.run(&pool).await.expect("applying the old migrations");
        write_before!(&before, &pool);
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
async fn postgres_data_from_before_changes_reads_back_unchanged_and_takes_changes() {
    use sqlx::postgres::PgPoolOptions;

    common::in_scratch_postgres("chat_changes_migration", |url| async move {
        let before = Before::new();
        let pool =
            PgPoolOptions::new().max_connections(1).connect(&url).await.expect("opening the old database");
        let old = Migrator::new(migrations_before_changes("postgres", 5)).await.expect("the old migrations");
        old.run(&pool).await.expect("applying the old migrations");
        write_before!(&before, &pool);
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
