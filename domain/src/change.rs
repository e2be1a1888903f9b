//! Changes to a sent message — edit, delete, react, take a reaction back — and the rules that
//! decide them: who may make which change, until when a message can be edited, what a deleted
//! message keeps.
//!
//! Deciding is pure: [`MessageState::apply`] takes the message as it stands and one requested
//! change, and either changes the state ([`Applied::Changed`]), finds that the change is made
//! already ([`Applied::Unchanged`]: the same edit, reaction or deletion twice is one change), or
//! refuses it with a [`ChangeError`]. Storing the change, numbering it and announcing it are the
//! application's and the stores' business.

use serde::{Deserialize, Serialize};

use crate::{
    ConversationId, Emoji, Message, MessageBody, MessageId, ReactionError, Reactions, Role, Seq, Timestamp,
    UserId,
};

/// How long after sending its sender may edit a message (`messages.edit_window`): 24 hours
/// unless configured; `0` seconds means forever. Deleting and reacting have no window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditWindow(Option<chrono::TimeDelta>);

impl EditWindow {
    pub const DEFAULT_SECS: u64 = 24 * 60 * 60;

    /// A window of `secs` seconds; `0` (and a window longer than time can be counted) is
    /// forever.
    pub fn from_secs(secs: u64) -> Self {
        if secs == 0 {
            return Self::forever();
        }
        Self(i64::try_from(secs).ok().and_then(chrono::TimeDelta::try_seconds))
    }

    pub fn forever() -> Self {
        Self(None)
    }

    /// Whether a message sent at `sent_at` may still be edited at `now`. A message from the
    /// future (clocks of two servers apart) is within the window.
    pub fn allows(self, sent_at: Timestamp, now: Timestamp) -> bool {
        self.closes_at(sent_at).is_none_or(|closes| now <= closes)
    }

    /// The last instant a message sent at `sent_at` may be edited; `None` if never closed.
    pub fn closes_at(self, sent_at: Timestamp) -> Option<Timestamp> {
        self.0.and_then(|window| sent_at.checked_add_signed(window))
    }
}

impl Default for EditWindow {
    fn default() -> Self {
        Self::from_secs(Self::DEFAULT_SECS)
    }
}

/// Who requests a change: a member of the conversation, with their role in it (both users of a
/// direct conversation are [`Role::Member`]s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user: UserId,
    pub role: Role,
}

/// A change a member asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Edit(MessageBody),
    Delete,
    React(Emoji),
    Unreact(Emoji),
}

/// What a stored change did, as the history of changes and the `messageUpdated` event name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ChangeKind {
    Edited,
    Deleted,
    ReactionAdded { emoji: Emoji },
    ReactionRemoved { emoji: Emoji },
}

impl ChangeKind {
    /// The kind's name on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeKind::Edited => "edited",
            ChangeKind::Deleted => "deleted",
            ChangeKind::ReactionAdded { .. } => "reactionAdded",
            ChangeKind::ReactionRemoved { .. } => "reactionRemoved",
        }
    }

    /// The emoji of a reaction change.
    pub fn emoji(&self) -> Option<&Emoji> {
        match self {
            ChangeKind::ReactionAdded { emoji } | ChangeKind::ReactionRemoved { emoji } => Some(emoji),
            ChangeKind::Edited | ChangeKind::Deleted => None,
        }
    }
}

/// One stored change of a message: an entry of its conversation's sequence, after the
/// message it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageChange {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub actor: UserId,
    pub kind: ChangeKind,
    pub at: Timestamp,
    /// Its place in the conversation's sequence; assigned by the store (0 before).
    pub seq: Seq,
}

/// What is left of a deleted message: who deleted it and when. No text and no reactions —
/// not in history, sync, the conversation list or anywhere else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub deleted_at: Timestamp,
    pub deleted_by: UserId,
}

/// What a message shows now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    Live {
        body: MessageBody,
        /// When it was last edited; `None` if never. Earlier texts are not kept.
        edited_at: Option<Timestamp>,
        reactions: Reactions,
    },
    Deleted(Tombstone),
}

impl Content {
    /// The text shown, `None` for a deleted message.
    pub fn body(&self) -> Option<&MessageBody> {
        match self {
            Content::Live { body, .. } => Some(body),
            Content::Deleted(_) => None,
        }
    }

