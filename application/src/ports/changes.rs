//! What the message-change use cases need from storage: a message as it stands now, and
//! one change (edit, delete, react, take a reaction back) applied to it under its
//! conversation's lock.
//!
//! A stored change is an entry of its conversation's sequence, after the message it changes
//! (docs/MESSAGE_CHANGES.md §1): it takes the conversation's next seq like a send does, and in
//! a direct conversation a position in both users' streams.

use async_trait::async_trait;
use domain::{
    Change, ChangeError, ConversationId, Cursor, EditWindow, Message, MessageId, Timestamp, UserId,
};

use super::{RepoResult, Update};

/// One change a member asks for, decided at `at` with the edit window `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRequest {
    pub conversation: ConversationId,
    pub message: MessageId,
    pub actor: UserId,
    pub change: Change,
    pub at: Timestamp,
    pub window: EditWindow,
}

/// A position taken in one user's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub user: UserId,
    pub cursor: Cursor,
}

/// A change as stored: the change entry with the message as it stands after it, and where
/// the entry sits in users' streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChange {
    /// The change entry, with the seq it took, and the message right after it (its
    /// `version()` is the change's seq).
    pub update: Update,
    /// In a direct conversation, the position the change took in each of the two users'
    /// streams; empty in a group (a group's entries take no stream positions).
    pub positions: Vec<StreamPosition>,
    /// In a group, its membership version when the change was stored: its members then are
    /// the ones told. 0 in a direct conversation.
    pub version: u64,
}

/// What [`MessageChangeRepository::change`] ended in. Only `Changed` wrote anything.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOutcome {
    /// Stored, at the conversation's next seq.
    Changed(StoredChange),
    /// The message shows this change already (the same edit, reaction, deletion or taking
    /// back again, or a reaction taken back from a deleted message): nothing was stored, no
    /// seq or position was taken. The message as it stands.
    Unchanged(Message),
    /// The actor is not a member of the conversation (any more), or there is no such
    /// conversation.
    NotMember,
    /// The conversation has no such message, or not one the actor can see (a group entry
    /// from before the actor joined).
    NotFound,
    /// The rules refuse the change on the state under the lock: a member who is not the
    /// sender edits, a member who is no longer an admin deletes someone else's message, a
    /// system entry, a deleted message edited or reacted to ([`ChangeError::Deleted`]), an
    /// edit after the window closed, a reaction with one emoji too many
    /// ([`domain::ReactionError::TooManyEmoji`]).
    Refused(ChangeError),
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait MessageChangeRepository: Send + Sync {
    /// The message with this id, in whichever conversation it is, as it stands now (its
    /// `changed` read with it); `None` if no message has the id. A point read: no lock is taken,
    /// so the answer may be overtaken by a change committed right after it — good for
    /// answering refusals early and for checking a reply's target, never for deciding a
    /// change (that is [`change`](Self::change)'s job).
    async fn find(&self, message: &MessageId) -> RepoResult<Option<Message>>;

    /// Applies `request` in one atomic step, holding the conversation's lock while it
    /// decides and writes — the lock a send to the conversation takes (in a direct
    /// conversation, first both users' stream heads in the pair's order, then the
    /// conversation row: the lock order of a direct send). Under it, in this order:
    ///
    /// 1. the actor's membership is read: [`ChangeOutcome::NotMember`] if none;
    /// 2. the message is read: [`ChangeOutcome::NotFound`] if it is not an entry of
    ///    `request.conversation` or has a seq below the actor's `joined_seq`;
    /// 3. the change is decided exactly as [`MessageState::apply`] decides it on the
    ///    message's state, with the actor's role from step 1, `request.window` and
    ///    `request.at` (a store may do it with conditional writes — `UPDATE … WHERE
    ///    deleted_at IS NULL AND body <> $new`, `INSERT … ON CONFLICT DO NOTHING` — as long
    ///    as the outcome is the same): a refusal is [`ChangeOutcome::Refused`], "made
    ///    already" is [`ChangeOutcome::Unchanged`]; neither writes anything nor takes a seq;
    /// 4. a change is stored: the conversation's next seq (`last_seq + 1`); a change entry at
    ///    it; the message's new text and `edited_at`, or its tombstone (text and every
    ///    reaction dropped), or one reaction row added or removed (with the message's
    ///    reaction counts); the message's `version` set to the seq; in a direct conversation
    ///    an entry at the next position of both users' streams. [`ChangeOutcome::Changed`].
    ///
    /// A change moves no one's read position, does not count as unread and does not move
    /// the conversation's `updated_at` (a reaction does not reorder conversation lists).
    /// Its seq and positions become readable only after every earlier seq and position of
    /// the same conversation and streams, as for a send, so the sequences stay without
    /// holes.
    ///
    /// Idempotent: the same request twice, one after the other or racing, is one
    /// `Changed` and one `Unchanged`, since both decide on the state under the same lock.
    /// Requests never need a retry: racing changes (100 users reacting to one message)
    /// queue on the lock, none fails. Of two different edits racing, the later commit takes
    /// the higher seq and its text stays.
    async fn change(&self, request: &ChangeRequest) -> RepoResult<ChangeOutcome>;
}
