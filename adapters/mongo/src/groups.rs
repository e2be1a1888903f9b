//! The group repository on MongoDB: a group is a conversation document (`kind: "group"`)
//! with its members in `members` and the membership notices in `notices`.
//!
//! Every change of a group is one transaction that writes the group's document first
//! (`lastSeq`, `membersVersion`, and the version check in the same `findAndModify`): changes
//! and sends of one group therefore conflict on that document and commit one after the
//! other, in seq order (see `messages`), and a change decided on a stale version finds the
//! version moved and stores nothing.

use std::collections::{BTreeSet, HashMap};

use application::ports::{
    Changed, GroupChange, GroupPosition, GroupRepository, GroupState, MembersPreview, Notice, Noticed,
    RepoError, RepoResult,
};
use async_trait::async_trait;
use domain::{ConversationId, Cursor, Group, Member, Message, Seq, UserId};
use futures_util::{FutureExt as _, TryStreamExt as _};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error;
use mongodb::options::{ReadConcern, ReturnDocument, TransactionOptions};
use mongodb::ClientSession;

use crate::documents::{to_bson, version, ConversationDoc, MemberDoc, MessageDoc, GROUP};
use crate::error::{is_duplicate_key, repo_error};
use crate::{turns, Inconsistent, MongoStore};

/// How often a change starts over after a duplicate key that a new attempt gets past: the
/// stream head of a user who had none, inserted meanwhile by another transaction.
const DUPLICATE_KEY_ATTEMPTS: usize = 3;

/// What a change's transaction did.
enum Applied {
    Done { seq: i64, version: i64, notices: Vec<Noticed> },
    Stale,
}

#[async_trait]
impl GroupRepository for MongoStore {
    async fn create(&self, group: &Group, members: &[Member], created: &Message) -> RepoResult<Vec<Noticed>> {
        for _ in 0..DUPLICATE_KEY_ATTEMPTS {
            let stored = self
                .transaction((self, group, members, created), |session, context| {
                    let (store, group, members, created) = *context;
                    async move { store.create_steps(session, group, members, created).await }.boxed()
                })
                .await;
            match stored {
                Ok(notices) => return Ok(notices),
                Err(error) if is_duplicate_key(&error) => {}
                Err(error) => return Err(repo_error("storing a group")(error)),
            }
            // The group's id or its first entry's id taken, or a member listed twice: the
            // caller's conflict. Otherwise a stream head inserted meanwhile: start over.
            let distinct: BTreeSet<&UserId> = members.iter().map(|m| &m.user_id).collect();
            if distinct.len() < members.len()
                || self.id_taken(&self.conversations.clone_with_type::<Document>(), group.id.as_str()).await?
                || self.id_taken(&self.messages.clone_with_type::<Document>(), created.id.as_str()).await?
            {
                return Err(RepoError::Conflict);
            }
        }
        Err(RepoError::Unexpected(anyhow::anyhow!(
            "storing a group kept hitting a unique index that nothing stored explains"
        )))
    }

    async fn state(&self, group: &ConversationId) -> RepoResult<Option<GroupState>> {
        let Some((doc, members)) = self.read_group(group).await? else { return Ok(None) };
        let version = version(doc.members_version)?;
        Ok(Some(GroupState {
            group: doc.try_into()?,
            members: members.into_iter().map(Member::try_from).collect::<RepoResult<_>>()?,
            version,
        }))
    }

    async fn member_ids(&self, group: &ConversationId) -> RepoResult<Option<(Vec<UserId>, u64)>> {
        let Some((doc, members)) = self.read_group(group).await? else { return Ok(None) };
        let ids = members
            .iter()
            .map(|m| UserId::parse(&m.user_id).map_err(|e| RepoError::corrupt("member id", e)))
            .collect::<RepoResult<_>>()?;
        Ok(Some((ids, version(doc.members_version)?)))
    }

