//! The repository ports, written once for both engines.
//!
//! The SQL is identical for SQLite and PostgreSQL, but sqlx's types are per engine, so the
//! implementations are stamped out by a macro for each store rather than made generic over
//! `sqlx::Database` (whose trait bounds would drown the queries).

/// SELECT list of a user row.
pub(crate) const USER_COLUMNS: &str =
    "id, username, full_name, gender, avatar, password_hash, created_at, updated_at";

pub(crate) const INSERT_USER: &str = "INSERT INTO users \
    (id, username, username_lower, full_name, full_name_lower, gender, avatar, password_hash, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(crate) const INSERT_NAME_WORD: &str =
    "INSERT INTO user_name_words (word, username_lower, user_id) VALUES ($1, $2, $3)";
pub(crate) const LIST_USERS: &str =
    "SELECT id, username, full_name, gender, avatar, password_hash, created_at, updated_at \
    FROM users WHERE id <> $1 AND username_lower > $2 \
    ORDER BY username_lower LIMIT $3";
/// One page of the users whose lower-cased username, or one of whose name words, lies in the
/// prefix's range [`$3`, `$5`), after `$2`, without `$1`: the first `$4` by username of each
/// side, each read from one range of its index (`users_username_lower`; the primary key of
/// `user_name_words`, which holds the username, so that the words side is ordered and cut
/// without reading user rows), merged, and the page's rows read by id. So a prefix costs the
/// index entries it matches at most, never a scan of every user. A prefix without an upper
/// bound gets a text of its own rather than `($5 IS NULL OR ...)`, which would keep
/// PostgreSQL's generic plan from using the range.
macro_rules! search_users_sql {
    ($username_below:literal, $word_below:literal) => {
        concat!(
            "SELECT id, username, full_name, gender, avatar, password_hash, created_at, updated_at \
            FROM users WHERE id IN (\
                SELECT id FROM (SELECT username_lower, id FROM users \
                    WHERE username_lower >= $3",
            $username_below,
            " AND username_lower > $2 AND id <> $1 ORDER BY username_lower LIMIT $4) AS by_username \
                UNION \
                SELECT user_id FROM (SELECT DISTINCT username_lower, user_id FROM user_name_words \
                    WHERE word >= $3",
            $word_below,
            " AND username_lower > $2 AND user_id <> $1 ORDER BY username_lower LIMIT $4) AS by_word) \
            ORDER BY username_lower LIMIT $4"
        )
    };
}
pub(crate) const SEARCH_USERS: &str = search_users_sql!(" AND username_lower < $5", " AND word < $5");
pub(crate) const SEARCH_USERS_UNBOUNDED: &str = search_users_sql!("", "");
pub(crate) const INSERT_CONVERSATION: &str = "INSERT INTO conversations \
    (id, participant_a, participant_b, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (participant_a, participant_b) DO NOTHING";
pub(crate) const FIND_CONVERSATION: &str = "SELECT id, participant_a, participant_b, created_at, updated_at \
    FROM conversations WHERE participant_a = $1 AND participant_b = $2";
