//! The account and messaging use cases over the in-memory reference store, with the real
//! bcrypt and JWT adapters: what the services do to state, asserted on state (what a later
//! call reads back), where the mockall tests in `application` assert calls.
//!
//! They live here rather than in `application` because that crate cannot depend on an
//! adapter: the store would be built against a second copy of the ports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use application::ports::{Clock, Event, Notifier, NotifyError, SearchPrefix, SystemClock};
use application::{AccountError, AccountService, MessagingError, MessagingService, NewAccount, Revocations};
use async_trait::async_trait;
use chat_memory::MemoryStore;
use domain::{ClientMessageId, Cursor, FullName, Message, MessageBody, Password, User, UserId, Username};
use secrecy::SecretString;

/// Both services over one fresh memory store, and what they announced.
struct World {
    accounts: AccountService,
    messaging: MessagingService,
    announced: Arc<Announced>,
}

/// Every event the messaging service handed to the notifier, with its recipients.
#[derive(Default)]
struct Announced(Mutex<Vec<(Vec<UserId>, Event)>>);

#[async_trait]
impl Notifier for Announced {
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError> {
        self.0.lock().expect("no test panics while holding it").push((users.to_vec(), event.clone()));
        Ok(())
    }

    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError> {
        self.notify(&[], event).await
    }
}

impl Announced {
    /// The cursor each `newMessage` event carried, by recipient and message body.
    fn cursors(&self) -> Vec<(UserId, String, Cursor)> {
        let events = self.0.lock().expect("no test panics while holding it");
        events
            .iter()
            .filter_map(|(users, event)| match (users.as_slice(), event) {
                ([user], Event::NewMessage { message, cursor }) => {
                    Some((user.clone(), message.body.as_str().to_owned(), *cursor))
                }
                _ => None,
            })
            .collect()
    }
}

impl World {
    fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let announced = Arc::new(Announced::default());
        let secret = SecretString::from("use-case-test-secret-use-case-test-secret");
        let accounts = AccountService::new(
            store.clone(),
            Revocations::new(store.clone(), None),
            // The cheapest cost bcrypt allows: these tests are about state, not hashing.
            Arc::new(chat_bcrypt::BcryptHasher::new(4, None)),
            Arc::new(chat_jwt::JwtTokenService::new(&secret, Duration::from_secs(3600))),
            clock.clone(),
        );
        let messaging = MessagingService::new(store.clone(), store.clone(), store, announced.clone(), clock);
        Self { accounts, messaging, announced }
    }

    /// Registers `username` with [`PASSWORD`] and the full name `full_name`.
    async fn register_named(&self, username: &str, full_name: &str) -> User {
        let account = NewAccount {
            full_name: FullName::parse(full_name).expect("a valid full name"),
            username: Username::parse(username).expect("a valid username"),
            password: Password::parse(PASSWORD).expect("a valid password"),
            gender: None,
            avatar: None,
        };
        self.accounts.register(account).await.expect("registering").0
    }

    async fn register(&self, username: &str) -> User {
        self.register_named(username, "Test User").await
    }

    async fn send(&self, from: &User, to: &User, text: &str) -> Message {
        let sent = self.messaging.send(&from.id, &to.id, body(text), None).await.expect("sending");
        assert!(sent.created);
        sent.message
    }
}

const PASSWORD: &str = "correct horse battery";

fn body(text: &str) -> MessageBody {
    MessageBody::parse(text).expect("a valid message body")
}

fn client_id(raw: &str) -> Option<ClientMessageId> {
    Some(ClientMessageId::parse(raw).expect("a valid client message id"))
}

