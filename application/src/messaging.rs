//! Messaging: send a message, read a conversation's history, list conversations.

use std::sync::Arc;

use domain::{Conversation, Message, MessageBody, MessageId, ParticipantPair, UserId};

use crate::paging;
use crate::ports::{
    Clock, ConversationRepository, ConversationSummary, Event, MessageRepository, Notifier,
    RepoError, UserRepository,
};

/// What a caller of the messaging use cases can act on.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("{field} {message}")]
    Invalid { field: &'static str, message: String },
    #[error("user not found")]
    UserNotFound,
    #[error("you cannot send messages to yourself")]
    SelfConversation,
    #[error("storage is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

impl From<RepoError> for MessagingError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Unavailable(e) => Self::Unavailable(e),
            RepoError::Conflict => Self::Unexpected(anyhow::anyhow!("unexpected conflict")),
            RepoError::Unexpected(e) => Self::Unexpected(e),
        }
    }
}

/// A conversation page: `conversation` is `None` while the pair has exchanged nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationView {
    pub conversation: Option<Conversation>,
    pub messages: Vec<Message>,
}

pub struct MessagingService {
    users: Arc<dyn UserRepository>,
    conversations: Arc<dyn ConversationRepository>,
    messages: Arc<dyn MessageRepository>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
}

impl MessagingService {
    pub fn new(
        users: Arc<dyn UserRepository>,
        conversations: Arc<dyn ConversationRepository>,
        messages: Arc<dyn MessageRepository>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { users, conversations, messages, notifier, clock }
    }

    /// Stores the message, then announces it to the receiver's and the sender's connections.
    /// The announcement never happens for a message that was not stored, and a failed
    /// announcement does not fail the send: the message is in the history either way.
    pub async fn send(
        &self,
        sender: &UserId,
        receiver: &str,
        body: &str,
    ) -> Result<Message, MessagingError> {
        let pair = self.pair_with(sender, receiver)?;
        let body = MessageBody::parse(body).map_err(|e| MessagingError::Invalid {
            field: "message",
            message: e.to_string(),
        })?;
        let receiver = other_of(&pair, sender);
        if self.users.find_by_id(&receiver).await?.is_none() {
            return Err(MessagingError::UserNotFound);
        }

        let now = self.clock.now();
        let conversation = self
            .conversations
            .find_or_insert(&Conversation::start(pair, now))
            .await?;
        let message = Message {
            id: MessageId::generate(),
            conversation_id: conversation.id.clone(),
            sender_id: sender.clone(),
            receiver_id: receiver.clone(),
            body,
            created_at: now,
        };
        self.messages.insert(&message).await?;
        self.conversations.touch(&conversation.id, now).await?;

        let event = Event::NewMessage(message.clone());
        if let Err(error) = self.notifier.notify(&[receiver, sender.clone()], &event).await {
            tracing::warn!(error = %error, message_id = %message.id, "new message stored but not announced");
        }
        Ok(message)
    }

