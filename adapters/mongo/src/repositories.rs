//! The repository ports on MongoDB.
//!
//! Every filter is built with `doc!` from typed values (validated ids, lower-cased text,
//! timestamps): client text only ever lands in a value position, never where it could be
//! read as an operator or a pattern.

use application::ports::{
    name_words, ConversationKey, ConversationPage, ConversationRepository, ConversationSummary, HealthCheck,
    MessageRepository, RepoError, RepoResult, Revocation, RevokedTokenRepository, SearchPrefix, UserQuery,
    UserRepository,
};
use async_trait::async_trait;
use domain::{Conversation, Message, MessageId, ParticipantPair, Timestamp, User, UserId, Username};
use futures_util::TryStreamExt as _;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::ReturnDocument;

use crate::documents::{to_bson, ConversationDoc, MessageDoc, RevokedTokenDoc, UserDoc};
use crate::error::repo_error;
use crate::MongoStore;

#[async_trait]
impl UserRepository for MongoStore {
    async fn insert(&self, user: &User) -> RepoResult<()> {
        // A taken `_id` or lower-cased username is refused by a unique index, also when two
        // inserts race.
        self.users.insert_one(UserDoc::from(user)).await.map_err(repo_error("inserting a user"))?;
        Ok(())
    }

    async fn find_by_id(&self, id: &UserId) -> RepoResult<Option<User>> {
        self.users
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(repo_error("finding a user by id"))?
            .map(User::try_from)
            .transpose()
    }

    async fn find_by_username(&self, username: &Username) -> RepoResult<Option<User>> {
        self.users
            .find_one(doc! { "usernameLower": username.normalized() })
            .await
            .map_err(repo_error("finding a user by username"))?
            .map(User::try_from)
            .transpose()
    }

