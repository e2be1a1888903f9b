//! Message changes (edits, deletions, reactions) — written once for both engines, like
//! [`crate::repositories`].
//!
//! A change is decided and stored in one transaction holding its conversation's row locked
//! from the first statement on, the lock a send to the conversation takes (PostgreSQL: the
//! row lock of an `UPDATE`, which a direct send's upsert and a group send's
//! `FOR NO KEY UPDATE` wait for, and which waits for them; SQLite: its one writer, taken at
//! once since the first statement writes). Under it the actor's membership and the message
//! are read, [`MessageState::apply`] decides, and only a change that changes something writes:
//! the conversation's next seq, the change entry, the message's new state (its text, its
//! tombstone, its reactions — written whole from the decided state), and in a direct
//! conversation an `updated` notice at the next position of both users' streams. The heads are
//! locked after the conversation's row, in the pair's order: the lock order of a direct send
//! (src/groups.rs). A change moves no read position and neither `updated_at` nor the last
//! message of its conversation.

/// Locks the conversation's row without changing it (a write, so that SQLite takes its write
/// lock at once rather than upgrading a read lock, which could fail without waiting).
pub(crate) const LOCK_CONVERSATION: &str = "UPDATE conversations SET last_seq = last_seq WHERE id = $1 \
    RETURNING kind, participant_a, participant_b, members_version";
/// The conversation's next seq, taken by a change.
pub(crate) const NEXT_SEQ: &str =
    "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq";
pub(crate) const INSERT_CHANGE: &str = "INSERT INTO message_changes \
    (conversation_id, seq, message_id, actor_id, kind, emoji, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// The message's state after a change (`version` the change's seq).
pub(crate) const UPDATE_MESSAGE: &str = "UPDATE messages SET body = $2, edited_at = $3, deleted_at = $4, \
    deleted_by = $5, reactions = $6, version = $7 WHERE id = $1";
pub(crate) const INSERT_UPDATED_NOTICE: &str = "INSERT INTO stream_notices \
    (user_id, position, kind, conversation_id, seq, message_id, created_at) \
    VALUES ($1, $2, 'updated', $3, $4, $5, $6)";

/// The reactions of `content` as stored: a JSON array of `[emoji, user id]` in the order
/// [`domain::Reactions::from_stored`] reads back into the same reactions (each emoji in the
/// order first used, its users in the order they reacted); `None` when there are none.
pub(crate) fn reactions_json(content: &domain::Content) -> Option<String> {
    let domain::Content::Live { reactions, .. } = content else { return None };
    if reactions.is_empty() {
        return None;
    }
    let pairs: Vec<(&str, &str)> = reactions
        .iter()
        .flat_map(|(emoji, users)| users.iter().map(move |user| (emoji.as_str(), user.as_str())))
        .collect();
    Some(serde_json::to_string(&pairs).expect("pairs of strings serialize"))
}

