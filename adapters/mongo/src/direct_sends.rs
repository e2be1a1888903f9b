//! Direct sends on MongoDB, stored together when they queue up.
//!
//! A direct send alone is a transaction of six round trips (both stream heads, the pair's
//! conversation, the sender's read position, the message, the commit), each of which a server
//! serves with a fixed cost on top of the documents it writes. So the direct sends of one
//! instance go through one task while any are waiting: a send that finds nobody ahead is
//! stored alone (`MongoStore::append_alone`); the sends that arrived meanwhile are stored
//! together by one transaction of nine round trips whatever their number — their client ids
//! looked up by one query (before the transaction), then one `update` command with a
//! statement per stream head (a user in several sends moves by as many positions, taken in
//! arrival order) and one query reading the heads back, one query finding the pairs'
//! conversations, one `update` with a statement per pair's conversation (as many seqs, in
//! arrival order) and one query reading them back, one `update` with a statement per
//! (conversation, sender) read position, one `insert` of all the messages, one commit.
//! Should that transaction fail (a client id used already, say), its sends are stored one
//! by one, so that only the failing one fails.
//!
//! The batch holds the turns (see `turns`) of every stream head it writes, so that no other
//! transaction of this instance collides with it; it is one transaction, so all its
//! positions become visible at once, after every earlier one (see `streams`: the heads it
//! writes conflict with any transaction that wrote them meanwhile, which then starts over).
//! The task runs apart from the callers, so a caller that gives up (its deadline passed)
//! leaves the others served; its send is dropped if it has not been started yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use application::ports::{Appended, RepoError, RepoResult, StoredMessage};
use domain::{Conversation, Message, UserId};
use futures_util::{FutureExt as _, TryStreamExt as _};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::Error;
use mongodb::ClientSession;
use tokio::sync::oneshot;

use crate::documents::{to_bson, ConversationDoc, MessageDoc, DIRECT};
use crate::error::repo_error;
use crate::{turns, Inconsistent, MongoStore};

/// Most sends stored by one transaction.
const MAX_BATCH: usize = 128;

struct Job {
    conversation: Conversation,
    message: Message,
    receiver: UserId,
    reply: oneshot::Sender<RepoResult<Appended>>,
}

/// The direct sends waiting for this instance's writer, and whether it runs.
#[derive(Default)]
pub(crate) struct DirectSends(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    jobs: Vec<Job>,
    running: bool,
}

impl DirectSends {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Every change under the lock is one call that cannot panic halfway.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a direct send was stored.
pub(crate) struct Placed {
    pub(crate) conversation_id: String,
    pub(crate) seq: i64,
    pub(crate) sender_position: i64,
    pub(crate) receiver_position: i64,
}

impl Placed {
    /// The caller's answer for `message` stored here.
    pub(crate) fn stored(self, message: &Message) -> RepoResult<Appended> {
        let message = Message { seq: application::ports::stored_seq(self.seq)?, ..message.clone() };
        StoredMessage::placed(&message, &self.conversation_id, self.sender_position, self.receiver_position)
            .map(Appended::Created)
    }
}

impl MongoStore {
    /// Stores a direct send through this instance's writer (see the module documentation).
    pub(crate) async fn append_direct(
        &self,
        conversation: &Conversation,
        message: &Message,
        receiver: &UserId,
    ) -> RepoResult<Appended> {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            conversation: conversation.clone(),
            message: message.clone(),
            receiver: receiver.clone(),
            reply,
        };
        let start = {
            let mut waiting = self.direct_sends.waiting();
            waiting.jobs.push(job);
            !std::mem::replace(&mut waiting.running, true)
        };
        if start {
            tokio::spawn(self.clone().write_direct());
        }
        outcome
            .await
            .map_err(|_| RepoError::Unavailable(anyhow::anyhow!("the direct sends' writer has stopped")))?
    }

    /// Stores the waiting direct sends until none is left.
    async fn write_direct(self) {
        let mut running = Running { sends: &self.direct_sends, done: false };
        loop {
            let jobs: Vec<Job> = {
                let mut waiting = self.direct_sends.waiting();
                if waiting.jobs.is_empty() {
                    waiting.running = false;
                    running.done = true;
                    return;
                }
                let take = waiting.jobs.len().min(MAX_BATCH);
                waiting.jobs.drain(..take).collect()
            };
            // A sender that gave up gets nothing stored behind its back.
            let jobs: Vec<Job> = jobs.into_iter().filter(|job| !job.reply.is_closed()).collect();
            if let [_] = jobs.as_slice() {
                let job = jobs.into_iter().next().expect("one job");
                let outcome = self.append_alone(&job.conversation, &job.message, &job.receiver).await;
                let _ = job.reply.send(outcome);
            } else if !jobs.is_empty() {
                self.write_batch(jobs).await;
            }
        }
    }