    async fn list(&self, query: &UserQuery) -> RepoResult<Vec<User>> {
        // The driver reads a limit of 0 as "no limit".
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {
            "_id": { "$ne": query.exclude.as_str() },
            "usernameLower": { "$gt": query.after_username.as_deref().unwrap_or("") },
        };
        if let Some(prefix) = &query.search {
            // Each side one range of its index (`username_lower`, `name_words`); `$elemMatch`
            // so that one word must lie in the whole range, not one word above its start and
            // another below its end.
            filter.insert(
                "$or",
                vec![
                    doc! { "usernameLower": prefix_range(prefix) },
                    doc! { "nameWords": { "$elemMatch": prefix_range(prefix) } },
                ],
            );
        }
        self.users
            .find(filter)
            .sort(doc! { "usernameLower": 1 })
            .limit(i64::from(query.limit))
            .await
            .map_err(repo_error("listing users"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(repo_error("listing users"))?
            .into_iter()
            .map(User::try_from)
            .collect()
    }
}

#[async_trait]
impl ConversationRepository for MongoStore {
    async fn find_or_insert(&self, candidate: &Conversation) -> RepoResult<Conversation> {
        // Insert-if-absent on the unique pair key and read back whichever document won, in
        // one round trip and without a transaction.
        let pair = &candidate.participants;
        let mut fields = bson::to_document(&ConversationDoc::from(candidate))
            .map_err(|e| RepoError::Unexpected(anyhow::Error::new(e).context("encoding a conversation")))?;
        // The upsert copies the filter's equality into the new document.
        fields.remove("pairKey");
        let upserted = self
            .conversations
            .find_one_and_update(doc! { "pairKey": pair.key() }, doc! { "$setOnInsert": fields })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match upserted {
            Ok(Some(found)) => found.try_into(),
            // Two upserts of a new pair raced and this one lost on the unique index (servers
            // before 4.2 don't retry that themselves), or the candidate's id is taken by
            // another pair: the pair's conversation, if there is one now, is the answer.
            Err(error) if crate::error::is_duplicate_key(&error) => {
                self.find_by_participants(pair).await?.ok_or(RepoError::Conflict)
            }
            Err(error) => Err(repo_error("inserting a conversation")(error)),
            // MongoDB always returns the document of an upsert asked for the new version; a
            // look-up makes this safe on wire-compatible servers that answer `null` to the
            // loser of a race instead (SecantusDB does).
            Ok(None) => self.find_by_participants(pair).await?.ok_or_else(|| {
                RepoError::Unexpected(anyhow::anyhow!("conversation vanished right after its upsert"))
            }),
        }
    }

    async fn find_by_participants(&self, pair: &ParticipantPair) -> RepoResult<Option<Conversation>> {
        self.conversations
            .find_one(doc! { "pairKey": pair.key() })
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
        // Two reads, each through its index (`pair_key`, then `conversation_history`), and not
        // one snapshot: a message sent in between may be listed with the conversation's
        // earlier `updatedAt`.
        let Some(conversation) = self.find_by_participants(pair).await? else { return Ok(None) };
        let messages = self.list_by_conversation(&conversation.id, before, limit).await?;
        Ok(Some(ConversationPage { conversation, messages }))
    }

    async fn page_for_user(
        &self,
        user: &UserId,
        after: Option<ConversationKey>,
        limit: u32,
    ) -> RepoResult<Vec<ConversationSummary>> {
        // The driver reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! { "participants": user.as_str() };
        if let Some(after) = after {
            // Below the key, in key order; the bound on `updatedAt` alone is what the index
            // range is made of, the `$or` settles ties within one millisecond.
            let (at, last) =
                (to_bson(after.updated_at), after.last_message.as_ref().map_or("", |m| m.as_str()));
            filter.insert("updatedAt", doc! { "$lte": at });
            filter.insert(
                "$or",
                vec![
                    doc! { "updatedAt": { "$lt": at } },
                    doc! { "updatedAt": at, "lastMessageId": { "$lt": last } },
                    doc! { "updatedAt": at, "lastMessageId": last, "_id": { "$lt": after.id.as_str() } },
                ],
            );
        }
        let order = doc! { "updatedAt": -1, "lastMessageId": -1, "_id": -1 };
        let pipeline = [
            doc! { "$match": filter },
            // Along the `participants_recent` index.
            doc! { "$sort": order.clone() },
            doc! { "$limit": i64::from(limit) },
            // The last message, by its id.
            doc! { "$lookup": {
                "from": self.messages.name(),
                "localField": "lastMessageId",
                "foreignField": "_id",
                "as": "lastMessage",
            } },
            // A join need not keep the order; sorting the page again costs nothing.
            doc! { "$sort": order },
        ];
        let rows: Vec<Document> = self
            .conversations
            .aggregate(pipeline)
            .await
            .map_err(repo_error("listing conversations"))?
            .try_collect()
            .await
            .map_err(repo_error("listing conversations"))?;
        rows.into_iter().map(summary).collect()
    }
}

/// The range of the strings that start with `prefix`.
fn prefix_range(prefix: &SearchPrefix) -> Document {
    let mut range = doc! { "$gte": prefix.from.as_str() };
    if let Some(to) = &prefix.to {
        range.insert("$lt", to.as_str());
    }
    range
}

/// A conversation document with its `lastMessage` array (empty or one message).
fn summary(mut row: Document) -> RepoResult<ConversationSummary> {
    let last = match row.remove("lastMessage") {
        Some(Bson::Array(messages)) => messages.into_iter().next(),
        _ => None,
    };
    let conversation: ConversationDoc =
        bson::from_document(row).map_err(|e| RepoError::corrupt("conversation", e))?;
    let last_message = last
        .map(|m| bson::from_bson::<MessageDoc>(m).map_err(|e| RepoError::corrupt("message", e)))
        .transpose()?
        .map(Message::try_from)
        .transpose()?;
    Ok(ConversationSummary { conversation: conversation.try_into()?, last_message })
}

/// The `migrations` document that records a finished [`MongoStore::backfill_read_keys`].
const READ_KEYS_MARKER: &str = "indexedReads";

impl MongoStore {
    /// Gives users stored before searches went through `nameWords` their words, and
    /// conversations stored before the list went through `lastMessageId` their last
    /// message's id. Runs once per database: a `migrations` document records that it
    /// finished. Safe next to sends and other servers doing the same: every write sets what
    /// any of them would set, and `$max` never moves a last message back.
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
        let done = migrations
            .update_one(
                doc! { "_id": READ_KEYS_MARKER },
                doc! { "$setOnInsert": { "completedAt": bson::DateTime::now() } },
            )
            .upsert(true)
            .await;
        match done {
            // Another server finished at the same time.
            Err(error) if crate::error::is_duplicate_key(&error) => Ok(()),
            other => other.map(drop),
        }
    }
}

#[async_trait]
impl RevokedTokenRepository for MongoStore {
    async fn revoke(&self, token_id: &str, expires_at: Timestamp) -> RepoResult<()> {
        // Revoking twice keeps the first record, like the SQL store's `ON CONFLICT DO NOTHING`.
        let done = self
            .revoked
            .update_one(
                doc! { "_id": token_id },
                doc! { "$setOnInsert": { "expiresAt": to_bson(expires_at) } },
            )
            .upsert(true)
            .await;
        match done {
            Ok(_) => Ok(()),
            // Two revocations of one token raced: it is revoked, which is all that was asked.
            Err(error) if crate::error::is_duplicate_key(&error) => Ok(()),
            Err(error) => Err(repo_error("revoking a token")(error)),
        }
    }

    async fn is_revoked(&self, token_id: &str) -> RepoResult<bool> {
        let found = self
            .revoked
            .count_documents(doc! { "_id": token_id })
            .limit(1)
            .await
            .map_err(repo_error("checking a token's revocation"))?;
        Ok(found > 0)
    }

    async fn active(&self, now: Timestamp) -> RepoResult<Vec<Revocation>> {
        let docs: Vec<RevokedTokenDoc> = self
            .revoked
            .find(doc! { "expiresAt": { "$gte": to_bson(now) } })
            .await
            .map_err(repo_error("listing active revocations"))?
            .try_collect()
            .await
            .map_err(repo_error("listing active revocations"))?;
        docs.into_iter().map(Revocation::try_from).collect()
    }

    async fn purge_expired(&self, now: Timestamp) -> RepoResult<u64> {
        let done = self
            .revoked
            .delete_many(doc! { "expiresAt": { "$lt": to_bson(now) } })
            .await
            .map_err(repo_error("purging expired revocations"))?;
        Ok(done.deleted_count)
    }
}

#[async_trait]
impl HealthCheck for MongoStore {
    async fn ping(&self) -> RepoResult<()> {
        self.database().run_command(doc! { "ping": 1 }).await.map_err(repo_error("pinging the database"))?;
        Ok(())
    }
}