    pub fn tombstone(&self) -> Option<&Tombstone> {
        match self {
            Content::Live { .. } => None,
            Content::Deleted(tombstone) => Some(tombstone),
        }
    }
}

/// A message as the change rules see it: what never changes about it, and its content now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub sender_id: UserId,
    pub sent_at: Timestamp,
    /// A system entry of a group: no one changes or reacts to it.
    pub system: bool,
    pub content: Content,
    /// The seq of its last change (its own seq if never changed): of two states of one
    /// message, the one with the greater version is the newer.
    pub version: Seq,
}

/// What [`MessageState::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The state changed; the change to store and announce.
    Changed(ChangeKind),
    /// The state shows this change already: nothing to store, nothing to announce.
    Unchanged,
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("only its sender may edit a message")]
    NotSender,
    #[error("only its sender, or in a group an admin or the owner, may delete a message")]
    MayNotDelete,
    #[error("a system entry cannot be changed or reacted to")]
    SystemEntry,
    #[error("the message is deleted")]
    Deleted,
    #[error("the message can no longer be edited: its edit window closed at {closed_at}")]
    EditWindowClosed { closed_at: Timestamp },
    #[error(transparent)]
    Reaction(#[from] ReactionError),
}

impl MessageState {
    /// A message as it was sent: its text, never edited, no reactions.
    pub fn sent(message: &Message) -> Self {
        Self {
            sender_id: message.sender_id.clone(),
            sent_at: message.created_at,
            system: !message.is_text(),
            content: Content::Live {
                body: message.body.clone(),
                edited_at: None,
                reactions: Reactions::new(),
            },
            version: message.seq,
        }
    }

    /// Decides `change` by `actor` at `now` and applies it to this state. The order of the
    /// checks is the order of the answers a client gets: may this actor make this change at
    /// all, is the message still there, is the change made already, is it still allowed now.
    /// So a retried edit that succeeded just before its window closed is `Unchanged`, not
    /// refused. `version` is left to the caller, which learns the change's seq when storing it.
    pub fn apply(
        &mut self,
        actor: &Actor,
        change: &Change,
        window: EditWindow,
        now: Timestamp,
    ) -> Result<Applied, ChangeError> {
        if self.system {
            return Err(ChangeError::SystemEntry);
        }
        match change {
            Change::Edit(new_body) => {
                if actor.user != self.sender_id {
                    return Err(ChangeError::NotSender);
                }
                let Content::Live { body, edited_at, .. } = &mut self.content else {
                    return Err(ChangeError::Deleted);
                };
                if body == new_body {
                    return Ok(Applied::Unchanged);
                }
                if let Some(closed_at) = window.closes_at(self.sent_at).filter(|&closes| now > closes) {
                    return Err(ChangeError::EditWindowClosed { closed_at });
                }
                *body = new_body.clone();
                *edited_at = Some(now);
                Ok(Applied::Changed(ChangeKind::Edited))
            }
            Change::Delete => {
                if !may_delete(actor, &self.sender_id) {
                    return Err(ChangeError::MayNotDelete);
                }
                if matches!(self.content, Content::Deleted(_)) {
                    return Ok(Applied::Unchanged);
                }
                self.content =
                    Content::Deleted(Tombstone { deleted_at: now, deleted_by: actor.user.clone() });
                Ok(Applied::Changed(ChangeKind::Deleted))
            }
            Change::React(emoji) => {
                let Content::Live { reactions, .. } = &mut self.content else {
                    return Err(ChangeError::Deleted);
                };
                Ok(match reactions.add(&actor.user, emoji)? {
                    true => Applied::Changed(ChangeKind::ReactionAdded { emoji: emoji.clone() }),
                    false => Applied::Unchanged,
                })
            }
            Change::Unreact(emoji) => {
                // A deleted message has no reactions left: taking one back is done already.
                let Content::Live { reactions, .. } = &mut self.content else {
                    return Ok(Applied::Unchanged);
                };
                Ok(match reactions.remove(&actor.user, emoji) {
                    true => Applied::Changed(ChangeKind::ReactionRemoved { emoji: emoji.clone() }),
                    false => Applied::Unchanged,
                })
            }
        }
    }
}

