//! Group sends on PostgreSQL, committed together when they queue up.
//!
//! A group's sends are serialized by the group's row lock (src/groups.rs), and each holds it
//! until its commit is durable: one WAL flush after another, where sends between different
//! users share their flushes. So the sends of one instance to one group go through one task
//! per group while any are waiting: a send that finds nobody ahead is stored alone by the one
//! statement `GROUP_APPEND`; the sends that arrived meanwhile are stored together in one
//! transaction (one lock, one flush, consecutive seqs in arrival order) by `GROUP_APPEND_MANY`.
//! Should that transaction fail (a client id used already, say), its sends are stored one by
//! one, so that only the failing one fails.
//!
//! The task runs apart from the callers, so a caller that gives up (its deadline passed)
//! leaves the others served; its send is dropped if it has not been started yet.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::postgres::PgPool;
use tokio::sync::oneshot;

use application::ports::{stored_seq, RepoError, RepoResult};
use domain::{ConversationId, Message};

use super::CLIENT_ID_INDEX;
use crate::error::repo_error;

/// A group message stored with its seq and the membership version it was stored under;
/// `None`, with nothing written, when its sender is no member or already stored a message with
/// the same client id.
pub(super) type GroupOutcome = RepoResult<Option<(Message, u64)>>;

struct Job {
    message: Message,
    reply: oneshot::Sender<GroupOutcome>,
}

/// Most sends stored by one transaction.
const MAX_BATCH: usize = 256;

/// The sends waiting for each group's task; a group is here while its task runs.
#[derive(Default)]
pub(super) struct GroupSends(Mutex<HashMap<ConversationId, Vec<Job>>>);

impl GroupSends {
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<ConversationId, Vec<Job>>> {
        // The map stays consistent whatever a panicking holder did: every change is one call.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stores `message` in its group (see `MessageRepository::append_to_group`).
pub(super) async fn append(pool: &PgPool, sends: &Arc<GroupSends>, message: &Message) -> GroupOutcome {
    let group = message.conversation_id.clone();
    let (reply, outcome) = oneshot::channel();
    let job = Job { message: message.clone(), reply };
    let start = match sends.queues().entry(group.clone()) {
        Entry::Occupied(mut waiting) => {
            waiting.get_mut().push(job);
            false
        }
        Entry::Vacant(free) => {
            free.insert(vec![job]);
            true
        }
    };
    if start {
        tokio::spawn(write_group(pool.clone(), Arc::clone(sends), group));
    }
    outcome.await.map_err(|_| RepoError::Unavailable(anyhow::anyhow!("the group's writer has stopped")))?
}

/// Stores the group's waiting sends until none is left.
async fn write_group(pool: PgPool, sends: Arc<GroupSends>, group: ConversationId) {
    let mut running = Running { sends: &sends, group: &group, done: false };
    loop {
        let jobs = {
            let mut queues = sends.queues();
            match queues.get_mut(&group) {
                Some(jobs) if !jobs.is_empty() => jobs.drain(..jobs.len().min(MAX_BATCH)).collect::<Vec<_>>(),
                _ => {
                    queues.remove(&group);
                    running.done = true;
                    return;
                }
            }
        };
        // A sender that gave up gets nothing stored behind its back.
        let jobs: Vec<Job> = jobs.into_iter().filter(|job| !job.reply.is_closed()).collect();
        let outcomes = match jobs.as_slice() {
            [] => Vec::new(),
            [job] => vec![append_one(&pool, &job.message).await],
            _ => match append_many(&pool, &group, &jobs).await {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    tracing::debug!(group = %group, sends = jobs.len(), error = %error, "storing group sends one by one");
                    let mut outcomes = Vec::with_capacity(jobs.len());
                    for job in &jobs {
                        outcomes.push(append_one(&pool, &job.message).await);
                    }
                    outcomes
                }
            },
        };
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

/// Should the task end by a panic, its group leaves the map, and its waiting sends with it
/// (their callers are answered "unavailable"), so that the next send starts a new task.
struct Running<'a> {
    sends: &'a GroupSends,
    group: &'a ConversationId,
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.sends.queues().remove(self.group);
        }
    }
}

