//! The embedded SQLite store: one file, WAL journal, no server to run.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use application::ports::{stored_seq, RepoError, RepoResult, StoredMessage};
use domain::{Conversation, ConversationId, Member, Message, Timestamp, UserId};
use sqlx::Connection as _;
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use crate::changes::impl_changes;
use crate::error::repo_error;
use crate::groups::impl_groups;
use crate::repositories::{impl_repositories, INSERT_DIRECT_MEMBERS, MOVE_READ};

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// A commit survives a power cut: the WAL is synced on every commit.
    #[default]
    Full,
    /// A commit survives a process crash but perhaps not a power cut; much faster.
    Normal,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `sqlite://path/to/file.db` (`sqlite::memory:` is for throw-away runs only).
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection (and SQLite for a lock) before giving up.
    pub acquire_timeout: Duration,
    pub synchronous: Synchronous,
}

pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// Sends are written by one task, many per transaction (see [`write_batches`]).
    appends: mpsc::Sender<AppendJob>,
}

/// Most messages committed by one transaction.
const MAX_BATCH: usize = 256;

/// A send, stored as new (`None`: not stored, see [`append_in`]).
type AppendOutcome = RepoResult<Option<Stored>>;

enum Append {
    /// A direct message, and the conversation for its pair in case it has none.
    Direct { conversation: Conversation, message: Message },
    /// A group message (its `conversation_id` names the group).
    Group { message: Message },
}

enum Stored {
    Direct(StoredMessage),
    /// At its seq, under the group's membership version.
    Group {
        message: Message,
        version: u64,
    },
}

struct AppendJob {
    append: Append,
    reply: oneshot::Sender<AppendOutcome>,
}

impl SqliteStore {
    /// Opens (creating the file and its folder if needed) and migrates the database.
    pub async fn connect(options: &SqliteOptions) -> anyhow::Result<Self> {
        let connect = SqliteConnectOptions::from_str(&options.url)
            .with_context(|| format!("invalid SQLite URL {:?}", options.url))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(options.acquire_timeout)
            .foreign_keys(true);
        let file = connect.get_filename().to_path_buf();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            if file.as_path() != Path::new(":memory:") {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the database folder {}", dir.display()))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            // No ping before every query: a broken connection fails its query (answered
            // "unavailable") and is dropped, which costs less than a round trip per query.
            .test_before_acquire(false)
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .with_context(|| format!("cannot open the SQLite database {}", file.display()))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .context("cannot apply the SQLite migrations")?;
        let (appends, jobs) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_batches(pool.clone(), jobs));
        Ok(Self { pool, appends })
    }

