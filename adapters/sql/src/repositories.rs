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
/// The columns of an entry as it stands now (`rows::MessageRow`): of `messages m`, left-joined
/// with the message it answers as `messages r` (`LEFT JOIN messages r ON r.id = m.reply_to`).
macro_rules! message_columns {
    () => {
        "m.id, m.conversation_id, m.seq, m.sender_id, m.receiver_id, m.body, m.system, m.created_at, \
        m.client_message_id, m.reply_to, r.sender_id AS reply_sender_id, r.body AS reply_body, \
        r.deleted_at AS reply_deleted_at, m.version, m.edited_at, m.deleted_at, m.deleted_by, m.reactions"
    };
}
/// The same columns `m_`-prefixed, for an entry joined to other rows (`rows::JoinedMessageRow`),
/// without its conversation id.
macro_rules! joined_message_columns {
    () => {
        "m.id AS m_id, m.seq AS m_seq, m.sender_id AS m_sender_id, m.receiver_id AS m_receiver_id, \
        m.body AS m_body, m.system AS m_system, m.created_at AS m_created_at, \
        m.client_message_id AS m_client_message_id, m.reply_to AS m_reply_to, \
        r.sender_id AS m_reply_sender_id, r.body AS m_reply_body, r.deleted_at AS m_reply_deleted_at, \
        m.version AS m_version, m.edited_at AS m_edited_at, m.deleted_at AS m_deleted_at, \
        m.deleted_by AS m_deleted_by, m.reactions AS m_reactions"
    };
}
/// The columns of the change entry `x` joined to a row (`rows::ChangeColumns`).
macro_rules! change_columns {
    () => {
        "x.actor_id AS x_actor_id, x.kind AS x_kind, x.emoji AS x_emoji, x.created_at AS x_created_at"
    };
}
/// The columns of a conversation of either kind (`rows::ChatRow`).
macro_rules! chat_columns {
    () => {
        "id, kind, participant_a, participant_b, name, created_by, created_at, updated_at, last_seq"
    };
}
/// The columns of a membership (`rows::MemberRow`).
macro_rules! member_columns {
    () => {
        "user_id, role, joined_at, joined_seq, read_seq, last_read_message_id"
    };
}

pub(crate) const INSERT_CONVERSATION: &str = "INSERT INTO conversations \
    (id, kind, participant_a, participant_b, created_at, updated_at, last_seq, members_version, member_count) \
    VALUES ($1, 'direct', $2, $3, $4, $5, 0, 0, 2) \
    ON CONFLICT (participant_a, participant_b) DO NOTHING";
/// Both users of the pair `($1, $2)` as members of its conversation, unless they are: joined
/// at its first message, nothing read.
pub(crate) const INSERT_DIRECT_MEMBERS: &str = "INSERT INTO members \
    (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq) \
    SELECT id, participant_a, 'direct', 'member', created_at, 1, 0 FROM conversations \
        WHERE participant_a = $1 AND participant_b = $2 \
    UNION ALL \
    SELECT id, participant_b, 'direct', 'member', created_at, 1, 0 FROM conversations \
        WHERE participant_a = $1 AND participant_b = $2 \
    ON CONFLICT (conversation_id, user_id) DO NOTHING";
pub(crate) const FIND_CONVERSATION: &str =
    "SELECT id, participant_a, participant_b, created_at, updated_at, last_seq \
    FROM conversations WHERE participant_a = $1 AND participant_b = $2";
pub(crate) const FIND_CHAT: &str = concat!("SELECT ", chat_columns!(), " FROM conversations WHERE id = $1");
pub(crate) const FIND_MEMBER: &str =
    concat!("SELECT ", member_columns!(), " FROM members WHERE conversation_id = $1 AND user_id = $2");