/// A whole group send in one statement: lock the group's row (`FOR NO KEY UPDATE`, the lock
/// of an `UPDATE`, which waits for a change or send holding it and then reads the row as that
/// one left it; not `FOR UPDATE`, which would also wait for — and deadlock with — a read
/// whose notice names the group, holding the reader's member row), move the
/// sender's read position to the next seq — which finds no row if the sender is no member,
/// also when a change that removed them committed while this statement waited, since the
/// `UPDATE` skips a row deleted meanwhile —, insert the message at that seq if the sender's
/// row moved, and move the group's last seq, `updated_at` and last message to it. No row
/// comes back, and nothing is written, when the sender is no member. Locks: the group's
/// row, then the sender's member row (src/groups.rs).
const GROUP_APPEND: &str = "WITH g AS (\
        SELECT id, last_seq + 1 AS seq, members_version FROM conversations \
        WHERE id = $2 AND kind = 'group' FOR NO KEY UPDATE), \
    sender AS (\
        UPDATE members SET read_seq = g.seq, last_read_message_id = $1 FROM g \
        WHERE members.conversation_id = g.id AND members.user_id = $3 \
        RETURNING g.seq, g.members_version), \
    entry AS (\
        INSERT INTO messages (id, conversation_id, seq, sender_id, body, created_at, client_message_id, reply_to) \
        SELECT $1, $2, seq, $3, $4, $5, $6, $7 FROM sender \
        RETURNING seq), \
    moved AS (\
        UPDATE conversations SET last_seq = entry.seq, \
            updated_at = GREATEST(conversations.updated_at, $5), \
            last_message_id = GREATEST(conversations.last_message_id, $1) \
        FROM entry WHERE conversations.id = $2) \
    SELECT seq, members_version FROM sender";

async fn append_one(pool: &PgPool, message: &Message) -> GroupOutcome {
    let row: Result<Option<(i64, i64)>, sqlx::Error> = sqlx::query_as(GROUP_APPEND)
        .bind(message.id.as_str())
        .bind(message.conversation_id.as_str())
        .bind(message.sender_id.as_str())
        .bind(message.body.as_str())
        .bind(message.created_at)
        .bind(message.client_id.as_ref().map(|id| id.as_str()))
        .bind(message.reply_to.as_ref().map(|quote| quote.message_id.as_str()))
        .fetch_optional(pool)
        .await;
    match row {
        Ok(Some((seq, version))) => Ok(Some((stored(message, seq)?, stored_seq(version)?))),
        Ok(None) => Ok(None),
        Err(sqlx::Error::Database(db)) if db.constraint() == Some(CLIENT_ID_INDEX) => Ok(None),
        Err(error) => Err(repo_error("storing a group message")(error)),
    }
}

/// The first statement of a batch: the group's row, locked, with its last seq and version.
const LOCK_GROUP: &str = "SELECT last_seq, members_version FROM conversations \
    WHERE id = $1 AND kind = 'group' FOR NO KEY UPDATE";
