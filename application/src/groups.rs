//! Groups: create one, read it, and change its name, members and roles — each change decided
//! on the group as it stands and stored with a system entry that records it in the group's
//! history.
//!
//! Who may do what (a stranger, who never was a member, is told the group does not exist; a
//! former member is told they are no longer one):
//!
//! | action                    | owner | admin                      | member |
//! |---------------------------|-------|----------------------------|--------|
//! | read it                   | yes   | yes                        | yes    |
//! | add members, rename       | yes   | yes                        | no     |
//! | remove a member           | yes   | members only, not admins   | no     |
//! | change roles, hand over   | yes   | no                         | no     |
//! | leave                     | yes (hands over ownership) | yes | yes    |
//!
//! A change is stored only if the group's membership did not move since it was decided
//! ([`Changed::Stale`] otherwise): then it is decided again on the new state, a few times at
//! most.

use std::collections::HashSet;
use std::sync::Arc;

use domain::{
    ConversationId, Cursor, Group, GroupName, Member, Message, MessageBody, MessageId, Role, SystemEvent,
    UserId,
};

use crate::error::{embeds_application_error, ApplicationError};
use crate::known_users::KnownUsers;
use crate::ports::{
    Changed, Clock, Event, GroupChange, GroupRepository, GroupState, Noticed, Notifier, RepoError,
    UserRepository,
};

/// What a caller of the group use cases can act on.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No such group, or one the user never was a member of (the same answer, so that groups
    /// can't be probed).
    #[error("conversation not found")]
    NotFound,
    /// The user was a member and is not any more.
    #[error("you are no longer a member of this conversation")]
    NoLongerMember,
    /// The user's role does not allow the action.
    #[error("your role in this conversation does not allow this")]
    NotAllowed,
    /// These ids name no user.
    #[error("unknown users: {}", list(.0))]
    UnknownUsers(Vec<UserId>),
    /// These users are listed more than once (the creator counts as listed).
    #[error("users listed more than once: {}", list(.0))]
    DuplicateMembers(Vec<UserId>),
    /// These users are members already.
    #[error("already members: {}", list(.0))]
    AlreadyMembers(Vec<UserId>),
    /// No user was named.
    #[error("name at least one user")]
    NoUsers,
    #[error("a group has at most {max} members")]
    TooManyMembers { max: u32 },
    #[error("a group has at least {min} members")]
    TooFewMembers { min: u32 },
    /// The user named is not a member of the group.
    #[error("user {0} is not a member of this conversation")]
    NotAMember(UserId),
    /// Ownership changes hands only by a transfer: no role can be set to owner, and the
    /// owner's role can't be set.
    #[error("the owner changes only by a transfer of ownership")]
    OwnerRole,
    #[error(transparent)]
    Failed(#[from] ApplicationError),
}

embeds_application_error!(GroupError: RepoError);

fn list(ids: &[UserId]) -> String {
    ids.iter().map(UserId::as_str).collect::<Vec<_>>().join(", ")
}

/// The group settings a deployment chooses (`groups.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// The most members a group may have, its owner included.
    pub max_members: u32,
}

impl GroupLimits {
    /// The values `max_members` may take.
    pub const MAX_MEMBERS_ALLOWED: std::ops::RangeInclusive<u32> = MIN_MEMBERS..=10_000;
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self { max_members: 1000 }
    }
}

/// The fewest members a group is created with, its creator included.
pub const MIN_MEMBERS: u32 = 2;

/// How many times a change is decided again when the group moved meanwhile.
const RETRIES: usize = 5;

/// How many users a system entry names before "and N others".
const NAMED: usize = 3;

/// A change applied: the group as it stands after it, and the system entry that records it
/// (`None` when nothing needed to change: a rename to the same name, a role already held).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupUpdate {
    pub state: GroupState,
    pub entry: Option<Message>,
}

pub struct GroupService {
    users: Arc<dyn UserRepository>,
    known: KnownUsers,
    groups: Arc<dyn GroupRepository>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
    limits: GroupLimits,
}

/// What a use case decided on a group's state.
enum Decision {
    Change(GroupChange),
    /// Nothing to change: the state already is what was asked.
    Nothing,
}

