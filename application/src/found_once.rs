//! Store answers that, once "yes", stay "yes" (a user exists, two users share a
//! conversation: neither is ever deleted), remembered so that hot paths ask the store once.
//! A "no" is never remembered: it may turn into a "yes" at any moment, on any instance.

use std::future::Future;
use std::hash::Hash;

use crate::ports::RepoResult;

pub(crate) struct FoundOnce<K> {
    found: moka::sync::Cache<K, ()>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> FoundOnce<K> {
    /// Remembers at most `capacity` keys; the least used are forgotten first.
    pub(crate) fn new(capacity: u64) -> Self {
        Self { found: moka::sync::Cache::new(capacity) }
    }

    /// `true` if `key` was found before; otherwise what `ask` answers, remembered if `true`.
    /// A failed `ask` is an error and remembers nothing.
    pub(crate) async fn check<F>(&self, key: &K, ask: impl FnOnce() -> F) -> RepoResult<bool>
    where
        F: Future<Output = RepoResult<bool>>,
    {
        if self.found.contains_key(key) {
            return Ok(true);
        }
        let found = ask().await?;
        if found {
            self.found.insert(key.clone(), ());
        }
        Ok(found)
    }

    /// Whether `key` was found before.
    pub(crate) fn known(&self, key: &K) -> bool {
        self.found.contains_key(key)
    }

    /// Remembers that `key` was found (by a lookup of many keys at once).
    pub(crate) fn remember(&self, key: K) {
        self.found.insert(key, ());
    }
}
