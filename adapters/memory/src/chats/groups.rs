//! Groups: creating and changing them, their members, and the membership notices in each
//! user's stream.

use std::collections::{BTreeMap, BTreeSet};

use application::ports::{
    Changed, GroupChange, GroupPosition, GroupRepository, GroupState, MembersPreview, Notice, Noticed,
    RepoError, RepoResult,
};
use async_trait::async_trait;
use domain::{ConversationId, Cursor, Group, Member, Message, Seq, UserId};

use super::{Chats, GroupRow, Slot};
use crate::{lock, MemoryStore};

impl Chats {
    /// See `GroupRepository::create`: everything is checked before anything is written.
    fn create_group(
        &mut self,
        group: &Group,
        members: &[Member],
        created: &Message,
    ) -> RepoResult<Vec<Noticed>> {
        if self.is_taken(&group.id) || self.entries.contains_key(&created.id) {
            return Err(RepoError::Conflict);
        }
        let members: BTreeMap<UserId, Member> = members
            .iter()
            .map(|member| {
                let read_seq = u64::from(member.user_id == created.sender_id);
                let member = Member {
                    joined_seq: 1,
                    read_seq,
                    last_read_message_id: (read_seq == 1).then(|| created.id.clone()),
                    ..member.clone()
                };
                (member.user_id.clone(), member)
            })
            .collect();
        let joined: Vec<UserId> = members.keys().cloned().collect();
        self.members.insert(group.id.clone(), members);
        self.groups
            .insert(group.id.clone(), GroupRow { group: Group { last_seq: 1, ..group.clone() }, version: 1 });
        let entry = self.push_entry(&group.id, &Message { client_id: None, ..created.clone() });
        Ok(self.notify(&group.id, &joined, &[], entry.seq))
    }

    /// Appends a `Joined` notice at `seq` to the stream of each of `joined` and a `Left`
    /// notice to the stream of each of `left`, in ascending user id order.
    fn notify(
        &mut self,
        group: &ConversationId,
        joined: &[UserId],
        left: &[UserId],
        seq: Seq,
    ) -> Vec<Noticed> {
        let mut users: Vec<(&UserId, Notice)> = joined
            .iter()
            .map(|user| (user, Notice::Joined { group: group.clone(), seq }))
            .chain(left.iter().map(|user| (user, Notice::Left { group: group.clone(), seq })))
            .collect();
        users.sort_by_key(|(user, _)| *user);
        users
            .into_iter()
            .map(|(user, notice)| {
                let cursor = self.push_slot(user, Slot::Notice(notice.clone()));
                Noticed { user: user.clone(), cursor, notice }
            })
            .collect()
    }

    fn state(&self, group: &ConversationId) -> Option<GroupState> {
        let row = self.groups.get(group)?;
        Some(GroupState { group: row.group.clone(), members: self.members_of(group), version: row.version })
    }

    /// See `GroupRepository::change`: everything is checked before anything is written.
    fn change(&mut self, group_id: &ConversationId, change: &GroupChange) -> RepoResult<Changed> {
        let Some(row) = self.groups.get(group_id) else { return Ok(Changed::Stale) };
        if row.version != change.expected_version {
            return Ok(Changed::Stale);
        }
        let current = self.members.get(group_id).cloned().unwrap_or_default();
        let added: BTreeSet<&UserId> = change.add.iter().map(|(user, _)| user).collect();
        if added.len() < change.add.len() || added.iter().any(|user| current.contains_key(*user)) {
            return Err(RepoError::Conflict);
        }
        if self.entries.contains_key(&change.entry.id) {
            return Err(RepoError::Conflict);
        }

        let entry = self.push_entry(group_id, &Message { client_id: None, ..change.entry.clone() });
        let members = self.members.entry(group_id.clone()).or_default();
        for (user, role) in &change.add {
            let joining = Member::joining(user.clone(), *role, entry.created_at, entry.seq);
            members.insert(user.clone(), Member { read_seq: entry.seq - 1, ..joining });
        }
        let removed: Vec<UserId> =
            change.remove.iter().filter(|user| members.remove(*user).is_some()).cloned().collect();
        for (user, role) in &change.roles {
            if let Some(member) = members.get_mut(user) {
                member.role = *role;
            }
        }
        let version = {
            let Some(row) = self.groups.get_mut(group_id) else { return Ok(Changed::Stale) };
            if let Some(name) = &change.rename {
                row.group.name = name.clone();
            }
            row.group.last_seq = entry.seq;
            row.group.updated_at = row.group.updated_at.max(entry.created_at);
            row.version += 1;
            row.version
        };
        self.move_read(&entry.sender_id, &entry);
        let joined: Vec<UserId> = change.add.iter().map(|(user, _)| user.clone()).collect();
        let notices = self.notify(group_id, &joined, &removed, entry.seq);
        Ok(Changed::Applied { entry, version, notices })
    }