    async fn change(&self, group: &ConversationId, change: &GroupChange) -> RepoResult<Changed> {
        let added: BTreeSet<&UserId> = change.add.iter().map(|(user, _)| user).collect();
        if added.len() < change.add.len() {
            return Err(RepoError::Conflict);
        }
        let _turn = self.turns.take(vec![turns::conversation(group.as_str())]).await;
        for _ in 0..DUPLICATE_KEY_ATTEMPTS {
            let applied = self
                .transaction((self, group, change), |session, context| {
                    let (store, group, change) = *context;
                    async move { store.change_steps(session, group, change).await }.boxed()
                })
                .await;
            match applied {
                Ok(Applied::Done { seq, version: v, notices }) => {
                    let entry = Message {
                        conversation_id: group.clone(),
                        seq: application::ports::stored_seq(seq)?,
                        client_id: None,
                        ..change.entry.clone()
                    };
                    return Ok(Changed::Applied { entry, version: version(Some(v))?, notices });
                }
                Ok(Applied::Stale) => return Ok(Changed::Stale),
                Err(error) if is_duplicate_key(&error) => {}
                Err(error) => return Err(repo_error("changing a group")(error)),
            }
            // A user added who is a member already, or the entry's id taken: the caller's
            // conflict, nothing applied. Otherwise a stream head inserted meanwhile.
            let users: Vec<&str> = added.iter().map(|user| user.as_str()).collect();
            let member_already = self
                .members
                .count_documents(doc! { "conversationId": group.as_str(), "userId": { "$in": users } })
                .limit(1)
                .await
                .map_err(repo_error("looking members up"))?;
            if member_already > 0
                || self
                    .id_taken(&self.messages.clone_with_type::<Document>(), change.entry.id.as_str())
                    .await?
            {
                return Err(RepoError::Conflict);
            }
        }
        Err(RepoError::Unexpected(anyhow::anyhow!(
            "changing a group kept hitting a unique index that nothing stored explains"
        )))
    }

    async fn members_preview(
        &self,
        groups: &[ConversationId],
        limit: u32,
    ) -> RepoResult<Vec<MembersPreview>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = groups.iter().map(ConversationId::as_str).collect();
        let known: BTreeSet<String> = self
            .conversations
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$in": &ids }, "kind": GROUP })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(repo_error("finding groups"))?
            .try_filter_map(|group| async move { Ok(group.get_str("_id").ok().map(str::to_owned)) })
            .try_collect()
            .await
            .map_err(repo_error("finding groups"))?;
        // One query for every group, along `joining_order`.
        let pipeline = [
            doc! { "$match": { "conversationId": { "$in": &ids } } },
            doc! { "$sort": { "conversationId": 1, "joinedSeq": 1, "userId": 1 } },
            doc! { "$group": { "_id": "$conversationId", "members": { "$push": "$userId" }, "count": { "$sum": 1 } } },
            doc! { "$project": { "members": { "$slice": ["$members", i64::from(limit.max(1))] }, "count": 1 } },
        ];
        let mut found: HashMap<String, (Vec<UserId>, u64)> = HashMap::new();
        let mut rows = self.members.aggregate(pipeline).await.map_err(repo_error("previewing members"))?;
        while let Some(row) = rows.try_next().await.map_err(repo_error("previewing members"))? {
            let Ok(group) = row.get_str("_id") else { continue };
            let mut members: Vec<UserId> = match row.get("members") {
                Some(Bson::Array(members)) => members
                    .iter()
                    .map(|m| {
                        m.as_str()
                            .and_then(|m| UserId::parse(m).ok())
                            .ok_or_else(|| RepoError::corrupt("member id", format!("{m}")))
                    })
                    .collect::<RepoResult<_>>()?,
                _ => Vec::new(),
            };
            members.truncate(limit as usize);
            let count = match row.get("count") {
                Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            found.insert(group.to_owned(), (members, count));
        }
        Ok(groups
            .iter()
            .filter(|group| known.contains(group.as_str()))
            .map(|group| {
                let (members, count) = found.remove(group.as_str()).unwrap_or_default();
                MembersPreview { group: group.clone(), members, count }
            })
            .collect())
    }

    async fn groups_at_head(&self, user: &UserId) -> RepoResult<(Cursor, Vec<GroupPosition>)> {
        // Two reads: the groups are those of the notices at or before the head read first.
        let head = application::ports::MessageRepository::stream_head(self, user).await?;
        Ok((head, self.groups_at(user, head).await?))
    }

