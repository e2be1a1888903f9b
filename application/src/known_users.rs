//! Which user ids name a user, remembered: a send checks its receiver every time, and the
//! answer for a user once found never changes (users are never deleted).

use std::collections::HashSet;
use std::sync::Arc;

use domain::UserId;

use crate::found_once::FoundOnce;
use crate::ports::{RepoResult, UserRepository};

/// Looks users up through the repository and remembers those found. Ids not found are not
/// remembered: the user may register a moment later, on this instance or another.
pub(crate) struct KnownUsers {
    users: Arc<dyn UserRepository>,
    found: FoundOnce<UserId>,
}

impl KnownUsers {
    /// How many ids are remembered at most; the least used are forgotten first.
    const CAPACITY: u64 = 100_000;

    pub(crate) fn new(users: Arc<dyn UserRepository>) -> Self {
        Self { users, found: FoundOnce::new(Self::CAPACITY) }
    }

    /// Whether `id` names a user.
    pub(crate) async fn exists(&self, id: &UserId) -> RepoResult<bool> {
        self.found.check(id, || async { Ok(self.users.find_by_id(id).await?.is_some()) }).await
    }

    /// Those of `ids` that name no user, in their order: the ids not remembered are looked
    /// up together, in one call, and those found remembered.
    pub(crate) async fn unknown(&self, ids: &[UserId]) -> RepoResult<Vec<UserId>> {
        let ask: Vec<UserId> = ids.iter().filter(|id| !self.found.known(id)).cloned().collect();
        if ask.is_empty() {
            return Ok(Vec::new());
        }
        let found: HashSet<UserId> =
            self.users.find_many(&ask).await?.into_iter().map(|user| user.id).collect();
        let mut unknown = Vec::new();
        for id in ask {
            if found.contains(&id) {
                self.found.remember(id);
            } else {
                unknown.push(id);
            }
        }
        Ok(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockUserRepository, RepoError};
    use chrono::Utc;

    fn user(id: &UserId) -> domain::User {
        crate::fixtures::user_with_id(id, Utc::now())
    }

    #[tokio::test]
    async fn a_user_found_once_is_not_looked_up_again() {
        let mut users = MockUserRepository::new();
        users.expect_find_by_id().times(1).returning(|id| Ok(Some(user(id))));
        let known = KnownUsers::new(Arc::new(users));
        let id = UserId::generate();
        assert!(known.exists(&id).await.unwrap());
        assert!(known.exists(&id).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_id_is_looked_up_every_time() {
        let mut users = MockUserRepository::new();
        let mut calls = 0;
        users.expect_find_by_id().times(2).returning(move |id| {
            calls += 1;
            // Registered between the two checks.
            Ok((calls == 2).then(|| user(id)))
        });
        let known = KnownUsers::new(Arc::new(users));
        let id = UserId::generate();
        assert!(!known.exists(&id).await.unwrap());
        assert!(known.exists(&id).await.unwrap());
    }

    #[tokio::test]
    async fn many_ids_are_looked_up_in_one_call_and_those_found_remembered() {
        let (known_id, ada, bob, nobody) =
            (UserId::generate(), UserId::generate(), UserId::generate(), UserId::generate());
        let mut users = MockUserRepository::new();
        let found = known_id.clone();
        users.expect_find_by_id().times(1).returning(move |id| {
            assert_eq!(id, &found);
            Ok(Some(user(id)))
        });
        let (a, b, n) = (ada.clone(), bob.clone(), nobody.clone());
        let mut calls = 0;
        users.expect_find_many().times(2).returning(move |ids| {
            calls += 1;
            if calls == 1 {
                // The id found before is not asked again.
                assert_eq!(ids, [a.clone(), n.clone(), b.clone()]);
            } else {
                // Nor are those found by the first call; the unknown one is.
                assert_eq!(ids, std::slice::from_ref(&n));
            }
            Ok(ids.iter().filter(|id| **id != n).map(user).collect())
        });
        let known = KnownUsers::new(Arc::new(users));
        assert!(known.exists(&known_id).await.unwrap());

        let ids = [ada.clone(), known_id.clone(), nobody.clone(), bob.clone()];
        assert_eq!(known.unknown(&ids).await.unwrap(), std::slice::from_ref(&nobody));
        assert_eq!(known.unknown(&ids).await.unwrap(), std::slice::from_ref(&nobody));
        // Every id remembered: no call at all.
        assert_eq!(known.unknown(&[ada, bob, known_id]).await.unwrap(), Vec::<UserId>::new());
    }

    #[tokio::test]
    async fn a_failed_lookup_of_many_is_an_error_and_remembers_nothing() {
        let mut users = MockUserRepository::new();
        let mut calls = 0;
        users.expect_find_many().times(2).returning(move |ids| {
            calls += 1;
            if calls == 1 {
                Err(RepoError::Unavailable(anyhow::anyhow!("down")))
            } else {
                Ok(ids.iter().map(user).collect())
            }
        });
        let known = KnownUsers::new(Arc::new(users));
        let id = UserId::generate();
        assert!(matches!(known.unknown(std::slice::from_ref(&id)).await, Err(RepoError::Unavailable(_))));
        assert!(known.unknown(std::slice::from_ref(&id)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_lookup_is_an_error_and_not_remembered() {
        let mut users = MockUserRepository::new();
        let mut calls = 0;
        users.expect_find_by_id().times(2).returning(move |id| {
            calls += 1;
            if calls == 1 {
                Err(RepoError::Unavailable(anyhow::anyhow!("down")))
            } else {
                Ok(Some(user(id)))
            }
        });
        let known = KnownUsers::new(Arc::new(users));
        let id = UserId::generate();
        assert!(matches!(known.exists(&id).await, Err(RepoError::Unavailable(_))));
        assert!(known.exists(&id).await.unwrap());
    }
}
