//! Reading entries back as they stand now: a message with the quote of the message it
//! answers, a change entry with the message it changed, and how many entries after a member's
//! read position count as unread.
//!
//! Every read of a page does a fixed number of queries whatever its size: the quotes of all
//! replies of a page are one `$in` query, the messages of all change entries of a page one
//! more, and the unread counts of a page of conversations one aggregate.

use std::collections::{HashMap, HashSet};

use application::ports::{QuoteRecord, RepoResult, Update};
use domain::Message;
use futures_util::TryStreamExt as _;
use mongodb::bson::{doc, Document};
use mongodb::options::Hint;

use crate::documents::{ChangeDoc, MessageDoc};
use crate::error::repo_error;
use crate::MongoStore;

/// The index of a conversation's change entries by seq (see `MongoStore::create_indexes`).
pub(crate) const CHANGES_BY_SEQ: &str = "conversation_seq";

/// The quotes a page of messages shows, by the id of the message quoted.
pub(crate) struct Quotes(HashMap<String, QuoteRecord>);

impl Quotes {
    /// `doc` as it stands now, with the quote of the message it answers.
    pub(crate) fn message(&self, doc: MessageDoc) -> RepoResult<Message> {
        let quote = doc.reply_to.as_deref().and_then(|id| self.quote(id));
        doc.record(quote)?.try_into()
    }

    /// The change entry `change` with `message`, the message it changed.
    pub(crate) fn update(&self, change: ChangeDoc, message: MessageDoc) -> RepoResult<Update> {
        let quote = message.reply_to.as_deref().and_then(|id| self.quote(id));
        change.record(message.record(quote)?)?.try_into()
    }

    fn quote(&self, id: &str) -> Option<QuoteRecord> {
        self.0.get(id).map(|quote| QuoteRecord {
            message_id: quote.message_id.clone(),
            sender_id: quote.sender_id.clone(),
            body: quote.body.clone(),
            deleted: quote.deleted,
        })
    }
}