    async fn groups_at(&self, user: &UserId, at: Cursor) -> RepoResult<Vec<GroupPosition>> {
        // Each group's last membership notice at or before `at`, along
        // `user_conversation_notices`; the groups where it is a `joined`.
        let pipeline = [
            doc! { "$match": {
                "userId": user.as_str(),
                "position": { "$lte": i64::from(at) },
                "kind": { "$in": ["joined", "left"] },
            } },
            doc! { "$sort": { "conversationId": 1, "position": -1 } },
            doc! { "$group": { "_id": "$conversationId", "kind": { "$first": "$kind" }, "seq": { "$first": "$seq" } } },
            doc! { "$match": { "kind": "joined" } },
        ];
        let mut joined: Vec<(String, i64)> = Vec::new();
        let mut rows =
            self.notices.aggregate(pipeline).await.map_err(repo_error("finding a user's groups"))?;
        while let Some(row) = rows.try_next().await.map_err(repo_error("finding a user's groups"))? {
            let (Ok(group), Ok(seq)) = (row.get_str("_id"), row.get_i64("seq")) else {
                return Err(RepoError::corrupt("notice", "without a group or seq"));
            };
            joined.push((group.to_owned(), seq));
        }
        if joined.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = joined.iter().map(|(group, _)| group.as_str()).collect();
        let last_seqs: HashMap<String, i64> = self
            .conversations
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "lastSeq": 1 })
            .await
            .map_err(repo_error("reading groups' last seqs"))?
            .try_filter_map(|group| async move {
                Ok(group
                    .get_str("_id")
                    .ok()
                    .zip(group.get_i64("lastSeq").ok())
                    .map(|(id, s)| (id.to_owned(), s)))
            })
            .try_collect()
            .await
            .map_err(repo_error("reading groups' last seqs"))?;
        let mut positions = joined
            .into_iter()
            .filter_map(|(group, joined_seq)| {
                let last_seq = *last_seqs.get(&group)?;
                Some((group, joined_seq, last_seq))
            })
            .map(|(group, joined_seq, last_seq)| {
                Ok(GroupPosition {
                    group: ConversationId::parse(&group)
                        .map_err(|e| RepoError::corrupt("conversation id", e))?,
                    joined_seq: application::ports::stored_seq(joined_seq)?,
                    last_seq: application::ports::stored_seq(last_seq)?,
                })
            })
            .collect::<RepoResult<Vec<_>>>()?;
        positions.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(positions)
    }

    async fn left_after(
        &self,
        user: &UserId,
        group: &ConversationId,
        after: Cursor,
    ) -> RepoResult<Option<Seq>> {
        let left = self
            .notices
            .find_one(doc! {
                "userId": user.as_str(),
                "conversationId": group.as_str(),
                "position": { "$gt": i64::from(after) },
                "kind": "left",
            })
            .sort(doc! { "position": 1 })
            .await
            .map_err(repo_error("finding when a user left a group"))?;
        left.map(|notice| application::ports::stored_seq(notice.seq)).transpose()
    }
}

impl MongoStore {
    /// Applies `update` to the group document `filter` finds, within `session`, and returns
    /// its `lastSeq` and `membersVersion` as they are after it; `None` when none matched.
    pub(crate) async fn move_group(
        &self,
        session: &mut ClientSession,
        filter: Document,
        update: Document,
    ) -> Result<Option<(i64, i64)>, Error> {
        let moved = self
            .conversations
            .clone_with_type::<Document>()
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .projection(doc! { "lastSeq": 1, "membersVersion": 1 })
            .session(&mut *session)
            .await?;
        Ok(moved.and_then(|g| Some((g.get_i64("lastSeq").ok()?, g.get_i64("membersVersion").ok()?))))
    }

    async fn create_steps(
        &self,
        session: &mut ClientSession,
        group: &Group,
        members: &[Member],
        created: &Message,
    ) -> Result<Vec<Noticed>, Error> {
        self.conversations.insert_one(ConversationDoc::group(group, created)).session(&mut *session).await?;
        let entry = Message { conversation_id: group.id.clone(), client_id: None, ..created.clone() };
        let entry = MessageDoc::stored(&entry, 1, None)
            .map_err(|_| Inconsistent::error("a system entry that does not encode"))?;
        self.messages.insert_one(entry).session(&mut *session).await?;
        // Everyone joins at the first entry; the creator has read it.
        let docs = members.iter().map(|member| {
            let creator = member.user_id == created.sender_id;
            let member = Member {
                joined_seq: 1,
                read_seq: u64::from(creator),
                last_read_message_id: creator.then(|| created.id.clone()),
                ..member.clone()
            };
            MemberDoc::new(&group.id, GROUP, &member)
        });
        self.members.insert_many(docs).session(&mut *session).await?;
        let notices = members
            .iter()
            .map(|member| (member.user_id.clone(), Notice::Joined { group: group.id.clone(), seq: 1 }))
            .collect();
        self.append_notices(session, notices).await
    }

