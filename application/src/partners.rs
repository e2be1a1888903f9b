//! Which pairs of users share a conversation, remembered: every typing notice is checked
//! (a client may send dozens a second), and the store should not be asked each time.

use std::sync::Arc;

use domain::ParticipantPair;

use crate::found_once::FoundOnce;
use crate::ports::{ConversationRepository, RepoResult};

/// Looks pairs up through the repository and remembers those that share a conversation
/// (conversations are never deleted). A pair without one is asked again at its next notice:
/// its first message may come at any moment, on this instance or another, and typing must
/// work right after it. That costs a stranger's notices one indexed lookup each, which the
/// per-socket frame budget bounds (a notice aimed at random ids would cost as much anyway).
pub(crate) struct Partners {
    conversations: Arc<dyn ConversationRepository>,
    known: FoundOnce<ParticipantPair>,
}

impl Partners {
    /// How many pairs are remembered at most; the least used are forgotten first.
    const CAPACITY: u64 = 100_000;

    pub(crate) fn new(conversations: Arc<dyn ConversationRepository>) -> Self {
        Self { conversations, known: FoundOnce::new(Self::CAPACITY) }
    }

    /// Whether the pair has a conversation, that is at least one message between them.
    pub(crate) async fn share_conversation(&self, pair: &ParticipantPair) -> RepoResult<bool> {
        self.known
            .check(pair, || async { Ok(self.conversations.find_by_participants(pair).await?.is_some()) })
            .await
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
    async fn strangers_are_asked_again_so_a_first_message_lets_typing_through_at_once() {
        let mut conversations = MockConversationRepository::new();
        let mut calls = 0;
        conversations.expect_find_by_participants().times(3).returning(move |pair| {
            calls += 1;
            // The first message between them arrives before the third notice.
            Ok((calls == 3).then(|| Conversation::start(pair.clone(), chrono::Utc::now())))
        });
        let partners = Partners::new(Arc::new(conversations));
        let pair = pair();
        assert!(!partners.share_conversation(&pair).await.unwrap());
        assert!(!partners.share_conversation(&pair).await.unwrap());
        assert!(partners.share_conversation(&pair).await.unwrap());
        assert!(partners.share_conversation(&pair).await.unwrap(), "remembered from now on");
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
