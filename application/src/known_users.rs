//! Which user ids name a user, remembered: a send checks its receiver every time, and the
//! answer for a user once found never changes (users are never deleted).

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