    async fn change_steps(
        &self,
        session: &mut ClientSession,
        group: &ConversationId,
        change: &GroupChange,
    ) -> Result<Applied, Error> {
        let entry = &change.entry;
        let expected = i64::try_from(change.expected_version).unwrap_or(i64::MAX);
        let mut update = doc! {
            "$inc": { "lastSeq": 1_i64, "membersVersion": 1_i64 },
            "$max": { "updatedAt": to_bson(entry.created_at), "lastMessageId": entry.id.as_str() },
        };
        if let Some(name) = &change.rename {
            update.insert("$set", doc! { "name": name.as_str() });
        }
        // The group's document first, checked and moved in one statement.
        let filter = doc! { "_id": group.as_str(), "kind": GROUP, "membersVersion": expected };
        let Some((seq, version)) = self.move_group(session, filter, update).await? else {
            session.abort_transaction().await?;
            return Ok(Applied::Stale);
        };
        let stored = Message { conversation_id: group.clone(), client_id: None, ..entry.clone() };
        let stored = MessageDoc::stored(&stored, 0, None)
            .map_err(|_| Inconsistent::error("a system entry that does not encode"))?;
        self.messages.insert_one(MessageDoc { seq: Some(seq), ..stored }).session(&mut *session).await?;

        // Those removed who were members.
        let mut left: Vec<UserId> = Vec::new();
        if !change.remove.is_empty() {
            let remove: Vec<&str> = change.remove.iter().map(UserId::as_str).collect();
            let filter = doc! { "conversationId": group.as_str(), "userId": { "$in": remove } };
            let mut found = self.members.find(filter.clone()).session(&mut *session).await?;
            while let Some(member) = found.next(&mut *session).await.transpose()? {
                left.push(
                    UserId::parse(&member.user_id).map_err(|_| Inconsistent::error("a stored member id"))?,
                );
            }
            self.members.delete_many(filter).session(&mut *session).await?;
        }
        if !change.add.is_empty() {
            // A user who is a member already is a duplicate key: nothing is applied.
            let docs = change.add.iter().map(|(user, role)| {
                let joined = written_seq(seq);
                let joining = Member::joining(user.clone(), *role, entry.created_at, joined);
                MemberDoc::new(group, GROUP, &Member { read_seq: joined.saturating_sub(1), ..joining })
            });
            self.members.insert_many(docs).session(&mut *session).await?;
        }
        for (user, role) in &change.roles {
            self.members
                .update_one(
                    doc! { "conversationId": group.as_str(), "userId": user.as_str() },
                    doc! { "$set": { "role": role.as_str() } },
                )
                .session(&mut *session)
                .await?;
        }
        // The actor has read their own change, if still a member.
        self.members
            .update_one(
                doc! { "conversationId": group.as_str(), "userId": entry.sender_id.as_str() },
                doc! { "$set": { "readSeq": seq, "lastReadMessageId": entry.id.as_str() } },
            )
            .session(&mut *session)
            .await?;
        let at = written_seq(seq);
        let notices = change
            .add
            .iter()
            .map(|(user, _)| (user.clone(), Notice::Joined { group: group.clone(), seq: at }))
            .chain(left.into_iter().map(|user| (user, Notice::Left { group: group.clone(), seq: at })))
            .collect();
        let notices = self.append_notices(session, notices).await?;
        Ok(Applied::Done { seq, version, notices })
    }

    /// The group's document and its members in joining order, from one snapshot.
    async fn read_group(
        &self,
        group: &ConversationId,
    ) -> RepoResult<Option<(ConversationDoc, Vec<MemberDoc>)>> {
        // A read-only transaction: the members read are those of the version read.
        let options = TransactionOptions::builder().read_concern(ReadConcern::snapshot()).build();
        let mut session =
            self.database().client().start_session().await.map_err(repo_error("reading a group"))?;
        session.start_transaction().with_options(options).await.map_err(repo_error("reading a group"))?;
        let read = async {
            let Some(doc) = self
                .conversations
                .find_one(doc! { "_id": group.as_str(), "kind": GROUP })
                .session(&mut session)
                .await?
            else {
                return Ok(None);
            };
            let members: Vec<MemberDoc> = self
                .members
                .find(doc! { "conversationId": group.as_str() })
                .sort(doc! { "joinedSeq": 1, "userId": 1 })
                .session(&mut session)
                .await?
                .stream(&mut session)
                .try_collect()
                .await?;
            Ok::<_, Error>(Some((doc, members)))
        }
        .await;
        // Nothing to keep: ending it either way is fine, and an abort's failure changes nothing.
        let _ = session.abort_transaction().await;
        read.map_err(repo_error("reading a group"))
    }

    async fn id_taken(&self, collection: &mongodb::Collection<Document>, id: &str) -> RepoResult<bool> {
        let found = collection
            .count_documents(doc! { "_id": id })
            .limit(1)
            .await
            .map_err(repo_error("looking an id up"))?;
        Ok(found > 0)
    }
}

/// A seq this store wrote (never negative).
fn written_seq(stored: i64) -> Seq {
    u64::try_from(stored).unwrap_or(0)
}