impl GroupService {
    pub fn new(
        users: Arc<dyn UserRepository>,
        groups: Arc<dyn GroupRepository>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
        limits: GroupLimits,
    ) -> Self {
        Self { known: KnownUsers::new(users.clone()), users, groups, notifier, clock, limits }
    }

    /// Creates a group named `name` with me as its owner and `members` (the others) as
    /// members, announces it to all of them, and returns it.
    pub async fn create(
        &self,
        me: &UserId,
        name: GroupName,
        members: Vec<UserId>,
    ) -> Result<GroupState, GroupError> {
        let mut everyone = Vec::with_capacity(members.len() + 1);
        everyone.push(me.clone());
        everyone.extend(members);
        let duplicates = duplicates(&everyone);
        if !duplicates.is_empty() {
            return Err(GroupError::DuplicateMembers(duplicates));
        }
        if everyone.len() < MIN_MEMBERS as usize {
            return Err(GroupError::TooFewMembers { min: MIN_MEMBERS });
        }
        if everyone.len() > self.limits.max_members as usize {
            return Err(GroupError::TooManyMembers { max: self.limits.max_members });
        }
        self.all_exist(&everyone[1..]).await?;

        let now = self.clock.now();
        let group = Group {
            id: ConversationId::generate(),
            name: name.clone(),
            created_by: me.clone(),
            created_at: now,
            updated_at: now,
            last_seq: 1,
        };
        let members: Vec<Member> = everyone
            .iter()
            .map(|user| {
                let (role, read_seq) = if user == me { (Role::Owner, 1) } else { (Role::Member, 0) };
                Member { read_seq, ..Member::joining(user.clone(), role, now, 1) }
            })
            .collect();
        let event = SystemEvent::Created { actor: me.clone(), name: name.clone(), members: everyone };
        let body = format!("{} created the group \u{201c}{name}\u{201d}", self.name_of(me).await?);
        let entry = Message { seq: 1, ..self.entry(&group.id, me, body, event) };
        let notices = self.groups.create(&group, &members, &entry).await?;
        let state = GroupState { group, members, version: 1 };
        self.announce(&state, &entry, &[], &notices).await;
        Ok(state)
    }

    /// The group with its members, for a member.
    pub async fn get(&self, me: &UserId, group: &ConversationId) -> Result<GroupState, GroupError> {
        let state = self.state(me, group).await?;
        Ok(state)
    }

    /// Adds `users` as members (admins and the owner may).
    pub async fn add_members(
        &self,
        me: &UserId,
        group: &ConversationId,
        users: Vec<UserId>,
    ) -> Result<GroupUpdate, GroupError> {
        let users = &users;
        self.change(me, group, |state, mine| async move {
            if !mine.role.manages_members() {
                return Err(GroupError::NotAllowed);
            }
            if users.is_empty() {
                return Err(GroupError::NoUsers);
            }
            let duplicates = duplicates(&users);
            if !duplicates.is_empty() {
                return Err(GroupError::DuplicateMembers(duplicates));
            }
            let already: Vec<UserId> = users.iter().filter(|u| state.member(u).is_some()).cloned().collect();
            if !already.is_empty() {
                return Err(GroupError::AlreadyMembers(already));
            }
            if state.members.len() + users.len() > self.limits.max_members as usize {
                return Err(GroupError::TooManyMembers { max: self.limits.max_members });
            }
            self.all_exist(users).await?;
            let body = format!("{} added {}", self.name_of(me).await?, self.names_of(users).await?);
            let event = SystemEvent::Added { actor: me.clone(), users: users.clone() };
            Ok(Decision::Change(GroupChange {
                add: users.iter().map(|u| (u.clone(), Role::Member)).collect(),
                ..self.change_of(&state, me, body, event)
            }))
        })
        .await
    }

