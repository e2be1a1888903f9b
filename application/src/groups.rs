//! Groups: create one, read it, and change its name, members and roles — each change decided
//! on the group as it stands and stored with a system entry that records it in the group's
//! history.
//!
//! Who may do what (a stranger, who never was a member, is told the group does not exist; a
//! former member is told they are no longer one):
//!
//! | action                  | owner                  | admin                   | member |
//! |-------------------------|------------------------|-------------------------|--------|
//! | read it                 | yes                    | yes                     | yes    |
//! | add members, rename     | yes                    | yes                     | no     |
//! | remove a member         | anyone                 | members, not admins     | no     |
//! | set roles, hand over    | yes                    | no                      | no     |
//! | leave                   | yes, handing over      | yes                     | yes    |
//!
//! A change is stored only if the group's membership did not move since it was decided
//! ([`Changed::Stale`] otherwise): then it is decided again on the new state, a few times at
//! most.

use std::collections::{HashMap, HashSet};
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
        let event = SystemEvent::Created { actor: me.clone(), name: name.clone(), members: everyone.clone() };
        let body = format!("{} created the group \u{201c}{name}\u{201d}", self.name_of(me).await?);
        let entry = Message { seq: 1, ..self.entry(&group.id, me, body, event) };
        let members: Vec<Member> = everyone
            .into_iter()
            .map(|user| {
                // My own entry is read; the others have it to read.
                let mine = &user == me;
                let (role, read_seq) = if mine { (Role::Owner, 1) } else { (Role::Member, 0) };
                Member {
                    read_seq,
                    last_read_message_id: mine.then(|| entry.id.clone()),
                    ..Member::joining(user, role, now, 1)
                }
            })
            .collect();
        let notices = self.groups.create(&group, &members, &entry).await?;
        let state = GroupState { group, members, version: 1 };
        self.announce(&state, &entry, &[], &notices).await;
        Ok(state)
    }

    /// The group with its members, for a member.
    pub async fn get(&self, me: &UserId, group: &ConversationId) -> Result<GroupState, GroupError> {
        self.state(me, group).await
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
            let duplicates = duplicates(users);
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
            let (mine, added) = self.me_and_names_of(me, users).await?;
            let body = format!("{mine} added {added}");
            let event = SystemEvent::Added { actor: me.clone(), users: users.clone() };
            Ok(Some(GroupChange {
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
            let [mine, removed] = self.names_each([me, user]).await?;
            let body = format!("{mine} removed {removed}");
            let event = SystemEvent::Removed { actor: me.clone(), users: vec![user.clone()] };
            Ok(Some(GroupChange { remove: vec![user.clone()], ..self.change_of(&state, me, body, event) }))
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
                return Ok(None);
            }
            let body = format!("{} renamed the group to \u{201c}{name}\u{201d}", self.name_of(me).await?);
            let event = SystemEvent::Renamed { actor: me.clone(), name: name.clone() };
            Ok(Some(GroupChange { rename: Some(name.clone()), ..self.change_of(&state, me, body, event) }))
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
                return Ok(None);
            }
            let article = if role == Role::Admin { "an" } else { "a" };
            let [mine, theirs] = self.names_each([me, user]).await?;
            let body = format!("{mine} made {theirs} {article} {role}");
            let event = SystemEvent::RoleChanged { actor: me.clone(), user: user.clone(), role };
            Ok(Some(GroupChange {
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
                return Ok(None);
            }
            let [mine, theirs] = self.names_each([me, to]).await?;
            let body = format!("{mine} made {theirs} the owner");
            let event = SystemEvent::OwnershipTransferred { actor: me.clone(), user: to.clone() };
            Ok(Some(GroupChange {
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
            let body = match &new_owner {
                Some(owner) => {
                    let [mine, theirs] = self.names_each([me, owner]).await?;
                    format!("{mine} left; {theirs} is the owner now")
                }
                None => format!("{} left", self.name_of(me).await?),
            };
            let event = SystemEvent::Left { actor: me.clone(), new_owner: new_owner.clone() };
            Ok(Some(GroupChange {
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
        Fut: std::future::Future<Output = Result<Option<GroupChange>, GroupError>>,
    {
        for _ in 0..=RETRIES {
            let state = self.state(me, group).await?;
            let mine = state.member(me).cloned().ok_or(GroupError::NotFound)?;
            // `None`: nothing to change, the state already is what was asked.
            let Some(change) = decide(state.clone(), mine).await? else {
                return Ok(GroupUpdate { state, entry: None });
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
            reply_to: None,
            changed: None,
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

    /// Those of `users` that are no user, in their order: those not known already are looked
    /// up in one call.
    pub async fn unknown_users(&self, users: &[UserId]) -> Result<Vec<UserId>, GroupError> {
        Ok(self.known.unknown(users).await?)
    }

    /// `UnknownUsers` naming those of `users` that are no user: those not known already are
    /// looked up in one call.
    async fn all_exist(&self, users: &[UserId]) -> Result<(), GroupError> {
        let unknown = self.known.unknown(users).await?;
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(GroupError::UnknownUsers(unknown))
        }
    }

    /// How a system entry names each of `users`: by full name ("someone" for an id that
    /// names nobody), in their order, read in one call.
    async fn full_names(&self, users: &[&UserId]) -> Result<Vec<String>, RepoError> {
        let ids: Vec<UserId> = users.iter().map(|&id| id.clone()).collect();
        let found: HashMap<UserId, String> = self
            .users
            .find_many(&ids)
            .await?
            .into_iter()
            .map(|user| (user.id, user.full_name.as_str().to_owned()))
            .collect();
        Ok(ids.iter().map(|id| found.get(id).cloned().unwrap_or_else(|| "someone".to_owned())).collect())
    }

    /// How a system entry names `user`.
    async fn name_of(&self, user: &UserId) -> Result<String, RepoError> {
        let [name] = self.names_each([user]).await?;
        Ok(name)
    }

    /// How a system entry names each of two or more users, read in one call.
    async fn names_each<const N: usize>(&self, users: [&UserId; N]) -> Result<[String; N], RepoError> {
        let names = self.full_names(&users).await?;
        Ok(names.try_into().expect("one name per user"))
    }

    /// `me`'s name and "A", "A and B", "A, B and C", "A, B, C and 2 others" for `users`,
    /// read in one call.
    async fn me_and_names_of(&self, me: &UserId, users: &[UserId]) -> Result<(String, String), RepoError> {
        let named: Vec<&UserId> = std::iter::once(me).chain(users.iter().take(NAMED)).collect();
        let mut names = self.full_names(&named).await?;
        let mine = names.remove(0);
        let others = users.len().saturating_sub(NAMED);
        let listed = match (names.split_last(), others) {
            (None, _) => String::new(),
            (Some((last, [])), 0) => last.clone(),
            (Some((last, rest)), 0) => format!("{} and {last}", rest.join(", ")),
            (Some(_), 1) => format!("{} and 1 other", names.join(", ")),
            (Some(_), others) => format!("{} and {others} others", names.join(", ")),
        };
        Ok((mine, listed))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use chrono::{TimeZone, Utc};
    use domain::{Chat, FullName, Seq, User};

    use super::*;
    use crate::messaging::{MessagingError, MessagingService, MessagingStores};
    use crate::ports::{
        GroupAppended, MockClock, MockConversationRepository, MockGroupRepository,
        MockMessageChangeRepository, MockMessageRepository, MockNotifier, MockUserRepository, Notice,
        NotifyError, ReadMoved,
    };

    fn now() -> domain::Timestamp {
        Utc.with_ymd_and_hms(2026, 5, 6, 7, 8, 9).unwrap()
    }

    fn name(raw: &str) -> GroupName {
        GroupName::parse(raw).unwrap()
    }

    /// Where an event went.
    #[derive(Debug, Clone, PartialEq)]
    enum To {
        Group(ConversationId),
        Users(Vec<UserId>),
    }

    /// A group store holding one group, and the users that exist, with their full names.
    struct Store {
        state: GroupState,
        /// Former members (`left_after` finds their `Left` notice).
        former: Vec<UserId>,
        names: HashMap<UserId, String>,
        /// Changes answered `Stale` before the next one applies (each moves the version, as
        /// a change made meanwhile would).
        stale: usize,
        applied: Vec<GroupChange>,
        created: Vec<(Group, Vec<Member>, Message)>,
        announced: Vec<(To, Event)>,
        /// Announcements fail (the change must not).
        notifier_down: bool,
        /// Members another change adds right before the next change comes (which is stale
        /// then).
        meanwhile: Vec<Member>,
        /// Changes answered `Conflict` before the next one applies.
        conflicts: usize,
        /// How many ids each lookup of users asked for, in order.
        lookups: Vec<usize>,
    }

    /// The users of the group in the tests, in joining order.
    struct Cast {
        owner: UserId,
        admin: UserId,
        member: UserId,
        other_admin: UserId,
        other_member: UserId,
        former: UserId,
        stranger: UserId,
        outsider: UserId,
    }

    fn cast() -> Cast {
        Cast {
            owner: UserId::generate(),
            admin: UserId::generate(),
            member: UserId::generate(),
            other_admin: UserId::generate(),
            other_member: UserId::generate(),
            former: UserId::generate(),
            stranger: UserId::generate(),
            outsider: UserId::generate(),
        }
    }

    fn member(user: &UserId, role: Role) -> Member {
        Member { read_seq: 5, ..Member::joining(user.clone(), role, now(), 1) }
    }

    impl Store {
        /// The group "team" at seq 5, version 3: Olive the owner, Ada and Abe admins, Mia and
        /// Max members (joined in that order: Olive, Ada, Mia, Abe, Max); Flo left it; Stan
        /// and Otto never were in it (both exist).
        fn new(c: &Cast) -> Self {
            let group = Group {
                id: ConversationId::generate(),
                name: name("team"),
                created_by: c.owner.clone(),
                created_at: now(),
                updated_at: now(),
                last_seq: 5,
            };
            let members = vec![
                member(&c.owner, Role::Owner),
                member(&c.admin, Role::Admin),
                member(&c.member, Role::Member),
                member(&c.other_admin, Role::Admin),
                member(&c.other_member, Role::Member),
            ];
            let names = [
                (&c.owner, "Olive"),
                (&c.admin, "Ada"),
                (&c.member, "Mia"),
                (&c.other_admin, "Abe"),
                (&c.other_member, "Max"),
                (&c.former, "Flo"),
                (&c.stranger, "Stan"),
                (&c.outsider, "Otto"),
            ]
            .into_iter()
            .map(|(id, name)| (id.clone(), name.to_owned()))
            .collect();
            Self {
                state: GroupState { group, members, version: 3 },
                former: vec![c.former.clone()],
                names,
                stale: 0,
                applied: Vec::new(),
                created: Vec::new(),
                announced: Vec::new(),
                notifier_down: false,
                meanwhile: Vec::new(),
                conflicts: 0,
                lookups: Vec::new(),
            }
        }

        fn id(&self) -> ConversationId {
            self.state.group.id.clone()
        }

        /// What the store does with a change at the current version.
        fn apply(&mut self, change: &GroupChange) -> crate::ports::RepoResult<Changed> {
            if self.conflicts > 0 {
                self.conflicts -= 1;
                return Err(RepoError::Conflict);
            }
            if !self.meanwhile.is_empty() {
                self.state.members.append(&mut self.meanwhile);
                self.state.version += 1;
                return Ok(Changed::Stale);
            }
            if self.stale > 0 {
                self.stale -= 1;
                self.state.version += 1;
                return Ok(Changed::Stale);
            }
            if change.expected_version != self.state.version {
                return Ok(Changed::Stale);
            }
            let seq = self.state.group.last_seq + 1;
            let entry = Message { seq, ..change.entry.clone() };
            self.state.group.last_seq = seq;
            if let Some(name) = &change.rename {
                self.state.group.name = name.clone();
            }
            self.state.members.retain(|m| !change.remove.contains(&m.user_id));
            for (user, role) in &change.roles {
                if let Some(m) = self.state.members.iter_mut().find(|m| &m.user_id == user) {
                    m.role = *role;
                }
            }
            let mut notices = Vec::new();
            for (user, role) in &change.add {
                self.state
                    .members
                    .push(Member { read_seq: seq - 1, ..Member::joining(user.clone(), *role, now(), seq) });
                notices.push(Noticed {
                    user: user.clone(),
                    cursor: Cursor::new(40).unwrap(),
                    notice: Notice::Joined { group: self.id(), seq },
                });
            }
            for user in &change.remove {
                self.former.push(user.clone());
                notices.push(Noticed {
                    user: user.clone(),
                    cursor: Cursor::new(41).unwrap(),
                    notice: Notice::Left { group: self.id(), seq },
                });
            }
            self.state.version += 1;
            self.applied.push(change.clone());
            Ok(Changed::Applied { entry, version: self.state.version, notices })
        }

        fn is_member(&self, user: &UserId) -> bool {
            self.state.member(user).is_some()
        }
    }

    type Shared = Arc<Mutex<Store>>;

    /// The user `id` with the full name the store gives them, if any.
    fn named(store: &Store, id: &UserId) -> Option<User> {
        store.names.get(id).map(|full_name| User {
            full_name: FullName::parse(full_name).unwrap(),
            ..crate::fixtures::user_with_id(id, now())
        })
    }

    fn users(store: &Shared) -> MockUserRepository {
        let mut users = MockUserRepository::new();
        let s = store.clone();
        users.expect_find_by_id().returning(move |id| Ok(named(&s.lock().unwrap(), id)));
        let s = store.clone();
        users.expect_find_many().returning(move |ids| {
            let mut store = s.lock().unwrap();
            store.lookups.push(ids.len());
            Ok(ids.iter().filter_map(|id| named(&store, id)).collect())
        });
        users
    }

    fn group_port(store: &Shared) -> MockGroupRepository {
        let mut groups = MockGroupRepository::new();
        let s = store.clone();
        groups.expect_state().returning(move |id| {
            let store = s.lock().unwrap();
            Ok((*id == store.id()).then(|| store.state.clone()))
        });
        let s = store.clone();
        groups.expect_left_after().returning(move |user, id, after| {
            assert_eq!(after, Cursor::START, "any membership ever");
            let store = s.lock().unwrap();
            Ok((*id == store.id() && store.former.contains(user)).then_some(2))
        });
        let s = store.clone();
        groups.expect_change().returning(move |id, change| {
            let mut store = s.lock().unwrap();
            assert_eq!(*id, store.id());
            store.apply(change)
        });
        let s = store.clone();
        groups.expect_create().returning(move |group, members, created| {
            let mut store = s.lock().unwrap();
            store.created.push((group.clone(), members.to_vec(), created.clone()));
            Ok(members
                .iter()
                .enumerate()
                .map(|(i, m)| Noticed {
                    user: m.user_id.clone(),
                    cursor: Cursor::new(i as u64 + 10).unwrap(),
                    notice: Notice::Joined { group: group.id.clone(), seq: 1 },
                })
                .collect())
        });
        groups
    }

    fn notifier(store: &Shared) -> MockNotifier {
        let mut notifier = MockNotifier::new();
        let s = store.clone();
        notifier.expect_notify_group().returning(move |group, event| {
            let mut store = s.lock().unwrap();
            store.announced.push((To::Group(group.clone()), event.clone()));
            if store.notifier_down {
                return Err(NotifyError(anyhow::anyhow!("bus down")));
            }
            Ok(())
        });
        let s = store.clone();
        notifier.expect_notify().returning(move |users, event| {
            let mut store = s.lock().unwrap();
            store.announced.push((To::Users(users.to_vec()), event.clone()));
            if store.notifier_down {
                return Err(NotifyError(anyhow::anyhow!("bus down")));
            }
            Ok(())
        });
        notifier
    }

    fn clock() -> Arc<MockClock> {
        let mut clock = MockClock::new();
        clock.expect_now().returning(now);
        Arc::new(clock)
    }

    fn service(store: &Shared, max_members: u32) -> GroupService {
        GroupService::new(
            Arc::new(users(store)),
            Arc::new(group_port(store)),
            Arc::new(notifier(store)),
            clock(),
            GroupLimits { max_members },
        )
    }

    /// The messaging service over the same group: sends, history and reads as the store
    /// answers them for members and others.
    fn messaging(store: &Shared) -> MessagingService {
        let mut conversations = MockConversationRepository::new();
        let s = store.clone();
        conversations.expect_find().returning(move |id| {
            let store = s.lock().unwrap();
            Ok((*id == store.id()).then(|| Chat::Group(store.state.group.clone())))
        });
        let s = store.clone();
        conversations
            .expect_member()
            .returning(move |_, user| Ok(s.lock().unwrap().state.member(user).cloned()));
        let mut messages = MockMessageRepository::new();
        let s = store.clone();
        messages.expect_append_to_group().returning(move |message| {
            let store = s.lock().unwrap();
            Ok(if store.is_member(&message.sender_id) {
                GroupAppended::Created {
                    message: Message { seq: 6, ..message.clone() },
                    version: store.state.version,
                }
            } else {
                GroupAppended::NotMember
            })
        });
        messages.expect_list_by_conversation().returning(|_, _, _, _| Ok(Vec::new()));
        let s = store.clone();
        messages.expect_mark_read().returning(move |_, user, _| {
            Ok(if s.lock().unwrap().is_member(user) {
                ReadMoved::Moved { seq: 5, cursor: Cursor::new(3).unwrap() }
            } else {
                ReadMoved::NotMember
            })
        });
        MessagingService::new(
            MessagingStores {
                users: Arc::new(users(store)),
                conversations: Arc::new(conversations),
                messages: Arc::new(messages),
                changes: Arc::new(MockMessageChangeRepository::new()),
                groups: Arc::new(group_port(store)),
            },
            Arc::new(notifier(store)),
            clock(),
        )
    }

    fn world() -> (Cast, Shared) {
        let cast = cast();
        let store = Arc::new(Mutex::new(Store::new(&cast)));
        (cast, store)
    }

    /// What an action ended in, for the permissions matrix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Done,
        NotFound,
        Gone,
        NotAllowed,
    }

    fn outcome_of<T>(result: Result<T, GroupError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Done,
            Err(GroupError::NotFound) => Outcome::NotFound,
            Err(GroupError::NoLongerMember) => Outcome::Gone,
            Err(GroupError::NotAllowed) => Outcome::NotAllowed,
            Err(other) => panic!("unexpected {other}"),
        }
    }

    fn outcome_of_messaging<T>(result: Result<T, MessagingError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Done,
            Err(MessagingError::ConversationNotFound) => Outcome::NotFound,
            Err(MessagingError::NoLongerMember) => Outcome::Gone,
            Err(other) => panic!("unexpected {other}"),
        }
    }

    const ACTIONS: [&str; 12] = [
        "create",
        "get",
        "add",
        "remove",
        "rename",
        "set_role",
        "transfer",
        "leave",
        "send",
        "history",
        "read",
        "remove_admin",
    ];

    /// Runs `action` as `actor` on a fresh group; the targets are Max (a member), Abe (an
    /// admin, for `remove_admin`), and Otto (a user outside, for `add`).
    async fn run(action: &str, actor: fn(&Cast) -> UserId) -> Outcome {
        let (c, store) = world();
        let me = actor(&c);
        let id = store.lock().unwrap().id();
        let groups = service(&store, 1000);
        match action {
            "create" => outcome_of(groups.create(&me, name("new"), vec![c.outsider.clone()]).await),
            "get" => outcome_of(groups.get(&me, &id).await),
            "add" => outcome_of(groups.add_members(&me, &id, vec![c.outsider.clone()]).await),
            "remove" => outcome_of(groups.remove_member(&me, &id, &c.other_member).await),
            "remove_admin" => outcome_of(groups.remove_member(&me, &id, &c.other_admin).await),
            "rename" => outcome_of(groups.rename(&me, &id, name("renamed")).await),
            "set_role" => outcome_of(groups.set_role(&me, &id, &c.other_member, Role::Admin).await),
            "transfer" => outcome_of(groups.transfer_ownership(&me, &id, &c.other_member).await),
            "leave" => outcome_of(groups.leave(&me, &id).await),
            "send" => outcome_of_messaging(
                messaging(&store)
                    .send_to_conversation(&me, &id, MessageBody::parse("hi").unwrap(), None, None)
                    .await,
            ),
            "history" => {
                outcome_of_messaging(messaging(&store).conversation_history(&me, &id, None, None).await)
            }
            "read" => {
                outcome_of_messaging(messaging(&store).mark_read(&me, &id, &MessageId::generate()).await)
            }
            _ => unreachable!("{action}"),
        }
    }

    #[tokio::test]
    async fn the_permissions_matrix() {
        use Outcome::{Done, Gone, NotAllowed as No, NotFound as Unknown};
        type Actor = fn(&Cast) -> UserId;
        let actors: [(&str, Actor, [Outcome; 12]); 5] = [
            // create get add remove rename set_role transfer leave send history read remove_admin
            (
                "owner",
                |c| c.owner.clone(),
                [Done, Done, Done, Done, Done, Done, Done, Done, Done, Done, Done, Done],
            ),
            (
                "admin",
                |c| c.admin.clone(),
                [Done, Done, Done, Done, Done, No, No, Done, Done, Done, Done, No],
            ),
            ("member", |c| c.member.clone(), [Done, Done, No, No, No, No, No, Done, Done, Done, Done, No]),
            (
                "removed",
                |c| c.former.clone(),
                [Done, Gone, Gone, Gone, Gone, Gone, Gone, Gone, Gone, Gone, Gone, Gone],
            ),
            (
                "stranger",
                |c| c.stranger.clone(),
                [
                    Done, Unknown, Unknown, Unknown, Unknown, Unknown, Unknown, Unknown, Unknown, Unknown,
                    Unknown, Unknown,
                ],
            ),
        ];
        for (who, actor, expected) in actors {
            for (action, expected) in ACTIONS.iter().zip(expected) {
                assert_eq!(run(action, actor).await, expected, "{who} {action}");
            }
        }
    }

    #[tokio::test]
    async fn a_refused_action_stores_and_announces_nothing() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let groups = service(&store, 1000);
        assert!(groups.add_members(&c.member, &id, vec![c.outsider.clone()]).await.is_err());
        assert!(groups.rename(&c.stranger, &id, name("x")).await.is_err());
        let store = store.lock().unwrap();
        assert!(store.applied.is_empty() && store.announced.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_group_is_not_found() {
        let (c, store) = world();
        let err = service(&store, 1000).get(&c.owner, &ConversationId::generate()).await.unwrap_err();
        assert!(matches!(err, GroupError::NotFound));
    }

    #[tokio::test]
    async fn create_makes_me_the_owner_stores_the_first_entry_and_announces_the_group() {
        let (c, store) = world();
        let created = service(&store, 1000)
            .create(&c.owner, name("Crew"), vec![c.admin.clone(), c.outsider.clone()])
            .await
            .unwrap();
        let store = store.lock().unwrap();
        let [(group, members, entry)] = store.created.as_slice() else { panic!("one group stored") };
        assert_eq!((&group.name, &group.created_by, group.last_seq), (&name("Crew"), &c.owner, 1));
        let roles: Vec<(&UserId, Role, Seq, Seq)> =
            members.iter().map(|m| (&m.user_id, m.role, m.joined_seq, m.read_seq)).collect();
        assert_eq!(
            roles,
            [
                (&c.owner, Role::Owner, 1, 1),
                (&c.admin, Role::Member, 1, 0),
                (&c.outsider, Role::Member, 1, 0)
            ]
        );
        assert_eq!(members[0].last_read_message_id.as_ref(), Some(&entry.id), "my own entry is read");
        assert_eq!(members[1].last_read_message_id, None);
        assert_eq!(entry.seq, 1);
        assert_eq!(entry.body.as_str(), "Olive created the group \u{201c}Crew\u{201d}");
        assert_eq!(
            entry.system,
            Some(SystemEvent::Created {
                actor: c.owner.clone(),
                name: name("Crew"),
                members: vec![c.owner.clone(), c.admin.clone(), c.outsider.clone()],
            })
        );
        assert_eq!((entry.sender_id.clone(), entry.receiver_id.clone()), (c.owner.clone(), None));
        assert_eq!(created, GroupState { group: group.clone(), members: members.clone(), version: 1 });

        let kinds: Vec<(To, &str)> = store.announced.iter().map(|(to, e)| (to.clone(), kind(e))).collect();
        let to_group = To::Group(group.id.clone());
        assert_eq!(
            kinds,
            [
                (to_group.clone(), "updated"),
                (to_group, "entry"),
                (To::Users(vec![c.owner.clone()]), "notice"),
                (To::Users(vec![c.admin.clone()]), "notice"),
                (To::Users(vec![c.outsider.clone()]), "notice"),
            ]
        );
        assert!(matches!(
            &store.announced[0].1,
            Event::ConversationUpdated {
                version: 1,
                member_count: 3,
                change: SystemEvent::Created { .. },
                ..
            }
        ));
    }

    fn kind(event: &Event) -> &'static str {
        match event {
            Event::ConversationUpdated { .. } => "updated",
            Event::GroupMessage { .. } => "entry",
            Event::Notice { .. } => "notice",
            _ => "other",
        }
    }

    #[tokio::test]
    async fn create_refuses_bad_member_lists_naming_the_offending_ids() {
        let (c, store) = world();
        let groups = service(&store, 3);
        let unknown = UserId::generate();
        let err =
            groups.create(&c.owner, name("x"), vec![c.admin.clone(), c.admin.clone()]).await.unwrap_err();
        assert!(matches!(err, GroupError::DuplicateMembers(ids) if ids == [c.admin.clone()]));
        let err = groups.create(&c.owner, name("x"), vec![c.owner.clone()]).await.unwrap_err();
        assert!(matches!(err, GroupError::DuplicateMembers(ids) if ids == [c.owner.clone()]));
        let err = groups.create(&c.owner, name("x"), vec![]).await.unwrap_err();
        assert!(matches!(err, GroupError::TooFewMembers { min: 2 }));
        let three = vec![c.admin.clone(), c.member.clone(), c.outsider.clone()];
        let err = groups.create(&c.owner, name("x"), three).await.unwrap_err();
        assert!(matches!(err, GroupError::TooManyMembers { max: 3 }));
        let err =
            groups.create(&c.owner, name("x"), vec![unknown.clone(), c.admin.clone()]).await.unwrap_err();
        assert!(matches!(&err, GroupError::UnknownUsers(ids) if *ids == [unknown.clone()]));
        assert!(err.to_string().contains(unknown.as_str()), "{err}");
        let store = store.lock().unwrap();
        assert!(store.created.is_empty() && store.announced.is_empty());
    }

    #[tokio::test]
    async fn adding_members_stores_one_change_and_announces_it_to_members_and_newcomers() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let newcomers: Vec<UserId> = (0..5).map(|_| UserId::generate()).collect();
        for (n, user) in newcomers.iter().enumerate() {
            store.lock().unwrap().names.insert(user.clone(), format!("New {n}"));
        }
        let update = service(&store, 1000).add_members(&c.admin, &id, newcomers.clone()).await.unwrap();
        let entry = update.entry.expect("an entry");
        assert_eq!(entry.seq, 6);
        assert_eq!(entry.body.as_str(), "Ada added New 0, New 1, New 2 and 2 others");
        assert_eq!(
            entry.system,
            Some(SystemEvent::Added { actor: c.admin.clone(), users: newcomers.clone() })
        );
        let store = store.lock().unwrap();
        let [change] = store.applied.as_slice() else { panic!("one change") };
        assert_eq!(change.expected_version, 3);
        assert_eq!(change.add, newcomers.iter().map(|u| (u.clone(), Role::Member)).collect::<Vec<_>>());
        assert!(change.remove.is_empty() && change.roles.is_empty() && change.rename.is_none());
        // The state returned is the store's after the change.
        assert_eq!(update.state.version, 4);
        assert_eq!(update.state.group.last_seq, 6);
        assert_eq!(update.state.members.len(), 10);
        let newcomer = update.state.member(&newcomers[0]).unwrap();
        assert_eq!((newcomer.joined_seq, newcomer.read_seq, newcomer.role), (6, 5, Role::Member));
        assert_eq!(update.state.member(&c.admin).unwrap().read_seq, 6, "my own change is read");
        let kinds: Vec<&str> = store.announced.iter().map(|(_, e)| kind(e)).collect();
        assert_eq!(kinds, ["updated", "entry", "notice", "notice", "notice", "notice", "notice"]);
        assert!(
            matches!(&store.announced[1].1, Event::GroupMessage { message, version: 4 } if message.seq == 6)
        );
        assert!(matches!(
            &store.announced[0].1,
            Event::ConversationUpdated { member_count: 10, version: 4, .. }
        ));
    }

    #[tokio::test]
    async fn adding_refuses_bad_lists_naming_the_offending_ids() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let groups = service(&store, 6);
        let unknown = UserId::generate();
        let err = groups.add_members(&c.owner, &id, vec![]).await.unwrap_err();
        assert!(matches!(err, GroupError::NoUsers));
        let err = groups
            .add_members(&c.owner, &id, vec![c.outsider.clone(), c.outsider.clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, GroupError::DuplicateMembers(ids) if ids == [c.outsider.clone()]));
        let err =
            groups.add_members(&c.owner, &id, vec![c.outsider.clone(), c.member.clone()]).await.unwrap_err();
        assert!(matches!(err, GroupError::AlreadyMembers(ids) if ids == [c.member.clone()]));
        let err = groups
            .add_members(&c.owner, &id, vec![c.outsider.clone(), c.stranger.clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, GroupError::TooManyMembers { max: 6 }));
        let err = groups.add_members(&c.owner, &id, vec![unknown.clone()]).await.unwrap_err();
        assert!(matches!(err, GroupError::UnknownUsers(ids) if ids == [unknown.clone()]));
        assert!(store.lock().unwrap().applied.is_empty());
        // Up to the limit is fine.
        assert!(groups.add_members(&c.owner, &id, vec![c.outsider.clone()]).await.is_ok());
    }

    #[tokio::test]
    async fn removing_a_member_tells_the_removed_user_too() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let update = service(&store, 1000).remove_member(&c.admin, &id, &c.other_member).await.unwrap();
        assert_eq!(update.entry.as_ref().unwrap().body.as_str(), "Ada removed Max");
        assert!(update.state.member(&c.other_member).is_none());
        let store = store.lock().unwrap();
        assert_eq!(store.applied[0].remove, std::slice::from_ref(&c.other_member));
        let to: Vec<(To, &str)> = store.announced.iter().map(|(to, e)| (to.clone(), kind(e))).collect();
        assert_eq!(
            to,
            [
                (To::Group(id.clone()), "updated"),
                (To::Users(vec![c.other_member.clone()]), "updated"),
                (To::Group(id), "entry"),
                (To::Users(vec![c.other_member.clone()]), "notice"),
            ]
        );
    }

    #[tokio::test]
    async fn only_the_owner_removes_admins_and_nobody_removes_a_non_member() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let groups = service(&store, 1000);
        assert!(matches!(groups.remove_member(&c.admin, &id, &c.owner).await, Err(GroupError::NotAllowed)));
        assert!(matches!(
            groups.remove_member(&c.admin, &id, &c.other_admin).await,
            Err(GroupError::NotAllowed)
        ));
        let err = groups.remove_member(&c.owner, &id, &c.outsider).await.unwrap_err();
        assert!(matches!(err, GroupError::NotAMember(user) if user == c.outsider));
        let removed = groups.remove_member(&c.owner, &id, &c.other_admin).await.unwrap();
        assert!(removed.state.member(&c.other_admin).is_none());
    }

    #[tokio::test]
    async fn removing_oneself_is_leaving() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let update = service(&store, 1000).remove_member(&c.member, &id, &c.member).await.unwrap();
        assert_eq!(
            update.entry.unwrap().system,
            Some(SystemEvent::Left { actor: c.member.clone(), new_owner: None })
        );
    }

    #[tokio::test]
    async fn renaming_records_the_new_name_and_the_same_name_changes_nothing() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let groups = service(&store, 1000);
        let same = groups.rename(&c.admin, &id, name("team")).await.unwrap();
        assert_eq!(same.entry, None);
        assert!(store.lock().unwrap().applied.is_empty() && store.lock().unwrap().announced.is_empty());
        let update = groups.rename(&c.admin, &id, name("Crew")).await.unwrap();
        assert_eq!(update.state.group.name, name("Crew"));
        assert_eq!(update.entry.unwrap().body.as_str(), "Ada renamed the group to \u{201c}Crew\u{201d}");
        assert_eq!(store.lock().unwrap().applied[0].rename, Some(name("Crew")));
    }

    #[tokio::test]
    async fn the_owner_sets_roles_but_never_makes_or_unmakes_an_owner_that_way() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let groups = service(&store, 1000);
        let update = groups.set_role(&c.owner, &id, &c.member, Role::Admin).await.unwrap();
        assert_eq!(update.entry.unwrap().body.as_str(), "Olive made Mia an admin");
        assert_eq!(update.state.member(&c.member).unwrap().role, Role::Admin);
        let update = groups.set_role(&c.owner, &id, &c.admin, Role::Member).await.unwrap();
        assert_eq!(update.entry.unwrap().body.as_str(), "Olive made Ada a member");
        assert_eq!(groups.set_role(&c.owner, &id, &c.admin, Role::Member).await.unwrap().entry, None);
        assert!(matches!(
            groups.set_role(&c.owner, &id, &c.member, Role::Owner).await,
            Err(GroupError::OwnerRole)
        ));
        assert!(matches!(
            groups.set_role(&c.owner, &id, &c.owner, Role::Admin).await,
            Err(GroupError::OwnerRole)
        ));
        let err = groups.set_role(&c.owner, &id, &c.outsider, Role::Admin).await.unwrap_err();
        assert!(matches!(err, GroupError::NotAMember(user) if user == c.outsider));
        assert_eq!(store.lock().unwrap().applied.len(), 2);
    }

    #[tokio::test]
    async fn transferring_ownership_makes_the_old_owner_an_admin() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let groups = service(&store, 1000);
        let err = groups.transfer_ownership(&c.owner, &id, &c.outsider).await.unwrap_err();
        assert!(matches!(err, GroupError::NotAMember(user) if user == c.outsider));
        assert_eq!(groups.transfer_ownership(&c.owner, &id, &c.owner).await.unwrap().entry, None);
        let update = groups.transfer_ownership(&c.owner, &id, &c.member).await.unwrap();
        assert_eq!(update.entry.unwrap().body.as_str(), "Olive made Mia the owner");
        assert_eq!(
            store.lock().unwrap().applied[0].roles,
            [(c.member.clone(), Role::Owner), (c.owner.clone(), Role::Admin)]
        );
        assert_eq!(update.state.member(&c.owner).unwrap().role, Role::Admin);
        assert_eq!(update.state.member(&c.member).unwrap().role, Role::Owner);
        // The old owner may not hand it over again.
        assert!(matches!(
            groups.transfer_ownership(&c.owner, &id, &c.admin).await,
            Err(GroupError::NotAllowed)
        ));
    }

    #[tokio::test]
    async fn the_owner_leaving_hands_over_to_the_oldest_admin() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let update = service(&store, 1000).leave(&c.owner, &id).await.unwrap();
        let entry = update.entry.unwrap();
        assert_eq!(
            entry.system,
            Some(SystemEvent::Left { actor: c.owner.clone(), new_owner: Some(c.admin.clone()) })
        );
        assert_eq!(entry.body.as_str(), "Olive left; Ada is the owner now");
        assert_eq!(update.state.member(&c.admin).unwrap().role, Role::Owner);
        assert!(update.state.member(&c.owner).is_none());
        let store = store.lock().unwrap();
        assert_eq!(store.applied[0].remove, std::slice::from_ref(&c.owner));
        assert_eq!(store.applied[0].roles, [(c.admin.clone(), Role::Owner)]);
    }

    #[tokio::test]
    async fn the_owner_leaving_a_group_without_admins_hands_over_to_the_oldest_member() {
        let (c, store) = world();
        {
            let mut s = store.lock().unwrap();
            s.state.members.retain(|m| m.role != Role::Admin);
        }
        let id = store.lock().unwrap().id();
        let update = service(&store, 1000).leave(&c.owner, &id).await.unwrap();
        assert_eq!(
            update.entry.unwrap().system,
            Some(SystemEvent::Left { actor: c.owner.clone(), new_owner: Some(c.member.clone()) })
        );
        assert_eq!(update.state.member(&c.member).unwrap().role, Role::Owner);
    }

    #[tokio::test]
    async fn the_last_member_leaving_leaves_an_empty_group() {
        let (c, store) = world();
        store.lock().unwrap().state.members.retain(|m| m.user_id == c.owner);
        let id = store.lock().unwrap().id();
        let update = service(&store, 1000).leave(&c.owner, &id).await.unwrap();
        assert!(update.state.members.is_empty());
        assert_eq!(
            update.entry.unwrap().system,
            Some(SystemEvent::Left { actor: c.owner.clone(), new_owner: None })
        );
        assert!(store.lock().unwrap().applied[0].roles.is_empty());
    }

    #[tokio::test]
    async fn a_member_leaving_changes_no_role() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let update = service(&store, 1000).leave(&c.admin, &id).await.unwrap();
        assert_eq!(update.entry.unwrap().body.as_str(), "Ada left");
        let store = store.lock().unwrap();
        assert!(store.applied[0].roles.is_empty());
        assert!(store
            .announced
            .iter()
            .any(|(to, e)| *to == To::Users(vec![c.admin.clone()]) && kind(e) == "updated"));
    }

    #[tokio::test]
    async fn a_stale_change_is_decided_again_on_the_new_state() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        store.lock().unwrap().stale = RETRIES;
        let update = service(&store, 1000).rename(&c.admin, &id, name("Crew")).await.unwrap();
        let store = store.lock().unwrap();
        let [change] = store.applied.as_slice() else { panic!("applied once") };
        assert_eq!(change.expected_version, 3 + RETRIES as u64, "decided on the latest state");
        assert_eq!(update.state.version, 4 + RETRIES as u64);
        assert_eq!(store.announced.len(), 2, "announced once");
    }

    #[tokio::test]
    async fn a_decision_made_again_sees_what_changed_meanwhile() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        // The first attempt loses to a change that added Otto.
        store.lock().unwrap().meanwhile = vec![Member::joining(c.outsider.clone(), Role::Member, now(), 6)];
        let err =
            service(&store, 1000).add_members(&c.admin, &id, vec![c.outsider.clone()]).await.unwrap_err();
        assert!(matches!(err, GroupError::AlreadyMembers(ids) if ids == [c.outsider.clone()]));
        let store = store.lock().unwrap();
        assert!(store.applied.is_empty() && store.announced.is_empty());
    }

    #[tokio::test]
    async fn a_conflict_is_decided_again_like_a_stale_change() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        store.lock().unwrap().conflicts = 1;
        let update =
            service(&store, 1000).add_members(&c.admin, &id, vec![c.outsider.clone()]).await.unwrap();
        assert!(update.state.member(&c.outsider).is_some());
        assert_eq!(store.lock().unwrap().applied.len(), 1);
    }

    #[tokio::test]
    async fn a_large_group_is_checked_and_named_in_one_lookup_each_and_known_users_are_not_asked_again() {
        let (c, store) = world();
        let many: Vec<UserId> = (0..999).map(|_| UserId::generate()).collect();
        for (n, user) in many.iter().enumerate() {
            store.lock().unwrap().names.insert(user.clone(), format!("N{n}"));
        }
        let groups = service(&store, 1000);
        let created = groups.create(&c.owner, name("Crowd"), many.clone()).await.unwrap();
        assert_eq!(created.members.len(), 1000);
        // The 999 ids in one call, then my name in another.
        assert_eq!(std::mem::take(&mut store.lock().unwrap().lookups), [999, 1]);

        // Into the test group: the crowd is known now, only the unknown id is asked; then
        // the names of the actor and the first three, together.
        let id = store.lock().unwrap().id();
        let unknown = UserId::generate();
        let mut users = many[..3].to_vec();
        users.push(unknown.clone());
        let err = groups.add_members(&c.owner, &id, users).await.unwrap_err();
        assert!(matches!(err, GroupError::UnknownUsers(ids) if ids == [unknown]));
        assert_eq!(std::mem::take(&mut store.lock().unwrap().lookups), [1]);
        let update = groups.add_members(&c.owner, &id, many[..4].to_vec()).await.unwrap();
        assert_eq!(update.entry.unwrap().body.as_str(), "Olive added N0, N1, N2 and 1 other");
        assert_eq!(store.lock().unwrap().lookups, [4], "all known: only the 4 names read");
    }

    #[tokio::test]
    async fn an_entry_names_someone_it_cannot_find_as_someone() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        store.lock().unwrap().names.remove(&c.member);
        let update = service(&store, 1000).remove_member(&c.owner, &id, &c.member).await.unwrap();
        assert_eq!(update.entry.unwrap().body.as_str(), "Olive removed someone");
        assert_eq!(store.lock().unwrap().lookups, [2], "both names in one lookup");
    }

    #[tokio::test]
    async fn system_entries_name_a_few_users_and_count_the_rest() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let groups = service(&store, 1000);
        let two =
            groups.add_members(&c.owner, &id, vec![c.outsider.clone(), c.stranger.clone()]).await.unwrap();
        assert_eq!(two.entry.unwrap().body.as_str(), "Olive added Otto and Stan");
        let four: Vec<UserId> = (0..4).map(|_| UserId::generate()).collect();
        for (n, user) in four.iter().enumerate() {
            store.lock().unwrap().names.insert(user.clone(), format!("N{n}"));
        }
        let update = groups.add_members(&c.owner, &id, four).await.unwrap();
        assert_eq!(update.entry.unwrap().body.as_str(), "Olive added N0, N1, N2 and 1 other");
    }

    #[tokio::test]
    async fn a_group_that_keeps_changing_is_unavailable_for_now() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        store.lock().unwrap().stale = RETRIES + 1;
        let err = service(&store, 1000).rename(&c.admin, &id, name("Crew")).await.unwrap_err();
        assert!(matches!(err, GroupError::Failed(ApplicationError::Unavailable(_))), "{err}");
        let store = store.lock().unwrap();
        assert!(store.applied.is_empty() && store.announced.is_empty());
    }

    #[tokio::test]
    async fn a_failed_announcement_does_not_fail_the_change() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        store.lock().unwrap().notifier_down = true;
        assert!(service(&store, 1000).rename(&c.admin, &id, name("Crew")).await.is_ok());
        assert_eq!(store.lock().unwrap().applied.len(), 1);
    }

    #[tokio::test]
    async fn a_change_the_store_fails_to_apply_is_not_announced() {
        let (c, store) = world();
        let id = store.lock().unwrap().id();
        let mut groups = MockGroupRepository::new();
        let s = store.clone();
        groups.expect_state().returning(move |_| Ok(Some(s.lock().unwrap().state.clone())));
        groups.expect_change().returning(|_, _| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let mut notifier = MockNotifier::new();
        notifier.expect_notify_group().never();
        notifier.expect_notify().never();
        let service = GroupService::new(
            Arc::new(users(&store)),
            Arc::new(groups),
            Arc::new(notifier),
            clock(),
            GroupLimits::default(),
        );
        let err = service.rename(&c.admin, &id, name("Crew")).await.unwrap_err();
        assert!(matches!(err, GroupError::Failed(ApplicationError::Unavailable(_))));
    }

    #[test]
    fn names_are_listed_as_a_sentence() {
        assert_eq!(duplicates(&[]), Vec::<UserId>::new());
        let a = UserId::generate();
        let b = UserId::generate();
        assert_eq!(duplicates(&[a.clone(), b.clone(), a.clone(), a.clone(), b.clone()]), [a, b]);
        assert_eq!(GroupLimits::default().max_members, 1000);
        assert!(
            GroupLimits::MAX_MEMBERS_ALLOWED.contains(&2) && !GroupLimits::MAX_MEMBERS_ALLOWED.contains(&1)
        );
    }
}
