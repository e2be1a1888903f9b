//! The message repository on MongoDB: a send is one multi-document transaction, a user's
//! stream is read through two indexes.
//!
//! # Why positions are gap-free for every reader
//!
//! A send takes the next position of both users' streams by `$inc`-rementing their
//! `streamHeads` documents inside its transaction. MongoDB lets only one open transaction
//! write a document: a second one that writes the same head fails at once with a
//! `WriteConflict` (labelled `TransientTransactionError`) and the driver runs it again from
//! the start, on a fresh snapshot, after the first one ended. The same happens to a
//! transaction whose snapshot predates a head write committed since. So the transaction
//! that reads head `n` and writes `n + 1` commits after the one that wrote `n` committed:
//! per user, positions are committed in position order, and a reader that sees position
//! `p` can see every position below it.
//!
//! A stream read is two queries (the messages the user sent, and those they received), each
//! through its own index, merged by position. They are not one snapshot: a send committing
//! between them can show up in the second query while an earlier position that belongs to
//! the first one was committed just too late for it. The merged list is therefore cut at
//! its first hole; what is returned is always a run of consecutive positions right after
//! the cursor, and the rest is read by the client's next call.

use application::ports::{
    stored_cursor, Appended, MessageRepository, RepoError, RepoResult, StoredMessage, StreamItem,
};
use async_trait::async_trait;
use domain::{Conversation, ConversationId, Cursor, Message, MessageId, UserId};
use futures_util::{FutureExt as _, TryStreamExt as _};
use mongodb::bson::{self, doc, Document};
use mongodb::error::Error;
use mongodb::options::ReturnDocument;
use mongodb::ClientSession;

use crate::documents::{position, to_bson, ConversationDoc, MessageDoc};
use crate::error::{is_duplicate_key, repo_error};
use crate::MongoStore;

/// How often an append starts over after a duplicate key that a new attempt gets past: a
/// pair's conversation inserted by a racing send, on a server that reports that as a
/// duplicate key rather than a write conflict.
const DUPLICATE_KEY_ATTEMPTS: usize = 3;

/// Legacy messages positioned per round of the backfill.
const BACKFILL_BATCH: i64 = 500;

/// The `migrations` document that records a finished backfill.
const BACKFILL_MARKER: &str = "messageStreamPositions";

/// What an append's transaction stored.
struct Placed {
    conversation_id: String,
    sender_position: i64,
    receiver_position: i64,
}