/// One page of a user's conversations (see `ConversationRepository::page_for_user`) with
/// their last messages: the first `$2` in key order of each side of the pair (`$1` as
/// `participant_a`, then as `participant_b`), each read backwards along its index
/// (`conversations_a_recent`, `conversations_b_recent`) from the cursor `($3, $4, $5)` on,
/// merged and cut to `$2`, then joined with their last message by id. The first page gets a
/// text without the cursor.
macro_rules! conversations_sql {
    ($after:literal) => {
        concat!(
            "SELECT c.id, c.participant_a, c.participant_b, c.created_at, c.updated_at, \
            m.id AS m_id, m.sender_id AS m_sender_id, m.receiver_id AS m_receiver_id, m.body AS m_body, \
            m.created_at AS m_created_at, m.client_message_id AS m_client_message_id \
            FROM (\
                SELECT * FROM (SELECT id, participant_a, participant_b, created_at, updated_at, last_message_id \
                    FROM conversations WHERE participant_a = $1",
            $after,
            " ORDER BY updated_at DESC, last_message_id DESC, id DESC LIMIT $2) AS a \
                UNION ALL \
                SELECT * FROM (SELECT id, participant_a, participant_b, created_at, updated_at, last_message_id \
                    FROM conversations WHERE participant_b = $1",
            $after,
            " ORDER BY updated_at DESC, last_message_id DESC, id DESC LIMIT $2) AS b \
                ORDER BY updated_at DESC, last_message_id DESC, id DESC LIMIT $2) AS c \
            LEFT JOIN messages m ON m.id = c.last_message_id \
            ORDER BY c.updated_at DESC, c.last_message_id DESC, c.id DESC"
        )
    };
}
pub(crate) const CONVERSATIONS: &str = conversations_sql!("");
pub(crate) const CONVERSATIONS_AFTER: &str =
    conversations_sql!(" AND (updated_at, last_message_id, id) < ($3, $4, $5)");
/// One history page in one statement (see `ConversationRepository::page`): the pair's
/// conversation, found through `conversations_pair`, left-joined with its newest `$3`
/// messages, taken newest first through `messages_conversation_id` and returned oldest
/// first. One row per message, or a single row with null message columns when the page is
/// empty; no row when the pair has no conversation. SQLite has no `LATERAL`, so the messages
/// find the conversation's id through the CTE rather than through the join (PostgreSQL
/// reads the CTE once; SQLite inlines it, probing the pair index twice). `$4`, the
/// `before` cursor, gets a text of its own: `($4 IS NULL OR id < $4)` would leave
/// PostgreSQL's generic plan of the prepared statement scanning the conversation from its
/// newest message down to the cursor, instead of starting there.
macro_rules! page_sql {
    ($before:literal) => {
        concat!(
            "WITH c AS (SELECT id, participant_a, participant_b, created_at, updated_at \
                FROM conversations WHERE participant_a = $1 AND participant_b = $2) \
            SELECT c.id, c.participant_a, c.participant_b, c.created_at, c.updated_at, \
            m.id AS m_id, m.sender_id AS m_sender_id, m.receiver_id AS m_receiver_id, m.body AS m_body, \
            m.created_at AS m_created_at, m.client_message_id AS m_client_message_id \
            FROM c LEFT JOIN (\
                SELECT id, sender_id, receiver_id, body, created_at, client_message_id FROM messages \
                WHERE conversation_id = (SELECT id FROM c)",
            $before,
            " ORDER BY id DESC LIMIT $3) AS m ON TRUE \
            ORDER BY m.id"
        )
    };
}
pub(crate) const PAGE: &str = page_sql!("");
pub(crate) const PAGE_BEFORE: &str = page_sql!(" AND id < $4");
pub(crate) const FIND_BY_CLIENT_ID: &str =
    "SELECT id, conversation_id, sender_id, receiver_id, body, created_at, \
    client_message_id, sender_position, receiver_position \
    FROM messages WHERE sender_id = $1 AND client_message_id = $2";
pub(crate) const LIST_MESSAGES: &str = "SELECT * FROM (\
    SELECT id, conversation_id, sender_id, receiver_id, body, created_at, client_message_id FROM messages \
    WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2) AS page ORDER BY id";
pub(crate) const LIST_MESSAGES_BEFORE: &str = "SELECT * FROM (\
    SELECT id, conversation_id, sender_id, receiver_id, body, created_at, client_message_id FROM messages \
    WHERE conversation_id = $1 AND id < $3 ORDER BY id DESC LIMIT $2) AS page ORDER BY id";
