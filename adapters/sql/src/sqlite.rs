//! The embedded SQLite store: one file, WAL journal, no server to run.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use application::ports::{RepoError, RepoResult, StoredMessage};
use domain::{Conversation, Message, UserId};
use sqlx::Connection as _;
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use crate::error::repo_error;
use crate::repositories::impl_repositories;

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

type AppendOutcome = RepoResult<Option<StoredMessage>>;

struct AppendJob {
    conversation: Conversation,
    message: Message,
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

    /// Hands the message to the writer task and waits for its transaction to commit.
    async fn append_new(&self, conversation: &Conversation, message: &Message) -> AppendOutcome {
        let (reply, outcome) = oneshot::channel();
        let job = AppendJob { conversation: conversation.clone(), message: message.clone(), reply };
        let stopped = || RepoError::Unavailable(anyhow::anyhow!("the SQLite writer has stopped"));
        self.appends.send(job).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Stores the pair's conversation if it has none, otherwise moves its `updated_at` forward;
/// either way returns the pair's conversation id.
const UPSERT_CONVERSATION: &str = "INSERT INTO conversations \
    (id, participant_a, participant_b, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (participant_a, participant_b) DO UPDATE SET updated_at = \
        MAX(conversations.updated_at, excluded.updated_at) \
    RETURNING id";
/// Inserts the message at the next position of both users' streams; the trigger of
/// migration 0003 moves the heads and the conversation's `updated_at` in the same statement.
/// No row comes back when the sender already stored a message with the same client id.
const INSERT_MESSAGE: &str = "INSERT INTO messages \
    (id, conversation_id, sender_id, receiver_id, body, created_at, client_message_id, sender_position, receiver_position) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, \
        COALESCE((SELECT position FROM stream_heads WHERE user_id = $3), 0) + 1, \
        COALESCE((SELECT position FROM stream_heads WHERE user_id = $4), 0) + 1) \
    ON CONFLICT (sender_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING \
    RETURNING sender_position, receiver_position";

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

/// Stores a new message inside the writer's transaction (see `MessageRepository::append`);
/// `None`, with nothing written, when the sender already stored one with the same client id.
/// Writes only, from the first statement on: SQLite takes its write lock at once instead of
/// upgrading a read lock (which could fail without waiting).
async fn append_in(
    connection: &mut SqliteConnection,
    known: &KnownConversations,
    conversation: &Conversation,
    message: &Message,
) -> AppendOutcome {
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
            id
        }
    };
    let positions: Option<(i64, i64)> = sqlx::query_as(INSERT_MESSAGE)
        .bind(message.id.as_str())
        .bind(&conversation_id)
        .bind(message.sender_id.as_str())
        .bind(message.receiver_id.as_str())
        .bind(message.body.as_str())
        .bind(message.created_at)
        .bind(message.client_id.as_ref().map(|id| id.as_str()))
        .fetch_optional(&mut *connection)
        .await
        .map_err(repo_error("inserting a message"))?;
    let Some((sender_position, receiver_position)) = positions else {
        return Ok(None);
    };
    StoredMessage::placed(message, &conversation_id, sender_position, receiver_position).map(Some)
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
            if let Ok(Some(stored)) = &outcome {
                known.remember(&job.conversation, stored.message.conversation_id.as_str());
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
        match append_in(&mut tx, known, &job.conversation, &job.message).await {
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
        let outcome = append_in(&mut savepoint, known, &job.conversation, &job.message).await;
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

impl_repositories!(SqliteStore);