/// A write of this very transaction could not be read back: never expected from a server.
#[derive(Debug)]
struct Vanished(&'static str);

#[async_trait]
impl MessageRepository for MongoStore {
    async fn append(&self, conversation: &Conversation, message: &Message) -> RepoResult<Appended> {
        // A retried send is found without writing anything.
        if let Some(earlier) = self.find_by_client_id(message).await? {
            return Ok(Appended::Existing(earlier));
        }
        for _ in 0..DUPLICATE_KEY_ATTEMPTS {
            match self.append_once(conversation, message).await {
                Ok(Placed { conversation_id, sender_position, receiver_position }) => {
                    return StoredMessage::placed(
                        message,
                        &conversation_id,
                        sender_position,
                        receiver_position,
                    )
                    .map(Appended::Created);
                }
                Err(error) if is_duplicate_key(&error) => {}
                Err(error) => return Err(append_error(error)),
            }
            // A unique index refused the message or its conversation; the transaction is
            // aborted, so nothing of it is stored. Which index decides the outcome:
            // - the sender's client id: a racing send with the same id committed first;
            if let Some(earlier) = self.find_by_client_id(message).await? {
                return Ok(Appended::Existing(earlier));
            }
            // - the message id, or the candidate conversation's id taken by another pair;
            if self.message_id_taken(&message.id).await? || self.conversation_id_taken(conversation).await? {
                return Err(RepoError::Conflict);
            }
            // - otherwise a race a new attempt gets past (see `DUPLICATE_KEY_ATTEMPTS`).
        }
        Err(RepoError::Unexpected(anyhow::anyhow!(
            "storing a message kept hitting a unique index that nothing stored explains"
        )))
    }

    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Vec<Message>> {
        // The driver reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! { "conversationId": conversation.as_str() };
        if let Some(before) = &before {
            filter.insert("_id", doc! { "$lt": before.as_str() });
        }
        // Newest first to take the page, then turned oldest first.
        let mut page = self
            .messages
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(i64::from(limit))
            .await
            .map_err(repo_error("listing messages"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(repo_error("listing messages"))?;
        page.reverse();
        page.into_iter().map(Message::try_from).collect()
    }

    async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>> {
        // The driver reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (sent, received) = futures_util::future::try_join(
            self.stream_side(user, Role::Sender, after, limit),
            self.stream_side(user, Role::Receiver, after, limit),
        )
        .await?;
        let mut items = sent;
        items.extend(received);
        items.sort_by_key(|item| item.cursor);
        items.truncate(limit as usize);
        // The two reads are not one snapshot: a send committing between them can leave a
        // hole, which the next read fills (see the module documentation).
        Ok(application::ports::consecutive_after(after, items))
    }

    async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor> {
        let head = self
            .heads
            .find_one(doc! { "_id": user.as_str() })
            .await
            .map_err(repo_error("reading a stream head"))?;
        head.map_or(Ok(Cursor::START), |head| stored_cursor(head.position))
    }
}

/// Which side of a message a user is on, and so which of its positions is theirs.
#[derive(Clone, Copy)]
enum Role {
    Sender,
    Receiver,
}

impl Role {
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Role::Sender => ("senderId", "senderPosition"),
            Role::Receiver => ("receiverId", "receiverPosition"),
        }
    }
}

fn append_error(error: Error) -> RepoError {
    match error.get_custom::<Vanished>() {
        Some(Vanished(what)) => {
            RepoError::Unexpected(anyhow::anyhow!("{what} vanished inside its own transaction"))
        }
        None => repo_error("storing a message")(error),
    }
}

impl MongoStore {
    /// One transaction: the pair's conversation, both stream positions and the message. The
    /// driver runs it again from the start after a transient error (a write conflict with a
    /// concurrent send on a head or the conversation, an election) and retries a commit
    /// whose outcome is unknown.
    async fn append_once(&self, conversation: &Conversation, message: &Message) -> Result<Placed, Error> {
        let mut session = self.database().client().start_session().await?;
        session
            .start_transaction()
            .and_run((self, conversation, message), |session, context| {
                let (store, conversation, message) = *context;
                async move { store.append_steps(session, conversation, message).await }.boxed()
            })
            .await
    }

    async fn append_steps(
        &self,
        session: &mut ClientSession,
        conversation: &Conversation,
        message: &Message,
    ) -> Result<Placed, Error> {
        // The heads first: they are what concurrent sends contend on, so a loser learns it
        // before doing any other work.
        let (sender_position, receiver_position) =
            self.take_positions(session, &message.sender_id, &message.receiver_id).await?;
        let conversation_id = self.join_conversation(session, conversation, message).await?;
        let doc = MessageDoc::stored(message, &conversation_id, sender_position, receiver_position);
        self.messages.insert_one(doc).session(&mut *session).await?;
        Ok(Placed { conversation_id, sender_position, receiver_position })
    }

    /// Takes the next position of both users' streams, in the order of their ids.
    async fn take_positions(
        &self,
        session: &mut ClientSession,
        sender: &UserId,
        receiver: &UserId,
    ) -> Result<(i64, i64), Error> {
        if sender <= receiver {
            let s = self.next_position(session, sender).await?;
            Ok((s, self.next_position(session, receiver).await?))
        } else {
            let r = self.next_position(session, receiver).await?;
            Ok((self.next_position(session, sender).await?, r))
        }
    }

