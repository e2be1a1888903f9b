//! Message changes on MongoDB: an edit, a deletion, a reaction added or taken back is one
//! transaction that takes the conversation's next seq, decides the change on the message as
//! stored, and writes the change entry (`messageChanges`), the message's new state and, in a
//! direct conversation, an `updated` notice in both users' streams.
//!
//! # Why a change is decided under its conversation's lock
//!
//! The transaction first writes what a send to the conversation writes: in a direct
//! conversation both users' stream heads (in id order), then the conversation's `lastSeq`
//! (`$inc`), in a group the group's `lastSeq`. MongoDB lets one open transaction write a
//! document; a second one fails with a write conflict and runs again from the start, and so
//! does one whose snapshot predates a commit that wrote it (see `messages`). Every change and
//! every send of the conversation writes its document, so once this transaction has written
//! it, its snapshot holds every change of the conversation committed before, and none can
//! commit until it ends: the member and message it reads next are as under a row lock, and
//! `MessageState::apply` decides on them. A refusal or "made already" aborts the
//! transaction, which gives the seq and the positions back.
//!
//! Reactions live on the message document (`reactions: [{emoji, userId, at}]`, in the order
//! the message's state lists them: each emoji where it was first used, its users in the order
//! they reacted): the change reads them with the message it decides on and writes the array
//! the decided state lists, one document for both. Changes of one process queue on the same turns as sends (see
//! `turns`), so 50 users reacting at once take the lock one after the other rather than retry.

use application::ports::{
    ChangeOutcome, ChangeRequest, MessageChangeRepository, RepoError, RepoResult, StoredChange,
    StreamPosition, Update,
};
use async_trait::async_trait;
use domain::{
    Actor, Applied, Change, ChangeError, Content, Cursor, Member, Message, MessageBody, MessageChange,
    MessageId, MessageState, UserId,
};
use futures_util::FutureExt as _;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error;
use mongodb::options::ReturnDocument;
use mongodb::ClientSession;

use crate::documents::{to_bson, ChangeDoc, MessageDoc, NoticeDoc, GROUP};
use crate::error::{is_duplicate_key, repo_error};
use crate::{turns, Inconsistent, MongoStore};

/// How often a change starts over after a duplicate key that a new attempt gets past: the
/// stream head of a user who had none, inserted meanwhile by another transaction.
const DUPLICATE_KEY_ATTEMPTS: usize = 3;

/// Which conversation a change is in, as read before its transaction.
enum Target {
    /// A direct conversation, with its two users (in the pair's order).
    Direct(UserId, UserId),
    Group,
}

/// A change as its transaction stored it.
struct Stored {
    /// The message as read under the lock, before the change.
    before: MessageDoc,
    /// Its state after the change (with the change's seq as its version).
    state: MessageState,
    change: MessageChange,
    /// Of a direct conversation: the sender's and the receiver's positions.
    positions: Vec<StreamPosition>,
    members_version: i64,
}

/// What a change's transaction did.
enum Decided {
    Changed(Box<Stored>),
    Unchanged(Box<MessageDoc>),
    NotMember,
    NotFound,
    Refused(ChangeError),
    /// A stored member or message that does not parse: corrupt data (nothing written).
    Corrupt(RepoError),
}

#[async_trait]
impl MessageChangeRepository for MongoStore {
    async fn find(&self, message: &MessageId) -> RepoResult<Option<Message>> {
        let found = self
            .messages
            .find_one(doc! { "_id": message.as_str() })
            .await
            .map_err(repo_error("finding a message"))?;
        match found {
            Some(doc) => self.current_one(doc).await.map(Some),
            None => Ok(None),
        }
    }

