//! Presence for a single instance: a count of open connections per user.

use std::collections::HashMap;
use std::sync::Mutex;

use application::ports::{Presence, RepoResult};
use async_trait::async_trait;
use domain::UserId;

#[derive(Default)]
pub struct InMemoryPresence {
    connections: Mutex<HashMap<UserId, usize>>,
}

impl InMemoryPresence {
    pub fn new() -> Self {
        Self::default()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        // A poisoned map is still a consistent map of counts: keep serving.
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Presence for InMemoryPresence {
    async fn connected(&self, user: &UserId) -> RepoResult<bool> {
        let mut counts = self.counts();
        let count = counts.entry(user.clone()).or_insert(0);
        *count += 1;
        Ok(*count == 1)
    }

    async fn disconnected(&self, user: &UserId) -> RepoResult<bool> {
        let mut counts = self.counts();
        match counts.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                Ok(false)
            }
            Some(_) => {
                counts.remove(user);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn online(&self) -> RepoResult<Vec<UserId>> {
        Ok(self.counts().keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_is_online_until_the_last_connection_closes() {
        let presence = InMemoryPresence::new();
        let user = UserId::generate();
        assert!(presence.connected(&user).await.unwrap());
        assert!(!presence.connected(&user).await.unwrap());
        assert_eq!(presence.online().await.unwrap(), vec![user.clone()]);
        assert!(!presence.disconnected(&user).await.unwrap());
        assert!(presence.disconnected(&user).await.unwrap());
        assert!(presence.online().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unknown_disconnect_changes_nothing() {
        let presence = InMemoryPresence::new();
        assert!(!presence.disconnected(&UserId::generate()).await.unwrap());
    }
}
