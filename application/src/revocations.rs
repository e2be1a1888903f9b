//! Which tokens are revoked, answered from memory.
//!
//! Every authenticated request asks whether its token was revoked (logged out). The store
//! keeps the revocations for good; this keeps a copy of the unexpired ones in memory, so
//! that the answer costs no database round trip. The copy is trusted only while it is
//! known to be complete:
//!
//! - It starts incomplete and becomes complete when [`Revocations::load`] has read every
//!   active revocation from the store while the feed was live.
//! - Revocations made here are added at once; those made on other instances arrive through
//!   the [`RevocationFeed`] (a single instance has no feed: nothing is made elsewhere).
//! - When the feed is cut, the copy is incomplete again and every question goes to the
//!   store, until the feed is back and the next load has caught up with what was missed.
//!
//! Across instances a logout takes effect as soon as the feed brings it (a Redis publish:
//! well under a millisecond on a healthy network), not in the same instant.
//!
//! Sockets authenticate once, at their handshake: every revocation this learns of (made
//! here, reported by the feed, or found in the store by a load after a cut) ends the
//! connections opened with that token, through the [`TokenConnections`] port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use domain::Timestamp;

use crate::ports::{
    RepoResult, Revocation, RevocationFeed, RevocationListener, RevokedTokenRepository, TokenConnections,
};

pub struct Revocations {
    store: Arc<dyn RevokedTokenRepository>,
    feed: Option<Arc<dyn RevocationFeed>>,
    /// Where the sockets opened with a token are ended once it is revoked; `None` where
    /// no socket is ever opened.
    connections: Option<Arc<dyn TokenConnections>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Revoked token ids and when each token expires.
    revoked: HashMap<String, Timestamp>,
    /// `revoked` holds every unexpired revocation: a token not in it is not revoked.
    complete: bool,
    /// Revocations made elsewhere reach `revoked` (always true without a feed).
    feed_live: bool,
    /// Counts the times the feed went live; a load completes the copy only if the feed
    /// stayed live all along, that is if this did not change and the feed is still live.
    epoch: u64,
}

impl Revocations {
    /// `feed` is `None` for a single instance: every revocation is then made here.
    pub fn new(store: Arc<dyn RevokedTokenRepository>, feed: Option<Arc<dyn RevocationFeed>>) -> Arc<Self> {
        Self::build(store, feed, None)
    }

    /// As [`Revocations::new`], for a server that holds sockets: each revocation also ends
    /// the `connections` opened with the token.
    pub fn ending_connections(
        store: Arc<dyn RevokedTokenRepository>,
        feed: Option<Arc<dyn RevocationFeed>>,
        connections: Arc<dyn TokenConnections>,
    ) -> Arc<Self> {
        Self::build(store, feed, Some(connections))
    }