/// The rest of a batch, with the group's row locked (`$7` its last seq): a new statement, so
/// it reads the members as they are now, and no change can move them until the commit. The
/// sends of members (`$2`…`$6` and the messages they answer `$8`, as arrays, in arrival order) take the next seqs in that order;
/// each sender's read position moves to their last one; the group to the last one. Returns
/// the stored ones' ids and seqs.
const GROUP_APPEND_MANY: &str = "WITH batch AS (\
        SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $8::text[]) \
            WITH ORDINALITY AS b (id, sender_id, body, created_at, client_message_id, reply_to, ordinal)), \
    accepted AS (\
        SELECT batch.*, $7::bigint + ROW_NUMBER() OVER (ORDER BY ordinal) AS seq FROM batch \
        WHERE EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = batch.sender_id)), \
    entries AS (\
        INSERT INTO messages (id, conversation_id, seq, sender_id, body, created_at, client_message_id, reply_to) \
        SELECT id, $1, seq, sender_id, body, created_at, client_message_id, reply_to FROM accepted \
        RETURNING id, seq, sender_id, created_at), \
    reads AS (\
        UPDATE members SET read_seq = last.seq, last_read_message_id = last.id \
        FROM (SELECT DISTINCT ON (sender_id) sender_id, seq, id FROM entries ORDER BY sender_id, seq DESC) AS last \
        WHERE members.conversation_id = $1 AND members.user_id = last.sender_id AND members.read_seq < last.seq), \
    moved AS (\
        UPDATE conversations SET last_seq = top.seq, \
            updated_at = GREATEST(conversations.updated_at, top.created_at), \
            last_message_id = GREATEST(conversations.last_message_id, top.id) \
        FROM (SELECT MAX(seq) AS seq, MAX(created_at) AS created_at, MAX(id) AS id FROM entries) AS top \
        WHERE conversations.id = $1 AND top.seq IS NOT NULL) \
    SELECT id, seq FROM entries";

/// Stores `jobs` (two or more sends to `group`) in one transaction; an error leaves nothing
/// stored.
async fn append_many(
    pool: &PgPool,
    group: &ConversationId,
    jobs: &[Job],
) -> Result<Vec<GroupOutcome>, RepoError> {
    let context = "storing group messages";
    let mut tx = pool.begin().await.map_err(repo_error(context))?;
    let locked: Option<(i64, i64)> = sqlx::query_as(LOCK_GROUP)
        .bind(group.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(repo_error(context))?;
    let Some((last_seq, version)) = locked else {
        // No such group: no sender is a member of it.
        return Ok(jobs.iter().map(|_| Ok(None)).collect());
    };
    let messages = jobs.iter().map(|job| &job.message);
    let ids: Vec<&str> = messages.clone().map(|m| m.id.as_str()).collect();
    let senders: Vec<&str> = messages.clone().map(|m| m.sender_id.as_str()).collect();
    let bodies: Vec<&str> = messages.clone().map(|m| m.body.as_str()).collect();
    let created_at: Vec<domain::Timestamp> = messages.clone().map(|m| m.created_at).collect();
    let client_ids: Vec<Option<&str>> =
        messages.clone().map(|m| m.client_id.as_ref().map(|id| id.as_str())).collect();
    let replies_to: Vec<Option<&str>> =
        messages.map(|m| m.reply_to.as_ref().map(|quote| quote.message_id.as_str())).collect();
    let stored_rows: Vec<(String, i64)> = sqlx::query_as(GROUP_APPEND_MANY)
        .bind(group.as_str())
        .bind(&ids)
        .bind(&senders)
        .bind(&bodies)
        .bind(&created_at)
        .bind(&client_ids)
        .bind(last_seq)
        .bind(&replies_to)
        .fetch_all(&mut *tx)
        .await
        .map_err(repo_error(context))?;
    tx.commit().await.map_err(repo_error(context))?;
    let seqs: HashMap<String, i64> = stored_rows.into_iter().collect();
    let version = stored_seq(version)?;
    Ok(jobs
        .iter()
        .map(|job| match seqs.get(job.message.id.as_str()) {
            Some(seq) => Ok(Some((stored(&job.message, *seq)?, version))),
            None => Ok(None),
        })
        .collect())
}

/// `message` as stored at `seq`: a group message has no receiver and is no system entry.
fn stored(message: &Message, seq: i64) -> RepoResult<Message> {
    Ok(Message { seq: stored_seq(seq)?, receiver_id: None, system: None, ..message.clone() })
}