    async fn change(&self, request: &ChangeRequest) -> RepoResult<ChangeOutcome> {
        let Some(target) = self.target(request).await? else { return Ok(ChangeOutcome::NotMember) };
        // The turns a send to the conversation takes.
        let keys = match &target {
            Target::Direct(a, b) => vec![turns::head(a.as_str()), turns::head(b.as_str())],
            Target::Group => vec![turns::conversation(request.conversation.as_str())],
        };
        let _turn = self.turns.take(keys).await;
        for _ in 0..DUPLICATE_KEY_ATTEMPTS {
            let decided = self
                .transaction((self, request, &target), |session, context| {
                    let (store, request, target) = *context;
                    async move { store.message_change_steps(session, request, target).await }.boxed()
                })
                .await;
            let decided = match decided {
                Ok(decided) => decided,
                Err(error) if is_duplicate_key(&error) => continue,
                Err(error) => return Err(repo_error("changing a message")(error)),
            };
            return match decided {
                Decided::Changed(stored) => {
                    let Stored { before, state, change, positions, members_version } = *stored;
                    let message = self.current_one(before).await?.with_state(state);
                    let version = match target {
                        Target::Direct(..) => 0,
                        Target::Group => crate::documents::version(Some(members_version))?,
                    };
                    Ok(ChangeOutcome::Changed(StoredChange {
                        update: Update { change, message },
                        positions,
                        version,
                    }))
                }
                Decided::Unchanged(doc) => Ok(ChangeOutcome::Unchanged(self.current_one(*doc).await?)),
                Decided::NotMember => Ok(ChangeOutcome::NotMember),
                Decided::NotFound => Ok(ChangeOutcome::NotFound),
                Decided::Refused(refused) => Ok(ChangeOutcome::Refused(refused)),
                Decided::Corrupt(error) => Err(error),
            };
        }
        Err(RepoError::Unexpected(anyhow::anyhow!(
            "changing a message kept hitting a unique index that nothing stored explains"
        )))
    }
}

impl MongoStore {
    /// The conversation's kind and (direct) users; `None` if there is no such conversation.
    /// Read before the transaction, to take the turns a send takes: neither ever changes.
    async fn target(&self, request: &ChangeRequest) -> RepoResult<Option<Target>> {
        let found = self
            .conversations
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": request.conversation.as_str() })
            .projection(doc! { "kind": 1, "participants": 1 })
            .await
            .map_err(repo_error("finding a conversation"))?;
        let Some(found) = found else { return Ok(None) };
        if found.get_str("kind") == Ok(GROUP) {
            return Ok(Some(Target::Group));
        }
        let users: Vec<UserId> = match found.get("participants") {
            Some(Bson::Array(users)) => users
                .iter()
                .map(|user| {
                    user.as_str()
                        .and_then(|user| UserId::parse(user).ok())
                        .ok_or_else(|| RepoError::corrupt("participant", format!("{user}")))
                })
                .collect::<RepoResult<_>>()?,
            _ => Vec::new(),
        };
        match <[UserId; 2]>::try_from(users) {
            Ok([a, b]) => Ok(Some(Target::Direct(a, b))),
            Err(users) => Err(RepoError::corrupt("participants", format!("{} instead of 2", users.len()))),
        }
    }