    /// Stores two or more sends together, or one by one if that fails.
    async fn write_batch(&self, jobs: Vec<Job>) {
        // Sends retried with a client id stored already are answered without writing.
        let jobs = match self.answer_retried(jobs).await {
            Ok(jobs) => jobs,
            Err((jobs, error)) => {
                for job in jobs {
                    let _ = job.reply.send(Err(repo_error("finding messages by client id")(error.clone())));
                }
                return;
            }
        };
        // A second send with the same client id as one of the batch waits for the batch,
        // then finds that one.
        let mut seen = HashSet::new();
        let (batch, later): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|job| match &job.message.client_id {
                Some(client_id) => seen.insert((job.message.sender_id.clone(), client_id.clone())),
                None => true,
            });
        let placed = if batch.len() < 2 {
            None
        } else {
            let keys = batch
                .iter()
                .flat_map(|job| {
                    [turns::head(job.message.sender_id.as_str()), turns::head(job.receiver.as_str())]
                })
                .collect();
            let _turn = self.turns.take(keys).await;
            self.transaction((self, batch.as_slice()), |session, context| {
                let (store, batch) = *context;
                async move { store.append_batch_steps(session, batch).await }.boxed()
            })
            .await
            .ok()
        };
        let alone = match placed {
            Some(placed) => {
                for (job, placed) in batch.into_iter().zip(placed) {
                    let _ = job.reply.send(placed.stored(&job.message));
                }
                Vec::new()
            }
            // Nothing of the batch is stored: each send on its own finds what stops it (or
            // is stored).
            None => batch,
        };
        for job in alone.into_iter().chain(later) {
            let outcome = self.append_alone(&job.conversation, &job.message, &job.receiver).await;
            let _ = job.reply.send(outcome);
        }
    }

    /// Answers the jobs whose sender stored a message with the same client id already, in
    /// one query; returns the others.
    async fn answer_retried(&self, jobs: Vec<Job>) -> Result<Vec<Job>, (Vec<Job>, Error)> {
        let keys: Vec<Document> = jobs
            .iter()
            .filter_map(|job| {
                let client_id = job.message.client_id.as_ref()?;
                Some(doc! { "senderId": job.message.sender_id.as_str(), "clientMessageId": client_id.as_str() })
            })
            .collect();
        if keys.is_empty() {
            return Ok(jobs);
        }
        let found: Result<Vec<MessageDoc>, Error> =
            async { self.messages.find(doc! { "$or": keys }).await?.try_collect().await }.await;
        let mut found: HashMap<(String, String), MessageDoc> = match found {
            Ok(found) => found
                .into_iter()
                .filter_map(|doc| Some(((doc.sender_id.clone(), doc.client_message_id.clone()?), doc)))
                .collect(),
            Err(error) => return Err((jobs, error)),
        };
        let mut rest = Vec::with_capacity(jobs.len());
        for job in jobs {
            let key =
                job.message.client_id.as_ref().map(|client_id| {
                    (job.message.sender_id.as_str().to_owned(), client_id.as_str().to_owned())
                });
            match key.and_then(|key| found.remove(&key)) {
                Some(earlier) => {
                    let _ = job.reply.send(earlier.try_into().map(Appended::Existing));
                }
                None => rest.push(job),
            }
        }
        Ok(rest)
    }

    /// The batch's transaction: the heads first (what concurrent sends contend on), then the
    /// pairs' conversations, the senders' read positions and the messages.
    async fn append_batch_steps(
        &self,
        session: &mut ClientSession,
        jobs: &[Job],
    ) -> Result<Vec<Placed>, Error> {
        // Stream heads: how many positions each user takes, then each send's, in arrival
        // order (the sender's before the receiver's when they are the same user).
        let mut moves: BTreeMap<&str, i64> = BTreeMap::new();
        for job in jobs {
            *moves.entry(job.message.sender_id.as_str()).or_default() += 1;
            *moves.entry(job.receiver.as_str()).or_default() += 1;
        }
        let statements = moves
            .iter()
            .map(|(user, by)| doc! { "q": { "_id": *user }, "u": { "$inc": { "position": *by } }, "upsert": true })
            .collect();
        self.update_all(session, self.heads.name(), statements).await?;
        let users: Vec<&str> = moves.keys().copied().collect();
        let heads: HashMap<String, i64> = self
            .heads
            .find(doc! { "_id": { "$in": &users } })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .map_ok(|head| (head.user_id, head.position))
            .try_collect()
            .await?;
        let mut next: HashMap<&str, i64> = HashMap::with_capacity(moves.len());
        for (user, by) in &moves {
            let head = heads
                .get(*user)
                .ok_or_else(|| Inconsistent::error("a stream head vanished inside its own transaction"))?;
            next.insert(*user, head - by + 1);
        }
        let mut take = |user: &UserId| {
            let position = next.get_mut(user.as_str()).expect("every user of the batch has a head");
            *position += 1;
            *position - 1
        };
        let positions: Vec<(i64, i64)> =
            jobs.iter().map(|job| (take(&job.message.sender_id), take(&job.receiver))).collect();

        // The pairs' conversations: as many seqs as the pair has sends, its date and last
        // message moved forward to its newest (never backwards).
        struct Pair<'a> {
            candidate: &'a Conversation,
            sends: i64,
            updated_at: DateTime,
            last_message_id: &'a str,
        }
        let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
        for job in jobs {
            let at = to_bson(job.message.created_at);
            let id = job.message.id.as_str();
            pairs
                .entry(job.conversation.participants.key())
                .and_modify(|pair| {
                    pair.sends += 1;
                    pair.updated_at = pair.updated_at.max(at);
                    pair.last_message_id = pair.last_message_id.max(id);
                })
                .or_insert(Pair {
                    candidate: &job.conversation,
                    sends: 1,
                    updated_at: at,
                    last_message_id: id,
                });
        }
        // The pairs' conversations that exist, found by one query: each is then written by
        // its id, which every server finds through its primary index (SecantusDB, the stand-in
        // the tests run on, scans the collection for a pair key).
        let keys: Vec<&str> = pairs.keys().map(String::as_str).collect();
        let conversations = self.conversations.clone_with_type::<Document>();
        let existing: HashMap<String, String> = conversations
            .find(doc! { "pairKey": { "$in": &keys } })
            .projection(doc! { "_id": 1, "pairKey": 1 })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_filter_map(|found| async move {
                Ok(match (found.get_str("pairKey"), found.get_str("_id")) {
                    (Ok(key), Ok(id)) => Some((key.to_owned(), id.to_owned())),
                    _ => None,
                })
            })
            .try_collect()
            .await?;
        let mut ids = Vec::with_capacity(pairs.len());
        let statements = pairs
            .iter()
            .map(|(key, pair)| {
                let mut update = doc! {
                    "$inc": { "lastSeq": pair.sends },
                    "$max": { "updatedAt": pair.updated_at, "lastMessageId": pair.last_message_id },
                };
                match existing.get(key) {
                    Some(id) => {
                        ids.push(id.clone());
                        doc! { "q": { "_id": id, "pairKey": key }, "u": update }
                    }
                    // The pair's first send: its conversation is the candidate (a racing
                    // transaction that stores the pair's first makes this one start over).
                    None => {
                        ids.push(pair.candidate.id.as_str().to_owned());
                        update.insert("$setOnInsert", ConversationDoc::direct_on_insert(pair.candidate));
                        doc! { "q": { "pairKey": key }, "u": update, "upsert": true }
                    }
                }
            })
            .collect();
        self.update_all(session, self.conversations.name(), statements).await?;
        let stored: Vec<Document> = conversations
            .find(doc! { "_id": { "$in": &ids } })
            .projection(doc! { "_id": 1, "lastSeq": 1, "pairKey": 1 })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        // Per pair: its conversation's id and its next seq.
        let mut seqs: HashMap<String, (String, i64)> = HashMap::with_capacity(stored.len());
        for found in &stored {
            let (Ok(key), Ok(id), Ok(last)) =
                (found.get_str("pairKey"), found.get_str("_id"), found.get_i64("lastSeq"))
            else {
                return Err(Inconsistent::error("a conversation without its pair, id or seq"));
            };
            let sends = pairs.get(key).map_or(0, |pair| pair.sends);
            seqs.insert(key.to_owned(), (id.to_owned(), last - sends + 1));
        }

        let mut placed = Vec::with_capacity(jobs.len());
        let mut docs = Vec::with_capacity(jobs.len());
        // Per (conversation, sender): the read position, moved to their last send.
        let mut reads: BTreeMap<(String, &str), (i64, &str, &Conversation)> = BTreeMap::new();
        let mut receivers = Vec::new();
        for (job, (sender_position, receiver_position)) in jobs.iter().zip(positions) {
            let (conversation_id, next) = seqs
                .get_mut(&job.conversation.participants.key())
                .ok_or_else(|| Inconsistent::error("a conversation vanished inside its own transaction"))?;
            let seq = *next;
            *next += 1;
            let conversation_id = conversation_id.clone();
            reads.insert(
                (conversation_id.clone(), job.message.sender_id.as_str()),
                (seq, job.message.id.as_str(), &job.conversation),
            );
            if seq == 1 {
                receivers.push((conversation_id.clone(), job.receiver.as_str(), &job.conversation));
            }
            let mut doc = MessageDoc::stored(&job.message, 0, Some((sender_position, receiver_position)))
                .map_err(|_| Inconsistent::error("a message that does not encode"))?;
            doc.conversation_id.clone_from(&conversation_id);
            doc.seq = Some(seq);
            docs.push(doc);
            placed.push(Placed { conversation_id, seq, sender_position, receiver_position });
        }
        // The sender has read their own messages; the members are stored with the
        // conversation, and upserts keep a send working on a conversation that lost them.
        let joined = |conversation: &Conversation| {
            doc! { "kind": DIRECT, "role": "member", "joinedAt": to_bson(conversation.created_at), "joinedSeq": 1_i64 }
        };
        let mut statements: Vec<Document> = reads
            .iter()
            .map(|((conversation_id, sender), (seq, message_id, conversation))| {
                doc! {
                    "q": { "conversationId": conversation_id, "userId": *sender },
                    "u": {
                        "$set": { "readSeq": *seq, "lastReadMessageId": *message_id },
                        "$setOnInsert": joined(conversation),
                    },
                    "upsert": true,
                }
            })
            .collect();
        for (conversation_id, receiver, conversation) in receivers {
            let mut unread = joined(conversation);
            unread.insert("readSeq", 0_i64);
            statements.push(doc! {
                "q": { "conversationId": conversation_id, "userId": receiver },
                "u": { "$setOnInsert": unread },
                "upsert": true,
            });
        }
        self.update_all(session, self.members.name(), statements).await?;
        self.messages.insert_many(docs).session(&mut *session).await?;
        Ok(placed)
    }

    /// Runs the `update` statements on `collection` in one command within the session's
    /// transaction, in their order; an error if any of them failed.
    async fn update_all(
        &self,
        session: &mut ClientSession,
        collection: &str,
        statements: Vec<Document>,
    ) -> Result<(), Error> {
        let expected = statements.len() as i64;
        let reply = self
            .database()
            .run_command(doc! { "update": collection, "updates": statements, "ordered": true })
            .session(&mut *session)
            .await?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            if let Some(Bson::Document(first)) = errors.first() {
                let code = first.get_i32("code").unwrap_or_default();
                let message = first.get_str("errmsg").unwrap_or_default().to_owned();
                return Err(Error::custom(BatchWriteError { code, message }));
            }
        }
        // Every statement matched its document or inserted it.
        let done = match reply.get("n") {
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Int64(n)) => *n,
            _ => -1,
        };
        if done != expected {
            return Err(Inconsistent::error("an update statement of a batch did nothing"));
        }
        Ok(())
    }
}

/// A statement of a batch's `update` command that the server refused.
#[derive(Debug, Clone)]
struct BatchWriteError {
    code: i32,
    message: String,
}

impl std::fmt::Display for BatchWriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a statement of a batch failed ({}): {}", self.code, self.message)
    }
}

impl std::error::Error for BatchWriteError {}

/// Should the task end by a panic, its waiting sends are dropped (their callers are answered
/// "unavailable") and the next send starts a new task.
struct Running<'a> {
    sends: &'a DirectSends,
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut waiting = self.sends.waiting();
            waiting.jobs.clear();
            waiting.running = false;
        }
    }
}