    /// Removes `user` from the group: admins may remove members, the owner anyone; removing
    /// oneself is leaving.
    pub async fn remove_member(
        &self,
        me: &UserId,
        group: &ConversationId,
        user: &UserId,
    ) -> Result<GroupUpdate, GroupError> {
        if me == user {
            return self.leave(me, group).await;
        }
        self.change(me, group, |state, mine| async move {
            if !mine.role.manages_members() {
                return Err(GroupError::NotAllowed);
            }
            let Some(target) = state.member(user) else {
                return Err(GroupError::NotAMember(user.clone()));
            };
            if target.role >= Role::Admin && mine.role != Role::Owner {
                return Err(GroupError::NotAllowed);
            }
            let body = format!("{} removed {}", self.name_of(me).await?, self.name_of(user).await?);
            let event = SystemEvent::Removed { actor: me.clone(), users: vec![user.clone()] };
            Ok(Decision::Change(GroupChange {
                remove: vec![user.clone()],
                ..self.change_of(&state, me, body, event)
            }))
        })
        .await
    }

    /// Renames the group (admins and the owner may).
    pub async fn rename(
        &self,
        me: &UserId,
        group: &ConversationId,
        name: GroupName,
    ) -> Result<GroupUpdate, GroupError> {
        let name = &name;
        self.change(me, group, |state, mine| async move {
            if !mine.role.manages_members() {
                return Err(GroupError::NotAllowed);
            }
            if &state.group.name == name {
                return Ok(Decision::Nothing);
            }
            let body = format!("{} renamed the group to \u{201c}{name}\u{201d}", self.name_of(me).await?);
            let event = SystemEvent::Renamed { actor: me.clone(), name: name.clone() };
            Ok(Decision::Change(GroupChange {
                rename: Some(name.clone()),
                ..self.change_of(&state, me, body, event)
            }))
        })
        .await
    }

    /// Makes `user` an admin or a plain member (the owner may); to make someone the owner,
    /// [`transfer_ownership`](Self::transfer_ownership).
    pub async fn set_role(
        &self,
        me: &UserId,
        group: &ConversationId,
        user: &UserId,
        role: Role,
    ) -> Result<GroupUpdate, GroupError> {
        self.change(me, group, |state, mine| async move {
            if !mine.role.changes_roles() {
                return Err(GroupError::NotAllowed);
            }
            if role == Role::Owner {
                return Err(GroupError::OwnerRole);
            }
            let Some(target) = state.member(user) else {
                return Err(GroupError::NotAMember(user.clone()));
            };
            if target.role == Role::Owner {
                return Err(GroupError::OwnerRole);
            }
            if target.role == role {
                return Ok(Decision::Nothing);
            }
            let article = if role == Role::Admin { "an" } else { "a" };
            let body =
                format!("{} made {} {article} {role}", self.name_of(me).await?, self.name_of(user).await?);
            let event = SystemEvent::RoleChanged { actor: me.clone(), user: user.clone(), role };
            Ok(Decision::Change(GroupChange {
                roles: vec![(user.clone(), role)],
                ..self.change_of(&state, me, body, event)
            }))
        })
        .await
    }

    /// Hands ownership over to the member `to` (the owner may); the owner becomes an admin.
    pub async fn transfer_ownership(
        &self,
        me: &UserId,
        group: &ConversationId,
        to: &UserId,
    ) -> Result<GroupUpdate, GroupError> {
        self.change(me, group, |state, mine| async move {
            if !mine.role.changes_roles() {
                return Err(GroupError::NotAllowed);
            }
            if state.member(to).is_none() {
                return Err(GroupError::NotAMember(to.clone()));
            }
            if to == me {
                return Ok(Decision::Nothing);
            }
            let body = format!("{} made {} the owner", self.name_of(me).await?, self.name_of(to).await?);
            let event = SystemEvent::OwnershipTransferred { actor: me.clone(), user: to.clone() };
            Ok(Decision::Change(GroupChange {
                roles: vec![(to.clone(), Role::Owner), (me.clone(), Role::Admin)],
                ..self.change_of(&state, me, body, event)
            }))
        })
        .await
    }

