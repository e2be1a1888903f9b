//! Groups: creating and changing them, their members, and the membership notices in users'
//! streams — written once for both engines, like [`crate::repositories`].
//!
//! A group's entries take the next seq of the group, inside a transaction that holds the
//! group's row locked from its first statement on (PostgreSQL: the row lock of an `UPDATE`,
//! taken by a change's first `UPDATE` or a send's `SELECT … FOR NO KEY UPDATE`; SQLite: its
//! one writer), so that seq n+1 of a group commits after seq n and readers never see a later
//! entry before an earlier one. A send locks that one row whatever the group's size.
//!
//! Every write takes its locks in one order, so that no two wait on each other in a cycle:
//! the conversation's row, then stream heads in ascending user id order, then member rows.
//! A direct send locks its conversation, both heads (the pair's order) and the sender's member
//! row; a group send the group and the sender's member row; a change the group, the heads of
//! the users who join or leave, and member rows; a message change (src/changes.rs) its
//! conversation's row, then in a direct conversation both heads (the pair's order), and no
//! member row; a read the reader's head, then their member row (no conversation row). Rows that only name a conversation or a user (a notice, an
//! entry, a member) take the weakest lock on it for their foreign key (`FOR KEY SHARE`), which
//! none of these locks waits for: that is why the conversation's row is never locked
//! `FOR UPDATE`.
//!
//! The few statements that take a list of ids differ per engine (PostgreSQL binds an array,
//! SQLite a JSON array): each store provides them as `in_list`, `list`, `append_notices`,
//! `insert_members` and `MEMBERS_PREVIEW`.

/// A new group at seq 1 and membership version 1, its first entry its last message.
pub(crate) const INSERT_GROUP: &str = "INSERT INTO conversations \
    (id, kind, name, created_by, created_at, updated_at, last_message_id, last_seq, members_version, member_count) \
    VALUES ($1, 'group', $2, $3, $4, $5, $6, 1, 1, $7)";
/// A group's entry (its message or system entry) at its seq; the stream positions stay null.
pub(crate) const INSERT_ENTRY: &str = "INSERT INTO messages \
    (id, conversation_id, seq, sender_id, body, system, created_at, client_message_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// The first statement of a change: locks the group's row if its membership version is still
/// `$2`, and moves it to the change's entry (`$3` its time, `$4` its id) and a new name `$5`
/// (if any): the next seq and the next version come back. No row for a group that moved on
/// (or none with that id).
pub(crate) const BEGIN_CHANGE: &str = "UPDATE conversations SET \
        last_seq = last_seq + 1, \
        members_version = members_version + 1, \
        updated_at = CASE WHEN updated_at < $3 THEN $3 ELSE updated_at END, \
        last_message_id = CASE WHEN last_message_id < $4 THEN $4 ELSE last_message_id END, \
        name = COALESCE($5, name) \
    WHERE id = $1 AND kind = 'group' AND members_version = $2 \
    RETURNING last_seq, members_version";
pub(crate) const CHANGE_MEMBER_COUNT: &str =
    "UPDATE conversations SET member_count = member_count + $2 WHERE id = $1";
pub(crate) const SET_ROLE: &str = "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2";
/// The group with its members in joining order (`rows::StateRow`); no row for an unknown id
/// or a direct conversation, one row without member columns for a group without members.
pub(crate) const STATE: &str =
    "SELECT c.id, c.kind, c.participant_a, c.participant_b, c.name, c.created_by, \
        c.created_at, c.updated_at, c.last_seq, c.members_version, \
        m.user_id, m.role, m.joined_at, m.joined_seq, m.read_seq, m.last_read_message_id \
    FROM conversations c LEFT JOIN members m ON m.conversation_id = c.id \
    WHERE c.id = $1 AND c.kind = 'group' ORDER BY m.joined_seq, m.user_id";
pub(crate) const MEMBER_IDS: &str = "SELECT c.members_version, m.user_id \
    FROM conversations c LEFT JOIN members m ON m.conversation_id = c.id \
    WHERE c.id = $1 AND c.kind = 'group' ORDER BY m.joined_seq, m.user_id";
