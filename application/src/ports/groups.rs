//! What the group use cases need from storage: groups, their members, and the membership
//! notices in each user's stream.

use async_trait::async_trait;
use domain::{ConversationId, Cursor, Group, GroupName, Member, Message, Role, Seq, UserId};

use super::{Notice, RepoResult};

/// A group as it stands, with its members (in the order they joined) and the version of
/// its membership: every change of name, members or roles moves it, sends do not.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    pub group: Group,
    pub members: Vec<Member>,
    pub version: u64,
}

impl GroupState {
    pub fn member(&self, user: &UserId) -> Option<&Member> {
        self.members.iter().find(|m| &m.user_id == user)
    }
}

/// A change of a group's name, members or roles, decided on the state at `expected_version`,
/// with the system entry that records it in the group's history.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupChange {
    pub expected_version: u64,
    /// The system entry (`system` is `Some`); the store assigns its `seq`.
    pub entry: Message,
    pub rename: Option<GroupName>,
    /// New members and their roles; each joins at the entry's seq, with everything before
    /// it read (the entry itself unread).
    pub add: Vec<(UserId, Role)>,
    /// Members who stop being members at the entry's seq (the entry is their last).
    pub remove: Vec<UserId>,
    /// New roles of members who stay.
    pub roles: Vec<(UserId, Role)>,
}

/// A notice appended to a user's stream, at `cursor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Noticed {
    pub user: UserId,
    pub cursor: Cursor,
    pub notice: Notice,
}

/// What [`GroupRepository::change`] ended in.
#[derive(Debug, Clone, PartialEq)]
#[expect(clippy::large_enum_variant, reason = "answered once per change and consumed at once")]
pub enum Changed {
    /// Stored: the entry with its seq, the group's new membership version, and the notices
    /// appended to the streams of the users who joined or left.
    Applied { entry: Message, version: u64, notices: Vec<Noticed> },
    /// The membership moved on since `expected_version`: nothing was stored; decide again
    /// on the new state.
    Stale,
}

/// One of a user's groups at some point of the user's stream: the entry the user joined at,
/// and where the group stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub group: ConversationId,
    pub joined_seq: Seq,
    pub last_seq: Seq,
}

/// A group's member ids, as many as asked for, and how many it has in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersPreview {
    pub group: ConversationId,
    pub members: Vec<UserId>,
    pub count: u64,
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait GroupRepository: Send + Sync {
    /// Stores a new group (`last_seq` 1) with `members` (each with `joined_seq` 1), its
    /// first entry `created` (a system entry, stored at seq 1), and a
    /// [`Notice::Joined`] at seq 1 in each member's stream — all in one atomic step.
    /// Returns the notices. `Conflict` if the id exists.
    async fn create(&self, group: &Group, members: &[Member], created: &Message) -> RepoResult<Vec<Noticed>>;

    /// The group with its members; `None` for an unknown id or a direct conversation.
    async fn state(&self, group: &ConversationId) -> RepoResult<Option<GroupState>>;

    /// The ids of the group's current members and its membership version, for delivering
    /// its events.
    async fn member_ids(&self, group: &ConversationId) -> RepoResult<Option<(Vec<UserId>, u64)>>;

    /// Applies `change` in one atomic step if the group's membership version is still
    /// `change.expected_version`: stores the entry at the group's next seq (moving
    /// `last_seq`, `updated_at` and the conversation list's order like a message does),
    /// renames, adds, removes and changes roles, moves the read position of the entry's
    /// sender (the actor, if still a member) to the entry, and appends to the stream of
    /// every user added a [`Notice::Joined`] and of every user removed a
    /// [`Notice::Left`], both at the entry's seq. Otherwise [`Changed::Stale`].
    async fn change(&self, group: &ConversationId, change: &GroupChange) -> RepoResult<Changed>;

    /// For each of `groups` (in that order), its first `limit` members by joining order and
    /// its member count.
    async fn members_preview(&self, groups: &[ConversationId], limit: u32)
        -> RepoResult<Vec<MembersPreview>>;

    /// The groups `user` is a member of at position `at` of their stream: those whose last
    /// [`Notice::Joined`] / [`Notice::Left`] at or before `at` is a `Joined`, by group id.
    async fn groups_at(&self, user: &UserId, at: Cursor) -> RepoResult<Vec<GroupPosition>>;

    /// Where `user`'s stream stands now (its last position, `Cursor::START` while empty),
    /// and their groups there, as [`groups_at`](Self::groups_at) that position: where a
    /// connection starting now stands. Read at once where the store can (one query, one
    /// snapshot): every connect asks it.
    async fn groups_at_head(&self, user: &UserId) -> RepoResult<(Cursor, Vec<GroupPosition>)>;

    /// The seq of the first [`Notice::Left`] about `group` in `user`'s stream after
    /// position `after`: the last entry of the membership `user` had at `after`. `None`
    /// while that membership lasts.
    async fn left_after(
        &self,
        user: &UserId,
        group: &ConversationId,
        after: Cursor,
    ) -> RepoResult<Option<Seq>>;
}
