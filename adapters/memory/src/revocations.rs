//! Revoked tokens, by their id, with when they would have expired anyway.

use std::collections::HashMap;

use application::ports::{RepoResult, Revocation, RevokedTokenRepository};
use async_trait::async_trait;
use domain::Timestamp;

use crate::{lock, MemoryStore};

#[derive(Default)]
pub(crate) struct Revocations(HashMap<String, Timestamp>);

#[async_trait]
impl RevokedTokenRepository for MemoryStore {
    async fn revoke(&self, token_id: &str, expires_at: Timestamp) -> RepoResult<()> {
        // Revoking twice keeps the first record, as the databases do.
        lock(&self.revoked).0.entry(token_id.to_owned()).or_insert(expires_at);
        Ok(())
    }

    async fn is_revoked(&self, token_id: &str) -> RepoResult<bool> {
        Ok(lock(&self.revoked).0.contains_key(token_id))
    }

    async fn active(&self, now: Timestamp) -> RepoResult<Vec<Revocation>> {
        Ok(lock(&self.revoked)
            .0
            .iter()
            .filter(|(_, expires_at)| **expires_at >= now)
            .map(|(token_id, expires_at)| Revocation { token_id: token_id.clone(), expires_at: *expires_at })
            .collect())
    }

    async fn purge_expired(&self, now: Timestamp) -> RepoResult<u64> {
        let mut revoked = lock(&self.revoked);
        let before = revoked.0.len();
        revoked.0.retain(|_, expires_at| *expires_at >= now);
        Ok((before - revoked.0.len()) as u64)
    }
}
