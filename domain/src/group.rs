//! Group conversations: a name, members with roles, and what may change them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{text, ConversationId, MessageId, Timestamp, UserId};

/// A group's name: 1–100 characters once trimmed, starting with a visible one, without
/// control, text-direction or other invisible characters (the rules of a user's full name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

text::name_error! {
    /// Why a group's name is refused.
    GroupNameError
}

impl GroupName {
    pub const MAX: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, GroupNameError> {
        Ok(Self(text::new_name(raw, Self::MAX)?.to_owned()))
    }

    /// A name read back from a store or a dump: trimmed, 1–100 characters, no control
    /// characters.
    pub fn stored(raw: &str) -> Result<Self, GroupNameError> {
        Ok(Self(text::stored_name(raw, Self::MAX)?.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GroupName {
    type Error = GroupNameError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<GroupName> for String {
    fn from(name: GroupName) -> String {
        name.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a member may do in a group. Ordered by power: `Member < Admin < Owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of owner, admin, member")]
pub struct RoleError;

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Adds and removes members, renames the group.
    pub fn manages_members(self) -> bool {
        self >= Role::Admin
    }

    /// Changes roles and hands over ownership.
    pub fn changes_roles(self) -> bool {
        self == Role::Owner
    }
}

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(raw: &str) -> Result<Self, RoleError> {
        match raw {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            _ => Err(RoleError),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in one conversation's sequence: every entry of a conversation (message or
/// system entry) takes the next one, 1, 2, 3, …, in the order its transaction commits.
pub type Seq = u64;

/// A group conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: ConversationId,
    pub name: GroupName,
    pub created_by: UserId,
    pub created_at: Timestamp,
    /// The last entry's time (or the creation's).
    pub updated_at: Timestamp,
    /// The sequence number of the group's last entry.
    pub last_seq: Seq,
}

/// A user's membership of a conversation (groups; the two users of a direct conversation are
/// members too, with [`Role::Member`]) and their read position in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user_id: UserId,
    pub role: Role,
    pub joined_at: Timestamp,
    /// The entry that added them (their first visible one); 1 for a group's first members
    /// and for direct conversations.
    pub joined_seq: Seq,
    /// Everything up to this sequence number is read (never moves back).
    pub read_seq: Seq,
    /// The message at `read_seq`, when the member read up to one.
    pub last_read_message_id: Option<MessageId>,
}

impl Member {
    /// A member joining now at `joined_seq`, with everything before and at it read.
    pub fn joining(user_id: UserId, role: Role, joined_at: Timestamp, joined_seq: Seq) -> Self {
        Self { user_id, role, joined_at, joined_seq, read_seq: joined_seq, last_read_message_id: None }
    }

    /// Entries after the read position, out of `last_seq` (never negative).
    pub fn unread(&self, last_seq: Seq) -> u64 {
        last_seq.saturating_sub(self.read_seq)
    }
}

/// What a system entry of a group's history records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum SystemEvent {
    /// `actor` created the group with `members` (the actor included).
    Created {
        actor: UserId,
        name: GroupName,
        members: Vec<UserId>,
    },
    Added {
        actor: UserId,
        users: Vec<UserId>,
    },
    Removed {
        actor: UserId,
        users: Vec<UserId>,
    },
    /// `actor` left; `new_owner` took over when the actor was the owner.
    Left {
        actor: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_owner: Option<UserId>,
    },
    Renamed {
        actor: UserId,
        name: GroupName,
    },
    RoleChanged {
        actor: UserId,
        user: UserId,
        role: Role,
    },
    /// The owner handed ownership to `user` and became an admin.
    OwnershipTransferred {
        actor: UserId,
        user: UserId,
    },
}

impl SystemEvent {
    /// Who made the change.
    pub fn actor(&self) -> &UserId {
        match self {
            SystemEvent::Created { actor, .. }
            | SystemEvent::Added { actor, .. }
            | SystemEvent::Removed { actor, .. }
            | SystemEvent::Left { actor, .. }
            | SystemEvent::Renamed { actor, .. }
            | SystemEvent::RoleChanged { actor, .. }
            | SystemEvent::OwnershipTransferred { actor, .. } => actor,
        }
    }

    /// The action's name on the wire (`created`, `added`, …).
    pub fn action(&self) -> &'static str {
        match self {
            SystemEvent::Created { .. } => "created",
            SystemEvent::Added { .. } => "added",
            SystemEvent::Removed { .. } => "removed",
            SystemEvent::Left { .. } => "left",
            SystemEvent::Renamed { .. } => "renamed",
            SystemEvent::RoleChanged { .. } => "roleChanged",
            SystemEvent::OwnershipTransferred { .. } => "ownershipTransferred",
        }
    }

    /// The users who joined the group with this entry.
    pub fn joined(&self) -> &[UserId] {
        match self {
            SystemEvent::Created { members, .. } => members,
            SystemEvent::Added { users, .. } => users,
            _ => &[],
        }
    }

    /// The users who stopped being members with this entry.
    pub fn departed(&self) -> Vec<UserId> {
        match self {
            SystemEvent::Removed { users, .. } => users.clone(),
            SystemEvent::Left { actor, .. } => vec![actor.clone()],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_trimmed_bounded_and_visible() {
        assert_eq!(GroupName::parse("  Team  ").unwrap().as_str(), "Team");
        assert_eq!(GroupName::parse("   "), Err(GroupNameError::Empty));
        assert_eq!(GroupName::parse(&"a".repeat(100)).map(|n| n.as_str().len()), Ok(100));
        assert_eq!(GroupName::parse(&"a".repeat(101)), Err(GroupNameError::TooLong { max: 100 }));
        assert_eq!(GroupName::parse("a\u{202E}b"), Err(GroupNameError::InvisibleCharacter));
        assert_eq!(GroupName::parse("a\nb"), Err(GroupNameError::ControlCharacter));
        assert_eq!(GroupName::parse("\u{200D}a"), Err(GroupNameError::InvisibleStart));
        assert!(GroupName::parse("👩\u{200D}👩\u{200D}👧 family").is_ok());
    }

    #[test]
    fn roles_order_by_power_and_grant_accordingly() {
        assert!(Role::Member < Role::Admin && Role::Admin < Role::Owner);
        assert!(!Role::Member.manages_members() && Role::Admin.manages_members());
        assert!(!Role::Admin.changes_roles() && Role::Owner.changes_roles());
        for role in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!("Owner".parse::<Role>(), Err(RoleError));
    }

    #[test]
    fn unread_is_never_negative() {
        let member = Member::joining(UserId::generate(), Role::Member, chrono::Utc::now(), 5);
        assert_eq!(member.unread(9), 4);
        assert_eq!(member.unread(3), 0);
    }

    #[test]
    fn system_events_name_their_actor_and_who_joined_or_left() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let added = SystemEvent::Added { actor: a.clone(), users: vec![b.clone()] };
        assert_eq!((added.actor(), added.action(), added.joined()), (&a, "added", &[b.clone()][..]));
        let left = SystemEvent::Left { actor: b.clone(), new_owner: None };
        assert_eq!(left.departed(), [b]);
        let json = serde_json::to_value(&left).unwrap();
        assert_eq!(json["action"], "left");
    }
}