    async fn next_position(&self, session: &mut ClientSession, user: &UserId) -> Result<i64, Error> {
        let head = self
            .heads
            .find_one_and_update(doc! { "_id": user.as_str() }, doc! { "$inc": { "position": 1_i64 } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await?;
        match head {
            Some(head) => Ok(head.position),
            // Servers return the document they upserted; read it back if one does not.
            None => self
                .heads
                .find_one(doc! { "_id": user.as_str() })
                .session(&mut *session)
                .await?
                .map(|head| head.position)
                .ok_or_else(|| Error::custom(Vanished("a stream head"))),
        }
    }

    /// Stores `candidate` if the pair has no conversation, and moves the pair's
    /// conversation's `updatedAt` forward to the message's date and its `lastMessageId` to
    /// the message's id (never backwards); returns the pair's conversation id.
    async fn join_conversation(
        &self,
        session: &mut ClientSession,
        candidate: &Conversation,
        message: &Message,
    ) -> Result<String, Error> {
        let pair = &candidate.participants;
        let mut fields = bson::to_document(&ConversationDoc::from(candidate)).map_err(Error::custom)?;
        // The upsert copies the filter's equality into a new document, and `$max` sets the
        // date and last message of a new one (a field may not be named by two operators).
        fields.remove("pairKey");
        fields.remove("updatedAt");
        fields.remove("lastMessageId");
        let filter = doc! { "pairKey": pair.key() };
        let conversations = self.conversations.clone_with_type::<Document>();
        let upserted = conversations
            .find_one_and_update(
                filter.clone(),
                doc! {
                    "$setOnInsert": fields,
                    "$max": { "updatedAt": to_bson(message.created_at), "lastMessageId": message.id.as_str() },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "_id": 1 })
            .session(&mut *session)
            .await?;
        let found = match upserted {
            Some(found) => Some(found),
            // Servers return the document they upserted; read it back if one does not.
            None => {
                conversations.find_one(filter).projection(doc! { "_id": 1 }).session(&mut *session).await?
            }
        };
        found
            .as_ref()
            .and_then(|found| found.get_str("_id").ok())
            .map(str::to_owned)
            .ok_or_else(|| Error::custom(Vanished("a conversation")))
    }

    /// The sender's message with the same client id as `message`, if there is one.
    async fn find_by_client_id(&self, message: &Message) -> RepoResult<Option<StoredMessage>> {
        let Some(client_id) = &message.client_id else { return Ok(None) };
        self.messages
            .find_one(doc! { "senderId": message.sender_id.as_str(), "clientMessageId": client_id.as_str() })
            .await
            .map_err(repo_error("finding a message by client id"))?
            .map(StoredMessage::try_from)
            .transpose()
    }

    async fn message_id_taken(&self, id: &MessageId) -> RepoResult<bool> {
        let found = self
            .messages
            .count_documents(doc! { "_id": id.as_str() })
            .limit(1)
            .await
            .map_err(repo_error("looking a message id up"))?;
        Ok(found > 0)
    }

    /// Whether `candidate`'s id belongs to a conversation of another pair.
    async fn conversation_id_taken(&self, candidate: &Conversation) -> RepoResult<bool> {
        let found = self
            .conversations
            .count_documents(doc! {
                "_id": candidate.id.as_str(),
                "pairKey": { "$ne": candidate.participants.key() },
            })
            .limit(1)
            .await
            .map_err(repo_error("looking a conversation id up"))?;
        Ok(found > 0)
    }

    /// Up to `limit` of the messages `user` sent (or received) after position `after`, in
    /// position order, through the role's stream index.
    async fn stream_side(
        &self,
        user: &UserId,
        role: Role,
        after: Cursor,
        limit: u32,
    ) -> RepoResult<Vec<StreamItem>> {
        let (user_field, position_field) = role.fields();
        let mut filter = doc! { user_field: user.as_str() };
        // `$exists` repeats the stream index's partial filter, so that every server's planner
        // sees at once that the index applies.
        filter.insert(position_field, doc! { "$exists": true, "$gt": i64::from(after) });
        let docs: Vec<MessageDoc> = self
            .messages
            .find(filter)
            .sort(doc! { position_field: 1 })
            .limit(i64::from(limit))
            .await
            .map_err(repo_error("reading a message stream"))?
            .try_collect()
            .await
            .map_err(repo_error("reading a message stream"))?;
        docs.into_iter()
            .map(|mut doc| {
                let stored = match role {
                    Role::Sender => doc.sender_position.take(),
                    Role::Receiver => doc.receiver_position.take(),
                };
                StreamItem::at_position(position(stored)?, doc.try_into()?)
            })
            .collect()
    }

    /// Gives the messages stored before streams existed (the original app's, or this
    /// server's before this version) their positions, in id (creation) order, each in a
    /// transaction of its own exactly like a send takes them: after every position already
    /// taken, so that no reader's cursor is ever passed by. Runs once per database: a
    /// `migrations` document records that it finished. Two servers starting at once share
    /// the work; each message is claimed by one of them only.
    pub(crate) async fn backfill_stream_positions(&self) -> Result<(), Error> {
        let migrations = self.database().collection::<Document>("migrations");
        if migrations.find_one(doc! { "_id": BACKFILL_MARKER }).await?.is_some() {
            return Ok(());
        }
        let legacy = self.messages.clone_with_type::<Document>();
        let mut after: Option<String> = None;
        loop {
            // Only string ids: what every version of this server writes (and what `$gt` on
            // the last one pages through).
            let mut filter = doc! { "senderPosition": { "$exists": false }, "_id": { "$type": "string" } };
            if let Some(after) = &after {
                filter.insert("_id", doc! { "$type": "string", "$gt": after });
            }
            let batch: Vec<Document> = legacy
                .find(filter)
                .sort(doc! { "_id": 1 })
                .projection(doc! { "_id": 1, "senderId": 1, "receiverId": 1 })
                .limit(BACKFILL_BATCH)
                .await?
                .try_collect()
                .await?;
            let Some(last) = batch.last().and_then(|last| last.get_str("_id").ok()) else { break };
            after = Some(last.to_owned());
            for message in &batch {
                // A document this store could not read anyway is left as it is: the store
                // must still start.
                let Some((id, sender, receiver)) = legacy_participants(message) else { continue };
                let mut session = self.database().client().start_session().await?;
                session
                    .start_transaction()
                    .and_run((self, id, &sender, &receiver), |session, context| {
                        let (store, id, sender, receiver) = *context;
                        async move { store.position_legacy(session, id, sender, receiver).await }.boxed()
                    })
                    .await?;
            }
        }
        let done = migrations
            .update_one(
                doc! { "_id": BACKFILL_MARKER },
                doc! { "$setOnInsert": { "completedAt": mongodb::bson::DateTime::now() } },
            )
            .upsert(true)
            .await;
        match done {
            // Another server finished at the same time.
            Err(error) if is_duplicate_key(&error) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn position_legacy(
        &self,
        session: &mut ClientSession,
        id: &str,
        sender: &UserId,
        receiver: &UserId,
    ) -> Result<(), Error> {
        let (sender_position, receiver_position) = self.take_positions(session, sender, receiver).await?;
        let claimed = self
            .messages
            .update_one(
                doc! { "_id": id, "senderPosition": { "$exists": false } },
                doc! { "$set": { "senderPosition": sender_position, "receiverPosition": receiver_position } },
            )
            .session(&mut *session)
            .await?;
        if claimed.matched_count == 0 {
            // Another server positioned it meanwhile: give the positions back.
            session.abort_transaction().await?;
        }
        Ok(())
    }
}

/// The id, sender and receiver of a legacy message document, if they are valid.
fn legacy_participants(message: &Document) -> Option<(&str, UserId, UserId)> {
    let id = message.get_str("_id").ok()?;
    let sender = UserId::parse(message.get_str("senderId").ok()?).ok()?;
    let receiver = UserId::parse(message.get_str("receiverId").ok()?).ok()?;
    (sender != receiver).then_some((id, sender, receiver))
}