    async fn message_change_steps(
        &self,
        session: &mut ClientSession,
        request: &ChangeRequest,
        target: &Target,
    ) -> Result<Decided, Error> {
        let conversation = request.conversation.as_str();
        // The lock a send takes, in its order: both heads, then the conversation.
        let heads = match target {
            Target::Direct(a, b) => Some((a, b, self.take_positions(session, a, b).await?)),
            Target::Group => None,
        };
        let moved = self
            .conversations
            .clone_with_type::<Document>()
            .find_one_and_update(doc! { "_id": conversation }, doc! { "$inc": { "lastSeq": 1_i64 } })
            .return_document(ReturnDocument::After)
            .projection(doc! { "lastSeq": 1, "membersVersion": 1 })
            .session(&mut *session)
            .await?;
        let Some(seq) = moved.as_ref().and_then(|moved| moved.get_i64("lastSeq").ok()) else {
            return abort(session, Decided::NotMember).await;
        };
        let members_version =
            moved.as_ref().and_then(|moved| moved.get_i64("membersVersion").ok()).unwrap_or(0);

        let member = self
            .members
            .find_one(doc! { "conversationId": conversation, "userId": request.actor.as_str() })
            .session(&mut *session)
            .await?;
        let Some(member) = member else { return abort(session, Decided::NotMember).await };
        let member = match Member::try_from(member) {
            Ok(member) => member,
            Err(error) => return abort(session, Decided::Corrupt(error)).await,
        };
        let found = self
            .messages
            .find_one(doc! { "_id": request.message.as_str(), "conversationId": conversation })
            .session(&mut *session)
            .await?;
        let Some(before) = found.filter(|doc| doc.seq.is_some_and(|seq| seq >= seq_i64(member.joined_seq)))
        else {
            return abort(session, Decided::NotFound).await;
        };
        let message = match before.clone().record(None).and_then(Message::try_from) {
            Ok(message) => message,
            Err(error) => return abort(session, Decided::Corrupt(error)).await,
        };

        let actor = Actor { user: request.actor.clone(), role: member.role };
        let mut state = message.state();
        let kind = match state.apply(&actor, &request.change, request.window, request.at) {
            Err(refused) => return abort(session, Decided::Refused(refused)).await,
            Ok(Applied::Unchanged) => return abort(session, Decided::Unchanged(Box::new(before))).await,
            Ok(Applied::Changed(kind)) => kind,
        };
        let seq_u64 = u64::try_from(seq).map_err(|_| Inconsistent::error("a negative seq"))?;
        state.version = seq_u64;
        let change = MessageChange {
            conversation_id: request.conversation.clone(),
            message_id: request.message.clone(),
            actor: request.actor.clone(),
            kind,
            at: request.at,
            seq: seq_u64,
        };
        let message_seq = before.seq.unwrap_or(0);
        self.changes.insert_one(ChangeDoc::new(&change, message_seq)).session(&mut *session).await?;
        self.messages
            .update_one(
                doc! { "_id": request.message.as_str() },
                message_update(request, &before, &state, seq),
            )
            .session(&mut *session)
            .await?;

        let mut positions = Vec::new();
        if let Some((a, b, (position_a, position_b))) = heads {
            let receiver = message
                .receiver_id
                .as_ref()
                .ok_or_else(|| Inconsistent::error("a direct message without a receiver"))?;
            let position_of = |user: &UserId| if user == a { position_a } else { position_b };
            if ![a, b].contains(&&message.sender_id) || ![a, b].contains(&receiver) {
                return Err(Inconsistent::error("a direct message of other users than its conversation's"));
            }
            for user in [&message.sender_id, receiver] {
                let position = position_of(user);
                let cursor = Cursor::try_from(position)
                    .map_err(|_| Inconsistent::error("a stream position out of range"))?;
                positions.push(StreamPosition { user: user.clone(), cursor });
            }
            let notices = positions.iter().map(|p| NoticeDoc::updated(&p.user, i64::from(p.cursor), &change));
            self.notices.insert_many(notices).session(&mut *session).await?;
        }
        Ok(Decided::Changed(Box::new(Stored { before, state, change, positions, members_version })))
    }
}

/// The update that gives the message document `before` the state after `request` at `seq`.
fn message_update(request: &ChangeRequest, before: &MessageDoc, state: &MessageState, seq: i64) -> Document {
    match (&request.change, &state.content) {
        (_, Content::Deleted(tombstone)) => doc! {
            "$set": {
                "message": MessageBody::WITHDRAWN,
                "deletedAt": to_bson(tombstone.deleted_at),
                "deletedBy": tombstone.deleted_by.as_str(),
                "version": seq,
            },
            "$unset": { "reactions": "", "editedAt": "" },
        },
        // The whole array, in the order the new state lists the reactions (each emoji where it
        // was first used, kept while anyone still reacts with it; its users in the order they
        // reacted): read back, it groups into exactly that state. Each reaction keeps its time.
        (Change::React(_) | Change::Unreact(_), Content::Live { reactions, .. }) => {
            let made_at = |emoji: &str, user: &str| {
                before
                    .reactions
                    .iter()
                    .find(|r| r.emoji == emoji && r.user_id == user)
                    .map_or_else(|| to_bson(request.at), |r| r.at)
            };
            let array: Vec<Bson> = reactions
                .iter()
                .flat_map(|(emoji, users)| users.iter().map(move |user| (emoji.as_str(), user.as_str())))
                .map(|(emoji, user)| {
                    Bson::Document(doc! { "emoji": emoji, "userId": user, "at": made_at(emoji, user) })
                })
                .collect();
            doc! { "$set": { "reactions": array, "version": seq } }
        }
        (_, Content::Live { body, edited_at, .. }) => {
            let mut set = doc! { "message": body.as_str(), "version": seq };
            if let Some(edited_at) = edited_at {
                set.insert("editedAt", to_bson(*edited_at));
            }
            doc! { "$set": set }
        }
    }
}

/// Ends the transaction without writing anything (the seq and positions it took are given
/// back) and answers `decided`.
async fn abort(session: &mut ClientSession, decided: Decided) -> Result<Decided, Error> {
    session.abort_transaction().await?;
    Ok(decided)
}

fn seq_i64(seq: domain::Seq) -> i64 {
    crate::documents::seq_to_i64(seq)
}