/// For each group, `$1`'s last joining or leaving notice at or before position `$2`, kept
/// if it is a joining, with the group's last seq; by group id. Read along
/// `stream_notices_membership`, which holds only joinings and leavings (`+position` keeps SQLite from
/// reading the user's every notice along the primary key instead).
pub(crate) const GROUPS_AT: &str = "SELECT n.conversation_id, n.seq, c.last_seq FROM (\
        SELECT conversation_id, kind, seq, \
            ROW_NUMBER() OVER (PARTITION BY conversation_id ORDER BY position DESC) AS latest \
        FROM stream_notices WHERE user_id = $1 AND kind IN ('joined', 'left') AND +position <= $2) AS n \
    JOIN conversations c ON c.id = n.conversation_id \
    WHERE n.latest = 1 AND n.kind = 'joined' ORDER BY n.conversation_id";
/// [`GROUPS_AT`] the head of the user's stream, with the head, in one statement (one
/// snapshot: every notice is at or before the head then). One row without a group when the
/// user is in none; the head is NULL while the stream is empty.
pub(crate) const GROUPS_AT_HEAD: &str = "SELECT h.position, g.conversation_id, g.seq, g.last_seq FROM \
    (SELECT (SELECT position FROM stream_heads WHERE user_id = $1) AS position) AS h LEFT JOIN (\
        SELECT n.conversation_id, n.seq, c.last_seq FROM (\
            SELECT conversation_id, kind, seq, \
                ROW_NUMBER() OVER (PARTITION BY conversation_id ORDER BY position DESC) AS latest \
            FROM stream_notices WHERE user_id = $1 AND kind IN ('joined', 'left')) AS n \
        JOIN conversations c ON c.id = n.conversation_id \
        WHERE n.latest = 1 AND n.kind = 'joined') AS g ON TRUE \
    ORDER BY g.conversation_id";
pub(crate) const LEFT_AFTER: &str = "SELECT seq FROM stream_notices \
    WHERE user_id = $1 AND conversation_id = $2 AND kind IN ('joined', 'left') AND kind = 'left' AND position > $3 \
    ORDER BY position LIMIT 1";

/// A row of [`GROUPS_AT`] or [`GROUPS_AT_HEAD`]: a group, the entry the user joined at, the
/// group's last entry.
pub(crate) fn group_position(
    group: &str,
    joined_seq: i64,
    last_seq: i64,
) -> application::ports::RepoResult<application::ports::GroupPosition> {
    use application::ports::{stored_seq, GroupPosition, RepoError};
    Ok(GroupPosition {
        group: domain::ConversationId::parse(group).map_err(|e| RepoError::corrupt("conversation id", e))?,
        joined_seq: stored_seq(joined_seq)?,
        last_seq: stored_seq(last_seq)?,
    })
}

/// What a user's stream gets when they join or leave a group.
pub(crate) const JOINED: &str = "joined";
pub(crate) const LEFT: &str = "left";