    fn members_preview(&self, groups: &[ConversationId], limit: u32) -> Vec<MembersPreview> {
        groups
            .iter()
            .filter(|group| self.groups.contains_key(*group))
            .map(|group| {
                let members = self.members_of(group);
                MembersPreview {
                    group: group.clone(),
                    count: members.len() as u64,
                    members: members.into_iter().take(limit as usize).map(|m| m.user_id).collect(),
                }
            })
            .collect()
    }

    /// The user's membership notices (`Joined` / `Left`) with their positions, in stream order.
    fn membership_notices(&self, user: &UserId) -> impl Iterator<Item = (Cursor, &Notice)> {
        self.streams.get(user).into_iter().flatten().enumerate().filter_map(|(index, slot)| match slot {
            Slot::Notice(notice @ (Notice::Joined { .. } | Notice::Left { .. })) => {
                Some((super::position(index + 1), notice))
            }
            _ => None,
        })
    }

    fn groups_at(&self, user: &UserId, at: Cursor) -> Vec<GroupPosition> {
        // Each group's last membership notice at or before `at`: a later one replaces it.
        let mut last: BTreeMap<&ConversationId, Option<Seq>> = BTreeMap::new();
        for (_, notice) in self.membership_notices(user).take_while(|(cursor, _)| *cursor <= at) {
            match notice {
                Notice::Joined { group, seq } => last.insert(group, Some(*seq)),
                Notice::Left { group, .. } => last.insert(group, None),
                Notice::Read { .. } => None,
            };
        }
        last.into_iter()
            .filter_map(|(group, joined_seq)| {
                Some(GroupPosition {
                    group: group.clone(),
                    joined_seq: joined_seq?,
                    last_seq: self.groups.get(group)?.group.last_seq,
                })
            })
            .collect()
    }

    fn left_after(&self, user: &UserId, group: &ConversationId, after: Cursor) -> Option<Seq> {
        self.membership_notices(user).find_map(|(cursor, notice)| match notice {
            Notice::Left { group: left, seq } if cursor > after && left == group => Some(*seq),
            _ => None,
        })
    }
}

#[async_trait]
impl GroupRepository for MemoryStore {
    async fn create(&self, group: &Group, members: &[Member], created: &Message) -> RepoResult<Vec<Noticed>> {
        lock(&self.chats).create_group(group, members, created)
    }

    async fn state(&self, group: &ConversationId) -> RepoResult<Option<GroupState>> {
        Ok(lock(&self.chats).state(group))
    }

    async fn member_ids(&self, group: &ConversationId) -> RepoResult<Option<(Vec<UserId>, u64)>> {
        Ok(lock(&self.chats)
            .state(group)
            .map(|state| (state.members.into_iter().map(|m| m.user_id).collect(), state.version)))
    }

    async fn change(&self, group: &ConversationId, change: &GroupChange) -> RepoResult<Changed> {
        lock(&self.chats).change(group, change)
    }

    async fn members_preview(
        &self,
        groups: &[ConversationId],
        limit: u32,
    ) -> RepoResult<Vec<MembersPreview>> {
        Ok(lock(&self.chats).members_preview(groups, limit))
    }

    async fn groups_at(&self, user: &UserId, at: Cursor) -> RepoResult<Vec<GroupPosition>> {
        Ok(lock(&self.chats).groups_at(user, at))
    }

    async fn groups_at_head(&self, user: &UserId) -> RepoResult<(Cursor, Vec<GroupPosition>)> {
        let chats = lock(&self.chats);
        let head = chats.stream_head(user);
        Ok((head, chats.groups_at(user, head)))
    }

    async fn left_after(
        &self,
        user: &UserId,
        group: &ConversationId,
        after: Cursor,
    ) -> RepoResult<Option<Seq>> {
        Ok(lock(&self.chats).left_after(user, group, after))
    }
}