    /// Hands the send to the writer task and waits for its transaction to commit.
    async fn write(&self, append: Append) -> AppendOutcome {
        let (reply, outcome) = oneshot::channel();
        let stopped = || RepoError::Unavailable(anyhow::anyhow!("the SQLite writer has stopped"));
        self.appends.send(AppendJob { append, reply }).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Stores a direct message (see `MessageRepository::append`); `None`, with nothing
    /// written, when the sender already stored a message with the same client id.
    async fn append_new(
        &self,
        conversation: &Conversation,
        message: &Message,
    ) -> RepoResult<Option<StoredMessage>> {
        let append = Append::Direct { conversation: conversation.clone(), message: message.clone() };
        match self.write(append).await? {
            Some(Stored::Direct(stored)) => Ok(Some(stored)),
            Some(Stored::Group { .. }) => {
                Err(RepoError::Unexpected(anyhow::anyhow!("a direct send stored as a group's")))
            }
            None => Ok(None),
        }
    }

    /// Stores a group message (see `MessageRepository::append_to_group`) with its seq and the
    /// group's membership version; `None`, with nothing written, when the sender is no member
    /// of the group or already stored a message with the same client id.
    async fn append_group_new(&self, message: &Message) -> RepoResult<Option<(Message, u64)>> {
        match self.write(Append::Group { message: message.clone() }).await? {
            Some(Stored::Group { message, version }) => Ok(Some((message, version))),
            Some(Stored::Direct(_)) => {
                Err(RepoError::Unexpected(anyhow::anyhow!("a group send stored as a direct one")))
            }
            None => Ok(None),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Stores the pair's conversation if it has none, otherwise moves its `updated_at` forward;
/// either way returns the pair's conversation id.
const UPSERT_CONVERSATION: &str = "INSERT INTO conversations \
    (id, kind, participant_a, participant_b, created_at, updated_at, last_seq, members_version, member_count) \
    VALUES ($1, 'direct', $2, $3, $4, $5, 0, 0, 2) \
    ON CONFLICT (participant_a, participant_b) DO UPDATE SET updated_at = \
        MAX(conversations.updated_at, excluded.updated_at) \
    RETURNING id";
/// Inserts the message at its conversation's next seq and the next position of both users'
/// streams; the trigger of migration 0005 moves the heads, the conversation's `updated_at`,
/// last message and last seq, and the sender's read position in the same statement.
/// No row comes back when the sender already stored a message with the same client id.
const INSERT_MESSAGE: &str = "INSERT INTO messages \
    (id, conversation_id, seq, sender_id, receiver_id, body, created_at, client_message_id, sender_position, \
        receiver_position, reply_to) \
    VALUES ($1, $2, (SELECT last_seq FROM conversations WHERE id = $2) + 1, $3, $4, $5, $6, $7, \
        COALESCE((SELECT position FROM stream_heads WHERE user_id = $3), 0) + 1, \
        COALESCE((SELECT position FROM stream_heads WHERE user_id = $4), 0) + 1, $8) \
    ON CONFLICT (sender_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING \
    RETURNING seq, sender_position, receiver_position";
/// Inserts a group message at the group's next seq if the sender is a member. No row comes
/// back when they are not, or already stored a message with the same client id.
const INSERT_GROUP_MESSAGE: &str = "INSERT INTO messages \
    (id, conversation_id, seq, sender_id, body, created_at, client_message_id, reply_to) \
    SELECT $1, id, last_seq + 1, $3, $4, $5, $6, $7 FROM conversations \
    WHERE id = $2 AND kind = 'group' \
        AND EXISTS (SELECT 1 FROM members WHERE conversation_id = $2 AND user_id = $3) \
    ON CONFLICT (sender_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING \
    RETURNING seq";
/// Moves the group to its new entry (seq `$2`, time `$3`, id `$4`).
const MOVE_GROUP: &str = "UPDATE conversations SET last_seq = $2, \
    updated_at = MAX(updated_at, $3), last_message_id = MAX(last_message_id, $4) \
    WHERE id = $1 RETURNING members_version";

/// The conversation id of every pair the writer has stored a message of: conversations are
/// never deleted and keep their id, so a pair found here needs no conversation statement
/// (the trigger moves `updated_at`). Filled only after a commit, so it never names a
/// conversation that was rolled back; forgotten wholesale when it grows past a bound.
#[derive(Default)]
struct KnownConversations(HashMap<(UserId, UserId), String>);

impl KnownConversations {
    const CAPACITY: usize = 100_000;

    fn get(&self, conversation: &Conversation) -> Option<&str> {
        self.0.get(&Self::key(conversation)).map(String::as_str)
    }

    fn remember(&mut self, conversation: &Conversation, id: &str) {
        if self.0.len() >= Self::CAPACITY {
            self.0.clear();
        }
        self.0.insert(Self::key(conversation), id.to_owned());
    }

    fn key(conversation: &Conversation) -> (UserId, UserId) {
        let pair = &conversation.participants;
        (pair.first().clone(), pair.second().clone())
    }
}

/// Stores a send inside the writer's transaction; `None`, with nothing written, when it is
/// not stored as new: its sender already stored a message with the same client id, or (in a
/// group) is no member.
/// Writes only, from the first statement on: SQLite takes its write lock at once instead of
/// upgrading a read lock (which could fail without waiting).
async fn append_in(
    connection: &mut SqliteConnection,
    known: &KnownConversations,
    append: &Append,
) -> AppendOutcome {
    match append {
        Append::Direct { conversation, message } => {
            append_direct_in(connection, known, conversation, message).await.map(|s| s.map(Stored::Direct))
        }
        Append::Group { message } => append_group_in(connection, message).await,
    }
}

async fn append_direct_in(
    connection: &mut SqliteConnection,
    known: &KnownConversations,
    conversation: &Conversation,
    message: &Message,
) -> RepoResult<Option<StoredMessage>> {
    let Some(receiver) = &message.receiver_id else {
        return Err(RepoError::Unexpected(anyhow::anyhow!("a direct message without a receiver")));
    };
    let conversation_id = match known.get(conversation) {
        Some(id) => id.to_owned(),
        None => {
            let pair = &conversation.participants;
            let (id,): (String,) = sqlx::query_as(UPSERT_CONVERSATION)
                .bind(conversation.id.as_str())
                .bind(pair.first().as_str())
                .bind(pair.second().as_str())
                .bind(conversation.created_at)
                .bind(message.created_at)
                .fetch_one(&mut *connection)
                .await
                .map_err(repo_error("storing a message's conversation"))?;
            sqlx::query(INSERT_DIRECT_MEMBERS)
                .bind(pair.first().as_str())
                .bind(pair.second().as_str())
                .execute(&mut *connection)
                .await
                .map_err(repo_error("storing a conversation's members"))?;
            id
        }
    };
    let placed: Option<(i64, i64, i64)> = sqlx::query_as(INSERT_MESSAGE)
        .bind(message.id.as_str())
        .bind(&conversation_id)
        .bind(message.sender_id.as_str())
        .bind(receiver.as_str())
        .bind(message.body.as_str())
        .bind(message.created_at)
        .bind(message.client_id.as_ref().map(|id| id.as_str()))
        .bind(message.reply_to.as_ref().map(|quote| quote.message_id.as_str()))
        .fetch_optional(&mut *connection)
        .await
        .map_err(repo_error("inserting a message"))?;
    let Some((seq, sender_position, receiver_position)) = placed else {
        return Ok(None);
    };
    let message = Message { seq: stored_seq(seq)?, ..message.clone() };
    StoredMessage::placed(&message, &conversation_id, sender_position, receiver_position).map(Some)
}

async fn append_group_in(connection: &mut SqliteConnection, message: &Message) -> AppendOutcome {
    let group = message.conversation_id.as_str();
    let seq: Option<(i64,)> = sqlx::query_as(INSERT_GROUP_MESSAGE)
        .bind(message.id.as_str())
        .bind(group)
        .bind(message.sender_id.as_str())
        .bind(message.body.as_str())
        .bind(message.created_at)
        .bind(message.client_id.as_ref().map(|id| id.as_str()))
        .bind(message.reply_to.as_ref().map(|quote| quote.message_id.as_str()))
        .fetch_optional(&mut *connection)
        .await
        .map_err(repo_error("inserting a group message"))?;
    let Some((seq,)) = seq else { return Ok(None) };
    let (version,): (i64,) = sqlx::query_as(MOVE_GROUP)
        .bind(group)
        .bind(seq)
        .bind(message.created_at)
        .bind(message.id.as_str())
        .fetch_one(&mut *connection)
        .await
        .map_err(repo_error("moving a group to its message"))?;
    sqlx::query(MOVE_READ)
        .bind(group)
        .bind(message.sender_id.as_str())
        .bind(seq)
        .bind(message.id.as_str())
        .execute(&mut *connection)
        .await
        .map_err(repo_error("moving the sender's read position"))?;
    let message = Message { seq: stored_seq(seq)?, receiver_id: None, system: None, ..message.clone() };
    Ok(Some(Stored::Group { message, version: stored_seq(version)? }))
}

/// Group commit. SQLite runs one write transaction at a time and a durable commit waits for
/// the disk, so committing each send on its own caps sends per second at the disk's syncs per
/// second. Instead one task takes every send waiting at that moment (up to [`MAX_BATCH`]),
/// stores them in one transaction and commits them with one sync; nobody is answered before
/// that commit. Should one of them not be stored as new, the batch is stored again with each
/// send in its own savepoint, so that only that one is rolled back. Positions are still taken in commit
/// order, as there is one writer.
async fn write_batches(pool: SqlitePool, mut jobs: mpsc::Receiver<AppendJob>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut known = KnownConversations::default();
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A sender that gave up (its deadline passed) gets nothing stored behind its back.
        batch.retain(|job| !job.reply.is_closed());
        let outcomes = commit_batch(&pool, &known, &batch).await;
        for (job, outcome) in batch.drain(..).zip(outcomes) {
            if let (Append::Direct { conversation, .. }, Ok(Some(Stored::Direct(stored)))) =
                (&job.append, &outcome)
            {
                known.remember(conversation, stored.message.conversation_id.as_str());
            }
            let _ = job.reply.send(outcome);
        }
    }
}

async fn commit_batch(
    pool: &SqlitePool,
    known: &KnownConversations,
    batch: &[AppendJob],
) -> Vec<AppendOutcome> {
    if batch.is_empty() {
        return Vec::new();
    }
    match commit_all(pool, known, batch).await {
        Some(outcomes) => outcomes,
        None => commit_each(pool, known, batch).await,
    }
}

/// The common case, every send of the batch stored: one transaction without savepoints (two
/// statements less per send). `None`, with nothing stored, as soon as one send is not
/// stored as new (a repeated client id, an error): the caller then goes through
/// [`commit_each`], which stores every other send all the same.
async fn commit_all(
    pool: &SqlitePool,
    known: &KnownConversations,
    batch: &[AppendJob],
) -> Option<Vec<AppendOutcome>> {
    let mut tx = pool.begin().await.ok()?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        match append_in(&mut tx, known, &job.append).await {
            Ok(Some(stored)) => outcomes.push(Ok(Some(stored))),
            Ok(None) | Err(_) => {
                // Rolled back now, not when the connection is next used: until then it would
                // hold the write lock that the second pass needs.
                let _ = tx.rollback().await;
                return None;
            }
        }
    }
    Some(match tx.commit().await {
        Ok(()) => outcomes,
        Err(error) => fail_all(batch.len(), &repo_error("committing messages")(error)),
    })
}

/// Each send in its own savepoint of one transaction, so a send that is not stored as new
/// is rolled back alone.
async fn commit_each(
    pool: &SqlitePool,
    known: &KnownConversations,
    batch: &[AppendJob],
) -> Vec<AppendOutcome> {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(error) => return fail_all(batch.len(), &repo_error("starting a send")(error)),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let mut savepoint = match tx.begin().await {
            Ok(savepoint) => savepoint,
            Err(error) => return fail_all(batch.len(), &repo_error("starting a send")(error)),
        };
        let outcome = append_in(&mut savepoint, known, &job.append).await;
        let ended = match &outcome {
            Ok(Some(_)) => savepoint.commit().await,
            Ok(None) | Err(_) => savepoint.rollback().await,
        };
        if let Err(error) = ended {
            return fail_all(batch.len(), &repo_error("ending a send's savepoint")(error));
        }
        outcomes.push(outcome);
    }
    match tx.commit().await {
        Ok(()) => outcomes,
        Err(error) => fail_all(batch.len(), &repo_error("committing messages")(error)),
    }
}

/// The same failure for every send of a batch.
fn fail_all(count: usize, error: &RepoError) -> Vec<AppendOutcome> {
    (0..count)
        .map(|_| {
            Err(match error {
                RepoError::Conflict => RepoError::Conflict,
                RepoError::Unavailable(cause) => RepoError::Unavailable(anyhow::anyhow!("{cause:#}")),
                RepoError::Unexpected(cause) => RepoError::Unexpected(anyhow::anyhow!("{cause:#}")),
            })
        })
        .collect()
}

impl SqliteStore {
    /// `IN` a list bound as parameter `$n` (see [`SqliteStore::list`]).
    fn in_list(n: u8) -> String {
        format!("IN (SELECT value FROM json_each(${n}))")
    }

