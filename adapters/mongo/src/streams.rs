//! Users' streams: taking positions from the `streamHeads` documents inside a transaction,
//! appending notices, and reading a stream back.
//!
//! # Why positions are gap-free for every reader
//!
//! A transaction takes the next position of a user's stream by `$inc`-rementing the user's
//! `streamHeads` document. MongoDB lets only one open transaction write a document: a second
//! one that writes the same head fails at once with a `WriteConflict` (labelled
//! `TransientTransactionError`) and the driver runs it again from the start, on a fresh
//! snapshot, after the first one ended. The same happens to a transaction whose snapshot
//! predates a head write committed since. So the transaction that reads head `n` and writes
//! `n + 1` commits after the one that wrote `n` committed: per user, positions are committed
//! in position order, and a reader that sees position `p` can see every position below it.
//!
//! A stream read is three queries (the direct messages the user sent, those they received,
//! and their notices), each through its own index, merged by position; then the change
//! entries the page's `updated` notices name, the messages they changed, and the quotes of
//! the replies, one query each. They are not one
//! snapshot: a transaction committing between them can show up in a later query while an
//! earlier position that belongs to an earlier query was committed just too late for it.
//! The merged list is therefore cut at its first hole; what is returned is always a run of
//! consecutive positions right after the cursor, and the rest is read by the next call.

use std::collections::{HashMap, HashSet};

use application::ports::{
    consecutive_after, stored_cursor, Notice, Noticed, RepoError, RepoResult, StreamEntry, StreamItem,
};
use domain::{Cursor, UserId};
use futures_util::TryStreamExt as _;
use mongodb::bson::doc;
use mongodb::error::Error;
use mongodb::options::{Hint, ReturnDocument};
use mongodb::ClientSession;

use crate::documents::{position, ChangeDoc, MessageDoc, NoticeDoc, StreamHeadDoc};
use crate::error::repo_error;
use crate::{Inconsistent, MongoStore};

/// Which side of a direct message a user is on, and so which of its positions is theirs.
#[derive(Clone, Copy)]
enum Side {
    Sender,
    Receiver,
}

impl Side {
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Side::Sender => ("senderId", "senderPosition"),
            Side::Receiver => ("receiverId", "receiverPosition"),
        }
    }

    /// The side's stream index (see `MongoStore::create_indexes`).
    fn index(self) -> &'static str {
        match self {
            Side::Sender => "sender_stream",
            Side::Receiver => "receiver_stream",
        }
    }
}

impl MongoStore {
    /// Takes the next position of both users' streams, in the order of their ids.
    pub(crate) async fn take_positions(
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

    pub(crate) async fn next_position(
        &self,
        session: &mut ClientSession,
        user: &UserId,
    ) -> Result<i64, Error> {
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
                .ok_or_else(|| Inconsistent::error("a stream head vanished inside its own transaction")),
        }
    }

    /// Appends each notice to its user's stream, users in ascending id order (at most one
    /// notice per user): a fixed number of statements whatever their number, so that a
    /// change of a large group stays one short transaction.
    pub(crate) async fn append_notices(
        &self,
        session: &mut ClientSession,
        mut notices: Vec<(UserId, Notice)>,
    ) -> Result<Vec<Noticed>, Error> {
        if notices.is_empty() {
            return Ok(Vec::new());
        }
        notices.sort_by(|(a, _), (b, _)| a.cmp(b));
        let users: Vec<&str> = notices.iter().map(|(user, _)| user.as_str()).collect();
        // The heads as this transaction's snapshot has them; the `$inc` below conflicts with
        // any transaction that wrote one of them since (or is writing it), exactly like a
        // single `$inc` does, so `position + 1` is each head's new value.
        let existing: HashMap<String, i64> = self
            .heads
            .find(doc! { "_id": { "$in": &users } })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .map_ok(|head| (head.user_id, head.position))
            .try_collect()
            .await?;
        let known: Vec<&str> = users.iter().copied().filter(|user| existing.contains_key(*user)).collect();
        if !known.is_empty() {
            let moved = self
                .heads
                .update_many(doc! { "_id": { "$in": &known } }, doc! { "$inc": { "position": 1_i64 } })
                .session(&mut *session)
                .await?;
            if moved.matched_count != known.len() as u64 {
                return Err(Inconsistent::error("a stream head vanished inside its own transaction"));
            }
        }
        let new: Vec<StreamHeadDoc> = users
            .iter()
            .filter(|user| !existing.contains_key(**user))
            .map(|user| StreamHeadDoc { user_id: (*user).to_owned(), position: 1 })
            .collect();
        if !new.is_empty() {
            // A head inserted meanwhile by another transaction is a duplicate key: the caller
            // starts over, and then finds it.
            self.heads.insert_many(new).session(&mut *session).await?;
        }
        let noticed: Vec<Noticed> = notices
            .into_iter()
            .map(|(user, notice)| {
                let position = existing.get(user.as_str()).map_or(1, |head| head + 1);
                let cursor = Cursor::try_from(position)
                    .map_err(|_| Inconsistent::error("a stream position out of range"))?;
                Ok(Noticed { user, cursor, notice })
            })
            .collect::<Result<_, Error>>()?;
        let docs = noticed.iter().map(|n| NoticeDoc::new(&n.user, i64::from(n.cursor), &n.notice));
        self.notices.insert_many(docs).session(&mut *session).await?;
        Ok(noticed)
    }

