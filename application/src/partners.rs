//! Which pairs of users share a conversation, remembered: every typing notice is checked
//! (a client may send dozens a second), and the store should not be asked each time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::ParticipantPair;

use crate::ports::{ConversationRepository, RepoResult};

/// Looks pairs up through the repository. A pair found sharing a conversation is
/// remembered for good (conversations are never deleted); a pair found without one only
/// for [`Partners::UNKNOWN_FOR`], so that a first message lets typing through soon after,
/// while a client aiming notices at strangers costs one lookup per pair in that time.
pub(crate) struct Partners {
    conversations: Arc<dyn ConversationRepository>,
    known: moka::sync::Cache<ParticipantPair, bool>,
}

/// Positive answers never expire, negative ones after [`Partners::UNKNOWN_FOR`].
struct AnswerExpiry;

impl moka::Expiry<ParticipantPair, bool> for AnswerExpiry {
    fn expire_after_create(&self, _: &ParticipantPair, share: &bool, _: Instant) -> Option<Duration> {
        (!share).then_some(Partners::UNKNOWN_FOR)
    }
}

impl Partners {
    /// How many pairs are remembered at most; the least used are forgotten first.
    const CAPACITY: u64 = 100_000;
    /// How long a pair without a conversation is taken to still have none.
    const UNKNOWN_FOR: Duration = Duration::from_secs(3);

    pub(crate) fn new(conversations: Arc<dyn ConversationRepository>) -> Self {
        let known = moka::sync::Cache::builder().max_capacity(Self::CAPACITY).expire_after(AnswerExpiry).build();
        Self { conversations, known }
    }

    /// Whether the pair has a conversation, that is at least one message between them.
    pub(crate) async fn share_conversation(&self, pair: &ParticipantPair) -> RepoResult<bool> {
        if let Some(share) = self.known.get(pair) {
            return Ok(share);
        }
        let share = self.conversations.find_by_participants(pair).await?.is_some();
        self.known.insert(pair.clone(), share);
        Ok(share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockConversationRepository, RepoError};
    use domain::{Conversation, UserId};

    fn pair() -> ParticipantPair {
        ParticipantPair::new(UserId::generate(), UserId::generate()).unwrap()
    }

    #[tokio::test]
    async fn a_pair_with_a_conversation_is_looked_up_once() {
        let mut conversations = MockConversationRepository::new();
        conversations
            .expect_find_by_participants()
            .times(1)
            .returning(|pair| Ok(Some(Conversation::start(pair.clone(), chrono::Utc::now()))));
        let partners = Partners::new(Arc::new(conversations));
        let pair = pair();
        for _ in 0..3 {
            assert!(partners.share_conversation(&pair).await.unwrap());
        }
    }

    #[tokio::test]
    async fn strangers_are_remembered_too_so_repeated_notices_cost_one_lookup() {
        let mut conversations = MockConversationRepository::new();
        conversations.expect_find_by_participants().times(1).returning(|_| Ok(None));
        let partners = Partners::new(Arc::new(conversations));
        let pair = pair();
        for _ in 0..50 {
            assert!(!partners.share_conversation(&pair).await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_failed_lookup_is_an_error_and_not_remembered() {
        let mut conversations = MockConversationRepository::new();
        let mut calls = 0;
        conversations.expect_find_by_participants().times(2).returning(move |pair| {
            calls += 1;
            if calls == 1 {
                Err(RepoError::Unavailable(anyhow::anyhow!("down")))
            } else {
                Ok(Some(Conversation::start(pair.clone(), chrono::Utc::now())))
            }
        });
        let partners = Partners::new(Arc::new(conversations));
        let pair = pair();
        assert!(partners.share_conversation(&pair).await.is_err());
        assert!(partners.share_conversation(&pair).await.unwrap());
    }
}