fn usernames(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Accounts

#[tokio::test]
async fn a_registered_user_logs_in_in_any_case_and_lists_the_others() {
    let world = World::new();
    let alice = world.register("Alice").await;
    world.register_named("carol", "Carol Danvers").await;
    world.register("bob").await;

    let (user, token) = world.accounts.login("ALICE", PASSWORD).await.expect("logging in");
    assert_eq!(user, alice);
    let session = world.accounts.authenticate(&token.token).await.expect("a valid token");
    assert_eq!(session.user_id(), &alice.id);

    let everyone = world.accounts.list_users(&alice.id, None, None, None).await.unwrap();
    assert_eq!(usernames(&everyone.users), ["bob", "carol"]);
    let found =
        world.accounts.list_users(&alice.id, Some(SearchPrefix::new("DAN")), None, None).await.unwrap();
    assert_eq!(usernames(&found.users), ["carol"]);
    let first = world.accounts.list_users(&alice.id, None, Some(1), None).await.unwrap();
    assert_eq!(usernames(&first.users), ["bob"]);
    let after = Username::parse("bob").unwrap();
    let next = world.accounts.list_users(&alice.id, None, Some(1), Some(&after)).await.unwrap();
    assert_eq!(usernames(&next.users), ["carol"]);
}

#[tokio::test]
async fn a_username_taken_in_any_case_is_refused_and_the_first_account_stays() {
    let world = World::new();
    let dave = world.register("Dave").await;
    let again = NewAccount {
        full_name: FullName::parse("Other Dave").unwrap(),
        username: Username::parse("dave").unwrap(),
        password: Password::parse("another password").unwrap(),
        gender: None,
        avatar: None,
    };
    assert!(matches!(world.accounts.register(again).await, Err(AccountError::UsernameTaken)));
    assert_eq!(world.accounts.login("dave", PASSWORD).await.unwrap().0, dave);
    assert!(matches!(
        world.accounts.login("dave", "another password").await,
        Err(AccountError::InvalidCredentials)
    ));
}

#[tokio::test]
async fn a_logged_out_token_no_longer_authenticates_but_a_new_login_does() {
    let world = World::new();
    world.register("erin").await;
    let (_, token) = world.accounts.login("erin", PASSWORD).await.unwrap();
    let session = world.accounts.authenticate(&token.token).await.unwrap();

    world.accounts.logout(&session).await.expect("logging out");
    assert!(matches!(world.accounts.authenticate(&token.token).await, Err(AccountError::Unauthenticated)));
    let (_, fresh) = world.accounts.login("erin", PASSWORD).await.unwrap();
    world.accounts.authenticate(&fresh.token).await.expect("a new token is good");
}

// ---------------------------------------------------------------------------------------------
// Messaging

#[tokio::test]
async fn sent_messages_read_the_same_in_the_history_the_sync_the_list_and_the_events() {
    let world = World::new();
    let (ann, ben, cat) =
        (world.register("ann").await, world.register("ben").await, world.register("cat").await);
    let hi = world.send(&ann, &ben, "hi").await;
    let hello = world.send(&ben, &ann, "hello").await;
    world.send(&cat, &ben, "elsewhere").await;

    let history = world.messaging.history(&ann.id, &ben.id, None, None).await.unwrap();
    assert_eq!(history.messages, [hi.clone(), hello.clone()]);
    let conversation = history.conversation.expect("the pair's conversation");
    assert!(hi.conversation_id == conversation.id && hello.conversation_id == conversation.id);

    // Ben's stream holds both conversations, in the order stored, at consecutive positions.
    let sync = world.messaging.sync(&ben.id, Cursor::START, None).await.unwrap();
    let streamed: Vec<Message> = sync.items.iter().map(|item| item.message.clone()).collect();
    assert_eq!(bodies(&streamed), ["hi", "hello", "elsewhere"]);
    assert_eq!(sync.items.iter().map(|item| item.cursor.position()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((sync.next, sync.has_more), (sync.items[2].cursor, false));
    let rest = world.messaging.sync(&ben.id, sync.items[0].cursor, Some(1)).await.unwrap();
    assert_eq!((bodies(&[rest.items[0].message.clone()]), rest.has_more), (vec!["hello"], true));

    // Each participant was told of each message at its position in their own stream.
    let told = world.announced.cursors();
    for item in &sync.items {
        let body = item.message.body.as_str().to_owned();
        assert!(told.contains(&(ben.id.clone(), body, item.cursor)), "{told:?}");
    }
    let anns = world.messaging.sync(&ann.id, Cursor::START, None).await.unwrap();
    assert!(anns.items.iter().all(|item| told.contains(&(
        ann.id.clone(),
        item.message.body.as_str().to_owned(),
        item.cursor
    ))));

    // Ben's list: the newest conversation first, each with its last message.
    let list = world.messaging.conversations(&ben.id, None, None).await.unwrap();
    let last: Vec<&str> =
        list.conversations.iter().filter_map(|s| s.last_message.as_ref()).map(|m| m.body.as_str()).collect();
    assert_eq!(last, ["elsewhere", "hello"]);
    assert_eq!(list.next_cursor, None);
}

#[tokio::test]
async fn a_retried_send_is_stored_and_announced_once_and_its_key_is_not_reusable() {
    let world = World::new();
    let (ann, ben) = (world.register("ann").await, world.register("ben").await);
    let first = world.messaging.send(&ann.id, &ben.id, body("once"), client_id("key-1")).await.unwrap();
    let retry = world.messaging.send(&ann.id, &ben.id, body("once"), client_id("key-1")).await.unwrap();
    assert!(first.created && !retry.created);
    assert_eq!(retry.message, first.message);

    let reused = world.messaging.send(&ann.id, &ben.id, body("something else"), client_id("key-1")).await;
    assert!(matches!(reused, Err(MessagingError::ClientIdReused)), "{reused:?}");

    let history = world.messaging.history(&ben.id, &ann.id, None, None).await.unwrap();
    assert_eq!(history.messages, [first.message]);
    assert_eq!(world.messaging.sync(&ben.id, Cursor::START, None).await.unwrap().items.len(), 1);
    assert_eq!(world.announced.cursors().len(), 2, "one event for each side, once");
}

#[tokio::test]
async fn unknown_users_and_cursors_beyond_the_stream_are_refused_and_leave_no_trace() {
    let world = World::new();
    let (ann, ben) = (world.register("ann").await, world.register("ben").await);
    let stranger = UserId::generate();

    let to_stranger = world.messaging.send(&ann.id, &stranger, body("hello?"), None).await;
    assert!(matches!(to_stranger, Err(MessagingError::UserNotFound)), "{to_stranger:?}");
    let with_stranger = world.messaging.history(&ann.id, &stranger, None, None).await;
    assert!(matches!(with_stranger, Err(MessagingError::UserNotFound)), "{with_stranger:?}");
    let untouched = world.messaging.history(&ann.id, &ben.id, None, None).await.unwrap();
    assert_eq!((untouched.conversation, untouched.messages), (None, Vec::new()));
    assert_eq!(world.messaging.conversations(&ann.id, None, None).await.unwrap().conversations, []);

    world.send(&ann, &ben, "one").await;
    let beyond = world.messaging.sync(&ann.id, Cursor::new(2).unwrap(), None).await;
    assert!(matches!(beyond, Err(MessagingError::BeyondStream)), "{beyond:?}");
    let caught_up = world.messaging.sync(&ann.id, Cursor::new(1).unwrap(), None).await.unwrap();
    assert_eq!((caught_up.items.len(), caught_up.next), (0, Cursor::new(1).unwrap()));
}
