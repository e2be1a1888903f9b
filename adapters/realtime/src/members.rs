//! Who is in each group, remembered by this instance, to deliver the group's events: a group
//! event is published once, with the group's id, and every instance finds the members among
//! its own connections here.
//!
//! A change of a group's members moves its membership version, and the events that follow
//! a change name the version they were made at: an event naming a newer version than the one
//! remembered reloads the members first, so a removed member's connections get nothing of
//! the group from the change on, and an added member's get what follows it. Events that name
//! no version (typing, read receipts) take the members as remembered; an entry is dropped
//! after [`GroupMembers::TTL`] in case the events of a change never reached this instance.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use application::ports::{GroupRepository, RepoResult};
use domain::{ConversationId, UserId};
use moka::ops::compute::Op;

/// A group's members at one membership version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    pub ids: HashSet<UserId>,
    pub version: u64,
}

impl Members {
    pub fn contains(&self, user: &UserId) -> bool {
        self.ids.contains(user)
    }
}

/// The members of the groups this instance delivers to, loaded through
/// [`GroupRepository::member_ids`] and remembered (bounded by the number of member ids held).
pub struct GroupMembers {
    groups: Arc<dyn GroupRepository>,
    cache: moka::sync::Cache<ConversationId, Arc<Members>>,
}

impl GroupMembers {
    /// How long members are remembered without an event that says they changed.
    pub const TTL: Duration = Duration::from_secs(60);
    /// How many member ids are remembered at most, over all groups; the groups used least
    /// lately are forgotten first.
    pub const CAPACITY: u64 = 1_000_000;

    pub fn new(groups: Arc<dyn GroupRepository>) -> Arc<Self> {
        Self::with_capacity(groups, Self::CAPACITY)
    }

    pub fn with_capacity(groups: Arc<dyn GroupRepository>, capacity: u64) -> Arc<Self> {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_, members: &Arc<Members>| u32::try_from(members.ids.len() + 1).unwrap_or(u32::MAX))
            .time_to_live(Self::TTL)
            .build();
        Arc::new(Self { groups, cache })
    }

    /// The group's members at membership version `version` or later (as remembered, when no
    /// version is named); `None` for no such group.
    pub async fn at_least(
        &self,
        group: &ConversationId,
        version: Option<u64>,
    ) -> RepoResult<Option<Arc<Members>>> {
        if let Some(members) = self.cache.get(group) {
            if version.is_none_or(|version| members.version >= version) {
                return Ok(Some(members));
            }
        }
        self.load(group).await
    }

    /// Whether `user` is a member of `group` now (as remembered).
    pub async fn is_member(&self, group: &ConversationId, user: &UserId) -> RepoResult<bool> {
        Ok(self.at_least(group, None).await?.is_some_and(|members| members.contains(user)))
    }

    /// Reads the members from the store, and remembers them unless a newer version is
    /// remembered meanwhile (a slower load of an older state must not replace it).
    async fn load(&self, group: &ConversationId) -> RepoResult<Option<Arc<Members>>> {
        let Some((ids, version)) = self.groups.member_ids(group).await? else {
            self.cache.invalidate(group);
            return Ok(None);
        };
        let loaded = Arc::new(Members { ids: ids.into_iter().collect(), version });
        let kept = self.cache.entry(group.clone()).and_compute_with(|remembered| match remembered {
            Some(entry) if entry.value().version > version => Op::Nop,
            _ => Op::Put(loaded.clone()),
        });
        Ok(Some(kept.into_entry().map_or(loaded, |entry| entry.into_value())))
    }

    /// Forgets a group's members: the next event reloads them.
    pub fn forget(&self, group: &ConversationId) {
        self.cache.invalidate(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::ports::{MockGroupRepository, RepoError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// What `member_ids` answers.
    type State = Arc<Mutex<Option<(Vec<UserId>, u64)>>>;

    /// A store whose group holds whatever `state` says at each read; counts the reads.
    fn store(state: State, reads: Arc<AtomicUsize>) -> Arc<dyn GroupRepository> {
        let mut groups = MockGroupRepository::new();
        groups.expect_member_ids().returning(move |_| {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(state.lock().unwrap().clone())
        });
        Arc::new(groups)
    }

    #[tokio::test]
    async fn members_are_read_once_while_no_newer_version_is_named() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let state = Arc::new(Mutex::new(Some((vec![a.clone(), b.clone()], 1))));
        let reads = Arc::new(AtomicUsize::new(0));
        let members = GroupMembers::new(store(state, reads.clone()));
        let group = ConversationId::generate();
        for version in [None, Some(1), None, Some(0)] {
            let found = members.at_least(&group, version).await.unwrap().unwrap();
            assert_eq!((found.version, found.ids.len()), (1, 2));
        }
        assert!(members.is_member(&group, &a).await.unwrap());
        assert!(!members.is_member(&group, &UserId::generate()).await.unwrap());
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_event_of_a_newer_version_reloads_the_members() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let state = Arc::new(Mutex::new(Some((vec![a.clone(), b.clone()], 1))));
        let reads = Arc::new(AtomicUsize::new(0));
        let members = GroupMembers::new(store(state.clone(), reads.clone()));
        let group = ConversationId::generate();
        assert!(members.is_member(&group, &b).await.unwrap());
        // b is removed: the change's events name version 2.
        *state.lock().unwrap() = Some((vec![a.clone()], 2));
        assert!(members.is_member(&group, &b).await.unwrap(), "nothing said it changed yet");
        let now = members.at_least(&group, Some(2)).await.unwrap().unwrap();
        assert!(!now.contains(&b) && now.contains(&a));
        assert!(!members.is_member(&group, &b).await.unwrap(), "remembered from then on");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_slower_load_of_an_older_state_does_not_replace_a_newer_one() {
        let group = ConversationId::generate();
        let state = Arc::new(Mutex::new(Some((vec![UserId::generate()], 5))));
        let members = GroupMembers::new(store(state.clone(), Arc::default()));
        members.at_least(&group, Some(5)).await.unwrap();
        *state.lock().unwrap() = Some((Vec::new(), 4));
        let answered = members.load(&group).await.unwrap().unwrap();
        assert_eq!(answered.version, 5, "the newer members are kept and answered");
        assert_eq!(members.at_least(&group, None).await.unwrap().unwrap().version, 5);
    }

    #[tokio::test]
    async fn an_unknown_group_has_no_members_and_is_not_remembered() {
        let reads = Arc::new(AtomicUsize::new(0));
        let members = GroupMembers::new(store(Arc::default(), reads.clone()));
        let group = ConversationId::generate();
        assert_eq!(members.at_least(&group, None).await.unwrap(), None);
        assert!(!members.is_member(&group, &UserId::generate()).await.unwrap());
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_read_is_reported_and_forgetting_reloads() {
        let mut groups = MockGroupRepository::new();
        let mut calls = 0;
        groups.expect_member_ids().returning(move |_| {
            calls += 1;
            match calls {
                1 => Err(RepoError::Unavailable(anyhow::anyhow!("down"))),
                _ => Ok(Some((Vec::new(), calls))),
            }
        });
        let members = GroupMembers::new(Arc::new(groups));
        let group = ConversationId::generate();
        assert!(members.at_least(&group, None).await.is_err());
        assert_eq!(members.at_least(&group, None).await.unwrap().unwrap().version, 2);
        members.forget(&group);
        assert_eq!(members.at_least(&group, None).await.unwrap().unwrap().version, 3);
    }
}
