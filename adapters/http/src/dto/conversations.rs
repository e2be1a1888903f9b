//! Bodies of the conversation routes (`/api/v1/conversations/…`): groups, their members, the
//! unified send and history, and read positions.

use application::messaging::DirectView;
use application::ports::GroupState;
use chat_realtime::wire::timestamp;
use domain::{Member, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::openapi::fields;

/// A group as its members see it: its name, every member with their role, and where its
/// history and membership stand.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Group)]
pub struct GroupDto {
    #[serde(rename = "_id")]
    pub id: String,
    /// Always `group`.
    #[schema(schema_with = fields::group_kind)]
    pub kind: &'static str,
    pub name: String,
    /// Who created it (perhaps no longer a member).
    pub created_by: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The time of the last entry (message or change).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The `seq` of the group's last entry.
    pub last_seq: u64,
    /// The membership version: every change of name, members or roles moves it.
    pub version: u64,
    pub member_count: u64,
    /// In the order they joined.
    pub members: Vec<MemberDto>,
}

impl From<&GroupState> for GroupDto {
    fn from(state: &GroupState) -> Self {
        let group = &state.group;
        Self {
            id: group.id.to_string(),
            kind: "group",
            name: group.name.to_string(),
            created_by: group.created_by.to_string(),
            created_at: timestamp(&group.created_at),
            updated_at: timestamp(&group.updated_at),
            last_seq: group.last_seq,
            version: state.version,
            member_count: state.members.len() as u64,
            members: state.members.iter().map(MemberDto::from).collect(),
        }
    }
}

/// A member of a group.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = GroupMember)]
pub struct MemberDto {
    pub user_id: String,
    #[schema(value_type = RoleName)]
    pub role: &'static str,
    #[schema(format = DateTime)]
    pub joined_at: String,
    /// The member has read every entry up to this `seq` (what "seen by" is made of).
    pub read_seq: u64,
    /// The entry at `readSeq`, once the member has read up to one.
    #[schema(nullable = true)]
    pub last_read_message_id: Option<String>,
}

impl From<&Member> for MemberDto {
    fn from(member: &Member) -> Self {
        Self {
            user_id: member.user_id.to_string(),
            role: member.role.as_str(),
            joined_at: timestamp(&member.joined_at),
            read_seq: member.read_seq,
            last_read_message_id: member.last_read_message_id.as_ref().map(ToString::to_string),
        }
    }
}

/// A direct conversation as its two members see it: both members and how far each has read
/// (what "seen" is made of).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = DirectConversation)]
pub struct DirectConversationDto {
    #[serde(rename = "_id")]
    pub id: String,
    /// Always `direct`.
    #[schema(schema_with = fields::direct_kind)]
    pub kind: &'static str,
    /// The two user ids.
    #[schema(min_items = 2, max_items = 2)]
    pub participants: [String; 2],
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The time of the last message.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The `seq` of the last message (0 while there is none).
    pub last_seq: u64,
    /// Both members, in the order of `participants`.
    #[schema(min_items = 2, max_items = 2)]
    pub members: Vec<DirectMemberDto>,
}

impl From<&DirectView> for DirectConversationDto {
    fn from(view: &DirectView) -> Self {
        let c = &view.conversation;
        Self {
            id: c.id.to_string(),
            kind: "direct",
            participants: [c.participants.first().to_string(), c.participants.second().to_string()],
            created_at: timestamp(&c.created_at),
            updated_at: timestamp(&c.updated_at),
            last_seq: c.last_seq,
            members: view.members.iter().map(DirectMemberDto::from).collect(),
        }
    }
}

/// A member of a direct conversation.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = DirectMember)]
pub struct DirectMemberDto {
    pub user_id: String,
    /// The member has read every message up to this `seq`.
    pub read_seq: u64,
    /// The message at `readSeq`, once the member has read up to one.
    #[schema(nullable = true)]
    pub last_read_message_id: Option<String>,
}

impl From<&Member> for DirectMemberDto {
    fn from(member: &Member) -> Self {
        Self {
            user_id: member.user_id.to_string(),
            read_seq: member.read_seq,
            last_read_message_id: member.last_read_message_id.as_ref().map(ToString::to_string),
        }
    }
}

/// A conversation by id: a group (`kind` `group`) or a direct conversation (`direct`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = ConversationDetail)]
pub enum ConversationDetailDto {
    Group(GroupDto),
    Direct(DirectConversationDto),
}

/// A member's role: the `owner` (one per group) changes roles and hands ownership over;
/// `admin`s add and remove members and rename the group; `member`s write.
#[derive(ToSchema)]
#[schema(as = Role, rename_all = "lowercase")]
#[allow(dead_code)] // A schema only: roles are written from `domain::Role`.
pub enum RoleName {
    Owner,
    Admin,
    Member,
}

/// Where my read position in a conversation stands once a read is recorded.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ReadState)]
pub struct ReadStateDto {
    pub conversation_id: String,
    /// Every entry up to this `seq` is read: the message asked for, or a later one read
    /// before (a read position never moves back). Entries after it are unread.
    pub seq: u64,
}

// Request bodies: as in `crate::dto`, every field optional so that a missing one is named.

/// A new group: its name and the users to add besides me (I become its owner).
#[derive(Deserialize, ToSchema)]
#[schema(as = CreateGroupRequest)]
pub struct CreateGroupRequest {
    #[schema(required = true, schema_with = fields::group_name)]
    pub name: Option<String>,
    /// User ids, each once, me not among them; with me, at most `groups.max_members`
    /// (default 1000) members.
    #[schema(required = true, schema_with = fields::member_ids)]
    pub members: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = RenameGroupRequest)]
pub struct RenameRequest {
    #[schema(required = true, schema_with = fields::group_name)]
    pub name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = AddMembersRequest)]
pub struct AddMembersRequest {
    /// User ids, each once, none of them a member yet.
    #[serde(rename = "userIds")]
    #[schema(required = true, schema_with = fields::member_ids)]
    pub user_ids: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = SetRoleRequest)]
pub struct RoleRequest {
    /// `admin` or `member` (ownership is handed over, see `POST …/owner`).
    #[schema(required = true, schema_with = fields::assignable_role)]
    pub role: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = TransferOwnershipRequest)]
pub struct OwnerRequest {
    /// The member who becomes the owner; I become an admin.
    #[serde(rename = "userId")]
    #[schema(required = true, schema_with = fields::id)]
    pub user_id: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = MarkReadRequest)]
pub struct ReadRequest {
    /// A message of the conversation: it and everything before it count as read.
    #[serde(rename = "upTo")]
    #[schema(required = true, schema_with = fields::id)]
    pub up_to: Option<String>,
}

/// A message's new text.
#[derive(Deserialize, ToSchema)]
#[schema(as = EditMessageRequest)]
pub struct EditRequest {
    #[schema(required = true, schema_with = fields::message_text)]
    pub message: Option<String>,
}

/// The roles a member can be given (`owner` is handed over instead).
pub fn assignable_role(raw: &str) -> Option<Role> {
    raw.parse().ok().filter(|role| *role != Role::Owner)
}
