//! The message repository on MongoDB: every entry is stored in one multi-document
//! transaction with its conversation's next seq and the sender's read position; a direct
//! message also takes the next position of both users' streams (see `streams`).
//!
//! # Why seqs are gap-free for every reader
//!
//! An entry takes its conversation's next seq by `$inc`-rementing the conversation's
//! `lastSeq` inside its transaction, which therefore writes the conversation's document:
//! like a stream head (see `streams`), a second transaction that writes it before the first
//! ended (or on a snapshot older than the first one's commit) fails with a write conflict
//! and starts over. So seq `n + 1` of a conversation commits after seq `n`, and a reader
//! that sees seq `s` sees every seq below it. A group send writes only the group's document,
//! the sender's membership and the entry: what it costs does not grow with the group.

use std::collections::HashSet;

use application::ports::{
    consecutive_entries, Appended, GroupAppended, GroupEntry, MessageRepository, Notice, ReadMoved,
    RepoError, RepoResult, StoredMessage, StreamItem,
};
use async_trait::async_trait;
use domain::{Conversation, ConversationId, Cursor, Message, MessageId, Seq, UserId};
use futures_util::{FutureExt as _, TryStreamExt as _};
use mongodb::bson::{doc, Document};
use mongodb::error::Error;
use mongodb::options::{Hint, ReturnDocument};
use mongodb::ClientSession;

use crate::documents::{
    position, seq_to_i64, to_bson, ChangeDoc, ConversationDoc, MemberDoc, MessageDoc, NoticeDoc,
    StreamHeadDoc, DIRECT, GROUP,
};
use crate::error::{is_duplicate_key, repo_error};
use crate::reading::CHANGES_BY_SEQ;
use crate::{turns, Inconsistent, MongoStore};

/// How often a send starts over after a duplicate key that a new attempt gets past: a
/// pair's conversation inserted by a racing send, on a server that reports that as a
/// duplicate key rather than a write conflict.
const DUPLICATE_KEY_ATTEMPTS: usize = 3;

/// What a direct send's transaction stored.
struct Placed {
    conversation_id: String,
    seq: i64,
    sender_position: i64,
    receiver_position: i64,
}

/// What a group send's transaction did.
enum GroupPlaced {
    Created { seq: i64, version: i64 },
    NotMember,
}

/// What `mark_read`'s transaction did.
enum ReadPlaced {
    Moved(i64),
    NotAhead,
}