macro_rules! impl_changes {
    ($store:ty) => {
        const _: () = {
            use application::ports::{
                stored_cursor, stored_seq, ChangeOutcome, ChangeRequest, MessageChangeRepository, RepoError,
                RepoResult, StoredChange, StreamPosition, Update,
            };
            use async_trait::async_trait;
            use domain::{Actor, Applied, Member, Message, MessageChange, MessageId};

            use crate::changes::{
                reactions_json, INSERT_CHANGE, INSERT_UPDATED_NOTICE, LOCK_CONVERSATION, NEXT_SEQ,
                UPDATE_MESSAGE,
            };
            use crate::error::repo_error;
            use crate::repositories::{FIND_MEMBER, FIND_MESSAGE, TAKE_POSITION};
            use crate::rows::{stored_user_id, MemberRow, MessageRow};

            #[async_trait]
            impl MessageChangeRepository for $store {
                async fn find(&self, message: &MessageId) -> RepoResult<Option<Message>> {
                    sqlx::query_as::<_, MessageRow>(FIND_MESSAGE)
                        .bind(message.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(repo_error("finding a message"))?
                        .map(Message::try_from)
                        .transpose()
                }

                async fn change(&self, request: &ChangeRequest) -> RepoResult<ChangeOutcome> {
                    let context = "changing a message";
                    let conversation = request.conversation.as_str();
                    let mut tx = self.pool.begin().await.map_err(repo_error(context))?;
                    let locked: Option<(String, Option<String>, Option<String>, i64)> =
                        sqlx::query_as(LOCK_CONVERSATION)
                            .bind(conversation)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(repo_error(context))?;
                    let Some((kind, participant_a, participant_b, members_version)) = locked else {
                        tx.rollback().await.map_err(repo_error(context))?;
                        return Ok(ChangeOutcome::NotMember);
                    };
                    let member = sqlx::query_as::<_, MemberRow>(FIND_MEMBER)
                        .bind(conversation)
                        .bind(request.actor.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(repo_error(context))?
                        .map(Member::try_from)
                        .transpose()?;
                    let Some(member) = member else {
                        tx.rollback().await.map_err(repo_error(context))?;
                        return Ok(ChangeOutcome::NotMember);
                    };
                    let message = sqlx::query_as::<_, MessageRow>(FIND_MESSAGE)
                        .bind(request.message.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(repo_error(context))?
                        .map(Message::try_from)
                        .transpose()?
                        .filter(|m| m.conversation_id == request.conversation && m.seq >= member.joined_seq);
                    let Some(message) = message else {
                        tx.rollback().await.map_err(repo_error(context))?;
                        return Ok(ChangeOutcome::NotFound);
                    };
                    let actor = Actor { user: request.actor.clone(), role: member.role };
                    let mut state = message.state();
                    let applied = state.apply(&actor, &request.change, request.window, request.at);
                    let change_kind = match applied {
                        Err(refused) => {
                            tx.rollback().await.map_err(repo_error(context))?;
                            return Ok(ChangeOutcome::Refused(refused));
                        }
                        Ok(Applied::Unchanged) => {
                            tx.rollback().await.map_err(repo_error(context))?;
                            return Ok(ChangeOutcome::Unchanged(message));
                        }
                        Ok(Applied::Changed(kind)) => kind,
                    };

                    let (seq,): (i64,) = sqlx::query_as(NEXT_SEQ)
                        .bind(conversation)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(repo_error(context))?;
                    sqlx::query(INSERT_CHANGE)
                        .bind(conversation)
                        .bind(seq)
                        .bind(message.id.as_str())
                        .bind(request.actor.as_str())
                        .bind(change_kind.as_str())
                        .bind(change_kind.emoji().map(|emoji| emoji.as_str()))
                        .bind(request.at)
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error("storing a change entry"))?;
                    state.version = stored_seq(seq)?;
                    let changed = message.with_state(state);
                    let content = changed.content();
                    let (edited_at, tombstone) = match &content {
                        domain::Content::Live { edited_at, .. } => (*edited_at, None),
                        domain::Content::Deleted(tombstone) => (None, Some(tombstone)),
                    };
                    sqlx::query(UPDATE_MESSAGE)
                        .bind(changed.id.as_str())
                        .bind(changed.body.as_str())
                        .bind(edited_at)
                        .bind(tombstone.map(|t| t.deleted_at))
                        .bind(tombstone.map(|t| t.deleted_by.as_str()))
                        .bind(reactions_json(&content))
                        .bind(seq)
                        .execute(&mut *tx)
                        .await
                        .map_err(repo_error("storing a message's change"))?;

                    let positions = match (kind.as_str(), participant_a, participant_b) {
                        ("direct", Some(a), Some(b)) => {
                            // Both heads in the pair's order (a < b), after the conversation's
                            // row: the lock order of a direct send.
                            let mut taken = Vec::with_capacity(2);
                            for user in [&a, &b] {
                                let (position,): (i64,) = sqlx::query_as(TAKE_POSITION)
                                    .bind(user.as_str())
                                    .fetch_one(&mut *tx)
                                    .await
                                    .map_err(repo_error(context))?;
                                sqlx::query(INSERT_UPDATED_NOTICE)
                                    .bind(user.as_str())
                                    .bind(position)
                                    .bind(conversation)
                                    .bind(seq)
                                    .bind(changed.id.as_str())
                                    .bind(request.at)
                                    .execute(&mut *tx)
                                    .await
                                    .map_err(repo_error("placing a change in a stream"))?;
                                taken.push(StreamPosition {
                                    user: stored_user_id(user)?,
                                    cursor: stored_cursor(position)?,
                                });
                            }
                            // The sender's position first, then the receiver's.
                            if taken[0].user != changed.sender_id {
                                taken.swap(0, 1);
                            }
                            taken
                        }
                        ("group", ..) => Vec::new(),
                        (kind, ..) => {
                            return Err(RepoError::corrupt(
                                "conversation",
                                format!("a {kind} conversation without its fields"),
                            ))
                        }
                    };
                    tx.commit().await.map_err(repo_error(context))?;
                    let version = match positions.is_empty() {
                        true => stored_seq(members_version)?,
                        false => 0,
                    };
                    let change = MessageChange {
                        conversation_id: request.conversation.clone(),
                        message_id: changed.id.clone(),
                        actor: request.actor.clone(),
                        kind: change_kind,
                        at: request.at,
                        seq: stored_seq(seq)?,
                    };
                    Ok(ChangeOutcome::Changed(StoredChange {
                        update: Update { change, message: changed },
                        positions,
                        version,
                    }))
                }
            }
        };
    };
}

pub(crate) use impl_changes;
