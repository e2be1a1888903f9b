//! The PostgreSQL store, for deployments with several instances or larger data.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use application::ports::{RepoResult, StoredMessage};
use domain::{Conversation, Message};

use crate::error::repo_error;
use crate::repositories::impl_repositories;

#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database`
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered "unavailable".
    pub acquire_timeout: Duration,
    /// Apply the embedded migrations at start (turn off where a DBA applies them).
    pub run_migrations: bool,
}

pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl PgStore {
    pub async fn connect(options: &PgOptions) -> anyhow::Result<Self> {
        let connect: PgConnectOptions = options.url.parse().context("invalid PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            // No ping before every query: a broken connection fails its query (answered
            // "unavailable") and is dropped, which costs less than a round trip per query.
            .test_before_acquire(false)
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .context("cannot connect to PostgreSQL")?;
        if options.run_migrations {
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .context("cannot apply the PostgreSQL migrations")?;
        }
        Ok(Self { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A whole send in one statement, so one round trip and one implicit transaction: upsert the
/// pair's conversation (moving its `updated_at` and last message forward), take the next
/// position of both users' streams, insert the message.
/// The heads are row-locked until the statement commits, which orders commits by position
/// per user (docs/SYNC.md). Two sends share at most one head unless they are of the same
/// pair, and those run the same plan, so locks are never taken in a cycle. A clash on the
/// sender's client message id fails the statement, undoing the positions with it.
const APPEND: &str = "WITH conversation AS (\
        INSERT INTO conversations (id, participant_a, participant_b, created_at, updated_at, last_message_id) \
        VALUES ($1, $2, $3, $4, $5, $6) \
        ON CONFLICT (participant_a, participant_b) \
        DO UPDATE SET updated_at = GREATEST(conversations.updated_at, excluded.updated_at), \
            last_message_id = GREATEST(conversations.last_message_id, excluded.last_message_id) \
        RETURNING id), \
    heads AS (\
        INSERT INTO stream_heads (user_id, position) VALUES ($2, 1), ($3, 1) \
        ON CONFLICT (user_id) DO UPDATE SET position = stream_heads.position + 1 \
        RETURNING user_id, position) \
    INSERT INTO messages \
        (id, conversation_id, sender_id, receiver_id, body, created_at, client_message_id, sender_position, receiver_position) \
    SELECT $6, conversation.id, $7, $8, $9, $5, $10, \
        (SELECT position FROM heads WHERE user_id = $7), \
        (SELECT position FROM heads WHERE user_id = $8) \
    FROM conversation \
    RETURNING conversation_id, sender_position, receiver_position";

/// The unique index of `(sender_id, client_message_id)` (migration 0002).
const CLIENT_ID_INDEX: &str = "messages_client_id";

impl PgStore {
    async fn append_new(
        &self,
        conversation: &Conversation,
        message: &Message,
    ) -> RepoResult<Option<StoredMessage>> {
        let pair = &conversation.participants;
        let row: Result<(String, i64, i64), sqlx::Error> = sqlx::query_as(APPEND)
            .bind(conversation.id.as_str())
            .bind(pair.first().as_str())
            .bind(pair.second().as_str())
            .bind(conversation.created_at)
            .bind(message.created_at)
            .bind(message.id.as_str())
            .bind(message.sender_id.as_str())
            .bind(message.receiver_id.as_str())
            .bind(message.body.as_str())
            .bind(message.client_id.as_ref().map(|id| id.as_str()))
            .fetch_one(&self.pool)
            .await;
        match row {
            Ok((conversation_id, sender_position, receiver_position)) => {
                StoredMessage::placed(message, &conversation_id, sender_position, receiver_position).map(Some)
            }
            Err(sqlx::Error::Database(db)) if db.constraint() == Some(CLIENT_ID_INDEX) => Ok(None),
            Err(error) => Err(repo_error("storing a message")(error)),
        }
    }
}

impl_repositories!(PgStore);