/// One page of a user's conversations (see `ConversationRepository::page_for_user`) with
/// their last entries and the user's membership: the first `$2` in key order of each of
/// three sides — the direct conversations with `$1` as `participant_a`, as `participant_b`,
/// and `$1`'s groups —, merged and cut to `$2`, then joined with the user's member row and
/// the last entry by their keys. The direct sides are read backwards along their indexes
/// (`conversations_a_recent`, `conversations_b_recent`) from the cursor `($3, $4, $5)` on,
/// as before groups existed; the groups through `members_user_groups`, which holds only
/// group memberships, so that many direct conversations cost that side nothing. (A group's
/// key lives on its row, which every send moves; keeping it on the member rows would make a
/// send cost one write per member.) The first page gets a text without the cursor.
/// `unread` counts the entries after the user's read position less the change entries and the
/// deleted messages among them, each counted along its index (`message_changes`' primary key,
/// `messages_deleted`) in the same statement.
macro_rules! conversations_sql {
    ($after:literal, $group_after:literal) => {
        concat!(
            "SELECT c.id, c.kind, c.participant_a, c.participant_b, c.name, c.created_by, c.created_at, \
                c.updated_at, c.last_seq, \
            me.user_id, me.role, me.joined_at, me.joined_seq, me.read_seq, me.last_read_message_id, ",
            joined_message_columns!(),
            ", c.last_seq - me.read_seq \
                - (SELECT COUNT(*) FROM message_changes x \
                    WHERE x.conversation_id = c.id AND x.seq > me.read_seq) \
                - (SELECT COUNT(*) FROM messages d \
                    WHERE d.conversation_id = c.id AND d.seq > me.read_seq AND d.deleted_at IS NOT NULL) AS unread \
            FROM (\
                SELECT * FROM (SELECT ",
            chat_columns!(),
            ", last_message_id FROM conversations WHERE participant_a = $1",
            $after,
            " ORDER BY updated_at DESC, last_message_id DESC, id DESC LIMIT $2) AS a \
                UNION ALL \
                SELECT * FROM (SELECT ",
            chat_columns!(),
            ", last_message_id FROM conversations WHERE participant_b = $1",
            $after,
            " ORDER BY updated_at DESC, last_message_id DESC, id DESC LIMIT $2) AS b \
                UNION ALL \
                SELECT * FROM (SELECT g.id, g.kind, g.participant_a, g.participant_b, g.name, g.created_by, \
                    g.created_at, g.updated_at, g.last_seq, g.last_message_id \
                    FROM members mine JOIN conversations g ON g.id = mine.conversation_id \
                    WHERE mine.user_id = $1 AND mine.kind = 'group'",
            $group_after,
            " ORDER BY g.updated_at DESC, g.last_message_id DESC, g.id DESC LIMIT $2) AS grouped \
                ORDER BY updated_at DESC, last_message_id DESC, id DESC LIMIT $2) AS c \
            JOIN members me ON me.conversation_id = c.id AND me.user_id = $1 \
            LEFT JOIN messages m ON m.id = c.last_message_id \
            LEFT JOIN messages r ON r.id = m.reply_to \
            ORDER BY c.updated_at DESC, c.last_message_id DESC, c.id DESC"
        )
    };
}
pub(crate) const CONVERSATIONS: &str = conversations_sql!("", "");
pub(crate) const CONVERSATIONS_AFTER: &str = conversations_sql!(
    " AND (updated_at, last_message_id, id) < ($3, $4, $5)",
    " AND (g.updated_at, g.last_message_id, g.id) < ($3, $4, $5)"
);
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
            "WITH c AS (SELECT id, participant_a, participant_b, created_at, updated_at, last_seq \
                FROM conversations WHERE participant_a = $1 AND participant_b = $2) \
            SELECT c.id, c.participant_a, c.participant_b, c.created_at, c.updated_at, c.last_seq, ",
            joined_message_columns!(),
            " FROM c LEFT JOIN (\
                SELECT * FROM messages WHERE conversation_id = (SELECT id FROM c)",
            $before,
            " ORDER BY id DESC LIMIT $3) AS m ON TRUE \
            LEFT JOIN messages r ON r.id = m.reply_to \
            ORDER BY m.id"
        )
    };
}
pub(crate) const PAGE: &str = page_sql!("");
pub(crate) const PAGE_BEFORE: &str = page_sql!(" AND id < $4");
pub(crate) const FIND_BY_CLIENT_ID: &str = concat!(
    "SELECT ",
    message_columns!(),
    ", m.sender_position, m.receiver_position FROM messages m LEFT JOIN messages r ON r.id = m.reply_to \
    WHERE m.sender_id = $1 AND m.client_message_id = $2"
);
/// The newest `$2` entries of conversation `$1` (below the id `$4`, at or above the seq
/// `$3`), oldest first, read backwards along `messages_conversation_id`. Without a seq bound
/// (direct conversations, and group members since the start) the text has no seq term at all.
macro_rules! history_sql {
    ($from:literal, $before:literal) => {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM (SELECT * FROM messages WHERE conversation_id = $1",
            $from,
            $before,
            " ORDER BY id DESC LIMIT $2) AS m LEFT JOIN messages r ON r.id = m.reply_to ORDER BY m.id"
        )
    };
}
pub(crate) const HISTORY: &str = history_sql!("", "");
pub(crate) const HISTORY_BEFORE: &str = history_sql!("", " AND id < $4");
pub(crate) const HISTORY_FROM: &str = history_sql!(" AND seq >= $3", "");
pub(crate) const HISTORY_FROM_BEFORE: &str = history_sql!(" AND seq >= $3", " AND id < $4");
/// Entries of conversation `$1` with a seq above `$2` (up to `$4`), the first `$3`: its
/// messages (along `messages_conversation_seq`) and its change entries (along the primary key
/// of `message_changes`), each side cut to the limit before the merge, with the message each
/// names as it stands now (`rows::EntryRow`).
macro_rules! entries_sql {
    ($until:literal) => {
        concat!(
            "SELECT e.seq AS entry_seq, ",
            change_columns!(),
            ", ",
            joined_message_columns!(),
            " FROM (\
                SELECT * FROM (SELECT seq, id AS message_id, 0 AS is_change FROM messages \
                    WHERE conversation_id = $1 AND seq > $2",
            $until,
            " ORDER BY seq LIMIT $3) AS sent \
                UNION ALL SELECT * FROM (SELECT seq, message_id, 1 AS is_change FROM message_changes \
                    WHERE conversation_id = $1 AND seq > $2",
            $until,
            " ORDER BY seq LIMIT $3) AS changed \
                ORDER BY seq LIMIT $3) AS e \
            JOIN messages m ON m.id = e.message_id \
            LEFT JOIN messages r ON r.id = m.reply_to \
            LEFT JOIN message_changes x ON e.is_change = 1 AND x.conversation_id = $1 AND x.seq = e.seq \
            ORDER BY e.seq"
        )
    };
}
pub(crate) const ENTRIES: &str = entries_sql!("");
pub(crate) const ENTRIES_UNTIL: &str = entries_sql!(" AND seq <= $4");
/// The user's stream after a position: the direct messages they sent, those they received
/// and their notices, each side read through its own index (`messages_sender_stream`,
/// `messages_receiver_stream`, the notices' primary key) and cut to the limit before the
/// merge; then each message, and each `updated` notice's change entry and message, joined by
/// key (`rows::StreamRow`).
pub(crate) const STREAM: &str = concat!(
    "SELECT s.position, s.notice, s.conversation_id, s.seq, s.message_id, ",
    change_columns!(),
    ", ",
    joined_message_columns!(),
    " FROM (SELECT * FROM (\
        SELECT sender_position AS position, NULL AS notice, conversation_id, seq, id AS message_id \
        FROM messages WHERE sender_id = $1 AND sender_position > $2 ORDER BY sender_position LIMIT $3) AS sent \
    UNION ALL SELECT * FROM (\
        SELECT receiver_position AS position, NULL AS notice, conversation_id, seq, id AS message_id \
        FROM messages WHERE receiver_id = $1 AND receiver_position > $2 ORDER BY receiver_position LIMIT $3) AS received \
    UNION ALL SELECT * FROM (\
        SELECT position, kind AS notice, conversation_id, seq, message_id \
        FROM stream_notices WHERE user_id = $1 AND position > $2 ORDER BY position LIMIT $3) AS noticed \
    ORDER BY position LIMIT $3) AS s \
    LEFT JOIN message_changes x ON s.notice = 'updated' AND x.conversation_id = s.conversation_id AND x.seq = s.seq \
    LEFT JOIN messages m ON (s.notice IS NULL OR s.notice = 'updated') AND m.id = s.message_id \
    LEFT JOIN messages r ON r.id = m.reply_to \
    ORDER BY s.position"
);
/// A message as it stands now, by id.
pub(crate) const FIND_MESSAGE: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages m LEFT JOIN messages r ON r.id = m.reply_to WHERE m.id = $1"
);
/// Where `$2` stands in conversation `$1` and where the entry `$3` is in it (null when it is
/// not one of the conversation's).
pub(crate) const READ_TARGET: &str = "SELECT m.joined_seq, m.read_seq, e.seq FROM members m \
    LEFT JOIN messages e ON e.id = $3 AND e.conversation_id = m.conversation_id \
    WHERE m.conversation_id = $1 AND m.user_id = $2";