    /// Leaves the group (anyone may). The owner leaving hands ownership over to the admin
    /// who joined first, or else to the member who joined first; the last member leaving
    /// leaves the group empty.
    pub async fn leave(&self, me: &UserId, group: &ConversationId) -> Result<GroupUpdate, GroupError> {
        self.change(me, group, |state, mine| async move {
            let others = || state.members.iter().filter(|m| &m.user_id != me);
            let new_owner = match mine.role {
                Role::Owner => others()
                    .find(|m| m.role == Role::Admin)
                    .or_else(|| others().next())
                    .map(|m| m.user_id.clone()),
                Role::Admin | Role::Member => None,
            };
            let mut body = format!("{} left", self.name_of(me).await?);
            if let Some(owner) = &new_owner {
                body.push_str(&format!("; {} is the owner now", self.name_of(owner).await?));
            }
            let event = SystemEvent::Left { actor: me.clone(), new_owner: new_owner.clone() };
            Ok(Decision::Change(GroupChange {
                remove: vec![me.clone()],
                roles: new_owner.into_iter().map(|owner| (owner, Role::Owner)).collect(),
                ..self.change_of(&state, me, body, event)
            }))
        })
        .await
    }

    /// The group as it stands, if `me` is a member; why not otherwise.
    async fn state(&self, me: &UserId, group: &ConversationId) -> Result<GroupState, GroupError> {
        let state = self.groups.state(group).await?;
        match state {
            Some(state) if state.member(me).is_some() => Ok(state),
            _ => Err(self.outsider(me, group).await?),
        }
    }

    /// Why `me`, not a member of `group`, may not use it: they left or were removed, or
    /// never were a member (or it does not exist: the same answer).
    async fn outsider(&self, me: &UserId, group: &ConversationId) -> Result<GroupError, RepoError> {
        Ok(match self.groups.left_after(me, group, Cursor::START).await? {
            Some(_) => GroupError::NoLongerMember,
            None => GroupError::NotFound,
        })
    }

