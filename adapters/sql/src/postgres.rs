//! The PostgreSQL store, for deployments with several instances or larger data.

mod group_sends;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use application::ports::{stored_seq, RepoError, RepoResult, StoredMessage};
use domain::{Conversation, ConversationId, Member, Message, Timestamp, UserId};

use crate::changes::impl_changes;
use crate::error::repo_error;
use crate::groups::impl_groups;
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
    /// Group sends waiting for their group's writer (see [`group_sends`]).
    group_sends: Arc<group_sends::GroupSends>,
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
        Ok(Self { pool, group_sends: Arc::default() })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A whole send in one statement, so one round trip and one implicit transaction: upsert the
/// pair's conversation (moving its `updated_at`, last message and last seq forward: the
/// message's seq), take the next position of both users' streams, insert the message, store
/// both users as members if the conversation is new and move the sender's read position to
/// the message.
/// The conversation's row and the heads are row-locked until the statement commits, which
/// orders commits by seq per conversation and by position per user (docs/SYNC.md). The
/// statement locks the conversation (its `INSERT … ON CONFLICT`, read first by the main
/// query), then both heads in the pair's order (the subqueries), then the member rows (the
/// member CTEs, which nothing reads, run last): the order of src/groups.rs. A clash on the
/// sender's client message id fails the statement, undoing everything with it.
/// The sender's row is an upsert, not an `UPDATE`: an `UPDATE` would not see the rows of a
/// conversation that a racing first message of the pair committed after this statement began.
const APPEND: &str = "WITH conversation AS (\
        INSERT INTO conversations (id, kind, participant_a, participant_b, created_at, updated_at, \
            last_message_id, last_seq, members_version, member_count) \
        VALUES ($1, 'direct', $2, $3, $4, $5, $6, 1, 0, 2) \
        ON CONFLICT (participant_a, participant_b) \
        DO UPDATE SET updated_at = GREATEST(conversations.updated_at, excluded.updated_at), \
            last_message_id = GREATEST(conversations.last_message_id, excluded.last_message_id), \
            last_seq = conversations.last_seq + 1 \
        RETURNING id, created_at, last_seq), \
    heads AS (\
        INSERT INTO stream_heads (user_id, position) VALUES ($2, 1), ($3, 1) \
        ON CONFLICT (user_id) DO UPDATE SET position = stream_heads.position + 1 \
        RETURNING user_id, position), \
    sender AS (\
        INSERT INTO members (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq, last_read_message_id) \
        SELECT id, $7, 'direct', 'member', created_at, 1, last_seq, $6 FROM conversation \
        ON CONFLICT (conversation_id, user_id) DO UPDATE \
            SET read_seq = excluded.read_seq, last_read_message_id = excluded.last_read_message_id \
            WHERE members.read_seq < excluded.read_seq), \
    receiver AS (\
        INSERT INTO members (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq) \
        SELECT id, $8, 'direct', 'member', created_at, 1, 0 FROM conversation WHERE last_seq = 1 \
        ON CONFLICT (conversation_id, user_id) DO NOTHING) \
    INSERT INTO messages \
        (id, conversation_id, seq, sender_id, receiver_id, body, created_at, client_message_id, sender_position, receiver_position, \
        reply_to) \
    SELECT $6, conversation.id, conversation.last_seq, $7, $8, $9, $5, $10, \
        (SELECT position FROM heads WHERE user_id = $7), \
        (SELECT position FROM heads WHERE user_id = $8), $11 \
    FROM conversation \
    RETURNING conversation_id, seq, sender_position, receiver_position";

/// The unique index of `(sender_id, client_message_id)` (migration 0002).
const CLIENT_ID_INDEX: &str = "messages_client_id";

impl PgStore {
    async fn append_new(
        &self,
        conversation: &Conversation,
        message: &Message,
    ) -> RepoResult<Option<StoredMessage>> {
        let pair = &conversation.participants;
        let Some(receiver) = &message.receiver_id else {
            return Err(RepoError::Unexpected(anyhow::anyhow!("a direct message without a receiver")));
        };
        let row: Result<(String, i64, i64, i64), sqlx::Error> = sqlx::query_as(APPEND)
            .bind(conversation.id.as_str())
            .bind(pair.first().as_str())
            .bind(pair.second().as_str())
            .bind(conversation.created_at)
            .bind(message.created_at)
            .bind(message.id.as_str())
            .bind(message.sender_id.as_str())
            .bind(receiver.as_str())
            .bind(message.body.as_str())
            .bind(message.client_id.as_ref().map(|id| id.as_str()))
            .bind(message.reply_to.as_ref().map(|quote| quote.message_id.as_str()))
            .fetch_one(&self.pool)
            .await;
        match row {
            Ok((conversation_id, seq, sender_position, receiver_position)) => {
                let message = Message { seq: stored_seq(seq)?, ..message.clone() };
                StoredMessage::placed(&message, &conversation_id, sender_position, receiver_position)
                    .map(Some)
            }
            Err(sqlx::Error::Database(db)) if db.constraint() == Some(CLIENT_ID_INDEX) => Ok(None),
            Err(error) => Err(repo_error("storing a message")(error)),
        }
    }