#[async_trait]
impl MessageRepository for MongoStore {
    async fn append(&self, conversation: &Conversation, message: &Message) -> RepoResult<Appended> {
        // A retried send is found without writing anything.
        if let Some(earlier) = self.find_by_client_id(message).await? {
            return Ok(Appended::Existing(self.stored_message(earlier).await?));
        }
        let Some(receiver) = &message.receiver_id else {
            return Err(RepoError::Unexpected(anyhow::anyhow!("a direct message without a receiver")));
        };
        // Both heads are what sends of both users contend on (the pair's conversation too).
        let _turn = self
            .turns
            .take(vec![turns::head(message.sender_id.as_str()), turns::head(receiver.as_str())])
            .await;
        for _ in 0..DUPLICATE_KEY_ATTEMPTS {
            let placed = self
                .transaction((self, conversation, message, receiver), |session, context| {
                    let (store, conversation, message, receiver) = *context;
                    async move { store.append_steps(session, conversation, message, receiver).await }.boxed()
                })
                .await;
            match placed {
                Ok(Placed { conversation_id, seq, sender_position, receiver_position }) => {
                    let message = Message { seq: seq_from(seq)?, ..message.clone() };
                    return StoredMessage::placed(
                        &message,
                        &conversation_id,
                        sender_position,
                        receiver_position,
                    )
                    .map(Appended::Created);
                }
                Err(error) if is_duplicate_key(&error) => {}
                Err(error) => return Err(repo_error("storing a message")(error)),
            }
            // A unique index refused the message or its conversation; the transaction is
            // aborted, so nothing of it is stored. Which index decides the outcome:
            // - the sender's client id: a racing send with the same id committed first;
            if let Some(earlier) = self.find_by_client_id(message).await? {
                return Ok(Appended::Existing(self.stored_message(earlier).await?));
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

    async fn append_to_group(&self, message: &Message) -> RepoResult<GroupAppended> {
        if let Some(earlier) = self.find_by_client_id(message).await? {
            return Ok(GroupAppended::Existing(self.current_one(earlier).await?));
        }
        let _turn = self.turns.take(vec![turns::conversation(message.conversation_id.as_str())]).await;
        let placed = self
            .transaction((self, message), |session, context| {
                let (store, message) = *context;
                async move { store.append_to_group_steps(session, message).await }.boxed()
            })
            .await;
        match placed {
            Ok(GroupPlaced::Created { seq, version }) => Ok(GroupAppended::Created {
                message: Message { seq: seq_from(seq)?, ..message.clone() },
                version: crate::documents::version(Some(version))?,
            }),
            Ok(GroupPlaced::NotMember) => Ok(GroupAppended::NotMember),
            Err(error) if is_duplicate_key(&error) => {
                // Nothing was stored: a racing send with the same client id won, or the
                // message id is taken.
                match self.find_by_client_id(message).await? {
                    Some(earlier) => Ok(GroupAppended::Existing(self.current_one(earlier).await?)),
                    None => Err(RepoError::Conflict),
                }
            }
            Err(error) => Err(repo_error("storing a group message")(error)),
        }
    }

    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        from_seq: Seq,
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
        // Every seq is at least 1: a bound at or below it bounds nothing.
        if from_seq > 1 {
            filter.insert("seq", doc! { "$gte": seq_to_i64(from_seq) });
        }
        // Newest first to take the page (along `conversation_history`), then turned oldest
        // first.
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
        self.current(page).await
    }

    async fn entries(
        &self,
        conversation: &ConversationId,
        after: Seq,
        until: Option<Seq>,
        limit: u32,
    ) -> RepoResult<Vec<GroupEntry>> {
        if limit == 0 || until.is_some_and(|until| until <= after) {
            return Ok(Vec::new());
        }
        let mut range = doc! { "$gt": seq_to_i64(after) };
        if let Some(until) = until {
            range.insert("$lte", seq_to_i64(until));
        }
        let filter = doc! { "conversationId": conversation.as_str(), "seq": range };
        // The first `limit` messages and the first `limit` change entries after `after`: the
        // first `limit` entries are among them.
        let (messages, changes) = futures_util::future::try_join(
            async {
                self.messages
                    .find(filter.clone())
                    .sort(doc! { "seq": 1 })
                    .limit(i64::from(limit))
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            },
            async {
                self.changes
                    .find(filter.clone())
                    .hint(Hint::Name(CHANGES_BY_SEQ.to_owned()))
                    .sort(doc! { "seq": 1 })
                    .limit(i64::from(limit))
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            },
        )
        .await
        .map_err(repo_error("reading a conversation's entries"))?;
        let mut page: Vec<(i64, Read)> = messages
            .into_iter()
            .map(|doc| (doc.seq.unwrap_or(0), Read::Message(Box::new(doc))))
            .chain(changes.into_iter().map(|change| (change.seq, Read::Change(change))))
            .collect();
        page.sort_by_key(|(seq, _)| *seq);
        page.truncate(limit as usize);
        // The messages the change entries changed, as they stand now, and every quote.
        let changed: HashSet<&str> = page
            .iter()
            .filter_map(|(_, read)| match read {
                Read::Change(change) => Some(change.message_id.as_str()),
                Read::Message(_) => None,
            })
            .collect();
        let changed = self.messages_by_id(changed).await?;
        let quotes = self
            .quotes(
                page.iter()
                    .filter_map(|(_, read)| match read {
                        Read::Message(doc) => Some(&**doc),
                        Read::Change(_) => None,
                    })
                    .chain(changed.values()),
            )
            .await?;
        let mut entries = Vec::with_capacity(page.len());
        for (_, read) in page {
            entries.push(match read {
                Read::Message(doc) => GroupEntry::Message(quotes.message(*doc)?),
                Read::Change(change) => {
                    let Some(message) = changed.get(&change.message_id) else {
                        return Err(RepoError::corrupt("change entry", "of a message that does not exist"));
                    };
                    GroupEntry::Update(quotes.update(change, message.clone())?)
                }
            });
        }
        // Seqs commit in order, so there is no hole to stop at; a store that showed one
        // would make a reader skip an entry, so the run is cut there all the same.
        Ok(consecutive_entries(after, entries))
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        up_to: &MessageId,
    ) -> RepoResult<ReadMoved> {
        let Some(member) = self.find_member(conversation, user).await? else {
            return Ok(ReadMoved::NotMember);
        };
        let entry = self
            .messages
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": up_to.as_str(), "conversationId": conversation.as_str() })
            .projection(doc! { "seq": 1 })
            .await
            .map_err(repo_error("finding a read message"))?;
        let Some(seq) = entry.and_then(|entry| entry.get_i64("seq").ok()) else {
            return Ok(ReadMoved::UnknownMessage);
        };
        // Entries before the member joined are not theirs to read.
        if seq < member.joined_seq {
            return Ok(ReadMoved::UnknownMessage);
        }
        if seq <= member.read_seq {
            return Ok(ReadMoved::NotAhead { seq: seq_from(member.read_seq)? });
        }
        let _turn = self.turns.take(vec![turns::head(user.as_str())]).await;
        let placed = self
            .transaction((self, conversation, user, up_to, seq), |session, context| {
                let (store, conversation, user, up_to, seq) = *context;
                async move { store.mark_read_steps(session, conversation, user, up_to, seq).await }.boxed()
            })
            .await
            .map_err(repo_error("moving a read position"))?;
        match placed {
            ReadPlaced::Moved(position) => Ok(ReadMoved::Moved {
                seq: seq_from(seq)?,
                cursor: Cursor::try_from(position).map_err(|e| RepoError::corrupt("stream position", e))?,
            }),
            // A racing read moved it as far or further, or the user just left.
            ReadPlaced::NotAhead => match self.find_member(conversation, user).await? {
                Some(member) => Ok(ReadMoved::NotAhead { seq: seq_from(member.read_seq)? }),
                None => Ok(ReadMoved::NotMember),
            },
        }
    }

    async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>> {
        self.read_stream(user, after, limit).await
    }

    async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor> {
        let head = self
            .heads
            .find_one(doc! { "_id": user.as_str() })
            .await
            .map_err(repo_error("reading a stream head"))?;
        head.map_or(Ok(Cursor::START), |head| application::ports::stored_cursor(head.position))
    }

    async fn stream_heads(&self, users: &[UserId]) -> RepoResult<Vec<(UserId, Cursor)>> {
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let heads: Vec<StreamHeadDoc> = self
            .heads
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(repo_error("reading stream heads"))?
            .try_collect()
            .await
            .map_err(repo_error("reading stream heads"))?;
        heads
            .into_iter()
            .filter(|head| head.position > 0)
            .map(|head| {
                let position = application::ports::stored_cursor(head.position)?;
                let user = UserId::parse(&head.user_id)
                    .map_err(|e| RepoError::corrupt("stream head's user id", e))?;
                Ok((user, position))
            })
            .collect()
    }
}

/// An entry of a conversation as read: a message, or a change entry.
enum Read {
    Message(Box<MessageDoc>),
    Change(ChangeDoc),
}

/// A stored seq.
fn seq_from(stored: i64) -> RepoResult<Seq> {
    application::ports::stored_seq(stored)
}

impl MongoStore {
    async fn append_steps(
        &self,
        session: &mut ClientSession,
        conversation: &Conversation,
        message: &Message,
        receiver: &UserId,
    ) -> Result<Placed, Error> {
        // The heads first: they are what concurrent sends contend on, so a loser learns it
        // before doing any other work.
        let (sender_position, receiver_position) =
            self.take_positions(session, &message.sender_id, receiver).await?;
        let (conversation_id, seq) = self.join_conversation(session, conversation, message).await?;
        // The sender has read their own message. The members are stored with the
        // conversation; upserts keep a send working on a conversation that lost them.
        let joined = doc! { "kind": DIRECT, "role": "member", "joinedAt": to_bson(conversation.created_at), "joinedSeq": 1_i64 };
        self.members
            .update_one(
                doc! { "conversationId": &conversation_id, "userId": message.sender_id.as_str() },
                doc! {
                    "$set": { "readSeq": seq, "lastReadMessageId": message.id.as_str() },
                    "$setOnInsert": joined.clone(),
                },
            )
            .upsert(true)
            .session(&mut *session)
            .await?;
        if seq == 1 {
            let mut unread = joined;
            unread.insert("readSeq", 0_i64);
            self.members
                .update_one(
                    doc! { "conversationId": &conversation_id, "userId": receiver.as_str() },
                    doc! { "$setOnInsert": unread },
                )
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        let mut doc = MessageDoc::stored(message, 0, Some((sender_position, receiver_position)))
            .map_err(|_| Inconsistent::error("a message that does not encode"))?;
        doc.conversation_id.clone_from(&conversation_id);
        doc.seq = Some(seq);
        self.messages.insert_one(doc).session(&mut *session).await?;
        Ok(Placed { conversation_id, seq, sender_position, receiver_position })
    }

    /// Stores `candidate` if the pair has no conversation, takes the pair's conversation's
    /// next seq, and moves its `updatedAt` forward to the message's date and its
    /// `lastMessageId` to the message's id (never backwards); returns the pair's conversation
    /// id and the seq.
    async fn join_conversation(
        &self,
        session: &mut ClientSession,
        candidate: &Conversation,
        message: &Message,
    ) -> Result<(String, i64), Error> {
        let filter = doc! { "pairKey": candidate.participants.key() };
        let conversations = self.conversations.clone_with_type::<Document>();
        // The upsert copies the filter's equality into a new document; `$inc` and `$max` set
        // the seq, date and last message of a new one.
        let upserted = conversations
            .find_one_and_update(
                filter.clone(),
                doc! {
                    "$setOnInsert": ConversationDoc::direct_on_insert(candidate),
                    "$inc": { "lastSeq": 1_i64 },
                    "$max": { "updatedAt": to_bson(message.created_at), "lastMessageId": message.id.as_str() },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "_id": 1, "lastSeq": 1 })
            .session(&mut *session)
            .await?;
        let found = match upserted {
            Some(found) => Some(found),
            // Servers return the document they upserted; read it back if one does not.
            None => {
                conversations
                    .find_one(filter)
                    .projection(doc! { "_id": 1, "lastSeq": 1 })
                    .session(&mut *session)
                    .await?
            }
        };
        found
            .as_ref()
            .and_then(|found| Some((found.get_str("_id").ok()?.to_owned(), found.get_i64("lastSeq").ok()?)))
            .ok_or_else(|| Inconsistent::error("a conversation vanished inside its own transaction"))
    }

    async fn append_to_group_steps(
        &self,
        session: &mut ClientSession,
        message: &Message,
    ) -> Result<GroupPlaced, Error> {
        let group = message.conversation_id.as_str();
        // The group's document first: it is what concurrent sends contend on.
        let update = doc! {
            "$inc": { "lastSeq": 1_i64 },
            "$max": { "updatedAt": to_bson(message.created_at), "lastMessageId": message.id.as_str() },
        };
        let Some((seq, version)) =
            self.move_group(session, doc! { "_id": group, "kind": GROUP }, update).await?
        else {
            session.abort_transaction().await?;
            return Ok(GroupPlaced::NotMember);
        };
        // The sender's membership, checked where it is written: a removal committed first
        // deleted it (and one racing with this send conflicts on the group's document).
        let read = self
            .members
            .update_one(
                doc! { "conversationId": group, "userId": message.sender_id.as_str() },
                doc! { "$set": { "readSeq": seq, "lastReadMessageId": message.id.as_str() } },
            )
            .session(&mut *session)
            .await?;
        if read.matched_count == 0 {
            session.abort_transaction().await?;
            return Ok(GroupPlaced::NotMember);
        }
        let doc = MessageDoc::stored(message, 0, None)
            .map_err(|_| Inconsistent::error("a message that does not encode"))?;
        self.messages.insert_one(MessageDoc { seq: Some(seq), ..doc }).session(&mut *session).await?;
        Ok(GroupPlaced::Created { seq, version })
    }

    /// The reader's head first (the position is taken tentatively), then the membership,
    /// moved only forward; nothing moved gives the position back.
    async fn mark_read_steps(
        &self,
        session: &mut ClientSession,
        conversation: &ConversationId,
        user: &UserId,
        up_to: &MessageId,
        seq: i64,
    ) -> Result<ReadPlaced, Error> {
        let position = self.next_position(session, user).await?;
        let moved = self
            .members
            .update_one(
                doc! { "conversationId": conversation.as_str(), "userId": user.as_str(), "readSeq": { "$lt": seq } },
                doc! { "$set": { "readSeq": seq, "lastReadMessageId": up_to.as_str() } },
            )
            .session(&mut *session)
            .await?;
        if moved.matched_count == 0 {
            session.abort_transaction().await?;
            return Ok(ReadPlaced::NotAhead);
        }
        let seq_u64 = u64::try_from(seq).map_err(|_| Inconsistent::error("a negative seq"))?;
        let notice =
            Notice::Read { conversation: conversation.clone(), seq: seq_u64, message_id: up_to.clone() };
        self.notices.insert_one(NoticeDoc::new(user, position, &notice)).session(&mut *session).await?;
        Ok(ReadPlaced::Moved(position))
    }

    pub(crate) async fn find_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> RepoResult<Option<MemberDoc>> {
        self.members
            .find_one(doc! { "conversationId": conversation.as_str(), "userId": user.as_str() })
            .await
            .map_err(repo_error("finding a member"))
    }

    /// A message with its positions in both streams, as it stands now. A group entry has no
    /// stream positions: 0 for both, as the port says.
    async fn stored_message(&self, doc: MessageDoc) -> RepoResult<StoredMessage> {
        let (sender, receiver) = match doc.receiver_id {
            Some(_) => (position(doc.sender_position)?, position(doc.receiver_position)?),
            None => (0, 0),
        };
        StoredMessage::from_positions(self.current_one(doc).await?, sender, receiver)
    }

    /// The sender's entry with the same client id as `message`, if there is one.
    async fn find_by_client_id(&self, message: &Message) -> RepoResult<Option<MessageDoc>> {
        let Some(client_id) = &message.client_id else { return Ok(None) };
        self.messages
            .find_one(doc! { "senderId": message.sender_id.as_str(), "clientMessageId": client_id.as_str() })
            .await
            .map_err(repo_error("finding a message by client id"))
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

    /// Whether `candidate`'s id belongs to another conversation than the pair's.
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
}