    /// Decides a change on the group's state with my membership, and stores it, deciding
    /// again when the group moved meanwhile; then announces it.
    async fn change<'a, F, Fut>(
        &'a self,
        me: &'a UserId,
        group: &'a ConversationId,
        decide: F,
    ) -> Result<GroupUpdate, GroupError>
    where
        F: Fn(GroupState, Member) -> Fut,
        Fut: std::future::Future<Output = Result<Decision, GroupError>>,
    {
        for _ in 0..=RETRIES {
            let state = self.state(me, group).await?;
            let mine = state.member(me).cloned().ok_or(GroupError::NotFound)?;
            let change = match decide(state.clone(), mine).await? {
                Decision::Change(change) => change,
                Decision::Nothing => return Ok(GroupUpdate { state, entry: None }),
            };
            match self.groups.change(group, &change).await {
                Ok(Changed::Applied { entry, version, notices }) => {
                    let after = applied(&state, &change, &entry, version);
                    self.announce(&after, &entry, &change.remove, &notices).await;
                    return Ok(GroupUpdate { state: after, entry: Some(entry) });
                }
                // A member added meanwhile makes the change conflict: the new state says so.
                Ok(Changed::Stale) | Err(RepoError::Conflict) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ApplicationError::Unavailable(anyhow::anyhow!("group {group} kept changing")).into())
    }

    /// A change of `state` decided by `me`, recorded by an entry saying `body`; the caller
    /// fills in what changes.
    fn change_of(&self, state: &GroupState, me: &UserId, body: String, event: SystemEvent) -> GroupChange {
        GroupChange {
            expected_version: state.version,
            entry: self.entry(&state.group.id, me, body, event),
            rename: None,
            add: Vec::new(),
            remove: Vec::new(),
            roles: Vec::new(),
        }
    }

    /// A system entry of `group` by `me`, at the next seq (assigned by the store).
    fn entry(&self, group: &ConversationId, me: &UserId, body: String, event: SystemEvent) -> Message {
        Message {
            id: MessageId::generate(),
            conversation_id: group.clone(),
            sender_id: me.clone(),
            receiver_id: None,
            // Names are at most a few hundred characters: the sentence stays within a body.
            body: MessageBody::stored(&body).unwrap_or_else(|_| body_fallback(&event)),
            system: Some(event),
            seq: 0,
            created_at: self.clock.now(),
            client_id: None,
        }
    }

    /// `UnknownUsers` naming those of `users` that are no user.
    async fn all_exist(&self, users: &[UserId]) -> Result<(), GroupError> {
        let mut unknown = Vec::new();
        for user in users {
            if !self.known.exists(user).await? {
                unknown.push(user.clone());
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(GroupError::UnknownUsers(unknown))
        }
    }

    /// How a system entry names a user: their full name.
    async fn name_of(&self, user: &UserId) -> Result<String, RepoError> {
        Ok(match self.users.find_by_id(user).await? {
            Some(user) => user.full_name.as_str().to_owned(),
            None => "someone".to_owned(),
        })
    }

    /// "A", "A and B", "A, B and C", "A, B, C and 2 others".
    async fn names_of(&self, users: &[UserId]) -> Result<String, RepoError> {
        let mut names = Vec::new();
        for user in users.iter().take(NAMED) {
            names.push(self.name_of(user).await?);
        }
        let others = users.len().saturating_sub(NAMED);
        Ok(match (names.split_last(), others) {
            (None, _) => String::new(),
            (Some((last, [])), 0) => last.clone(),
            (Some((last, rest)), 0) => format!("{} and {last}", rest.join(", ")),
            (Some(_), 1) => format!("{} and 1 other", names.join(", ")),
            (Some(_), others) => format!("{} and {others} others", names.join(", ")),
        })
    }

    /// Tells the members (and the users removed) what changed, then the entry that records
    /// it, and each user who joined or left the notice in their stream. Best effort: the
    /// change is stored whatever delivery does.
    async fn announce(&self, state: &GroupState, entry: &Message, removed: &[UserId], notices: &[Noticed]) {
        let id = &state.group.id;
        if let Some(change) = &entry.system {
            let updated = Event::ConversationUpdated {
                group: state.group.clone(),
                version: state.version,
                member_count: state.members.len() as u64,
                change: change.clone(),
            };
            self.notify_group(id, &updated).await;
            if !removed.is_empty() {
                self.notify(removed, &updated).await;
            }
        }
        self.notify_group(id, &Event::GroupMessage { message: entry.clone(), version: state.version }).await;
        for noticed in notices {
            let event = Event::Notice { notice: noticed.notice.clone(), cursor: noticed.cursor };
            self.notify(std::slice::from_ref(&noticed.user), &event).await;
        }
    }

    async fn notify_group(&self, group: &ConversationId, event: &Event) {
        if let Err(error) = self.notifier.notify_group(group, event).await {
            tracing::warn!(error = %error, %group, "group change stored but not announced");
        }
    }

    async fn notify(&self, users: &[UserId], event: &Event) {
        if let Err(error) = self.notifier.notify(users, event).await {
            tracing::warn!(error = %error, "group change stored but not announced");
        }
    }
}

/// The ids listed more than once, each once, in order of their second listing.
fn duplicates(users: &[UserId]) -> Vec<UserId> {
    let mut seen = HashSet::new();
    let mut repeated = Vec::new();
    for user in users {
        if !seen.insert(user) && !repeated.contains(user) {
            repeated.push(user.clone());
        }
    }
    repeated
}

/// A sentence that fits any body, for the unlikely sentence that does not.
fn body_fallback(event: &SystemEvent) -> MessageBody {
    MessageBody::stored(&format!("The group changed ({})", event.action()))
        .expect("a short sentence is a valid body")
}

/// `state` after `change` was stored as `entry` under membership `version`: what the store
/// did, applied to the state it was decided on (see `GroupRepository::change`).
fn applied(state: &GroupState, change: &GroupChange, entry: &Message, version: u64) -> GroupState {
    let mut group = state.group.clone();
    group.last_seq = entry.seq;
    group.updated_at = entry.created_at;
    if let Some(name) = &change.rename {
        group.name = name.clone();
    }
    let mut members: Vec<Member> =
        state.members.iter().filter(|m| !change.remove.contains(&m.user_id)).cloned().collect();
    for member in &mut members {
        if let Some((_, role)) = change.roles.iter().find(|(user, _)| user == &member.user_id) {
            member.role = *role;
        }
        if member.user_id == entry.sender_id {
            member.read_seq = entry.seq;
            member.last_read_message_id = Some(entry.id.clone());
        }
    }
    for (user, role) in &change.add {
        members.push(Member {
            read_seq: entry.seq.saturating_sub(1),
            ..Member::joining(user.clone(), *role, entry.created_at, entry.seq)
        });
    }
    GroupState { group, members, version }
}