    /// A list of ids as one parameter: a JSON array.
    fn list(ids: Vec<String>) -> String {
        serde_json::Value::from(ids).to_string()
    }

    /// For each group of `$1` (a JSON array, in its order) that exists: its ordinal in `$1`,
    /// id, member count and first `$2` members in joining order (one row each, or one row with
    /// a null member for a group without members), read along `members_joining`.
    const MEMBERS_PREVIEW: &str = "SELECT g.key, c.id, c.member_count, m.user_id \
        FROM json_each($1) AS g \
        JOIN conversations c ON c.id = g.value AND c.kind = 'group' \
        LEFT JOIN members m ON m.conversation_id = c.id AND m.user_id IN (\
            SELECT user_id FROM members WHERE conversation_id = c.id ORDER BY joined_seq, user_id LIMIT $2) \
        ORDER BY g.key, m.joined_seq, m.user_id";

    /// Takes the next position of each user's stream and stores there the notice of the kind
    /// named with them about `group` at `seq`; returns (user, position, kind) of each. (One
    /// writer at a time: the order of the heads does not matter here.)
    async fn append_notices(
        connection: &mut SqliteConnection,
        group: &ConversationId,
        seq: i64,
        at: Timestamp,
        users: &[(&UserId, &'static str)],
    ) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids = Self::list(users.iter().map(|(user, _)| user.as_str().to_owned()).collect());
        let kinds =
            serde_json::Value::from(users.iter().map(|(_, kind)| *kind).collect::<Vec<_>>()).to_string();
        sqlx::query(
            "INSERT INTO stream_heads (user_id, position) SELECT value, 1 FROM json_each($1) WHERE TRUE \
            ON CONFLICT (user_id) DO UPDATE SET position = stream_heads.position + 1",
        )
        .bind(&ids)
        .execute(&mut *connection)
        .await?;
        sqlx::query_as(
            "INSERT INTO stream_notices (user_id, position, kind, conversation_id, seq, created_at) \
            SELECT h.user_id, h.position, k.value, $3, $4, $5 \
            FROM json_each($1) AS u JOIN json_each($2) AS k ON k.key = u.key \
                JOIN stream_heads h ON h.user_id = u.value \
            RETURNING user_id, position, kind",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(group.as_str())
        .bind(seq)
        .bind(at)
        .fetch_all(&mut *connection)
        .await
    }

    /// Stores `members` of the conversation (one statement each: SQLite runs in-process).
    async fn insert_members(
        connection: &mut SqliteConnection,
        conversation: &ConversationId,
        kind: &str,
        members: &[Member],
    ) -> Result<(), sqlx::Error> {
        let seq = |seq: u64| i64::try_from(seq).unwrap_or(i64::MAX);
        for member in members {
            sqlx::query(
                "INSERT INTO members \
                    (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq, last_read_message_id) \
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(conversation.as_str())
            .bind(member.user_id.as_str())
            .bind(kind)
            .bind(member.role.as_str())
            .bind(member.joined_at)
            .bind(seq(member.joined_seq))
            .bind(seq(member.read_seq))
            .bind(member.last_read_message_id.as_ref().map(|id| id.as_str()))
            .execute(&mut *connection)
            .await?;
        }
        Ok(())
    }
}

impl_repositories!(SqliteStore);
impl_groups!(SqliteStore, sqlx::Sqlite);
impl_changes!(SqliteStore);