    fn build(
        store: Arc<dyn RevokedTokenRepository>,
        feed: Option<Arc<dyn RevocationFeed>>,
        connections: Option<Arc<dyn TokenConnections>>,
    ) -> Arc<Self> {
        let state = State { feed_live: feed.is_none(), ..State::default() };
        let revocations = Arc::new(Self { store, feed: feed.clone(), connections, state: Mutex::new(state) });
        if let Some(feed) = feed {
            feed.listen(revocations.clone());
        }
        revocations
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change of the state is a few assignments: a panic elsewhere leaves it whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the copy in memory is complete, so that questions need no store.
    #[cfg(test)]
    fn is_complete(&self) -> bool {
        self.state().complete
    }

    /// Reads every active revocation from the store, unless the copy is complete already
    /// or the feed is down (then a load could miss what is made elsewhere meanwhile).
    /// Called at start and then periodically; cheap when there is nothing to do.
    pub async fn load(&self, now: Timestamp) -> RepoResult<()> {
        let epoch = {
            let state = self.state();
            if state.complete || !state.feed_live {
                return Ok(());
            }
            state.epoch
        };
        let active = self.store.active(now).await?;
        // Those not held yet may have been made elsewhere while the feed was cut: their
        // sockets here are still open.
        let mut learned = Vec::new();
        {
            let mut state = self.state();
            for revocation in active {
                if state.revoked.insert(revocation.token_id.clone(), revocation.expires_at).is_none() {
                    learned.push(revocation.token_id);
                }
            }
            // Whatever was revoked elsewhere after the feed went live arrived through it.
            if state.feed_live && state.epoch == epoch {
                state.complete = true;
                tracing::debug!(revoked = state.revoked.len(), "revocations held in memory");
            }
        }
        self.end_connections(&learned);
        Ok(())
    }

    /// Ends the sockets opened with these tokens (called outside the state lock).
    fn end_connections(&self, token_ids: &[String]) {
        if let (Some(connections), false) = (&self.connections, token_ids.is_empty()) {
            connections.end_revoked(token_ids);
        }
    }

    pub async fn is_revoked(&self, token_id: &str) -> RepoResult<bool> {
        {
            let state = self.state();
            if state.revoked.contains_key(token_id) {
                return Ok(true);
            }
            if state.complete {
                return Ok(false);
            }
        }
        self.store.is_revoked(token_id).await
    }

    /// Revokes a token: stored first (so it holds on every instance and after a restart),
    /// then held here and announced to the other instances. A failed announcement does not
    /// fail the revocation: the feed retries it, and instances that were cut off from the
    /// feed read it from the store.
    pub async fn revoke(&self, revocation: Revocation) -> RepoResult<()> {
        self.store.revoke(&revocation.token_id, revocation.expires_at).await?;
        self.state().revoked.insert(revocation.token_id.clone(), revocation.expires_at);
        self.end_connections(std::slice::from_ref(&revocation.token_id));
        if let Some(feed) = &self.feed {
            if let Err(error) = feed.announce(&revocation).await {
                tracing::warn!(error = %error, "revocation stored but not yet announced to the other instances");
            }
        }
        Ok(())
    }

    /// Forgets expired revocations (their tokens fail verification anyway) in the store and
    /// here; returns how many the store purged.
    pub async fn purge_expired(&self, now: Timestamp) -> RepoResult<u64> {
        self.state().revoked.retain(|_, expires_at| *expires_at >= now);
        self.store.purge_expired(now).await
    }
}

impl RevocationListener for Revocations {
    fn revoked_elsewhere(&self, revocation: Revocation) {
        self.state().revoked.insert(revocation.token_id.clone(), revocation.expires_at);
        self.end_connections(&[revocation.token_id]);
    }

    fn feed_live(&self) {
        let mut state = self.state();
        state.feed_live = true;
        state.epoch += 1;
    }

    fn feed_lost(&self) {
        let mut state = self.state();
        state.feed_live = false;
        state.complete = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockRevocationFeed, MockRevokedTokenRepository, MockTokenConnections, NotifyError};
    use chrono::{Duration, TimeZone, Utc};
    use mockall::predicate::eq;

