//! Users, by id and by lower-cased username.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use application::ports::{name_words, RepoError, RepoResult, SearchPrefix, UserQuery, UserRepository};
use async_trait::async_trait;
use domain::{User, UserId, Username};

use crate::{lock, MemoryStore};

#[derive(Default)]
pub(crate) struct Users {
    by_id: HashMap<UserId, User>,
    /// Lower-cased username to id: unique, and in the order listings use (byte order, as
    /// the databases compare the lower-cased text).
    by_username: BTreeMap<String, UserId>,
}

impl Users {
    fn insert(&mut self, user: &User) -> RepoResult<()> {
        let username = user.username.normalized();
        if self.by_id.contains_key(&user.id) || self.by_username.contains_key(&username) {
            return Err(RepoError::Conflict);
        }
        self.by_username.insert(username, user.id.clone());
        self.by_id.insert(user.id.clone(), user.clone());
        Ok(())
    }

    fn list(&self, query: &UserQuery) -> Vec<User> {
        let after = query.after_username.as_deref().unwrap_or("");
        self.by_username
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .filter(|(_, id)| **id != query.exclude)
            .filter_map(|(_, id)| self.by_id.get(id))
            .filter(|user| query.search.as_ref().is_none_or(|prefix| found_by(prefix, user)))
            .take(query.limit as usize)
            .cloned()
            .collect()
    }
}

/// Whether a search for `prefix` finds `user`: by the start of the lower-cased username or
/// of one of the [`name_words`].
fn found_by(prefix: &SearchPrefix, user: &User) -> bool {
    prefix.matches(&user.username.normalized())
        || name_words(user.full_name.as_str()).iter().any(|word| prefix.matches(word))
}

#[async_trait]
impl UserRepository for MemoryStore {
    async fn insert(&self, user: &User) -> RepoResult<()> {
        lock(&self.users).insert(user)
    }

    async fn find_by_id(&self, id: &UserId) -> RepoResult<Option<User>> {
        Ok(lock(&self.users).by_id.get(id).cloned())
    }

    async fn find_many(&self, ids: &[UserId]) -> RepoResult<Vec<User>> {
        let users = lock(&self.users);
        let mut seen = HashSet::new();
        Ok(ids.iter().filter(|id| seen.insert(*id)).filter_map(|id| users.by_id.get(id)).cloned().collect())
    }

    async fn find_by_username(&self, username: &Username) -> RepoResult<Option<User>> {
        let users = lock(&self.users);
        Ok(users.by_username.get(&username.normalized()).and_then(|id| users.by_id.get(id)).cloned())
    }

    async fn list(&self, query: &UserQuery) -> RepoResult<Vec<User>> {
        Ok(lock(&self.users).list(query))
    }
}