/// The next position of user `$1`'s stream, its head row locked until the transaction ends.
pub(crate) const TAKE_POSITION: &str = "INSERT INTO stream_heads (user_id, position) VALUES ($1, 1) \
    ON CONFLICT (user_id) DO UPDATE SET position = stream_heads.position + 1 RETURNING position";
pub(crate) const MOVE_READ: &str = "UPDATE members SET read_seq = $3, last_read_message_id = $4 \
    WHERE conversation_id = $1 AND user_id = $2 AND read_seq < $3";
pub(crate) const READ_SEQ: &str = "SELECT read_seq FROM members WHERE conversation_id = $1 AND user_id = $2";
pub(crate) const INSERT_READ_NOTICE: &str = "INSERT INTO stream_notices \
    (user_id, position, kind, conversation_id, seq, message_id, created_at) \
    VALUES ($1, $2, 'read', $3, $4, $5, $6)";
pub(crate) const REVOKE_TOKEN: &str = "INSERT INTO revoked_tokens (token_id, expires_at) VALUES ($1, $2) \
    ON CONFLICT (token_id) DO NOTHING";

macro_rules! impl_repositories {
    ($store:ty) => {
        const _: () = {
            use application::ports::{
                consecutive_entries, name_words, stored_cursor, GroupEntry, stored_seq, Appended, ConversationKey, ConversationPage,
                ConversationRepository, ConversationSummary, GroupAppended, HealthCheck, MessageRepository,
                ReadMoved, RepoError, RepoResult, Revocation, RevokedTokenRepository, StoredMessage,
                StreamItem, UserQuery, UserRepository,
            };
            use async_trait::async_trait;
            use domain::{
                Chat, Conversation, ConversationId, Cursor, Member, Message, MessageId, ParticipantPair,
                Seq, Timestamp, User, UserId, Username,
            };
            use $crate::error::repo_error;
            use $crate::repositories::*;
            use $crate::rows::{
                conversation_page, ChatRow, ConversationMessageRow, ConversationRow, EntryRow, MemberRow, MessageRow,
                StoredRow, StreamRow, SummaryRow, UserRow,
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

                async fn find_many(&self, ids: &[UserId]) -> RepoResult<Vec<User>> {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    // The whole list as one parameter (an array, a JSON array): one statement
                    // text whatever its length, and no limit on the number of parameters.
                    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id {}", <$store>::in_list(1));
                    let ids: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
                    sqlx::query_as::<_, UserRow>(&sql)
                        .bind(<$store>::list(ids))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("finding users by id"))?
                        .into_iter()
                        .map(User::try_from)
                        .collect()
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
                    // settles a race between both users' first messages. The members come
                    // with the conversation, whichever insert stored it.
                    let pair = &candidate.participants;
                    let context = "inserting a conversation";
                    let mut tx = self.pool.begin().await.map_err(repo_error(context))?;
                    sqlx::query(INSERT_CONVERSATION)
                        .bind(candidate.id.as_str())
                        .bind(pair.first().as_str())
                        .bind(pair.second().as_str())
                        .bind(candidate.created_at)
                        .bind(candidate.updated_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    sqlx::query(INSERT_DIRECT_MEMBERS)
                        .bind(pair.first().as_str())
                        .bind(pair.second().as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error("inserting a conversation's members"))?;
                    tx.commit().await.map_err(repo_error(context))?;
                    self.find_by_participants(pair).await?.ok_or_else(|| {
                        RepoError::Unexpected(anyhow::anyhow!("conversation vanished right after its insert"))
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

                async fn find(&self, id: &ConversationId) -> RepoResult<Option<Chat>> {
                    sqlx::query_as::<_, ChatRow>(FIND_CHAT)
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("finding a conversation by id"))?
                        .map(Chat::try_from)
                        .transpose()
                }

                async fn member(
                    &self,
                    conversation: &ConversationId,
                    user: &UserId,
                ) -> RepoResult<Option<Member>> {
                    sqlx::query_as::<_, MemberRow>(FIND_MEMBER)
                        .bind(conversation.as_str())
                        .bind(user.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("finding a member"))?
                        .map(Member::try_from)
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
                        None => sqlx::query_as::<_, SummaryRow>(CONVERSATIONS)
                            .bind(user.as_str())
                            .bind(i64::from(limit)),
                        Some(after) => sqlx::query_as::<_, SummaryRow>(CONVERSATIONS_AFTER)
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

                async fn append_to_group(&self, message: &Message) -> RepoResult<GroupAppended> {
                    if let Some(earlier) = self.find_by_client_id(message).await? {
                        return Ok(GroupAppended::Existing(earlier.message));
                    }
                    match self.append_group_new(message).await? {
                        Some((message, version)) => Ok(GroupAppended::Created { message, version }),
                        // Either a racing retry with the same client id committed first, or
                        // the sender is no member (any more).
                        None => Ok(match self.find_by_client_id(message).await? {
                            Some(earlier) => GroupAppended::Existing(earlier.message),
                            None => GroupAppended::NotMember,
                        }),
                    }
                }

                async fn list_by_conversation(
                    &self,
                    conversation: &ConversationId,
                    from_seq: Seq,
                    before: Option<MessageId>,
                    limit: u32,
                ) -> RepoResult<Vec<Message>> {
                    // Every entry has a seq of 1 or more: a bound at 1 bounds nothing.
                    let from_seq = (from_seq > 1).then(|| i64::try_from(from_seq).unwrap_or(i64::MAX));
                    let sql = match (from_seq, &before) {
                        (None, None) => HISTORY,
                        (None, Some(_)) => HISTORY_BEFORE,
                        (Some(_), None) => HISTORY_FROM,
                        (Some(_), Some(_)) => HISTORY_FROM_BEFORE,
                    };
                    let mut query = sqlx::query_as::<_, MessageRow>(sql)
                        .bind(conversation.as_str())
                        .bind(i64::from(limit));
                    // `$3` is the seq bound, `$4` the id bound; a text binds those it names.
                    if let Some(from_seq) = from_seq {
                        query = query.bind(from_seq);
                    } else if before.is_some() {
                        query = query.bind(0_i64);
                    }
                    if let Some(before) = &before {
                        query = query.bind(before.as_str());
                    }
                    query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("listing messages"))?
                        .into_iter()
                        .map(Message::try_from)
                        .collect()
                }

                async fn entries(
                    &self,
                    conversation: &ConversationId,
                    after: Seq,
                    until: Option<Seq>,
                    limit: u32,
                ) -> RepoResult<Vec<GroupEntry>> {
                    let after_seq = i64::try_from(after).unwrap_or(i64::MAX);
                    let query = match until {
                        None => sqlx::query_as::<_, EntryRow>(ENTRIES),
                        Some(_) => sqlx::query_as::<_, EntryRow>(ENTRIES_UNTIL),
                    }
                    .bind(conversation.as_str())
                    .bind(after_seq)
                    .bind(i64::from(limit));
                    let query = match until {
                        None => query,
                        Some(until) => query.bind(i64::try_from(until).unwrap_or(i64::MAX)),
                    };
                    let entries = query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("reading a conversation's entries"))?
                        .into_iter()
                        .map(|row| row.entry(conversation.as_str()))
                        .collect::<RepoResult<Vec<_>>>()?;
                    let read = entries.len();
                    let run = consecutive_entries(after, entries);
                    if run.len() < read {
                        // One statement, one snapshot: a hole here is a broken store.
                        tracing::error!(conversation = %conversation, after, "conversation has a hole; reading stops before it");
                    }
                    Ok(run)
                }

                async fn mark_read(
                    &self,
                    conversation: &ConversationId,
                    user: &UserId,
                    up_to: &MessageId,
                ) -> RepoResult<ReadMoved> {
                    let context = "moving a read position";
                    let target: Option<(i64, i64, Option<i64>)> = sqlx::query_as(READ_TARGET)
                        .bind(conversation.as_str())
                        .bind(user.as_str())
                        .bind(up_to.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error(context))?;
                    let Some((joined_seq, read_seq, entry_seq)) = target else {
                        return Ok(ReadMoved::NotMember);
                    };
                    let Some(seq) = entry_seq.filter(|seq| *seq >= joined_seq) else {
                        return Ok(ReadMoved::UnknownMessage);
                    };
                    if seq <= read_seq {
                        return Ok(ReadMoved::NotAhead { seq: stored_seq(read_seq)? });
                    }
                    // The reader's head first, then their member row (the lock order of every
                    // write, see src/groups.rs). Should the position not move after all (a
                    // racing read went further, or the reader left), the transaction is rolled
                    // back and the stream position with it.
                    let mut tx = self.pool.begin().await.map_err(repo_error(context))?;
                    let (position,): (i64,) = sqlx::query_as(TAKE_POSITION)
                        .bind(user.as_str())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    let moved = sqlx::query(MOVE_READ)
                        .bind(conversation.as_str())
                        .bind(user.as_str())
                        .bind(seq)
                        .bind(up_to.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    if moved.rows_affected() == 0 {
                        tx.rollback().await.map_err(repo_error(context))?;
                        let now: Option<(i64,)> = sqlx::query_as(READ_SEQ)
                            .bind(conversation.as_str())
                            .bind(user.as_str())
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(repo_error(context))?;
                        return Ok(match now {
                            Some((read_seq,)) => ReadMoved::NotAhead { seq: stored_seq(read_seq)? },
                            None => ReadMoved::NotMember,
                        });
                    }
                    sqlx::query(INSERT_READ_NOTICE)
                        .bind(user.as_str())
                        .bind(position)
                        .bind(conversation.as_str())
                        .bind(seq)
                        .bind(up_to.as_str())
                        .bind(chrono::Utc::now())
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    tx.commit().await.map_err(repo_error(context))?;
                    Ok(ReadMoved::Moved { seq: stored_seq(seq)?, cursor: stored_cursor(position)? })
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
                    head.map_or(Ok(Cursor::START), |(position,)| stored_cursor(position))
                }

                async fn stream_heads(&self, users: &[UserId]) -> RepoResult<Vec<(UserId, Cursor)>> {
                    if users.is_empty() {
                        return Ok(Vec::new());
                    }
                    // The whole list as one parameter, as `find_many` does.
                    let sql = format!(
                        "SELECT user_id, position FROM stream_heads WHERE position > 0 AND user_id {}",
                        <$store>::in_list(1)
                    );
                    let ids: Vec<String> = users.iter().map(|id| id.as_str().to_owned()).collect();
                    let rows: Vec<(String, i64)> = sqlx::query_as(&sql)
                        .bind(<$store>::list(ids))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("reading stream heads"))?;
                    rows.into_iter()
                        .map(|(user, position)| Ok((crate::rows::stored_user_id(&user)?, stored_cursor(position)?)))
                        .collect()
                }
            }

            impl $store {
                /// The sender's earlier entry with the same client id, if any.
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