    /// Stores a group message (see `MessageRepository::append_to_group`) with its seq and the
    /// group's membership version; `None`, with nothing written, when the sender is no member
    /// of the group or already stored a message with the same client id.
    async fn append_group_new(&self, message: &Message) -> RepoResult<Option<(Message, u64)>> {
        group_sends::append(&self.pool, &self.group_sends, message).await
    }

    /// `IN` a list bound as parameter `$n` (see [`PgStore::list`]).
    fn in_list(n: u8) -> String {
        format!("= ANY(${n})")
    }

    /// A list of ids as one parameter: an array.
    fn list(ids: Vec<String>) -> Vec<String> {
        ids
    }

    /// For each group of `$1` (an array, in its order) that exists: its ordinal in `$1`, id,
    /// member count and first `$2` members in joining order (one row each, or one row with a
    /// null member for a group without members), read along `members_joining`.
    const MEMBERS_PREVIEW: &str = "SELECT g.ordinal, c.id, c.member_count, m.user_id \
        FROM unnest($1::text[]) WITH ORDINALITY AS g (id, ordinal) \
        JOIN conversations c ON c.id = g.id AND c.kind = 'group' \
        LEFT JOIN LATERAL (SELECT user_id, joined_seq FROM members WHERE conversation_id = g.id \
            ORDER BY joined_seq, user_id LIMIT $2) AS m ON TRUE \
        ORDER BY g.ordinal, m.joined_seq, m.user_id";

    /// Takes the next position of each user's stream, in the given (ascending id) order, and
    /// stores there the notice of the kind named with them about `group` at `seq`; returns
    /// (user, position, kind) of each. One statement: the heads are locked in the order of
    /// the array (`ORDER BY ordinal`).
    async fn append_notices(
        connection: &mut PgConnection,
        group: &ConversationId,
        seq: i64,
        at: Timestamp,
        users: &[(&UserId, &'static str)],
    ) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = users.iter().map(|(user, _)| user.as_str()).collect();
        let kinds: Vec<&str> = users.iter().map(|(_, kind)| *kind).collect();
        sqlx::query_as(
            "WITH moving AS (\
                SELECT user_id, kind, ordinal FROM unnest($1::text[], $2::text[]) WITH ORDINALITY \
                    AS m (user_id, kind, ordinal)), \
            heads AS (\
                INSERT INTO stream_heads (user_id, position) \
                SELECT user_id, 1 FROM moving ORDER BY ordinal \
                ON CONFLICT (user_id) DO UPDATE SET position = stream_heads.position + 1 \
                RETURNING user_id, position) \
            INSERT INTO stream_notices (user_id, position, kind, conversation_id, seq, created_at) \
            SELECT heads.user_id, heads.position, moving.kind, $3, $4, $5 \
            FROM heads JOIN moving ON moving.user_id = heads.user_id \
            RETURNING user_id, position, kind",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(group.as_str())
        .bind(seq)
        .bind(at)
        .fetch_all(connection)
        .await
    }

    /// Stores `members` of the conversation, in one statement.
    async fn insert_members(
        connection: &mut PgConnection,
        conversation: &ConversationId,
        kind: &str,
        members: &[Member],
    ) -> Result<(), sqlx::Error> {
        if members.is_empty() {
            return Ok(());
        }
        let seq = |seq: u64| i64::try_from(seq).unwrap_or(i64::MAX);
        let users: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        let roles: Vec<&str> = members.iter().map(|m| m.role.as_str()).collect();
        let joined_at: Vec<Timestamp> = members.iter().map(|m| m.joined_at).collect();
        let joined_seq: Vec<i64> = members.iter().map(|m| seq(m.joined_seq)).collect();
        let read_seq: Vec<i64> = members.iter().map(|m| seq(m.read_seq)).collect();
        let last_read: Vec<Option<&str>> =
            members.iter().map(|m| m.last_read_message_id.as_ref().map(|id| id.as_str())).collect();
        sqlx::query(
            "INSERT INTO members \
                (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq, last_read_message_id) \
            SELECT $1, user_id, $2, role, joined_at, joined_seq, read_seq, last_read \
            FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::bigint[], $7::bigint[], $8::text[]) \
                AS m (user_id, role, joined_at, joined_seq, read_seq, last_read)",
        )
        .bind(conversation.as_str())
        .bind(kind)
        .bind(&users)
        .bind(&roles)
        .bind(&joined_at)
        .bind(&joined_seq)
        .bind(&read_seq)
        .bind(&last_read)
        .execute(connection)
        .await
        .map(|_| ())
    }
}

impl_repositories!(PgStore);
impl_groups!(PgStore, sqlx::Postgres);
impl_changes!(PgStore);