/// Whether `actor` may delete a message `sender` sent: their own, or any in a group they
/// manage (admins and the owner).
pub fn may_delete(actor: &Actor, sender: &UserId) -> bool {
    &actor.user == sender || actor.role.manages_members()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, Utc};
    use proptest::prelude::*;

    fn body(raw: &str) -> MessageBody {
        MessageBody::parse(raw).unwrap()
    }

    fn emoji(raw: &str) -> Emoji {
        Emoji::parse(raw).unwrap()
    }

    fn member(user: &UserId) -> Actor {
        Actor { user: user.clone(), role: Role::Member }
    }

    fn state(sender: &UserId, sent_at: Timestamp) -> MessageState {
        MessageState {
            sender_id: sender.clone(),
            sent_at,
            system: false,
            content: Content::Live { body: body("hello"), edited_at: None, reactions: Reactions::new() },
            version: 7,
        }
    }

    fn day() -> EditWindow {
        EditWindow::default()
    }

    #[test]
    fn the_edit_window_is_a_day_unless_configured_and_zero_is_forever() {
        let sent = Utc::now();
        assert!(day().allows(sent, sent + TimeDelta::hours(24)));
        assert!(!day().allows(sent, sent + TimeDelta::hours(24) + TimeDelta::seconds(1)));
        assert!(EditWindow::from_secs(0).allows(sent, sent + TimeDelta::days(10_000)));
        assert_eq!(EditWindow::from_secs(0).closes_at(sent), None);
        assert!(!EditWindow::from_secs(60).allows(sent, sent + TimeDelta::seconds(61)));
        assert_eq!(EditWindow::from_secs(u64::MAX), EditWindow::forever());
    }

    #[test]
    fn a_message_from_a_clock_ahead_is_within_the_window() {
        let now = Utc::now();
        assert!(EditWindow::from_secs(60).allows(now + TimeDelta::minutes(5), now));
    }

    #[test]
    fn the_sender_edits_within_the_window_and_the_message_shows_when() {
        let alice = UserId::generate();
        let now = Utc::now();
        let mut message = state(&alice, now - TimeDelta::hours(1));
        let applied = message.apply(&member(&alice), &Change::Edit(body("hello!")), day(), now);
        assert_eq!(applied, Ok(Applied::Changed(ChangeKind::Edited)));
        assert_eq!(message.content.body(), Some(&body("hello!")));
        assert!(matches!(message.content, Content::Live { edited_at: Some(at), .. } if at == now));
    }

    #[test]
    fn nobody_but_the_sender_edits_not_even_the_owner() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let now = Utc::now();
        let owner = Actor { user: bob, role: Role::Owner };
        let mut message = state(&alice, now);
        assert_eq!(message.apply(&owner, &Change::Edit(body("x")), day(), now), Err(ChangeError::NotSender));
    }

    #[test]
    fn the_same_edit_twice_is_one_change() {
        let alice = UserId::generate();
        let now = Utc::now();
        let mut message = state(&alice, now);
        let edit = Change::Edit(body("fixed"));
        assert_eq!(
            message.apply(&member(&alice), &edit, day(), now),
            Ok(Applied::Changed(ChangeKind::Edited))
        );
        let again = message.clone().apply(&member(&alice), &edit, day(), now + TimeDelta::seconds(1));
        assert_eq!(again, Ok(Applied::Unchanged));
    }

    #[test]
    fn an_edit_after_the_window_is_refused_unless_it_is_made_already() {
        let alice = UserId::generate();
        let sent = Utc::now() - TimeDelta::days(2);
        let mut message = state(&alice, sent);
        let closed_at = sent + TimeDelta::hours(24);
        let late = message.apply(&member(&alice), &Change::Edit(body("late")), day(), Utc::now());
        assert_eq!(late, Err(ChangeError::EditWindowClosed { closed_at }));
        let same = message.apply(&member(&alice), &Change::Edit(body("hello")), day(), Utc::now());
        assert_eq!(same, Ok(Applied::Unchanged));
        let forever =
            message.apply(&member(&alice), &Change::Edit(body("late")), EditWindow::forever(), Utc::now());
        assert_eq!(forever, Ok(Applied::Changed(ChangeKind::Edited)));
    }

    #[test]
    fn a_deleted_message_keeps_no_text_and_no_reactions_and_cannot_be_edited_or_reacted_to() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let now = Utc::now();
        let mut message = state(&alice, now);
        message.apply(&member(&bob), &Change::React(emoji("👍")), day(), now).unwrap();
        let deleted = message.apply(&member(&alice), &Change::Delete, day(), now);
        assert_eq!(deleted, Ok(Applied::Changed(ChangeKind::Deleted)));
        assert_eq!(
            message.content,
            Content::Deleted(Tombstone { deleted_at: now, deleted_by: alice.clone() })
        );
        assert_eq!(message.content.body(), None);
        let edit = message.apply(&member(&alice), &Change::Edit(body("back")), day(), now);
        assert_eq!(edit, Err(ChangeError::Deleted));
        let react = message.apply(&member(&bob), &Change::React(emoji("👍")), day(), now);
        assert_eq!(react, Err(ChangeError::Deleted));
        let unreact = message.apply(&member(&bob), &Change::Unreact(emoji("👍")), day(), now);
        assert_eq!(unreact, Ok(Applied::Unchanged));
    }

    #[test]
    fn deleting_twice_is_one_change_and_keeps_the_first_tombstone() {
        let alice = UserId::generate();
        let now = Utc::now();
        let mut message = state(&alice, now);
        message.apply(&member(&alice), &Change::Delete, day(), now).unwrap();
        let first = message.content.clone();
        let again = message.apply(&member(&alice), &Change::Delete, day(), now + TimeDelta::minutes(1));
        assert_eq!(again, Ok(Applied::Unchanged));
        assert_eq!(message.content, first);
    }

    #[test]
    fn others_delete_only_as_admins_or_owner_of_a_group() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let now = Utc::now();
        let refused = state(&alice, now).apply(&member(&bob), &Change::Delete, day(), now);
        assert_eq!(refused, Err(ChangeError::MayNotDelete));
        for role in [Role::Admin, Role::Owner] {
            let actor = Actor { user: bob.clone(), role };
            let mut message = state(&alice, now);
            assert_eq!(
                message.apply(&actor, &Change::Delete, day(), now),
                Ok(Applied::Changed(ChangeKind::Deleted))
            );
            assert_eq!(message.content.tombstone().map(|t| &t.deleted_by), Some(&bob));
        }
    }

    #[test]
    fn deleting_has_no_window() {
        let alice = UserId::generate();
        let mut message = state(&alice, Utc::now() - TimeDelta::days(400));
        let applied = message.apply(&member(&alice), &Change::Delete, day(), Utc::now());
        assert_eq!(applied, Ok(Applied::Changed(ChangeKind::Deleted)));
    }

    #[test]
    fn system_entries_cannot_be_changed_by_anyone() {
        let alice = UserId::generate();
        let now = Utc::now();
        let owner = Actor { user: alice.clone(), role: Role::Owner };
        for change in [
            Change::Edit(body("x")),
            Change::Delete,
            Change::React(emoji("👍")),
            Change::Unreact(emoji("👍")),
        ] {
            let mut entry = MessageState { system: true, ..state(&alice, now) };
            assert_eq!(entry.apply(&owner, &change, day(), now), Err(ChangeError::SystemEntry), "{change:?}");
        }
    }

    #[test]
    fn reacting_twice_and_taking_back_what_is_not_there_change_nothing() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let now = Utc::now();
        let mut message = state(&alice, now);
        let thumbs = emoji("👍");
        let added = ChangeKind::ReactionAdded { emoji: thumbs.clone() };
        assert_eq!(
            message.apply(&member(&bob), &Change::React(thumbs.clone()), day(), now),
            Ok(Applied::Changed(added))
        );
        assert_eq!(
            message.apply(&member(&bob), &Change::React(emoji(":+1:")), day(), now),
            Ok(Applied::Unchanged)
        );
        let removed = ChangeKind::ReactionRemoved { emoji: thumbs.clone() };
        assert_eq!(
            message.apply(&member(&bob), &Change::Unreact(thumbs.clone()), day(), now),
            Ok(Applied::Changed(removed))
        );
        assert_eq!(
            message.apply(&member(&bob), &Change::Unreact(thumbs), day(), now),
            Ok(Applied::Unchanged)
        );
    }

    #[test]
    fn a_reaction_past_the_cap_is_refused() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let now = Utc::now();
        let mut message = state(&alice, now);
        let all: Vec<Emoji> =
            emojis::iter().take(Reactions::MAX_EMOJI + 1).map(|e| emoji(e.as_str())).collect();
        for e in &all[..Reactions::MAX_EMOJI] {
            message.apply(&member(&bob), &Change::React(e.clone()), day(), now).unwrap();
        }
        let refused =
            message.apply(&member(&alice), &Change::React(all[Reactions::MAX_EMOJI].clone()), day(), now);
        assert_eq!(
            refused,
            Err(ChangeError::Reaction(ReactionError::TooManyEmoji { max: Reactions::MAX_EMOJI }))
        );
    }

    #[test]
    fn a_sent_message_starts_unedited_without_reactions_at_its_own_seq() {
        let alice = UserId::generate();
        let message = Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: alice.clone(),
            receiver_id: None,
            body: body("hi"),
            system: None,
            seq: 12,
            created_at: Utc::now(),
            client_id: None,
        };
        let state = MessageState::sent(&message);
        assert_eq!(state.version, 12);
        assert!(!state.system);
        assert_eq!(
            state.content,
            Content::Live { body: body("hi"), edited_at: None, reactions: Reactions::new() }
        );
    }

    #[test]
    fn change_kinds_have_their_wire_names() {
        let added = ChangeKind::ReactionAdded { emoji: emoji("👍") };
        assert_eq!(
            serde_json::to_value(&added).unwrap(),
            serde_json::json!({"kind": "reactionAdded", "emoji": "👍"})
        );
        assert_eq!(serde_json::to_value(ChangeKind::Edited).unwrap(), serde_json::json!({"kind": "edited"}));
        for kind in [
            ChangeKind::Edited,
            ChangeKind::Deleted,
            added,
            ChangeKind::ReactionRemoved { emoji: emoji("🎉") },
        ] {
            assert_eq!(serde_json::to_value(&kind).unwrap()["kind"], kind.as_str());
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Edit(usize, u8),
        Delete(usize),
        React(usize, bool),
        Unreact(usize, bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        let who = 0..3usize;
        prop_oneof![
            2 => (who.clone(), 0..3u8).prop_map(|(w, t)| Step::Edit(w, t)),
            1 => who.clone().prop_map(Step::Delete),
            2 => (who.clone(), any::<bool>()).prop_map(|(w, e)| Step::React(w, e)),
            2 => (who, any::<bool>()).prop_map(|(w, e)| Step::Unreact(w, e)),
        ]
    }

    proptest! {
        /// Whatever members ask for in whatever order: a request repeated right after it was
        /// applied changes nothing, and once deleted a message stays a bare tombstone.
        #[test]
        fn repeating_a_change_is_a_no_op_and_a_tombstone_is_final(steps in proptest::collection::vec(step(), 0..40)) {
            let users: Vec<UserId> = (0..3).map(|_| UserId::generate()).collect();
            let roles = [Role::Member, Role::Member, Role::Admin];
            let now = Utc::now();
            let mut message = state(&users[0], now);
            let mut deleted = None;
            for step in steps {
                let (who, change) = match step {
                    Step::Edit(w, t) => (w, Change::Edit(body(&format!("text {t}")))),
                    Step::Delete(w) => (w, Change::Delete),
                    Step::React(w, e) => (w, Change::React(emoji(if e { "👍" } else { "🎉" }))),
                    Step::Unreact(w, e) => (w, Change::Unreact(emoji(if e { "👍" } else { "🎉" }))),
                };
                let actor = Actor { user: users[who].clone(), role: roles[who] };
                if let Ok(Applied::Changed(_)) = message.apply(&actor, &change, day(), now) {
                    let before = message.clone();
                    prop_assert_eq!(message.apply(&actor, &change, day(), now), Ok(Applied::Unchanged));
                    prop_assert_eq!(&message, &before);
                }
                if let Some(tombstone) = &deleted {
                    prop_assert_eq!(&message.content, tombstone);
                } else if matches!(message.content, Content::Deleted(_)) {
                    deleted = Some(message.content.clone());
                }
            }
        }
    }
}