impl MongoStore {
    /// What the replies among `docs` quote now: one query for all of them, none when no
    /// message of the page is a reply.
    pub(crate) async fn quotes<'d>(
        &self,
        docs: impl IntoIterator<Item = &'d MessageDoc>,
    ) -> RepoResult<Quotes> {
        let ids: HashSet<&str> = docs.into_iter().filter_map(|doc| doc.reply_to.as_deref()).collect();
        if ids.is_empty() {
            return Ok(Quotes(HashMap::new()));
        }
        let ids: Vec<&str> = ids.into_iter().collect();
        let quoted: Vec<Document> = self
            .messages
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1, "senderId": 1, "message": 1, "deletedAt": 1 })
            .await
            .map_err(repo_error("reading the messages replies quote"))?
            .try_collect()
            .await
            .map_err(repo_error("reading the messages replies quote"))?;
        let quotes = quoted
            .into_iter()
            .filter_map(|doc| {
                let quote = QuoteRecord {
                    message_id: doc.get_str("_id").ok()?.to_owned(),
                    sender_id: doc.get_str("senderId").ok()?.to_owned(),
                    body: doc.get_str("message").ok()?.to_owned(),
                    deleted: doc.contains_key("deletedAt"),
                };
                Some((quote.message_id.clone(), quote))
            })
            .collect();
        Ok(Quotes(quotes))
    }

    /// `docs` as they stand now, in their order, with the quotes of their replies.
    pub(crate) async fn current(&self, docs: Vec<MessageDoc>) -> RepoResult<Vec<Message>> {
        let quotes = self.quotes(&docs).await?;
        docs.into_iter().map(|doc| quotes.message(doc)).collect()
    }

    /// `doc` as it stands now, with the quote of its reply.
    pub(crate) async fn current_one(&self, doc: MessageDoc) -> RepoResult<Message> {
        let quotes = self.quotes([&doc]).await?;
        quotes.message(doc)
    }

    /// The messages with these ids, by id; ids of no message are left out.
    pub(crate) async fn messages_by_id(&self, ids: HashSet<&str>) -> RepoResult<HashMap<String, MessageDoc>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = ids.into_iter().collect();
        self.messages
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(repo_error("reading changed messages"))?
            .map_ok(|doc| (doc.id.clone(), doc))
            .try_collect()
            .await
            .map_err(repo_error("reading changed messages"))
    }

    /// The change entries with these `_id`s (`<conversationId>:<seq>`), by id.
    pub(crate) async fn changes_by_id(&self, ids: HashSet<String>) -> RepoResult<HashMap<String, ChangeDoc>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = ids.into_iter().collect();
        self.changes
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(repo_error("reading change entries"))?
            .map_ok(|doc| (doc.id.clone(), doc))
            .try_collect()
            .await
            .map_err(repo_error("reading change entries"))
    }

    /// For each conversation of `read` (its id, a member's read seq and the conversation's
    /// last seq as read with it), how many of its entries after the read seq (up to the last
    /// seq) do not count as unread: its change entries, and its deleted messages. One
    /// aggregate over the change entries of those ranges, along their index: a deleted
    /// message has exactly one deletion entry, after the message, so the deletions of
    /// messages after the read seq are among them (the entry names its message's seq).
    /// Bounded by the last seq read, so that a change committed since the conversation was
    /// read is not taken off entries that were counted without it. Conversations without
    /// entries in the range are answered 0.
    pub(crate) async fn not_unread(&self, read: &[(String, i64, i64)]) -> RepoResult<HashMap<String, u64>> {
        if read.is_empty() {
            return Ok(HashMap::new());
        }
        let ranges: Vec<Document> = read
            .iter()
            .map(|(conversation, read_seq, last_seq)| {
                doc! { "conversationId": conversation, "seq": { "$gt": read_seq, "$lte": last_seq } }
            })
            .collect();
        // One row per conversation for the changes that are no deletion (`d: 0`), one per
        // deletion (`d`: the deleted message's seq): few rows, whatever the number of changes.
        let pipeline = [
            doc! { "$match": { "$or": ranges } },
            doc! { "$group": {
                "_id": {
                    "c": "$conversationId",
                    "d": { "$cond": [{ "$eq": ["$kind", "deleted"] }, "$messageSeq", 0_i64] },
                },
                "n": { "$sum": 1_i64 },
            } },
        ];
        let read_seqs: HashMap<&str, i64> = read.iter().map(|(c, seq, _)| (c.as_str(), *seq)).collect();
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut rows = self
            .changes
            .clone_with_type::<Document>()
            .aggregate(pipeline)
            .hint(Hint::Name(CHANGES_BY_SEQ.to_owned()))
            .await
            .map_err(repo_error("counting unread entries"))?;
        while let Some(row) = rows.try_next().await.map_err(repo_error("counting unread entries"))? {
            let Some((conversation, deleted_seq, n)) = unread_row(&row) else {
                return Err(application::ports::RepoError::corrupt("change count", row));
            };
            let read_seq = read_seqs.get(conversation).copied().unwrap_or(i64::MAX);
            let deleted_unread = u64::from(deleted_seq > read_seq);
            *counts.entry(conversation.to_owned()).or_default() += n + deleted_unread;
        }
        Ok(counts)
    }
}

/// A row of the unread count: the conversation, the deleted message's seq (0 for the other
/// changes) and how many changes.
fn unread_row(row: &Document) -> Option<(&str, i64, u64)> {
    let key = row.get_document("_id").ok()?;
    let conversation = key.get_str("c").ok()?;
    let deleted_seq = integer(key.get("d")?)?;
    let n = u64::try_from(integer(row.get("n")?)?).ok()?;
    Some((conversation, deleted_seq, n))
}

fn integer(value: &mongodb::bson::Bson) -> Option<i64> {
    match value {
        mongodb::bson::Bson::Int32(n) => Some(i64::from(*n)),
        mongodb::bson::Bson::Int64(n) => Some(*n),
        _ => None,
    }
}
