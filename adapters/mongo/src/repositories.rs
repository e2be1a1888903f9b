//! The repository ports on MongoDB.
//!
//! Every filter is built with `doc!` from typed values (validated ids, lower-cased text,
//! timestamps): client text only ever lands in a value position, never where it could be
//! read as an operator or a pattern.

use std::collections::HashMap;

use application::ports::{
    ConversationKey, ConversationPage, ConversationRepository, ConversationSummary, HealthCheck,
    MessageRepository, RepoError, RepoResult, Revocation, RevokedTokenRepository, SearchPrefix, UserQuery,
    UserRepository,
};
use async_trait::async_trait;
use domain::{
    Chat, Conversation, ConversationId, Member, Message, MessageId, ParticipantPair, Role, Timestamp, User,
    UserId, Username,
};
use futures_util::{FutureExt as _, TryStreamExt as _};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::ReturnDocument;
use mongodb::ClientSession;

use crate::documents::{
    seq_to_i64, to_bson, ConversationDoc, MemberDoc, MessageDoc, RevokedTokenDoc, UserDoc, DIRECT, GROUP,
};
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

    async fn find_many(&self, ids: &[UserId]) -> RepoResult<Vec<User>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = ids.iter().map(UserId::as_str).collect();
        self.users
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(repo_error("finding users by id"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(repo_error("finding users by id"))?
            .into_iter()
            .map(User::try_from)
            .collect()
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
        // Insert-if-absent on the unique pair key and read back whichever document won; a new
        // conversation is stored with its two members, in one transaction.
        let found = self
            .transaction((self, candidate), |session, context| {
                let (store, candidate) = *context;
                async move { store.find_or_insert_steps(session, candidate).await }.boxed()
            })
            .await;
        match found {
            Ok(Some(found)) => found.try_into(),
            // Two inserts of a new pair raced and this one lost on the unique index, or the
            // candidate's id is taken by another conversation: the pair's conversation, if
            // there is one now, is the answer.
            Err(error) if crate::error::is_duplicate_key(&error) => {
                self.find_by_participants(&candidate.participants).await?.ok_or(RepoError::Conflict)
            }
            Err(error) => Err(repo_error("inserting a conversation")(error)),
            // A look-up makes this safe on wire-compatible servers that answer `null` to an
            // upsert that lost a race (SecantusDB does).
            Ok(None) => self.find_by_participants(&candidate.participants).await?.ok_or_else(|| {
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

    async fn find(&self, id: &ConversationId) -> RepoResult<Option<Chat>> {
        self.conversations
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(repo_error("finding a conversation"))?
            .map(Chat::try_from)
            .transpose()
    }

    async fn member(&self, conversation: &ConversationId, user: &UserId) -> RepoResult<Option<Member>> {
        self.find_member(conversation, user).await?.map(Member::try_from).transpose()
    }

    async fn page(
        &self,
        pair: &ParticipantPair,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Option<ConversationPage>> {
        // Two reads, each through its index (`direct_pair`, then `conversation_history`), and
        // not one snapshot: a message sent in between may be listed with the conversation's
        // earlier `updatedAt`.
        let Some(conversation) = self.find_by_participants(pair).await? else { return Ok(None) };
        let messages = self.list_by_conversation(&conversation.id, 0, before, limit).await?;
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
        // Direct conversations in list order along their index; groups through the user's
        // memberships (a user has few groups next to their direct conversations, and a
        // group's document carries no member list to index). The page is the first `limit`
        // of both.
        let (direct, groups) = futures_util::future::try_join(
            self.direct_page(user, after.as_ref(), limit),
            self.group_page(user, after.as_ref(), limit),
        )
        .await?;
        let mut page = direct;
        page.extend(groups);
        page.sort_by_key(|(summary, _)| std::cmp::Reverse(summary.key()));
        page.truncate(limit as usize);
        // The quotes of the last messages that are replies, and what does not count as
        // unread, for the whole page at once.
        let quotes = self.quotes(page.iter().filter_map(|(_, last)| last.as_ref())).await?;
        let read: Vec<(String, i64, i64)> = page
            .iter()
            .filter(|(summary, _)| summary.unread > 0)
            .map(|(summary, _)| {
                let conversation = &summary.conversation;
                let (read_seq, last_seq) = (summary.me.read_seq, conversation.last_seq());
                (conversation.id().as_str().to_owned(), seq_to_i64(read_seq), seq_to_i64(last_seq))
            })
            .collect();
        let not_unread = self.not_unread(&read).await?;
        page.into_iter()
            .map(|(mut summary, last)| {
                if let Some(last) = last {
                    summary.last_message = Some(quotes.message(last)?);
                }
                let off = not_unread.get(summary.conversation.id().as_str()).copied().unwrap_or(0);
                summary.unread = summary.unread.saturating_sub(off);
                Ok(summary)
            })
            .collect()
    }
}

impl MongoStore {
    async fn find_or_insert_steps(
        &self,
        session: &mut ClientSession,
        candidate: &Conversation,
    ) -> Result<Option<ConversationDoc>, mongodb::error::Error> {
        let mut fields = ConversationDoc::direct_on_insert(candidate);
        fields.insert("updatedAt", to_bson(candidate.updated_at));
        fields.insert("lastMessageId", "");
        fields.insert("lastSeq", 0_i64);
        let found = self
            .conversations
            .find_one_and_update(
                doc! { "pairKey": candidate.participants.key() },
                doc! { "$setOnInsert": fields },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await?;
        if found.as_ref().is_some_and(|found| found.id == candidate.id.as_str()) {
            // This transaction stored it (or an earlier call with the same candidate did).
            for user in [candidate.participants.first(), candidate.participants.second()] {
                let member = Member {
                    read_seq: 0,
                    ..Member::joining(user.clone(), Role::Member, candidate.created_at, 1)
                };
                let member = bson::to_document(&MemberDoc::new(&candidate.id, DIRECT, &member))
                    .map_err(mongodb::error::Error::custom)?;
                self.members
                    .update_one(
                        doc! { "conversationId": candidate.id.as_str(), "userId": user.as_str() },
                        doc! { "$setOnInsert": member },
                    )
                    .upsert(true)
                    .session(&mut *session)
                    .await?;
            }
        }
        Ok(found)
    }

    /// Up to `limit` of the user's direct conversations below `after`, in key order, with
    /// their last message and the user's membership.
    async fn direct_page(
        &self,
        user: &UserId,
        after: Option<&ConversationKey>,
        limit: u32,
    ) -> RepoResult<Vec<Listed>> {
        let mut filter = doc! { "participants": user.as_str() };
        if let Some(after) = after {
            filter.extend(below_key("", after));
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
        ];
        let rows: Vec<Document> = self
            .conversations
            .aggregate(pipeline)
            .await
            .map_err(repo_error("listing conversations"))?
            .try_collect()
            .await
            .map_err(repo_error("listing conversations"))?;
        let ids: Vec<&str> = rows.iter().filter_map(|row| row.get_str("_id").ok()).collect();
        let mut mine: HashMap<String, MemberDoc> = self
            .members
            .find(doc! { "userId": user.as_str(), "conversationId": { "$in": ids } })
            .await
            .map_err(repo_error("listing memberships"))?
            .map_ok(|member| (member.conversation_id.clone(), member))
            .try_collect()
            .await
            .map_err(repo_error("listing memberships"))?;
        rows.into_iter()
            .filter_map(|mut row| {
                let last = row.remove("lastMessage");
                let me = mine.remove(row.get_str("_id").ok()?)?;
                Some(summary(row, last, me))
            })
            .collect()
    }

    /// Up to `limit` of the user's groups below `after`, in key order, with their last entry
    /// and the user's membership.
    async fn group_page(
        &self,
        user: &UserId,
        after: Option<&ConversationKey>,
        limit: u32,
    ) -> RepoResult<Vec<Listed>> {
        let mut pipeline = vec![
            // Along `user_conversations`.
            doc! { "$match": { "userId": user.as_str(), "kind": GROUP } },
            doc! { "$lookup": {
                "from": self.conversations.name(),
                "localField": "conversationId",
                "foreignField": "_id",
                "as": "conversation",
            } },
            doc! { "$unwind": "$conversation" },
        ];
        if let Some(after) = after {
            pipeline.push(doc! { "$match": below_key("conversation.", after) });
        }
        pipeline.extend([
            doc! { "$sort": { "conversation.updatedAt": -1, "conversation.lastMessageId": -1, "conversation._id": -1 } },
            doc! { "$limit": i64::from(limit) },
            doc! { "$lookup": {
                "from": self.messages.name(),
                "localField": "conversation.lastMessageId",
                "foreignField": "_id",
                "as": "lastMessage",
            } },
        ]);
        let rows: Vec<Document> = self
            .members
            .aggregate(pipeline)
            .await
            .map_err(repo_error("listing groups"))?
            .try_collect()
            .await
            .map_err(repo_error("listing groups"))?;
        rows.into_iter()
            .map(|mut row| {
                let last = row.remove("lastMessage");
                let conversation = match row.remove("conversation") {
                    Some(Bson::Document(conversation)) => conversation,
                    _ => return Err(RepoError::corrupt("group", "missing")),
                };
                let me: MemberDoc = bson::from_document(row).map_err(|e| RepoError::corrupt("member", e))?;
                summary(conversation, last, me)
            })
            .collect()
    }
}

/// The filter of the conversations below `after` in [`ConversationKey`] order, on the fields
/// under `prefix`: the bound on `updatedAt` alone is what an index range is made of, the
/// `$or` settles ties within one millisecond.
fn below_key(prefix: &str, after: &ConversationKey) -> Document {
    let (at, last) = (to_bson(after.updated_at), after.last_message.as_ref().map_or("", |m| m.as_str()));
    let (updated, last_message, id) =
        (format!("{prefix}updatedAt"), format!("{prefix}lastMessageId"), format!("{prefix}_id"));
    doc! {
        updated.clone(): { "$lte": at },
        "$or": [
            { updated.clone(): { "$lt": at } },
            { updated.clone(): at, last_message.clone(): { "$lt": last } },
            { updated: at, last_message: last, id: { "$lt": after.id.as_str() } },
        ],
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

/// A conversation of a list page as read: its summary, with every entry after the read
/// position as unread and the last message without the quote of the message it answers;
/// and the last message's document when it answers one.
type Listed = (ConversationSummary, Option<MessageDoc>);

/// A conversation document with its `lastMessage` array (empty or one entry) and the
/// user's membership.
fn summary(conversation: Document, last: Option<Bson>, me: MemberDoc) -> RepoResult<Listed> {
    let last = match last {
        Some(Bson::Array(messages)) => messages.into_iter().next(),
        _ => None,
    };
    let conversation: ConversationDoc =
        bson::from_document(conversation).map_err(|e| RepoError::corrupt("conversation", e))?;
    let last = last
        .map(|m| bson::from_bson::<MessageDoc>(m).map_err(|e| RepoError::corrupt("message", e)))
        .transpose()?;
    let last_message = last.clone().map(|doc| Message::try_from(doc.record(None)?)).transpose()?;
    let reply = last.filter(|doc| doc.reply_to.is_some());
    let conversation: Chat = conversation.try_into()?;
    let me: Member = me.try_into()?;
    let unread = me.unread(conversation.last_seq());
    Ok((ConversationSummary { conversation, last_message, me, unread }, reply))
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
