//! What the store does once per database when it connects, for documents stored by earlier
//! versions: each step runs until a `migrations` document records that it finished, is safe
//! next to sends and other servers doing the same at once, and leaves documents this store
//! could not read anyway as they are.

use application::ports::name_words;
use domain::UserId;
use futures_util::{FutureExt as _, TryStreamExt as _};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::Error;
use mongodb::ClientSession;

use crate::documents::DIRECT;
use crate::error::is_duplicate_key;
use crate::MongoStore;

/// Legacy messages positioned per round of the stream backfill.
const BACKFILL_BATCH: i64 = 500;

/// The `migrations` document that records a finished stream backfill.
const BACKFILL_MARKER: &str = "messageStreamPositions";

/// The `migrations` document that records a finished [`MongoStore::backfill_read_keys`].
const READ_KEYS_MARKER: &str = "indexedReads";

/// The `migrations` document that records a finished [`MongoStore::backfill_sequences`].
const SEQUENCES_MARKER: &str = "conversationSequences";

/// Legacy messages numbered per transaction of the sequence backfill: a conversation of any
/// length is numbered in transactions of a bounded size and duration.
const SEQUENCE_BATCH: i64 = 500;

impl MongoStore {
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
                self.transaction((self, id, &sender, &receiver), |session, context| {
                    let (store, id, sender, receiver) = *context;
                    async move { store.position_legacy(session, id, sender, receiver).await }.boxed()
                })
                .await?;
            }
        }
        finish(&migrations, BACKFILL_MARKER).await
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

    /// Gives users stored before searches went through `nameWords` their words, and
    /// conversations stored before the list went through `lastMessageId` their last
    /// message's id. Safe next to sends and other servers doing the same: every write sets
    /// what any of them would set, and `$max` never moves a last message back.
    pub(crate) async fn backfill_read_keys(&self) -> mongodb::error::Result<()> {
        let migrations = self.database().collection::<Document>("migrations");
        if migrations.find_one(doc! { "_id": READ_KEYS_MARKER }).await?.is_some() {
            return Ok(());
        }
        let users = self.users.clone_with_type::<Document>();
        let mut legacy = users
            .find(doc! { "nameWords": { "$exists": false } })
            .projection(doc! { "_id": 1, "fullName": 1 })
            .await?;
        while let Some(user) = legacy.try_next().await? {
            // A document this store could not read anyway is left as it is.
            let (Ok(id), Ok(full_name)) = (user.get_str("_id"), user.get_str("fullName")) else { continue };
            users
                .update_one(doc! { "_id": id }, doc! { "$set": { "nameWords": name_words(full_name) } })
                .await?;
        }
        let conversations = self.conversations.clone_with_type::<Document>();
        let messages = self.messages.clone_with_type::<Document>();
        let mut legacy = conversations
            .find(doc! { "lastMessageId": { "$exists": false } })
            .projection(doc! { "_id": 1 })
            .await?;
        while let Some(conversation) = legacy.try_next().await? {
            let Ok(id) = conversation.get_str("_id") else { continue };
            let last = messages
                .find_one(doc! { "conversationId": id })
                .sort(doc! { "_id": -1 })
                .projection(doc! { "_id": 1 })
                .await?;
            let last = last.as_ref().and_then(|m| m.get_str("_id").ok()).unwrap_or("");
            conversations.update_one(doc! { "_id": id }, doc! { "$max": { "lastMessageId": last } }).await?;
        }
        finish(&migrations, READ_KEYS_MARKER).await
    }

    /// Gives the conversations stored before sequences existed their seqs: each message
    /// the next one in id (creation) order, `lastSeq` their count, and a member document
    /// for each participant with everything read (what was there before the upgrade counts
    /// as read). Messages of a conversation without a document (never written by this
    /// server, but readable) are numbered too. A conversation is numbered in batches, each a
    /// transaction that records how far it got; `lastSeq` is set by the last one. A server
    /// serves only after this finished, so no send meets a half-numbered conversation (one
    /// without `lastSeq`). Two servers numbering the same conversation conflict on
    /// the same documents: one of them starts over, finds the other's progress and goes on
    /// from there.
    pub(crate) async fn backfill_sequences(&self) -> Result<(), Error> {
        let migrations = self.database().collection::<Document>("migrations");
        if migrations.find_one(doc! { "_id": SEQUENCES_MARKER }).await?.is_some() {
            return Ok(());
        }
        let messages = self.messages.clone_with_type::<Document>();
        // Conversations with unnumbered messages, in id order along `conversation_history`.
        let mut after = String::new();
        loop {
            let next = messages
                .find_one(doc! {
                    "seq": { "$exists": false },
                    "_id": { "$type": "string" },
                    "conversationId": { "$type": "string", "$gt": &after },
                })
                .sort(doc! { "conversationId": 1 })
                .projection(doc! { "conversationId": 1 })
                .await?;
            let Some(id) = next.as_ref().and_then(|m| m.get_str("conversationId").ok()) else { break };
            after = id.to_owned();
            self.number_conversation(&after).await?;
        }
        // Conversations without messages (or whose messages were all numbered by another
        // server while its transaction that sets `lastSeq` had not committed yet).
        let conversations = self.conversations.clone_with_type::<Document>();
        let mut after = String::new();
        loop {
            let next = conversations
                .find_one(
                    doc! { "lastSeq": { "$exists": false }, "_id": { "$type": "string", "$gt": &after } },
                )
                .sort(doc! { "_id": 1 })
                .projection(doc! { "_id": 1 })
                .await?;
            let Some(id) = next.as_ref().and_then(|c| c.get_str("_id").ok()) else { break };
            after = id.to_owned();
            self.number_conversation(&after).await?;
        }
        finish(&migrations, SEQUENCES_MARKER).await
    }

    async fn number_conversation(&self, conversation: &str) -> Result<(), Error> {
        loop {
            let done = self
                .transaction((self, conversation), |session, context| {
                    let (store, conversation) = *context;
                    async move { store.number_batch(session, conversation).await }.boxed()
                })
                .await?;
            if done {
                return Ok(());
            }
        }
    }

    /// Numbers the next batch of the conversation's messages; whether it was the last.
    async fn number_batch(&self, session: &mut ClientSession, id: &str) -> Result<bool, Error> {
        let conversations = self.conversations.clone_with_type::<Document>();
        let conversation = conversations.find_one(doc! { "_id": id }).session(&mut *session).await?;
        if conversation.as_ref().is_some_and(|c| c.contains_key("lastSeq")) {
            return Ok(true);
        }
        let migrations = self.database().collection::<Document>("migrations");
        let progress_id = format!("{SEQUENCES_MARKER}/{id}");
        let progress = migrations.find_one(doc! { "_id": &progress_id }).session(&mut *session).await?;
        let (mut last, mut count) = progress
            .as_ref()
            .map(|p| (p.get_str("after").unwrap_or("").to_owned(), p.get_i64("count").unwrap_or(0)))
            .unwrap_or_default();
        let messages = self.messages.clone_with_type::<Document>();
        let batch: Vec<Document> = messages
            .find(doc! { "conversationId": id, "_id": { "$type": "string", "$gt": &last } })
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .limit(SEQUENCE_BATCH)
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        for message in &batch {
            let Ok(message_id) = message.get_str("_id") else { continue };
            count += 1;
            messages
                .update_one(doc! { "_id": message_id }, doc! { "$set": { "seq": count } })
                .session(&mut *session)
                .await?;
            message_id.clone_into(&mut last);
        }
        if batch.len() as i64 == SEQUENCE_BATCH {
            migrations
                .update_one(doc! { "_id": &progress_id }, doc! { "$set": { "after": &last, "count": count } })
                .upsert(true)
                .session(&mut *session)
                .await?;
            return Ok(false);
        }
        if let Some(conversation) = conversation {
            let mut set = doc! { "lastSeq": count };
            if !conversation.contains_key("kind") {
                set.insert("kind", DIRECT);
            }
            conversations.update_one(doc! { "_id": id }, doc! { "$set": set }).session(&mut *session).await?;
            let participants = match conversation.get("participants") {
                Some(Bson::Array(participants)) => participants.clone(),
                _ => Vec::new(),
            };
            let joined_at =
                conversation.get("createdAt").cloned().unwrap_or(Bson::DateTime(bson::DateTime::now()));
            for participant in participants.iter().filter_map(Bson::as_str) {
                let mut member = doc! {
                    "kind": DIRECT,
                    "role": "member",
                    "joinedAt": joined_at.clone(),
                    "joinedSeq": 1_i64,
                    "readSeq": count,
                };
                if count > 0 {
                    member.insert("lastReadMessageId", &last);
                }
                self.members
                    .update_one(
                        doc! { "conversationId": id, "userId": participant },
                        doc! { "$setOnInsert": member },
                    )
                    .upsert(true)
                    .session(&mut *session)
                    .await?;
            }
        }
        if progress.is_some() {
            migrations.delete_one(doc! { "_id": &progress_id }).session(&mut *session).await?;
        }
        Ok(true)
    }
}

/// Records that the migration `marker` finished.
async fn finish(migrations: &mongodb::Collection<Document>, marker: &str) -> Result<(), Error> {
    let done = migrations
        .update_one(doc! { "_id": marker }, doc! { "$setOnInsert": { "completedAt": bson::DateTime::now() } })
        .upsert(true)
        .await;
    match done {
        // Another server finished at the same time.
        Err(error) if is_duplicate_key(&error) => Ok(()),
        other => other.map(drop),
    }
}

/// The id, sender and receiver of a legacy message document, if they are valid.
fn legacy_participants(message: &Document) -> Option<(&str, UserId, UserId)> {
    let id = message.get_str("_id").ok()?;
    let sender = UserId::parse(message.get_str("senderId").ok()?).ok()?;
    let receiver = UserId::parse(message.get_str("receiverId").ok()?).ok()?;
    (sender != receiver).then_some((id, sender, receiver))
}