    fn now() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 5, 6, 7, 8, 9).unwrap()
    }

    fn revocation(id: &str) -> Revocation {
        Revocation { token_id: id.into(), expires_at: now() + Duration::hours(1) }
    }

    /// A store holding `active`, answering `is_revoked` only for ids in `lookups` (any
    /// other lookup fails the test).
    fn store(
        active: Vec<Revocation>,
        lookups: &'static [(&'static str, bool)],
    ) -> MockRevokedTokenRepository {
        let mut store = MockRevokedTokenRepository::new();
        store.expect_active().returning(move |_| Ok(active.clone()));
        store.expect_is_revoked().returning(move |id| {
            lookups
                .iter()
                .find(|(known, _)| *known == id)
                .map(|(_, revoked)| Ok(*revoked))
                .unwrap_or_else(|| panic!("unexpected store lookup of {id}"))
        });
        store
    }

    /// A feed that keeps the listener it is given, for the test to drive.
    fn feed(listener: Arc<Mutex<Option<Arc<dyn RevocationListener>>>>) -> MockRevocationFeed {
        let mut feed = MockRevocationFeed::new();
        feed.expect_listen().returning(move |l| *listener.lock().unwrap() = Some(l));
        feed
    }

    #[tokio::test]
    async fn a_single_instance_answers_from_memory_once_loaded() {
        let revocations = Revocations::new(Arc::new(store(vec![revocation("old")], &[("a", false)])), None);
        // Before the first load, the store answers.
        assert!(!revocations.is_revoked("a").await.unwrap());
        revocations.load(now()).await.unwrap();
        assert!(revocations.is_complete());
        assert!(revocations.is_revoked("old").await.unwrap());
        // Not in the copy: not revoked, and the store is not asked (it would panic).
        assert!(!revocations.is_revoked("b").await.unwrap());
    }

    #[tokio::test]
    async fn a_revocation_made_here_holds_at_once_and_is_stored_first() {
        let mut store = store(Vec::new(), &[]);
        store
            .expect_revoke()
            .with(eq("t1"), eq(revocation("t1").expires_at))
            .times(1)
            .returning(|_, _| Ok(()));
        let revocations = Revocations::new(Arc::new(store), None);
        revocations.load(now()).await.unwrap();
        revocations.revoke(revocation("t1")).await.unwrap();
        assert!(revocations.is_revoked("t1").await.unwrap());
    }

    #[tokio::test]
    async fn a_failed_store_write_revokes_nothing() {
        let mut store = store(Vec::new(), &[]);
        store
            .expect_revoke()
            .returning(|_, _| Err(crate::ports::RepoError::Unavailable(anyhow::anyhow!("down"))));
        let revocations = Revocations::new(Arc::new(store), None);
        revocations.load(now()).await.unwrap();
        assert!(revocations.revoke(revocation("t1")).await.is_err());
        assert!(!revocations.is_revoked("t1").await.unwrap());
    }

    #[tokio::test]
    async fn with_a_feed_the_copy_is_trusted_only_while_the_feed_is_live() {
        let listener = Arc::new(Mutex::new(None));
        let revocations = Revocations::new(
            Arc::new(store(vec![revocation("old")], &[("x", false), ("y", true)])),
            Some(Arc::new(feed(listener.clone()))),
        );
        let listener = listener.lock().unwrap().clone().expect("registered with the feed");
        // The feed is not live yet: loading does nothing, the store answers.
        revocations.load(now()).await.unwrap();
        assert!(!revocations.is_complete());
        assert!(!revocations.is_revoked("x").await.unwrap());

        listener.feed_live();
        revocations.load(now()).await.unwrap();
        assert!(revocations.is_complete());
        assert!(revocations.is_revoked("old").await.unwrap());
        listener.revoked_elsewhere(revocation("elsewhere"));
        assert!(revocations.is_revoked("elsewhere").await.unwrap());

        // Cut off: what is revoked elsewhere now may not arrive, so the store answers.
        listener.feed_lost();
        assert!(!revocations.is_complete());
        assert!(revocations.is_revoked("y").await.unwrap());
        // Back: complete again after the next load.
        listener.feed_live();
        assert!(!revocations.is_complete());
        revocations.load(now()).await.unwrap();
        assert!(revocations.is_complete());
    }

    #[tokio::test]
    async fn a_load_overtaken_by_a_cut_does_not_complete_the_copy() {
        let listener: Arc<Mutex<Option<Arc<dyn RevocationListener>>>> = Arc::new(Mutex::new(None));
        let mut store = MockRevokedTokenRepository::new();
        let during_load = listener.clone();
        store.expect_active().times(1).returning(move |_| {
            // The feed drops and comes back while the store is being read.
            let listener = during_load.lock().unwrap().clone().unwrap();
            listener.feed_lost();
            listener.feed_live();
            Ok(Vec::new())
        });
        let revocations = Revocations::new(Arc::new(store), Some(Arc::new(feed(listener.clone()))));
        listener.lock().unwrap().clone().unwrap().feed_live();
        revocations.load(now()).await.unwrap();
        assert!(!revocations.is_complete());
    }

    #[tokio::test]
    async fn a_revocation_is_announced_and_a_failed_announcement_is_not_an_error() {
        let mut store = store(Vec::new(), &[]);
        store.expect_revoke().returning(|_, _| Ok(()));
        let mut feed = MockRevocationFeed::new();
        feed.expect_listen().return_const(());
        feed.expect_announce()
            .withf(|r| r.token_id == "t1")
            .times(1)
            .returning(|_| Err(NotifyError(anyhow::anyhow!("bus down"))));
        let revocations = Revocations::new(Arc::new(store), Some(Arc::new(feed)));
        revocations.revoke(revocation("t1")).await.unwrap();
        assert!(revocations.is_revoked("t1").await.unwrap());
    }

    /// Connections that expect to be ended for exactly `expected`, in that order.
    fn connections(expected: &[&[&str]]) -> MockTokenConnections {
        let mut connections = MockTokenConnections::new();
        let mut sequence = mockall::Sequence::new();
        for ids in expected {
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            connections
                .expect_end_revoked()
                .withf(move |ended| ended == ids.as_slice())
                .times(1)
                .in_sequence(&mut sequence)
                .return_const(());
        }
        connections
    }

    #[tokio::test]
    async fn a_revocation_made_here_ends_the_sockets_of_the_token_after_storing_it() {
        let mut store = store(Vec::new(), &[]);
        store.expect_revoke().times(1).returning(|_, _| Ok(()));
        let revocations =
            Revocations::ending_connections(Arc::new(store), None, Arc::new(connections(&[&["t1"]])));
        revocations.revoke(revocation("t1")).await.unwrap();
    }

    #[tokio::test]
    async fn a_revocation_that_failed_to_store_ends_nothing() {
        let mut store = store(Vec::new(), &[]);
        store
            .expect_revoke()
            .returning(|_, _| Err(crate::ports::RepoError::Unavailable(anyhow::anyhow!("down"))));
        let revocations = Revocations::ending_connections(Arc::new(store), None, Arc::new(connections(&[])));
        assert!(revocations.revoke(revocation("t1")).await.is_err());
    }

    #[tokio::test]
    async fn revocations_from_the_feed_and_those_a_load_finds_after_a_cut_end_their_sockets() {
        let listener = Arc::new(Mutex::new(None));
        // The store holds "old" from the start, and "missed" once the feed was cut.
        let active = Arc::new(Mutex::new(vec![revocation("old")]));
        let mut store = MockRevokedTokenRepository::new();
        let listed = active.clone();
        store.expect_active().returning(move |_| Ok(listed.lock().unwrap().clone()));
        let ended = connections(&[&["old"], &["elsewhere"], &["missed"]]);
        let revocations = Revocations::ending_connections(
            Arc::new(store),
            Some(Arc::new(feed(listener.clone()))),
            Arc::new(ended),
        );
        let listener = listener.lock().unwrap().clone().expect("registered with the feed");
        listener.feed_live();
        revocations.load(now()).await.unwrap();
        listener.revoked_elsewhere(revocation("elsewhere"));

        listener.feed_lost();
        active.lock().unwrap().push(revocation("missed"));
        listener.feed_live();
        // Only what was not held yet: "old" and "elsewhere" were ended already.
        revocations.load(now()).await.unwrap();
    }

    #[tokio::test]
    async fn expired_revocations_are_forgotten() {
        let mut store = store(Vec::new(), &[]);
        store.expect_purge_expired().with(eq(now() + Duration::hours(2))).returning(|_| Ok(1));
        let revocations = Revocations::new(Arc::new(store), None);
        revocations.load(now()).await.unwrap();
        revocations.revoked_elsewhere(revocation("t1"));
        assert_eq!(revocations.purge_expired(now() + Duration::hours(2)).await.unwrap(), 1);
        assert!(!revocations.is_revoked("t1").await.unwrap());
    }
}