    /// The newest `limit` messages before `before` with `other`, oldest first.
    pub async fn history(
        &self,
        me: &UserId,
        other: &str,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ConversationView, MessagingError> {
        let pair = self.pair_with(me, other)?;
        let before = before
            .filter(|b| !b.is_empty())
            .map(|b| {
                MessageId::parse(b).map_err(|e| MessagingError::Invalid {
                    field: "before",
                    message: e.to_string(),
                })
            })
            .transpose()?;
        let other = other_of(&pair, me);
        if self.users.find_by_id(&other).await?.is_none() {
            return Err(MessagingError::UserNotFound);
        }
        let Some(conversation) = self.conversations.find_by_participants(&pair).await? else {
            return Ok(ConversationView { conversation: None, messages: Vec::new() });
        };
        let messages = self
            .messages
            .list_by_conversation(&conversation.id, before, paging::clamp(limit))
            .await?;
        Ok(ConversationView { conversation: Some(conversation), messages })
    }

    /// My conversations with their last message, most recent first.
    pub async fn conversations(
        &self,
        me: &UserId,
    ) -> Result<Vec<ConversationSummary>, MessagingError> {
        Ok(self.conversations.list_for_user(me).await?)
    }

    fn pair_with(&self, me: &UserId, other: &str) -> Result<ParticipantPair, MessagingError> {
        // An id that is not one of ours names nobody.
        let other = UserId::parse(other).map_err(|_| MessagingError::UserNotFound)?;
        ParticipantPair::new(me.clone(), other).map_err(|_| MessagingError::SelfConversation)
    }
}

fn other_of(pair: &ParticipantPair, me: &UserId) -> UserId {
    if pair.first() == me { pair.second() } else { pair.first() }.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{
        MockClock, MockConversationRepository, MockMessageRepository, MockNotifier,
        MockUserRepository, NotifyError,
    };
    use chrono::{TimeZone, Utc};
    use domain::{Avatar, FullName, PasswordHash, User, Username};

    fn now() -> domain::Timestamp {
        Utc.with_ymd_and_hms(2026, 5, 6, 7, 8, 9).unwrap()
    }

    fn user(id: &UserId) -> User {
        let username = Username::parse("someone").unwrap();
        User {
            id: id.clone(),
            full_name: FullName::parse("Some One").unwrap(),
            avatar: Avatar::default_for(&username, None),
            username,
            gender: None,
            password_hash: PasswordHash::new("h".into()),
            created_at: now(),
            updated_at: now(),
        }
    }

    struct Mocks {
        users: MockUserRepository,
        conversations: MockConversationRepository,
        messages: MockMessageRepository,
        notifier: MockNotifier,
    }

    impl Mocks {
        fn new() -> Self {
            Self {
                users: MockUserRepository::new(),
                conversations: MockConversationRepository::new(),
                messages: MockMessageRepository::new(),
                notifier: MockNotifier::new(),
            }
        }

        fn receiver_exists(&mut self) {
            self.users.expect_find_by_id().returning(|id| Ok(Some(user(id))));
        }

        fn conversation_is_found_or_made(&mut self) {
            self.conversations.expect_find_or_insert().returning(|c| Ok(c.clone()));
        }

        fn service(self) -> MessagingService {
            let mut clock = MockClock::new();
            clock.expect_now().returning(now);
            MessagingService::new(
                Arc::new(self.users),
                Arc::new(self.conversations),
                Arc::new(self.messages),
                Arc::new(self.notifier),
                Arc::new(clock),
            )
        }
    }

    #[tokio::test]
    async fn send_stores_then_announces_to_both_sides() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversation_is_found_or_made();
        let mut seq = mockall::Sequence::new();
        let (a, b) = (alice.clone(), bob.clone());
        m.messages
            .expect_insert()
            .withf(move |msg| {
                msg.sender_id == a && msg.receiver_id == b && msg.body.as_str() == " hi "
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(()));
        m.conversations
            .expect_touch()
            .withf(|_, at| *at == now())
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        let (a, b) = (alice.clone(), bob.clone());
        m.notifier
            .expect_notify()
            .withf(move |users, event| {
                users.len() == 2
                    && users.contains(&a)
                    && users.contains(&b)
                    && matches!(event, Event::NewMessage(msg) if msg.body.as_str() == " hi ")
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));

        let message = m.service().send(&alice, bob.as_str(), " hi ").await.unwrap();
        assert_eq!(message.created_at, now());
    }

    #[tokio::test]
    async fn send_to_an_unknown_receiver_stores_and_announces_nothing() {
        let mut m = Mocks::new();
        m.users.expect_find_by_id().returning(|_| Ok(None));
        m.conversations.expect_find_or_insert().never();
        m.messages.expect_insert().never();
        m.notifier.expect_notify().never();
        let err = m
            .service()
            .send(&UserId::generate(), UserId::generate().as_str(), "hi")
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::UserNotFound));
    }

    #[tokio::test]
    async fn send_to_a_malformed_id_is_an_unknown_receiver() {
        let err = Mocks::new()
            .service()
            .send(&UserId::generate(), "{\"$gt\":\"\"}", "hi")
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::UserNotFound));
    }

    #[tokio::test]
    async fn send_to_oneself_is_refused() {
        let me = UserId::generate();
        let err = Mocks::new().service().send(&me, me.as_str(), "hi").await.unwrap_err();
        assert!(matches!(err, MessagingError::SelfConversation));
    }

    #[tokio::test]
    async fn send_of_a_blank_message_is_invalid() {
        let err = Mocks::new()
            .service()
            .send(&UserId::generate(), UserId::generate().as_str(), "   ")
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Invalid { field: "message", .. }));
    }

    #[tokio::test]
    async fn send_is_not_announced_when_storing_fails() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversation_is_found_or_made();
        m.messages
            .expect_insert()
            .returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("disk gone"))));
        m.notifier.expect_notify().never();
        let err = m
            .service()
            .send(&UserId::generate(), UserId::generate().as_str(), "hi")
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Unavailable(_)));
    }

    #[tokio::test]
    async fn send_succeeds_even_when_the_announcement_fails() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversation_is_found_or_made();
        m.messages.expect_insert().returning(|_| Ok(()));
        m.conversations.expect_touch().returning(|_, _| Ok(()));
        m.notifier
            .expect_notify()
            .times(1)
            .returning(|_, _| Err(NotifyError(anyhow::anyhow!("bus down"))));
        let sent = m.service().send(&UserId::generate(), UserId::generate().as_str(), "hi").await;
        assert!(sent.is_ok());
    }

    #[tokio::test]
    async fn send_uses_the_existing_conversation_of_the_pair() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let existing = Conversation::start(ParticipantPair::new(alice.clone(), bob.clone()).unwrap(), now());
        let existing_id = existing.id.clone();
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversations.expect_find_or_insert().returning(move |_| Ok(existing.clone()));
        let id = existing_id.clone();
        m.messages
            .expect_insert()
            .withf(move |msg| msg.conversation_id == id)
            .returning(|_| Ok(()));
        m.conversations.expect_touch().returning(|_, _| Ok(()));
        m.notifier.expect_notify().returning(|_, _| Ok(()));
        let message = m.service().send(&alice, bob.as_str(), "again").await.unwrap();
        assert_eq!(message.conversation_id, existing_id);
    }

    #[tokio::test]
    async fn history_without_a_conversation_is_empty() {
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversations.expect_find_by_participants().returning(|_| Ok(None));
        m.messages.expect_list_by_conversation().never();
        let view = m
            .service()
            .history(&UserId::generate(), UserId::generate().as_str(), None, None)
            .await
            .unwrap();
        assert_eq!(view, ConversationView { conversation: None, messages: vec![] });
    }

    #[tokio::test]
    async fn history_pages_before_a_message_with_a_capped_limit() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let conversation = Conversation::start(ParticipantPair::new(alice.clone(), bob.clone()).unwrap(), now());
        let conversation_id = conversation.id.clone();
        let before = MessageId::generate();
        let expected_before = before.clone();
        let mut m = Mocks::new();
        m.receiver_exists();
        m.conversations
            .expect_find_by_participants()
            .returning(move |_| Ok(Some(conversation.clone())));
        m.messages
            .expect_list_by_conversation()
            .withf(move |id, b, limit| {
                *id == conversation_id && *b == Some(expected_before.clone()) && *limit == 200
            })
            .returning(|_, _, _| Ok(vec![]));
        let view = m
            .service()
            .history(&alice, bob.as_str(), Some(before.as_str()), Some(5000))
            .await
            .unwrap();
        assert!(view.conversation.is_some());
    }

    #[tokio::test]
    async fn history_rejects_a_malformed_before() {
        let err = Mocks::new()
            .service()
            .history(&UserId::generate(), UserId::generate().as_str(), Some("nope"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Invalid { field: "before", .. }));
    }

    #[tokio::test]
    async fn history_with_an_unknown_user_is_not_found() {
        let mut m = Mocks::new();
        m.users.expect_find_by_id().returning(|_| Ok(None));
        let err = m
            .service()
            .history(&UserId::generate(), UserId::generate().as_str(), None, None)
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::UserNotFound));
    }

    #[tokio::test]
    async fn conversations_lists_mine() {
        let me = UserId::generate();
        let expected = me.clone();
        let mut m = Mocks::new();
        m.conversations
            .expect_list_for_user()
            .withf(move |u| *u == expected)
            .returning(|_| Ok(vec![]));
        assert!(m.service().conversations(&me).await.unwrap().is_empty());
    }
}