macro_rules! impl_groups {
    ($store:ty, $database:ty) => {
        const _: () = {
            use application::ports::{
                stored_cursor, stored_seq, system_json, Changed, GroupChange, GroupPosition, GroupRepository,
                GroupState, MembersPreview, Notice, Noticed, RepoError, RepoResult,
            };
            use async_trait::async_trait;
            use domain::{ConversationId, Cursor, Group, Member, Message, Seq, UserId};
            use $crate::error::repo_error;
            use $crate::groups::*;
            use $crate::repositories::MOVE_READ;
            use $crate::rows::{stored_user_id, StateRow};

            #[async_trait]
            impl GroupRepository for $store {
                async fn create(
                    &self,
                    group: &Group,
                    members: &[Member],
                    created: &Message,
                ) -> RepoResult<Vec<Noticed>> {
                    let context = "creating a group";
                    let mut tx = self.pool.begin().await.map_err(repo_error(context))?;
                    sqlx::query(INSERT_GROUP)
                        .bind(group.id.as_str())
                        .bind(group.name.as_str())
                        .bind(group.created_by.as_str())
                        .bind(group.created_at)
                        .bind(group.updated_at)
                        .bind(created.id.as_str())
                        .bind(i64::try_from(members.len()).unwrap_or(i64::MAX))
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    insert_entry(&mut tx, &group.id, 1, created).await?;
                    let mut joined: Vec<(&UserId, &'static str)> =
                        members.iter().map(|member| (&member.user_id, JOINED)).collect();
                    joined.sort();
                    let notices =
                        <$store>::append_notices(&mut *tx, &group.id, 1, created.created_at, &joined)
                            .await
                            .map_err(repo_error("appending a group's notices"))?;
                    // Everyone joins at the first entry; only its author has read it.
                    let members: Vec<Member> = members
                        .iter()
                        .map(|member| {
                            let author = member.user_id == created.sender_id;
                            Member {
                                joined_seq: 1,
                                read_seq: u64::from(author),
                                last_read_message_id: author.then(|| created.id.clone()),
                                ..member.clone()
                            }
                        })
                        .collect();
                    <$store>::insert_members(&mut *tx, &group.id, "group", &members)
                        .await
                        .map_err(repo_error("inserting a group's members"))?;
                    tx.commit().await.map_err(repo_error(context))?;
                    noticed(&group.id, 1, notices)
                }

                async fn state(&self, group: &ConversationId) -> RepoResult<Option<GroupState>> {
                    let rows = sqlx::query_as::<_, StateRow>(STATE)
                        .bind(group.as_str())
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("reading a group"))?;
                    let mut state: Option<GroupState> = None;
                    for row in rows {
                        let member = row.member.member()?;
                        if state.is_none() {
                            let version = stored_seq(row.members_version)?;
                            let group = match domain::Chat::try_from(row.group)? {
                                domain::Chat::Group(group) => group,
                                domain::Chat::Direct(_) => return Ok(None),
                            };
                            state = Some(GroupState { group, members: Vec::new(), version });
                        }
                        if let (Some(state), Some(member)) = (state.as_mut(), member) {
                            state.members.push(member);
                        }
                    }
                    Ok(state)
                }

                async fn member_ids(&self, group: &ConversationId) -> RepoResult<Option<(Vec<UserId>, u64)>> {
                    let rows: Vec<(i64, Option<String>)> = sqlx::query_as(MEMBER_IDS)
                        .bind(group.as_str())
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("reading a group's members"))?;
                    let Some((version, _)) = rows.first() else { return Ok(None) };
                    let version = stored_seq(*version)?;
                    let ids = rows
                        .iter()
                        .filter_map(|(_, user)| user.as_deref())
                        .map(stored_user_id)
                        .collect::<RepoResult<Vec<_>>>()?;
                    Ok(Some((ids, version)))
                }

                async fn change(&self, group: &ConversationId, change: &GroupChange) -> RepoResult<Changed> {
                    let context = "changing a group";
                    let Ok(expected) = i64::try_from(change.expected_version) else {
                        return Ok(Changed::Stale);
                    };
                    let entry = &change.entry;
                    let mut tx = self.pool.begin().await.map_err(repo_error(context))?;
                    let started: Option<(i64, i64)> = sqlx::query_as(BEGIN_CHANGE)
                        .bind(group.as_str())
                        .bind(expected)
                        .bind(entry.created_at)
                        .bind(entry.id.as_str())
                        .bind(change.rename.as_ref().map(|name| name.as_str()))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    let Some((seq, version)) = started else {
                        tx.rollback().await.map_err(repo_error(context))?;
                        return Ok(Changed::Stale);
                    };
                    // Those to remove who are members: the group's row is locked, so no
                    // other change moves its members until this one ends.
                    let removed: Vec<String> = if change.remove.is_empty() {
                        Vec::new()
                    } else {
                        let sql = format!(
                            "SELECT user_id FROM members WHERE conversation_id = $1 AND user_id {}",
                            <$store>::in_list(2)
                        );
                        let ids = change.remove.iter().map(|user| user.as_str().to_owned()).collect();
                        sqlx::query_as::<_, (String,)>(&sql)
                            .bind(group.as_str())
                            .bind(<$store>::list(ids))
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(repo_error(context))?
                            .into_iter()
                            .map(|(user,)| user)
                            .collect()
                    };
                    insert_entry(&mut tx, group, seq, entry).await?;

                    // Heads before member rows (the lock order).
                    let mut moving: Vec<(&str, &'static str)> = change
                        .add
                        .iter()
                        .map(|(user, _)| (user.as_str(), JOINED))
                        .chain(removed.iter().map(|user| (user.as_str(), LEFT)))
                        .collect();
                    moving.sort();
                    let moving: Vec<(UserId, &'static str)> = moving
                        .into_iter()
                        .map(|(user, kind)| Ok((stored_user_id(user)?, kind)))
                        .collect::<RepoResult<_>>()?;
                    let moving: Vec<(&UserId, &'static str)> = moving.iter().map(|(u, k)| (u, *k)).collect();
                    let notices = <$store>::append_notices(&mut *tx, group, seq, entry.created_at, &moving)
                        .await
                        .map_err(repo_error("appending a group's notices"))?;

                    let seq_u = stored_seq(seq)?;
                    let added: Vec<Member> = change
                        .add
                        .iter()
                        .map(|(user, role)| Member {
                            read_seq: seq_u - 1,
                            ..Member::joining(user.clone(), *role, entry.created_at, seq_u)
                        })
                        .collect();
                    // A user who is a member already fails the insert: `Conflict`, nothing applied.
                    <$store>::insert_members(&mut *tx, group, "group", &added)
                        .await
                        .map_err(repo_error("adding a group's members"))?;
                    if !removed.is_empty() {
                        let sql = format!(
                            "DELETE FROM members WHERE conversation_id = $1 AND user_id {}",
                            <$store>::in_list(2)
                        );
                        sqlx::query(&sql)
                            .bind(group.as_str())
                            .bind(<$store>::list(removed.clone()))
                            .execute(&mut *tx)
                            .await
                            .map_err(repo_error("removing a group's members"))?;
                    }
                    for (user, role) in &change.roles {
                        sqlx::query(SET_ROLE)
                            .bind(group.as_str())
                            .bind(user.as_str())
                            .bind(role.as_str())
                            .execute(&mut *tx)
                            .await
                            .map_err(repo_error("changing a member's role"))?;
                    }
                    // The actor has read their own change (if still a member).
                    sqlx::query(MOVE_READ)
                        .bind(group.as_str())
                        .bind(entry.sender_id.as_str())
                        .bind(seq)
                        .bind(entry.id.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    let count_change = i64::try_from(added.len()).unwrap_or(i64::MAX)
                        - i64::try_from(removed.len()).unwrap_or(i64::MAX);
                    if count_change != 0 {
                        sqlx::query(CHANGE_MEMBER_COUNT)
                            .bind(group.as_str())
                            .bind(count_change)
                            .execute(&mut *tx)
                            .await
                            .map_err(repo_error(context))?;
                    }
                    tx.commit().await.map_err(repo_error(context))?;
                    Ok(Changed::Applied {
                        entry: Message {
                            conversation_id: group.clone(),
                            seq: seq_u,
                            client_id: None,
                            ..entry.clone()
                        },
                        version: stored_seq(version)?,
                        notices: noticed(group, seq, notices)?,
                    })
                }

                async fn members_preview(
                    &self,
                    groups: &[ConversationId],
                    limit: u32,
                ) -> RepoResult<Vec<MembersPreview>> {
                    if groups.is_empty() {
                        return Ok(Vec::new());
                    }
                    let ids = groups.iter().map(|group| group.as_str().to_owned()).collect();
                    let rows: Vec<(i64, String, i64, Option<String>)> =
                        sqlx::query_as(<$store>::MEMBERS_PREVIEW)
                            .bind(<$store>::list(ids))
                            .bind(i64::from(limit))
                            .fetch_all(&self.pool)
                            .await
                            .map_err(repo_error("reading groups' members"))?;
                    let mut previews: Vec<(i64, MembersPreview)> = Vec::new();
                    for (ordinal, group, count, user) in rows {
                        if previews.last().is_none_or(|(last, _)| *last != ordinal) {
                            let group = ConversationId::parse(&group)
                                .map_err(|e| RepoError::corrupt("conversation id", e))?;
                            let preview =
                                MembersPreview { group, members: Vec::new(), count: stored_seq(count)? };
                            previews.push((ordinal, preview));
                        }
                        if let (Some((_, preview)), Some(user)) = (previews.last_mut(), user) {
                            preview.members.push(stored_user_id(&user)?);
                        }
                    }
                    Ok(previews.into_iter().map(|(_, preview)| preview).collect())
                }

                async fn groups_at(&self, user: &UserId, at: Cursor) -> RepoResult<Vec<GroupPosition>> {
                    let rows: Vec<(String, i64, i64)> = sqlx::query_as(GROUPS_AT)
                        .bind(user.as_str())
                        .bind(i64::from(at))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(repo_error("reading a user's groups"))?;
                    rows.into_iter()
                        .map(|(group, joined_seq, last_seq)| group_position(&group, joined_seq, last_seq))
                        .collect()
                }

                async fn groups_at_head(&self, user: &UserId) -> RepoResult<(Cursor, Vec<GroupPosition>)> {
                    let rows: Vec<(Option<i64>, Option<String>, Option<i64>, Option<i64>)> =
                        sqlx::query_as(GROUPS_AT_HEAD)
                            .bind(user.as_str())
                            .fetch_all(&self.pool)
                            .await
                            .map_err(repo_error("reading where a user's stream and groups stand"))?;
                    let head = match rows.first() {
                        Some((Some(position), ..)) => stored_cursor(*position)?,
                        _ => Cursor::START,
                    };
                    let groups = rows
                        .into_iter()
                        .filter_map(|(_, group, joined_seq, last_seq)| Some((group?, joined_seq?, last_seq?)))
                        .map(|(group, joined_seq, last_seq)| group_position(&group, joined_seq, last_seq))
                        .collect::<RepoResult<_>>()?;
                    Ok((head, groups))
                }

                async fn left_after(
                    &self,
                    user: &UserId,
                    group: &ConversationId,
                    after: Cursor,
                ) -> RepoResult<Option<Seq>> {
                    let row: Option<(i64,)> = sqlx::query_as(LEFT_AFTER)
                        .bind(user.as_str())
                        .bind(group.as_str())
                        .bind(i64::from(after))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("reading a user's groups"))?;
                    row.map(|(seq,)| stored_seq(seq)).transpose()
                }
            }

            /// Stores a group's entry (a system entry: without client id) at `seq`.
            async fn insert_entry(
                tx: &mut sqlx::Transaction<'_, $database>,
                group: &ConversationId,
                seq: i64,
                entry: &Message,
            ) -> RepoResult<()> {
                sqlx::query(INSERT_ENTRY)
                    .bind(entry.id.as_str())
                    .bind(group.as_str())
                    .bind(seq)
                    .bind(entry.sender_id.as_str())
                    .bind(entry.body.as_str())
                    .bind(entry.system.as_ref().map(system_json))
                    .bind(entry.created_at)
                    .bind(None::<&str>)
                    .execute(&mut **tx)
                    .await
                    .map_err(repo_error("storing a group's entry"))?;
                Ok(())
            }

            /// The notices `append_notices` stored (user, position, kind), as the port returns them.
            fn noticed(
                group: &ConversationId,
                seq: i64,
                stored: Vec<(String, i64, String)>,
            ) -> RepoResult<Vec<Noticed>> {
                let seq = stored_seq(seq)?;
                let mut notices = stored
                    .into_iter()
                    .map(|(user, position, kind)| {
                        let notice = match kind.as_str() {
                            JOINED => Notice::Joined { group: group.clone(), seq },
                            LEFT => Notice::Left { group: group.clone(), seq },
                            other => return Err(RepoError::corrupt("notice", other)),
                        };
                        Ok(Noticed { user: stored_user_id(&user)?, cursor: stored_cursor(position)?, notice })
                    })
                    .collect::<RepoResult<Vec<_>>>()?;
                notices.sort_by(|a, b| a.user.cmp(&b.user));
                Ok(notices)
            }
        };
    };
}

pub(crate) use impl_groups;