/// The user's stream after a position: the messages they sent merged with those they
/// received, each side read through its own index and cut to the limit before the merge.
pub(crate) const STREAM: &str = "SELECT * FROM (\
    SELECT id, conversation_id, sender_id, receiver_id, body, created_at, client_message_id, sender_position AS position \
    FROM messages WHERE sender_id = $1 AND sender_position > $2 ORDER BY sender_position LIMIT $3) AS sent \
    UNION ALL SELECT * FROM (\
    SELECT id, conversation_id, sender_id, receiver_id, body, created_at, client_message_id, receiver_position AS position \
    FROM messages WHERE receiver_id = $1 AND receiver_position > $2 ORDER BY receiver_position LIMIT $3) AS received \
    ORDER BY position LIMIT $3";
pub(crate) const REVOKE_TOKEN: &str = "INSERT INTO revoked_tokens (token_id, expires_at) VALUES ($1, $2) \
    ON CONFLICT (token_id) DO NOTHING";

macro_rules! impl_repositories {
    ($store:ty) => {
        const _: () = {
            use application::ports::{
                name_words, Appended, ConversationKey, ConversationPage, ConversationRepository,
                ConversationSummary, HealthCheck, MessageRepository, RepoError, RepoResult, Revocation,
                RevokedTokenRepository, StoredMessage, StreamItem, UserQuery, UserRepository,
            };
            use async_trait::async_trait;
            use domain::{
                Conversation, ConversationId, Cursor, Message, MessageId, ParticipantPair,
                Timestamp, User, UserId, Username,
            };
            use $crate::error::repo_error;
            use $crate::repositories::*;
            use $crate::rows::{
                conversation_page, ConversationMessageRow, ConversationRow, MessageRow, StoredRow,
                StreamRow, UserRow,
            };

            #[async_trait]
            impl UserRepository for $store {
                async fn insert(&self, user: &User) -> RepoResult<()> {
                    // The user and the name words a search finds them by, together.
                    let mut tx = self.pool.begin().await.map_err(repo_error("inserting a user"))?;
                    sqlx::query(INSERT_USER)
                        .bind(user.id.as_str())
                        .bind(user.username.as_str())
                        .bind(user.username.normalized())
                        .bind(user.full_name.as_str())
                        .bind(user.full_name.as_str().to_lowercase())
                        .bind(user.gender.map(|g| g.as_str()))
                        .bind(user.avatar.as_str())
                        .bind(user.password_hash.as_str())
                        .bind(user.created_at)
                        .bind(user.updated_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error("inserting a user"))?;
                    for word in name_words(user.full_name.as_str()) {
                        sqlx::query(INSERT_NAME_WORD)
                            .bind(word)
                            .bind(user.username.normalized())
                            .bind(user.id.as_str())
                            .execute(&mut *tx)
                            .await
                            .map_err(repo_error("inserting a user's name words"))?;
                    }
                    tx.commit().await.map_err(repo_error("inserting a user"))?;
                    Ok(())
                }

                async fn find_by_id(&self, id: &UserId) -> RepoResult<Option<User>> {
                    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                    sqlx::query_as::<_, UserRow>(&sql)
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("finding a user by id"))?
                        .map(User::try_from)
                        .transpose()
                }

                async fn find_by_username(&self, username: &Username) -> RepoResult<Option<User>> {
                    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username_lower = $1");
                    sqlx::query_as::<_, UserRow>(&sql)
                        .bind(username.normalized())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("finding a user by username"))?
                        .map(User::try_from)
                        .transpose()
                }

                async fn list(&self, query: &UserQuery) -> RepoResult<Vec<User>> {
                    let after = query.after_username.as_deref().unwrap_or("");
                    let limit = i64::from(query.limit);
                    let statement = match &query.search {
                        None => sqlx::query_as::<_, UserRow>(LIST_USERS)
                            .bind(query.exclude.as_str())
                            .bind(after)
                            .bind(limit),
                        Some(prefix) => {
                            let statement = sqlx::query_as::<_, UserRow>(match prefix.to {
                                Some(_) => SEARCH_USERS,
                                None => SEARCH_USERS_UNBOUNDED,
                            })
                            .bind(query.exclude.as_str())
                            .bind(after)
                            .bind(prefix.from.as_str())
                            .bind(limit);
                            match &prefix.to {
                                Some(to) => statement.bind(to.as_str()),
                                None => statement,
                            }
                        }
                    };
                    statement
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("listing users"))?
                        .into_iter()
                        .map(User::try_from)
                        .collect()
                }
            }

            #[async_trait]
            impl ConversationRepository for $store {
                async fn find_or_insert(&self, candidate: &Conversation) -> RepoResult<Conversation> {
                    // Insert-if-absent, then read whichever row won: the unique pair index
                    // settles a race between both users' first messages.
                    let pair = &candidate.participants;
                    sqlx::query(INSERT_CONVERSATION)
                        .bind(candidate.id.as_str())
                        .bind(pair.first().as_str())
                        .bind(pair.second().as_str())
                        .bind(candidate.created_at)
                        .bind(candidate.updated_at)
                        .execute(&self.pool)
                        .await
                        .map_err(repo_error("inserting a conversation"))?;
                    self.find_by_participants(pair).await?.ok_or_else(|| {
                        application::ports::RepoError::Unexpected(anyhow::anyhow!(
                            "conversation vanished right after its insert"
                        ))
                    })
                }

                async fn find_by_participants(
                    &self,
                    pair: &ParticipantPair,
                ) -> RepoResult<Option<Conversation>> {
                    sqlx::query_as::<_, ConversationRow>(FIND_CONVERSATION)
                        .bind(pair.first().as_str())
                        .bind(pair.second().as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("finding a conversation"))?
                        .map(Conversation::try_from)
                        .transpose()
                }

                async fn page(
                    &self,
                    pair: &ParticipantPair,
                    before: Option<MessageId>,
                    limit: u32,
                ) -> RepoResult<Option<ConversationPage>> {
                    let query = match &before {
                        None => sqlx::query_as::<_, ConversationMessageRow>(PAGE)
                            .bind(pair.first().as_str())
                            .bind(pair.second().as_str())
                            .bind(i64::from(limit)),
                        Some(before) => sqlx::query_as::<_, ConversationMessageRow>(PAGE_BEFORE)
                            .bind(pair.first().as_str())
                            .bind(pair.second().as_str())
                            .bind(i64::from(limit))
                            .bind(before.as_str()),
                    };
                    let rows = query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("reading a conversation page"))?;
                    conversation_page(rows)
                }

                async fn page_for_user(
                    &self,
                    user: &UserId,
                    after: Option<ConversationKey>,
                    limit: u32,
                ) -> RepoResult<Vec<ConversationSummary>> {
                    let statement = match &after {
                        None => sqlx::query_as::<_, ConversationMessageRow>(CONVERSATIONS)
                            .bind(user.as_str())
                            .bind(i64::from(limit)),
                        Some(after) => sqlx::query_as::<_, ConversationMessageRow>(CONVERSATIONS_AFTER)
                            .bind(user.as_str())
                            .bind(i64::from(limit))
                            .bind(after.updated_at)
                            // '' stands for "no message" in the table too.
                            .bind(after.last_message.as_ref().map_or("", MessageId::as_str))
                            .bind(after.id.as_str()),
                    };
                    statement
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("listing conversations"))?
                        .into_iter()
                        .map(ConversationSummary::try_from)
                        .collect()
                }
            }

            #[async_trait]
            impl MessageRepository for $store {
                async fn append(
                    &self,
                    conversation: &Conversation,
                    message: &Message,
                ) -> RepoResult<Appended> {
                    if let Some(earlier) = self.find_by_client_id(message).await? {
                        return Ok(Appended::Existing(earlier));
                    }
                    match self.append_new(conversation, message).await? {
                        Some(stored) => Ok(Appended::Created(stored)),
                        // A racing retry with the same client id committed first.
                        None => self.find_by_client_id(message).await?.map(Appended::Existing).ok_or_else(|| {
                            RepoError::Unexpected(anyhow::anyhow!("client message id clashed but is not stored"))
                        }),
                    }
                }

                async fn list_by_conversation(
                    &self,
                    conversation: &ConversationId,
                    before: Option<MessageId>,
                    limit: u32,
                ) -> RepoResult<Vec<Message>> {
                    let query = match &before {
                        None => sqlx::query_as::<_, MessageRow>(LIST_MESSAGES)
                            .bind(conversation.as_str())
                            .bind(i64::from(limit)),
                        Some(before) => sqlx::query_as::<_, MessageRow>(LIST_MESSAGES_BEFORE)
                            .bind(conversation.as_str())
                            .bind(i64::from(limit))
                            .bind(before.as_str()),
                    };
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("listing messages"))?
                        .into_iter()
                        .map(Message::try_from)
                        .collect()
                }

                async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>> {
                    let rows = sqlx::query_as::<_, StreamRow>(STREAM)
                        .bind(user.as_str())
                        .bind(i64::from(after))
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("reading a message stream"))?;
                    let items = rows.into_iter().map(StreamItem::try_from).collect::<RepoResult<Vec<_>>>()?;
                    let read = items.len();
                    let run = application::ports::consecutive_after(after, items);
                    if run.len() < read {
                        // One statement, one snapshot: a hole here is a broken store.
                        tracing::error!(user = %user, after = %after, "message stream has a hole; reading stops before it");
                    }
                    Ok(run)
                }

                async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor> {
                    let head: Option<(i64,)> = sqlx::query_as("SELECT position FROM stream_heads WHERE user_id = $1")
                        .bind(user.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("reading a stream head"))?;
                    head.map_or(Ok(Cursor::START), |(position,)| application::ports::stored_cursor(position))
                }
            }

            impl $store {
                /// The sender's earlier message with the same client id, if any.
                async fn find_by_client_id(&self, message: &Message) -> RepoResult<Option<StoredMessage>> {
                    let Some(client_id) = &message.client_id else { return Ok(None) };
                    sqlx::query_as::<_, StoredRow>(FIND_BY_CLIENT_ID)
                        .bind(message.sender_id.as_str())
                        .bind(client_id.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("finding a message by client id"))?
                        .map(StoredMessage::try_from)
                        .transpose()
                }
            }

            #[async_trait]
            impl RevokedTokenRepository for $store {
                async fn revoke(&self, token_id: &str, expires_at: Timestamp) -> RepoResult<()> {
                    sqlx::query(REVOKE_TOKEN)
                        .bind(token_id)
                        .bind(expires_at)
                        .execute(&self.pool)
                        .await
                        .map_err(repo_error("revoking a token"))?;
                    Ok(())
                }

                async fn is_revoked(&self, token_id: &str) -> RepoResult<bool> {
                    let found: Option<(i32,)> =
                        sqlx::query_as("SELECT 1 FROM revoked_tokens WHERE token_id = $1")
                            .bind(token_id)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(repo_error("checking a token's revocation"))?;
                    Ok(found.is_some())
                }

                async fn active(&self, now: Timestamp) -> RepoResult<Vec<Revocation>> {
                    let rows: Vec<(String, Timestamp)> =
                        sqlx::query_as("SELECT token_id, expires_at FROM revoked_tokens WHERE expires_at >= $1")
                            .bind(now)
                            .fetch_all(&self.pool)
                            .await
                            .map_err(repo_error("listing active revocations"))?;
                    Ok(rows
                        .into_iter()
                        .map(|(token_id, expires_at)| Revocation { token_id, expires_at })
                        .collect())
                }

                async fn purge_expired(&self, now: Timestamp) -> RepoResult<u64> {
                    let done = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
                        .bind(now)
                        .execute(&self.pool)
                        .await
                        .map_err(repo_error("purging expired revocations"))?;
                    Ok(done.rows_affected())
                }
            }

            #[async_trait]
            impl HealthCheck for $store {
                async fn ping(&self) -> RepoResult<()> {
                    sqlx::query("SELECT 1")
                        .execute(&self.pool)
                        .await
                        .map_err(repo_error("pinging the database"))?;
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use impl_repositories;