    /// Up to `limit` entries of `user`'s stream after `after`: see the module documentation.
    pub(crate) async fn read_stream(
        &self,
        user: &UserId,
        after: Cursor,
        limit: u32,
    ) -> RepoResult<Vec<StreamItem>> {
        // The driver reads a limit of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (sent, received, notices) = futures_util::future::try_join3(
            self.stream_side(user, Side::Sender, after, limit),
            self.stream_side(user, Side::Receiver, after, limit),
            self.stream_notices(user, after, limit),
        )
        .await?;
        let mut page: Vec<(i64, Positioned)> = sent
            .into_iter()
            .chain(received)
            .map(|(position, doc)| (position, Positioned::Message(Box::new(doc))))
            .chain(notices.into_iter().map(|notice| (notice.position, Positioned::Notice(notice))))
            .collect();
        page.sort_by_key(|(position, _)| *position);
        page.truncate(limit as usize);
        // An `updated` notice is read as the change entry it names, with the message as it
        // stands now.
        let changes: HashSet<String> = page
            .iter()
            .filter_map(|(_, entry)| match entry {
                Positioned::Notice(notice) if notice.is_updated() => {
                    Some(ChangeDoc::id_of(&notice.conversation_id, notice.seq))
                }
                _ => None,
            })
            .collect();
        let changes = self.changes_by_id(changes).await?;
        let changed = self.messages_by_id(changes.values().map(|c| c.message_id.as_str()).collect()).await?;
        let quotes = self
            .quotes(
                page.iter()
                    .filter_map(|(_, entry)| match entry {
                        Positioned::Message(doc) => Some(&**doc),
                        Positioned::Notice(_) => None,
                    })
                    .chain(changed.values()),
            )
            .await?;
        let mut items = Vec::with_capacity(page.len());
        for (position, entry) in page {
            items.push(match entry {
                Positioned::Message(doc) => StreamItem::at_position(position, quotes.message(*doc)?)?,
                Positioned::Notice(notice) if notice.is_updated() => {
                    let change = changes
                        .get(&ChangeDoc::id_of(&notice.conversation_id, notice.seq))
                        .ok_or_else(|| RepoError::corrupt("updated notice", "without its change entry"))?;
                    let message = changed.get(&change.message_id).ok_or_else(|| {
                        RepoError::corrupt("change entry", "of a message that does not exist")
                    })?;
                    StreamItem {
                        cursor: stored_cursor(position)?,
                        entry: StreamEntry::Update(quotes.update(change.clone(), message.clone())?),
                    }
                }
                Positioned::Notice(notice) => StreamItem::try_from(notice)?,
            });
        }
        Ok(consecutive_after(after, items))
    }

    /// Up to `limit` of the direct messages `user` sent (or received) after position
    /// `after`, in position order, through the side's stream index, with the user's
    /// position of each.
    async fn stream_side(
        &self,
        user: &UserId,
        side: Side,
        after: Cursor,
        limit: u32,
    ) -> RepoResult<Vec<(i64, MessageDoc)>> {
        let (user_field, position_field) = side.fields();
        let mut filter = doc! { user_field: user.as_str() };
        // `$exists` repeats the stream index's partial filter, so that the index answers
        // exactly this query; it is named too, since some servers (SecantusDB, the stand-in
        // the tests run on) never pick a partial index and would scan every message.
        filter.insert(position_field, doc! { "$exists": true, "$gt": i64::from(after) });
        let docs: Vec<MessageDoc> = self
            .messages
            .find(filter)
            .hint(Hint::Name(side.index().to_owned()))
            .sort(doc! { position_field: 1 })
            .limit(i64::from(limit))
            .await
            .map_err(repo_error("reading a message stream"))?
            .try_collect()
            .await
            .map_err(repo_error("reading a message stream"))?;
        docs.into_iter()
            .map(|doc| {
                let stored = match side {
                    Side::Sender => doc.sender_position,
                    Side::Receiver => doc.receiver_position,
                };
                Ok((position(stored)?, doc))
            })
            .collect()
    }

    async fn stream_notices(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<NoticeDoc>> {
        self.notices
            .find(doc! { "userId": user.as_str(), "position": { "$gt": i64::from(after) } })
            .sort(doc! { "position": 1 })
            .limit(i64::from(limit))
            .await
            .map_err(repo_error("reading a stream's notices"))?
            .try_collect()
            .await
            .map_err(repo_error("reading a stream's notices"))
    }
}

/// An entry of a user's stream as read: a direct message, or a notice.
enum Positioned {
    Message(Box<MessageDoc>),
    Notice(NoticeDoc),
}
